"""Debian's chromium, headless, under Selenium: the one setup the browser tests, the dashboard
benchmark and the screenshot script share.

Selenium is imported when a browser is opened, so importing this module does not need it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def headless_chromium(
    profile: Path | str, *, window: str = "1400,900", extra_flags: Iterable[str] = ()
) -> Any:
    """Start chromium (headless, no sandbox, no background traffic) with its profile in ``profile``.

    ``extra_flags`` go after the common ones, before ``--window-size=<window>``.
    """
    from selenium import webdriver  # noqa: PLC0415 - optional: only when a browser is opened
    from selenium.webdriver.chrome.options import Options  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        *extra_flags,
        f"--window-size={window}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)
