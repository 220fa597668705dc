"""lidvae_mini.book.tabs: a cell output with one tab per dataset (sphinx-design in the book, stacked in a notebook)."""
from __future__ import annotations

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from lidvae_mini.book.tabs import Printed, tab_set


def _tabs():
    return {"MNIST": [Printed("results/x: commit abc\nsecond line"), "**MNIST** at $K = 16$",
                      pd.DataFrame({"AU": [1.0, 2.0]}, index=["vae", "lidgmvae"]), "- one\n- two"],
            "Fashion-MNIST": [pd.DataFrame({"KL": [3.25]}, index=["gmvae"])]}


def test_markdown_is_a_tab_set_with_every_item_in_order():
    md = tab_set(_tabs(), sync_group="dataset")._repr_markdown_()
    lines = md.splitlines()
    assert lines[:2] == ["`````{tab-set}", ":sync-group: dataset"] and lines[-1] == "`````"
    items = [i for i, line in enumerate(lines) if line.startswith("````{tab-item}")]
    assert [lines[i] for i in items] == ["````{tab-item} MNIST", "````{tab-item} Fashion-MNIST"]
    assert lines[items[0] + 1] == ":sync: mnist" and lines[items[1] + 1] == ":sync: fashion-mnist"
    first = md[md.index("{tab-item} MNIST"):md.index("{tab-item} Fashion-MNIST")]
    order = [first.index(s) for s in ("```text\nresults/x: commit abc\nsecond line\n```", "**MNIST** at $K = 16$",
                                      '<table border="1" class="dataframe">', "- one\n- two")]
    assert order == sorted(order)
    assert "lidgmvae" in first and "3.25" not in first and "3.25" in md


def test_tables_have_no_blank_line_that_would_end_the_html_block():
    frame = pd.DataFrame({"x": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")]))
    md = tab_set({"a": [frame]})._repr_markdown_()
    block = md[md.index("<"):md.rindex(">") + 1]
    assert "\n\n" not in block and "<table" in block
    tokens = MarkdownIt("commonmark").parse(block)
    assert [t.type for t in tokens] == ["html_block"]                 # one raw block: the table survives whole


def test_without_sync_group_no_sync_options():
    md = tab_set({"a": ["text"]})._repr_markdown_()
    assert ":sync" not in md


def test_html_for_a_notebook_shows_every_tab_under_its_label():
    out = tab_set(_tabs())._repr_html_()
    assert out.index("<h4>MNIST</h4>") < out.index("<pre>results/x: commit abc") < out.index("<h4>Fashion-MNIST</h4>")
    assert out.count("<table") == 2 and "**MNIST** at $K = 16$" in out
    assert "<b>" not in tab_set({"<b>": ["x"]})._repr_html_()         # labels are escaped


@pytest.mark.parametrize("bad, error", [({}, ValueError), ({"": ["x"]}, TypeError), ({"a": "x"}, TypeError),
                                        ({"a": pd.DataFrame()}, TypeError), ({"a": [1.5]}, TypeError),
                                        ({"a": [pd.DataFrame({"x": [1]}).style]}, TypeError)])
def test_bad_input_is_refused(bad, error):
    with pytest.raises(error):
        tab_set(bad)
