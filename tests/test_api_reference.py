"""The Package reference part: one page per public module of lidvae_mini, generated from its docstrings.

A module without a page (or a page of a module that no longer exists) fails here; a docstring that Sphinx cannot
render, or a reference it cannot resolve, fails the book build (``-W -n``).
"""
from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import pytest
import yaml

import lidvae_mini
from conftest import BOOK, ROOT, toc_files

API = BOOK / "api"


def public_modules() -> list[str]:
    """Every module and subpackage of lidvae_mini whose dotted name has no part starting with ``_``."""
    names = ["lidvae_mini"] + [m.name for m in pkgutil.walk_packages(lidvae_mini.__path__, "lidvae_mini.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


MODULES = public_modules()


def test_every_public_module_has_a_page_and_every_page_a_module():
    pages = {p.stem for p in API.glob("*.md")} - {"quickstart"}   # the one page that documents no module
    assert {"lidvae_mini.models.vae", "lidvae_mini.data.images"} <= set(MODULES)
    assert sorted(set(MODULES) - pages) == [], "modules without a page in book/api/ (add book/api/<module>.md)"
    assert sorted(pages - set(MODULES)) == [], "pages in book/api/ of modules that do not exist"


@pytest.mark.parametrize("module", MODULES)
def test_page_documents_its_module_and_is_in_the_toc(module):
    page = API / f"{module}.md"
    text = page.read_text()
    assert re.search(rf"^\.\. automodule:: {re.escape(module)}$", text, flags=re.M), \
        f"{page.name}: no `.. automodule:: {module}` (inside an eval-rst block)"
    assert "```{eval-rst}" in text, f"{page.name}: autodoc output must be parsed as reStructuredText (eval-rst)"
    is_package = (ROOT / Path(*module.split(".")) / "__init__.py").exists()
    if not is_package:
        assert re.search(r"^\s+:members:$", text, flags=re.M), f"{page.name}: the module's members are not listed"
    assert f"book/api/{module}" in toc_files(), f"_toc.yml does not list book/api/{module}"


MACHINERY = ("lidvae_mini.book", "lidvae_mini.experiments")


def test_reference_lists_the_library_first_and_the_machinery_apart():
    """The library's part: the package page, the quickstart, then its modules in alphabetical order; the book's
    machinery (running chapters, results, prose, releases, the chapters' experiments) in a part of its own after
    it."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    captions = [p.get("caption") for p in toc["parts"]]
    assert captions.index("Package reference") + 1 == captions.index("The book's machinery")
    parts = {p.get("caption"): [c["file"].removeprefix("book/api/") for c in p["chapters"]] for p in toc["parts"]}
    library, machinery = parts["Package reference"], parts["The book's machinery"]
    assert library[:2] == ["lidvae_mini", "quickstart"], "the package page, then the quickstart"
    assert library[2:] == sorted(library[2:]), "module pages in alphabetical order"
    assert machinery == sorted(machinery)
    assert not [m for m in library if m.startswith(MACHINERY)] and all(m.startswith(MACHINERY) for m in machinery)


def test_sphinx_configuration_generates_offline():
    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert {"sphinx.ext.autodoc", "sphinx.ext.napoleon"} <= set(sphinx["extra_extensions"])
    # Jupyter Book loads sphinx.ext.intersphinx: with a mapping it would download inventories during the build
    assert sphinx["config"].get("intersphinx_mapping", {}) == {}
    assert "sphinx_reexports" in sphinx.get("local_extensions", {})
    # nitpicky mode may skip other packages' and private names, never a public lidvae_mini one
    for kind, target in sphinx["config"].get("nitpick_ignore_regex", []):
        for name in ("lidvae_mini.models.vae.VAE", "lidvae_mini.data.data_dir", "lidvae_mini.book.results.result_rows"):
            assert not (re.fullmatch(kind, "py:class") and re.fullmatch(target, name)), (kind, target, name)


def test_reexported_names_resolve_to_their_definition():
    import sys

    sys.path.insert(0, str(API))
    try:
        from sphinx_reexports import _definitions
    finally:
        sys.path.remove(str(API))
    assert "lidvae_mini.data.paths.data_dir" in _definitions("lidvae_mini.data.data_dir", None, None)
    assert "lidvae_mini.models.icnn.ICNN" in _definitions("ICNN", "lidvae_mini.models.brenier", None)
    assert "lidvae_mini.models.icnn.ICNN.gradient" in _definitions("ICNN.gradient", "lidvae_mini.models.brenier", None)
    assert _definitions("no_such_name", "lidvae_mini.models.brenier", None) == []


def test_an_imported_name_means_the_imported_object():
    """``Raises: NonFiniteLossError`` in avae and text (which import it from the loop) names the loop's class."""
    import sys

    from docutils import nodes
    from sphinx import addnodes

    sys.path.insert(0, str(API))
    try:
        from sphinx_reexports import _imported_names_first
    finally:
        sys.path.remove(str(API))
    doc = nodes.document(None, None)
    for module in ("lidvae_mini.models.avae", "lidvae_mini.models.text"):
        ref = addnodes.pending_xref("", refdomain="py", reftype="exc", reftarget="NonFiniteLossError",
                                    refspecific=True)
        ref["py:module"] = module
        doc += ref
    _imported_names_first(None, doc)
    assert [r["reftarget"] for r in doc.findall(addnodes.pending_xref)] == \
        ["lidvae_mini.models.loop.NonFiniteLossError"] * 2
