"""End to end in a real browser: Debian's headless Chromium, driven by Playwright (no browser download),
logs in to the Streamlit app served by `streamlit run`, predicts, keeps a screenshot of the result, and
opens an admin's Monitoring page."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT, STREAMLIT_APP
from tests.support.servers import free_port, running
from tests.support.tokens import ADMIN, USER

pytestmark = [pytest.mark.slow, pytest.mark.chromium]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "ui"


@pytest.fixture
def ui_url(api_url: str, tmp_path: Path):
    port = free_port()
    env = dict(
        os.environ, API_URL=api_url, PYTHONPATH=str(ROOT), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false"
    )
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        STREAMLIT_APP,
        "--server.headless=true",
        "--server.address=127.0.0.1",
        f"--server.port={port}",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
        "--client.toolbarMode=viewer",
    ]
    base = f"http://127.0.0.1:{port}"
    with running(
        command,
        ready_url=f"{base}/_stcore/health",
        env=env,
        cwd=tmp_path,
        timeout=60,
        log=tmp_path / "ui.log",
    ):
        yield base


def test_log_in_predict_and_keep_a_screenshot(ui_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.goto(ui_url)
            page.get_by_label("Username").fill(USER[0])
            page.get_by_label("Password", exact=True).fill(USER[1])
            page.get_by_role("button", name="Log in").click()

            def field(name: str):
                return page.get_by_role("spinbutton", name=name)

            expect(field("petal_length")).to_be_visible(timeout=30_000)
            for name, value in {
                "sepal_length": 5.1,
                "sepal_width": 3.5,
                "petal_length": 1.4,
                "petal_width": 0.2,
            }.items():
                field(name).fill(str(value))
                field(name).press("Tab")
            page.get_by_role("button", name="Predict").click()

            expect(page.get_by_text("Predicted: setosa")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("All candidates of the last training run")).to_be_visible()
            page.wait_for_timeout(1000)  # the chart and table finish drawing
            shot = SCREENSHOTS / "predict.png"
            page.screenshot(path=str(shot), full_page=True)

            # An admin's Monitoring page draws (what it shows is tests/ui/test_app.py's to check).
            page.get_by_role("button", name="Log out").click()
            page.get_by_label("Username").fill(ADMIN[0])
            page.get_by_label("Password", exact=True).fill(ADMIN[1])
            page.get_by_role("button", name="Log in").click()
            page.get_by_text("Monitoring", exact=True).click()
            expect(page.get_by_role("heading", name="Recent predictions")).to_be_visible(timeout=30_000)
            page.screenshot(path=str(SCREENSHOTS / "monitoring.png"), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    # The README's picture is refreshed by hand from this file (app/ui/screenshot.png).
    if os.environ.get("UPDATE_UI_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "app" / "ui" / "screenshot.png")
