"""The built book, as a reader's browser shows it: math typeset offline, figures loaded, no execution errors.

Needs the HTML from ``make book`` (``_build/html``) and Debian's ``chromium`` (installed by ``.ci/run``).
Pages are served over loopback HTTP and rendered by headless Chromium, which has no internet here: equations
only typeset if MathJax is served locally.
"""
from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
import urllib.request

import pytest
import yaml

from conftest import BOOK, ROOT, chapter_sources, toc_files

HTML = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGES = [f.removeprefix("book/") for f in toc_files()]
CHAPTERS = {p.stem for p in chapter_sources()}


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML} has no built book: run `make book` first (`make test` does)")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def render(url: str, profile) -> str:
    """The DOM after scripts ran (MathJax included), as headless Chromium sees it."""
    assert CHROMIUM, "chromium is not installed (apt-get install chromium; .ci/run does this)"
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_math_figures_and_no_errors(page, server, tmp_path):
    dom = render(f"{server}/book/{page}.html", tmp_path)
    assert "<article" in dom, f"{page}: no article body"
    source = (BOOK / f"{page}.md").read_text()
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", source, flags=re.S))   # shell's $s is not math
    if re.search(r"\$[^$\n]+\$", prose):
        assert dom.count("<mjx-container") > 0, f"{page}: equations were not typeset (MathJax not loaded)"
        assert "cdn.jsdelivr.net" not in dom, f"{page}: MathJax from a CDN"
    assert "Traceback (most recent call last)" not in dom and 'class="output traceback' not in dom, \
        f"{page}: an execution error is shown"
    if page in CHAPTERS:
        images = re.findall(r'<img[^>]+src="([^"]*_images/[^"]+\.png)"', dom)
        assert images, f"{page}: no figure in the executed chapter"
        for src in images:
            url = f"{server}/book/{src}" if not src.startswith(("http", "/")) else src
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read()
            assert resp.status == 200 and body.startswith(b"\x89PNG"), f"{page}: figure {src} did not load"


@pytest.mark.parametrize("page", sorted(CHAPTERS))
def test_chapter_has_colab_button_to_the_committed_notebook(page, server, tmp_path):
    """The button opens the notebook at the release tag its Colab cell installs (lidvae_mini.release)."""
    html = (HTML / "book" / f"{page}.html").read_text()
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    repo, branch = repository["url"].removeprefix("https://github.com/"), repository["branch"]
    assert f"colab.research.google.com/github/{repo}/blob/{branch}/book/{page}.ipynb" in html


def _result_uses():
    """``(page, chapter, setting)`` for every ``load_result("CHAPTER", "SETTING")`` in a chapter's source."""
    pattern = re.compile(r'load_result\(\s*"([^"]+)"\s*,\s*"([^"]+)"\s*\)')
    return [(p.stem, *m) for p in chapter_sources() for m in pattern.findall(p.read_text())]


@pytest.mark.parametrize("page, chapter, setting", _result_uses())
def test_chapter_renders_the_committed_results_it_reads(page, chapter, setting):
    """A chapter that reads results/CHAPTER/SETTING must find it committed and show its provenance line."""
    assert (ROOT / "results" / chapter / setting / "metrics.json").exists(), \
        f"{page} reads results/{chapter}/{setting}, which is not committed"
    html = (HTML / "book" / f"{page}.html").read_text()
    assert f"results/{chapter}/{setting}: commit" in html, f"{page}: the provenance of {chapter}/{setting} is not shown"
