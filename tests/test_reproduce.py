"""python -m lidvae_mini.reproduce: parameter resolution, clear errors before running, run folder contents."""
from __future__ import annotations

import json
import subprocess
import sys

import jupytext
import nbformat
import pytest
import yaml

from lidvae_mini import reproduce
from conftest import BOOK, ROOT

TINY_CHAPTER = """---
jupytext:
  formats: ipynb,md:myst
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---
# Tiny

```{code-cell} ipython3
:tags: [parameters]

n = 3
label = "a"
seed = 0
out_dir = None
```

```{code-cell} ipython3
from lidvae_mini.provenance import save_metrics
save_metrics({"n": n, "total": sum(range(n)), "label": label}, out_dir)
```
"""


@pytest.fixture()
def tiny_book(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    (book / "00_tiny.md").write_text(TINY_CHAPTER)
    nbformat.write(jupytext.read(book / "00_tiny.md"), book / "00_tiny.ipynb")
    return book


def test_parse_overrides_reads_yaml_scalars():
    assert reproduce.parse_overrides(["n=1e5", "data=official", "flag=true", "xs=[1, 2]"]) == {
        "n": 1e5, "data": "official", "flag": True, "xs": [1, 2]}
    with pytest.raises(reproduce.ReproduceError, match="key=value"):
        reproduce.parse_overrides(["n"])


def test_resolution_order_defaults_files_then_overrides(tmp_path):
    f1, f2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    f1.write_text("n: 10\nseed: 1\n")
    f2.write_text("n: 20\n")
    got = reproduce.resolve_parameters({"n": 1, "seed": 0, "out_dir": None}, [str(f1), str(f2)], {"seed": 5}, "x")
    assert got == {"n": 20, "seed": 5, "out_dir": None}
    assert reproduce.resolve_parameters({"n": 1, "lr": 0.1}, [], {"n": 1e5, "lr": 1.0}, "x") == {"n": 100000, "lr": 1.0}
    assert type(reproduce.resolve_parameters({"n": 1}, [], {"n": 1e5}, "x")["n"]) is int
    assert reproduce.resolve_parameters({"hidden": ((8, 8), (4,))}, [], {}, "x") == {"hidden": [[8, 8], [4]]}


def test_unknown_chapter_and_parameter_fail_before_running(tiny_book, tmp_path):
    with pytest.raises(reproduce.ReproduceError, match="unknown chapter 'nope'.*00_tiny"):
        reproduce.run("nope", book=tiny_book, out=tmp_path / "r1")
    with pytest.raises(reproduce.ReproduceError, match="unknown parameter.*typo.*known: label, n, out_dir, seed"):
        reproduce.run("00_tiny", {"typo": 1}, book=tiny_book, out=tmp_path / "r2")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_run_writes_notebook_params_metrics_and_environment(tiny_book, tmp_path):
    out = reproduce.run("00_tiny", {"n": 5}, book=tiny_book, out=tmp_path / "run")
    assert json.loads((out / "metrics.json").read_text()) == {"label": "a", "n": 5, "total": 10}
    assert yaml.safe_load((out / "params.yaml").read_text()) == {"n": 5, "label": "a", "seed": 0,
                                                                 "out_dir": str(out)}
    env = json.loads((out / "environment.json").read_text())
    assert env["status"] == "completed" and env["wall_time_s"] > 0 and env["chapter"] == "00_tiny"
    assert {"git", "packages", "device", "python"} <= set(env)
    executed = nbformat.read(out / "00_tiny.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_cli_lists_chapters_and_rejects_unknown_names():
    listing = subprocess.run([sys.executable, "-m", "lidvae_mini.reproduce"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    for nb in BOOK.glob("[0-9]*.ipynb"):
        assert nb.stem in listing
    bad = subprocess.run([sys.executable, "-m", "lidvae_mini.reproduce", "no_such_chapter"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown chapter 'no_such_chapter'" in bad.stderr
