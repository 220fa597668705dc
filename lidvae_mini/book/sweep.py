"""Run a chapter over a grid of parameters and seeds on a Ray cluster, resumably, and aggregate the results.

Usage::

    python -m lidvae_mini.book.sweep 01_theorem --grid n=500,2000 --seeds 0-9 --out runs/theorem-sweep
    python -m lidvae_mini.book.sweep 07_lidgmvae_pinwheel -f book/params/07_lidgmvae_pinwheel/cpu.yaml \\
        --grid alpha=0.5,1.0 --seeds 0-9 --address auto --aggregate-to results/07_lidgmvae_pinwheel

Every grid point × seed is one run of :func:`lidvae_mini.book.reproduce.run` (papermill), executed as one
`Ray <https://docs.ray.io>`_ task that declares its resources: ``num_cpus`` (``--cpus-per-run``, default 1) and
``num_gpus=1`` when the run's ``device`` parameter asks for CUDA (``cuda`` or ``cuda:N``; ``--gpus-per-run``
overrides). Without ``--address`` (and without ``$RAY_ADDRESS``) a local Ray runtime is started on the loopback
address, without dashboard; ``--address auto`` or ``HOST:PORT`` (the head's GCS address) connects to an existing
cluster from a driver that runs **on** it, the way Ray supports. To start a sweep from another machine, submit
the driver through the Ray Jobs API, which runs it on the head node::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m lidvae_mini.book.sweep 01_theorem --seeds 0-9 --out runs/theorem-sweep --address auto

``ray://HOST:PORT`` addresses (Ray Client, which Ray documents as deprecated in favour of the Jobs API) are
refused with that advice. Ray is an optional dependency: ``pip install "lidvae-mini[sweep]"`` (``ray[default]``,
which brings the ``ray job`` command).

**Checks before anything is submitted** (exit status 2, or 1 for missing data, as in ``reproduce``): the chapter,
every parameter name (``-f``, ``-p``, ``--grid``), value type and range (:data:`lidvae_mini.book.parameters.SPECS`;
a CUDA ``device`` is checked on the node that runs it), the grid syntax (``--grid key=v1,v2``, values read as
YAML like ``reproduce -p``; repeat ``--grid`` for a Cartesian product), the seeds (``0-9``, ``0,2,5``,
``0-4,7``), the scale of every grid point (:func:`lidvae_mini.book.reproduce.infer_scale`), the data every run reads
(:func:`lidvae_mini.book.reproduce.check_data`), finished runs in ``--out`` made with other parameters, and, once
connected, that some node of the cluster has the CPUs and GPUs one run asks for.

**Run folders** are ``OUT/<point>/seed_<S>`` with ``<point>`` the grid assignment in key order (``n=500`` or
``alpha=0.5,n=500``; ``default`` without ``--grid``): the same command finds the same folders. Each run executes
in a scratch folder on its node and sends its files (notebook, ``params.yaml``, ``metrics.json``,
``environment.json``) back to the driver, which writes them into the run folder; ``OUT`` need not be shared with
the nodes, but every node needs the package and the book at the path the driver uses (``--book``) and the data.
``environment.json`` gains a ``sweep`` record (grid point, attempt, node, Ray address) and its ``command`` is the
``python -m lidvae_mini.book.reproduce`` command that reproduces the run alone.

**Resume and retries.** A run folder whose ``environment.json`` says ``completed`` and whose ``metrics.json`` holds
a result (:func:`lidvae_mini.book.provenance.metrics_have_results`) is skipped: rerunning the command after a crash,
an interrupt or a lost node runs only what is missing. Any other folder at a run's place (failed, partial) is
cleared and rerun. A worker or node that dies is handled by Ray (``max_retries``, ``--system-retries``); a run
that fails (a cell raised, no results, retries of Ray exhausted) is submitted again up to ``--retries`` times,
then listed with its error; its folder keeps the failed notebook. The exit status is 1 when any run failed.

**Aggregation.** ``--aggregate-to DIR`` combines the seeds of each grid point with
:func:`lidvae_mini.book.results.summarise_runs` into ``DIR/<point>`` (into ``DIR`` without ``--grid``), with the runs'
scale label and provenance; a grid point with a failed seed is not aggregated.

``--dry-run`` checks everything and lists the runs without connecting to Ray.

**Progress**: a tqdm bar on stderr (done / running / failed; ``TQDM_DISABLE=1`` turns it off), one line per
finished run, and a summary table at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import reproduce as rp
from ..data import MissingDataError
from ..data.paths import ENV_VAR as DATA_ENV_VAR
from .provenance import METRICS_FILE, SCALES, metrics_have_results

PARAMS_FILE = "params.yaml"
ENVIRONMENT_FILE = "environment.json"
#: Object store of a local Ray runtime, in MB (Ray's default is 30% of memory; runs return only small files).
DEFAULT_OBJECT_STORE_MB = 256
_NO_GRID_LABEL = "default"


class SweepError(ValueError):
    """Bad sweep input (grid, seeds, out folder, resources), found before anything is submitted."""


@dataclasses.dataclass(frozen=True, eq=False)
class RunSpec:
    """One run of the sweep: a grid point and a seed.

    ``point``: ``((key, value), ...)`` in key order; ``params``: every parameter of the run, resolved;
    ``folder``: ``OUT/<label>/seed_<seed>``; ``command``: the ``reproduce`` command that reruns it alone.
    """

    label: str
    point: tuple
    seed: int
    params: dict
    scale: str
    folder: Path
    command: list
    num_cpus: float
    num_gpus: float


@dataclasses.dataclass
class RunOutcome:
    """What happened to one run: ``status`` is ``skipped`` (finished before), ``completed`` or ``failed``."""

    spec: RunSpec
    status: str
    attempts: int = 0
    wall_s: float | None = None
    node: str | None = None
    errors: list = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Parsing and validation (no Ray needed)

def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"0-9"``, ``"0,2,5"`` or ``"0-4,7"`` (ranges inclusive), in the order given.

    Raises:
        SweepError: empty, negative, malformed, a reversed range, or a seed given twice.
    """
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise SweepError(f"--seeds {text!r}: {part!r} is not a seed (N) or an inclusive range (A-B) of "
                             "non-negative integers; e.g. --seeds 0-9 or --seeds 0,2,5")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise SweepError(f"--seeds {text!r}: the range {part!r} is reversed")
        seeds.extend(range(lo, hi + 1))
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise SweepError(f"--seeds {text!r}: seed(s) {dup} given twice")
    return seeds


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at the commas that are not inside brackets, braces or quotes (``[a,b],[c]`` is two)."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                raise SweepError(f"unbalanced brackets in grid values {text!r}")
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth or quote:
        raise SweepError(f"unbalanced brackets or quotes in grid values {text!r}")
    parts.append("".join(cur))
    return parts


def parse_grid(items: list[str]) -> dict[str, list]:
    """``{key: [values]}`` from ``--grid key=v1,v2`` strings (values read as YAML like ``reproduce -p``).

    Raises:
        SweepError: not ``key=values``, an empty value, a key given twice, a value given twice, or ``seed``
            (use ``--seeds``).
    """
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise SweepError(f"--grid {item!r} is not of the form key=v1,v2,...")
        if key == "seed":
            raise SweepError("--grid seed=... is not allowed: give the seeds with --seeds (e.g. --seeds 0-9)")
        if key in grid:
            raise SweepError(f"--grid {key} given twice: list all its values in one --grid {key}=v1,v2")
        raw = split_values(values)
        if any(not v.strip() for v in raw):
            raise SweepError(f"--grid {item!r} has an empty value")
        try:
            parsed = [rp.parse_overrides([f"{key}={v.strip()}"])[key] for v in raw]
        except (rp.ReproduceError, yaml.YAMLError) as err:
            raise SweepError(f"--grid {item!r}: {err}") from None
        if len({json.dumps(v, sort_keys=True, default=str) for v in parsed}) != len(parsed):
            raise SweepError(f"--grid {item!r} repeats a value")
        grid[key] = parsed
    return grid


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_value(name: str, value, default) -> None:
    """Refuse a value whose kind contradicts the chapter default: a number for a number, a boolean for a boolean,
    a list for a list, a string for a string (``None`` on either side is accepted).

    Raises:
        SweepError: naming the parameter, the value and the default.
    """
    if value is None or default is None:
        return
    kinds = ((bool, lambda v: isinstance(v, bool)), ("number", _is_number),
             ((list, tuple), lambda v: isinstance(v, (list, tuple))), (str, lambda v: isinstance(v, str)))
    for _, is_kind in kinds:
        if is_kind(default) and not is_kind(value):
            raise SweepError(f"parameter {name}={value!r} does not match its chapter default {default!r} "
                             f"({type(value).__name__} given, {type(default).__name__} expected)")


def _value_text(v) -> str:
    """A grid value as text for a folder name: ``0.5``, ``true``, ``mnist+omniglot`` for a list."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "+".join(_value_text(x) for x in v) or "empty"
    if v is None:
        return "none"
    return str(v)


def point_label(point) -> str:
    """Folder name of a grid point ``((key, value), ...)``: ``key=value`` joined by commas, characters other than
    letters, digits and ``._+-=`` replaced by ``_``; ``default`` for the empty point."""
    if not point:
        return _NO_GRID_LABEL
    text = ",".join(f"{k}={_value_text(v)}" for k, v in point)
    return re.sub(r"[^A-Za-z0-9._+=,-]", "_", text)


def _yaml_text(v) -> str:
    """A value as ``-p key=VALUE`` text that ``reproduce`` reads back to the same value (JSON is YAML)."""
    if isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./:-]*", v) and yaml.safe_load(v) == v:
        return v
    return json.dumps(v)


def _normalise(params: dict) -> dict:
    """Parameters as they read back from ``params.yaml`` (tuples become lists), without ``out_dir``."""
    return {k: v for k, v in yaml.safe_load(yaml.safe_dump(params)).items() if k != "out_dir"}


def wants_cuda(params: dict) -> bool:
    """Whether the run's ``device`` parameter asks for a CUDA device (``"cuda"`` or ``"cuda:N"``; ``"auto"`` does
    not reserve one)."""
    device = params.get("device")
    return isinstance(device, str) and (device == "cuda" or device.startswith("cuda:"))


def plan(chapter: str, param_files: list[str] | None = None, overrides: dict | None = None,
         grid: dict[str, list] | None = None, seeds: list[int] | None = None, out: str | Path = "runs/sweep",
         book: str | Path | None = None, scale: str | None = None, cpus_per_run: float = 1,
         gpus_per_run: float | None = None) -> list[RunSpec]:
    """Validate the whole sweep and return its runs (grid points in order, seeds within each point).

    Nothing is executed and no folder is made. ``param_files``/``overrides`` apply to every run (as ``-f``/``-p``
    of ``reproduce``), then the grid point, then the seed.

    Raises:
        ReproduceError: unknown chapter or parameter, a scale refused for a grid point.
        SweepError: bad grid, seeds, value types, resources, a chapter without a ``seed`` parameter, two grid
            points with one folder name, or a finished run in ``out`` made with other parameters.
        MissingDataError: a data file some run needs is absent.
    """
    grid = dict(grid or {})
    seeds = list(seeds if seeds is not None else [0])
    if not seeds:
        raise SweepError("no seeds given")
    if not (_is_number(cpus_per_run) and cpus_per_run > 0):
        raise SweepError(f"--cpus-per-run must be a positive number, got {cpus_per_run!r}")
    if gpus_per_run is not None and not (_is_number(gpus_per_run) and gpus_per_run >= 0):
        raise SweepError(f"--gpus-per-run must be a non-negative number, got {gpus_per_run!r}")
    bdir = rp.book_dir(book)
    known = rp.chapters(bdir)
    if chapter not in known:
        raise rp.ReproduceError(f"unknown chapter {chapter!r}; choose one of: {', '.join(known)}")
    defaults = rp.chapter_parameters(known[chapter])
    if "seed" not in defaults:
        raise SweepError(f"chapter {chapter} has no 'seed' parameter: a sweep over seeds needs one")
    files = [str(Path(f).resolve()) for f in (param_files or [])]
    for f in files:
        if not Path(f).is_file():
            raise SweepError(f"parameter file {f} does not exist")
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise SweepError("-p seed=... is not allowed in a sweep: give the seeds with --seeds")
    for name in ("out_dir",):
        if name in grid or name in overrides:
            raise SweepError(f"{name} is set by the sweep (one folder per run under --out); do not set it")
    unknown = sorted(set(grid) - set(defaults))
    if unknown:
        raise rp.ReproduceError(f"unknown grid parameter(s) {', '.join(unknown)} for chapter {chapter}; "
                                f"known: {', '.join(sorted(defaults))}")
    base = rp.resolve_parameters(defaults, files, overrides, chapter)
    for name, value in base.items():
        check_value(name, value, defaults[name])
    if scale is not None and scale not in SCALES:
        raise rp.ReproduceError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} exists and is not a folder")

    keys = sorted(grid)
    points = [tuple(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    labels = [point_label(p) for p in points]
    clash = sorted({lab for lab in labels if labels.count(lab) > 1})
    if clash:
        raise SweepError(f"distinct grid points share the folder name(s) {clash}; use values that differ as text")
    fixed = ([a for f in files for a in ("-f", f)]
             + [a for k, v in overrides.items() for a in ("-p", f"{k}={_yaml_text(v)}")])
    specs, data_checked = [], set()
    here = Path.cwd()
    for point, label in zip(points, labels):
        params = rp.resolve_parameters(defaults, [], {**base, **dict(point)}, chapter)
        for k, v in point:
            check_value(k, params[k], defaults[k])
        try:   # types and ranges of lidvae_mini.book.parameters; CUDA is checked on the node that runs
            params = rp.check_parameters(chapter, params, defaults, cuda_here=False)
        except rp.ReproduceError as err:
            raise rp.ReproduceError(f"grid point {label}: {err}" if point else str(err)) from None
        if "data_dir" in params:
            params["data_dir"] = rp._absolute_data_dir(params["data_dir"], here)
        try:
            point_scale, _ = rp.infer_scale(defaults, params, scale)
        except rp.ReproduceError as err:
            raise rp.ReproduceError(f"grid point {label}: {err}") from None
        key = json.dumps(_normalise(params), sort_keys=True, default=str)
        if key not in data_checked:
            rp.check_data(chapter, params)
            data_checked.add(key)
        gpus = gpus_per_run if gpus_per_run is not None else (1 if wants_cuda(params) else 0)
        for seed in seeds:
            run_params = {**params, "seed": seed}
            folder = out / label / f"seed_{seed}"
            command = (["python", "-m", "lidvae_mini.book.reproduce", chapter, *fixed]
                       + [a for k, v in point for a in ("-p", f"{k}={_yaml_text(v)}")]
                       + ["-p", f"seed={seed}", "--out", str(folder)]
                       + (["--scale", scale] if scale else []) + (["--book", str(bdir)] if book else []))
            specs.append(RunSpec(label, point, seed, run_params, point_scale, folder, command,
                                 float(cpus_per_run), float(gpus)))
    for spec in specs:
        _check_finished_matches(spec)
    return specs


# ----------------------------------------------------------------------------------------------------------------
# Run folders

def run_state(folder: str | Path) -> str:
    """``"completed"`` (``environment.json`` status ``completed`` and a ``metrics.json`` with results, and a
    ``params.yaml``), ``"missing"`` (no folder) or ``"incomplete"`` (anything else: failed, partial, damaged)."""
    folder = Path(folder)
    if not folder.exists():
        return "missing"
    try:
        env = json.loads((folder / ENVIRONMENT_FILE).read_text())
        metrics = json.loads((folder / METRICS_FILE).read_text())
        if (folder / PARAMS_FILE).is_file() and env.get("status") == "completed" and metrics_have_results(metrics):
            return "completed"
    except (OSError, ValueError, AttributeError):
        pass
    return "incomplete"


def _check_finished_matches(spec: RunSpec) -> None:
    """A finished run at ``spec.folder`` must have ``spec``'s parameters and scale, else it is not this run."""
    if run_state(spec.folder) != "completed":
        return
    done = _normalise(yaml.safe_load((spec.folder / PARAMS_FILE).read_text()) or {})
    want = _normalise(spec.params)
    diff = sorted(k for k in set(done) | set(want) if done.get(k) != want.get(k))
    env_scale = json.loads((spec.folder / ENVIRONMENT_FILE).read_text()).get("scale")
    if diff or env_scale != spec.scale:
        what = f"parameter(s) {', '.join(diff)}" if diff else f"scale {env_scale} (this sweep: {spec.scale})"
        raise SweepError(f"{spec.folder} holds a finished run with other {what} than this sweep's; use another "
                         "--out, or remove that folder to rerun it")


def _write_run_folder(spec: RunSpec, files: dict, sweep_record: dict) -> None:
    """Write a run's files into ``spec.folder`` (replacing what was there) through a temporary sibling folder."""
    spec.folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder.name}.", dir=spec.folder.parent))
    try:
        for rel, data in files.items():
            target = tmp / rel
            if tmp.resolve() not in target.resolve().parents:
                continue   # never write outside the run folder
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        params_path = tmp / PARAMS_FILE
        if params_path.exists():   # out_dir: the run folder, not the node's scratch folder
            params = yaml.safe_load(params_path.read_text()) or {}
            if "out_dir" in params:
                params["out_dir"] = str(spec.folder)
                params_path.write_text(yaml.safe_dump(params, sort_keys=True))
        env_path = tmp / ENVIRONMENT_FILE
        env = json.loads(env_path.read_text()) if env_path.exists() else {
            "chapter": None, "status": "failed: no environment.json (the run stopped before reproduce wrote it)"}
        env["sweep"] = sweep_record
        env_path.write_text(json.dumps(env, indent=2, sort_keys=True, default=str) + "\n")
        if spec.folder.exists():
            shutil.rmtree(spec.folder)
        os.replace(tmp, spec.folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# The Ray task

def execute_run(job: dict) -> dict:
    """Run one chapter in a scratch folder on this node and return its files (executed as a Ray task).

    ``job``: ``chapter``, ``params``, ``scale``, ``book``, ``timeout``, ``env`` (variables set for the run),
    ``command`` (recorded as the run's command line). Returns ``{"error": str or None, "files": {relative path:
    bytes}, "node": str, "wall_s": float}``; a failing run is returned, not raised, so that its notebook reaches
    the driver.
    """
    stage = Path(tempfile.mkdtemp(prefix="lidvae-sweep-"))
    run_dir = stage / "run"
    saved_argv = sys.argv
    saved_env = {k: os.environ.get(k) for k in job["env"]}
    os.environ.update({k: str(v) for k, v in job["env"].items()})
    sys.argv = list(job["command"])
    start, error = time.perf_counter(), None
    try:
        rp.run(job["chapter"], overrides=job["params"], out=run_dir, book=job["book"], timeout=job["timeout"],
               scale=job["scale"])
    except Exception as err:   # noqa: BLE001 - every failure is reported to the driver with the run's files
        if hasattr(err, "ename"):   # papermill: the cell's exception; the traceback is in the notebook
            error = (f"{type(err).__name__}: cell In [{getattr(err, 'exec_count', '?')}] raised {err.ename}: "
                     f"{str(err.evalue)[:1000]} (traceback in the run's notebook)")
        else:
            error = f"{type(err).__name__}: {str(err).strip()[-2000:]}"
    finally:
        sys.argv = saved_argv
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    files = {}
    if run_dir.is_dir():
        files = {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    shutil.rmtree(stage, ignore_errors=True)
    return {"error": error, "files": files, "node": _node_name(), "wall_s": round(time.perf_counter() - start, 2)}


def _node_name() -> str:
    try:
        import ray

        return f"{ray.util.get_node_ip_address()} ({socket.gethostname()})"
    except Exception:   # noqa: BLE001 - outside Ray
        return socket.gethostname()


# ----------------------------------------------------------------------------------------------------------------
# The driver

def _import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("the sweep needs Ray: pip install 'lidvae-mini[sweep]' (or pip install 'ray[default]')") \
            from None
    return ray


def ray_offline_env(home: str | Path) -> dict:
    """Environment variables under which the processes a Ray head node starts stay off the network.

    With usage statistics disabled, Ray 2.60's head still starts a usage-statistics process that asks the
    cloud metadata services (``169.254.169.254``, ``metadata.google.internal``) which cloud it runs on, unless
    ``~/ray_bootstrap_config.yaml`` exists, and a head started with ``ray start`` reports "disabled" to
    ``$RAY_USAGE_STATS_REPORT_URL``. The returned variables point ``HOME`` at ``home`` (a folder made here, holding
    a ``ray_bootstrap_config.yaml`` that names a local provider), turn usage statistics off and send that report
    to a closed loopback port. Give them to ``ray start`` or set them around ``ray.init``; the runs themselves
    should keep the user's ``HOME`` (:func:`run_sweep` restores it in each task of a local runtime).
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("# lidvae_mini.book.sweep: a local cluster, no cloud provider\n"
                                                    "provider:\n  type: local\n")
    return {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/"}


def check_address(address: str | None) -> str | None:
    """``address`` if it is one the sweep supports (``None``, ``auto``, ``HOST:PORT``); returns it.

    Raises:
        SweepError: a ``ray://`` (Ray Client) address, with the supported ways in one line.
    """
    if address is not None and address.strip().lower().startswith("ray://"):
        raise SweepError(f"--address {address}: Ray Client (ray://) is not supported (Ray deprecates it); run the "
                         f"sweep on the cluster with --address auto or the head's HOST:PORT, or submit it from here "
                         f"with the Ray Jobs API: ray job submit --address http://HEAD:8265 --working-dir . -- "
                         f"python -m lidvae_mini.book.sweep ... --address auto")
    return address


def connect(address: str | None = None, num_cpus: int | None = None,
            object_store_mb: int | None = DEFAULT_OBJECT_STORE_MB):
    """Connect to the Ray cluster at ``address`` (``auto`` or ``HOST:PORT``: :func:`check_address`), or start a local
    runtime (``address=None``) with ``num_cpus`` CPUs (default: all), an object store of ``object_store_mb`` MB,
    no dashboard and usage statistics off, bound to the loopback address, its processes kept off the network
    (:func:`ray_offline_env`; their ``HOME`` is a temporary folder, which also holds Ray's token for the runtime).

    Returns ``(ray, home)``: the ``ray`` module and that folder (``None`` for a cluster), to remove after
    ``ray.shutdown()``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    check_address(address)
    if address is not None:
        ray = _import_ray()
        ray.init(address=address, log_to_driver=False, logging_level="warning")
        return ray, None
    # A local runtime is one node: let Ray use the loopback address rather than the machine's routable one
    # (Ray reads this switch when it is imported, and consults it for the node's IP address).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _import_ray()
    try:
        from ray._private import ray_constants
        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false")
    except (ImportError, AttributeError):
        pass
    home = Path(tempfile.mkdtemp(prefix="lidvae-sweep-ray-"))
    env = ray_offline_env(home)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # inherited by the processes ray.init starts, restored for this one right after
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=None if object_store_mb is None else int(object_store_mb) * 1024 ** 2,
                 logging_level="warning", configure_logging=True)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ray, home


def _check_resources(ray, specs: list[RunSpec]) -> None:
    """Some alive node must offer the CPUs and GPUs of the largest run, else Ray would queue it forever."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for spec in specs:
        if not any(n.get("CPU", 0) >= spec.num_cpus and n.get("GPU", 0) >= spec.num_gpus for n in nodes):
            have = "; ".join(f"CPU {n.get('CPU', 0):g}, GPU {n.get('GPU', 0):g}" for n in nodes) or "no alive node"
            raise SweepError(f"no node of the cluster can run {spec.label}/seed_{spec.seed}: it asks for "
                             f"{spec.num_cpus:g} CPU and {spec.num_gpus:g} GPU; nodes: {have}. Lower "
                             "--cpus-per-run/--gpus-per-run, or set device to a device the nodes have")


def _task_env(spec: RunSpec, local: bool) -> dict:
    env = {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")
           or str(max(1, int(spec.num_cpus)))}
    if local and os.environ.get("HOME"):   # the run sees the user's home, not the one of Ray's processes
        env["HOME"] = os.environ["HOME"]
    if os.environ.get(DATA_ENV_VAR):
        env[DATA_ENV_VAR] = rp._absolute_data_dir(os.environ[DATA_ENV_VAR], Path.cwd())
    return env


def run_sweep(chapter: str, specs: list[RunSpec], book: str | Path | None = None, timeout: int | None = None,
              retries: int = 2, system_retries: int = 3, address: str | None = None, local_cpus: int | None = None,
              object_store_mb: int | None = DEFAULT_OBJECT_STORE_MB, stream=None) -> list[RunOutcome]:
    """Execute the runs of ``specs`` that are not finished (see the module docstring); returns one outcome per spec.

    ``retries``: how many times a failed run is submitted again; ``system_retries``: Ray's ``max_retries`` per
    submission (a killed worker or a lost node). Ray is started or connected to only if something is left to run.

    Raises:
        SweepError: Ray is not installed, or no node can hold a run.
    """
    stream = stream or sys.stderr
    if retries < 0 or system_retries < 0:
        raise SweepError("--retries and --system-retries must be >= 0")
    outcomes = {}
    todo = []
    for spec in specs:
        if run_state(spec.folder) == "completed":
            outcomes[spec] = RunOutcome(spec, "skipped")
        else:
            todo.append(spec)
    if not todo:
        return [outcomes[s] for s in specs]
    bdir = str(rp.book_dir(book))
    ray, ray_home = connect(address, local_cpus, object_store_mb)
    address_text = address or "local"
    try:
        _check_resources(ray, todo)
        for spec in todo:   # a failed or partial run is cleared before it is run again
            if spec.folder.exists():
                shutil.rmtree(spec.folder)
        remote = ray.remote(execute_run)
        from tqdm.auto import tqdm

        pending: dict = {}

        def submit(spec: RunSpec, attempt: int):
            job = {"chapter": chapter, "params": spec.params, "scale": spec.scale, "book": bdir, "timeout": timeout,
                   "env": _task_env(spec, address is None), "command": spec.command}
            ref = remote.options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_retries=system_retries,
                                 retry_exceptions=False, name=f"{chapter}:{spec.label}/seed_{spec.seed}").remote(job)
            pending[ref] = (spec, attempt)

        for spec in todo:
            outcomes[spec] = RunOutcome(spec, "running")
            submit(spec, 1)
        n_failed = 0
        bar = tqdm(total=len(todo), desc=f"sweep {chapter}", unit="run", file=stream, dynamic_ncols=True)
        bar.set_postfix_str(f"running {len(pending)}, failed 0")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
                for ref in ready:
                    spec, attempt = pending.pop(ref)
                    outcome = outcomes[spec]
                    error = _settle(outcome, attempt, _fetch(ray, ref, system_retries), address_text, retries)
                    name = f"{spec.label}/seed_{spec.seed}"
                    if error is None:
                        outcome.status = "completed"
                        bar.update(1)
                        bar.write(f"completed {name} (attempt {attempt}, {outcome.wall_s} s, {outcome.node})",
                                  file=stream)
                    else:
                        outcome.errors.append(error)
                        first = error.splitlines()[0][:200]
                        if attempt <= retries:
                            bar.write(f"failed {name} (attempt {attempt} of {retries + 1}), retrying: {first}",
                                      file=stream)
                            submit(spec, attempt + 1)
                        else:
                            outcome.status = "failed"
                            n_failed += 1
                            bar.update(1)
                            bar.write(f"FAILED {name} after {attempt} attempt(s): {first}", file=stream)
                    bar.set_postfix_str(f"running {len(pending)}, failed {n_failed}")
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
    finally:
        ray.shutdown()
        if ray_home is not None:
            shutil.rmtree(ray_home, ignore_errors=True)
    return [outcomes[s] for s in specs]


def _fetch(ray, ref, system_retries: int) -> dict:
    """The result of a finished Ray task, or an error result when Ray's own retries are exhausted."""
    try:
        return ray.get(ref)
    except Exception as err:   # noqa: BLE001 - Ray's retries exhausted (worker or node lost)
        return {"error": f"{type(err).__name__} after {system_retries} Ray retries: {str(err).strip()[-1000:]}",
                "files": {}, "node": None, "wall_s": None}


def _settle(outcome: RunOutcome, attempt: int, result: dict, address_text: str, retries: int) -> str | None:
    """Record one finished submission of ``outcome.spec`` on ``outcome`` and write its run folder (with the
    sweep's record, and the error when it failed). Returns the error, ``None`` when the run completed."""
    spec = outcome.spec
    outcome.attempts = attempt
    outcome.node, outcome.wall_s = result.get("node"), result.get("wall_s")
    record = {"grid_point": dict(spec.point), "label": spec.label, "seed": spec.seed, "attempt": attempt,
              "max_attempts": retries + 1, "node": outcome.node, "ray_address": address_text,
              "num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus}
    error = result["error"]
    if error is not None:
        record["error"] = error
    _write_run_folder(spec, result["files"], record)
    if error is None and run_state(spec.folder) != "completed":
        error = f"the run's folder {spec.folder} is not a finished run after writing"
    return error


def aggregate(specs: list[RunSpec], outcomes: list[RunOutcome], dest: str | Path, argv: list[str] | None = None):
    """Summarise the seeds of every grid point whose runs all finished into ``dest/<point>`` (``dest`` without a
    grid) with :func:`lidvae_mini.book.results.summarise_runs`; returns ``[(label, folder or None, why)]``."""
    from .results import ENVIRONMENT_FILE as SUMMARY_ENV, summarise_runs

    dest = Path(dest)
    done = []
    for label in dict.fromkeys(s.label for s in specs):
        mine = [o for o in outcomes if o.spec.label == label]
        bad = [o.spec.seed for o in mine if o.status not in ("completed", "skipped")]
        if bad:
            done.append((label, None, f"not aggregated: seed(s) {bad} failed"))
            continue
        target = dest if label == _NO_GRID_LABEL else dest / label
        try:
            summarise_runs([o.spec.folder for o in mine], target)
        except (FileNotFoundError, ValueError) as err:
            done.append((label, None, f"not aggregated: {err}"))
            continue
        env_path = target / SUMMARY_ENV
        env = json.loads(env_path.read_text())
        env["sweep"] = {"grid_point": dict(mine[0].spec.point), "command": list(argv or sys.argv),
                        "run_folders": [str(o.spec.folder) for o in mine]}
        env_path.write_text(json.dumps(env, indent=2, sort_keys=True, default=str) + "\n")
        done.append((label, target, f"{len(mine)} seeds"))
    return done


def summary_table(outcomes: list[RunOutcome]) -> str:
    """The final table: one row per run (grid point, seed, status, attempts, wall time, node, folder)."""
    rows = [("point", "seed", "status", "attempts", "wall_s", "node", "folder")]
    for o in outcomes:
        rows.append((o.spec.label, str(o.spec.seed), o.status, str(o.attempts or "-"),
                     "-" if o.wall_s is None else f"{o.wall_s:.1f}", o.node or "-", str(o.spec.folder)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lidvae_mini.book.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", help="chapter file stem, e.g. 01_theorem")
    parser.add_argument("-f", "--params-file", action="append", default=[], metavar="YAML",
                        help="YAML file of parameters for every run (repeatable; as in reproduce)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="one parameter for every run (repeatable; value parsed as YAML)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="values of one parameter to sweep (repeatable: the Cartesian product is run)")
    parser.add_argument("--seeds", default="0", help="seeds: 0-9, 0,2,5 or 0-4,7 (default 0)")
    parser.add_argument("--out", default=None, help="sweep folder (default runs/sweep/CHAPTER)")
    parser.add_argument("--book", help="book folder, the same path on every node (default ./book or the clone)")
    parser.add_argument("--scale", choices=tuple(SCALES), default=None,
                        help="scale label of every run (default: inferred per grid point, as in reproduce)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="Ray cluster this driver runs on: auto or the head's HOST:PORT (default $RAY_ADDRESS, "
                             "else a local runtime); from another machine, submit with `ray job submit`")
    parser.add_argument("--retries", type=int, default=2, help="submissions again of a failed run (default 2)")
    parser.add_argument("--system-retries", type=int, default=3,
                        help="Ray max_retries per submission, for a killed worker or lost node (default 3)")
    parser.add_argument("--cpus-per-run", type=float, default=1, help="CPUs each run reserves (default 1)")
    parser.add_argument("--gpus-per-run", type=float, default=None,
                        help="GPUs each run reserves (default 1 when the run's device is cuda, else 0)")
    parser.add_argument("--local-cpus", type=int, default=None, help="CPUs of a local runtime (default all)")
    parser.add_argument("--object-store-mb", type=int, default=DEFAULT_OBJECT_STORE_MB,
                        help=f"object store of a local runtime in MB (default {DEFAULT_OBJECT_STORE_MB})")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    parser.add_argument("--aggregate-to", metavar="DIR", default=None,
                        help="summarise the seeds of each grid point into DIR/<point> (DIR without --grid)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything and list the runs (and which are finished), then stop")
    args = parser.parse_args(argv)
    try:
        if args.retries < 0 or args.system_retries < 0:
            raise SweepError("--retries and --system-retries must be >= 0")
        if args.local_cpus is not None and args.local_cpus < 1:
            raise SweepError("--local-cpus must be >= 1")
        if args.object_store_mb is not None and args.object_store_mb < 80:
            raise SweepError("--object-store-mb must be at least 80 (Ray's minimum is 75 MiB)")
        check_address(args.address)
        specs = plan(args.chapter, args.params_file, rp.parse_overrides(args.param), parse_grid(args.grid),
                     parse_seeds(args.seeds), args.out or Path("runs") / "sweep" / args.chapter, args.book,
                     args.scale, args.cpus_per_run, args.gpus_per_run)
    except (rp.ReproduceError, SweepError) as err:
        parser.error(str(err))
    except MissingDataError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    n_points = len({s.label for s in specs})
    print(f"sweep {args.chapter}: {n_points} grid point(s) x {len(specs) // n_points} seed(s) = {len(specs)} runs "
          f"in {specs[0].folder.parents[1]}", flush=True)
    if args.dry_run:
        for spec in specs:
            state = "finished, skipped" if run_state(spec.folder) == "completed" else "to run"
            print(f"{spec.label}/seed_{spec.seed}: {state} (scale {spec.scale}, {spec.num_cpus:g} CPU, "
                  f"{spec.num_gpus:g} GPU) {spec.folder}")
        return 0
    try:
        outcomes = run_sweep(args.chapter, specs, args.book, args.timeout, args.retries, args.system_retries,
                             args.address, args.local_cpus, args.object_store_mb)
    except SweepError as err:
        parser.error(str(err))
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished runs are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    counts = {k: sum(o.status == k for o in outcomes) for k in ("skipped", "completed", "failed")}
    print(summary_table(outcomes))
    print(f"{len(outcomes)} runs: {counts['skipped']} skipped (finished before), {counts['completed']} completed, "
          f"{counts['failed']} failed")
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"FAILED {o.spec.label}/seed_{o.spec.seed} after {o.attempts} attempt(s), folder {o.spec.folder}:")
        for i, e in enumerate(o.errors, 1):
            print(f"  attempt {i}: {e.splitlines()[0][:300] if e else e}")
    not_aggregated = []
    if args.aggregate_to:
        for label, target, why in aggregate(specs, outcomes, args.aggregate_to,
                                            [parser.prog, *(sys.argv[1:] if argv is None else argv)]):
            print(f"aggregate {label}: {target} ({why})" if target else f"aggregate {label}: {why}")
            if target is None:
                not_aggregated.append(label)
    return 1 if failed or not_aggregated else 0


if __name__ == "__main__":
    sys.exit(main())
