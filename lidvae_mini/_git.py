"""The git commit of a checkout and whether it has uncommitted edits (for the library and the book's provenance)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit(repo: str | os.PathLike | None = None, paths=("lidvae_mini", "book")) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git checkout holding ``repo``.

    ``dirty`` is true when ``paths`` (relative to the checkout's top, or absolute; default ``lidvae_mini/`` and
    ``book/``) hold uncommitted edits or untracked files.
    """
    cwd = Path(repo or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        # Untracked files in the package or the book change results as much as edits do.
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", *map(str, paths)], cwd=top,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
