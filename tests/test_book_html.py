"""The built book, as a reader's browser shows it: math typeset offline, figures loaded, no execution errors,
and every page readable in a 1280 x 900 window (equations and tables within the text column, legible figures).

Needs the HTML from ``make book`` (``_build/html``) and Debian's ``chromium`` (installed by ``.ci/run``).
Pages are served over loopback HTTP and rendered by headless Chromium, which has no internet here: equations
only typeset if MathJax is served locally.
"""
from __future__ import annotations

import functools
import html
import http.server
import io
import json
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import BOOK, ROOT, chapter_sources, toc_files
from lidvae_mini import plotting

HTML = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGES = [f.removeprefix("book/") for f in toc_files()]
CHAPTERS = {p.stem for p in chapter_sources()}
WINDOW = (1280, 900)      # the reader's browser window (CSS px): a common laptop screen, vertical scroll bar shown

# Run in the page after MathJax typeset it and the images loaded; writes what it measured into <pre id=REPORT>.
# height: the page's scroll height as a reader first gets it (the first tab of each tab set shown); every check after
# it sees all tabs. column: the article's content box. equations: the ink of every display equation (mjx-math and its
# tag) and how far its box or the box's parent scrolls. tables: each table's box, how far its wrapper scrolls, and the
# number-like cells ("1.00 ± 0.00", "[0.1, 0.2]") whose text runs over more than one line. images: natural and shown
# width. truncated: outputs that hide values ("..." at the end of a table cell, NumPy's " ... " summary).
REPORT = "lidvae-layout-report"
LAYOUT_JS = """
(async () => {
  const out = {};
  if (document.readyState !== "complete") await new Promise(r => window.addEventListener("load", r));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));
  out.height = document.documentElement.scrollHeight;   // as the reader gets the page: the first tab of each set
  const all_tabs = document.createElement("style");      // then every tab shown, so that what follows checks them all
  all_tabs.textContent = ".sd-tab-set > .sd-tab-content { display: block !important; }";
  document.head.appendChild(all_tabs);
  const art = document.querySelector("article.bd-article") || document.querySelector("article");
  const a = art.getBoundingClientRect(), cs = getComputedStyle(art);
  const left = a.left + parseFloat(cs.paddingLeft), right = a.right - parseFloat(cs.paddingRight);
  const text = e => e.textContent.replace(/\\s+/g, " ").trim().slice(0, 70);
  const scroll = e => e.scrollWidth - e.clientWidth;
  out.column = {left, right};
  out.equations = [...art.querySelectorAll('mjx-container[display="true"]')].map(m => {
    let l = Infinity, r = -Infinity;
    for (const e of m.querySelectorAll("mjx-math, mjx-labels")) {
      const b = e.getBoundingClientRect();
      if (b.width) { l = Math.min(l, b.left); r = Math.max(r, b.right); }
    }
    const tex = m.parentElement.querySelector("mjx-assistive-mml");
    return {text: text(tex || m.parentElement), left: l, right: r, scroll: Math.max(scroll(m), scroll(m.parentElement))};
  });
  const numberish = /^[-+\u2212]?[\\d.,]+(e[-+]?\\d+)?( ?(\u00b1|\\(|\\[)[^a-zA-Z]*)?$/;
  out.tables = [...art.querySelectorAll("table")].map(t => {
    const b = t.getBoundingClientRect(), wrapped = [];
    for (const c of t.querySelectorAll("td, th")) {
      const s = c.textContent.trim();
      if (!numberish.test(s)) continue;
      const tops = [], walk = document.createTreeWalker(c, NodeFilter.SHOW_TEXT);   // line boxes of the text only
      for (let n = walk.nextNode(); n; n = walk.nextNode()) {
        const rg = document.createRange();
        rg.selectNodeContents(n);
        for (const x of rg.getClientRects()) if (x.width > 0) tops.push(x.top);
      }
      if (tops.length && Math.max(...tops) - Math.min(...tops) > 4) wrapped.push(s);
    }
    return {text: text(t), left: b.left, right: b.right, scroll: scroll(t.parentElement), wrapped};
  });
  out.outputs = [...art.querySelectorAll(".cell_output pre")].map(p => {
    const b = p.getBoundingClientRect();
    return {text: text(p), right: b.right, scroll: scroll(p)};
  });
  out.broken = [];          // words of table cells laid out over two lines ("metho d"); code may wrap, words not
  for (const c of art.querySelectorAll("th, td")) {
    const walk = document.createTreeWalker(c, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      if (n.parentElement.closest("code, span.pre, .katex, mjx-container")) continue;
      for (const m of n.textContent.matchAll(/[^\\s\\-\\/_]+/g)) {   // a line may end after "-", "/" or "_"
        const rg = document.createRange();
        rg.setStart(n, m.index);
        rg.setEnd(n, m.index + m[0].length);
        const tops = new Set([...rg.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top)));
        if (tops.size > 1) out.broken.push(m[0]);
      }
    }
  }
  out.images = [...art.querySelectorAll("img")].map(i => ({src: i.getAttribute("src"), natural: i.naturalWidth,
                                                           shown: i.getBoundingClientRect().width}));
  out.truncated = [];
  for (const c of art.querySelectorAll(".cell_output td")) if (/\\.\\.\\.$/.test(c.textContent.trim())) out.truncated.push(text(c));
  for (const p of art.querySelectorAll(".cell_output pre"))
    for (const m of p.textContent.matchAll(/\\[[^\\]\\n]* \\.\\.\\. [^\\]\\n]*\\]/g)) out.truncated.push(m[0].slice(0, 70));
  const pre = document.createElement("pre");
  pre.id = "REPORT";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
""".replace("REPORT", REPORT)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the built book; ``PAGE.html?layout`` gets :data:`LAYOUT_JS` appended to its body."""

    def log_message(self, *args):
        pass

    def send_head(self):
        path, _, query = self.path.partition("?")
        if query != "layout" or not path.endswith(".html"):
            return super().send_head()
        body = Path(self.translate_path(path)).read_bytes()
        body = body.replace(b"</body>", f"<script>{LAYOUT_JS}</script></body>".encode())
        self.send_response(200)
        self.send_header("Content-type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML} has no built book: run `make book` first (`make test` does)")
    handler = functools.partial(_Handler, directory=str(HTML))
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
           f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
           "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def untypeset_math(dom: str) -> list[str]:
    """TeX left as text in a rendered page: ``$...$`` holding a command, ``_`` or ``^``, outside code blocks, inline
    code, API signatures (``dt``: default values are code) and typeset math (e.g. a cell's Markdown output rendered
    as CommonMark, which has no math)."""
    for tag in ("script", "style", "pre", "code", "dt", "mjx-container"):
        dom = re.sub(rf"<{tag}\b.*?</{tag}>", " ", dom, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    return re.findall(r"\$[^$\n]*(?:\\[A-Za-z]+|[_^])[^$\n]*\$", text)


def test_untypeset_math_is_found():
    assert untypeset_math("<p>the LIDGMVAE's $q(y \\mid x)$ collapsed</p>") == ["$q(y \\mid x)$"]
    assert untypeset_math("<p>$K_y$ and <code>$HOME</code></p>") == ["$K_y$"]
    assert untypeset_math("<p><mjx-container>$\\alpha$</mjx-container> costs $5 or $6</p><pre>$x_1$</pre>") == []
    assert untypeset_math('<dt class="sig">f(label="$z_1$")</dt><dd>plots $z_1$</dd>') == ["$z_1$"]


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_math_figures_and_no_errors(page, server, tmp_path):
    dom = render(f"{server}/book/{page}.html", tmp_path)
    assert "<article" in dom, f"{page}: no article body"
    assert not untypeset_math(dom), f"{page}: TeX shown as text: {untypeset_math(dom)[:3]}"
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
    """The button opens the notebook at the release tag its Colab cell installs (lidvae_mini.book.release)."""
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


def png_dpi(body: bytes) -> float:
    """Dots per inch of a PNG from its ``pHYs`` chunk (matplotlib writes it); 72 (the PNG default) if absent."""
    pos = 8
    while pos + 8 <= len(body):
        length, kind = int.from_bytes(body[pos:pos + 4], "big"), body[pos + 4:pos + 8]
        if kind == b"pHYs":
            per_metre, unit = int.from_bytes(body[pos + 8:pos + 12], "big"), body[pos + 16]
            return per_metre * 0.0254 if unit == 1 else 72.0
        if kind == b"IDAT":
            break
        pos += 12 + length
    return 72.0


def smallest_tick_pt() -> float:
    """The smallest tick-label size (points) any figure of the book may use: the style's (``plotting.STYLE``), or
    a smaller one set in a chapter or a module (``labelsize=...``, ``tick_params(..., size=...)``)."""
    pattern = re.compile(r"(?:labelsize|tick_params\([^)]*size)\s*=\s*([\d.]+)")
    sources = [*chapter_sources(), *sorted((ROOT / "lidvae_mini").rglob("*.py"))]
    explicit = [float(v) for p in sources for v in pattern.findall(p.read_text())]
    return min([plotting.STYLE["xtick.labelsize"], plotting.STYLE["ytick.labelsize"], *explicit])


_LAYOUTS: dict[str, dict] = {}


def layout(url: str, profile) -> dict:
    """What :data:`LAYOUT_JS` measured on the page at ``url`` in a :data:`WINDOW` window (rendered once per page)."""
    if url not in _LAYOUTS:
        dom = render(f"{url}?layout", profile)
        found = re.findall(rf'<pre id="{REPORT}"[^>]*>(.*?)</pre>', dom, re.S)
        assert found, f"{url}: the layout script did not report (did MathJax or an image hang?)"
        _LAYOUTS[url] = json.loads(html.unescape(found[-1]))
    return _LAYOUTS[url]


@pytest.mark.parametrize("page", PAGES)
def test_page_reads_well_in_a_1280_px_window(page, server, tmp_path):
    """Nothing a reader needs is clipped, scrolled sideways, wrapped mid-number or mid-word, elided or too small to
    read.

    Printed output must wrap within the column (no ``pre`` scrolls or runs past it); no word of a table cell (code
    aside) may be laid out over two lines.

    Equations and tables must lie within the text column (1 px of rounding allowed) and their boxes must not
    scroll; a number-like table cell must fit on one line; no output elides values. Figures: matplotlib writes
    the PNG at ``dpi`` (its pHYs chunk) and the page shrinks a figure wider than the column, so tick labels of
    ``pt`` points render at ``pt * dpi / 72 * shown / natural`` CSS px (``plotting.tick_px``); that must be at
    least ``plotting.MIN_LEGIBLE_PX`` for the smallest tick size found in the sources (:func:`smallest_tick_pt`).
    The scale is read from the image as shown (any figure, however made); the point size cannot be read from a
    PNG, hence the source scan (a size set some other way escapes it).
    """
    r = layout(f"{server}/book/{page}.html", tmp_path)
    tick_pt = smallest_tick_pt()
    lo, hi = r["column"]["left"] - 1, r["column"]["right"] + 1
    problems = [f"equation wider than the {hi - lo - 2:.0f}-px column (spans {e['left'] - lo - 1:.0f} to "
                f"{e['right'] - lo - 1:.0f} px, scrolls {e['scroll']} px): {e['text']}"
                for e in r["equations"] if e["left"] < lo or e["right"] > hi or e["scroll"] > 1]
    problems += [f"table wider than the column ({t['right'] - t['left']:.0f} px, scrolls {t['scroll']} px): {t['text']}"
                 for t in r["tables"] if t["left"] < lo or t["right"] > hi or t["scroll"] > 1]
    problems += [f"{len(t['wrapped'])} numbers wrapped over lines (e.g. {t['wrapped'][:3]}) in the table: {t['text']}"
                 for t in r["tables"] if t["wrapped"]]
    problems += [f"output elides values: {t}" for t in r["truncated"]]
    problems += [f"printed output runs past the column ({o['right'] - hi + 1:.0f} px over, scrolls {o['scroll']} px): "
                 f"{o['text']}" for o in r["outputs"] if o["right"] > hi or o["scroll"] > 1]
    problems += [f"{len(r['broken'])} table words broken inside (e.g. {r['broken'][:4]})"] if r["broken"] else []
    for im in r["images"]:
        if "_images/" not in im["src"] or not im["src"].endswith(".png") or not im["shown"]:
            continue
        url = f"{server}/book/{im['src']}" if not im["src"].startswith(("http", "/")) else im["src"]
        with urllib.request.urlopen(url, timeout=10) as resp:
            dpi = png_dpi(resp.read())
        px = plotting.tick_px(im["natural"], im["shown"], dpi, tick_pt)
        if px < plotting.MIN_LEGIBLE_PX:
            problems.append(f"figure {im['src'].rsplit('/', 1)[-1][:16]}: {im['natural']} px at {dpi:.0f} dpi shown "
                            f"{im['shown']:.0f} px wide: {tick_pt:g}-pt tick labels render at {px:.1f} px")
    assert not problems, f"{page} at {WINDOW[0]} x {WINDOW[1]}:\n" + "\n".join(problems)


def test_plotting_sizes_fit_the_column():
    """``plotting.figsize`` never exceeds the column width, and at it the book's tick labels are legible."""
    assert plotting.figsize(3) == (plotting.TEXT_WIDTH, plotting.figsize(3)[1])
    assert plotting.figsize(2, 2, row_height=2.5) == (plotting.TEXT_WIDTH, 5.0)
    natural = plotting.TEXT_WIDTH * plotting.DPI
    assert plotting.tick_px(natural, min(natural, 676), tick_pt=smallest_tick_pt()) >= plotting.MIN_LEGIBLE_PX
    assert plotting.tick_px(1600, 676) < plotting.MIN_LEGIBLE_PX          # a 16-inch figure in the same column
    for bad in ({"ncols": 0}, {"nrows": 1.5}, {"width": plotting.TEXT_WIDTH + 1}, {"row_height": -1.0}):
        with pytest.raises(ValueError):
            plotting.figsize(**bad)


#: The tallest a page of the book may be, in CSS px at :data:`WINDOW` (issue 21): a page that reads as one sitting.
MAX_HEIGHT = 15_000
#: Pages still above it (heights measured on a build of the ci defaults, in the closing note of issue 21); each
#: must fail the test below (strict xfail), so a page that gets under the limit has to leave this list.
TOO_TALL: dict[str, str] = {}
BOOK_PAGES = [p for p in PAGES if not p.startswith("api/")]


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=TOO_TALL[p]))
                                  if p in TOO_TALL else p for p in BOOK_PAGES])
def test_page_is_at_most_max_height(page, server, tmp_path):
    """A reader scrolls at most :data:`MAX_HEIGHT` px through a page of the book (package reference aside)."""
    height = layout(f"{server}/book/{page}.html", tmp_path)["height"]
    assert height <= MAX_HEIGHT, f"{page} is {height:,} px tall at {WINDOW[0]} x {WINDOW[1]} (at most {MAX_HEIGHT:,})"
