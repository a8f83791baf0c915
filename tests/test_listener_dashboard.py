"""The dashboard in Debian's headless Chromium (Playwright), against the real listener process.

An alert published on MQTT must appear on the open page within 1 s without a reload, and the
page's Acknowledge button must change the alert in the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, sync_playwright

from tests.helpers import DeviceClient, Mosquitto, free_port, make_alert, wait_port

CHROMIUM = "/usr/bin/chromium"
TOKEN = "dashboard-test-token"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture
def listener(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[str]:
    """The real `safeguard-listener` process; its base URL."""
    port = free_port()
    dead_tiles = f"http://127.0.0.1:{free_port()}/{{z}}/{{x}}/{{y}}.png"  # nothing listens there
    config = tmp_path / "listener.yaml"
    config.write_text(
        f"mqtt: {{port: {mosquitto.port}}}\n"
        f"database: {{url: 'sqlite:///{tmp_path}/alerts.db'}}\n"
        f"http: {{port: {port}, tile_url: '{dead_tiles}'}}\n"
    )
    env = {**os.environ, "SAFEGUARD_API_TOKEN": TOKEN}
    log = (tmp_path / "listener.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "listener.cli", "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, timeout=20)
        deadline = time.monotonic() + 10
        while not get_json(base + "/healthz")["mqtt"]:
            assert time.monotonic() < deadline, "listener never reached the broker"
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        code = proc.wait(timeout=15)
        log.close()
    # uvicorn re-raises SIGTERM after its graceful shutdown; systemd counts that as clean
    assert code in (0, -15), code
    assert "Application shutdown complete" in (tmp_path / "listener.log").read_text()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Debian's chromium, headless, with a fresh user-data-dir (never a downloaded browser)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: install the Debian package chromium"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        yield context
        context.close()


def test_live_alert_and_acknowledge(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto
) -> None:
    device = DeviceClient(mosquitto.port)
    device.publish_raw("kitchen-pi", b"online", suffix="status")
    earlier = make_alert("kitchen-pi", category="glass", location={"lat": 27.49, "lon": 77.67})
    device.publish_alert(earlier)
    device.wait_acks(1)

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{listener}/#token={TOKEN}")
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    page.wait_for_selector(f'li[data-id="{earlier["id"]}"]', timeout=5_000)
    assert "kitchen-pi: online" in page.inner_text("#devices")
    assert page.locator(".leaflet-interactive").count() == 1  # the marker, without any tiles

    alert = make_alert("kitchen-pi", category="gunshot", severity="critical")
    sent = time.monotonic()
    device.publish_alert(alert)
    row = page.wait_for_selector(f'li[data-id="{alert["id"]}"]', timeout=1_000)
    latency = time.monotonic() - sent
    assert row is not None
    assert latency < 1.0, latency
    first = page.locator("#alerts li").first
    assert first.get_attribute("data-id") == alert["id"]  # newest on top, no reload

    page.fill("#who", "alice")
    page.click(f'li[data-id="{alert["id"]}"] button.ack')
    page.wait_for_selector(
        f'li[data-id="{alert["id"]}"][data-status="acknowledged"]', timeout=5_000
    )
    stored = get_json(f"{listener}/api/alerts/{alert['id']}")
    assert stored["listener"]["status"] == "acknowledged"
    assert stored["listener"]["acknowledged_by"] == "alice"
    assert get_json(f"{listener}/api/alerts/{earlier['id']}")["listener"]["status"] == "new"
    assert errors == []
    device.close()


def test_wrong_token_shows_the_login(listener: str, browser: BrowserContext) -> None:
    page = browser.new_page()
    page.goto(f"{listener}/#token=wrong")
    page.wait_for_selector("#login:not([hidden])", timeout=5_000)
    assert page.inner_text("#login-error") == "Wrong token."
    assert page.locator("#main").is_hidden()
