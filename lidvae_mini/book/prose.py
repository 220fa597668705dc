"""Sentences generated from numbers: how chapters quote results without typing them.

The book's rule: prose never hand-types a number that a cell computes or that a committed result holds; the
sentence is built from the values, so it stays true when the chapter or the result is rerun. A chapter builds
such a sentence with these helpers and shows it with ``IPython.display.Markdown`` (in a cell tagged
``hide-input`` with the cell option ``mystnb: {markdown_format: myst}``, so that ``$...$`` math and
``{ref}`` links render in the book). ``tests/test_prose_numbers.py`` checks the numbers that are still typed.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve")


def number_word(k: int) -> str:
    """``k`` in words up to twelve (``"eight"``), in digits above.

    Raises:
        ValueError: ``k`` is negative or not an integer.
    """
    if int(k) != k or k < 0:
        raise ValueError(f"number_word needs a non-negative integer, got {k!r}")
    k = int(k)
    return _WORDS[k] if k < len(_WORDS) else str(k)


def ordinal(k: int) -> str:
    """``"first"``, ``"second"``, ... up to ``"twelfth"``; ``"13th"`` and so on above.

    Raises:
        ValueError: ``k`` is not a positive integer.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"ordinal needs a positive integer, got {k!r}")
    words = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
             "eleventh", "twelfth")
    k = int(k)
    if k <= len(words):
        return words[k - 1]
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def count_of(k: int, n: int) -> str:
    """``"eight of ten"``; ``"all ten"`` when ``k == n``; ``"none of the ten"`` when ``k == 0``.

    Raises:
        ValueError: not ``0 <= k <= n``.
    """
    if not 0 <= k <= n:
        raise ValueError(f"count_of needs 0 <= k <= n, got k={k}, n={n}")
    if k == n:
        return "both" if n == 2 else f"all {number_word(n)}"
    if k == 0:
        return f"none of the {number_word(n)}"
    return f"{number_word(k)} of {number_word(n)}"


def span(values, digits: int = 2, joiner: str = " to ") -> str:
    """``"0.98 to 1.00"``: the smallest and largest finite value at ``digits`` decimals, one number if they
    print alike; ``"n/a"`` without finite values. A negative number is written with the Unicode minus."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    lo, hi = fmt(v.min(), digits), fmt(v.max(), digits)
    return lo if lo == hi else f"{lo}{joiner}{hi}"


def fmt(x: float, digits: int = 2) -> str:
    """``x`` at ``digits`` decimals, with the Unicode minus ``−`` for negative numbers (``-0.00`` prints as
    ``0.00``)."""
    s = f"{float(x):.{digits}f}"
    if s.startswith("-") and float(s) == 0:
        s = s[1:]
    return s.replace("-", "−")


def sci(x: float, digits: int = 1) -> str:
    """``x`` in scientific notation for LaTeX math: ``"1.8 \\times 10^{-5}"``; plain :func:`fmt` for
    ``1e-2 <= |x| < 1e3`` (and ``"0"`` for zero)."""
    x = float(x)
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e3:
        return fmt(x, digits + 1)
    mantissa, exponent = f"{x:.{digits}e}".split("e")
    return f"{mantissa.replace('-', '−')} \\times 10^{{{int(exponent)}}}"


def listing(items: Iterable) -> str:
    """``"4"``, ``"4 and 6"``, ``"1, 4 and 6"``."""
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def cap(text: str) -> str:
    """``text`` with its first letter capitalised and the rest untouched (unlike ``str.capitalize``), for a sentence
    that starts with a name (``cap("the GMVAE's ...")`` is ``"The GMVAE's ..."``)."""
    return text[0].upper() + text[1:]


def result_tag(result) -> str:
    """``"results/CHAPTER/SETTING, cpu scale, commit 5d2634b"``: where a number comes from, for a sentence
    that quotes a committed result (:class:`lidvae_mini.book.results.Result`; its ``provenance()`` is the long form).

    Raises:
        ValueError: the result records no valid scale label.
    """
    env = result.environment
    commits = env.get("commits") or [(env.get("git") or {}).get("commit") or "unknown"]
    return (f"results/{result.path.parent.name}/{result.path.name}, {result.scale} scale, "
            f"commit {', '.join(c[:7] for c in commits)}")


def budget_sentence(name: str, curves, window: int = 5, tol: float = 1.0) -> str:
    """Whether the reference model's learning curves had flattened (:func:`lidvae_mini.evaluation.metrics.learning_curve_flat`
    on every seed), as a sentence: the book's rule for a budget that can answer a comparison.

    ``curves``: the per-epoch validation negative ELBO (nats) of each seed of ``name``.
    """
    from ..evaluation.metrics import learning_curve_flat

    curves = [list(c) for c in curves]
    flat = [learning_curve_flat(c, window, tol) for c in curves]
    moved = [c[-window - 1] - c[-1] for c in curves if len(c) > window]
    how = f"it moved by {span(moved, 2)} nats over the last {window} epochs" if moved else \
        f"its runs are too short to show it ({window} epochs or fewer)"
    if moved and min(moved) < 0:
        how += " (a negative move: the curve rose again, the model overfits)"
    if all(flat):
        return f"{name}'s learning curve had flattened on every seed: {how}, under the rule's {fmt(tol, 1)} nat."
    where = "on its one seed" if len(flat) == 1 else f"on {count_of(flat.count(False), len(flat))} seeds"
    return (f"{name}'s learning curve had **not** flattened {where}: {how}, and the rule asks for less than "
            f"{fmt(tol, 1)} nat. This "
            "budget says how quickly each model learns, not where it ends.")
