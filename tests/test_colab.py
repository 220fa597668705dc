"""What Colab does with a chapter (issue 21 §4): a fresh virtual environment, the notebook's own first cell with the
repository URL replaced by a local clone at the same ref, then the chapter's first code cells.

The virtual environment sees the system's packages (torch, NumPyro, ... as Colab has them preinstalled) but installs
``lidvae-mini`` itself from the clone, exactly as the cell does on Colab (``pip install "lidvae-mini @ git+URL@REF"``,
with pip's build isolation: it needs the package index for setuptools, as CI has). A cell that fails to install
must stop with one line saying what to do, never a traceback.
"""
from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import pytest

from conftest import BOOK, ROOT
from lidvae_mini.book.release import expected_ref, repository_url

CHAPTER = "01_theorem"      # the quickest chapter; every chapter's cell is the same (tests/test_chapters.py)
FAKE_COLAB = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """``(python of a fresh venv, the chapter's code cells with the URL pointing at a local clone at the ref)``."""
    tmp = tmp_path_factory.mktemp("colab")
    clone, ref = tmp / "clone", expected_ref(ROOT)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the ref the notebooks name (main until a release, then its tag), at the commit under test
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, *(["tag", "-f", ref] if ref.startswith("v") else ["checkout", "-q", "-B", ref])],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")], check=True)
    url = repository_url(ROOT).replace("https://", "git+https://")
    cells = [c.source.replace(url, f"git+file://localhost{clone}")
             for c in nbformat.read(BOOK / f"{CHAPTER}.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert f"git+file://localhost{clone}@{ref}" in cells[0], "the first cell installs the package of this ref"
    return tmp / "venv" / "bin" / "python", cells, tmp


def test_the_first_cell_installs_the_package_and_the_chapter_starts(colab):
    python, cells, tmp = colab
    script = (FAKE_COLAB + cells[0] + "\nfrom IPython.terminal.interactiveshell import TerminalInteractiveShell\n"
              "shell = TerminalInteractiveShell.instance()\n"
              f"for source in {cells[1:3]!r}:\n"
              "    result = shell.run_cell(source)\n"
              "    assert result.success, result.error_in_exec or result.error_before_exec\n"
              "import lidvae_mini\nprint(lidvae_mini.__file__)\n")
    run = subprocess.run([str(python), "-c", script], cwd=tmp, env=_env(), capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    installed = run.stdout.strip().splitlines()[-1]
    assert installed.startswith(str(tmp / "venv")), f"lidvae_mini imported from {installed}, not the venv"


def test_a_failed_install_stops_with_one_line(colab):
    python, cells, tmp = colab
    ref = expected_ref(ROOT)
    broken = cells[0].replace(f"@{ref}\"", "@no-such-ref-anywhere\"")
    assert broken != cells[0]
    run = subprocess.run([str(python), "-c", FAKE_COLAB + broken], cwd=tmp, env=_env(), capture_output=True,
                         text=True, timeout=600)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    assert lines[0].startswith("Could not install lidvae-mini (") and "run this cell again" in lines[0]
    assert "Traceback" not in run.stderr + run.stdout
