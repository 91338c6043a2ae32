"""issue 13: every command's HTML page opened in a real browser (headless Chromium, Debian's
``chromium``; ``.ci/run`` installs it where it can).

One Chromium process per page: it loads a copy of the page with a small measuring script
added (allowed by a hash in the page's Content-Security-Policy; the page itself has no
script), writes a screenshot, and dumps the DOM with the measurements; its log gives the
console messages. Asserted: no console message, the banner, one row per finding, the expected
number of shard bars, layer rows and device bars, and nothing overflowing its box at 1280 px
(names wrap only at their ``.``/``-`` parts, severity badges never wrap)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_html_reports import Page, hostile_folder

from hfconv.cli import main

from helpers import FIXTURES, copy_fixture

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs Debian's chromium with apt-get "
    "where it can; here it could not): the real-browser checks of the HTML pages did not run")

WIDTH = 1280

MEASURE = """(function () {
  var q = function (s) { return Array.prototype.slice.call(document.querySelectorAll(s)); };
  var m = {banners: q('.banner').length, findingRows: q('table.findings tbody tr').length,
           shardBars: q('svg.shard-bar').length, layerRows: q('svg.layer-map g.layer-row').length,
           deviceBars: q('svg.device-bar').length, deviceCells: q('svg.device-map g.unit').length,
           pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
           overflow: [], wrappedBadges: [], brokenNames: []};
  q('td, th, .smap .name, .smap .size, .banner, h1, h2, header p, ul.items li, section').forEach(function (el) {
    if (el.scrollWidth > el.clientWidth + 1) {
      m.overflow.push(el.tagName + '.' + el.className + ': ' + el.textContent.slice(0, 80));
    }
  });
  q('.sev').forEach(function (el) {
    if (el.getClientRects().length !== 1 || el.getBoundingClientRect().height > 24 ||
        el.scrollWidth > el.clientWidth + 1) {
      m.wrappedBadges.push(el.textContent);
    }
  });
  q('td.name, .smap .name').forEach(function (el) {
    var walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT), node;
    while ((node = walker.nextNode())) {
      if (!node.textContent.trim()) { continue; }
      var range = document.createRange();
      range.selectNodeContents(node);
      var tops = {};
      Array.prototype.slice.call(range.getClientRects()).forEach(function (r) { tops[Math.round(r.top)] = 1; });
      if (Object.keys(tops).length > 1) { m.brokenNames.push(node.textContent); }
    }
  });
  var out = document.createElement('pre');
  out.id = 'hfconv-measure';
  out.textContent = JSON.stringify(m);
  document.body.appendChild(out);
})();"""


def open_in_chromium(page: Path, shots: Path, profile: Path) -> tuple[dict, list[str]]:
    """The page's measurements and Chromium's console messages; a screenshot in ``shots``."""
    digest = base64.b64encode(hashlib.sha256(MEASURE.encode()).digest()).decode()
    html = page.read_text(encoding="utf-8")
    policy = "default-src 'none'; style-src 'unsafe-inline'"
    assert html.count(policy) == 1
    html = html.replace(policy, f"{policy}; script-src 'sha256-{digest}'")
    html = html.replace("</body>", f"<script>{MEASURE}</script>\n</body>")
    measured = page.with_name(page.stem + ".measured.html")
    measured.write_text(html, encoding="utf-8")
    command = [CHROMIUM, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
               f"--window-size={WIDTH},1600", "--enable-logging=stderr", "--v=0",
               f"--screenshot={shots / (page.stem + '.png')}", "--dump-dom", measured.as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    run = subprocess.run(command, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HOME": str(profile)})
    assert run.returncode == 0, run.stderr[-3000:]
    found = re.search(r'<pre id="hfconv-measure">(.*?)</pre>', run.stdout, re.S)
    assert found, (run.stdout[-2000:], run.stderr[-2000:])
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    import html as html_module

    return json.loads(html_module.unescape(found.group(1))), console


def make_page(name: str, work: Path) -> tuple[Path, int]:
    """The page ``name`` for a fixture, and its number of findings rows from the JSON (-1: not counted)."""
    from hfconv.findings import Finding, Severity
    from hfconv.render.html import finding_rows

    sharded = FIXTURES / "llama-safetensors-sharded"
    command, folder, extra = {
        "validate": ("validate", None, ()), "inspect": ("inspect", sharded, ()),
        "load-test": ("load-test", sharded, ("--max-memory", "cpu=100KB")),
        "convert": ("convert", FIXTURES / "llama-tied-bin", ()), "validate-hostile": ("validate", work, ()),
    }[name]
    if name == "validate-hostile":
        folder = hostile_folder(work / "hostile")
    rows = -1
    if folder is None:  # validate: a shard missing
        folder = copy_fixture(work, "llama-safetensors-sharded")
        (folder / "model-00002-of-00003.safetensors").unlink()
        document = json.loads(CliRunner().invoke(main, ["validate", str(folder), "--format", "json"]).stdout)
        document = document[0] if isinstance(document, list) else document
        rows = len(finding_rows([Finding(f["code"], Severity(f["severity"]), f["message"], f["file"], f["tensor"])
                                 for f in document["findings"]]))
    page = work / f"{name}.html"
    args = {"validate": ["--reference", "rules"] if name == "validate-hostile" else [],  # no transformers: faster
            "inspect": [], "load-test": ["--quiet", *extra], "convert": [str(work / "converted"), "--quiet"]}[command]
    # In this process (the CLI's own code, as test_render_formats runs it): tests/test_html_reports.py
    # runs every command in a subprocess; here the page is what is tested.
    outcome = CliRunner().invoke(main, [command, str(folder), *args, "--format", "html", "-o", str(page)],
                                 catch_exceptions=False)
    assert outcome.exit_code in (0, 1), outcome.output
    return page, rows


EXPECTED = {
    # page: (shard bars, layer rows, device bars, device-map cells)
    "validate": (3, 5, 0, 0),
    "inspect": (3, 5, 0, 0),
    "load-test": (3, 0, 2, 5),
    "convert": (1 + 1, 0, 0, 0),
    "validate-hostile": (3, 5, 0, 0),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_page_in_a_real_browser(name: str, tmp_path: Path) -> None:
    page, rows = make_page(name, tmp_path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots of {name}: {shots}")
    measured, console = open_in_chromium(page, shots, tmp_path / "profile")
    assert (shots / f"{page.stem}.png").stat().st_size > 10_000  # a picture of a page, not a blank
    assert console == [], console
    assert measured["banners"] == 1
    source = Page(page.read_text(encoding="utf-8"))
    in_source = sum(source.count("tr", s) for s in ("error", "warning", "info"))
    assert measured["findingRows"] == in_source
    if rows >= 0:
        assert measured["findingRows"] == rows
    bars, layers, devices, cells = EXPECTED[name]
    assert (measured["shardBars"], measured["layerRows"], measured["deviceBars"], measured["deviceCells"]) == \
        (bars, layers, devices, cells), measured
    assert measured["viewport"] == WIDTH and measured["pageWidth"] <= WIDTH, measured
    assert measured["overflow"] == [], measured["overflow"]
    assert measured["wrappedBadges"] == [], measured["wrappedBadges"]
    assert measured["brokenNames"] == [], measured["brokenNames"]
