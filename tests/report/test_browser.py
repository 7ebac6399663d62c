"""Render the report in a real headless browser: not blank, every section heading in the DOM;
at 1280 px no element overflows the page, every image loads, every folded table opens, every
CSV link gives its table's rows, and class and attribute names with markup show as text."""

from __future__ import annotations

import html as html_lib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from report_helpers import (
    EVIL,
    EVIL_ATTRIBUTE,
    formatted,
    make_report_data,
    section_html,
    table_rows,
)

from concilium.report import SECTIONS
from concilium.report.screenshot import screenshot
from concilium.report.sections import BAR_SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                       "chromium); CI installs it in .ci/run"),
]


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_report_renders_in_chromium(tmp_path, saved_report):
    page = saved_report[0].resolve().as_uri()
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", page)
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 10  # a blank page has ~0 variance
    dom = _chromium(tmp_path, "--dump-dom", page).stdout
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in dom
    html = saved_report[1]
    for section in SECTIONS:  # the browser shows every number of every section's tables
        assert table_rows(section_html(dom, section)) == table_rows(section_html(html, section))
    tables = make_report_data().tables
    for spec in BAR_SECTIONS:
        assert table_rows(section_html(dom, spec.section)) == [formatted(tables[spec.table])]
    assert dom.count("data:image/png;base64,") == html.count("data:image/png;base64,")
    assert "alert(1)" not in dom or "&lt;script&gt;" in dom
    assert "<script>alert(1)</script>" not in dom


PROBE = Path(__file__).with_name("probe.js")


def _probe(tmp_path, html: str, *, width: int = 1280, height: int = 800) -> dict:
    """Load ``html`` with :file:`probe.js` in headless Chromium at ``width`` x ``height`` and
    return what the probe measured."""
    page = tmp_path / "probed.html"
    page.write_text(html.replace("</body>", f"<script>{PROBE.read_text()}</script></body>"),
                    encoding="utf-8")
    dom = _chromium(tmp_path, f"--window-size={width},{height}", "--virtual-time-budget=10000",
                    "--dump-dom", page.as_uri()).stdout
    found = re.findall(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    assert found, "the probe did not run (no <pre id=probe> in the DOM)"
    return json.loads(html_lib.unescape(found[-1]))


def test_page_works_at_1280_px(tmp_path, saved_report):
    html = saved_report[1]
    out = _probe(tmp_path, html)
    assert out["viewport"][0] == 1280
    # every section renders, with its heading, in registry order
    assert [s[0] for s in out["sections"]] == list(SECTIONS)
    assert [s[2] for s in out["sections"]] == list(SECTIONS.values())
    assert all(s[1] > 20 for s in out["sections"])
    # no element overflows the page (tables scroll inside their own box)
    assert out["overflow"] == [] and out["scroll_width"] <= out["width"]
    # every image loads
    assert out["images"] == html.count("<img") > 0 and out["broken"] == 0
    # every folded table is hidden, then opens on a click and shows its rows
    assert out["closed"] and all(opened is False and shown is False
                                 for opened, shown in out["closed"])
    assert all(opened and shown and rows > 0 for opened, shown, rows in out["opened"])
    # class and attribute names with markup are shown as text, never run or drawn
    assert EVIL in out["text"] and EVIL_ATTRIBUTE in out["text"]
    assert out["scripts"] == 1 and out["markup"] == 0


def test_csv_links_give_the_tables_rows(tmp_path, saved_report):
    out = _probe(tmp_path, saved_report[1])
    csv = {name: (section, text) for section, name, text in out["csv"]}
    assert len(csv) == len(out["csv"])  # one file name per table
    assert len(out["csv"]) == saved_report[1].count("<table>")
    data = make_report_data()
    for spec in BAR_SECTIONS:
        (name,) = [n for n, (sec, _) in csv.items() if sec == spec.section]
        assert csv[name][1] == data.tables[spec.table].to_csv(index=False)  # every row
    attributes = pd.read_csv(io.StringIO(csv["attributes-1.csv"][1]))
    assert attributes["attribute"].tolist() == [EVIL_ATTRIBUTE]
    ranking = pd.read_csv(io.StringIO(csv["recommendation-1.csv"][1]))
    summary = saved_report[2]["recommendation"]["ranking"]
    assert ranking["explanation"].tolist() == [r["explanation"] for r in summary]


def test_screenshot_command_draws_the_page(tmp_path, saved_report):
    png = screenshot(saved_report[0], tmp_path / "shot.png", width=1280, height=1600)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1280) and pixels.std() > 10
