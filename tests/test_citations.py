"""The book and the package cite only what a reader can open: files in this repository or public sources."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A path into the developers' private material (not part of the repository): notes/..., shared/..., seeds/...
PRIVATE = re.compile(r"(?<![\w./-])(?:\.\./)?(?:shared/)?(?:notes|seeds)/[\w./-]+|(?<![\w-])shared/(?:notes|data|seeds)\b")
FILES = sorted([*ROOT.glob("book/*.md"), *ROOT.glob("book/params/**/*.yaml"), *ROOT.glob("lidvae_mini/**/*.py"),
                *ROOT.glob("results/**/*.md"), *ROOT.glob("benchmarks/*.md")])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_citation_of_files_outside_the_repository(path):
    hits = [f"{path.name}:{i}: {m.group(0)}" for i, line in enumerate(path.read_text().splitlines(), 1)
            for m in PRIVATE.finditer(line)]
    assert not hits, "cites files that are not in the repository:\n" + "\n".join(hits)


def test_the_pattern_catches_what_it_should():
    assert PRIVATE.search("see `notes/reference-implementation.md` §3")
    assert PRIVATE.search("see shared/notes/reference-implementation.md")
    assert PRIVATE.search("point LIDVAE_DATA at ../shared/data")
    assert not PRIVATE.search("lidvae_mini/data/official/ATTRIBUTION.md")
