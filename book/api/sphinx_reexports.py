"""Sphinx extension of the Package reference: a reference resolves through the names Python sees.

A docstring may name an object where it is used rather than where it is defined: ``lidvae_mini.data.data_dir``
(defined in ``lidvae_mini.data.paths``, re-exported by ``lidvae_mini.data``), or ``ICNN`` inside
``lidvae_mini.models.brenier`` (imported there from ``lidvae_mini.models.icnn``). autodoc documents each object once, under
its defining module, so Sphinx alone cannot resolve such a name. When a Python reference is missing, this
extension looks the name up as Python would (in the module, or class, the reference was written in, else as a
dotted path), and retries with the defining module's name. A name that does not exist, or whose definition
has no page, stays missing, and ``-n -W`` fails the build. An unqualified name that several modules define
(``NonFiniteLossError`` in ``train`` and ``text``) means, in a module that imports it, the imported one.
"""
from __future__ import annotations

import importlib
import sys


def _lookup(dotted: str):
    """The object at ``dotted`` (``package.module.attr.attr``), or ``None``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def _definitions(target: str, module: str | None, cls: str | None) -> list[str]:
    """Dotted names under which the object ``target`` may be documented (its defining module first)."""
    scopes = [f"{module}.{cls}", module] if module and cls else [module] if module else []
    for scope in [*scopes, None]:
        dotted = f"{scope}.{target}" if scope else target
        if not dotted.startswith("lidvae_mini."):
            continue
        obj = _lookup(dotted)
        if obj is None:
            continue
        head, _, attr = target.partition(".")
        holder = _lookup(f"{scope}.{head}") if scope else None
        out = []
        for thing, rest in ((obj, ""), (holder, f".{attr}" if attr else "")):
            real, qual = getattr(thing, "__module__", None), getattr(thing, "__qualname__", None)
            if isinstance(real, str) and isinstance(qual, str) and real.startswith("lidvae_mini"):
                out.append(f"{real}.{qual}{rest}")
        # a constant has no __module__: the submodules of the package that hold the same object
        parent, _, name = dotted.rpartition(".")
        out += [f"{m}.{name}" for m in sorted(sys.modules) if m.startswith(f"{parent}.")
                and getattr(sys.modules[m], name, None) is obj]
        return [d for d in dict.fromkeys(out) if d != dotted]
    return []


def _missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    for dotted in _definitions(node["reftarget"], node.get("py:module"), node.get("py:class")):
        found = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], dotted, node, contnode)
        if found is not None:
            return found
    return None


def _imported_names_first(app, doctree):
    """A field's type (``Raises: NonFiniteLossError: ...``) is searched in every module, and two classes of one
    name make it ambiguous; where the module the docstring belongs to imports that name, it means the imported
    object, as in Python: point the reference at its definition."""
    from sphinx import addnodes

    for node in doctree.findall(addnodes.pending_xref):
        module, target = node.get("py:module"), node.get("reftarget", "")
        if node.get("refdomain") != "py" or not node.get("refspecific") or not module or "." in target:
            continue
        if not module.startswith("lidvae_mini"):
            continue
        obj = _lookup(f"{module}.{target}")
        real, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(real, str) and isinstance(qual, str) and real.startswith("lidvae_mini") and real != module:
            node["reftarget"] = f"{real}.{qual}"


def setup(app):
    app.connect("missing-reference", _missing_reference)
    app.connect("doctree-read", _imported_names_first)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
