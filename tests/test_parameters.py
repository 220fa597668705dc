"""lidvae_mini.book.parameters, the one source of truth of every chapter's parameter types and ranges, agrees with the
chapters' parameters cells, their check cells and the committed parameter files."""
from __future__ import annotations

import re

import nbformat
import pytest

from lidvae_mini.book import parameters
from lidvae_mini.book.reproduce import chapter_parameters, chapters, resolve_parameters
from conftest import BOOK

CHAPTERS = sorted(chapters(BOOK))


def test_every_chapter_has_a_spec_and_every_spec_a_chapter():
    assert set(CHAPTERS) == set(parameters.SPECS), "add the chapter's spec to lidvae_mini/book/parameters.py"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_parameters_cell_names_equal_the_spec_and_defaults_pass(chapter):
    defaults = chapter_parameters(BOOK / f"{chapter}.ipynb")
    assert list(defaults) and set(defaults) == set(parameters.SPECS[chapter]), (
        f"{chapter}: only in the cell {sorted(set(defaults) - set(parameters.SPECS[chapter]))}, only in the spec "
        f"{sorted(set(parameters.SPECS[chapter]) - set(defaults))}")
    assert parameters.check(chapter, defaults) == defaults   # strict (no coercion): the defaults as written


@pytest.mark.parametrize("path", sorted((BOOK / "params").glob("**/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_parameter_files_pass(path):
    chapter = path.parent.name
    resolved = resolve_parameters(chapter_parameters(BOOK / f"{chapter}.ipynb"), [str(path)], {}, chapter)
    parameters.check(chapter, resolved, coerce=True, cuda_here=False)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_cell_after_the_parameters_cell_checks_them(chapter):
    """papermill injects its cell right after the parameters cell, so the check that follows sees its values."""
    cells = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4).cells
    i = next(k for k, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    source = cells[i + 1].source
    assert re.search(rf"""check_parameters\(["']{chapter}["'], globals\(\)\);""", source), source
    namespace: dict = {}
    exec(cells[i].source, namespace)
    exec(source, namespace)          # the defaults pass in the chapter too
    name, value, expected = ("seed", -1, "an integer") if "seed" in namespace else ("out_dir", 5, "a folder path")
    namespace[name] = value
    with pytest.raises(ValueError, match=rf"{chapter}: parameter {name}={value}: expected {expected}"):
        exec(source, namespace)


def test_image_names_agree_with_the_package():
    from lidvae_mini.models.baselines import IMAGE_ENCODERS, IMAGE_METHODS
    from lidvae_mini.data import DATASETS
    from lidvae_mini.experiments.remedies import REMEDIES

    assert parameters.REMEDIES == tuple(REMEDIES)
    from lidvae_mini.experiments.image_ablation import CELLS
    assert parameters.ABLATION_CELLS == tuple(CELLS.values())
    from lidvae_mini.experiments.text_methods import TEXT_METHODS
    assert parameters.TEXT_METHODS == TEXT_METHODS
    from lidvae_mini.models.decoders import DECODER_VARIANTS
    assert parameters.DECODER_VARIANTS == DECODER_VARIANTS
    assert set(parameters.IMAGE_METHODS) == set(IMAGE_METHODS)
    assert set(parameters.IMAGE_ENCODERS) == set(IMAGE_ENCODERS)
    assert set(parameters.IMAGE_DATASETS) <= set(DATASETS)


@pytest.mark.parametrize("spec, text", [
    (parameters.SEED, "an integer in [0, 4294967295]"),
    (parameters.POSITIVE, "a number > 0"),
    (parameters.TWO_WIDTHS, "a list of length 2 of non-empty lists of integers >= 1"),
    (parameters.List(parameters.SEED, 1, none=True), "a non-empty list of integers in [0, 4294967295] or None"),
    (parameters.Choice("a", "b"), "one of 'a', 'b'"),
    (parameters.SPECS["01_theorem"]["accuracy"], "a number in (0, 1)"),
])
def test_describe(spec, text):
    assert parameters.describe(spec) == text


def test_coercion_and_strictness():
    base = chapter_parameters(BOOK / "03_gmm.ipynb")
    assert parameters.check("03_gmm", {**base, "n": 3e3}, coerce=True)["n"] == 3000   # -p n=3e3
    with pytest.raises(ValueError, match="n=3000.0: expected an integer"):
        parameters.check("03_gmm", {**base, "n": 3e3})                                # n = 3e3 in the chapter
    for bad in (True, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="parameter lr="):
            parameters.check("06_lidvae", {**chapter_parameters(BOOK / "06_lidvae.ipynb"), "lr": bad})
    with pytest.raises(ValueError, match="missing"):
        parameters.check("errata", {"seed": 0})


def test_device_cuda_is_checked_here_unless_told_otherwise(monkeypatch):
    monkeypatch.setattr(parameters, "_cuda_devices", lambda: 1)
    base = chapter_parameters(BOOK / "07_lidgmvae_pinwheel.ipynb")
    parameters.check("07_lidgmvae_pinwheel", {**base, "device": "cuda:0"})
    with pytest.raises(ValueError, match="device='cuda:1'.*this machine has 1 CUDA device"):
        parameters.check("07_lidgmvae_pinwheel", {**base, "device": "cuda:1"})
    monkeypatch.setattr(parameters, "_cuda_devices", lambda: 0)
    parameters.check("07_lidgmvae_pinwheel", {**base, "device": "cuda:3"}, cuda_here=False)   # a sweep driver
    with pytest.raises(ValueError, match="device='cuda:x'"):
        parameters.check("07_lidgmvae_pinwheel", {**base, "device": "cuda:x"}, cuda_here=False)


def test_a_chapter_without_a_spec_is_checked_against_the_kinds_of_its_defaults():
    defaults = {"n": 3, "lr": 0.1, "name": "a", "flag": False, "xs": [1, 2], "out_dir": None}
    spec = parameters.spec_from_defaults(defaults)
    parameters.check("tiny", {**defaults, "lr": 2, "name": "", "out_dir": "/x"}, spec=spec)
    for name, bad in (("n", 1.5), ("lr", "x"), ("flag", 1), ("xs", 1.5), ("xs", ["a"])):
        with pytest.raises(ValueError, match=f"tiny: parameter {name}="):
            parameters.check("tiny", {**defaults, name: bad}, spec=spec)


def test_at_defaults_reads_the_chapters_own_parameters_cell(tmp_path):
    """A chapter asserts its seed-dependent claims only at its own defaults: every setting equal to its parameters
    cell (seed, folders and device aside); False when its notebook is not on disk (Colab from a URL)."""
    base = chapter_parameters(BOOK / "07_lidgmvae_pinwheel.ipynb")
    assert parameters.at_defaults("07_lidgmvae_pinwheel", base, BOOK)
    assert parameters.at_defaults("07_lidgmvae_pinwheel", {**base, "seed": 3, "out_dir": "x"}, BOOK)
    assert parameters.at_defaults("07_lidgmvae_pinwheel", {**base, "hidden": tuple(base["hidden"])}, BOOK)
    assert not parameters.at_defaults("07_lidgmvae_pinwheel", {**base, "epochs": base["epochs"] + 1}, BOOK)
    assert not parameters.at_defaults("07_lidgmvae_pinwheel", base, tmp_path)
