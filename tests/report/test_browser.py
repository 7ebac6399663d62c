"""Render the report in a real headless browser: not blank, every section heading in the DOM."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from report_helpers import formatted, make_report_data, section_html, table_rows

from concilium.report import SECTIONS
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
