"""Helpers for the worklist page's tests: a uvicorn server in a thread, headless Chromium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900")


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 in a thread; yields its base URL."""
    from ichrt.runtime.ui.app import BackgroundServer

    server = BackgroundServer(app, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@contextmanager
def chrome(profile: Path, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """Headless Debian Chromium driven by Selenium, with a fresh profile folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver") or CHROMEDRIVER
    if not Path(driver_path).exists():
        raise RuntimeError("chromedriver is missing: apt-get install chromium chromium-driver "
                           "(scripts/test.sh does it when run as root)")
    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    for binary in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(binary).exists():
            options.binary_location = binary
            break
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
