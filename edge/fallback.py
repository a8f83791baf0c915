"""The fallback channels for one unacknowledged alert: SMS, e-mail, voice call.

One message per alert, channel and contact. Every outcome is recorded with the alert in
the outbox (`fallback` table), so a restart neither loses nor repeats a sent message
(except one whose send was cut off by the crash itself: it is sent again, at least once).
States: `sent` and `failed` (permanent error) are final; `retry` (transient failure, tried
again after `retry_after` s), `deferred` (hourly rate limit reached) and `sending` (cut
off by a crash) are tried again while the alert stays unacknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.errors import ConfigError
from edge.outbox import SEVERITY_RANK, Outbox
from edge.sms import (
    EmailConfig,
    SendResult,
    SmsConfig,
    SmtpSender,
    TwilioSender,
    VoiceConfig,
    format_message,
)

log = logging.getLogger(__name__)

FINAL = ("sent", "failed")


@dataclass(frozen=True)
class Channel:
    name: str  # "sms", "email", "voice"
    contacts: tuple[str, ...]
    rate_per_hour: int
    min_severity: str
    send: Callable[[str, Mapping[str, Any]], SendResult]


def make_channels(
    *,
    sms: SmsConfig,
    email: EmailConfig,
    voice: VoiceConfig,
    min_severity: str,
    stop: threading.Event,
    environ: Mapping[str, str] | None = None,
    strict: bool = False,
    unavailable: list[str] | None = None,
) -> list[Channel]:
    """The configured channels. Secrets are read here: a channel whose secret is missing is
    left out with an error logged and its reason appended to `unavailable` (the daemon goes on
    delivering over MQTT and the other channels), or, if `strict`, raises ConfigError."""
    channels: list[Channel] = []

    def make(name: str, build: Callable[[], Channel]) -> None:
        try:
            channels.append(build())
        except ConfigError as exc:
            if strict:
                raise
            log.error("%s fallback is off: %s", name, exc)
            if unavailable is not None:
                unavailable.append(f"{name}: {exc}")

    if sms.enabled and sms.to:
        make("sms", lambda: _sms(sms, min_severity, stop, environ))
    if email.enabled and email.to:
        make("email", lambda: _email(email, sms.map_url, min_severity, environ))
    if voice.enabled and voice.to:
        make("voice", lambda: _voice(voice, stop, environ))
    return channels


def _sms(
    sms: SmsConfig, min_severity: str, stop: threading.Event, environ: Mapping[str, str] | None
) -> Channel:
    twilio = TwilioSender(sms, stop, environ)
    return Channel(
        "sms",
        tuple(sms.to),
        sms.rate_per_hour,
        min_severity,
        lambda to, alert: twilio.sms(to, format_message(alert, sms.map_url)),
    )


def _email(
    email: EmailConfig, map_url: str, min_severity: str, environ: Mapping[str, str] | None
) -> Channel:
    smtp = SmtpSender(email, environ)
    return Channel(
        "email",
        tuple(email.to),
        email.rate_per_hour,
        min_severity,
        lambda to, alert: smtp.send(
            to,
            f"Safeguard {alert['severity']}: {alert['category']} on {alert['device_id']}",
            format_message(alert, map_url),
        ),
    )


def _voice(voice: VoiceConfig, stop: threading.Event, environ: Mapping[str, str] | None) -> Channel:
    twilio = TwilioSender(voice, stop, environ)
    return Channel(
        "voice",
        tuple(voice.to),
        voice.rate_per_hour,
        "critical",
        lambda to, alert: twilio.call(to, format_message(alert, "")),
    )


class Fallback:
    """Sends the fallback messages of alerts, recording each result in the outbox."""

    def __init__(
        self, outbox: Outbox, channels: list[Channel], stop: threading.Event, retry_after: float
    ) -> None:
        self._outbox = outbox
        self._channels = channels
        self._stop = stop
        self._retry_after = retry_after
        self.counts: dict[str, int] = {}

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def handle(self, alert: Mapping[str, Any]) -> None:
        """Send what is still due for `alert`; mark its fallback done when all is final."""
        alert_id = str(alert["id"])
        done = True
        for channel in self._channels:
            if SEVERITY_RANK[str(alert["severity"])] < SEVERITY_RANK[channel.min_severity]:
                continue
            for contact in channel.contacts:
                if self._stop.is_set() or self._outbox.is_acked(alert_id):
                    return
                if not self._one(alert, channel, contact):
                    done = False
        if done:
            self._outbox.mark_fallback_done(alert_id)

    def _one(self, alert: Mapping[str, Any], channel: Channel, contact: str) -> bool:
        """Try one channel/contact; True when its state is final."""
        alert_id = str(alert["id"])
        now = time.time()
        state = self._outbox.fallback_state(alert_id, channel.name, contact)
        if state is not None:
            if state[0] in FINAL:
                return True
            if state[0] == "retry" and now - state[1] < self._retry_after:
                return False
        if self._outbox.sent_since(channel.name, now - 3600) >= channel.rate_per_hour:
            if state is None or state[0] != "deferred":
                log.warning(
                    "%s to %s for alert %s deferred: hourly limit of %d reached",
                    channel.name,
                    contact,
                    alert_id,
                    channel.rate_per_hour,
                )
                self._count(f"{channel.name}_deferred")
                self._outbox.record_fallback(
                    alert_id,
                    channel.name,
                    contact,
                    state="deferred",
                    detail=f"hourly limit of {channel.rate_per_hour} reached",
                    attempts=0,
                )
            return False
        self._outbox.record_fallback(
            alert_id, channel.name, contact, state="sending", detail="", attempts=0
        )
        result = channel.send(contact, alert)
        new_state = "sent" if result.ok else ("retry" if result.retryable else "failed")
        self._count(f"{channel.name}_{new_state}")
        self._outbox.record_fallback(
            alert_id,
            channel.name,
            contact,
            state=new_state,
            detail=result.detail,
            attempts=result.attempts,
        )
        return new_state in FINAL
