"""Figure sizes for the book's text column, so that a reader at a 1280-px browser window can read the ticks.

The book's HTML text column is 676 px wide at a 1280 x 900 window (sphinx-book-theme 1.3 with a scroll bar;
measured by ``tests/test_book_html.py``). The notebook backend saves figures as PNG at matplotlib's default ``DPI`` = 100
and the page shrinks any wider image to the column, so a figure's width decides the size at which its tick
labels render: a ``TEXT_WIDTH`` = 6.75-inch figure shows at (about) its natural size and its 10-pt tick labels
at ``10 * 100 / 72`` = 14 px, while a 13-inch figure squeezed into the same column renders them at 7.2 px and
a 16-inch one at 5.9 px. Every multi-panel figure of the book is therefore at most ``TEXT_WIDTH`` wide: more
panels mean narrower panels (or more rows), never a wider figure.

Usage::

    from lidvae_mini.plotting import subplots
    fig, axes = subplots(1, 3)                 # 6.75 in wide, height from the panel width
    fig, axes = subplots(2, 2, row_height=2.6) # explicit row height (inches)
"""
from __future__ import annotations

TEXT_WIDTH = 6.75
"""Width (inches) of a figure that fills the text column at ``DPI`` without being shrunk."""
DPI = 100
"""Dots per inch of the PNGs the notebook backend writes (matplotlib's ``figure.dpi`` default)."""
TICK_PT = 10.0
"""Tick-label size of the book's figures, in points (matplotlib's default ``xtick.labelsize``, 'medium' = 10 pt)."""
MIN_LEGIBLE_PX = 9.0
"""Smallest tick-label size (CSS px at a 1280-px window) the book accepts."""
MAX_ROW_HEIGHT = 3.2
"""Tallest default row, in inches (a single wide panel should not fill the screen)."""


def figsize(ncols: int = 1, nrows: int = 1, row_height: float | None = None,
            width: float = TEXT_WIDTH) -> tuple[float, float]:
    """``(width, height)`` in inches of a grid of ``nrows`` x ``ncols`` panels that fits the text column.

    Args:
        ncols, nrows: panels per row and rows (positive ints).
        row_height: height of one row (inches); default ``min(0.8 * panel width + 0.5, MAX_ROW_HEIGHT)``.
        width: figure width (inches), at most ``TEXT_WIDTH`` (default) so that nothing is shrunk.

    Raises:
        ValueError: if ``ncols`` or ``nrows`` is not a positive int, ``row_height`` is not positive, or
            ``width`` is not in ``(0, TEXT_WIDTH]``.
    """
    for name, v in (("ncols", ncols), ("nrows", nrows)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not 0 < width <= TEXT_WIDTH:
        raise ValueError(f"width must lie in (0, {TEXT_WIDTH}] inches (the text column), got {width!r}")
    if row_height is None:
        row_height = min(0.8 * width / ncols + 0.5, MAX_ROW_HEIGHT)
    elif not row_height > 0:
        raise ValueError(f"row_height must be positive (inches), got {row_height!r}")
    return (float(width), float(row_height) * nrows)


def subplots(nrows: int = 1, ncols: int = 1, *, row_height: float | None = None, width: float = TEXT_WIDTH,
             **kwargs):
    """``matplotlib.pyplot.subplots`` sized by :func:`figsize`, with ``constrained_layout`` on by default.

    Args:
        nrows, ncols, row_height, width: as :func:`figsize`.
        **kwargs: passed to ``plt.subplots`` (``squeeze``, ``sharex``, ...); ``figsize`` is not accepted.

    Returns:
        ``(figure, axes)`` as ``plt.subplots``.

    Raises:
        ValueError: as :func:`figsize`, or if ``figsize`` is passed.
    """
    import matplotlib.pyplot as plt

    if "figsize" in kwargs:
        raise ValueError("subplots sizes the figure for the text column: pass row_height/width, not figsize")
    if "layout" not in kwargs and "tight_layout" not in kwargs:
        kwargs.setdefault("constrained_layout", True)
    return plt.subplots(nrows, ncols, figsize=figsize(ncols, nrows, row_height, width), **kwargs)


def tick_px(image_px: float, shown_px: float, dpi: float = DPI, tick_pt: float = TICK_PT) -> float:
    """Rendered size (CSS px) of ``tick_pt`` labels in a PNG ``image_px`` wide at ``dpi``, shown ``shown_px`` wide.

    ``tick_pt * dpi / 72`` pixels in the image, scaled by ``shown_px / image_px`` in the page.

    Raises:
        ValueError: if a size is not positive.
    """
    for name, v in (("image_px", image_px), ("shown_px", shown_px), ("dpi", dpi), ("tick_pt", tick_pt)):
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v!r}")
    return tick_pt * dpi / 72.0 * shown_px / image_px


STYLE = {"figure.figsize": (TEXT_WIDTH, 3.0), "figure.dpi": DPI, "axes.titlesize": 10.0, "legend.fontsize": 8.0,
         "xtick.labelsize": TICK_PT, "ytick.labelsize": TICK_PT}
"""The book's matplotlib settings (a column-wide default figure, 10-pt titles as panels are narrow, 8-pt legends)."""


def use_style() -> None:
    """Apply :data:`STYLE` to ``matplotlib.rcParams`` (a chapter calls it once, in its imports cell)."""
    import matplotlib as mpl

    mpl.rcParams.update(STYLE)


def plot_learning_curves(curves: dict, ax=None, ylabel: str = "validation −ELBO (nats)"):
    """Mean over seeds (line) and every seed (faint) of per-epoch learning curves, one colour per name.

    ``curves``: ``{name: [curve per seed]}``, each curve a list of per-epoch values (epochs from 1). Returns the
    axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=figsize(1, 1, row_height=3.0))
    for i, (name, runs) in enumerate(curves.items()):
        runs = [np.asarray(c, dtype=float) for c in runs]
        n = min(len(c) for c in runs)
        epochs = np.arange(1, n + 1)
        for c in runs:
            ax.plot(epochs, c[:n], color=f"C{i}", alpha=0.25, lw=0.8)
        ax.plot(epochs, np.mean([c[:n] for c in runs], axis=0), color=f"C{i}", lw=1.6, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return ax


def legend_below(fig, axes=None, ncol: int | None = None, fontsize: float = 8, **kwargs):
    """One legend for ``fig`` below its panels, never over data: the entries of ``axes`` (default all; a label is
    listed once), their own legends removed, the panels laid out above it (``tight_layout``). Returns the legend."""
    import numpy as np

    axes = list(np.ravel(axes)) if axes is not None else list(fig.axes)
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels and not label.startswith("_"):
                handles.append(handle)
                labels.append(label)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    kwargs = dict(ncol=ncol or min(len(labels), 3), fontsize=fontsize, frameon=False, **kwargs)
    if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):     # the engine makes room for it
        return fig.legend(handles, labels, loc="outside lower center", **kwargs)
    legend = fig.legend(handles, labels, loc="lower center", **kwargs)
    fig.canvas.draw()
    height = legend.get_window_extent(fig.canvas.get_renderer()).height / fig.bbox.height
    fig.tight_layout(rect=(0, height + 0.01, 1, 1))
    return legend


# ------------------------------------------------------------------------------------------- figure audit
AUDIT_ENV = "LIDVAE_FIGURE_AUDIT"
"""Name of the environment variable that, when set to a file path, makes every figure rendered in this process be
audited by :func:`figure_problems` first, its problems appended to that file as JSON lines
(``tests/test_determinism.py`` sets it for its chapter runs; a reader never sees it)."""
MIN_TICK_LABELS = 3
"""Fewest tick labels a numeric axis may show (one or two labels give no scale to read)."""


def figure_problems(fig) -> list[str]:
    """What would make ``fig`` hard to read at the book's size, as sentences (empty: none found). Three classes:

    * **overlapping titles**: two axes titles (or a title and the figure's suptitle) whose drawn boxes intersect;
    * **an unreadable scale**: a numeric axis that shows fewer than :data:`MIN_TICK_LABELS` tick labels within its
      limits (a log or symlog axis: fewer than 2, since two labelled decades fix its scale). Categories, ticks
      placed by hand (``set_xticks``) and an axis with no labels at all (deliberately bare) are not counted;
    * **a legend over data**: a legend whose box covers a plotted point (line vertices, scatter offsets, bar tops).

    Checks only what a test can tell from the figure's artists; it draws the figure once (to lay out the text).
    """
    from matplotlib.ticker import FixedLocator, LogFormatter, ScalarFormatter

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    titles = [(f"'{t.get_text()}'", t.get_window_extent(renderer)) for ax in fig.axes
              for t in (ax.title, ax._left_title, ax._right_title) if t.get_text() and t.get_visible()]
    if fig._suptitle is not None and fig._suptitle.get_text():
        titles.append((f"suptitle '{fig._suptitle.get_text()}'", fig._suptitle.get_window_extent(renderer)))
    for i, (a, box_a) in enumerate(titles):
        for b, box_b in titles[i + 1:]:
            if box_a.overlaps(box_b):
                problems.append(f"titles {a} and {b} overlap")
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if (not isinstance(axis.get_major_formatter(), (ScalarFormatter, LogFormatter))
                    or isinstance(axis.get_major_locator(), FixedLocator)):
                continue
            lo, hi = sorted(getattr(ax, f"get_{name}lim")())
            labelled = [*zip(axis.get_ticklabels(), axis.get_ticklocs()),              # log axes label minor ticks
                        *zip(axis.get_ticklabels(minor=True), axis.get_minorticklocs())]
            shown = [t for t, v in labelled if t.get_visible() and t.get_text().strip() and lo <= v <= hi]
            least = 2 if axis.get_scale() in ("log", "symlog") else MIN_TICK_LABELS
            if 0 < len(shown) < least:
                problems.append(f"{name} axis of '{ax.get_title() or ax.get_ylabel()}' shows {len(shown)} tick "
                                f"label(s): {[t.get_text() for t in shown]}")
    for legend in [ax.get_legend() for ax in fig.axes] + list(fig.legends):
        if legend is not None and legend.get_visible():
            box = legend.get_window_extent(renderer)
            covered = sum(_points_inside(ax, box) for ax in fig.axes)
            if covered:
                problems.append(f"legend '{', '.join(t.get_text() for t in legend.get_texts())[:60]}' covers "
                                f"{covered} plotted point(s)")
    return problems


def _points_inside(ax, box) -> int:
    """Plotted points of ``ax`` (display coordinates) inside the bounding box ``box``."""
    import numpy as np

    pts = []
    for line in ax.get_lines():
        if line.get_visible() and len(line.get_xydata()):
            pts.append(line.get_transform().transform(line.get_xydata()))
    for coll in ax.collections:
        offsets = coll.get_offsets()
        if coll.get_visible() and len(offsets) and hasattr(coll, "get_sizes") and len(coll.get_sizes()):
            pts.append(coll.get_offset_transform().transform(offsets))
    for patch in ax.patches:
        if patch.get_visible() and hasattr(patch, "get_height") and patch.get_height():
            x, y, w, h = patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()
            pts.append(ax.transData.transform([[x + w / 2, y + h]]))      # the bar's top
    if not pts:
        return 0
    p = np.concatenate(pts)
    p = p[np.isfinite(p).all(1)]
    inside = (p[:, 0] > box.x0) & (p[:, 0] < box.x1) & (p[:, 1] > box.y0) & (p[:, 1] < box.y1)
    return int(inside.sum())


def _install_audit() -> None:
    """With :data:`AUDIT_ENV` set, audit every figure before it is rendered (the notebook's inline backend and
    ``savefig`` both go through ``print_figure``) and append its problems to that file."""
    import json
    import os

    path = os.environ.get(AUDIT_ENV)
    if not path:
        return
    from matplotlib.backend_bases import FigureCanvasBase

    original = FigureCanvasBase.print_figure
    if getattr(original, "audited", False):
        return

    def print_figure(self, *args, **kwargs):
        try:
            problems = figure_problems(self.figure)
        except Exception as err:          # an audit that cannot run is itself a finding
            problems = [f"the figure audit failed: {err!r}"]
        if problems:
            titles = [ax.get_title() for ax in self.figure.axes if ax.get_title()]
            with open(path, "a") as fh:
                fh.write(json.dumps({"figure": titles[:3], "problems": problems}) + "\n")
        return original(self, *args, **kwargs)

    print_figure.audited = True
    FigureCanvasBase.print_figure = print_figure


_install_audit()
