"""First-run-only behaviour: what a fresh machine (empty user cache) prints must match what a warm one prints.

ArviZ 0.23 warns once per calendar day (a date stamp under the user cache); a chapter that imported it printed
that warning to stderr only on a machine's first import of the day, and the book build (-W) failed there only.
"""
import subprocess
import sys

import pytest

NOTICE = "ArviZ is undergoing a major refactor"


def _run(code: str, cache) -> subprocess.CompletedProcess:
    env = {"XDG_CACHE_HOME": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(cache), "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_package_imports_arviz_without_its_daily_notice_on_a_fresh_cache(tmp_path):
    plain = _run("import arviz", tmp_path / "plain")
    if NOTICE not in plain.stderr:
        pytest.skip("this ArviZ version no longer prints its daily notice; the filter has nothing to hide")
    ours = _run("from lidvae_mini.exact.hmc import import_arviz; az = import_arviz(); print(az.__name__)", tmp_path / "ours")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip() == "arviz"
    assert NOTICE not in ours.stderr


def test_the_filter_is_narrow():
    import warnings

    from lidvae_mini.exact.hmc import import_arviz

    import_arviz()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn_explicit("another FutureWarning", FutureWarning, "arviz/__init__.py", 1, module="arviz")
    assert [str(w.message) for w in caught] == ["another FutureWarning"]
