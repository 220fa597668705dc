"""Resolution of the data directory and checked access to data files."""
from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

ENV_VAR = "LIDVAE_DATA"


class MissingDataError(FileNotFoundError):
    """A data file the caller needs is not on disk (and was not downloaded)."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path`` if given, else ``$LIDVAE_DATA``, else ``~/.cache/lidvae_mini``."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "lidvae_mini"


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def require_files(subdir: str, files, root: str | os.PathLike | None = None, checksums: dict | None = None,
                  source: str = "", download: str = "") -> Path:
    """Return ``data_dir(root)/subdir`` after checking that every file in ``files`` exists there.

    Args:
        subdir: folder below the data directory, e.g. ``"mnist"``.
        files: file names expected in that folder.
        root: data directory (see :func:`data_dir`).
        checksums: optional ``{file name: sha256}``; a mismatch raises ``ValueError``.
        source: where a reader can get the files (printed in the error).
        download: a shell command that fetches the files with their checksums checked, e.g.
            ``python -m lidvae_mini.data.download mnist`` (printed in the error; ``--data-dir`` is added when
            ``root`` is given).

    Raises:
        MissingDataError: some files are absent; the message lists them and the folder to put them in.
        ValueError: a file's SHA-256 differs from ``checksums``.
    """
    folder = data_dir(root) / subdir
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        if download and root is not None:
            download += f" --data-dir {shlex.quote(str(data_dir(root)))}"
        fetch = (f" Download them (SHA-256 checked) with `{download}` (in a Colab or Jupyter cell: prefix `!`), "
                 "then rerun; or put them" if download else " Put them")
        hint = f" Get them from {source}." if source else ""
        raise MissingDataError(
            f"missing data file(s) {', '.join(missing)} in {folder}.{fetch} there, or pass data_dir=... "
            f"(or set ${ENV_VAR}) to the folder that holds '{subdir}/'.{hint}")
    for name, digest in (checksums or {}).items():
        got = sha256(folder / name)
        if got != digest:
            raise ValueError(f"checksum mismatch for {folder / name}: sha256 {got}, expected {digest}")
    return folder
