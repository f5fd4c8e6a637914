"""Browser tests: the app served on 127.0.0.1 by a real HTTP server, driven by headless Chromium.

Chromium and its driver come from Debian (`chromium`, `chromium-driver`; `.ci/run` installs them).
In CI (SHOP_REQUIRE_SERVERS=1) their absence fails these tests; on a laptop without them the
tests are left out and the summary says NOT RUN. Screenshots go to test-output/screenshots/
(or $SHOP_TEST_OUTPUT/screenshots), and the summary prints where.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.backends import servers_required
from tests.support import serve

CHROMIUM = os.environ.get("SHOP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("SHOP_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
HERE = Path(__file__).parent
_not_run: list[str] = []
_screenshots: list[Path] = []


def chromium_missing() -> str | None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return (f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
                f"(`apt-get install chromium chromium-driver`; .ci/run does it)")
    return None


def _is_browser_test(item) -> bool:
    return HERE in Path(str(item.path)).parents


def pytest_collection_modifyitems(config, items):
    reason = chromium_missing()
    if reason is None or servers_required():
        return
    kept = [item for item in items if not _is_browser_test(item)]
    dropped = [item for item in items if _is_browser_test(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        _not_run.append(f"NOT RUN: {len(dropped)} browser tests ({reason})")


def pytest_terminal_summary(terminalreporter):
    for line in _not_run:
        terminalreporter.write_line(line, yellow=True)
    if _screenshots:
        terminalreporter.write_line(f"browser screenshots ({len(_screenshots)}): {_screenshots[0].parent}")


@pytest.fixture(scope="session")
def screenshot_dir(pytestconfig) -> Path:
    base = Path(os.environ.get("SHOP_TEST_OUTPUT") or pytestconfig.rootpath / "test-output")
    folder = base / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def live_server(app):
    """The test's app (same database as `client`, `checkout`, `deliver`) on a real HTTP server."""
    yield from serve(app)


@pytest.fixture
def browser():
    reason = chromium_missing()
    if reason:
        pytest.fail(f"browser tests need Chromium: {reason}", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--lang=en-US", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def screenshot(browser, screenshot_dir, request):
    """Save the whole page as a PNG: `screenshot("dashboard")`, or on a phone-sized screen with phone=True."""
    test_name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")

    def take(name: str, *, phone: bool = False) -> Path:
        width, height = (390, 844) if phone else (1280, 900)
        metrics = {"width": width, "height": height, "deviceScaleFactor": 2 if phone else 1, "mobile": phone}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        full_height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": max(height, full_height)})
        path = screenshot_dir / f"{test_name}-{name}{'-phone' if phone else ''}.png"
        assert browser.save_screenshot(str(path)), f"could not save {path}"
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        _screenshots.append(path)
        print(f"screenshot: {path}")
        return path

    return take
