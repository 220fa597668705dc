"""Committed results: combine the runs of several seeds into one summary, and load a summary in a chapter.

A full-scale run of a chapter (``python -m lidvae_mini.book.reproduce``) writes a run folder with ``params.yaml``,
``metrics.json`` and ``environment.json``. A chapter that trains one seed per run is repeated over seeds, one run
folder each; this module turns those folders into one small summary folder, committed under ``results/``::

    python -m lidvae_mini.book.results aggregate runs/07/seed_* --out results/07_lidgmvae_pinwheel/cpu

The summary folder has the same three files:

- ``metrics.json``: the runs' metrics with every numeric leaf replaced by
  ``{"mean": ..., "sd": ..., "n": ..., "values": [...]}`` (sd with ``ddof=1``; ``None`` when ``n < 2``;
  ``None`` values, e.g. a metric a model does not have, are left out of ``n``). A leaf on which every run agrees
  is kept as it is; numeric lists of one length (per-epoch histories, per-coordinate scales) are averaged
  elementwise (``mean`` and ``sd`` are then lists); other leaves that differ between runs are dropped;
- ``params.yaml``: the parameters the runs share, with ``seed`` replaced by the list ``seeds``;
- ``environment.json``: every run's environment (commit, versions, device, wall time) under ``runs``, with
  ``commits``, ``dirty`` (true if any run was), the total wall time and the ``scale``.

**Scale.** Every summary carries a scale label, ``"scale"`` in its ``environment.json``: ``ci``, ``cpu`` or
``paper`` (:data:`lidvae_mini.book.provenance.SCALES`; only ``paper`` is full scale). ``aggregate`` takes it from the
runs (``python -m lidvae_mini.book.reproduce`` records it) and refuses runs of different scales; runs that record none
(made before the label existed) need ``--scale``, and a ``--scale`` that contradicts the runs is refused. An
optional ``"scale_note"`` says why a label was chosen where that is not obvious.

**What aggregate refuses** (with a message and exit status 2): runs of different chapters or scales, runs that
differ in a parameter other than ``seed``, repeated seeds, runs with **empty results** (a ``metrics.json``
without a number outside ``params`` and ``paper``, e.g. a chapter that skipped everything for missing data;
:func:`lidvae_mini.book.provenance.metrics_have_results`), and runs whose status is not ``completed`` unless
``--include-failed`` is given.

Chapters read a summary with :func:`load_result`, which finds the repository's ``results/`` folder, and print
:meth:`Result.provenance` (scale, commit, device, seeds, wall time) beside the table or figure made from it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .provenance import METRICS_FILE, SCALES, check_scale, metrics_have_results

PARAMS_FILE = "params.yaml"
ENVIRONMENT_FILE = "environment.json"
#: Parameters that may differ between the runs of one summary (``seed`` is collected into ``seeds``).
PER_RUN_PARAMETERS = ("seed", "out_dir")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_DROP = object()   # aggregate_metrics: a leaf the runs disagree on and that cannot be averaged


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mean_sd(values: list) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    n = len(vals)
    mean = math.fsum(vals) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n, "values": [None if v is None else float(v) for v in values]}


def aggregate_metrics(runs: list[dict]) -> dict:
    """Mean and sd over runs of every numeric leaf of the metrics dicts ``runs`` (one per seed).

    Numeric leaves become ``{"mean", "sd", "n", "values"}``; a leaf that is ``None`` in some runs counts only
    the others; leaves equal in all runs are kept; numeric lists of one length are averaged elementwise; other
    leaves are dropped.

    Raises:
        ValueError: no runs, or the runs' dicts have different keys (runs of different chapters or settings).
    """
    if not runs:
        raise ValueError("aggregate_metrics needs at least one run")
    if all(isinstance(r, dict) for r in runs):
        keys = set(runs[0])
        for i, r in enumerate(runs[1:], 1):
            if set(r) != keys:
                diff = sorted(set(r) ^ keys)
                raise ValueError(f"run {i} has different metric keys from run 0 ({', '.join(map(str, diff))}): "
                                 "are these runs of the same chapter and setting?")
        out = {}
        for k in sorted(runs[0]):
            agg = aggregate_metrics([r[k] for r in runs])
            if agg is not _DROP:
                out[k] = agg
        return out
    if all(_is_number(r) or r is None for r in runs) and any(_is_number(r) for r in runs):
        return _mean_sd(runs)
    if all(r == runs[0] for r in runs):
        return runs[0]
    if _numeric_lists_of_one_length(runs):
        return _elementwise_mean_sd(runs)
    return _DROP


def _numeric_lists_of_one_length(runs) -> bool:
    return (all(isinstance(r, list) and len(r) == len(runs[0]) and all(_is_number(v) for v in r) for r in runs)
            and len(runs[0]) > 0)


def _elementwise_mean_sd(runs: list[list]) -> dict:
    """``{"mean": [...], "sd": [...] or None, "n", "values": [[...] per run]}`` of equal-length numeric lists."""
    cols = [_mean_sd(list(col)) for col in zip(*runs)]
    return {"mean": [c["mean"] for c in cols], "sd": [c["sd"] for c in cols] if len(runs) > 1 else None,
            "n": len(runs), "values": [[float(v) for v in r] for r in runs]}


def _read_run(folder: Path) -> tuple[dict, dict, dict]:
    missing = [f for f in (METRICS_FILE, PARAMS_FILE, ENVIRONMENT_FILE) if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete run folder: missing {', '.join(missing)} "
                                "(make it with python -m lidvae_mini.book.reproduce CHAPTER --out FOLDER)")
    out = []
    for name, load, kind in ((METRICS_FILE, json.loads, dict), (PARAMS_FILE, yaml.safe_load, dict),
                             (ENVIRONMENT_FILE, json.loads, dict)):
        try:
            value = load((folder / name).read_text())
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
            raise ValueError(f"{folder / name} cannot be read as {'YAML' if name == PARAMS_FILE else 'JSON'}: "
                             f"{' '.join(str(err).split())}") from None
        if not isinstance(value, kind):
            raise ValueError(f"{folder / name} must hold a mapping, got {type(value).__name__}")
        out.append(value)
    return tuple(out)


def summarise_runs(run_dirs: list[str | Path], out: str | Path, include_failed: bool = False,
                   scale: str | None = None) -> Path:
    """Write the summary folder ``out`` (see the module docstring) of the run folders ``run_dirs``.

    ``include_failed`` admits runs whose notebook stopped with an error *after* writing ``metrics.json`` (a
    chapter assertion that failed at this scale is a result, not a crash); they are listed under ``failed`` in
    ``environment.json`` with their status. Runs with empty results are refused even then.

    ``scale`` (``"ci"``, ``"cpu"`` or ``"paper"``): the summary's scale label. ``None`` takes the one the runs
    record; runs that record none need it; a value the runs contradict is refused.

    Raises:
        FileNotFoundError: a run folder lacks one of its three files.
        ValueError: a run's file is not valid JSON/YAML or not a mapping; the runs belong to different chapters or
            scales, hold empty results, differ in a parameter other than ``seed``, did not complete, or repeat a
            seed; a missing or unknown scale label.
    """
    folders = [Path(d) for d in run_dirs]
    runs = [_read_run(f) for f in folders]
    chapters = {env.get("chapter") for _, _, env in runs}
    if len(chapters) != 1:
        raise ValueError(f"the runs are of different chapters: {sorted(map(str, chapters))}")
    empty = [str(f) for f, (metrics, _, _) in zip(folders, runs) if not metrics_have_results(metrics)]
    if empty:
        raise ValueError(f"runs with empty results (no number outside 'params' and 'paper' in metrics.json; did "
                         f"the chapter skip every section, e.g. for missing data?): {', '.join(empty)}")
    failed = [str(f) for f, (_, _, env) in zip(folders, runs) if env.get("status") != "completed"]
    if failed and not include_failed:
        raise ValueError(f"runs that did not complete: {', '.join(failed)} (include_failed / --include-failed "
                         "admits those that wrote their metrics)")
    scale = _common_scale(folders, [env for _, _, env in runs], scale)
    params0 = {k: v for k, v in runs[0][1].items() if k not in PER_RUN_PARAMETERS}
    for f, (_, params, _) in zip(folders[1:], runs[1:]):
        rest = {k: v for k, v in params.items() if k not in PER_RUN_PARAMETERS}
        diff = sorted(k for k in set(rest) | set(params0) if rest.get(k) != params0.get(k))
        if diff:
            raise ValueError(f"{f} differs from {folders[0]} in parameter(s) {', '.join(diff)}")
    seeds = [params.get("seed") for _, params, _ in runs]
    if len(set(map(str, seeds))) != len(seeds):
        raise ValueError(f"a seed occurs twice among the runs: {seeds}")
    order = sorted(range(len(runs)), key=lambda i: (seeds[i] is None, seeds[i]))
    runs, seeds = [runs[i] for i in order], [seeds[i] for i in order]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = aggregate_metrics([m for m, _, _ in runs])
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (out / PARAMS_FILE).write_text(yaml.safe_dump({**params0, "seeds": seeds}, sort_keys=True))
    envs = [env for _, _, env in runs]
    commits = sorted({(env.get("git") or {}).get("commit") or "unknown" for env in envs})
    environment = {"chapter": chapters.pop(), "scale": scale, "n_runs": len(envs), "seeds": seeds,
                   "commits": commits, "dirty": any((env.get("git") or {}).get("dirty") for env in envs),
                   "wall_time_s_total": round(sum(env.get("wall_time_s") or 0.0 for env in envs), 2),
                   "failed": [{"seed": s, "status": env.get("status")} for s, env in zip(seeds, envs)
                              if env.get("status") != "completed"],
                   "runs": envs}
    (out / ENVIRONMENT_FILE).write_text(json.dumps(environment, indent=2, sort_keys=True) + "\n")
    return out


def _common_scale(folders: list[Path], envs: list[dict], scale: str | None) -> str:
    """The one scale label of the runs (or ``scale`` for runs that record none); see :func:`summarise_runs`."""
    if scale is not None:
        check_scale(scale)
    recorded = {str(f): env.get("scale") for f, env in zip(folders, envs)}
    for f, s in recorded.items():
        if s is not None and s not in SCALES:
            raise ValueError(f"{f} records an unknown scale {s!r} (expected one of {', '.join(SCALES)})")
    labels = sorted({s for s in recorded.values() if s is not None})
    if len(labels) > 1:
        raise ValueError("the runs are of different scales, which one summary must not mix: "
                         + "; ".join(f"{f}: {s}" for f, s in recorded.items()))
    if labels and scale is not None and labels[0] != scale:
        raise ValueError(f"--scale {scale} contradicts the runs, which record scale {labels[0]}")
    unlabelled = [f for f, s in recorded.items() if s is None]
    if unlabelled and scale is None:
        raise ValueError(f"runs that record no scale: {', '.join(unlabelled)}; say which it is with --scale "
                         f"{{{','.join(SCALES)}}} ({'; '.join(f'{k}: {v}' for k, v in SCALES.items())})")
    return scale or labels[0]


@dataclass
class Result:
    """A committed result folder: its metrics, parameters and environment, and where it lies."""

    path: Path
    metrics: dict
    params: dict
    environment: dict

    @property
    def scale(self) -> str:
        """The scale label, ``"ci"``, ``"cpu"`` or ``"paper"`` (``"scale"`` in ``environment.json``).

        Raises:
            ValueError: the folder records no scale or an unknown one.
        """
        try:
            return check_scale(self.environment.get("scale"))
        except ValueError as err:
            raise ValueError(f"{self.path}: environment.json needs a 'scale' label: {err}") from None

    @property
    def scale_note(self) -> str | None:
        """Why the label was chosen, where ``environment.json`` says (``"scale_note"``), else ``None``."""
        return self.environment.get("scale_note")

    def provenance(self, seeds_parameter: str | None = None) -> str:
        """One line for a caption under a table or figure: the scale first, then the folder, commit(s), device,
        seeds and wall time, and the scale note if there is one.

        ``seeds_parameter``: the parameter that lists the seeds this result's numbers come from, for a chapter
        section that loops over its own seed list (e.g. ``"ablation_seeds"``); default ``seeds``, else ``seed``.

        Raises:
            ValueError: the folder records no valid scale label; ``seeds_parameter`` is not a parameter of the run.
        """
        scale = self.scale
        env = self.environment
        commits = env.get("commits") or [(env.get("git") or {}).get("commit") or "unknown"]
        runs = env.get("runs") or [env]
        dev = runs[0].get("device") or {}
        device = ", ".join(dev.get("torch_cuda") or []) or f"CPU ({dev.get('cpu_count', '?')} cores)"
        if seeds_parameter is not None:
            if seeds_parameter not in self.params:
                raise ValueError(f"{seeds_parameter!r} is not a parameter of {self.path}; "
                                 f"known: {', '.join(sorted(self.params))}")
            seeds = self.params[seeds_parameter]
        else:
            seeds = self.params.get("seeds") or [self.params.get("seed")]
        wall = env.get("wall_time_s_total", env.get("wall_time_s"))
        dirty = " (uncommitted changes)" if env.get("dirty") or (env.get("git") or {}).get("dirty") else ""
        failed = env.get("failed") or []
        if failed:
            dirty += f"; runs that failed after writing their metrics: seeds {[f['seed'] for f in failed]}"
        wall_txt = f"{wall / 60:.0f} min" if isinstance(wall, (int, float)) else "unknown"
        note = f". Scale note: {self.scale_note}" if self.scale_note else ""
        return (f"{scale} scale ({SCALES[scale]}); "
                f"results/{self.path.parent.name}/{self.path.name}: commit {', '.join(c[:7] for c in commits)}{dirty}; "
                f"{device}; seeds {seeds}; wall time {wall_txt}{note}")


def per_seed(node: dict):
    """The per-run values of an aggregated leaf as a float array (``nan`` where a run had ``None``).

    Raises:
        TypeError: ``node`` is not an aggregated leaf (``{"mean", "sd", "n", "values"}``).
    """
    if not (isinstance(node, dict) and {"mean", "values"} <= set(node)):
        raise TypeError(f"not an aggregated metric (expected keys mean, sd, n, values): {node!r:.80}")
    return np.array([np.nan if v is None else v for v in node["values"]], dtype=float)


def mean_sd_text(values, digits: int = 3) -> str:
    """``"mean ± sd"`` of the finite entries of ``values`` (sd with ``ddof=1``; just the mean for one value)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


def paired_seed_table(a: dict, b: dict, keys, labels=("a", "b"), digits: int = 2):
    """Two settings of one chapter run on the same seeds, side by side: for every method in both ``a`` and ``b``
    (``{method: {key: [one value per seed]}}``, seeds in the same order) and every key, the mean ± sd of each and
    the per-seed difference ``b - a`` as a range. Returns a pandas DataFrame, rows ``(method, key)``.

    Raises:
        ValueError: a method's per-seed lists of different lengths in ``a`` and ``b`` (not the same seeds).
    """
    import pandas as pd

    rows = {}
    for m in (m for m in a if m in b):
        for k in keys:
            va, vb = np.asarray(a[m][k], dtype=float), np.asarray(b[m][k], dtype=float)
            if va.shape != vb.shape:
                raise ValueError(f"{m} {k}: {va.size} seeds in {labels[0]} and {vb.size} in {labels[1]}")
            d = vb - va
            rows[(m, k)] = {labels[0]: mean_sd_text(va, digits), labels[1]: mean_sd_text(vb, digits),
                            f"{labels[1]} − {labels[0]}, per seed": f"{d.min():.{digits}f} to {d.max():.{digits}f}"}
    return pd.DataFrame(rows).T


def results_dir(root: str | Path | None = None) -> Path | None:
    """The ``results/`` folder: ``root``, else the clone holding this package, else ``../results`` or
    ``./results`` from the working directory (a chapter runs in ``book/``); ``None`` if none exists."""
    candidates = [Path(root)] if root else [_REPO_ROOT / "results", Path.cwd().parent / "results",
                                            Path.cwd() / "results"]
    return next((c.resolve() for c in candidates if c.is_dir()), None)


def load_result(chapter: str, setting: str, root: str | Path | None = None) -> Result | None:
    """The committed summary ``results/CHAPTER/SETTING``, or ``None`` when it is not there (e.g. in Colab,
    where only the package is installed: clone the repository to see committed results).

    The result's scale label is :attr:`Result.scale`; :meth:`Result.provenance` starts with it.

    Raises:
        FileNotFoundError: the folder exists but lacks ``metrics.json``, ``params.yaml`` or ``environment.json``.
        ValueError: its ``environment.json`` records no valid scale label (``ci``, ``cpu``, ``paper``).
    """
    base = results_dir(root)
    if base is None or not (base / chapter / setting).is_dir():
        return None
    folder = base / chapter / setting
    metrics, params, env = _read_run(folder)
    result = Result(folder, metrics, params, env)
    result.scale   # noqa: B018 - a committed result without a valid scale label is an error here, not in a caption
    return result



# ------------------------------------------------------------------------------------------- the results page
#: The book's pages; a section that renders a committed result calls ``load_result("CHAPTER", "SETTING")``.
BOOK_DIR = _REPO_ROOT / "book"
#: The status of each of the paper's tables and figures, with its evidence (rendered by the results page).
PAPER_STATUS_FILE = BOOK_DIR / "paper_status.yml"
#: What a status of the paper-status file means.
PAPER_STATUSES = {
    "reproduced": "the claim holds in this book's runs, at the scale stated",
    "partially": "part of the claim holds, or it holds only with a stated change of model, data or scale",
    "not": "the claim does not hold in this book's runs, at the scale stated",
    "corrected": "the paper's figure, table or statement is wrong, and the book shows the correct version",
}
_LOAD_CALL = r"""load_result\(\s*["']([^"']+)["']\s*,\s*["']([^"']+)["']"""


@dataclass(frozen=True)
class ResultRow:
    """One committed result folder as the results page lists it (read by :func:`result_rows`)."""

    chapter: str                 #: the chapter the runs executed (``environment.json``, else the folder's parent)
    setting: str                 #: the folder's name, e.g. ``"cpu"``
    scale: str                   #: ``"ci"``, ``"cpu"`` or ``"paper"``
    seeds: dict                  #: ``{parameter: seeds}`` of the seed parameters the numbers come from
    n_runs: int                  #: runs combined in the folder (1 for a single run)
    device: str                  #: e.g. ``"CPU (2 cores)"`` or the CUDA device names
    commits: tuple               #: full commit hashes of the runs
    dirty: bool                  #: whether any run had uncommitted changes
    wall_time_s: float | None    #: total wall time of the runs, seconds
    sections: tuple = ()         #: ``(page, label or None)`` of every book section that loads it

    @property
    def folder(self) -> str:
        """``"results/CHAPTER/SETTING"``."""
        return f"results/{self.chapter}/{self.setting}"


def _seed_parameters(params: dict) -> dict:
    """The seed lists of a run's parameters: ``seeds`` and every ``*_seeds`` that is set, else ``seed``."""
    lists = {k: v for k, v in params.items() if (k == "seeds" or k.endswith("_seeds")) and v not in (None, [])}
    return lists or ({"seed": params["seed"]} if params.get("seed") is not None else {})


def _device_text(env: dict) -> str:
    devices = []
    for run in env.get("runs") or [env]:
        dev = run.get("device") or {}
        text = ", ".join(dev.get("torch_cuda") or []) or f"CPU ({dev.get('cpu_count', '?')} cores)"
        devices.append(text)
    return "; ".join(dict.fromkeys(devices))


def _page_structure(text: str):
    """``(line index, kind, value)`` of a MyST page's headings (``"heading"``, title), labels (``"label"``) and
    load_result calls (``"load"``, ``(chapter, setting)``); headings and labels inside code fences are skipped."""
    import re

    fence, out = None, []
    for i, line in enumerate(text.splitlines()):
        stripped = line.strip()
        marker = re.match(r"^(`{3,}|~{3,})", stripped)
        if fence is None and marker:
            fence = marker.group(1)
        elif fence is not None and stripped == fence:
            fence = None
        if fence is None and not marker:
            if m := re.match(r"^\(([\w.:-]+)\)=\s*$", line):
                out.append((i, "label", m.group(1)))
            elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
                out.append((i, "heading", m.group(2).strip()))
        out += [(i, "load", m) for m in re.findall(_LOAD_CALL, line)]
    return out


def rendering_sections(book: str | Path | None = None) -> dict:
    """Where the book renders each committed result: ``{(chapter, setting): [(page, label or None), ...]}``.

    A page renders ``results/CHAPTER/SETTING`` where a cell calls ``load_result("CHAPTER", "SETTING")`` with
    literal arguments; the section is the heading above the call, named by the MyST label ``(label)=`` on the
    line before that heading (``None`` when the heading has none: link to the page then).
    """
    book = Path(book) if book is not None else BOOK_DIR
    found: dict = {}
    for page in sorted(book.glob("*.md")):
        items = _page_structure(page.read_text())
        for n, (i, kind, value) in enumerate(items):
            if kind != "load":
                continue
            headings = [k for k in range(n) if items[k][1] == "heading"]
            label = None
            if headings:
                h = headings[-1]
                before = items[h - 1] if h > 0 else None
                if before and before[1] == "label" and before[0] == items[h][0] - 1:
                    label = before[2]
            entry = (page.stem, label)
            if entry not in found.setdefault(tuple(value), []):
                found[tuple(value)].append(entry)
    return found


def result_rows(root: str | Path | None = None, book: str | Path | None = None) -> list[ResultRow]:
    """Every committed result folder ``results/CHAPTER/SETTING``, sorted, as the rows of the results page.

    ``root``: the ``results/`` folder (default :func:`results_dir`); ``book``: the folder of the book's pages, read
    for the sections that render each result (:func:`rendering_sections`; default the repository's ``book/``).

    Raises:
        FileNotFoundError: a folder lacks ``metrics.json``, ``params.yaml`` or ``environment.json``.
        ValueError: a folder records no valid scale label.
    """
    base = results_dir(root)
    if base is None:
        return []
    sections = rendering_sections(book)
    rows = []
    for folder in sorted(p for p in base.glob("*/*") if p.is_dir()):
        metrics, params, env = _read_run(folder)
        result = Result(folder, metrics, params, env)
        commits = env.get("commits") or [(env.get("git") or {}).get("commit") or "unknown"]
        runs = env.get("runs") or [env]
        wall = env.get("wall_time_s_total", env.get("wall_time_s"))
        chapter, setting = folder.parent.name, folder.name
        rows.append(ResultRow(chapter=chapter, setting=setting, scale=result.scale, seeds=_seed_parameters(params),
                              n_runs=int(env.get("n_runs") or len(runs)), device=_device_text(env),
                              commits=tuple(commits),
                              dirty=bool(env.get("dirty") or (env.get("git") or {}).get("dirty")),
                              wall_time_s=float(wall) if isinstance(wall, (int, float)) else None,
                              sections=tuple(sections.get((chapter, setting), ()))))
    return rows


def _seeds_text(seeds: dict) -> str:
    def one(v):
        v = v if isinstance(v, list) else [v]
        ints = all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        if ints and len(v) > 2 and v == list(range(v[0], v[0] + len(v))):
            return f"{v[0]}–{v[-1]}"
        return ", ".join(map(str, v))
    if not seeds:
        return "no seed recorded"
    n = sum(len(v) if isinstance(v, list) else 1 for v in seeds.values())
    word = "seed" if n == 1 else "seeds"
    if list(seeds) in (["seed"], ["seeds"]):
        return f"{word} {one(next(iter(seeds.values())))}"
    return f"{word} " + "; ".join(f"{one(v)} (`{k}`)" for k, v in seeds.items())


def _wall_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def results_table_markdown(rows: list[ResultRow], book: str | Path | None = None) -> str:
    """The results page's list of committed results (MyST Markdown): for each chapter, a link to it and a table
    of its folders (folder, scale and seeds, commit, device and wall time, the section that renders it)."""
    book = Path(book) if book is not None else BOOK_DIR
    out = []
    for chapter in dict.fromkeys(r.chapter for r in rows):
        page = book / f"{chapter}.md"
        out.append(f"{{doc}}`{chapter}`" if page.exists() else f"`{chapter}` (no chapter of this name)")
        out.append("")
        out.append("| folder | scale, seeds | commit, device, wall time | rendered in |")
        out.append("|---|---|---|---|")
        for r in (r for r in rows if r.chapter == chapter):
            links = [f"{{ref}}`{label}`" if label else f"{{doc}}`{pg}`" for pg, label in r.sections]
            if links and r.sections[0][0] != chapter:
                links = [f"{{doc}}`{pg}`, " + link if label else link for (pg, label), link in zip(r.sections, links)]
            commit = ", ".join(f"`{c[:7]}`" for c in r.commits) + (" (uncommitted changes)" if r.dirty else "")
            out.append(f"| `{r.folder}` | `{r.scale}`, {_seeds_text(r.seeds)} | {commit}, {r.device}, "
                       f"{_wall_text(r.wall_time_s)} | {'; '.join(links) or 'not rendered by any page'} |")
        out.append("")
    return "\n".join(out)


def paper_status(path: str | Path | None = None) -> list[dict]:
    """The paper's tables and figures with their status in this book (the YAML file :data:`PAPER_STATUS_FILE`).

    Each item has ``item`` (e.g. ``"Figure 1(a, b)"``), ``claim``, ``status`` (a key of :data:`PAPER_STATUSES`),
    ``scale`` (of the evidence: ``ci``, ``cpu``, ``paper`` or ``exact``), ``finding`` and ``evidence``: a list of
    ``{"ref": label}`` (a section or errata entry) or ``{"doc": page}``.

    Raises:
        ValueError: an item lacks a field, has an unknown status or scale, or no evidence.
    """
    path = Path(path) if path is not None else PAPER_STATUS_FILE
    items = yaml.safe_load(path.read_text())["items"]
    for n, it in enumerate(items):
        where = f"{path.name}, item {n} ({it.get('item', '?')})"
        missing = [k for k in ("item", "claim", "status", "scale", "finding", "evidence") if not it.get(k)]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        if it["status"] not in PAPER_STATUSES:
            raise ValueError(f"{where}: status {it['status']!r}, expected one of {', '.join(PAPER_STATUSES)}")
        if it["scale"] not in (*SCALES, "exact"):
            raise ValueError(f"{where}: scale {it['scale']!r}, expected one of {', '.join(SCALES)} or exact")
        for ev in it["evidence"]:
            if not (isinstance(ev, dict) and len(ev) == 1 and set(ev) <= {"ref", "doc"}):
                raise ValueError(f"{where}: evidence {ev!r} must be {{ref: label}} or {{doc: page}}")
    return items


def paper_status_markdown(items: list[dict]) -> str:
    """The results page's view of the paper's tables and figures (MyST Markdown): what each status means, a
    table of every item's status and scale side by side, then each item's claim, finding and evidence."""
    def one_line(text) -> str:
        return " ".join(str(text).split())

    out = [f"- **{k}**: {v}" for k, v in PAPER_STATUSES.items()] + [""]
    out += ["| paper | status | scale of the evidence |", "|---|---|---|"]
    out += [f"| {it['item']} | **{it['status']}** | `{it['scale']}` |" for it in items] + [""]
    for it in items:
        links = ", ".join(f"{{{kind}}}`{target}`" for ev in it["evidence"] for kind, target in ev.items())
        out += [f"{it['item']}: **{it['status']}** (`{it['scale']}`)",
                f": *The paper:* {one_line(it['claim'])}", "",
                f"  *This book:* {one_line(it['finding'])}", "",
                f"  *Evidence:* {links}", ""]
    return "\n".join(out)

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lidvae_mini.book.results", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    agg = sub.add_parser("aggregate", help="combine run folders of several seeds into one summary folder")
    agg.add_argument("runs", nargs="+", help="run folders written by python -m lidvae_mini.book.reproduce")
    agg.add_argument("--out", required=True, help="summary folder to write, e.g. results/CHAPTER/SETTING")
    agg.add_argument("--include-failed", action="store_true",
                     help="admit runs that failed after writing metrics.json (listed as failed in the summary)")
    agg.add_argument("--scale", choices=tuple(SCALES), default=None,
                     help="scale label of the summary (default: the one the runs record; required for runs that "
                          "record none; refused if the runs record another)")
    args = parser.parse_args(argv)
    try:
        out = summarise_runs(args.runs, args.out, include_failed=args.include_failed, scale=args.scale)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    scale = json.loads((out / ENVIRONMENT_FILE).read_text())["scale"]
    print(f"summary of {len(args.runs)} runs ({scale} scale): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
