"""Save screenshots of a running dashboard (the README's come from `edgefleet demo --dashboard`).

Usage: ``.venv/bin/python tests/support/dashboard_screens.py http://127.0.0.1:8080 docs/img``
writes ``dashboard-demo-{fleet,rollouts,predictions,prediction,device}.png`` there, with
Debian's headless chromium.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from selenium.webdriver.common.by import By

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: tests/ too

from support.chromium import headless_chromium


def main(url: str, out: Path) -> None:
    """Open each page, let the live updates settle, save it."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        driver = headless_chromium(profile, window="1400,820")
        try:
            for name, path in (
                ("fleet", "/"),
                ("rollouts", "/rollouts"),
                ("predictions", "/predictions"),
            ):
                driver.get(url + path)
                time.sleep(1.5)
                driver.save_screenshot(str(out / f"dashboard-demo-{name}.png"))
            links = driver.find_elements(By.CSS_SELECTOR, "#feed tr a")
            if links:
                links[0].click()
                time.sleep(1.0)
                driver.save_screenshot(str(out / "dashboard-demo-prediction.png"))
            device = driver.find_elements(By.CSS_SELECTOR, "a[href^='/devices/']")
            if device:
                device[0].click()
                time.sleep(1.0)
                driver.save_screenshot(str(out / "dashboard-demo-device.png"))
        finally:
            driver.quit()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
