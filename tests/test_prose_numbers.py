"""Numbers written in a chapter's prose about a committed result match that result.

A chapter that reads committed results (``load_result("CHAPTER", "SETTING")``, a summary under ``results/``)
should generate every sentence that quotes them (a printed or Markdown-displayed sentence built from the
loaded values, or a myst-nb ``glue``), so the text stays true when the results are rerun. This test is the net
under that rule, for numbers typed by hand into the Markdown cells of such a chapter:

- **Which prose is checked.** The Markdown blocks (paragraphs and list items) that follow a ``load_result`` call
  in its section (up to the next heading), and every block anywhere that speaks of committed results: it
  mentions ``results/``, "committed", or the ``cpu`` scale ("CPU scale", "CPU-scale", "cpu scale").
- **Which numbers.** Every decimal number (``0.303``, ``−195.6``, ``1,234.5``), percentage (``31%``) and
  mantissa-times-power (``1.2 \\times 10^{-3}``) in those blocks, outside inline code, links' targets and
  roles, and not a reference (§2.2, Section 3.1, Eq. 4.2, Table 2.1, Figure 1.3). Integers are not checked: seeds, depths, layer counts and sample sizes are too easily mistaken for
  results.
- **What a number must be.** One of the values of the loaded results' ``metrics.json`` (means, standard
  deviations, per-seed values, scalars; not per-epoch histories or other long lists) at the precision it is
  printed with (``0.30`` matches 0.2987; a number typed without a sign may match a negative value: "170 nats
  worse"); or a number that is not a result: a literal in one of the chapter's code cells (a threshold, the
  paper's table, a default parameter) or a value of the loaded ``params.yaml``, with either sign.

A number that is none of these (a stale value after a rerun, a typo, a derived figure such as a difference of
two results) fails the test with its sentence. Coincidences can hide a wrong number, when it happens to equal
another value of the results at the printed precision: the test proves that prose numbers are *among* the
committed values, not that each sits beside the right label.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jupytext
import numpy as np
import pytest
import yaml

from conftest import ROOT, chapter_sources

LOAD = re.compile(r'load_result\(\s*"([^"]+)"\s*,\s*"([^"]+)"\s*[,)]')
ANY_LOAD = re.compile(r"\bload_result\(")
HEADING = re.compile(r"^#{1,6}\s")
ABOUT_COMMITTED = re.compile(r"results/|\bcommitted\b|\bcpu[ -]scale\b", re.IGNORECASE)
#: a decimal number (an integer only before "%"), with an optional sign (ASCII hyphen-minus or Unicode minus) and thousands separators;
#: optionally followed by "%" or by a power of ten ("\times 10^{-3}", "× 10^-3", "\cdot 10^{4}")
NUMBER = re.compile(
    r"(?<![\w.,^{])(?P<sign>[−-])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?(?!\w|\.\d)"
    r"(?P<pct>\s?%)?"
    r"(?:\s*(?:\\times|\\cdot|×)\s*10\^\{?(?P<exp>[−-]?\d+)\}?)?")
REFERENCE = re.compile(r"(?:§|\b(?:[Ss]ections?|[Ee]qs?\.|[Ee]quations?|[Tt]ables?|[Ff]ig(?:ure)?s?\.?|[Aa]ppendix|"
                       r"[Dd]efinitions?|[Tt]heorems?|[Ll]emmas?|[Cc]hapters?))\s?$")
LONG_LIST = 16   # lists longer than this (per-epoch histories) are not values a sentence quotes


def _strip_markup(text: str) -> str:
    """Prose without inline code, roles, link targets and HTML comments (their digits are not numbers)."""
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"\{[\w:-]+\}`[^`]*`", " ", text)        # {ref}`...`, {glue:text}`...`
    text = re.sub(r"`[^`]*`", " ", text)                    # inline code
    text = re.sub(r"\]\([^)]*\)", "]", text)                # [text](target)
    text = re.sub(r"\barXiv:\s*\d{4}\.\d{4,5}", " ", text)      # arXiv identifiers
    return text


def prose_numbers(text: str) -> list[tuple[float, float, bool, str]]:
    """``(value, tolerance, signed, token)`` for every checked number of a Markdown block (see module doc)."""
    out = []
    text = _strip_markup(text)
    for m in NUMBER.finditer(text):
        if m["frac"] is None and not m["pct"]:
            continue                                        # an integer: not checked
        if REFERENCE.search(text[max(0, m.start() - 16):m.start()]):
            continue                                        # §2.2, Section 3.1, Eq. 4.2
        digits = len(m["frac"] or "")
        value = float(f"{m['int'].replace(',', '')}.{m['frac'] or 0}")
        tol = 0.5 * 10.0 ** -digits
        if m["pct"]:
            value, tol = value / 100, tol / 100
        if m["exp"]:
            scale = 10.0 ** int(m["exp"].replace("−", "-"))
            value, tol = value * scale, tol * scale
        signed = m["sign"] is not None
        out.append((-value if signed else value, tol * (1 + 1e-9), signed, m.group(0).strip()))
    return out


def _numbers_in(node, out: list[float]) -> None:
    """Every number of a JSON/YAML tree, except long numeric lists (histories) and lists of lists."""
    if isinstance(node, bool) or node is None:
        return
    if isinstance(node, (int, float)):
        if math.isfinite(node):
            out.append(float(node))
    elif isinstance(node, dict):
        for v in node.values():
            _numbers_in(v, out)
    elif isinstance(node, list):
        if len(node) > LONG_LIST or any(isinstance(v, list) for v in node):
            return
        for v in node:
            _numbers_in(v, out)


def code_literals(code: str) -> list[float]:
    """Numeric literals of the chapter's code (``0.01``, ``1e-3``, ``-95.4``, ``20_000``)."""
    vals = []
    for tok in re.findall(r"(?<![\w.])-?\d[\d_]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])", code):
        try:
            vals.append(float(tok.replace("_", "")))
        except ValueError:
            pass
    return vals


def _matches(value: float, tol: float, signed: bool, candidates: list[float]) -> bool:
    if signed:
        return any(abs(c - value) <= tol for c in candidates)
    return any(abs(abs(c) - abs(value)) <= tol for c in candidates)


def _blocks(markdown: str) -> list[str]:
    """Paragraphs and list items of a Markdown cell (math blocks stay with their paragraph)."""
    blocks, cur = [], []
    for line in markdown.splitlines():
        if not line.strip() or re.match(r"^\s*(?:[-*+]|\d+\.)\s", line) or HEADING.match(line):
            if cur:
                blocks.append("\n".join(cur))
            cur = [line] if line.strip() else []
        else:
            cur.append(line)
    if cur:
        blocks.append("\n".join(cur))
    return blocks


def check_chapter(text: str, results_root: Path) -> list[str]:
    """Problems with the prose numbers of one chapter's MyST source ``text`` (empty: none).

    ``results_root`` is the ``results/`` folder the chapter's ``load_result`` calls read.
    """
    nb = jupytext.reads(text, fmt="md:myst")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    uses = sorted(set(LOAD.findall(code)))
    problems = []
    if len(LOAD.findall(code)) != len(ANY_LOAD.findall(code)):
        problems.append("a load_result call does not name its chapter and setting as string literals "
                        '(load_result("CHAPTER", "SETTING")): this test cannot see which result it reads')
    values, allowed = [], code_literals(code)
    for chapter, setting in uses:
        folder = results_root / chapter / setting
        if not (folder / "metrics.json").exists():
            problems.append(f"load_result({chapter!r}, {setting!r}): {folder} has no metrics.json")
            continue
        _numbers_in(json.loads((folder / "metrics.json").read_text()), values)
        if (folder / "params.yaml").exists():
            _numbers_in(yaml.safe_load((folder / "params.yaml").read_text()), allowed)

    # sections (split at every heading) whose code reads a committed result
    section, cells = 0, []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts = [[]]
            for line in cell.source.splitlines():
                if HEADING.match(line):
                    section += 1
                    parts.append([])
                parts[-1].append((section, line))
            cells += [("markdown", p) for p in parts if p]
        elif cell.cell_type == "code":
            cells.append(("code", [(section, cell.source)]))
    reading = set()                  # sections in which a cell has read a committed result so far
    for kind, lines in cells:
        if kind == "code":
            if ANY_LOAD.search(lines[0][1]):
                reading.add(lines[0][0])
            continue
        in_result_section = lines[0][0] in reading
        for block in _blocks("\n".join(line for _, line in lines)):
            if not (in_result_section or ABOUT_COMMITTED.search(block)):
                continue
            for value, tol, signed, token in prose_numbers(block):
                if _matches(value, tol, signed, values) or _matches(value, tol, False, allowed):
                    continue
                sentence = next((s for s in re.split(r"(?<=[.;:])\s+", block) if token in s), block)
                problems.append(f"{token!r} is no value of {', '.join('/'.join(u) for u in uses) or 'any loaded result'}"
                                f" at its printed precision, nor a number of the chapter's code: "
                                f"{' '.join(sentence.split())[:300]}")
    return problems


CHAPTERS_WITH_RESULTS = [p for p in chapter_sources() if ANY_LOAD.search(p.read_text())]


def test_chapters_that_read_committed_results_are_found():
    assert {"07b_pinwheel_cpu", "08b_images_cpu", "08c_images_ablation", "09b_text_cpu"} <= {p.stem for p in CHAPTERS_WITH_RESULTS}


@pytest.mark.parametrize("md", CHAPTERS_WITH_RESULTS, ids=[p.stem for p in CHAPTERS_WITH_RESULTS])
def test_prose_numbers_match_the_committed_results(md):
    problems = check_chapter(md.read_text(), ROOT / "results")
    assert not problems, f"{md.name}:\n" + "\n".join(f"- {p}" for p in problems)


# --- the check itself, on a synthetic chapter -----------------------------------------------------------------

HEADER = """---
jupytext:
  formats: ipynb,md:myst
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

# A chapter

Default-scale prose: 0.777 is not checked here (it speaks of no stored run).

```{code-cell} ipython3
threshold = 0.01
```

## Ten seeds at a larger scale

```{code-cell} ipython3
res = load_result("99_toy", "cpu")
```

"""


@pytest.fixture
def toy_results(tmp_path):
    folder = tmp_path / "99_toy" / "cpu"
    folder.mkdir(parents=True)
    metrics = {"lidgmvae": {"acc": {"mean": 0.30317, "sd": 0.0061, "n": 3, "values": [0.30, 0.2999, 0.31]},
                            "iwae_ll": {"mean": -195.62, "sd": 2.04, "n": 3, "values": [-193.7, -195.5, -197.7]},
                            "history": {"mean": [0.5 + 0.01 * i for i in range(40)], "sd": None, "n": 1,
                                        "values": [[0.5 + 0.01 * i for i in range(40)]]}},
               "AU": 0.3125, "KL_y": 0.0012}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "params.yaml").write_text(yaml.safe_dump({"lr": 0.003, "seeds": [0, 1, 2]}))
    return tmp_path


@pytest.mark.parametrize("sentence", [
    "The LIDGMVAE's accuracy is 0.303 ± 0.006 and its log-likelihood $-195.6 \\pm 2.0$ nats.",
    "Accuracy 0.30 to 0.31 over seeds; the best seed scores 0.310.",
    "AU is 31% of the units; KL_y is $1.2 \\times 10^{-3}$ nats.",
    "A log-likelihood 195.6 nats below zero; learning rate 0.003; the AU threshold 0.01.",
    "Version `v0.1.0` of [the code](https://example.org/1.234) with {ref}`item 4.5 <x>`: no numbers here.",
    "The AVAE paper (arXiv:2311.07693) is cited, not measured.",
    "As in §2.2 and Section 3.1 of the paper (Eq. 4.2, Table 2.1), the accuracy is 0.303.",
])
def test_numbers_that_are_committed_values_pass(toy_results, sentence):
    assert check_chapter(HEADER + sentence + "\n", toy_results) == []


@pytest.mark.parametrize("sentence, token", [
    ("The LIDGMVAE's accuracy is 0.323 ± 0.006.", "0.323"),                      # a typo
    ("Its log-likelihood is $-185.6$ nats.", "-185.6"),                          # stale after a rerun
    ("The LIDGMVAE is 1.9 nats behind seed 0.", "1.9"),                          # a derived number
    ("Its log-likelihood is −195.66 nats.", "−195.66"),                         # off in the last digit
    ("A per-epoch history value 0.73 is not a quotable result.", "0.73"),        # long lists are not values
    ("AU is 32% of the units.", "32%"),
    ("KL_y is $1.3 \\times 10^{-3}$ nats.", "1.3 \\times 10^{-3}"),
])
def test_a_wrong_number_in_a_result_section_fails(toy_results, sentence, token):
    problems = check_chapter(HEADER + sentence + "\n", toy_results)
    assert len(problems) == 1 and repr(token) in problems[0], problems


def test_a_wrong_number_elsewhere_fails_when_its_block_speaks_of_committed_results(toy_results):
    text = HEADER.replace("Default-scale prose: 0.777 is not checked here (it speaks of no stored run).",
                          "Default-scale prose: 0.777.\n\n- At the CPU scale the accuracy is 0.777.")
    problems = check_chapter(text, toy_results)
    assert len(problems) == 1 and "'0.777'" in problems[0] and "CPU scale" in problems[0], problems


def test_prose_before_the_result_is_read_is_checked_only_if_it_speaks_of_committed_results(toy_results):
    text = HEADER.replace("## Ten seeds at a larger scale\n", "## Ten seeds at a larger scale\n\nData from "
                          "$0.85\\,\\mathcal N(-0.5, 1)$.\n\nThe committed runs below score 0.777.\n")
    problems = check_chapter(text, toy_results)
    assert len(problems) == 1 and "'0.777'" in problems[0], problems


def test_a_result_read_through_a_variable_is_reported(toy_results):
    text = HEADER.replace('load_result("99_toy", "cpu")', 'load_result("99_toy", setting)')
    assert any("string literals" in p for p in check_chapter(text, toy_results))


def test_a_missing_committed_result_is_reported(toy_results):
    text = HEADER.replace('"99_toy", "cpu"', '"99_toy", "gpu"')
    assert any("has no metrics.json" in p for p in check_chapter(text, toy_results))


# --- lidvae_mini.book.prose: the helpers chapters build generated sentences with ------------------------------------

def test_prose_helpers_write_counts_ranges_and_numbers():
    from lidvae_mini.book.prose import count_of, fmt, listing, number_word, ordinal, sci, span

    assert [number_word(k) for k in (0, 5, 12, 13)] == ["zero", "five", "twelve", "13"]
    assert (count_of(8, 10), count_of(10, 10), count_of(0, 3), count_of(2, 2)) == \
        ("eight of ten", "all ten", "none of the three", "both")
    assert (span([0.981, 1.0, np.nan]), span([0.5, 0.501]), span([])) == ("0.98 to 1.00", "0.50", "n/a")
    assert (fmt(-2.834, 3), fmt(-0.0001), sci(1.8e-5), sci(0.25), sci(0)) == \
        ("−2.834", "0.00", "1.8 \\times 10^{-5}", "0.25", "0")
    assert (listing([4]), listing([4, 6]), listing(x for x in (1, 4, 6))) == ("4", "4 and 6", "1, 4 and 6")
    assert (ordinal(2), ordinal(6), ordinal(21), ordinal(13)) == ("second", "sixth", "21st", "13th")
    for bad in (lambda: number_word(-1), lambda: count_of(3, 2), lambda: ordinal(0)):
        with pytest.raises(ValueError):
            bad()


def test_result_tag_names_folder_scale_and_commit(tmp_path):
    from lidvae_mini.book.prose import result_tag
    from lidvae_mini.book.results import Result

    res = Result(tmp_path / "07_x" / "cpu", {}, {}, {"scale": "cpu", "commits": ["5d2634b9af53"]})
    assert result_tag(res) == "results/07_x/cpu, cpu scale, commit 5d2634b"
    with pytest.raises(ValueError):
        result_tag(Result(tmp_path / "07_x" / "cpu", {}, {}, {"commits": ["5d2634b"]}))
