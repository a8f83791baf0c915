"""The listener's configuration: one pydantic tree, unknown keys rejected, every field bounded.

Secrets are never in the YAML: the API token comes from `SAFEGUARD_API_TOKEN` or
`$CREDENTIALS_DIRECTORY/api_token`, the broker password from `SAFEGUARD_MQTT_PASSWORD` or
`$CREDENTIALS_DIRECTORY/mqtt_password`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from edge.yamlload import StrictLoader, key_path, yaml_problem


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Section):
    host: str = Field(
        default="127.0.0.1", min_length=1, max_length=253, description="Broker host name"
    )
    port: StrictInt = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS)")
    prefix: str = Field(
        default="safeguard",
        pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
        max_length=128,
        description="Topic prefix: alerts arrive on <prefix>/<device>/alert",
    )
    group: str = Field(
        default="safeguard-listener",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Shared-subscription group; instances in one group share the alert load",
    )
    client_id: str = Field(
        default="",
        max_length=64,
        description="MQTT client id; empty: safeguard-listener-<host>-<pid>",
    )
    username: str = Field(
        default="", max_length=128, description="Broker user name (empty: anonymous)"
    )
    tls: bool = Field(default=False, description="Connect with TLS")
    ca_file: str = Field(
        default="", max_length=4096, description="CA bundle for TLS (empty: system CAs)"
    )
    keepalive: StrictInt = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds")
    max_message_bytes: StrictInt = Field(
        default=65536,
        ge=1024,
        le=16_777_216,
        description="Larger alert/health messages are rejected",
    )
    receive_maximum: StrictInt = Field(
        default=1000,
        ge=1,
        le=65535,
        description="Unacknowledged QoS 1 messages the broker may send us",
    )


class DatabaseConfig(_Section):
    url: str = Field(
        default="sqlite:////var/lib/safeguard-listener/alerts.db",
        min_length=10,
        max_length=4096,
        description="sqlite:///path.db or postgresql://user@host/db",
    )
    batch_size: StrictInt = Field(
        default=500, ge=1, le=10_000, description="Alerts stored per transaction"
    )
    batch_wait_ms: StrictInt = Field(
        default=20, ge=0, le=5000, description="How long a batch waits to fill before it is stored"
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+[a-z0-9]+)?://", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class HttpConfig(_Section):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253, description="Bind address")
    port: StrictInt = Field(
        default=8080, ge=1, le=65535, description="HTTP port of the API and dashboard"
    )
    tile_url: str = Field(
        default="",
        max_length=2048,
        description="Leaflet tile URL template ({z}/{x}/{y}); empty: a map without tiles",
    )
    tile_attribution: str = Field(
        default="", max_length=512, description="Attribution shown on the map"
    )
    max_clip_bytes: StrictInt = Field(
        default=50_000_000, ge=1024, le=1_000_000_000, description="Largest clip upload accepted"
    )


class ListenerConfig(_Section):
    mqtt: MqttConfig = Field(default=MqttConfig(), description="The broker")
    database: DatabaseConfig = Field(default=DatabaseConfig(), description="The store")
    http: HttpConfig = Field(default=HttpConfig(), description="API and dashboard")


def parse(data: Any, source: str = "config") -> ListenerConfig:
    """A validated config from parsed YAML; ConfigError naming the key path otherwise."""
    if data is None:
        data = {}
    try:
        return ListenerConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(
            f"{source}: {key_path(first['loc'], '(config)')}: {first['msg']}"
        ) from None


def load(path: Path | None) -> ListenerConfig:
    """The config in `path` (defaults when None)."""
    if path is None:
        return parse({})
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc, text)}") from None
    return parse(data, str(path))


def read_secret(env_name: str, credential: str) -> str:
    """A secret from the environment, else from systemd's credentials folder; '' if neither."""
    value = os.environ.get(env_name, "")
    if value:
        return value.strip()
    folder = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if folder:
        candidate = Path(folder) / credential
        if candidate.is_file():
            try:
                return candidate.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(f"{candidate}: not UTF-8 text") from None
            except OSError as exc:
                raise ConfigError(f"{candidate}: cannot read: {exc.strerror}") from None
    return ""


def check_files(cfg: ListenerConfig) -> None:
    """ConfigError unless the files the config names can be read (before anything starts)."""
    ca_file = cfg.mqtt.ca_file
    if cfg.mqtt.tls and ca_file:
        try:
            with open(ca_file, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ConfigError(f"mqtt.ca_file {ca_file}: {exc.strerror}") from None
