"""Markup carried by store attributes (class names, member archs, the title) is shown as text in
a real browser, never executed and never rendered as HTML (issue 16)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from report_helpers import EVIL, make_report_data

from concilium.report.render import save

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

#: Each would change the page if it ran: an attribute on <body>, or a new element.
IMG = '<img src=x onerror="document.body.setAttribute(\'data-pwned\', 1)">'
SVG = '<svg onload="document.body.setAttribute(\'data-pwned\', 2)"></svg>'
BOLD = "<b id=bold-injected>bold</b>"
MATH = r"$\frac{1}{$ 50% {{ 7*7 }}"  # matplotlib mathtext, Jinja and printf syntax


def _poisoned():
    data = make_report_data()
    names = {"plain": IMG, EVIL: BOLD}

    def swap(value):
        return names.get(value, value) if isinstance(value, str) else value

    data.title = SVG + MATH
    data.dataset = {k: ([swap(c) for c in v] if isinstance(v, list) else swap(v))
                    for k, v in data.dataset.items()}
    data.class_counts.index = [swap(c) for c in data.class_counts.index]
    for table in data.tables.values():
        if "class" in table:
            table["class"] = table["class"].map(swap)
    data.members["arch"] = [SVG, MATH, "small-cnn"]
    for item in data.gallery:
        item.label = swap(item.label)
    for card in data.attribute_cards:
        card.predicted = MATH
    return data


@pytest.fixture(scope="module")
def poisoned_report(tmp_path_factory):
    path = save(_poisoned(), tmp_path_factory.mktemp("run"))
    return path, path.read_text()


def test_markup_is_escaped_in_the_html(poisoned_report):
    _, html = poisoned_report
    for markup in (IMG, SVG, BOLD):
        assert markup not in html
    assert "&lt;img src=x onerror=" in html and "&lt;b id=bold-injected&gt;" in html
    assert "{{ 7*7 }}" in html and "49" not in re.findall(r"\{\{ 7\*7 \}\}|49", html)[:1]


def test_the_summary_keeps_the_names_as_plain_text(poisoned_report):
    path, _ = poisoned_report
    summary = json.loads((path.parent / "summary.json").read_text())
    assert IMG in summary["dataset"]["class_names"]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_markup_shows_as_text_in_chromium(poisoned_report, tmp_path):
    path, _ = poisoned_report
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=2000", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    ).stdout
    assert "<h2>" in dom, "chromium rendered nothing"
    assert not re.search(r"<body[^>]*data-pwned", dom)  # no handler ran
    assert 'id="bold-injected"' not in dom and "<svg onload" not in dom  # no element was made
    assert '<img src="x"' not in dom
    # the names are there, as text nodes (serialised escaped)
    assert "&lt;img src=x onerror=" in dom
    assert "&lt;b id=bold-injected&gt;bold&lt;/b&gt;" in dom
