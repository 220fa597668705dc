"""Determinism (issues 12 and 21): the same seed twice gives identical outputs on CPU, for every chapter at its
defaults, compared by nbval, cell by cell.

For each chapter of ``_toc.yml`` with a notebook twin, the reference is the book build's own execution, read back
from the build's execution cache (``_build/.jupyter_cache``), matched by jupyter-cache's hash of the chapter's code
cells, so it is the execution of this very source (the Makefile clears the cache when the package changes). nbval
(the design card's tool) executes the chapter once more in a fresh kernel and compares every output of every cell
with the stored one, after the sanitisers of ``tests/nbval_sanitize.cfg`` (wall times, memory addresses, temporary
paths). The metrics record that ``lidvae_mini.book.provenance.save_metrics`` leaves as a hidden output of the
metrics cell is one of those outputs, so every metric is compared character for character (floats bit for bit,
wall-time keys aside). Images are not compared (nbval's default); the figures are audited instead
(:func:`lidvae_mini.plotting.figure_problems`).

Without a matching cache entry (pytest run alone, or the chapter changed since the build) the reference is a
papermill execution at the defaults first, so the test never executes a chapter more than twice. A chapter whose
data file is absent skips the same sections in both executions. The chapter runs are spread over the pytest-xdist
workers, longest first.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import BOOK, ROOT, toc_files
from lidvae_mini import plotting
from lidvae_mini.book.provenance import recorded_metrics

CACHE = ROOT / "_build" / ".jupyter_cache"


def _cache(folder=CACHE):
    if not (folder / "global.db").exists():     # get_cache would create an empty cache
        return None
    from jupyter_cache import get_cache

    return get_cache(str(folder))


def _cached_run(cache, notebook):
    """``(executed notebook, seconds)`` of ``notebook`` (a chapter's stem, or a notebook) from a build's cache, or
    ``None``."""
    if cache is None:
        return None
    nb = nbformat.read(BOOK / f"{notebook}.ipynb", as_version=4) if isinstance(notebook, str) else notebook
    try:
        record = cache.match_cache_notebook(nb)
    except KeyError:
        return None
    _, executed = cache.merge_match_into_notebook(nb)
    return executed, (record.data or {}).get("execution_seconds")


def metric_chapters() -> list[str]:
    """Chapters of the table of contents with a notebook twin that call ``save_metrics``, longest first by the
    build's cached execution times (largest notebook first where the cache has none, as ``make execute``)."""
    stems = [f.removeprefix("book/") for f in toc_files()]
    stems = [s for s in stems if (BOOK / f"{s}.ipynb").exists() and "save_metrics(" in (BOOK / f"{s}.md").read_text()]
    try:
        cache = _cache()
        seconds = {s: (_cached_run(cache, s) or (None, None))[1] or 0.0 for s in stems}
    except Exception:   # an unreadable cache only loses the ordering; the test itself reports it
        seconds = {s: 0.0 for s in stems}
    return sorted(stems, key=lambda s: (-seconds[s], -(BOOK / f"{s}.ipynb").stat().st_size))


SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"


def papermill_reference(stem: str, folder: Path):
    """One execution of ``stem`` at its defaults (no parameter injected, as the build), with its outputs."""
    import papermill as pm

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{stem}.ipynb"
    pm.execute_notebook(str(BOOK / f"{stem}.ipynb"), str(out), cwd=str(BOOK), kernel_name="python3",
                        progress_bar=False)
    return nbformat.read(out, as_version=4)


def run_nbval(reference, stem: str) -> tuple[int, str]:
    """nbval on ``reference`` (an executed notebook), from ``book/`` as the chapter expects; ``(returncode, log)``."""
    path = BOOK / f"_nbval_{stem}.ipynb"          # the kernel runs in the notebook's folder
    nbformat.write(reference, path)
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"),
                                                                          os.environ.get("PYTHONPATH")]))}
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                              "-p", "nbval_history", "--nbval", str(path), "--nbval-sanitize-with", str(SANITIZE),
                              "--nbval-kernel-name", "python3", "--nbval-cell-timeout", "1800",
                              "--rootdir", str(BOOK)], cwd=BOOK, capture_output=True, text=True, env=env)
    finally:
        path.unlink(missing_ok=True)
    return res.returncode, res.stdout + res.stderr


@pytest.mark.parametrize("stem", [pytest.param(s, marks=[pytest.mark.chapter_run,
                                                          pytest.mark.xdist_group(f"chapter_{s}")])
                                  for s in metric_chapters()])
def test_same_seed_same_outputs(stem, tmp_path, monkeypatch):
    """nbval: a fresh execution of the chapter gives the outputs stored by the build, cell by cell (the metrics
    record among them); and every figure it draws passes :func:`lidvae_mini.plotting.figure_problems` (no
    overlapping titles, no numeric axis with one or two tick labels, no legend over data)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    audit = tmp_path / "figure_audit.jsonl"
    monkeypatch.setenv(plotting.AUDIT_ENV, str(audit))
    cached = _cached_run(_cache(), stem)
    reference = cached[0] if cached else papermill_reference(stem, tmp_path / "reference")
    assert recorded_metrics(reference) is not None, f"{stem}: the reference holds no metrics record"
    rc, log = run_nbval(reference, stem)
    assert rc == 0, f"{stem}: the same seed gave different outputs (nbval):\n" + log[-6000:]
    found = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
    assert not found, f"{stem}: figures hard to read at the book's size:\n" + "\n".join(
        f"{f['figure']}: {'; '.join(f['problems'])}" for f in found)


def test_metrics_record_is_hidden_and_read_back(tmp_path):
    """``save_metrics(metrics, None)`` in a kernel records the JSON of ``metrics`` as an output that myst-nb strips
    from the page; :func:`recorded_metrics` reads it back (NaN as ``None``, floats exact)."""
    import nbclient
    from myst_nb.ext.glue import extract_glue_data_cell
    from nbformat.v4 import new_code_cell, new_notebook

    code = ("import numpy as np\nfrom lidvae_mini.book.provenance import save_metrics\n"
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


# ------------------------------------------------------------------------------------------------------------
# One build: the execution cache and its key (Makefile: exec-key, exec-cache; _config.yml: execute)

def _make(target, cwd, **env):
    res = subprocess.run(["make", "-s", "--no-print-directory", target], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def test_execution_cache_key_follows_the_package_not_the_chapters(tmp_path):
    """The key changes with a package file's content (added files too), the committed results, the requirements and
    the data folder; not with a file's time stamp or a chapter (jupyter-cache keys the chapters). ``exec-cache``
    clears ``_build/.jupyter_cache`` exactly when the key (kept in that folder) changed."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    for name in ("lidvae_mini", "results", "book/params"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path)
    (tmp_path / "book" / "01_x.md").write_text("# x\n")
    data = {"LIDVAE_DATA": "/data"}
    key = _make("exec-key", tmp_path, **data)
    assert len(key) == 64 and _make("exec-key", tmp_path, **data) == key

    train = tmp_path / "lidvae_mini" / "models" / "train.py"   # a file in a subfolder counts too
    text = train.read_text()
    os.utime(train, (1, 1))
    (tmp_path / "book" / "01_x.md").write_text("# y\n")
    assert _make("exec-key", tmp_path, **data) == key            # a time stamp, a chapter: same key
    train.write_text(text + "# edit\n")
    assert _make("exec-key", tmp_path, **data) != key
    train.write_text(text)
    assert _make("exec-key", tmp_path, **data) == key
    for changed in ("lidvae_mini/new_module.py", "results/README.md", "requirements.txt"):
        path = tmp_path / changed
        before = path.read_text() if path.exists() else None
        path.write_text((before or "") + "# edit\n")
        assert _make("exec-key", tmp_path, **data) != key, changed
        path.unlink() if before is None else path.write_text(before)
    assert _make("exec-key", tmp_path, LIDVAE_DATA="/other") != key

    cache = tmp_path / "_build" / ".jupyter_cache"
    cache.mkdir(parents=True)
    (cache / "global.db").write_text("an earlier build's")
    assert "cleared" in _make("exec-cache", tmp_path, **data)     # no key yet: cleared, key written
    assert [p.name for p in cache.iterdir()] == ["lidvae-exec-key"]
    (cache / "global.db").write_text("this build's")
    assert "unchanged" in _make("exec-cache", tmp_path, **data) and (cache / "global.db").exists()
    train.write_text(text + "# edit\n")
    assert "cleared" in _make("exec-cache", tmp_path, **data) and not (cache / "global.db").exists()
    assert (cache / "lidvae-exec-key").read_text().strip() == _make("exec-key", tmp_path, **data)


CACHED_CHAPTER = """---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---
# Good

```{code-cell} ipython3
from pathlib import Path
from lidvae_mini.book.provenance import save_metrics
value = int(Path("../results/value.txt").read_text())   # relative to book/: the build runs chapters there
with open("../executions.log", "a") as f:
    f.write("ran\\n")
save_metrics({"value": value}, None)
```
"""


def test_cached_build_runs_chapters_in_book_reuses_them_and_fails_on_an_error(tmp_path):
    """A two-page book with this repository's ``execute`` settings: the chapter runs in ``book/`` and its metrics
    record is in the cache; a second build does not run it again, and a page whose cell raises fails the build."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    (tmp_path / "_config.yml").write_text(yaml.safe_dump({"title": "t", "only_build_toc_files": True,
                                                          "execute": config["execute"],
                                                          "exclude_patterns": ["_build", "results"]}))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/good\n")
    (tmp_path / "book").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "value.txt").write_text("42\n")
    (tmp_path / "book" / "good.md").write_text(CACHED_CHAPTER)
    build = [str(Path(sys.executable).with_name("jupyter-book")), "build", "--all", "-W", "-n", "--keep-going", "."]

    res = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "executions.log").read_text() == "ran\n"
    from myst_nb.core.read import read_myst_markdown_notebook

    nb = read_myst_markdown_notebook((tmp_path / "book" / "good.md").read_text())
    executed, _ = _cached_run(_cache(tmp_path / "_build" / ".jupyter_cache"), nb)
    assert recorded_metrics(executed) == {"value": 42}

    (tmp_path / "book" / "bad.md").write_text(CACHED_CHAPTER.replace("# Good", "# Bad").replace(
        "save_metrics(", "raise RuntimeError('a failing cell')\nsave_metrics("))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/good\nchapters:\n  - file: book/bad\n")
    res = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0, res.stdout[-3000:]
    assert "a failing cell" in res.stdout + res.stderr
    assert (tmp_path / "executions.log").read_text() == "ran\nran\n"   # bad ran once; good was not run again
