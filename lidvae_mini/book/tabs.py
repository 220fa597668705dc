"""Parallel results in one place: a cell output that shows one tab per dataset, setting or sample size.

A chapter that reports the same tables for several datasets stacks them, and the page grows by a screen per
dataset. :func:`tab_set` puts them side by side instead: in the book, a sphinx-design tab set (one tab shown, the
others a click away; the reader's choice is shared by every tab set with the same ``sync_group`` on the page); in
Jupyter or Colab, which know nothing of sphinx-design, the same tabs one under the other, each under its label.

Each tab holds a list of items, shown in order:

- a ``pandas.DataFrame``: a table (pandas' HTML, styled by the book's CSS like any other output table);
- :class:`Printed`: preformatted text, as ``print`` would show it (provenance lines);
- a ``str``: MyST Markdown (generated sentences, bullets, ``$math$`` and ``{ref}`` links).

The book renders the ``text/markdown`` form of the output (``_config.yml`` prefers ``text/markdown`` to
``text/html`` for the HTML builder, and only this output carries both); a notebook front end renders
``text/html``.
"""
from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

import pandas as pd


class Printed(str):
    """Text shown as ``print`` shows it (monospace, line breaks kept)."""


def _table_html(table: pd.DataFrame) -> str:
    out = table.to_html()
    return "\n".join(line for line in out.splitlines() if line.strip())   # a blank line would end the HTML block


def _check(tabs: Mapping[str, Sequence[object]]) -> None:
    if not tabs:
        raise ValueError("tab_set needs at least one tab")
    for label, items in tabs.items():
        if not isinstance(label, str) or not label.strip():
            raise TypeError(f"tab labels are non-empty strings, got {label!r}")
        if isinstance(items, (str, pd.DataFrame)) or not isinstance(items, Sequence):
            raise TypeError(f"tab {label!r}: give a list of items, got {type(items).__name__}")
        for item in items:
            if not isinstance(item, (str, pd.DataFrame)):
                raise TypeError(f"tab {label!r}: an item is a DataFrame, Printed or str, got {type(item).__name__}")


class TabSet:
    """The output of :func:`tab_set`: Markdown with a sphinx-design tab set for the book, HTML for a notebook."""

    def __init__(self, tabs: Mapping[str, Sequence[object]], sync_group: str | None = None):
        _check(tabs)
        self.tabs = {label: list(items) for label, items in tabs.items()}
        self.sync_group = sync_group

    def _markdown_item(self, item) -> str:
        if isinstance(item, Printed):
            return "```text\n" + item.rstrip("\n") + "\n```"
        if isinstance(item, str):
            return item.strip()
        return _table_html(item)

    def _repr_markdown_(self) -> str:
        head = "`````{tab-set}" + (f"\n:sync-group: {self.sync_group}" if self.sync_group else "")
        parts = [head]
        for label, items in self.tabs.items():
            sync = f"\n:sync: {re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}" if self.sync_group else ""
            body = "\n\n".join(self._markdown_item(i) for i in items)
            parts.append(f"````{{tab-item}} {label}{sync}\n\n{body}\n````")
        return "\n\n".join(parts) + "\n`````\n"

    def _repr_html_(self) -> str:
        parts = []
        for label, items in self.tabs.items():
            parts.append(f"<h4>{html.escape(label)}</h4>")
            for item in items:
                if isinstance(item, str):
                    parts.append(f"<pre>{html.escape(item)}</pre>" if isinstance(item, Printed)
                                 else f"<div style='white-space: pre-wrap'>{html.escape(item)}</div>")
                else:
                    parts.append(_table_html(item))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return "\n\n".join(f"[{label}]\n" + "\n".join(str(i) for i in items) for label, items in self.tabs.items())


def tab_set(tabs: Mapping[str, Sequence[object]], sync_group: str | None = None) -> TabSet:
    """One output with a tab per key of ``tabs``; each tab shows its items in order (see the module).

    Args:
        tabs: ``{label: [item, ...]}`` in the order the tabs appear; items are DataFrames, :class:`Printed` text
            or MyST Markdown strings.
        sync_group: tab sets of one page with the same group switch together (the tab with the same label).

    Returns:
        A :class:`TabSet`; display it (the last expression of a cell tagged with
        ``mystnb: {markdown_format: myst}``, so that its Markdown renders as MyST).

    Raises:
        ValueError: ``tabs`` is empty.
        TypeError: a label is not a non-empty string, a tab's items are not a list, or an item has another type.

    >>> import pandas as pd
    >>> t = tab_set({"MNIST": [pd.DataFrame({"AU": [1.0]})], "Omniglot": [Printed("seed 0"), "**two** clusters"]})
    >>> print(t._repr_markdown_().splitlines()[0])
    `````{tab-set}
    >>> [line for line in t._repr_markdown_().splitlines() if "tab-item" in line]
    ['````{tab-item} MNIST', '````{tab-item} Omniglot']
    """
    return TabSet(tabs, sync_group)
