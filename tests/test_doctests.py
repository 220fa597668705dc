"""The ``>>>`` examples in the docstrings of the package's main entry points run and print what they show (issue 21
§4): the builders of every model family, the training loop and its evaluation, the diagnosis, the Brenier map and
the metrics. A module listed here without an example fails too, so an example cannot disappear unnoticed."""
from __future__ import annotations

import doctest
import importlib

import pytest

#: Modules whose public entry points carry runnable examples, and the names that must have one.
EXAMPLES = {
    "lidvae_mini.models.vae": ["build_vae"],
    "lidvae_mini.models.mixture": ["build_mixture_vae"],
    "lidvae_mini.models.text": ["build_text_vae"],
    "lidvae_mini.models.train": ["fit", "evaluate"],
    "lidvae_mini.diagnose": ["diagnose"],
    "lidvae_mini.models.brenier": ["BrenierMap"],
    "lidvae_mini.evaluation.metrics": ["active_units", "kl_gaussian_standard", "cluster_accuracy"],
    "lidvae_mini.book.tabs": ["tab_set"],
}


@pytest.mark.parametrize("module", sorted(EXAMPLES))
def test_docstring_examples_run(module, single_torch_thread):
    mod = importlib.import_module(module)
    tests = {t.name.rsplit(".", 1)[-1]: t for t in doctest.DocTestFinder().find(mod) if t.examples}
    missing = [name for name in EXAMPLES[module] if name not in tests]
    assert not missing, f"{module}: no >>> example in the docstring of {missing}"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for name in EXAMPLES[module]:
        runner.run(tests[name])
    assert runner.failures == 0, f"{module}: {runner.failures} failing example(s) (run pytest -s for the output)"
