"""Release pinning: ``lidvae_mini.__version__`` is the one source; every Colab pin (``.md`` and ``.ipynb``) and the
launch branch of ``_config.yml`` name one ref, ``main`` until the release is cut and its tag after, ``CHANGELOG.md``
follows, and ``python -m lidvae_mini.book.release bump`` switches them together."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import jupytext
import nbformat
import pytest

import lidvae_mini
from conftest import ROOT, chapter_sources
from lidvae_mini.book import release


def _copy_release_files(dst):
    """The files a release touches, copied into ``dst`` (a scratch repository root)."""
    (dst / "book").mkdir()
    (dst / "lidvae_mini").mkdir()
    for p in (ROOT / "book").iterdir():
        if p.suffix in (".md", ".ipynb"):
            shutil.copy(p, dst / "book" / p.name)
    for name in ("_config.yml", "CHANGELOG.md", "lidvae_mini/__init__.py"):
        shutil.copy(ROOT / name, dst / name)
    return dst


def test_the_repository_is_consistent_with_its_version():
    errors, _ = release.check(ROOT)
    assert errors == [], "\n".join(errors) + "\nfix: python -m lidvae_mini.book.release bump X.Y.Z (CONTRIBUTING.md)"
    assert release.read_version(ROOT) == lidvae_mini.__version__


def test_every_chapter_and_its_twin_pin_exactly_the_expected_ref():
    pins = release.pins(ROOT)
    ref = release.expected_ref(ROOT)
    assert ref == (f"v{lidvae_mini.__version__}" if release.released(ROOT) else "main")
    for md in chapter_sources():
        for path in (md, md.with_suffix(".ipynb")):
            assert pins[path.relative_to(ROOT).as_posix()] == [ref], path.name
    assert release.launch_branch(ROOT) == ref


def test_unreleased_pins_name_main_and_a_release_switches_everything_to_its_tag(tmp_path):
    """Before the release is cut the pins name main (no tag needed); bump dates the section and moves every pin and
    the launch branch to the tag together; a pin left on main is then a drift."""
    root = _copy_release_files(tmp_path)
    log = root / "CHANGELOG.md"
    version = lidvae_mini.__version__
    log.write_text(re.sub(rf"^## \[{re.escape(version)}\].*$", f"## [{version}] - not yet tagged", log.read_text(),
                          flags=re.M))
    release.bump(root, version, date="2030-01-02")          # the fixture: released...
    assert release.released(root) and release.expected_ref(root) == f"v{version}"
    _unrelease(root, version)                                # ...and back
    assert not release.released(root) and release.expected_ref(root) == "main"
    assert release.check(root) == ([], []) and set(map(tuple, release.pins(root).values())) == {("main",)}
    assert release.launch_branch(root) == "main"
    release.bump(root, version, date="2030-01-02")
    assert release.check(root)[0] == [] and set(map(tuple, release.pins(root).values())) == {(f"v{version}",)}
    nb = sorted((root / "book").glob("0*.ipynb"))[0]
    nb.write_text(nb.read_text().replace(f"@v{version}", "@main"))
    errors, _ = release.check(root)
    assert len(errors) == 1 and nb.name in errors[0] and f"@v{version}" in errors[0]


def _unrelease(root, version):
    """The repository state before ``version`` was released: pins and launch branch on main, the section undated."""
    for rel in release.pins(root):
        path = root / rel
        path.write_text(path.read_text().replace(f"lidvae-book@v{version}", "lidvae-book@main"))
    config = root / "_config.yml"
    config.write_text(re.sub(r"^(\s+branch:\s*)\S+", r"\g<1>main", config.read_text(), count=1, flags=re.M))
    log = root / "CHANGELOG.md"
    log.write_text(re.sub(rf"^## \[{re.escape(version)}\] - \S+$", f"## [{version}] - not yet tagged", log.read_text(),
                          flags=re.M))


def test_bump_rewrites_every_place_and_keeps_the_pairs(tmp_path):
    root = _copy_release_files(tmp_path)
    changed = release.bump(root, "9.8.7", date="2030-01-02")
    assert "lidvae_mini/__init__.py" in changed and "_config.yml" in changed and "CHANGELOG.md" in changed
    errors, _ = release.check(root)
    assert errors == [], errors
    assert release.read_version(root) == "9.8.7" and release.launch_branch(root) == "v9.8.7"
    assert set(map(tuple, release.pins(root).values())) == {("v9.8.7",)}
    log = (root / "CHANGELOG.md").read_text()
    assert log.index("## [Unreleased]") < log.index("## [9.8.7] - 2030-01-02")
    old_pin = f"lidvae-book@{release.expected_ref(ROOT)}"
    for rel in release.pins(root):                        # nothing but the pin changes: pairs, cell ids, layout stay
        before, after = (ROOT / rel).read_text(), (root / rel).read_text()
        assert after == before.replace(old_pin, "lidvae-book@v9.8.7"), rel
        if rel.endswith(".ipynb"):
            nbformat.validate(nbformat.reads(after, as_version=4))
    md = sorted((root / "book").glob("0*.md"))[0]         # and jupytext reads the new pin in the Colab cell
    assert "@v9.8.7" in next(c.source for c in jupytext.read(md).cells if c.cell_type == "code")
    assert release.bump(root, "9.8.7", date="2030-01-02") == []        # idempotent


def test_bump_dates_a_prepared_section(tmp_path):
    root = _copy_release_files(tmp_path)
    version = lidvae_mini.__version__
    release.bump(root, version, date="2030-01-02")
    log = (root / "CHANGELOG.md").read_text()
    assert f"## [{version}] - 2030-01-02" in log and log.count(f"## [{version}]") == 1


@pytest.mark.parametrize("bad", ["v1.2.3", "1.2", "1.2.3rc1", "", None])
def test_bump_refuses_a_bad_version_and_writes_nothing(bad, tmp_path):
    root = _copy_release_files(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="X.Y.Z"):
        release.bump(root, bad)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_check_names_each_drift(tmp_path):
    root = _copy_release_files(tmp_path)
    ref = release.expected_ref(root)
    nb = sorted((root / "book").glob("0*.ipynb"))[0]
    nb.write_text(nb.read_text().replace(f"lidvae-book@{ref}", "lidvae-book@v9.9.9"))
    config = root / "_config.yml"
    config.write_text(re.sub(r"^(\s+branch:\s*)\S+", r"\g<1>v9.9.9", config.read_text(), count=1, flags=re.M))
    (root / "CHANGELOG.md").write_text("# Changelog\n\n## [Unreleased]\n")
    errors, _ = release.check(root)
    assert len(errors) == 3, errors
    assert nb.name in errors[0] and "'v9.9.9'" in errors[1] and "CHANGELOG.md" in errors[2]


def test_require_tag_in_a_scratch_repository(tmp_path):
    """The Pages workflow's gate: no tag fails; a tag passes; a notebook changed since the tag is a warning."""
    root = _copy_release_files(tmp_path)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

    def git(*args):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)
    git("init", "-q")
    _unrelease(root, lidvae_mini.__version__)
    assert release.check(root, require_tag=True) == ([], [])     # unreleased: main needs no tag
    release.bump(root, lidvae_mini.__version__, date="2030-01-02")
    git("add", ".")
    git("commit", "-q", "-m", "release")
    tag = f"v{lidvae_mini.__version__}"
    errors, _ = release.check(root, require_tag=True)
    assert len(errors) == 1 and f"git tag {tag} does not exist" in errors[0]
    git("tag", tag)
    assert release.check(root, require_tag=True) == ([], [])
    nb = sorted((root / "book").glob("0*.ipynb"))[0]
    nb.write_text(nb.read_text() + "\n")
    errors, warnings = release.check(root, require_tag=True)
    assert errors == [] and len(warnings) == 1 and nb.name in warnings[0] and "differs" in warnings[0]


def test_command_line(tmp_path):
    run = [sys.executable, "-m", "lidvae_mini.book.release"]
    ok = subprocess.run([*run, "--root", str(ROOT), "check"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([*run, "--root", str(tmp_path), "bump", "1.0.0"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "not the repository root" in bad.stderr
