"""The delivery service: outbox -> MQTT (QoS 1) -> the listener's ack; SMS/e-mail/voice when
no ack arrives in time.

Threads: paho's network thread (acks are applied there), a sender thread (publishes due
alerts, retained state and health) and a fallback thread (slow HTTP/SMTP calls). None of
them is ever waited on by the capture or inference loop: `submit` to the outbox is the only
call the detectors make.

An alert counts as delivered when `<prefix>/<device>/ack` carries its id, not on PUBACK.
Unacked alerts are published again on every reconnect and, while connected, after
`resend_after` s (doubling per attempt up to `resend_max`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge import homeassistant, schema
from edge.errors import SafeguardError
from edge.fallback import Fallback, make_channels
from edge.mqtt import MqttConfig, MqttLink
from edge.outbox import Outbox
from edge.sms import EmailConfig, SmsConfig, VoiceConfig

log = logging.getLogger(__name__)
_FORBID = ConfigDict(extra="forbid", frozen=True)


class OutboxConfig(BaseModel):
    model_config = _FORBID
    max_rows: int = Field(
        10_000,
        ge=100,
        le=10_000_000,
        description="Rows kept; when full: acked rows, then updates, ends, non-critical starts"
        " go first (oldest first). Critical starts are never dropped.",
    )
    keep_acked_hours: float = Field(
        168, ge=0, le=24 * 365, description="How long acknowledged alerts are kept."
    )


class AlertsConfig(BaseModel):
    model_config = _FORBID
    ack_timeout: float = Field(
        20.0, ge=1, le=3600, description="No listener ack this long: use the fallback channels."
    )
    resend_after: float = Field(
        10.0, ge=0.5, le=3600, description="Publish an unacked alert again after this, seconds."
    )
    resend_max: float = Field(
        300.0, ge=1, le=86400, description="Longest interval between publications of one alert."
    )
    min_severity: Literal["info", "warning", "critical"] = Field(
        "warning", description="Lowest severity that goes to the fallback channels."
    )
    fallback_phases: list[Literal["start", "update", "end"]] = Field(
        ["start"],
        min_length=1,
        max_length=3,
        description="Alert phases that go to the fallback channels (one message per alert).",
    )
    fallback_retry_after: float = Field(
        60.0, ge=1, le=3600, description="Wait before trying a failed fallback send again."
    )
    sms: SmsConfig = Field(default_factory=lambda: SmsConfig.model_validate({}), description="SMS.")
    email: EmailConfig = Field(
        default_factory=lambda: EmailConfig.model_validate({}), description="E-mail over SMTP."
    )
    voice: VoiceConfig = Field(
        default_factory=lambda: VoiceConfig.model_validate({}),
        description="Twilio voice call for critical alerts.",
    )
    outbox: OutboxConfig = Field(
        default_factory=lambda: OutboxConfig.model_validate({}), description="Outbox bounds."
    )

    @model_validator(mode="after")
    def _resend_bounds(self) -> AlertsConfig:
        if self.resend_max < self.resend_after:
            raise ValueError(
                f"resend_max ({self.resend_max:g}) must not be below resend_after "
                f"({self.resend_after:g})"
            )
        return self


class DeliveryService:
    """Runs delivery in its own threads; `start()`, `stop(timeout)`, never blocks callers."""

    def __init__(
        self,
        config: MqttConfig,
        alerts: AlertsConfig,
        outbox: Outbox,
        device_id: str,
        *,
        on_ack: Callable[[str], None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config, self.alerts, self.outbox = config, alerts, outbox
        outbox.max_rows = alerts.outbox.max_rows
        self.base = f"{config.prefix}/{device_id}"
        self._device_id = device_id
        self._on_ack = on_ack
        self._stop = threading.Event()
        self._ha = config.homeassistant
        self._ha_topic = homeassistant.birth_topic(self._ha)
        subscriptions = [f"{self.base}/ack"] + ([self._ha_topic] if self._ha.enabled else [])
        self.link = MqttLink(
            config,
            device_id,
            on_message=self._on_message,
            on_connected=self._on_connected,
            subscriptions=subscriptions,
            environ=environ,
        )
        self._fallback_off: list[str] = []  # enabled channels that cannot send, and why
        channels = make_channels(
            sms=alerts.sms,
            email=alerts.email,
            voice=alerts.voice,
            min_severity=alerts.min_severity,
            stop=self._stop,
            environ=environ,
            unavailable=self._fallback_off,
        )
        self._fallback = Fallback(outbox, channels, self._stop, alerts.fallback_retry_after)
        self._lock = threading.Lock()
        self._retained: dict[str, tuple[str, int]] = {}  # topic -> (payload, qos)
        self._dirty: set[str] = set()
        self._categories = list(self._ha.categories)
        self._announce = threading.Event()
        self._reconnected = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts = {"sent": 0, "acked": 0, "ack_unknown": 0}

    # -- public API -------------------------------------------------------------------
    def start(self) -> None:
        self.link.start()
        for name, target in (("sender", self._send_loop), ("fallback", self._fallback_loop)):
            thread = threading.Thread(target=target, name=f"delivery-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> None:
        """Stop the threads and publish `stopped`; returns within about `timeout` s."""
        deadline = time.monotonic() + timeout
        if self.link.connected:
            self._flush_retained()  # the last health and states, before `stopped`
        self._stop.set()
        self.outbox.changed.set()
        for thread in self._threads:
            thread.join(max(0.0, (deadline - time.monotonic()) / 2))  # half for the link
            if thread.is_alive():
                log.warning("delivery thread %s did not stop in time", thread.name)
        self.link.stop(max(0.5, deadline - time.monotonic()))

    def publish_health(self, payload: dict[str, Any]) -> None:
        """Retained health heartbeat (QoS 0); the latest is kept while disconnected."""
        self._keep(f"{self.base}/health", json.dumps(payload, separators=(",", ":")), 0)

    def publish_state(self, category: str, on: bool) -> None:
        """Retained `ON`/`OFF` for a category (QoS 1)."""
        with self._lock:
            if category not in self._categories:
                self._categories.append(category)
                self._announce.set()
        self._keep(f"{self.base}/state/{category}", "ON" if on else "OFF", 1)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.outbox.stats())
        with self._lock:
            out.update(self._counts)
        out.update(self._fallback.counts)
        if self._fallback_off:
            out["fallback_off"] = list(self._fallback_off)
        out["connected"] = self.link.connected
        out["down_for_s"] = round(self.link.down_for(), 1)
        return out

    # -- internals --------------------------------------------------------------------
    def _keep(self, topic: str, payload: str, qos: int) -> None:
        with self._lock:
            self._retained[topic] = (payload, qos)
            self._dirty.add(topic)
        self.outbox.changed.set()

    def _on_connected(self) -> None:  # network thread: only flags
        self._reconnected.set()
        self._announce.set()
        self.outbox.changed.set()

    def _on_message(self, topic: str, payload: bytes) -> None:  # network thread
        if topic == self._ha_topic:
            if payload.strip() == b"online":
                self._announce.set()
                self.outbox.changed.set()
            return
        try:
            ack = json.loads(payload)
            alert_id = str(ack["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed ack on %s: %.80r", topic, payload)
            return
        fresh = self.outbox.ack(alert_id)
        with self._lock:
            self._counts["acked" if fresh else "ack_unknown"] += 1
        if fresh:
            log.debug("alert %s acknowledged (%s)", alert_id, ack.get("status"))
            if self._on_ack is not None:
                self._on_ack(alert_id)

    def _send_loop(self) -> None:
        next_purge = 0.0
        while not self._stop.is_set():
            self.outbox.changed.wait(0.5)
            self.outbox.changed.clear()
            try:
                self.outbox.store_unstored()
                self.link.maintain()
                if not self.link.connected:
                    continue
                if self._reconnected.is_set():
                    self._reconnected.clear()
                    self.outbox.forget_sent()
                    with self._lock:
                        self._dirty = set(self._retained)
                if self._announce.is_set():
                    self._announce.clear()
                    self._publish_discovery()
                self._flush_retained()
                self._publish_due()
                if time.monotonic() > next_purge:
                    next_purge = time.monotonic() + 600
                    keep = self.alerts.outbox.keep_acked_hours * 3600
                    self.outbox.purge_acked(time.time() - keep)
            except SafeguardError as exc:
                log.error("delivery: %s", exc)
                self._stop.wait(1.0)
            except Exception:  # the sender must outlive any bug: alerts wait on it
                log.exception("delivery: unexpected error; retrying")
                self._stop.wait(1.0)

    def _publish_due(self) -> None:
        a = self.alerts
        now = time.time()
        due = self.outbox.due(now, a.resend_after, a.resend_max, limit=200)
        for alert_id, payload in due:
            if self.link.publish(f"{self.base}/alert", payload, qos=1) is None:
                return
            self.outbox.mark_sent(alert_id, now)
            with self._lock:
                self._counts["sent"] += 1
        if len(due) == 200:
            self.outbox.changed.set()

    def _flush_retained(self) -> None:
        with self._lock:
            dirty = [(t, *self._retained[t]) for t in self._dirty]
            self._dirty.clear()
        for topic, payload, qos in dirty:
            try:
                sent = self.link.publish(topic, payload, qos=qos, retain=True)
            except ValueError as exc:  # a topic the client refuses: never publishable
                log.error("cannot publish on %r: %s", topic, exc)
                continue
            if sent is None:
                with self._lock:
                    self._dirty.add(topic)

    def retire(self, categories: list[str]) -> None:
        """Categories this device no longer detects (disabled, or no microphone): their retained
        state (a crash may have left it ON) and their Home Assistant sensors are removed."""
        for category in [c for c in categories if c not in self._ha.categories]:
            self._keep(f"{self.base}/state/{category}", "", 1)
            self._keep(homeassistant.discovery_topic(self._ha, self._device_id, category), "", 1)

    def _publish_discovery(self) -> None:
        with self._lock:
            categories = list(self._categories)
        messages = homeassistant.discovery_messages(
            self._ha, self.config.prefix, self._device_id, categories
        )
        for topic, payload in messages:  # with discovery off: remove what an earlier run made
            self.link.publish(topic, payload if self._ha.enabled else "", qos=1, retain=True)

    def _fallback_loop(self) -> None:
        a = self.alerts
        phases = tuple(a.fallback_phases)
        while not self._stop.wait(0.25):
            try:
                now = time.time()
                cutoff = now - a.ack_timeout
                if self.link.down_for() >= a.ack_timeout:
                    cutoff = now  # the broker has been unreachable that long: do not wait more
                for alert in self.outbox.fallback_candidates(cutoff, a.min_severity, phases):
                    if self._stop.is_set():
                        return
                    self._fallback.handle(alert)
            except SafeguardError as exc:
                log.error("fallback: %s", exc)
                self._stop.wait(1.0)
            except Exception:  # as the sender: never let the thread die
                log.exception("fallback: unexpected error; retrying")
                self._stop.wait(1.0)


def test_alert(device_id: str, location: Mapping[str, Any] | None) -> dict[str, Any]:
    """A valid alert of category `test`, severity `critical`, marked `"test": true`."""
    now = time.time()
    alert: dict[str, Any] = {
        "schema": schema.SCHEMA_ID,
        "id": schema.new_id(),
        "device_id": device_id,
        "event": "start",
        "category": "test",
        "severity": "critical",
        "score": 1.0,
        "started_at": schema.rfc3339(now),
        "sent_at": schema.rfc3339(now),
        "test": True,
    }
    if location:
        alert["location"] = dict(location)
    return schema.validate(alert)


def _test_mqtt(
    mqtt: MqttConfig, alerts: AlertsConfig, alert: dict[str, Any], environ: Mapping[str, str] | None
) -> tuple[str, bool, str]:
    acked = threading.Event()
    base = f"{mqtt.prefix}/{alert['device_id']}"

    def on_message(topic: str, payload: bytes) -> None:
        try:
            if json.loads(payload).get("id") == alert["id"]:
                acked.set()
        except (ValueError, AttributeError):
            pass

    side = mqtt.model_copy(
        update={"client_id": f"safeguard-test-{alert['id'][-8:]}", "session_expiry": 0}
    )
    link = MqttLink(
        side,
        str(alert["device_id"]),
        on_message=on_message,
        on_connected=lambda: None,
        subscriptions=[f"{base}/ack"],
        environ=environ,
        status=False,
    )
    link.start()
    try:
        if not link.wait_connected(10.0):
            return ("mqtt", False, f"cannot connect to {mqtt.host}:{mqtt.port} within 10 s")
        time.sleep(0.2)  # let the ack subscription settle
        start = time.monotonic()
        info = link.publish(f"{base}/alert", json.dumps(alert), qos=1)
        if info is None:
            return ("mqtt", False, "the connection dropped before the alert was published")
        if not acked.wait(alerts.ack_timeout):
            return ("mqtt", False, f"published, but no ack within {alerts.ack_timeout:g} s")
        millis = (time.monotonic() - start) * 1000
        return ("mqtt", True, f"acknowledged by the listener in {millis:.0f} ms")
    finally:
        link.stop(2.0)


def run_test_alert(
    mqtt: MqttConfig,
    alerts: AlertsConfig,
    device_id: str,
    location: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> list[tuple[str, bool, str]]:
    """`safeguard test-alert`: a test alert through every configured channel.

    Returns (channel, ok, detail) per channel and contact, MQTT first (delivered means
    acknowledged by the listener). Channels that are not enabled are left out.
    """
    alert = test_alert(device_id, location)
    results = [_test_mqtt(mqtt, alerts, alert, environ)]
    stop = threading.Event()
    try:
        channels = make_channels(
            sms=alerts.sms,
            email=alerts.email,
            voice=alerts.voice,
            min_severity="info",
            stop=stop,
            environ=environ,
            strict=True,
        )
    except SafeguardError as exc:
        return [*results, ("fallback", False, str(exc))]
    for channel in channels:
        for contact in channel.contacts:
            result = channel.send(contact, alert)
            results.append((f"{channel.name}:{contact}", result.ok, result.detail))
    return results
