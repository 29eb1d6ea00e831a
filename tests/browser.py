"""A real headless browser for the tests that open a page as a person would: Debian's Chromium and ChromeDriver
(packages ``chromium`` and ``chromium-driver``), installed here where absent, driven by Selenium.

Chromium starts with its background networking off (no update check, no sync, no look-up of Google's hosts)
and a new empty profile: nothing phones home, and the page under test is the only thing it loads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PACKAGES = ("chromium", "chromium-driver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root in CI's container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1280,1600",
)


def install_chromium() -> None:
    """Debian's Chromium and ChromeDriver, where absent (``apt-get``, as root); a clear failure otherwise.

    In CI (``CI`` set) a browser that cannot be installed fails the test; on a developer's machine without root
    it skips it, naming the packages to install.
    """
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    apt = shutil.which("apt-get")
    problem = None
    if apt is None:
        problem = "no apt-get on this machine"
    elif os.geteuid() != 0:
        problem = "installing them needs root"
    else:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", *PACKAGES]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                problem = f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
                break
    if problem is None and Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    message = f"the browser tests need Debian's {' and '.join(PACKAGES)}: {problem or 'not installed'}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def chromium_driver(tmp_path: Path):
    """A Selenium WebDriver on headless Chromium with a new profile under ``tmp_path`` (quit it when done)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    install_chromium()
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager's usage statistics, were it ever to run
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # the driver's path given: Selenium Manager (which would look up and download drivers) never runs
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


#: every <img> of the page: its alt text, whether it loaded, and its decoded size
IMAGES_SCRIPT = """
return Array.from(document.images).map(function (img) {
  return {alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
          src: img.currentSrc.slice(0, 22)};
});
"""


def images_of(path: Path, tmp_path: Path) -> tuple[list[dict], str]:
    """Open ``path`` (a file) in headless Chromium; every image of the page as it loaded, and the page's title."""
    driver = chromium_driver(tmp_path)
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(path).resolve().as_uri())
        return driver.execute_script(IMAGES_SCRIPT), driver.title
    finally:
        driver.quit()
