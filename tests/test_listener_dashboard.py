"""The dashboard in Debian's headless Chromium (Playwright), against the real listener process.

An alert published on MQTT must appear on the open page within 1 s without a reload, and the
page's Acknowledge button must change the alert in the API. A clip uploaded to an alert shows
up on the open page and plays (WAV, and MP4 from the clip writer's own encoder), and the
page's Resolve button changes the alert in the API.
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

import numpy as np
import pytest
import soundfile
from playwright.sync_api import BrowserContext, Dialog, Page, sync_playwright

from edge.clips import add_sound, video_encoder
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
    "--autoplay-policy=no-user-gesture-required",  # a clip plays however slow its fetch was
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


def put_clip(base: str, alert_id: str, path: Path, content_type: str) -> None:
    request = urllib.request.Request(
        f"{base}/api/alerts/{alert_id}/clip",
        data=path.read_bytes(),
        method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def media_files(folder: Path) -> dict[str, Path]:
    """A 3 s WAV (a tone, as the clip writer writes audio) and a 3 s MP4 made with the
    encoder arguments the clip writer uses, carrying that WAV as its sound."""
    wav = folder / "clip.wav"
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 16000)
    soundfile.write(wav, tone, 16000, subtype="PCM_16")
    encoder = video_encoder()
    assert encoder is not None, "ffmpeg is missing: install the Debian package ffmpeg"
    mp4 = folder / "clip.mp4"
    subprocess.run(
        [encoder[0], "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15",
         "-t", "3", *encoder[1:], "-movflags", "+faststart", str(mp4)],
        check=True, timeout=60,
    )  # fmt: skip
    add_sound(mp4, wav, 3.0)  # as the clip writer does: the MP4 plays with its sound
    return {"audio/wav": wav, "video/mp4": mp4}


def played(page: Page, tag: str) -> dict[str, Any]:
    """Wait until the player's <audio>/<video> has metadata or an error; its state."""
    selector = f"#player-body {tag}"
    page.wait_for_function(
        f"() => {{ const m = document.querySelector('{selector}');"
        " return m && (m.error || (m.readyState >= 1 && m.currentTime > 0)); }",
        timeout=20_000,
    )
    state: dict[str, Any] = page.eval_on_selector(
        selector,
        "m => ({ready: m.readyState, error: m.error && m.error.code, duration: m.duration,"
        " src: m.src, visible: !document.getElementById('player').hidden})",
    )
    return state


def test_clip_plays_and_resolve_updates_the_api(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = DeviceClient(mosquitto.port)
    alerts = {kind: make_alert("porch-pi", category="scream", event="update") for kind in
              ("audio/wav", "video/mp4")}  # fmt: skip
    for alert in alerts.values():
        device.publish_alert(alert)
    device.wait_acks(len(alerts))

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{listener}/#token={TOKEN}")
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    for alert in alerts.values():
        row = f'li[data-id="{alert["id"]}"]'
        page.wait_for_selector(row, timeout=10_000)
        assert page.locator(f"{row} button.play").count() == 0  # no clip yet

    files = media_files(tmp_path)
    for (content_type, alert), tag in zip(alerts.items(), ("audio", "video"), strict=True):
        put_clip(listener, str(alert["id"]), files[content_type], content_type)
        button = f'li[data-id="{alert["id"]}"] button.play'
        page.wait_for_selector(button, timeout=10_000)  # the upload's live update, no reload
        page.click(button)
        state = played(page, tag)
        assert state["error"] is None, state
        assert state["ready"] >= 1, state
        assert 2.5 < state["duration"] < 3.5, state
        assert state["src"].startswith("blob:"), state  # fetched with the token, not in a URL
        assert state["visible"], state
        assert page.locator("#player-body audio, #player-body video").count() == 1  # one player
        assert page.get_attribute("#player-body a.clip-download", "href") == state["src"]
        if tag == "video":  # Chromium decodes the MP4's sound track as it plays
            page.wait_for_function(
                "() => document.querySelector('#player-body video').webkitAudioDecodedByteCount"
                " > 0",
                timeout=10_000,
            )

    # a clip this browser cannot decode says so (and can still be downloaded)
    broken = make_alert("porch-pi", category="scream", event="update")
    device.publish_alert(broken)
    device.wait_acks(len(alerts) + 1)
    page.wait_for_selector(f'li[data-id="{broken["id"]}"]', timeout=10_000)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 64)
    put_clip(listener, str(broken["id"]), garbage, "video/mp4")
    page.click(f'li[data-id="{broken["id"]}"] button.play', timeout=10_000)
    page.wait_for_selector("#player-body p.clip-error", timeout=20_000)
    assert "cannot play this clip (video/mp4)" in page.inner_text("#player-body")
    assert page.locator("#player-body video").count() == 0
    assert page.locator("#player-body a.clip-download").count() == 1

    target = alerts["video/mp4"]
    page.fill("#who", "bob")
    page.click(f'li[data-id="{target["id"]}"] button.resolve')
    page.wait_for_selector(f'li[data-id="{target["id"]}"][data-status="resolved"]', timeout=10_000)
    stored = get_json(f"{listener}/api/alerts/{target['id']}")
    assert stored["listener"]["status"] == "resolved"
    assert stored["listener"]["resolved_by"] == "bob"
    assert stored["listener"]["acknowledged_by"] == "bob"  # resolving also acknowledges
    assert stored["listener"]["has_clip"] is True
    resolved_row = f'li[data-id="{target["id"]}"]'
    assert page.locator(f"{resolved_row} button.resolve").count() == 0
    assert page.locator(f"{resolved_row} button.play").count() == 1  # still playable
    other = get_json(f"{listener}/api/alerts/{alerts['audio/wav']['id']}")
    assert other["listener"]["status"] == "new"
    assert errors == []
    device.close()


def test_alert_text_is_text_and_the_page_runs_only_its_own_scripts(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto
) -> None:
    """An alert's fields are shown as text (the map tooltip too), and the page's
    Content-Security-Policy lets Leaflet work while refusing scripts the page did not serve."""
    device = DeviceClient(mosquitto.port)
    html = '<img src=x onerror="window.__xss=(window.__xss||0)+1">'
    evil = make_alert("porch-pi", category=html, location={"lat": 10.0, "lon": 10.0})
    device.publish_alert(evil)
    device.wait_acks(1)

    with urllib.request.urlopen(listener + "/", timeout=5) as response:
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "img-src 'self' data: blob: http://127.0.0.1:" in policy  # the configured tiles

    page = browser.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{listener}/#token={TOKEN}")
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    row = f'li[data-id="{evil["id"]}"]'
    page.wait_for_selector(row, timeout=5_000)
    assert page.inner_text(f"{row} .category") == html
    marker = page.locator(".leaflet-interactive")
    assert marker.count() == 1
    marker.hover(force=True)
    tooltip = page.wait_for_selector(".leaflet-tooltip", timeout=5_000)
    assert tooltip is not None
    assert tooltip.inner_text() == f"{html} (critical) on porch-pi"
    assert page.locator(".leaflet-tooltip img").count() == 0
    # an inline script is refused by the policy (what an injection elsewhere would need)
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__xss = 99'; document.body.append(s); }"
    )
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__xss") is None
    assert dialogs == []
    assert errors == []
    refused = [m for m in console if "Content Security Policy" in m]
    assert len(refused) == 1, refused  # only our probe
    assert "inline script" in refused[0], refused
    device.close()


def test_ids_with_a_slash_failed_actions_and_a_refused_token(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """An id holding '/' can be acknowledged from the page; an action that fails says why;
    a 401 (the token was changed) shows the login form instead of stale data."""
    import sqlite3

    device = DeviceClient(mosquitto.port)
    slashed = make_alert("site-a", id="site/0001")
    doomed = make_alert("site-a", category="glass")
    device.publish_alert(slashed)
    device.publish_alert(doomed)
    device.wait_acks(2)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{listener}/#token={TOKEN}")
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    page.fill("#who", "carol")
    page.click('li[data-id="site/0001"] button.ack')
    page.wait_for_selector('li[data-id="site/0001"][data-status="acknowledged"]', timeout=5_000)
    got = get_json(f"{listener}/api/alerts/site%2F0001?device=site-a")
    assert got["listener"]["acknowledged_by"] == "carol"

    with sqlite3.connect(tmp_path / "alerts.db") as db:  # gone behind the page's back
        db.execute("DELETE FROM alerts WHERE id = ?", (doomed["id"],))
    page.click(f'li[data-id="{doomed["id"]}"] button.resolve')
    page.wait_for_selector("#notice:not([hidden])", timeout=5_000)
    assert "Could not resolve glass on site-a: 404 no such alert" in page.inner_text("#notice")

    page.route("**/api/**", lambda route: route.fulfill(status=401, body="{}"))
    page.click('li[data-id="site/0001"] button.resolve')
    page.wait_for_selector("#login:not([hidden])", timeout=5_000)
    assert page.locator("#main").is_hidden()
    assert "token was refused" in page.inner_text("#login-error")
    assert page.evaluate("() => localStorage.getItem('safeguard.token')") is None
    assert errors == []
    device.close()


def test_alerts_stored_while_the_page_loads_are_all_shown(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto
) -> None:
    """The page opens the live stream first and loads the list after its `hello`, so an
    alert stored between the two is not missed."""
    import threading

    device = DeviceClient(mosquitto.port)
    sent = [make_alert(f"burst-{i % 5}") for i in range(150)]

    def publish() -> None:
        for alert in sent:
            device.publish_alert(alert)
            time.sleep(0.01)

    page = browser.new_page()
    burst = threading.Thread(target=publish)
    burst.start()
    page.goto(f"{listener}/#token={TOKEN}")
    burst.join(timeout=30)
    device.wait_acks(len(sent), timeout=30)
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    page.wait_for_function(f"() => document.querySelectorAll('#alerts li').length >= {len(sent)}",
                           timeout=10_000)  # fmt: skip
    shown = set(page.eval_on_selector_all("#alerts li", "els => els.map(e => e.dataset.id)"))
    assert {str(a["id"]) for a in sent} <= shown
    device.close()


def entries(page: Page) -> list[dict[str, str | int]]:
    found: list[dict[str, str | int]] = page.eval_on_selector_all(
        "#alerts li",
        "els => els.map(e => ({id: e.dataset.id, status: e.dataset.status, phase: e.dataset.phase,"
        " meta: e.querySelector('.meta').textContent, play: e.querySelectorAll('.play').length}))",
    )
    return found


def test_one_entry_per_event_with_its_peak_clip_and_state(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """start, update (with the clip) and end of one event are one entry: the start's score
    and severity, the update's clip, ongoing then ended; acknowledging it handles all three."""
    device = DeviceClient(mosquitto.port)
    start = make_alert("porch-pi", event="start", severity="critical", score=0.81)
    start["event_id"] = start["id"]
    update = make_alert("porch-pi", event="update", severity="critical", score=0.02,
                        event_id=start["id"])  # fmt: skip
    end = make_alert("porch-pi", event="end", severity="critical", score=0.0, event_id=start["id"])
    device.publish_alert(start)
    device.publish_alert(update)
    device.wait_acks(2)

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{listener}/#token={TOKEN}")
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    row = f'li[data-id="{start["id"]}"]'
    page.wait_for_selector(f'{row}[data-phase="ongoing"]', timeout=5_000)
    put_clip(listener, str(update["id"]), media_files(tmp_path)["audio/wav"], "audio/wav")
    page.wait_for_selector(f"{row} button.play", timeout=10_000)
    device.publish_alert(end)
    device.wait_acks(3)
    page.wait_for_selector(f'{row}[data-phase="ended"][data-messages="3"]', timeout=5_000)
    shown = entries(page)
    assert len(shown) == 1, shown
    assert shown[0]["meta"] == "critical · 0.81 · ended", shown
    assert shown[0]["play"] == 1
    page.click(f"{row} button.play")
    assert played(page, "audio")["error"] is None

    page.fill("#who", "dora")
    page.click(f"{row} button.ack")
    page.wait_for_selector(f'{row}[data-status="acknowledged"]', timeout=5_000)
    for alert in (start, update, end):
        got = get_json(f"{listener}/api/alerts/{alert['id']}")["listener"]
        assert (got["status"], got["acknowledged_by"]) == ("acknowledged", "dora"), alert["event"]
    page.click(f"{row} button.resolve")
    page.wait_for_selector(f'{row}[data-status="resolved"]', timeout=5_000)
    assert {get_json(f"{listener}/api/alerts/{a['id']}")["listener"]["status"]
            for a in (start, update, end)} == {"resolved"}  # fmt: skip
    page.wait_for_selector('#summary[data-new="0"]', timeout=5_000)
    assert len(entries(page)) == 1
    assert errors == []
    device.close()


def test_older_alerts_can_be_shown_and_unacknowledged_ones_are_counted(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto
) -> None:
    """More than a page (200) of alerts: the page counts every unacknowledged event, shows
    older ones on demand without gaps or doubles, and an event whose start is older than the
    first page is shown with its start's score."""
    device = DeviceClient(mosquitto.port)
    start = make_alert("old-pi", event="start", severity="critical", score=0.77)
    start["event_id"] = start["id"]
    device.publish_alert(start)
    device.wait_acks(1)
    filler = [make_alert(f"busy-{i % 4}", severity="info", category="glass") for i in range(250)]
    for alert in filler:
        device.publish_alert(alert)
    device.wait_acks(251, timeout=30)
    end = make_alert("old-pi", event="end", severity="critical", score=0.0, event_id=start["id"])
    device.publish_alert(end)
    device.wait_acks(252)

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{listener}/#token={TOKEN}")
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    row = f'li[data-id="{start["id"]}"]'
    page.wait_for_selector(f'{row}[data-messages="2"]', timeout=5_000)  # its start fetched
    assert page.inner_text(f"{row} .meta") == "critical · 0.77 · ended"
    page.wait_for_selector('#summary[data-new="251"]', timeout=5_000)
    assert page.inner_text("#summary") == "251 unacknowledged (1 critical)"
    assert page.locator("#alerts li").count() == 200
    page.click("#older")
    page.wait_for_function("() => document.querySelectorAll('#alerts li').length === 251",
                           timeout=10_000)  # fmt: skip
    page.wait_for_selector("#older", state="hidden", timeout=5_000)
    shown = [e["id"] for e in entries(page)]
    assert len(shown) == len(set(shown)) == 251
    assert set(shown) == {str(a["id"]) for a in [start, *filler]}
    assert shown[0] == start["id"]  # the newest message was its end
    page.fill("#who", "erin")
    page.click(f"{row} button.ack")
    page.wait_for_selector('#summary[data-new="250"]', timeout=5_000)
    assert page.inner_text("#summary") == "250 unacknowledged (0 critical)"
    assert page.locator("#empty").is_hidden()
    assert errors == []
    device.close()


def test_an_empty_list_says_so_times_are_local_and_there_is_an_icon(
    listener: str, browser: BrowserContext
) -> None:
    with urllib.request.urlopen(listener + "/favicon.svg", timeout=5) as response:
        assert response.status == 200
    context_page = browser.new_page()
    failed: list[str] = []
    context_page.on("requestfailed", lambda r: failed.append(r.url))
    context_page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    context_page.goto(f"{listener}/#token={TOKEN}")
    context_page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    context_page.wait_for_selector("#empty:not([hidden])", timeout=5_000)
    assert "No alerts yet" in context_page.inner_text("#empty")
    assert context_page.inner_text("#summary") == "all acknowledged"
    shown = context_page.evaluate(
        "() => { const t = timeEl('2026-11-21T23:55:40.523Z'); return [t.textContent, t.title]; }"
    )
    local = context_page.evaluate("() => new Date('2026-11-21T23:55:40.523Z').toLocaleString()")
    assert shown == [local, "2026-11-21T23:55:40.523Z"]
    assert [u for u in failed if "tile" not in u and "/{z}" not in u and ".png" not in u] == []


def test_device_messages_update_one_line_without_a_devices_query(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto
) -> None:
    """A status or health message sends the changed device on the live stream: the open page
    changes that line and does not query /api/devices (an aggregate over all alerts)."""
    device = DeviceClient(mosquitto.port)
    device.publish_raw("a-pi", b"online", suffix="status")
    page = browser.new_page()
    queried: list[str] = []
    page.on("request", lambda r: queried.append(r.url) if "/api/devices" in r.url else None)
    page.goto(f"{listener}/#token={TOKEN}")
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    page.wait_for_selector('#devices li[data-device="a-pi"]', timeout=5_000)
    before = len(queried)
    for i in range(20):
        device.publish_raw(f"d-{i:02d}", json.dumps({"uptime_s": i}).encode(), suffix="health")
    device.publish_raw("a-pi", b"offline", suffix="status")
    page.wait_for_function("() => document.querySelectorAll('#devices li').length === 21",
                           timeout=10_000)  # fmt: skip
    page.wait_for_selector('#devices li[data-device="a-pi"].offline', timeout=5_000)
    assert page.get_attribute('#devices li[data-device="d-07"]', "title") == '{"uptime_s":7}'
    names = page.eval_on_selector_all("#devices li", "els => els.map(e => e.dataset.device)")
    assert names == sorted(names)
    assert len(queried) == before, queried[before:]
    device.close()


def test_a_page_left_open_keeps_a_bounded_list_and_older_ones_stay_reachable(
    listener: str, browser: BrowserContext, mosquitto: Mosquitto
) -> None:
    """A tab left open for days added every live alert to its list (and the map) for ever.
    The list keeps the newest 200 entries (a page); the oldest go, with their markers, and
    "Show older" brings them back, then nothing is dropped that was asked for."""
    device = DeviceClient(mosquitto.port)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{listener}/#token={TOKEN}")
    page.wait_for_selector('#live-state[data-state="live"]', timeout=10_000)
    page.wait_for_selector("#empty:not([hidden])", timeout=5_000)
    sent = [
        make_alert(f"pi-{i % 3}", location={"lat": 10.0 + i / 100, "lon": 20.0}) for i in range(230)
    ]
    for start in range(0, len(sent), 40):  # stored in batches smaller than a page
        for alert in sent[start : start + 40]:
            device.publish_alert(alert)
        device.wait_acks(min(start + 40, len(sent)), timeout=30)
    newest = f'#alerts li:first-child[data-id="{sent[-1]["id"]}"]'
    page.wait_for_selector(newest, timeout=10_000)  # every live alert has arrived
    assert page.locator("#alerts li").count() == 200
    assert page.evaluate("() => [state.events.size, state.markers.size]") == [200, 200]
    assert page.locator(".leaflet-interactive").count() == 200
    shown = [e["id"] for e in entries(page)]
    assert shown == [str(a["id"]) for a in reversed(sent[30:])]  # the 30 oldest went
    assert page.locator("#older").is_visible()

    page.click("#older")
    page.wait_for_function("() => document.querySelectorAll('#alerts li').length === 230",
                           timeout=10_000)  # fmt: skip
    shown = [e["id"] for e in entries(page)]
    assert shown == [str(a["id"]) for a in reversed(sent)]  # all of them, once, in order
    page.wait_for_selector("#older", state="hidden", timeout=5_000)

    more = [make_alert("pi-0") for _ in range(5)]
    for alert in more:
        device.publish_alert(alert)
    device.wait_acks(len(sent) + len(more), timeout=30)
    page.wait_for_selector(f'#alerts li:first-child[data-id="{more[-1]["id"]}"]', timeout=10_000)
    shown = [e["id"] for e in entries(page)]
    assert len(shown) == 230  # what "Show older" loaded is kept, the oldest make room
    assert shown == [str(a["id"]) for a in reversed([*sent[5:], *more])]
    page.click("#older")
    page.wait_for_function("() => document.querySelectorAll('#alerts li').length === 235",
                           timeout=10_000)  # fmt: skip
    shown = [e["id"] for e in entries(page)]
    assert shown == [str(a["id"]) for a in reversed([*sent, *more])]
    assert errors == []
    device.close()
