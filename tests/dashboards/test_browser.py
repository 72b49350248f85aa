"""The dashboard and the public report as a person sees them, in headless Chromium."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
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


@contextlib.contextmanager
def _dashboard(study: Path):  # noqa: ANN202 - a generator context manager
    """A Streamlit server on a free loopback port for ``study``; yields the port."""
    port = _free_port()
    app = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        env={**os.environ, "FLOURISH_STUDY": str(study)},
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
        yield port
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.browser
def test_dashboard_pages_in_headless_chromium(demo_run: dict) -> None:
    from playwright.sync_api import sync_playwright

    with _dashboard(demo_run["study"]) as port:
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


def _launch(p):  # noqa: ANN001, ANN202 - playwright objects
    return p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)


@pytest.mark.browser
def test_demo_public_report_in_headless_chromium(demo_run: dict, tmp_path: Path) -> None:
    """The report the pipeline wrote for the demo: answer first, profile, head = the ledger's."""
    from playwright.sync_api import sync_playwright

    from orchestration.keys import open_study_ledger
    from orchestration.spec import load_study_spec

    report = demo_run["out"] / "report" / "index.html"
    head = open_study_ledger(load_study_spec(demo_run["study"]), create=False).summary().head
    assert head is not None
    meta = re.search(r'<meta name="flourish-ledger-head" content="([^"]*)"', report.read_text())
    assert meta and meta.group(1) == f"{head.ledger_id}:{head.seq}:{head.entry_hash}"
    shot = tmp_path / "demo_public_report.png"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_context(offline=True, viewport={"width": 1100, "height": 900}).new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            headline = page.locator("p.headline")
            assert headline.is_visible()
            assert "WHO-5 Well-Being Index" in headline.inner_text()
            assert page.locator(".profile .row").count() >= 6
            assert page.locator(".profile").get_by_text("Meaning and purpose").is_visible()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert all(u.startswith(("file://", "data:")) for u in requests)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)


@pytest.mark.browser
def test_dashboard_public_page_in_headless_chromium(demo_run: dict) -> None:
    """The Public results page draws the verified release: headline and profile images."""
    from playwright.sync_api import sync_playwright

    with _dashboard(demo_run["study"]) as port:
        with sync_playwright() as p:
            browser = _launch(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.get_by_role("heading", name="Overview").first.wait_for(timeout=60_000)
            page.get_by_role("link", name="Public results", exact=True).click()
            title = "Public results (differentially private)"
            page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
            page.get_by_text("From the first survey").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1_500)
            page.screenshot(path=str(ARTIFACTS / "dashboard_public.png"), full_page=True)
            assert page.locator(".flourish-public .profile .row").count() >= 6
            assert page.locator('.flourish-public img[src^="data:image/svg+xml"]').count() >= 6
            browser.close()
