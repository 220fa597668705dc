"""Provenance: metrics.json written by chapters, and the environment of a run.

Every number in the book should be traceable to a commit, parameters, device and seed. Chapters
call :func:`save_metrics` at the end; ``python -m lidvae_mini.book.reproduce`` records the rest.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from .._git import git_commit

METRICS_FILE = "metrics.json"

#: The scale of a run, recorded as ``"scale"`` in its ``environment.json`` (run folders and committed summaries).
#: Only ``paper`` is "full scale".
SCALES = {
    "ci": "the chapter defaults, as in the book build",
    "cpu": "larger than the chapter defaults, below the paper's data size, model size, epochs or seed count",
    "paper": "the paper's data size, model size, epochs and seed count",
}
#: Top-level keys of a chapter's metrics that are not results (``params`` echoes the parameters, ``paper`` holds
#: the paper's numbers for comparison).
NON_RESULT_KEYS = ("params", "paper")
TRACKED_PACKAGES = ("lidvae-mini", "numpy", "scipy", "jax", "jaxlib", "numpyro", "arviz", "torch",
                    "matplotlib", "papermill", "jupyter-book")


def _plain(obj):
    """Convert NumPy/JAX scalars and arrays to JSON-ready Python objects; NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating,)):
        return _plain(float(obj))
    return obj


def metrics_json(metrics: dict) -> str:
    """The text of ``metrics.json`` for ``metrics``: NumPy/JAX values as plain numbers and lists, NaN/inf as
    ``null``, sorted keys (floats written exactly, so ``json.loads`` gives back the same numbers)."""
    return json.dumps(_plain(metrics), indent=2, sort_keys=True) + "\n"


def save_metrics(metrics: dict, out_dir: str | os.PathLike | None) -> Path | None:
    """Write ``metrics`` to ``out_dir/metrics.json`` (:func:`metrics_json`: sorted keys, arrays as lists).

    With ``out_dir=None`` (the book build, or a reader running the chapter) nothing is written; inside a Jupyter
    kernel the same JSON is recorded as a hidden output of the calling cell (:func:`record_metrics`), which the
    book build keeps in its execution cache and the determinism test reads back.

    Returns the path, or ``None`` when ``out_dir`` is ``None``.
    """
    if out_dir is None:
        record_metrics(metrics)
        return None
    path = Path(out_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(metrics_json(metrics))
    return path


#: Name of the hidden output that :func:`record_metrics` adds to a chapter's metrics cell.
METRICS_RECORD = "lidvae_metrics"
# myst-nb's convention for glued data that is not displayed ("application/papermill.record/" + MIME type,
# ``metadata.scrapbook``): the book build strips such an output from the page, and a notebook front end has no
# renderer for the prefixed type, so it shows nothing.
_RECORD_PREFIX = "application/papermill.record/"


def record_metrics(metrics: dict) -> bool:
    """Record ``metrics`` (as :func:`metrics_json` text) as a hidden output of the running notebook cell.

    Does nothing outside a Jupyter kernel. Returns whether an output was recorded. Read it back from an executed
    notebook with :func:`recorded_metrics`.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is there whenever a kernel is
        return False
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    from IPython.display import display

    display({_RECORD_PREFIX + "text/plain": metrics_json(metrics)}, raw=True,
            metadata={"scrapbook": {"name": METRICS_RECORD, "mime_prefix": _RECORD_PREFIX}})
    return True


def recorded_metrics(notebook) -> dict | None:
    """The metrics recorded by :func:`record_metrics` in an executed notebook (an ``nbformat`` notebook), or
    ``None`` when it holds no record (a chapter that saves no metrics, or an unexecuted notebook).

    Raises:
        ValueError: the notebook holds more than one record.
    """
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            meta = output.get("metadata", {}).get("scrapbook", {})
            if meta.get("name") == METRICS_RECORD:
                text = output.get("data", {}).get(_RECORD_PREFIX + "text/plain")
                found.append(json.loads("".join(text) if isinstance(text, list) else text))
    if len(found) > 1:
        raise ValueError(f"the notebook holds {len(found)} '{METRICS_RECORD}' records; a chapter saves its metrics "
                         "once")
    return found[0] if found else None


def check_scale(scale) -> str:
    """Return ``scale`` if it is one of :data:`SCALES` (``ci``, ``cpu``, ``paper``).

    Raises:
        ValueError: anything else (``None`` included), naming the valid labels.
    """
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALES)} "
                         f"({'; '.join(f'{k}: {v}' for k, v in SCALES.items())})")
    return scale


def _has_number(obj) -> bool:
    if isinstance(obj, dict):
        return any(_has_number(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_number(v) for v in obj)
    return isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj)


def metrics_have_results(metrics) -> bool:
    """Whether a chapter's metrics dict holds at least one result: a finite number outside :data:`NON_RESULT_KEYS`.

    The rule behind "a run with empty results is not a success": a chapter that skipped every section (for
    instance for missing data) still writes its ``params`` and the ``paper``'s numbers, but no number of its own.
    Booleans, strings and ``None`` do not count. (For an aggregated summary, ``{"mean": ...}`` leaves count.)
    """
    if not isinstance(metrics, dict):
        return False
    return _has_number({k: v for k, v in metrics.items() if k not in NON_RESULT_KEYS})


def device_info() -> dict:
    """CPU model and count, and the accelerators torch and JAX can see (if installed)."""
    info = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}
    try:
        import torch
        info["torch_cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        import jax
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except ImportError:
        pass
    return info


def environment_info(repo: str | os.PathLike | None = None) -> dict:
    """Commit, Python and package versions, platform and devices, as a JSON-ready dict."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"git": git_commit(repo), "python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions, "device": device_info()}
