"""The MQTT link of the daemon: paho-mqtt 2.x, one network thread, never blocking callers.

MQTT 5 with a session expiry (the broker keeps our subscription to acks while we are away),
MQTT 3.1.1 as fallback (`protocol: auto` switches when the broker refuses version 5),
QoS 1, TLS, username and password (the password from the secret `mqtt_password`),
last will `offline` retained on the status topic, `online` on every connect and `stopped`
on a clean shutdown, reconnect with jittered exponential backoff.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge.homeassistant import HomeAssistantConfig
from edge.retry import Streak
from edge.secrets import read_secret

log = logging.getLogger(__name__)


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Connect over TLS.")
    ca: Path | None = Field(None, description="CA bundle (PEM); the system CAs when empty.")
    cert: Path | None = Field(None, description="Client certificate (PEM), optional.")
    key: Path | None = Field(None, description="Client certificate's private key (PEM).")


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, max_length=253, description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    prefix: str = Field(
        "safeguard",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Topic prefix: topics are <prefix>/<device>/alert, /ack, /status, ...",
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="MQTT client id; safeguard-<device> if empty.",
    )
    username: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Broker user name; the password comes from the secret mqtt_password.",
    )
    tls: TlsConfig = Field(
        default_factory=lambda: TlsConfig.model_validate({}), description="TLS settings."
    )
    keepalive: int = Field(30, ge=5, le=3600, description="Keepalive interval, seconds.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version: 5, 3.1.1, or auto (5, then 3.1.1 if refused)."
    )
    session_expiry: int = Field(
        86400,
        ge=0,
        le=4294967295,
        description="MQTT 5 session expiry, seconds: how long the broker queues our acks.",
    )
    reconnect_max: int = Field(
        60, ge=1, le=3600, description="Longest wait between reconnect attempts, seconds."
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=lambda: HomeAssistantConfig.model_validate({}),
        description="Home Assistant MQTT discovery.",
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: object) -> object:
        return str(value) if isinstance(value, (int, float)) else value


def _refused_v5(reason: ReasonCode) -> bool:
    return reason.value in (1, 132)  # 3.1.1 "unacceptable protocol", v5 "unsupported version"


class _NotConnectedIsDebug(logging.Filter):
    """paho 2.x logs an ERROR on each pass of its network loop without a socket: between
    reconnect attempts and after a clean disconnect. The link says what state it is in itself,
    so those records become DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith(
            "Client is not connected"
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


SHORT_S = 5.0  # a connection the broker closes sooner than this counts as short
FLAPPING = 3  # short connections in a row that make the daemon say why


def _release(client: paho.Client) -> None:
    """End a client's network thread and close its sockets, its wake-up socket pair included
    (paho closes that pair only in its finaliser, so it would wait for the garbage collector)."""
    client.loop_stop()
    client.reinitialise()


_PAHO_LOG = logging.getLogger(__name__ + ".paho")
_PAHO_LOG.addFilter(_NotConnectedIsDebug())


class MqttLink:
    """One broker connection. `publish` is thread-safe and returns at once."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        *,
        on_message: Callable[[str, bytes], None],
        on_connected: Callable[[], None],
        subscriptions: list[str],
        environ: Mapping[str, str] | None = None,
        status: bool = True,
    ) -> None:
        """`status=False`: a side connection (test-alert) without will and status messages."""
        self.config = config
        self.base = f"{config.prefix}/{device_id}"
        self.status_topic = f"{self.base}/status"
        self._client_id = config.client_id or f"safeguard-{device_id}"
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected
        self._subscriptions = subscriptions
        self._password = read_secret("mqtt_password", environ) if config.username else None
        self._status = status
        self._v5 = config.protocol != "3.1.1"
        self._fallback_needed = False
        self._connected = threading.Event()
        self._down_since: float | None = time.monotonic()
        self._stopping = False  # a disconnect we asked for is not worth a warning
        self._connected_at = 0.0
        self._short = 0  # connections in a row the broker closed within SHORT_S of opening
        self._attempt = 0
        self._unreachable = Streak(
            log, "MQTT: cannot reach %s:%d; retrying with backoff up to %d s"
        )
        self._lock = threading.Lock()
        self._client = self._make_client()
        self.refused: list[tuple[int, str]] = []  # (mid, reason) of publishes the broker refused
        self.refused_connect = ""  # why the broker refused the last connection, if it did

    def _make_client(self) -> paho.Client:
        c = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        client.enable_logger(_PAHO_LOG)
        if c.username:
            client.username_pw_set(c.username, self._password)
        if c.tls.enabled:
            client.tls_set(
                ca_certs=str(c.tls.ca) if c.tls.ca else None,
                certfile=str(c.tls.cert) if c.tls.cert else None,
                keyfile=str(c.tls.key) if c.tls.key else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if self._status:
            client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(1, c.reconnect_max)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        c = self.config
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = c.session_expiry
        self._client.connect_async(
            c.host,
            c.port,
            c.keepalive,
            clean_start=False if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._stopping = False
        self._client.loop_start()
        log.info("MQTT: connecting to %s:%d as %s", c.host, c.port, self._client_id)

    def maintain(self) -> None:
        """Called now and then by the owner's thread: switches to MQTT 3.1.1 when needed."""
        if self._fallback_needed:
            self._fallback_needed = False
            log.warning("MQTT: the broker refused MQTT 5, falling back to 3.1.1")
            _release(self._client)
            self._v5 = False
            self._client = self._make_client()
            self.start()

    def stop(self, timeout: float) -> None:
        """Publish `stopped` (retained), disconnect cleanly (no last will), end the thread."""
        deadline = time.monotonic() + timeout
        if self.connected and self._status:
            info = self._client.publish(self.status_topic, "stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: could not publish the stopped status: %s", exc)
        self._stopping = True
        self._client.disconnect()
        _release(self._client)
        self._client = self._make_client()  # ready should the link be started again
        self._connected.clear()

    # -- state ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def down_for(self) -> float:
        """Seconds since the link was last connected (0 while connected)."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    def publish(
        self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False
    ) -> paho.MQTTMessageInfo | None:
        """Queue one message; None (nothing queued) while disconnected."""
        if not self.connected:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return info

    # -- paho callbacks (network thread) ------------------------------------------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("MQTT: connection refused: %s", reason)
            self.refused_connect = str(reason)
            if self.config.protocol == "auto" and self._v5 and _refused_v5(reason):
                self._fallback_needed = True
            return
        self._attempt = 0
        self._unreachable.reset()
        client.reconnect_delay_set(1, self.config.reconnect_max)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        if self._status:
            client.publish(self.status_topic, "online", qos=1, retain=True)
        self._down_since = None
        self._connected_at = time.monotonic()
        self._connected.set()
        level = logging.DEBUG if self._short >= FLAPPING else logging.INFO
        log.log(level, "MQTT: connected (session present: %s)", flags.session_present)
        self._on_connected_cb()

    def _backoff(self, client: paho.Client) -> None:
        self._attempt += 1
        cap = min(float(self.config.reconnect_max), 1.5 ** min(self._attempt, 20))
        client.reconnect_delay_set(max(1, round(random.uniform(0, cap))), self.config.reconnect_max)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connected.is_set():
            self._down_since = time.monotonic()
            short = not self._stopping and self._down_since - self._connected_at < SHORT_S
            self._short = self._short + 1 if short else 0
            if self._short == FLAPPING:  # the usual cause: a second client with our id
                log.error(
                    "MQTT: the broker closed %d connections in a row within %.0f s of opening "
                    "them: is another client connected as %r? Each device needs its own "
                    "device.id (or mqtt.client_id)",
                    FLAPPING, SHORT_S, self._client_id,
                )  # fmt: skip
            level = logging.INFO if self._stopping else logging.WARNING
            log.log(
                logging.DEBUG if self._short >= FLAPPING else level,
                "MQTT: disconnected: %s",
                reason,
            )
        self._connected.clear()
        self._backoff(client)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._unreachable.say(self.config.host, self.config.port, self.config.reconnect_max)
        self._backoff(client)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._on_message_cb(message.topic, bytes(message.payload))
        except Exception:  # a bad message must not kill the network thread
            log.exception("MQTT: error handling a message on %s", message.topic)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("MQTT: the broker refused message %d: %s", mid, reason)
            with self._lock:
                self.refused.append((mid, str(reason)))
                del self.refused[:-100]
