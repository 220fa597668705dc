"""Time to execute each chapter at its default (CI) parameters, as a markdown table.

    python benchmarks/chapter_times.py [--out benchmarks/results/chapter_times.json] [CHAPTER ...]

Each chapter runs through ``lidvae_mini.book.reproduce.run`` (papermill, fresh kernel) into a temporary folder,
so the time includes kernel start-up and imports, as in the book build and the determinism test (tests/test_determinism.py).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lidvae_mini.book import reproduce
from lidvae_mini.book.provenance import environment_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter stems (default: all)")
    parser.add_argument("--out", help="write the timings and environment as JSON here")
    args = parser.parse_args()
    book = reproduce.book_dir()
    names = args.chapters or list(reproduce.chapters(book))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            start = time.perf_counter()
            reproduce.run(name, out=Path(tmp) / name, book=book)
            rows.append({"chapter": name, "seconds": round(time.perf_counter() - start, 1)})
            print(f"{name}: {rows[-1]['seconds']} s", flush=True)
    total = round(sum(r["seconds"] for r in rows), 1)
    print("\n| chapter | seconds (default parameters) |\n|---|---|")
    for r in rows:
        print(f"| {r['chapter']} | {r['seconds']} |")
    print(f"| **total** | **{total}** |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"chapters": rows, "total_s": total,
                                              "environment": environment_info()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
