"""A value the parameter spec accepts runs the chapter to its end: every chapter at the small corner of its spec.

:func:`lidvae_mini.book.parameters.small_corner` gives every chapter's smallest accepted values (every bounded integer at
its bound, every list at its shortest; batch sizes, numbers, choices and paths at their defaults). Where a chapter's
asserted statements need more, the spec's bound says so (``parameters.Asserted``) and a smaller value is refused
with one line before any compute. Each chapter is run here at its corner through ``reproduce``, as a user would,
and must complete with results; a chapter that needs a missing data file runs its skip path instead.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lidvae_mini.book.parameters import SPECS, check, small_corner
from lidvae_mini.book.reproduce import chapter_parameters

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(s for s in SPECS if (BOOK / f"{s}.ipynb").exists())


def _corner_args(stem: str) -> tuple[list[str], dict, dict]:
    defaults = chapter_parameters(BOOK / f"{stem}.ipynb")
    corner = small_corner(stem, defaults)
    args = [a for k, v in corner.items() if v != defaults[k] for a in ("-p", f"{k}={json.dumps(v)}")]
    return args, corner, defaults


def test_every_chapter_has_a_spec_and_its_corner_passes_the_spec():
    assert CHAPTERS and set(CHAPTERS) == {p.stem for p in BOOK.glob("*.ipynb")}
    for stem in CHAPTERS:
        _, corner, defaults = _corner_args(stem)
        check(stem, {**defaults, **corner})


def test_below_an_asserted_bound_the_run_stops_with_one_line_before_any_compute(tmp_path):
    """03_gmm at n = 200 passed the old spec and died in a cell; now the spec refuses it, naming the range."""
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "lidvae_mini.book.reproduce", "03_gmm", "-p", "n=200", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and not out.exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "parameter n=200: expected an integer >= 2000" in lines[0], res.stderr
    assert "checked statements hold from here up" in lines[0]


@pytest.mark.parametrize("stem", [pytest.param(s, marks=[pytest.mark.chapter_run,
                                                          pytest.mark.xdist_group(f"corner_{s}")])
                                  for s in CHAPTERS])
def test_the_chapter_runs_to_its_end_at_its_small_corner(stem, tmp_path):
    args, _, _ = _corner_args(stem)
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "lidvae_mini.book.reproduce", stem, *args, "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    if res.returncode == 1 and "LIDVAE_DATA" in res.stderr and not out.exists():
        pytest.skip(f"{stem}: its data files are missing here ({res.stderr.strip().splitlines()[0]})")
    assert res.returncode == 0, f"{stem} at {' '.join(args)}:\n{res.stderr[-3000:]}"
    env = json.loads((out / "environment.json").read_text())
    assert env["status"] == "completed", env
