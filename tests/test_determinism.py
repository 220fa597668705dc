"""Determinism (issue 12): the same seed twice gives identical metrics on CPU, for every chapter at its defaults.

For each chapter of ``_toc.yml`` that saves metrics (``lidvae_mini.provenance.save_metrics``), the two executions
compared are

1. the book build's own: the build (``make book``/``make test``) runs the chapter with ``out_dir = None``, and
   ``save_metrics`` records the metrics as a hidden output of the metrics cell
   (:func:`lidvae_mini.provenance.record_metrics`; not shown on the page). The executed notebook is read back from
   the build's execution cache (``_build/.jupyter_cache``), matched by jupyter-cache's hash of the chapter's code
   cells, so it is the execution of this very source (the Makefile clears the cache when the package changes);
2. a run of ``python -m lidvae_mini.reproduce CHAPTER`` at the defaults, which writes ``metrics.json``.

Without a matching cache entry (pytest run alone, or the chapter changed since the build) the chapter is run through
``reproduce`` twice. Where a data file the chapter reads is absent, ``reproduce`` refuses; the run then goes through
papermill directly, skipping the same sections the build skips. Every number must be equal (JSON values, so
floats bit for bit); only wall times (keys containing ``seconds``) and ``out_dir`` are left out.

This replaces the earlier nbval pass, which executed every chapter a second time only to check that no cell raised
(the build already fails on an error). The chapter runs are spread over the pytest-xdist workers, longest first.
"""
from __future__ import annotations

import json

import nbformat
import pytest

from conftest import BOOK, ROOT, toc_files
from lidvae_mini.provenance import METRICS_FILE, recorded_metrics

CACHE = ROOT / "_build" / ".jupyter_cache"


def _cache():
    if not (CACHE / "global.db").exists():      # get_cache would create an empty cache
        return None
    from jupyter_cache import get_cache

    return get_cache(str(CACHE))


def _cached_run(cache, stem: str):
    """``(executed notebook, seconds)`` of ``stem`` from the build's cache, or ``None``."""
    if cache is None:
        return None
    nb = nbformat.read(BOOK / f"{stem}.ipynb", as_version=4)
    try:
        record = cache.match_cache_notebook(nb)
    except KeyError:
        return None
    _, executed = cache.merge_match_into_notebook(nb)
    return executed, (record.data or {}).get("execution_seconds")


def metric_chapters() -> list[str]:
    """Chapters of the table of contents with a notebook twin that call ``save_metrics``, longest first when the
    build's cache knows their execution times (else in table-of-contents order)."""
    stems = [f.removeprefix("book/") for f in toc_files()]
    stems = [s for s in stems if (BOOK / f"{s}.ipynb").exists() and "save_metrics(" in (BOOK / f"{s}.md").read_text()]
    try:
        cache = _cache()
        seconds = {s: (_cached_run(cache, s) or (None, None))[1] or 0.0 for s in stems}
    except Exception:   # an unreadable cache only loses the ordering; the test itself reports it
        seconds = {s: 0.0 for s in stems}
    return sorted(stems, key=lambda s: -seconds[s])


def _comparable(obj):
    """Metrics without wall times and output folders."""
    if isinstance(obj, dict):
        return {k: _comparable(v) for k, v in obj.items() if "seconds" not in k and k != "out_dir"}
    if isinstance(obj, list):
        return [_comparable(v) for v in obj]
    return obj


def _differences(a, b, path="metrics") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}: key {k!r} only in {'first' if k in a else 'second'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += _differences(a[k], b[k], f"{path}[{k!r}]")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in _differences(u, v, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def run_chapter(stem: str, out) -> dict:
    """Metrics of one execution of ``stem`` at its defaults, through ``reproduce`` (papermill directly when a data
    file is absent)."""
    from lidvae_mini import reproduce
    from lidvae_mini.data import MissingDataError

    try:
        folder = reproduce.run(stem, out=out)
        assert json.loads((folder / "environment.json").read_text())["status"] == "completed"
    except MissingDataError:
        import papermill as pm

        out.mkdir(parents=True, exist_ok=True)
        pm.execute_notebook(str(BOOK / f"{stem}.ipynb"), str(out / f"{stem}.ipynb"), parameters={"out_dir": str(out)},
                            cwd=str(BOOK), kernel_name="python3", progress_bar=False)
    return json.loads((out / METRICS_FILE).read_text())


@pytest.mark.parametrize("stem", [pytest.param(s, marks=[pytest.mark.chapter_run,
                                                          pytest.mark.xdist_group(f"chapter_{s}")])
                                  for s in metric_chapters()])
def test_same_seed_same_metrics(stem, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)                       # reproduce resolves relative paths from here
    monkeypatch.setenv("TQDM_DISABLE", "1")
    cached = _cached_run(_cache(), stem)
    first = recorded_metrics(cached[0]) if cached else None
    if first is None:                             # no build of this source: run it twice here
        first = run_chapter(stem, tmp_path / "first")
    second = run_chapter(stem, tmp_path / "second")
    diff = _differences(_comparable(first), _comparable(second))
    assert not diff, f"{stem}: the same seed gave different metrics ({len(diff)}):\n" + "\n".join(diff[:30])


def test_metrics_record_is_hidden_and_read_back(tmp_path):
    """``save_metrics(metrics, None)`` in a kernel records the JSON of ``metrics`` as an output that myst-nb strips
    from the page; :func:`recorded_metrics` reads it back (NaN as ``None``, floats exact)."""
    import nbclient
    from myst_nb.ext.glue import extract_glue_data_cell
    from nbformat.v4 import new_code_cell, new_notebook

    code = ("import numpy as np\nfrom lidvae_mini.provenance import save_metrics\n"
            "metrics = {'a': np.float32(0.1), 'b': [1 / 3, float('nan')], 'n': np.int64(7)}\n"
            "save_metrics(metrics, None)\nprint('shown')")
    nb = new_notebook(cells=[new_code_cell(code)], metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                           "display_name": "Python 3"}})
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.validate(nb)
    assert recorded_metrics(nb) == {"a": float(__import__("numpy").float32(0.1)), "b": [1 / 3, None], "n": 7}
    cell = nb.cells[0]
    glued = extract_glue_data_cell(cell)                       # what the book build does before rendering a cell
    assert [key for key, _ in glued] == ["lidvae_metrics"]
    assert [o.get("text") for o in cell.outputs] == ["shown\n"]   # nothing else is left on the page
    assert not list(tmp_path.iterdir())                        # and nothing written


def test_every_executable_chapter_is_compared():
    """A chapter of the table of contents that is executed but saves no metrics would escape the comparison."""
    stems = [f.removeprefix("book/") for f in toc_files()]
    executable = [s for s in stems if (BOOK / f"{s}.ipynb").exists()]
    assert executable and set(executable) == set(metric_chapters())
