"""Run a chapter at chosen parameters with papermill and record everything needed to trust the numbers.

Usage::

    python -m lidvae_mini.book.reproduce                      # list the chapters and their parameters
    python -m lidvae_mini.book.reproduce 03_gmm -p n=100000   # one chapter, one override
    python -m lidvae_mini.book.reproduce 03_gmm -f book/params/03_gmm/full.yaml --out runs/gmm-full

CHAPTER is a chapter's file stem in ``book/``. Parameters come from the chapter's single
``parameters`` cell; ``-f`` YAML files are applied in order, then ``-p key=value`` (values parsed as
YAML: ``-p n=1e5`` is a number, made an int where the chapter expects one; ``-p data=official`` a string). The
run folder (``--out``, default ``runs/CHAPTER/<UTC timestamp>/``) receives

- ``CHAPTER.ipynb``: the executed notebook;
- ``params.yaml``: every parameter's resolved value (defaults included);
- ``metrics.json``: written by the chapter itself (its ``out_dir`` parameter points here);
- ``environment.json``: commit, package versions, devices, command line, start time, wall time, ``status``
  and ``scale``.

Checks before anything runs (no run folder is made, no kernel started; exit status 2 and a one-line message for
bad input, 1 for missing data):

- an unknown chapter or parameter, a ``-f`` file that is missing or not a YAML mapping, a ``-p`` without ``=``;
- every parameter's **type and value** against the chapter's spec (:data:`lidvae_mini.book.parameters.SPECS`, which
  the chapter checks too, in the cell after its parameters): ``-p seed=1.5``, ``-p sigmas=1.5``, ``-p n=abc``,
  ``-p sigma=-1`` or ``-p device=cuda`` on a machine without CUDA are refused, naming the parameter and what
  was expected;
- ``--out``: a folder that holds another run (any of its files) is refused unless ``--overwrite``; a non-empty
  folder that is not a run folder is always refused (nothing of it would survive);
- **data**: the datasets the resolved parameters ask for (:data:`CHAPTER_DATASETS`: e.g. ``datasets`` and, when
  the depth sweep runs, ``sweep_dataset`` of ``08_images``) must be known names whose files are all on disk in
  the chapter's data folder (its ``data_dir`` parameter, else ``$LIDVAE_DATA``, else ``~/.cache/lidvae_mini``).
  Inside the book build a chapter may skip a section whose data are absent; a reproduce run may not.

The **scale** (``ci``, ``cpu`` or ``paper``; see :data:`lidvae_mini.book.provenance.SCALES`) is recorded in
``environment.json``. Without ``--scale`` it is ``ci`` when every parameter other than
:data:`SCALE_NEUTRAL_PARAMETERS` has its chapter default, else ``cpu``: ``paper`` is never inferred, it must be
claimed with ``--scale paper`` (only for the paper's data size, model size, epochs and seed count), and
``--scale cpu`` or ``paper`` at the chapter defaults is an error.

**No mixed outputs.** The run writes into a hidden sibling ``.NAME.partial`` of its folder ``NAME`` (the chapter's
``out_dir`` points there while it runs; ``params.yaml`` records the final folder) and is renamed into place when
the notebook stops, completed or failed. A run killed before that (SIGKILL, power loss) leaves ``NAME`` as it
was, never half-replaced; the next run into ``NAME`` removes the stale sibling. With ``--overwrite`` the earlier
run is replaced only when the new one has stopped.

After the notebook ran, the status is ``completed`` only if the chapter wrote a ``metrics.json`` that holds a
result (:func:`lidvae_mini.book.provenance.metrics_have_results`: a number outside ``params`` and ``paper``);
otherwise it is ``failed: no results`` and the command exits with status 1.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ..data import DATASETS, MissingDataError, require_dataset
from ..data.paths import ENV_VAR as DATA_ENV_VAR
from .parameters import SPECS, check as check_spec, spec_from_defaults
from .provenance import METRICS_FILE, SCALES, check_scale, environment_info, metrics_have_results

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Parameters that do not change a run's scale (which seed, where files go, which device).
SCALE_NEUTRAL_PARAMETERS = ("seed", "out_dir", "data_dir", "device")

#: For each chapter that reads data files, a function of the resolved parameters returning ``(dataset, why)``
#: pairs, one per dataset the run will load (names of :data:`lidvae_mini.data.DATASETS`; ``why`` names the
#: parameter that asks for it). Chapters not listed read no data files (02 and 03 use the official data shipped
#: with the package or regenerate it, 07 generates its pinwheel). ``tests/test_reproduce.py`` checks that every
#: chapter that can skip a section for missing data is listed here.
CHAPTER_DATASETS = {
    "06_lidvae": lambda p: [("mnist", "its MNIST section (always run)")],
    "08_images": lambda p: ([(name, "datasets") for name in p["datasets"]]
                            + ([(p["sweep_dataset"], "sweep_dataset")] if p["depths"] and p["sweep_methods"]
                               else [])),
    "08c_images_ablation": lambda p: [(p["ablation_dataset"], "ablation_dataset")] if p["ablation_cells"] or p["remedies"]
    else [],
    "10_avae": lambda p: [("mnist", "methods")] if p["methods"] else [],
    "11_diagnose": lambda p: [("mnist", "mnist_models")] if p["mnist_models"] else [],
    "09_text": lambda p: ([("synthetic_text", "its synthetic section")]
                          + ([("yahoo", "yahoo_n")] if p["yahoo_n"] else [])),
}


class ReproduceError(ValueError):
    """Bad command-line input to ``reproduce`` (unknown chapter, parameter, dataset or scale, bad value)."""


class RunFailed(RuntimeError):
    """The notebook ran but the run is not a result: it wrote no ``metrics.json``, or one without results."""


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
    """Parse ``key=value`` strings; values are read as YAML (numbers, booleans, strings, lists).

    Raises:
        ReproduceError: a pair without ``=``, a value that is not YAML, or a parameter given twice (``-p n=100
            -p n=200``: refused rather than silently resolved).
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ReproduceError(f"-p {pair!r} is not of the form key=value (e.g. -p n=100)")
        if key.strip() in out:
            raise ReproduceError(f"parameter {key.strip()} is given twice with -p ({key.strip()}="
                                 f"{out[key.strip()]!r} and {pair!r}): give it once")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as err:
            raise ReproduceError(f"parameter {pair!r}: the value is not valid YAML "
                                 f"({str(err).splitlines()[0]})") from None
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
        try:
            data = yaml.safe_load(Path(f).read_text())
        except OSError as err:
            raise ReproduceError(f"parameter file {f} cannot be read: {err.strerror or err}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ReproduceError(f"parameter file {f} is not valid YAML: {' '.join(str(err).split())}") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ReproduceError(f"parameter file {f} must hold a mapping of parameter names to values, "
                                 f"got {type(data).__name__}")
        layers.append((f, data))
    layers.append(("-p", overrides))
    for origin, layer in layers:
        unknown = sorted(set(layer) - set(defaults))
        if unknown:
            raise ReproduceError(f"unknown parameter(s) {', '.join(unknown)} for chapter {chapter} (from {origin}); "
                                 f"known: {', '.join(sorted(defaults))}")
        resolved.update({k: _listify(_coerce(v, defaults[k])) for k, v in layer.items()})
    return resolved


def check_parameters(chapter: str, params: dict, defaults: dict | None = None, cuda_here: bool = True) -> dict:
    """Every resolved parameter's type and value, checked against the chapter's spec
    (:data:`lidvae_mini.book.parameters.SPECS`; a chapter without one: the kind of its default,
    :func:`lidvae_mini.book.parameters.spec_from_defaults`). Returns ``params`` with integral floats made ints where
    an integer is expected. ``cuda_here=False`` checks only the form of a CUDA ``device`` (a sweep driver).

    Raises:
        ReproduceError: one line naming the chapter, the parameter, the value and what was expected.
    """
    spec = None if chapter in SPECS else spec_from_defaults(defaults if defaults is not None else params)
    try:
        checked = check_spec(chapter, params, coerce=True, spec=spec, cuda_here=cuda_here)
    except ValueError as err:
        raise ReproduceError(str(err)) from None
    return {**params, **{k: _listify(v) for k, v in checked.items()}}


def datasets_needed(chapter: str, params: dict) -> list[tuple[str, str]]:
    """``(dataset, why)`` pairs of the data files a run of ``chapter`` at ``params`` reads (see
    :data:`CHAPTER_DATASETS`); ``[]`` for a chapter that reads none.

    Raises:
        ReproduceError: a name that is not one of :data:`lidvae_mini.data.DATASETS`, or a rule that no longer
            matches the chapter's parameters.
    """
    rule = CHAPTER_DATASETS.get(chapter)
    if rule is None:
        return []
    try:
        pairs = list(rule(params))
    except (KeyError, TypeError) as err:
        raise ReproduceError(f"CHAPTER_DATASETS[{chapter!r}] does not match the chapter's parameters ({err!r}); "
                             "update it in lidvae_mini/book/reproduce.py") from err
    for name, why in pairs:
        if name not in DATASETS:
            raise ReproduceError(f"unknown dataset {name!r} (from {why}) for chapter {chapter}; "
                                 f"choose from: {', '.join(DATASETS)}")
    return pairs


def _absolute_data_dir(value, base: Path):
    """A relative data folder resolved against ``base`` (the caller's working directory): the chapter runs in
    ``book/``, where a relative path would point elsewhere."""
    if value in (None, ""):
        return value
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def check_data(chapter: str, params: dict) -> None:
    """Fail before any compute unless every data file a run of ``chapter`` at ``params`` reads is on disk.

    The data folder is the ``data_dir`` parameter, else ``$LIDVAE_DATA``, else ``~/.cache/lidvae_mini``, as in
    the chapter. Files are checked against their SHA-256 (:func:`lidvae_mini.data.require_dataset`).

    Raises:
        ReproduceError: an unknown dataset name.
        MissingDataError: files are absent or damaged (wrong SHA-256); one message lists, for every dataset, the
            files, the folder to put them in and where to get them.
    """
    problems, seen = [], set()
    for name, why in datasets_needed(chapter, params):
        if name in seen:
            continue
        seen.add(name)
        try:
            require_dataset(name, data_dir=params.get("data_dir"))
        except (MissingDataError, ValueError) as err:
            problems.append(f"- {name} (asked for by {why}): {err}")
    if problems:
        raise MissingDataError(f"{chapter} needs data files that are missing or damaged; nothing was run.\n"
                               + "\n".join(problems) + f"\nPoint -p data_dir=DIR (where the chapter has it) or "
                               f"${DATA_ENV_VAR} at the folder that holds them.")


def infer_scale(defaults: dict, params: dict, scale: str | None = None) -> tuple[str, list[str]]:
    """The run's scale label and the parameters that differ from the chapter defaults.

    ``scale=None``: ``"ci"`` when no parameter outside :data:`SCALE_NEUTRAL_PARAMETERS` differs from its
    default, else ``"cpu"`` (``"paper"`` is never inferred). A stated ``scale`` is kept, except that ``cpu`` or
    ``paper`` at the chapter defaults is refused (the defaults are the ``ci`` scale by definition).

    Raises:
        ReproduceError: an unknown label, or ``cpu``/``paper`` claimed for the chapter defaults.
    """
    changed = sorted(k for k in params if k not in SCALE_NEUTRAL_PARAMETERS
                     and _listify(params[k]) != _listify(defaults.get(k)))
    if scale is None:
        return ("cpu" if changed else "ci"), changed
    try:
        check_scale(scale)
    except ValueError as err:
        raise ReproduceError(str(err)) from None
    if scale != "ci" and not changed:
        raise ReproduceError(f"--scale {scale} claimed for a run at the chapter defaults, which are the ci scale: "
                             "drop --scale, or set the parameters of the larger run")
    return scale, changed


def _describe(book: Path) -> str:
    lines = ["chapters (python -m lidvae_mini.book.reproduce CHAPTER -p key=value ...):"]
    for stem, nb in chapters(book).items():
        try:
            params = ", ".join(f"{k}={v!r}" for k, v in chapter_parameters(nb).items())
        except ReproduceError as err:
            params = f"<{err}>"
        lines.append(f"  {stem}: {params}")
    return "\n".join(lines)


#: Files a run folder holds; a folder with any of them holds a run.
RUN_FILES = ("params.yaml", METRICS_FILE, "environment.json")


def _partial_dir(out_dir: Path) -> Path:
    """The hidden sibling a run into ``out_dir`` writes to until the notebook stops."""
    return out_dir.parent / f".{out_dir.name}.partial"


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse a run folder that would mix or destroy outputs; return it as an absolute path.

    Raises:
        ReproduceError: ``out_dir`` is a file; a non-empty folder that is not a run folder (it holds none of
            :data:`RUN_FILES` and no notebook); a folder that holds another run, unless ``overwrite``; another
            ``reproduce`` run is writing into it now.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ReproduceError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        holds_run = any((out_dir / f).exists() for f in RUN_FILES) or any(out_dir.glob("*.ipynb"))
        if not holds_run:
            raise ReproduceError(f"--out {out_dir} is a non-empty folder that is not a run folder; choose a new or "
                                 "empty folder")
        if not overwrite:
            raise ReproduceError(f"--out {out_dir} holds another run; choose a new folder, or pass --overwrite to "
                                 "replace it (when the new run stops)")
    pid_file = _partial_dir(out_dir) / ".pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        pid = None
    if pid is not None and pid != os.getpid() and _alive(pid):
        raise ReproduceError(f"--out {out_dir}: another reproduce run (process {pid}) is writing into it")
    return out_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # exists, owned by another user
        return True
    return True


def run(chapter: str, overrides: dict | None = None, param_files: list[str] | None = None,
        out: str | Path | None = None, book: str | Path | None = None, timeout: int | None = None,
        scale: str | None = None, overwrite: bool = False) -> Path:
    """Execute ``chapter`` with papermill and return the run folder (see module docstring).

    ``scale``: ``"ci"``, ``"cpu"`` or ``"paper"``, recorded in ``environment.json``; ``None`` infers it
    (:func:`infer_scale`). ``overwrite``: replace a run already in ``out`` (once the new run has stopped).

    Raises:
        ReproduceError: unknown chapter, parameter, dataset or scale, a value outside the chapter's spec
            (:func:`check_parameters`), an unreadable parameter file, or an ``out`` holding another run (without
            ``overwrite``), before anything runs.
        MissingDataError: a data file the run needs is absent, before anything runs (no run folder is made).
        papermill.PapermillExecutionError: a cell failed (the partial notebook is kept in the run folder).
        RunFailed: the notebook ran but wrote no ``metrics.json``, or one without results; ``environment.json``
            then records ``status: "failed: no results"``.
    """
    bdir = book_dir(book)
    known = chapters(bdir)
    if chapter not in known:
        raise ReproduceError(f"unknown chapter {chapter!r}; choose one of: {', '.join(known)}")
    defaults = chapter_parameters(known[chapter])
    params = resolve_parameters(defaults, param_files or [], overrides or {}, chapter)
    params = check_parameters(chapter, params, defaults)
    scale, changed = infer_scale(defaults, params, scale)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = check_out_dir(out if out else Path("runs") / chapter / stamp, overwrite)
    here = Path.cwd()
    if "data_dir" in params:
        params["data_dir"] = _absolute_data_dir(params["data_dir"], here)
    saved_env = os.environ.get(DATA_ENV_VAR)
    if saved_env:
        os.environ[DATA_ENV_VAR] = _absolute_data_dir(saved_env, here)
    try:
        check_data(chapter, params)
        import papermill as pm

        return _execute(pm, chapter, known[chapter], bdir, defaults, params, scale, changed, out_dir, stamp,
                        timeout)
    finally:
        if saved_env:
            os.environ[DATA_ENV_VAR] = saved_env


#: Longest path of a Unix socket (``sun_path`` holds 108 bytes on Linux, 104 on macOS), with room for the port.
_MAX_SOCKET_DIR = 80


#: The arguments every chapter's kernel starts with. Its own log stays off the console below CRITICAL, because at
#: shutdown jupyter_client interrupts the kernel before asking it to stop, and when the SIGINT lands while the
#: kernel is handling a message, ipykernel logs "KeyboardInterrupt caught in kernel" at ERROR (a race, seen in 1 of
#: 12 runs on a loaded machine). A cell's error still fails the run through papermill, with its traceback.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]


def _kernel_config(folder: Path):
    """Kernel over IPC sockets in ``folder`` (POSIX): no TCP port, and no "running over TCP without encryption"
    warning from ipykernel on the console. ``None`` (papermill's default, TCP on localhost) elsewhere, or where
    ``folder``'s path is too long for a Unix socket."""
    if os.name != "posix" or len(str(folder)) > _MAX_SOCKET_DIR:
        return None
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc", "ip": str(folder / "kernel")}})


def _publish(work: Path, out_dir: Path) -> None:
    """Move the finished ``work`` folder to ``out_dir``, replacing what was there (see module docstring)."""
    (work / ".pid").unlink(missing_ok=True)
    old = out_dir.parent / f".{out_dir.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(work, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _execute(pm, chapter, notebook, bdir, defaults, params, scale, changed, out_dir, stamp, timeout) -> Path:
    work = _partial_dir(out_dir)
    if work.exists():   # left by a killed run (check_out_dir refused a live one)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / ".pid").write_text(str(os.getpid()))
    if "out_dir" in defaults:
        params["out_dir"] = str(out_dir)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    if "out_dir" in defaults:
        params["out_dir"] = str(work)   # the chapter writes here until the run is published
    env = environment_info(bdir)
    env.update(chapter=chapter, command=sys.argv, started_utc=stamp, scale=scale, changed_parameters=changed)
    start = time.perf_counter()
    try:
        short = "/tmp" if os.name == "posix" and os.access("/tmp", os.W_OK) else None   # a short socket path
        with tempfile.TemporaryDirectory(prefix="lidvae-kernel-", dir=short) as sockets:
            config = _kernel_config(Path(sockets))
            pm.execute_notebook(str(notebook), str(work / f"{chapter}.ipynb"), parameters=params,
                                cwd=str(bdir), kernel_name="python3", log_output=True, progress_bar=False,
                                execution_timeout=timeout, extra_arguments=KERNEL_ARGUMENTS,
                                **({"config": config} if config is not None else {}))
        if "out_dir" in defaults:
            metrics_path = work / METRICS_FILE
            if not metrics_path.exists():
                raise RunFailed(f"{chapter} finished but wrote no {METRICS_FILE} to {out_dir}")
            if not metrics_have_results(json.loads(metrics_path.read_text())):
                raise RunFailed(f"{chapter} finished but its {out_dir / METRICS_FILE} holds no results (no number "
                                "outside 'params' and 'paper'): did it skip every section? See the executed "
                                f"notebook {out_dir / (chapter + '.ipynb')}")
        env["status"] = "completed"
    except RunFailed:
        env["status"] = "failed: no results"
        raise
    except BaseException as err:  # keep the record of a failed or interrupted run, then re-raise
        env["status"] = f"failed: {type(err).__name__}"
        raise
    finally:
        env["wall_time_s"] = round(time.perf_counter() - start, 2)
        (work / "environment.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")
        _publish(work, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lidvae_mini.book.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", nargs="?", help="chapter file stem, e.g. 03_gmm (omit to list them)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter (repeatable; value parsed as YAML)")
    parser.add_argument("-f", "--params-file", action="append", default=[], metavar="YAML",
                        help="YAML file of parameters (repeatable; later files win; -p wins over files)")
    parser.add_argument("--out", help="run folder (default runs/CHAPTER/<UTC timestamp>/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (when the new run stops; default: refuse)")
    parser.add_argument("--book", help="book folder (default ./book or the clone holding this package)")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    parser.add_argument("--scale", choices=tuple(SCALES), default=None,
                        help="scale label recorded in environment.json (default: ci at the chapter defaults, else "
                             "cpu; paper only when stated, for the paper's data, model size, epochs and seeds)")
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(args.param)   # first: "-p n 100" is a missing "=", not a stray "100"
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if not args.chapter:
            print(_describe(book_dir(args.book)))
            return 0
        out = run(args.chapter, overrides, args.params_file, args.out, args.book, args.timeout,
                  scale=args.scale, overwrite=args.overwrite)
    except ReproduceError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except (MissingDataError, RunFailed) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    env = json.loads((out / "environment.json").read_text())
    print(f"run folder: {out} (scale {env['scale']}, status {env['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
