"""Fallback channels: SMS and voice calls through Twilio (the real `twilio` client), e-mail
over SMTP. Each `send` retries transient failures (429, 5xx, network) with jittered backoff.

Secrets: `twilio_auth_token`, `smtp_password` (see `edge.secrets`).
"""

from __future__ import annotations

import logging
import random
import smtplib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.secrets import read_secret, require_secret

log = logging.getLogger(__name__)

E164 = r"^\+[1-9][0-9]{6,14}$"
Phone = Annotated[str, Field(pattern=E164, description="E.164 number, e.g. +14155550100")]
_FORBID = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TwilioConfig(BaseModel):
    model_config = _FORBID
    account_sid: str = Field(
        "", max_length=64, description="Twilio account SID (the auth token is a secret)."
    )
    api_base_url: str | None = Field(
        None,
        max_length=200,
        pattern=r"^https?://",
        description="Send Twilio API requests to this base URL instead (a proxy or test server).",
    )
    timeout: float = Field(10.0, gt=0, le=120, description="HTTP timeout per request, seconds.")
    max_attempts: int = Field(4, ge=1, le=10, description="Attempts per message on 429/5xx.")
    backoff: float = Field(1.0, ge=0.01, le=60, description="First retry delay, seconds.")


def _missing(config: BaseModel, fields: tuple[str, ...]) -> None:
    """An enabled channel without what it needs to send is a config error, not a failure at
    the first alert."""
    if getattr(config, "enabled", False):
        empty = [name.rstrip("_") for name in fields if not getattr(config, name)]
        if empty:
            names = ", ".join(empty[:-1]) + (" and " if len(empty) > 1 else "") + empty[-1]
            raise ValueError(f"enabled, but {names} not set: it could never send")


class SmsConfig(TwilioConfig):
    enabled: bool = Field(False, description="Send SMS when an alert is not acknowledged in time.")
    to: list[Phone] = Field(
        default_factory=list,
        max_length=20,
        description="Contacts, E.164 (e.g. +14155550100); one SMS per alert and contact.",
    )
    from_: str = Field(
        "", alias="from", pattern=r"^$|" + E164, description="Twilio sender number (E.164)."
    )
    rate_per_hour: int = Field(20, ge=1, le=1000, description="At most this many SMS per hour.")
    map_url: str = Field(
        "https://maps.google.com/?q={lat},{lon}",
        max_length=200,
        description="Map link template with {lat} and {lon}.",
    )

    @model_validator(mode="after")
    def _complete(self) -> SmsConfig:
        _missing(self, ("to", "account_sid", "from_"))
        return self


class VoiceConfig(TwilioConfig):
    enabled: bool = Field(False, description="Call trusted contacts for critical alerts.")
    to: list[Phone] = Field(default_factory=list, max_length=5, description="Contacts, E.164.")
    from_: str = Field(
        "", alias="from", pattern=r"^$|" + E164, description="Twilio caller number (E.164)."
    )
    rate_per_hour: int = Field(6, ge=1, le=100, description="At most this many calls per hour.")

    @model_validator(mode="after")
    def _complete(self) -> VoiceConfig:
        _missing(self, ("to", "account_sid", "from_"))
        return self


class EmailConfig(BaseModel):
    model_config = _FORBID
    enabled: bool = Field(False, description="Send e-mail when an alert is not acknowledged.")
    host: str = Field("localhost", min_length=1, max_length=253, description="SMTP server.")
    port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    security: Literal["starttls", "ssl", "none"] = Field("starttls", description="Transport.")
    username: str | None = Field(None, max_length=200, description="SMTP login (smtp_password).")
    from_: str = Field("", alias="from", max_length=200, description="Sender address.")
    to: list[str] = Field(default_factory=list, max_length=20, description="Recipients.")
    timeout: float = Field(15.0, gt=0, le=120, description="SMTP timeout, seconds.")
    rate_per_hour: int = Field(60, ge=1, le=1000, description="At most this many per hour.")

    @model_validator(mode="after")
    def _complete(self) -> EmailConfig:
        _missing(self, ("to", "from_"))
        return self


@dataclass(frozen=True)
class SendResult:
    ok: bool
    detail: str  # message SID, or the reason it failed
    retryable: bool = False
    attempts: int = 1


def format_message(alert: Mapping[str, Any], map_url: str) -> str:
    """The SMS / e-mail text: category, severity, time, device, location and a map link."""
    parts = [
        f"SAFEGUARD {str(alert['severity']).upper()}: {alert['category']}"
        f" ({alert['event']}) at {alert['started_at']} on {alert['device_id']}"
    ]
    location = alert.get("location") or {}
    if location.get("address"):
        parts.append(str(location["address"]))
    if "lat" in location and "lon" in location:
        parts.append(map_url.format(lat=location["lat"], lon=location["lon"]))
    return ". ".join(parts)


def _http_client(base_url: str | None, timeout: float) -> Any:
    """Twilio's HTTP client; with `base_url`, one that sends every request there (scheme and
    host replaced, path kept). twilio is imported here, not at start-up: most runs never send."""
    from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]

    class BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]
        def __init__(self, base: str) -> None:
            super().__init__(timeout=timeout)
            self._base = urlsplit(base)

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            parts = urlsplit(url)
            url = urlunsplit((self._base.scheme, self._base.netloc, parts.path, parts.query, ""))
            return super().request(method, url, *args, **kwargs)

    return BaseUrlHttpClient(base_url) if base_url else TwilioHttpClient(timeout=timeout)


def _retry_wait(config: TwilioConfig, attempt: int) -> float:
    return float(random.uniform(0.5, 1.0) * config.backoff * 2**attempt)


class TwilioSender:
    """SMS and calls with the real `twilio` client; retries 429/5xx with jittered backoff."""

    def __init__(
        self,
        config: TwilioConfig,
        stop: threading.Event,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._stop = stop
        from twilio.rest import Client  # type: ignore[import-untyped]

        http = _http_client(config.api_base_url, config.timeout)
        self._client = Client(
            config.account_sid, require_secret("twilio_auth_token", environ), http_client=http
        )

    def _call(self, what: str, to: str, create: Any, **kwargs: Any) -> SendResult:
        from twilio.base.exceptions import (  # type: ignore[import-untyped]
            TwilioException,
            TwilioRestException,
        )

        attempt = 0
        while True:
            attempt += 1
            try:
                sid = create(to=to, from_=self.config_from, **kwargs).sid
                log.info("%s to %s accepted by Twilio: %s", what, to, sid)
                return SendResult(True, str(sid), attempts=attempt)
            except TwilioRestException as exc:
                retryable = exc.status == 429 or exc.status >= 500
                detail = f"HTTP {exc.status}: {exc.msg}"
            except TwilioException as exc:
                retryable, detail = True, f"Twilio client error: {exc}"
            except OSError as exc:  # requests' errors are OSErrors
                retryable, detail = True, f"network error: {exc}"
            if not retryable or attempt >= self.config.max_attempts:
                log.warning("%s to %s failed after %d attempts: %s", what, to, attempt, detail)
                return SendResult(False, detail, retryable=retryable, attempts=attempt)
            log.info("%s to %s: %s, retrying", what, to, detail)
            if self._stop.wait(_retry_wait(self.config, attempt - 1)):
                return SendResult(False, detail + " (stopping)", retryable=True, attempts=attempt)

    @property
    def config_from(self) -> str:
        return str(getattr(self.config, "from_", ""))

    def sms(self, to: str, body: str) -> SendResult:
        return self._call("SMS", to, self._client.messages.create, body=body)

    def call(self, to: str, text: str) -> SendResult:
        twiml = f'<Response><Say loop="2">{escape(text)}</Say></Response>'
        return self._call("voice call", to, self._client.calls.create, twiml=twiml)


class SmtpSender:
    """One e-mail per recipient over SMTP (STARTTLS, SSL or plain)."""

    def __init__(self, config: EmailConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._password = read_secret("smtp_password", environ) if config.username else None

    def send(self, to: str, subject: str, body: str) -> SendResult:
        c = self.config
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = c.from_, to, subject
        message.set_content(body)
        try:
            smtp: smtplib.SMTP
            if c.security == "ssl":
                smtp = smtplib.SMTP_SSL(
                    c.host, c.port, timeout=c.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
            with smtp:
                if c.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if c.username and self._password:
                    smtp.login(c.username, self._password)
                smtp.send_message(message)
        except smtplib.SMTPResponseException as exc:
            retryable = exc.smtp_code >= 400 and exc.smtp_code < 500
            return SendResult(False, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", retryable)
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult(False, f"SMTP error: {exc}", retryable=True)
        log.info("e-mail to %s sent", to)
        return SendResult(True, "sent")
