"""A screenshot of a written report in headless Chromium, so a person can look at the page as
a browser draws it (``concilium report RUN --screenshot out.png``).

Example:
    >>> screenshot("runs/demo/report.html", "shot.png")  # doctest: +SKIP
    PosixPath('shot.png')
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""The executables tried, in order, when no browser is given."""

HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")
"""Chromium flags for an offline, headless page (the browser tests use the same)."""


def find_chromium(browser: str | None = None) -> str:
    """The path of a Chromium executable: ``browser`` if given, else the first of
    :data:`CHROMIUM_NAMES` on ``PATH``.

    Raises:
        FileNotFoundError: none is found (says how to install one).
    """
    for name in [browser] if browser else CHROMIUM_NAMES:
        path = shutil.which(name) if name else None
        if path:
            return path
    raise FileNotFoundError(
        f"no Chromium found (tried {', '.join([browser] if browser else CHROMIUM_NAMES)}); "
        "install one (e.g. `apt-get install chromium`) or pass its path")


def screenshot(
    report: str | Path, out: str | Path, *, width: int = 1280, height: int = 1600,
    browser: str | None = None, timeout: float = 120.0,
) -> Path:
    """Draw ``report`` in headless Chromium at ``width`` x ``height`` CSS pixels and save the
    PNG at ``out`` (``height`` 1600 = the first two screens of a 1280 x 800 display).

    Raises:
        FileNotFoundError: the report or a Chromium executable is missing.
        ValueError: a size is not positive.
        RuntimeError: Chromium wrote no screenshot (its error output is included).
    """
    page, png = Path(report).resolve(), Path(out).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"report {page} not found; write it with `concilium report RUN`")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be > 0; got {width} x {height}")
    exe = find_chromium(browser)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="concilium-chromium-") as profile:
        done = subprocess.run(
            [exe, *HEADLESS_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
             f"--window-size={width},{height}", page.as_uri()],
            capture_output=True, text=True, timeout=timeout, check=False)
    if not png.is_file():
        raise RuntimeError(f"{exe} wrote no screenshot (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return png
