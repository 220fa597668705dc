"""Download the image data that have a public mirror (MNIST, Fashion-MNIST), keeping a file only if its SHA-256
matches the value the loaders check (:data:`lidvae_mini.data.images.MNIST_SHA256`, ``FASHION_MNIST_SHA256``).

Command line (in a notebook, Colab included, prefix it with ``!``)::

    python -m lidvae_mini.data.download mnist fashion_mnist [--data-dir DIR]

The files go to ``DIR/mnist/`` and ``DIR/fashion-mnist/``; without ``--data-dir`` to the data directory the loaders
read (``$LIDVAE_DATA``, else ``~/.cache/lidvae_mini``). Files already present are checked, not fetched again. Omniglot
and Yahoo have no mirror with fixed checksums here: asking for them is an error that says where to get them.
The same download path is the loaders' ``download=True`` (:func:`lidvae_mini.data.load_mnist`). Nothing in the book
build or the tests calls it; the Pages workflow does, before the build (``.github/workflows/pages.yml``).

Exit status: 0 when every file is in place and checked, 1 when a download or checksum fails, 2 for bad arguments
(checked before anything is fetched).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import images

__all__ = ["download", "main"]


def download(names, data_dir=None) -> list[Path]:
    """Fetch the files of each dataset in ``names`` that are missing, check every file's SHA-256, return the folders.

    Args:
        names: dataset names from :data:`lidvae_mini.data.images.DOWNLOADABLE` (``"mnist"``, ``"fashion_mnist"``).
        data_dir: data directory (see :func:`lidvae_mini.data.data_dir`).

    Returns:
        One folder per name, e.g. ``data_dir/mnist``.

    Raises:
        ValueError: an empty list or a name that cannot be downloaded (checked for all names before any download;
            the message lists the downloadable names and, for Omniglot or Yahoo, where their files come from); a
            downloaded or present file with the wrong SHA-256 (a downloaded one is not kept).
        OSError: the mirror cannot be reached (``urllib.error.URLError`` is an ``OSError``).
    """
    names = list(names)
    if not names:
        raise ValueError(f"name at least one dataset to download: {', '.join(images.DOWNLOADABLE)}")
    for name in names:
        if name not in images.DOWNLOADABLE:
            source = (images.DATASET_FILES.get(name) or (None, None, ""))[2]
            where = f"; get its files from {source}" if source else ""
            raise ValueError(f"dataset {name!r} cannot be downloaded (downloadable: "
                             f"{', '.join(images.DOWNLOADABLE)}){where}")
    folders = []
    for name in names:
        subdir, table, _ = images.DATASET_FILES[name]
        images._download(subdir, tuple(table), data_dir)
        folders.append(images.require_dataset(name, data_dir=data_dir, verify=True))
    return folders


def main(argv=None) -> int:
    """``python -m lidvae_mini.data.download NAME... [--data-dir DIR]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lidvae_mini.data.download",
                                     description="Download MNIST / Fashion-MNIST, SHA-256 checked.")
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one of {', '.join(images.DOWNLOADABLE)}")
    parser.add_argument("--data-dir", default=None, help="data directory (default: $LIDVAE_DATA, else "
                        "~/.cache/lidvae_mini)")
    args = parser.parse_args(argv)
    bad = [n for n in args.names if n not in images.DOWNLOADABLE]
    if bad:
        try:
            download(bad, data_dir=args.data_dir)   # raises the ValueError that says where the files come from
        except ValueError as err:
            parser.error(str(err))                  # exit status 2, nothing fetched
    try:
        folders = download(args.names, data_dir=args.data_dir)
    except (OSError, ValueError) as err:
        print(f"download failed: {err}", file=sys.stderr)
        return 1
    for folder in folders:
        print(f"{folder}: files present, SHA-256 checked")
    return 0


if __name__ == "__main__":   # pragma: no cover - exercised through subprocess in tests
    sys.exit(main())
