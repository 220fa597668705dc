"""Run a chapter at chosen parameters with papermill and record everything needed to trust the numbers.

Usage::

    python -m lidvae_mini.reproduce                      # list the chapters and their parameters
    python -m lidvae_mini.reproduce 03_gmm -p n=100000   # one chapter, one override
    python -m lidvae_mini.reproduce 03_gmm -f book/params/03_gmm/full.yaml --out runs/gmm-full

CHAPTER is a chapter's file stem in ``book/``. Parameters come from the chapter's single
``parameters`` cell; ``-f`` YAML files are applied in order, then ``-p key=value`` (values parsed as
YAML: ``-p n=1e5`` is a float, ``-p data=official`` a string). An unknown chapter or parameter is an
error before anything runs. The run folder (default ``runs/CHAPTER/<UTC timestamp>/``) receives

- ``CHAPTER.ipynb``: the executed notebook;
- ``params.yaml``: every parameter's resolved value (defaults included);
- ``metrics.json``: written by the chapter itself (its ``out_dir`` parameter points here);
- ``environment.json``: commit, package versions, devices, command line, start time and wall time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import yaml

from .provenance import METRICS_FILE, environment_info

REPO_ROOT = Path(__file__).resolve().parents[1]


class ReproduceError(ValueError):
    """Bad command-line input to ``reproduce`` (unknown chapter, unknown parameter, bad value)."""


def book_dir(path: str | Path | None = None) -> Path:
    """The book folder: ``path``, else ``./book`` when it exists, else the clone this package lives in."""
    for candidate in ([Path(path)] if path else [Path.cwd() / "book", REPO_ROOT / "book"]):
        if candidate.is_dir():
            return candidate.resolve()
    raise ReproduceError("no book/ folder found: run from a clone of the repository or pass --book DIR")


def chapters(book: Path) -> dict[str, Path]:
    """``{stem: path}`` of every executable chapter (a ``.ipynb`` paired with a ``.md``)."""
    return {p.stem: p for p in sorted(book.glob("*.ipynb")) if p.with_suffix(".md").exists()}


def chapter_parameters(notebook: Path) -> dict:
    """``{name: default value}`` from the notebook's ``parameters`` cell (exactly one is required)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ReproduceError(f"{notebook.name} must have exactly one cell tagged 'parameters', found {len(cells)}")
    namespace: dict = {}
    exec(compile(cells[0].source, f"{notebook.name}:parameters", "exec"), {}, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def parse_overrides(pairs: list[str]) -> dict:
    """Parse ``key=value`` strings; values are read as YAML (numbers, booleans, strings, lists)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ReproduceError(f"parameter {pair!r} is not of the form key=value")
        parsed = yaml.safe_load(value) if value.strip() else ""
        if isinstance(parsed, str):  # YAML 1.1 reads "1e5" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def _listify(value):
    """Tuples (fine in a parameters cell) become lists, which YAML and papermill write back faithfully."""
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value


def _coerce(value, default):
    """Give an integral float the int type of its default (``-p n=1e5`` for an int ``n``)."""
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def resolve_parameters(defaults: dict, files: list[str], overrides: dict, chapter: str) -> dict:
    """Defaults, then each YAML file in order, then ``overrides``; unknown names raise ``ReproduceError``."""
    resolved = {k: _listify(v) for k, v in defaults.items()}
    layers = []
    for f in files:
        data = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(data, dict):
            raise ReproduceError(f"{f} must hold a mapping of parameter names to values")
        layers.append((f, data))
    layers.append(("-p", overrides))
    for origin, layer in layers:
        unknown = sorted(set(layer) - set(defaults))
        if unknown:
            raise ReproduceError(f"unknown parameter(s) {', '.join(unknown)} for chapter {chapter} (from {origin}); "
                                 f"known: {', '.join(sorted(defaults))}")
        resolved.update({k: _listify(_coerce(v, defaults[k])) for k, v in layer.items()})
    return resolved


def _describe(book: Path) -> str:
    lines = ["chapters (python -m lidvae_mini.reproduce CHAPTER -p key=value ...):"]
    for stem, nb in chapters(book).items():
        try:
            params = ", ".join(f"{k}={v!r}" for k, v in chapter_parameters(nb).items())
        except ReproduceError as err:
            params = f"<{err}>"
        lines.append(f"  {stem}: {params}")
    return "\n".join(lines)


def run(chapter: str, overrides: dict | None = None, param_files: list[str] | None = None,
        out: str | Path | None = None, book: str | Path | None = None, timeout: int | None = None) -> Path:
    """Execute ``chapter`` with papermill and return the run folder (see module docstring).

    Raises:
        ReproduceError: unknown chapter or parameter, before anything runs.
        papermill.PapermillExecutionError: a cell failed (the partial notebook is kept in the run folder).
    """
    import papermill as pm

    bdir = book_dir(book)
    known = chapters(bdir)
    if chapter not in known:
        raise ReproduceError(f"unknown chapter {chapter!r}; choose one of: {', '.join(known)}")
    defaults = chapter_parameters(known[chapter])
    params = resolve_parameters(defaults, param_files or [], overrides or {}, chapter)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(out) if out else Path("runs") / chapter / stamp
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if "out_dir" in defaults:
        params["out_dir"] = str(out_dir)
    (out_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    env = environment_info(bdir)
    env.update(chapter=chapter, command=sys.argv, started_utc=stamp)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(known[chapter]), str(out_dir / f"{chapter}.ipynb"), parameters=params,
                            cwd=str(bdir), kernel_name="python3", log_output=True, progress_bar=False,
                            execution_timeout=timeout)
        env["status"] = "completed"
    except BaseException as err:  # keep the record of a failed or interrupted run, then re-raise
        env["status"] = f"failed: {type(err).__name__}"
        raise
    finally:
        env["wall_time_s"] = round(time.perf_counter() - start, 2)
        (out_dir / "environment.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")
    if "out_dir" in defaults and not (out_dir / METRICS_FILE).exists():
        raise RuntimeError(f"{chapter} finished but wrote no {METRICS_FILE} to {out_dir}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lidvae_mini.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", nargs="?", help="chapter file stem, e.g. 03_gmm (omit to list them)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter (repeatable; value parsed as YAML)")
    parser.add_argument("-f", "--params-file", action="append", default=[], metavar="YAML",
                        help="YAML file of parameters (repeatable; later files win; -p wins over files)")
    parser.add_argument("--out", help="run folder (default runs/CHAPTER/<UTC timestamp>/)")
    parser.add_argument("--book", help="book folder (default ./book or the clone holding this package)")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    args = parser.parse_args(argv)
    try:
        if not args.chapter:
            print(_describe(book_dir(args.book)))
            return 0
        out = run(args.chapter, parse_overrides(args.param), args.params_file, args.out, args.book, args.timeout)
    except ReproduceError as err:
        parser.error(str(err))
    print(f"run folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
