"""The dashboard as a person sees it: headless Chromium opens both study pages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_dashboard_pages_in_headless_chromium(demo_run: dict) -> None:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    app = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        env={**os.environ, "FLOURISH_STUDY": str(demo_run["study"])},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            for path, heading, shot in (("", "Overview", "dashboard_overview.png"),
                                        ("data_quality", "Data quality", "dashboard_quality.png")):
                page.goto(f"http://127.0.0.1:{port}/{path}", wait_until="networkidle")
                page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
                page.wait_for_timeout(2_000)
                page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
                assert page.get_by_role("heading", name=heading).count() >= 1
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
