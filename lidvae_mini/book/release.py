"""Releases: ``lidvae_mini.__version__`` is the one place that names the release; everything else follows it.

What follows the version ``X.Y.Z`` (git tag ``vX.Y.Z``), through one ref (:func:`expected_ref`): ``main`` until the
release is cut (``CHANGELOG.md``'s ``## [X.Y.Z]`` section has no date yet), the tag ``vX.Y.Z`` after ``bump``:

* the hidden Colab cell of every notebook in ``book/`` (``.md`` and its ``.ipynb`` twin) installs
  ``lidvae-mini @ git+REPO@REF``;
* ``_config.yml``'s ``repository.branch`` is ``REF``, so the rocket button opens the notebooks *of that ref* in
  Colab, and they install the package of that same ref: notebook and package cannot drift apart. Before the first
  release both are the branch ``main``, which exists wherever the book is published; a tag that was never pushed
  would give a reader a missing notebook and a failed install;
* ``CHANGELOG.md`` has a ``## [X.Y.Z]`` section.

Command line (run in the repository root)::

    python -m lidvae_mini.book.release check [--require-tag]   # exit 1 with one line per drift
    python -m lidvae_mini.book.release bump X.Y.Z              # rewrite all of the above, then commit, tag, push

``bump`` edits the files as text (a regular expression on the pin, one line of ``_config.yml``), so the ``.ipynb``
twins keep their cell ids and formatting and stay paired with their ``.md``. ``check --require-tag`` is what the
Pages workflow runs before building: once the version is released its tag must exist (else the published Colab
buttons would open a missing ref), and chapters whose notebook differs from, or is missing at, the tag are listed
as warnings (their Colab button opens the release's notebook, not the page's text); before the release the pins
name ``main`` and no tag is needed. The steps of a release are in ``CONTRIBUTING.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["read_version", "repository_url", "pins", "launch_branch", "released", "expected_ref", "check", "bump",
           "main"]

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_VERSION_LINE = re.compile(r'^__version__ = "([^"]*)"$', re.M)
_BRANCH_LINE = re.compile(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+branch:[ \t]*)(\S+)(.*)$", re.M)
_UNRELEASED = "## [Unreleased]"


def read_version(root: str | os.PathLike = ".") -> str:
    """``__version__`` as written in ``root/lidvae_mini/__init__.py`` (read as text, not imported)."""
    text = (Path(root) / "lidvae_mini" / "__init__.py").read_text()
    found = _VERSION_LINE.findall(text)
    if len(found) != 1:
        raise ValueError(f"lidvae_mini/__init__.py must hold exactly one line __version__ = \"X.Y.Z\" "
                         f"(found {len(found)})")
    return found[0]


def repository_url(root: str | os.PathLike = ".") -> str:
    """``repository.url`` of ``_config.yml``, e.g. ``https://github.com/lidvae-book/lidvae-book``."""
    import yaml

    return yaml.safe_load((Path(root) / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def _pin_re(root) -> re.Pattern:
    repo = repository_url(root).replace("https://", "git+https://")
    return re.compile(re.escape(repo) + r"@(v?[0-9A-Za-z.+\-]+)")


def pins(root: str | os.PathLike = ".") -> dict[str, list[str]]:
    """The install ref of every Colab cell: ``{"book/NN_x.md": ["v0.1.0"], "book/NN_x.ipynb": [...], ...}``.

    Every notebook in ``book/`` (an ``.md`` with a jupytext header and every ``.ipynb``) is listed, with an empty
    list when it pins nothing.
    """
    root = Path(root)
    pin = _pin_re(root)
    out = {}
    for path in sorted((root / "book").glob("*")):
        if path.suffix == ".ipynb" or (path.suffix == ".md" and "jupytext:" in path.read_text()[:400]):
            out[path.relative_to(root).as_posix()] = pin.findall(path.read_text())
    return out


def launch_branch(root: str | os.PathLike = ".") -> str:
    """``repository.branch`` of ``_config.yml``: the ref the launch (Colab) buttons open."""
    import yaml

    return str(yaml.safe_load((Path(root) / "_config.yml").read_text())["repository"].get("branch", "main"))


def released(root: str | os.PathLike = ".") -> bool:
    """Whether ``__version__`` has been released: ``CHANGELOG.md``'s ``## [X.Y.Z]`` heading carries a date
    (``bump`` writes it; before that the section says, for example, ``not yet tagged``)."""
    root = Path(root)
    changelog = root / "CHANGELOG.md"
    dated = re.compile(rf"^## \[{re.escape(read_version(root))}\] - \d{{4}}-\d{{2}}-\d{{2}}\b", re.M)
    return changelog.is_file() and bool(dated.search(changelog.read_text()))


def expected_ref(root: str | os.PathLike = ".") -> str:
    """The ref every Colab pin and the launch branch must name: ``vX.Y.Z`` once released, else ``main``."""
    return f"v{read_version(root)}" if released(root) else "main"


def _git(root, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def check(root: str | os.PathLike = ".", require_tag: bool = False) -> tuple[list[str], list[str]]:
    """Compare every place that follows the version with :func:`expected_ref`.

    Args:
        root: repository root.
        require_tag: once released, also require the git tag ``vX.Y.Z`` (the Pages workflow sets it; before the
            release the pins name ``main``, which needs no tag).

    Returns:
        ``(errors, warnings)``: lists of one-line messages; no errors means consistent. Warnings (only with
        ``require_tag``) name chapters whose ``.ipynb`` is missing at the tag or differs from the working tree's.
    """
    root = Path(root)
    version = read_version(root)
    tag, ref = f"v{version}", expected_ref(root)
    errors, warnings = [], []
    if not VERSION_RE.match(version):
        errors.append(f"__version__ {version!r} is not X.Y.Z")
    for path, found in pins(root).items():
        if found != [ref]:
            errors.append(f"{path}: Colab cell installs {found or 'nothing'}, expected exactly one pin @{ref}")
    if launch_branch(root) != ref:
        errors.append(f"_config.yml: repository.branch is {launch_branch(root)!r}, expected {ref!r} (the launch "
                      "buttons must open the notebooks of the ref they install)")
    changelog = root / "CHANGELOG.md"
    if not changelog.is_file() or not re.search(rf"^## \[{re.escape(version)}\]", changelog.read_text(), re.M):
        errors.append(f"CHANGELOG.md: no '## [{version}]' section")
    if require_tag and ref == tag:
        if _git(root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}^{{commit}}").returncode != 0:
            errors.append(f"git tag {tag} does not exist: the published Colab buttons would open a missing ref. "
                          f"Release first (CONTRIBUTING.md, 'Releasing'), or push the tag with the commit "
                          f"(git push --atomic origin main {tag})")
        else:
            at_tag = set(_git(root, "ls-tree", "--name-only", tag, "book/").stdout.split())
            for nb in sorted(p for p in pins(root) if p.endswith(".ipynb")):
                if nb not in at_tag:
                    warnings.append(f"{nb} is not in {tag}: its Colab button opens a missing file until the "
                                    "next release")
                elif _git(root, "diff", "--quiet", tag, "--", nb).returncode != 0:
                    warnings.append(f"{nb} differs from {tag}: its Colab button opens the release's notebook")
    return errors, warnings


def bump(root: str | os.PathLike, version: str, date: str | None = None) -> list[str]:
    """Make ``version`` the release: ``__version__``, every Colab pin, the launch branch and the changelog.

    Args:
        root: repository root.
        version: ``"X.Y.Z"`` (no ``v``).
        date: the changelog date (``YYYY-MM-DD``; default today, UTC).

    Returns:
        The paths (relative to ``root``) whose text changed.

    Raises:
        ValueError: ``version`` is not ``X.Y.Z``; a notebook holds no pin or ``_config.yml`` no
            ``repository.branch`` line (checked for every file before any is written).
    """
    root = Path(root)
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(f"version must look like X.Y.Z (e.g. 0.2.0), got {version!r}")
    date = date or _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    tag = f"v{version}"
    pin = _pin_re(root)
    new: dict[Path, str] = {}
    for rel, found in pins(root).items():
        if not found:
            raise ValueError(f"{rel}: no Colab install pin to rewrite ({pin.pattern})")
        path = root / rel
        new[path] = pin.sub(lambda m: m.group(0).rsplit("@", 1)[0] + "@" + tag, path.read_text())
    config = root / "_config.yml"
    text, n = _BRANCH_LINE.subn(lambda m: m.group(1) + tag + m.group(3), config.read_text(), count=1)
    if n != 1:
        raise ValueError("_config.yml: no 'branch:' line under 'repository:' to rewrite")
    new[config] = text
    init = root / "lidvae_mini" / "__init__.py"
    read_version(root)                                          # exactly one version line
    new[init] = _VERSION_LINE.sub(f'__version__ = "{version}"', init.read_text())
    changelog = root / "CHANGELOG.md"
    log = changelog.read_text() if changelog.is_file() else f"# Changelog\n\n{_UNRELEASED}\n"
    heading = re.compile(rf"^## \[{re.escape(version)}\].*$", re.M)
    if heading.search(log):                                     # a prepared section: date it
        log = heading.sub(f"## [{version}] - {date}", log, count=1)
    elif _UNRELEASED in log:                                    # the unreleased entries become the release's
        log = log.replace(_UNRELEASED, f"{_UNRELEASED}\n\n## [{version}] - {date}", 1)
    else:
        raise ValueError(f"CHANGELOG.md: no '{_UNRELEASED}' heading to turn into '## [{version}]'")
    new[changelog] = log
    changed = []
    for path, text in new.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(path.relative_to(root).as_posix())
    return sorted(changed)


def main(argv=None) -> int:
    """``python -m lidvae_mini.book.release {check [--require-tag] | bump X.Y.Z}``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lidvae_mini.book.release", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".", help="repository root (default: the current folder)")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="every Colab pin, the launch branch and the changelog follow __version__")
    c.add_argument("--require-tag", action="store_true", help="the git tag vX.Y.Z must exist (Pages workflow)")
    b = sub.add_parser("bump", help="make X.Y.Z the release everywhere")
    b.add_argument("version", help="X.Y.Z")
    b.add_argument("--date", default=None, help="changelog date, YYYY-MM-DD (default: today, UTC)")
    args = parser.parse_args(argv)
    if not (Path(args.root) / "lidvae_mini" / "__init__.py").is_file():
        parser.error(f"{args.root!r} is not the repository root (no lidvae_mini/__init__.py); use --root")
    if args.command == "bump":
        try:
            changed = bump(args.root, args.version, date=args.date)
        except ValueError as err:
            parser.error(str(err))
        print("rewrote " + (", ".join(changed) if changed else "nothing (already at this version)"))
        print(f"next: review CHANGELOG.md, commit these files, then git tag -a v{args.version} -m 'v{args.version}' "
              f"&& git push --atomic origin main v{args.version}")
        return 0
    errors, warnings = check(args.root, require_tag=args.require_tag)
    annotate = os.environ.get("GITHUB_ACTIONS") == "true"
    for w in warnings:
        print(f"::warning::{w}" if annotate else f"warning: {w}")
    for e in errors:
        print(f"::error::{e}" if annotate else f"error: {e}")
    if not errors:
        ref = expected_ref(args.root)
        state = "released" if ref.startswith("v") else "not released yet: Colab opens and installs main"
        print(f"version {read_version(args.root)} ({state}): every Colab pin and the launch branch name @{ref}, "
              "and CHANGELOG.md has its section")
    return 1 if errors else 0


if __name__ == "__main__":   # pragma: no cover - exercised through subprocess in tests
    sys.exit(main())
