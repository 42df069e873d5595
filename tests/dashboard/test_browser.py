"""End to end in a real browser: `dpplat dashboard` on 127.0.0.1, driven by Debian's chromium through Playwright."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("DPPLAT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
PAGES = [("", "Runs", 1), ("run", "Run", 3), ("privacy_audit", "Privacy audit", 3), ("privacy_card", "Privacy card", 0),
         ("defense_audit", "Defense audit", 0)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(store_path) -> tuple[subprocess.Popen, str]:
    """``dpplat dashboard`` on a free port, once it answers its health check."""
    port = free_port()
    dpplat = shutil.which("dpplat", path=str(Path(sys.executable).parent)) or "dpplat"
    proc = subprocess.Popen([dpplat, "dashboard", "--store", str(store_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if answers(url):
            return proc, url
        time.sleep(0.5)
    proc.kill()
    pytest.fail("the dashboard did not answer /_stcore/health within 60 s: " + proc.stdout.read().decode()[-2000:])


def answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def dashboard(seeded_store):
    proc, url = start_dashboard(seeded_store["path"])
    yield url
    stop(proc)


def test_stopping_the_dashboard_command_stops_its_server(seeded_store):
    """``dpplat dashboard`` is the server, not its parent: stopping the command (a test's or a service
    manager's SIGTERM) must not leave an orphaned Streamlit serving the store."""
    proc, url = start_dashboard(seeded_store["path"])
    stop(proc)
    deadline = time.time() + 10
    while answers(url) and time.time() < deadline:
        time.sleep(0.5)
    assert not answers(url), "the Streamlit server outlived `dpplat dashboard`"


def test_every_page_renders_its_charts_in_chromium(dashboard):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium); "
                    ".ci/run does this")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for path, title, charts in PAGES:
            page.goto(f"{dashboard}/{path}")
            page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=30_000)
            if charts:
                rendered = page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg')
                rendered.nth(charts - 1).wait_for(timeout=30_000)
                assert rendered.count() >= charts
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{path or 'runs'}.png"), full_page=True)
        browser.close()
