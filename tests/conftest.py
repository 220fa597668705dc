"""Shared test configuration: repository paths and the chapter list."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def toc_files() -> list[str]:
    """Every ``file:`` entry of ``_toc.yml`` (root included), without extension."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


def chapter_sources() -> list[Path]:
    """MyST notebook chapters: ``book/*.md`` whose header declares a jupytext pairing."""
    return sorted(p for p in BOOK.glob("*.md") if p.read_text().startswith("---\njupytext:"))


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
