"""Chapter hygiene: paired .md/.ipynb in sync and output-free, one parameters cell, the Colab cell, the toc."""
from __future__ import annotations

import re

import jupytext
import nbformat
import pytest
import yaml

from conftest import BOOK, ROOT, chapter_sources, toc_files

CHAPTERS = chapter_sources()
IDS = [p.stem for p in CHAPTERS]


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_there_are_chapters():
    assert len(CHAPTERS) >= 4, CHAPTERS


@pytest.mark.parametrize("md", CHAPTERS, ids=IDS)
def test_pair_in_sync_and_output_free(md):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `make pairs` and commit it"
    source, committed = jupytext.read(md), nbformat.read(ipynb, as_version=4)
    assert _cells(source) == _cells(committed), f"{ipynb.name} drifted from {md.name}: run `make pairs`"
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{ipynb.name} carries outputs"
    assert committed.metadata["kernelspec"]["name"] == "python3"


#: Cells a reader does not read: their input is removed or folded away (the outputs stay).
HIDDEN = {"remove-input", "remove-cell", "hide-input", "hide-cell"}
MAX_CODE_SHARE, MAX_CODE_LINES = 0.45, 200


@pytest.mark.parametrize("md", CHAPTERS, ids=IDS)
def test_visible_code_is_the_lines_that_carry_the_idea(md):
    """Issue 21: a page shows the model, the objective, the experiment call and the results; prose generators,
    loaders and consistency checks live in the package or in cells whose input is hidden. Visible code (code cells
    not removed or hidden) is at most 45% of the chapter's non-blank lines and at most 200 lines."""
    cells = jupytext.read(md).cells
    lines = [(c, sum(1 for line in c.source.splitlines() if line.strip())) for c in cells]
    total = sum(n for _, n in lines)
    visible = sum(n for c, n in lines if c.cell_type == "code" and not HIDDEN & set(c.metadata.get("tags", [])))
    assert visible <= MAX_CODE_LINES and visible <= MAX_CODE_SHARE * total, \
        f"{md.name}: {visible} visible code lines of {total} ({visible / total:.0%}); hide the machinery"


@pytest.mark.parametrize("md", CHAPTERS, ids=IDS)
def test_metrics_are_saved_not_printed(md):
    """Issue 21: what ``metrics.json`` holds is saved, not dumped on the page: the cell that saves it ends with the
    ``save_metrics`` call and shows no input."""
    import ast

    cells = [c for c in jupytext.read(md).cells if c.cell_type == "code" and "save_metrics(" in c.source
             and "import" not in c.source.split("save_metrics(")[0].splitlines()[-1]]
    for cell in cells:
        last = ast.parse(cell.source).body[-1]
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) \
            and getattr(last.value.func, "id", None) == "save_metrics", f"{md.name}: the metrics cell ends with a dump"
        assert HIDDEN & set(cell.metadata.get("tags", [])), f"{md.name}: the metrics cell shows its input"


#: Pages that train and sample nothing (they read committed results), so have no seed to set.
READS_ONLY = {"07b_pinwheel_cpu", "08b_images_cpu", "09b_text_cpu"}
#: The package's entry points that train or sample (a chapter that calls one needs a seed).
TRAINS = re.compile(r"\b(fit|fit_\w+|run_method|run_remedy|run_rows|run_text_method|run_corpus|sample_alpha|run_nuts)\(")


@pytest.mark.parametrize("md", CHAPTERS, ids=IDS)
def test_exactly_one_parameters_cell_with_out_dir(md):
    nb = jupytext.read(md)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{md.name}: {len(params)} parameters cells"
    names = set(re.findall(r"^(\w+)\s*=", params[0].source, flags=re.M))
    if md.stem in READS_ONLY:                   # exempt from the seed only while it reads results and trains nothing
        source = md.read_text()
        assert "load_result(" in source and not TRAINS.search(source), f"{md.name} trains or samples: it needs a seed"
    needed = {"out_dir"} if md.stem in READS_ONLY else {"seed", "out_dir"}
    assert needed <= names, f"{md.name}: parameters cell lacks {'/'.join(sorted(needed))} ({names})"


@pytest.mark.parametrize("md", CHAPTERS, ids=IDS)
def test_colab_cell_is_hidden_and_pinned_to_this_release(md):
    from lidvae_mini.book.release import expected_ref

    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    first_code = next(c for c in jupytext.read(md).cells if c.cell_type == "code")
    assert "remove-cell" in first_code.metadata.get("tags", []), f"{md.name}: first code cell must be hidden"
    assert '"google.colab" in sys.modules' in first_code.source
    pin = f"{repo.replace('https://', 'git+https://')}@{expected_ref(ROOT)}"   # main until a release is cut
    assert pin in first_code.source, f"{md.name}: Colab install must be pinned to {pin}"


def test_toc_lists_every_page_and_only_existing_ones():
    listed = set(toc_files())
    pages = {p.relative_to(ROOT).with_suffix("").as_posix() for p in BOOK.rglob("*.md")}   # book/api/ too
    assert listed == pages, f"in toc only: {listed - pages}; on disk only: {pages - listed}"


def test_jupyter_book_pinned_below_2_and_errors_raise():
    reqs = (ROOT / "requirements.txt").read_text()
    version = re.search(r"^jupyter-book==(\S+)", reqs, flags=re.M).group(1)
    assert int(version.split(".")[0]) < 2
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["raise_on_error"] is True
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
    assert config["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")


@pytest.mark.parametrize("md", CHAPTERS, ids=IDS)
def test_full_scale_parameter_file_uses_known_names(md):
    from lidvae_mini.book.reproduce import chapter_parameters

    known = chapter_parameters(md.with_suffix(".ipynb"))
    for f in sorted((BOOK / "params" / md.stem).glob("*.yaml")):
        unknown = set(yaml.safe_load(f.read_text()) or {}) - set(known)
        assert not unknown, f"{f}: unknown parameters {unknown}"


@pytest.mark.parametrize("md", CHAPTERS, ids=IDS)
def test_papermill_sees_every_parameter(md):
    """papermill parses the parameters cell itself (--help-notebook, injection warnings): no line may defeat it."""
    from papermill.translators import PythonTranslator

    from lidvae_mini.book.reproduce import chapter_parameters

    cell = next(c for c in nbformat.read(md.with_suffix(".ipynb"), as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    seen = {p.name for p in PythonTranslator.inspect(cell)}
    missed = set(chapter_parameters(md.with_suffix(".ipynb"))) - seen
    assert not missed, f"{md.name}: papermill cannot parse the lines of {sorted(missed)} (avoid '=' and '<' in comments)"


def test_book_build_ignores_what_the_tools_leave_in_the_clone():
    """A second `make test` in one clone: pytest's cache README and the like must not become book pages."""
    from sphinx.util.matching import Matcher

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    match = Matcher(config["exclude_patterns"])

    def matcher(path: str) -> bool:   # Sphinx skips a whole folder that a pattern matches
        parts = path.split("/")
        return any(match("/".join(parts[:i])) for i in range(1, len(parts) + 1))
    left_by_tools = [".pytest_cache/README.md", ".hypothesis/notes.md", ".benchmarks/x.md", ".make/x.md",
                     "lidvae_mini.egg-info/PKG-INFO.md", "runs/07/seed_0/07_lidgmvae_pinwheel.ipynb"]
    assert [p for p in left_by_tools if not matcher(p)] == []
    toc = set(toc_files())
    stray = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.md")
             if ".git" not in p.parts and p.with_suffix("").relative_to(ROOT).as_posix() not in toc
             and not matcher(p.relative_to(ROOT).as_posix())]
    assert stray == [], f"markdown files the book build would read but no toc lists: {stray}"


def test_the_index_how_to_read_table_links_every_page_of_the_book():
    """Issue 21 §3: the index's "How to read this book" table lists every chapter and page of the book (the
    package reference aside), so a page added to the table of contents must be added there too."""
    index = (BOOK / "index.md").read_text()
    table = index.split("## How to read this book", 1)[1].split("\n\n", 2)[1]
    linked = set(re.findall(r"\]\(([\w.]+)\.md\)", table))
    pages = {f.removeprefix("book/") for f in toc_files()} - {"index"}
    assert {p for p in pages if not p.startswith("api/")} - linked == set()
