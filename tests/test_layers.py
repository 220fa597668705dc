"""The package's folders stack (issue 20): the library imports nothing from the book's machinery, and no module
imports from a folder listed after its own in :mod:`lidvae_mini`'s docstring. Imports inside functions count."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lidvae_mini"

#: Each folder (or top-level module) and its layer; a module may import from its own layer and the ones below.
LAYERS = {"_checks": 0, "_git": 0, "data": 1, "plotting": 1, "evaluation": 2, "exact": 3, "models": 4,
          "diagnose": 5, "book": 6, "experiments": 7}
LIBRARY_TOP = LAYERS["diagnose"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str | None = None) -> set[str]:
    """Absolute names of the package's modules (or packages) that ``path`` (the module ``name``, by default its
    place in the package) imports."""
    name, out = name or _module_name(path), set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:   # from . import a, b: each name may be a module
                out.update(f"{target}.{a.name}" for a in node.names)
            else:
                out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {t for t in out if t.startswith("lidvae_mini.")}


def _layer(name: str) -> int | None:
    """The layer of the package's module ``name`` (``lidvae_mini.X...``), ``None`` for the package itself."""
    parts = name.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_folder_and_top_level_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"}
    assert tops == set(LAYERS), "a new folder or top-level module needs its place in LAYERS (and the docstring)"


def _upward(path: Path, name: str) -> list[str]:
    own = _layer(name)
    return [] if own is None else sorted(t for t in _imports(path, name) if (_layer(t) or 0) > own)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_upward(path):
    name = _module_name(path)
    assert not _upward(path, name), f"{name} (layer {_layer(name)}) imports from a higher layer: {_upward(path, name)}"


def test_the_library_imports_nothing_from_the_machinery():
    library = [p for p in MODULES if (_layer(_module_name(p)) or 0) <= LIBRARY_TOP]
    found = {_module_name(p): sorted(t for t in _imports(p) if _layer(t) > LIBRARY_TOP) for p in library}
    assert not {k: v for k, v in found.items() if v}


def test_the_check_fails_on_an_upward_import(tmp_path):
    """The check itself: a library module that imports the machinery is caught (the defect this test is for)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from ..book.prose import fmt\n\n\ndef f():\n    from ..experiments import remedies\n")
    name = "lidvae_mini.models.probe"
    assert _imports(probe, name) == {"lidvae_mini.book.prose", "lidvae_mini.experiments"}
    assert _upward(probe, name) == ["lidvae_mini.book.prose", "lidvae_mini.experiments"]
    probe.write_text("from ..evaluation.metrics import active_units\nfrom .vae import VAE\n")
    assert _upward(probe, name) == []
