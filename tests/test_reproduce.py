"""python -m lidvae_mini.book.reproduce: parameter resolution, clear errors before running, run folder contents."""
from __future__ import annotations

import json
import subprocess
import sys

import jupytext
import nbformat
import pytest
import yaml

from lidvae_mini.book import reproduce
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
from lidvae_mini.book.provenance import save_metrics
save_metrics({"n": n, "total": sum(range(n)), "label": label}, out_dir)
```
"""


# A chapter that, like 08 without its data, skips everything: it records its parameters and the paper's
# numbers but no result of its own.
SKIPPING_CHAPTER = TINY_CHAPTER.replace("# Tiny", "# Skips everything").replace(
    'save_metrics({"n": n, "total": sum(range(n)), "label": label}, out_dir)',
    'print("section skipped: missing data")\nsave_metrics({"params": {"n": n}, "paper": {"ll": -95.4}, '
    '"sweep": {"dataset": label, "results": {}}}, out_dir)')


@pytest.fixture()
def tiny_book(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    for stem, text in (("00_tiny", TINY_CHAPTER), ("00_skip", SKIPPING_CHAPTER)):
        (book / f"{stem}.md").write_text(text)
        nbformat.write(jupytext.read(book / f"{stem}.md"), book / f"{stem}.ipynb")
    return book


def _cli(*args, env_extra=None, cwd=ROOT):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "lidvae_mini.book.reproduce", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


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
    assert env["scale"] == "cpu" and env["changed_parameters"] == ["n"]   # n differs from its default
    assert {"git", "packages", "device", "python"} <= set(env)
    executed = nbformat.read(out / "00_tiny.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_cli_lists_chapters_and_rejects_unknown_names():
    listing = subprocess.run([sys.executable, "-m", "lidvae_mini.book.reproduce"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    for nb in BOOK.glob("[0-9]*.ipynb"):
        assert nb.stem in listing
    bad = subprocess.run([sys.executable, "-m", "lidvae_mini.book.reproduce", "no_such_chapter"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown chapter 'no_such_chapter'" in bad.stderr


# ------------------------------------------------------------------------------------------------ scale labels
def test_scale_is_ci_at_the_defaults_cpu_otherwise_and_paper_only_when_stated():
    defaults = {"n": 1, "hidden": (8, 8), "seed": 0, "out_dir": None, "data_dir": None, "device": "auto"}
    same = {"n": 1, "hidden": [8, 8], "seed": 7, "out_dir": "/x", "data_dir": "/d", "device": "cpu"}
    assert reproduce.infer_scale(defaults, same) == ("ci", [])          # seed, folders and device do not count
    bigger = {**same, "n": 1000}
    assert reproduce.infer_scale(defaults, bigger) == ("cpu", ["n"])    # never "paper" unless stated
    assert reproduce.infer_scale(defaults, bigger, "paper") == ("paper", ["n"])
    assert reproduce.infer_scale(defaults, bigger, "ci") == ("ci", ["n"])   # understating is allowed when stated
    for claim in ("cpu", "paper"):
        with pytest.raises(reproduce.ReproduceError, match="chapter defaults, which are the ci scale"):
            reproduce.infer_scale(defaults, same, claim)
    with pytest.raises(reproduce.ReproduceError, match="not one of ci, cpu, paper"):
        reproduce.infer_scale(defaults, bigger, "full")


def test_stated_scale_is_recorded_and_a_false_claim_fails_before_running(tiny_book, tmp_path):
    out = reproduce.run("00_tiny", {"n": 50}, book=tiny_book, out=tmp_path / "run", scale="paper")
    assert json.loads((out / "environment.json").read_text())["scale"] == "paper"
    bad = _cli("00_tiny", "--scale", "paper", "--book", tiny_book, "--out", tmp_path / "claim")
    assert bad.returncode == 2 and "ci scale" in bad.stderr and not (tmp_path / "claim").exists()


# ------------------------------------------------------------------------------------- data checked beforehand
def test_every_chapter_that_can_skip_for_missing_data_has_a_dataset_rule():
    """A chapter that catches MissingDataError (skips a section in the book build) must tell reproduce which
    datasets its parameters need, so that a reproduce run checks them before any compute."""
    for md in sorted(BOOK.glob("[0-9]*.md")):
        if "MissingDataError" in md.read_text():
            assert md.stem in reproduce.CHAPTER_DATASETS, f"{md.stem} skips for missing data but has no rule"
    for chapter in reproduce.CHAPTER_DATASETS:
        defaults = reproduce.chapter_parameters(BOOK / f"{chapter}.ipynb")
        assert reproduce.datasets_needed(chapter, defaults), chapter


def test_dataset_rule_of_the_image_chapter_follows_its_parameters():
    p = reproduce.chapter_parameters(BOOK / "08_images.ipynb")
    assert reproduce.datasets_needed("08_images", p) == [("mnist", "datasets"), ("fashion_mnist", "sweep_dataset")]
    # no depth sweep: its dataset is not needed
    assert reproduce.datasets_needed("08_images", {**p, "datasets": ["omniglot"], "depths": []}) == [
        ("omniglot", "datasets")]
    with pytest.raises(reproduce.ReproduceError, match="unknown dataset 'mnst' \\(from datasets\\)"):
        reproduce.datasets_needed("08_images", {**p, "datasets": ["mnst"]})
    assert reproduce.datasets_needed("02_ppca", {}) == []


@pytest.mark.parametrize("chapter, missing_folder", [("08_images", "mnist"), ("06_lidvae", "mnist")])
def test_run_without_its_data_fails_on_the_console_before_any_compute(tmp_path, chapter, missing_folder):
    empty = tmp_path / "no_data"
    empty.mkdir()
    out = tmp_path / "run"
    res = _cli(chapter, "--out", out, env_extra={"LIDVAE_DATA": str(empty)})
    assert res.returncode == 1
    assert "nothing was run" in res.stderr and "train-images-idx3-ubyte.gz" in res.stderr
    assert str(empty / missing_folder) in res.stderr and "LIDVAE_DATA" in res.stderr
    assert "completed" not in res.stdout + res.stderr
    assert not out.exists()   # no run folder, no notebook: papermill never started


def test_missing_data_lists_every_dataset_and_a_relative_data_dir_is_the_callers(tmp_path):
    (tmp_path / "here").mkdir()
    res = _cli("08_images", "-p", "datasets=[mnist, omniglot]", "-p", "data_dir=rel", "--out", tmp_path / "run",
               cwd=tmp_path / "here")
    assert res.returncode == 1, res.stderr
    for name, folder in (("mnist", "mnist"), ("omniglot", "omniglot"), ("fashion_mnist", "fashion-mnist")):
        assert f"- {name} (asked for by" in res.stderr
        assert str(tmp_path / "here" / "rel" / folder) in res.stderr   # not relative to book/, where it runs
    assert "images_background.npz" in res.stderr and not (tmp_path / "run").exists()


def test_unknown_dataset_is_refused_before_running(tmp_path):
    res = _cli("08_images", "-p", "datasets=[mnst]", "--out", tmp_path / "run")
    assert res.returncode == 2 and "datasets=['mnst']" in res.stderr and "'mnist'" in res.stderr
    assert "entry 'mnst' is not" in res.stderr and not (tmp_path / "run").exists()


def test_data_check_passes_when_the_files_are_there():
    from lidvae_mini.data import data_dir

    if not (data_dir() / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("MNIST is not in the data folder ($LIDVAE_DATA)")
    p = reproduce.chapter_parameters(BOOK / "08_images.ipynb")
    reproduce.check_data("08_images", {**p, "depths": []})


# ---------------------------------------------------------------------------------------- empty results
def test_run_whose_metrics_hold_no_result_is_not_completed(tiny_book, tmp_path, capsys):
    """The rule: a run is "completed" only if its metrics.json holds a number outside params and paper."""
    with pytest.raises(reproduce.RunFailed, match="holds no results"):
        reproduce.run("00_skip", book=tiny_book, out=tmp_path / "run")
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["status"] == "failed: no results"
    assert reproduce.main(["00_skip", "--book", str(tiny_book), "--out", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err
    assert "holds no results" in err and "did it skip every section" in err
    assert json.loads((tmp_path / "cli" / "environment.json").read_text())["status"] != "completed"


def test_damaged_data_file_is_reported_like_a_missing_one(tmp_path):
    from lidvae_mini.data import MissingDataError

    (tmp_path / "omniglot").mkdir()
    for name in ("images_background.npz", "images_evaluation.npz"):
        (tmp_path / "omniglot" / name).write_bytes(b"not the file")
    p = reproduce.chapter_parameters(BOOK / "08_images.ipynb")
    with pytest.raises(MissingDataError, match="(?s)nothing was run.*omniglot .*checksum mismatch"):
        reproduce.check_data("08_images", {**p, "datasets": ["omniglot"], "depths": [], "data_dir": str(tmp_path)})


def test_the_kernels_own_log_stays_off_the_console(tmp_path):
    """At shutdown jupyter_client interrupts the kernel first; when that SIGINT lands while the kernel handles a
    message, ipykernel logs "KeyboardInterrupt caught in kernel." at ERROR (a race: it once failed the test below).
    The kernel runs with its log at CRITICAL, so such a line, made here deterministically, never reaches the
    console, while the run itself completes."""
    book = tmp_path / "book"
    book.mkdir()
    noisy = TINY_CHAPTER.replace("from lidvae_mini.book.provenance import save_metrics", "from ipykernel.kernelapp import "
                                 "IPKernelApp\nIPKernelApp.instance().kernel.log.error('KeyboardInterrupt caught in "
                                 "kernel.')\nfrom lidvae_mini.book.provenance import save_metrics")
    (book / "00_noisy.md").write_text(noisy)
    nbformat.write(jupytext.read(book / "00_noisy.md"), book / "00_noisy.ipynb")
    res = _cli("00_noisy", "--book", book, "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    assert "IPKernelApp" not in res.stderr and "KeyboardInterrupt" not in res.stderr, res.stderr


def test_console_of_a_run_is_quiet(tiny_book, tmp_path):
    """The kernel runs over IPC sockets: ipykernel's "running over TCP without encryption" warning (and its
    shutdown noise) does not reach the console."""
    res = _cli("00_tiny", "--book", tiny_book, "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    assert "without encryption" not in res.stderr and "IPKernelApp" not in res.stderr, res.stderr
    assert res.stdout.startswith("run folder:") and not list(tmp_path.glob(".run*"))
