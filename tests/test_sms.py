"""Fallback channels against loopback servers: the real `twilio` client, a small SMTP server."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from edge.errors import ConfigError
from edge.secrets import read_secret, require_secret
from edge.sms import (
    EmailConfig,
    SmsConfig,
    SmtpSender,
    TwilioSender,
    VoiceConfig,
    format_message,
)
from tests.twilio_fake import FakeTwilio

ALERT = {
    "id": "0190",
    "device_id": "kitchen-pi",
    "event": "start",
    "category": "scream",
    "severity": "critical",
    "started_at": "2026-11-21T10:00:00.000Z",
    "location": {"lat": 27.49, "lon": 77.67, "address": "1 Main St"},
}


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    fake.start()
    yield fake
    fake.stop()


def sender(fake: FakeTwilio, cls: type[SmsConfig] | type[VoiceConfig] = SmsConfig) -> TwilioSender:
    config = cls.model_validate(
        {
            "enabled": True,
            "account_sid": fake.account_sid,
            "api_base_url": fake.url,
            "from": "+15550000000",
            "to": ["+15550000001"],
            "backoff": 0.05,
        }
    )
    env = {"SAFEGUARD_TWILIO_AUTH_TOKEN": fake.auth_token}
    return TwilioSender(config, threading.Event(), env)


def test_message_text() -> None:
    text = format_message(ALERT, "https://maps.example/?q={lat},{lon}")
    assert "scream" in text
    assert "CRITICAL" in text
    assert "kitchen-pi" in text
    assert "2026-11-21T10:00:00.000Z" in text
    assert "1 Main St" in text
    assert "https://maps.example/?q=27.49,77.67" in text


def test_sms_sent_through_real_client(twilio: FakeTwilio) -> None:
    result = sender(twilio).sms("+15550000001", "hello")
    assert result.ok
    assert result.detail.startswith("SM")
    [message] = twilio.messages
    assert message["to"] == "+15550000001"
    assert message["body"] == "hello"
    assert message["from"] == "+15550000000"


def test_500_then_201_sends_exactly_one(twilio: FakeTwilio) -> None:
    twilio.fail_next(500)
    result = sender(twilio).sms("+15550000001", "hello")
    assert result.ok
    assert result.attempts == 2
    assert len(twilio.messages) == 1
    assert [status for _, _, status in twilio.requests] == [500, 201]


def test_429_retried_with_backoff_then_gives_up(twilio: FakeTwilio) -> None:
    twilio.fail_next(429, 4)
    result = sender(twilio).sms("+15550000001", "hello")
    assert not result.ok
    assert result.retryable
    assert result.attempts == 4
    times = [t for t, _, _ in twilio.requests]
    assert times[3] - times[2] > times[1] - times[0]  # the waits grow
    assert twilio.messages == []


def test_permanent_error_not_retried(twilio: FakeTwilio) -> None:
    result = sender(twilio).sms("12345", "hello")
    assert not result.ok
    assert not result.retryable
    assert "400" in result.detail
    assert len(twilio.requests) == 1


def test_wrong_token_is_an_error(twilio: FakeTwilio) -> None:
    config = SmsConfig.model_validate(
        {"account_sid": twilio.account_sid, "api_base_url": twilio.url, "from": "+15550000000"}
    )
    bad = TwilioSender(config, threading.Event(), {"SAFEGUARD_TWILIO_AUTH_TOKEN": "wrong"})
    result = bad.sms("+15550000001", "x")
    assert not result.ok
    assert "401" in result.detail


def test_voice_call(twilio: FakeTwilio) -> None:
    result = sender(twilio, VoiceConfig).call("+15550000001", "Scream <kitchen>")
    assert result.ok
    assert result.detail.startswith("CA")
    assert "Scream &lt;kitchen&gt;" in twilio.calls[0]["twiml"]


class _Smtp(socketserver.StreamRequestHandler):
    received: ClassVar[list[tuple[str, str]]] = []

    def handle(self) -> None:
        def say(line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        say("220 test ESMTP")
        rcpt = ""
        while line := self.rfile.readline().decode().strip():
            verb = line.split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                say("250 test")
            elif verb in ("MAIL", "RSET", "NOOP"):
                say("250 ok")
            elif verb == "RCPT":
                rcpt = line.split(":", 1)[1].strip("<> ")
                say("250 ok")
            elif verb == "DATA":
                say("354 go")
                data = []
                while (chunk := self.rfile.readline().decode()) not in (".\r\n", ""):
                    data.append(chunk)
                self.received.append((rcpt, "".join(data)))
                say("250 queued")
            elif verb == "QUIT":
                say("221 bye")
                return
            else:
                say("502 no")


def test_email_over_smtp() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = EmailConfig.model_validate(
            {
                "enabled": True,
                "host": "127.0.0.1",
                "port": server.server_address[1],
                "security": "none",
                "from": "dev@example.org",
                "to": ["a@example.org"],
            }
        )
        result = SmtpSender(config, {}).send("a@example.org", "Safeguard", "scream at home")
        assert result.ok, result.detail
        [(rcpt, data)] = _Smtp.received
        assert rcpt == "a@example.org"
        assert "scream at home" in data
    finally:
        server.shutdown()
        server.server_close()


def test_secrets_from_env_and_credentials(tmp_path: Path) -> None:
    (tmp_path / "smtp_password").write_text("s3cret\n")
    assert read_secret("smtp_password", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"
    assert read_secret("smtp_password", {"SAFEGUARD_SMTP_PASSWORD": "env"}) == "env"
    assert read_secret("mqtt_password", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None
    with pytest.raises(ConfigError, match="SAFEGUARD_MQTT_PASSWORD"):
        require_secret("mqtt_password", {})


def test_config_rejects_unknown_and_bad_numbers() -> None:
    with pytest.raises(ValueError, match="extra"):
        SmsConfig.model_validate({"token": "x"})
    assert SmsConfig.model_validate({"from_": "+15550000000"}).from_ == "+15550000000"
    with pytest.raises(ValueError, match=r"to\.0"):
        SmsConfig.model_validate({"to": ["0155 5000"]})
