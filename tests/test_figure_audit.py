"""The figure audit (issue 21 §2): each class of unreadable figure is caught, a readable one passes, and with
``LIDVAE_FIGURE_AUDIT`` set every rendered figure is audited into that file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import ROOT  # noqa: E402
from lidvae_mini import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_overlapping_titles_are_found():
    fig, axes = plt.subplots(1, 3, figsize=plotting.figsize(3))
    for ax in axes:
        ax.set_title("committed: x = 0, W = [w, w], and a long tail")
    assert any("overlap" in p for p in plotting.figure_problems(fig))
    for ax in axes:
        ax.set_title("short")
    assert plotting.figure_problems(fig) == []


def test_an_axis_with_too_few_tick_labels_is_found():
    fig, ax = plt.subplots(figsize=plotting.figsize())
    ax.bar(range(3), [1.50, 1.54, 1.56])
    ax.locator_params(axis="y", nbins=1)              # two labels on a linear axis: no scale to read
    assert any("y axis" in p and "tick label" in p for p in plotting.figure_problems(fig))
    ax.locator_params(axis="y", nbins=6)
    assert not any("tick label" in p for p in plotting.figure_problems(fig))
    ax.set(yscale="log", ylim=(0.1, 10))              # two labelled decades do fix a log scale
    assert not any("tick label" in p for p in plotting.figure_problems(fig))


def test_a_legend_over_data_is_found_and_a_clear_one_passes():
    fig, ax = plt.subplots(figsize=plotting.figsize())
    t = np.linspace(0, 1, 200)
    ax.plot(t, t, label="diagonal")
    ax.legend(loc="center")
    assert any("legend" in p for p in plotting.figure_problems(fig))
    ax.legend(loc="upper left")
    assert plotting.figure_problems(fig) == []


def test_categorical_axes_are_not_counted():
    fig, ax = plt.subplots(figsize=plotting.figsize())
    ax.bar(["VAE", "LIDVAE"], [1.0, 2.0])
    assert plotting.figure_problems(fig) == []


def test_rendered_figures_are_audited_into_the_named_file(tmp_path):
    out = tmp_path / "audit.jsonl"
    code = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import lidvae_mini.plotting
        fig, ax = plt.subplots()
        ax.set_title("bad"); ax.plot(range(100), range(100), label="x"); ax.legend(loc="center")
        fig.savefig({str(tmp_path / 'a.png')!r})
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        fig.savefig({str(tmp_path / 'b.png')!r})
        """)
    env = {**os.environ, plotting.AUDIT_ENV: str(out), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    found = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(found) == 1 and found[0]["figure"] == ["bad"] and "legend" in found[0]["problems"][0]


@pytest.mark.parametrize("layout", [None, "constrained"])
def test_legend_below_sits_under_every_panel_and_passes_the_audit(layout):
    fig, axes = plt.subplots(1, 2, figsize=plotting.figsize(2), layout=layout)
    t = np.linspace(0, 1, 200)
    for ax in axes:
        ax.plot(t, t, label="rising")
        ax.plot(t, 1 - t, label="falling")
        ax.legend(loc="center")                       # over the data: what legend_below replaces
    assert any("legend" in p for p in plotting.figure_problems(fig))
    legend = plotting.legend_below(fig, axes)
    assert [t.get_text() for t in legend.get_texts()] == ["rising", "falling"]   # each label once
    assert all(ax.get_legend() is None for ax in axes)
    assert plotting.figure_problems(fig) == []
    renderer = fig.canvas.get_renderer()
    top = legend.get_window_extent(renderer).y1
    assert all(top <= ax.get_tightbbox(renderer).y0 + 1 for ax in axes)   # below the panels and their labels
