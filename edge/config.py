"""The daemon's configuration: one pydantic tree, unknown keys rejected, every field bounded
and described. Errors name the key path and the YAML line."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.categories import DEFAULT_CATEGORIES, CategoryConfig
from edge.delivery import AlertsConfig
from edge.errors import ConfigError
from edge.health import SystemConfig
from edge.mqtt import MqttConfig
from edge.upload import ListenerConfig
from edge.videoconfig import VideoConfig
from edge.yamlload import StrictLoader, key_path, yaml_problem

_FORBID = ConfigDict(extra="forbid", frozen=True)


def default_storage_dir() -> Path:
    """systemd's StateDirectory, else /var/lib/safeguard when writable, else the user's state."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    system = Path("/var/lib/safeguard")
    if os.access(system if system.exists() else system.parent, os.W_OK):
        return system
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "safeguard"


class Location(BaseModel):
    model_config = _FORBID
    lat: float = Field(ge=-90, le=90, description="Latitude in degrees (WGS 84).")
    lon: float = Field(ge=-180, le=180, description="Longitude in degrees (WGS 84).")
    address: str = Field("", max_length=200, description="Address shown in alerts and SMS.")


class DeviceConfig(BaseModel):
    model_config = _FORBID
    id: str = Field(
        default_factory=lambda: re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename)[:64],
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Device id used in MQTT topics and alerts (default: the host name); one per "
        "device: two daemons with one id take the broker session from each other.",
    )
    location: Location | None = Field(None, description="Where the device is, for alerts.")


class AudioConfig(BaseModel):
    model_config = _FORBID
    source: str = Field(
        "default",
        description='"default" mic | "alsa:NAME" | "pulse:NAME" (a desktop session\'s sound '
        'server, not reachable from the system service) | "file:/path" (replayed at real-time '
        'speed) | "none".',
    )
    sample_rate: int | None = Field(
        None, ge=8000, le=192000, description="Capture rate; null: the device's native rate."
    )
    channels: int | None = Field(
        None, ge=1, le=32, description="Channels captured and downmixed; null: the device's."
    )
    block_s: float = Field(0.05, ge=0.005, le=0.5, description="Capture block length, seconds.")
    ring_s: float = Field(
        30.0, ge=2, le=600, description="Seconds of 16 kHz audio kept in the ring buffer."
    )
    model: Literal["yamnet", "yamnet_spectra_in"] = Field(
        "yamnet_spectra_in",
        description="YAMNet variant: Coral's fully-int8 one (log-mel in, the faster) or "
        "Google's waveform model; both detect the same (bench/RESULTS.md).",
    )
    hop_s: float = Field(
        0.25, ge=0.05, le=0.975, description="Time between analysed 0.975 s windows (10 ms steps)."
    )
    threads: int = Field(1, ge=1, le=8, description="Inference threads.")
    retry_max_s: float = Field(
        30.0, ge=1, le=600, description="Longest wait between attempts to reopen the microphone."
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value in ("default", "none") or re.match(r"^(alsa|pulse|file):.+", value):
            return value
        raise ValueError('must be "default", "none", "alsa:NAME", "pulse:NAME" or "file:/path"')

    @field_validator("hop_s")
    @classmethod
    def _hop(cls, value: float) -> float:
        if abs(round(value * 100) - value * 100) > 1e-6:
            raise ValueError("must be a multiple of 0.01 s (the front end's frame step)")
        return value


class DetectionConfig(BaseModel):
    model_config = _FORBID
    categories: dict[str, CategoryConfig] = Field(
        default_factory=lambda: dict(DEFAULT_CATEGORIES),
        description="Threat categories; entries here are merged over the built-in ones.",
    )

    @field_validator("categories")
    @classmethod
    def _names(cls, value: dict[str, CategoryConfig]) -> dict[str, CategoryConfig]:
        for name in value:  # a name is an MQTT topic level and a Home Assistant id
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
                raise ValueError(
                    f"category name {name!r}: use 1-40 letters, digits, '_' or '-' (it is "
                    "part of MQTT topics)"
                )
        return value


class StorageConfig(BaseModel):
    model_config = _FORBID
    dir: Path = Field(
        default_factory=default_storage_dir,
        description="Outbox database, clips and state (default: systemd's StateDirectory, "
        "/var/lib/safeguard, or ~/.local/state/safeguard).",
    )


class ModelsConfig(BaseModel):
    model_config = _FORBID
    dir: Path | None = Field(
        None, description="Where models are kept (default: storage.dir/models)."
    )


class LoggingConfig(BaseModel):
    model_config = _FORBID
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    health_every_s: float = Field(
        60.0, ge=1, le=3600, description="How often the pipeline's counters are logged."
    )


class Config(BaseModel):
    """The whole daemon configuration (config.yaml)."""

    model_config = _FORBID
    device: DeviceConfig = Field(default_factory=DeviceConfig, description="This device.")
    audio: AudioConfig = Field(default_factory=AudioConfig, description="Microphone and model.")
    video: VideoConfig = Field(default_factory=VideoConfig, description="Camera.")
    detection: DetectionConfig = Field(
        default_factory=DetectionConfig, description="Threat categories."
    )
    mqtt: MqttConfig = Field(
        default_factory=lambda: MqttConfig.model_validate({}), description="The MQTT broker."
    )
    alerts: AlertsConfig = Field(
        default_factory=lambda: AlertsConfig.model_validate({}),
        description="Delivery: acknowledgements, fallback channels (SMS, e-mail, voice), outbox.",
    )
    listener: ListenerConfig = Field(
        default_factory=lambda: ListenerConfig.model_validate({}),
        description="Clip upload to the listener's API, so the dashboard can play clips.",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Local state.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model files.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logs.")
    system: SystemConfig = Field(
        default_factory=SystemConfig, description="The device: watchdog stall limit, Wi-Fi power."
    )

    @property
    def models_dir(self) -> Path:
        return self.models.dir or self.storage.dir / "models"


class _Loader(StrictLoader):
    """YAML 1.2 booleans: only true/false, so keys such as `on` and `off` stay strings (and a
    key given twice is an error, as in every config file)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, key.value)
            out[child] = key.start_mark.line + 1
            _lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out)


def _merge_categories(raw: dict[str, Any]) -> None:
    """Entries under detection.categories override the built-in categories field by field."""
    detection = raw.get("detection")
    if not isinstance(detection, dict) or not isinstance(detection.get("categories"), dict):
        return
    merged: dict[str, Any] = {n: c.model_dump() for n, c in DEFAULT_CATEGORIES.items()}
    for name, user in detection["categories"].items():
        base = merged.get(name)
        if isinstance(base, dict) and isinstance(user, dict):
            smoothing = {**base.get("smoothing", {}), **(user.get("smoothing") or {})}
            merged[name] = {**base, **user, "smoothing": smoothing}
        else:
            merged[name] = user
    detection["categories"] = merged


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        raw = yaml.load(text, Loader=_Loader) or {}  # noqa: S506 (a SafeLoader subclass)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {yaml_problem(exc, text)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    for key in [k for k, v in raw.items() if v is None]:  # a section left with comments only
        raw[key] = {}
    _merge_categories(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                parent = _model_at(loc[:-1])
                close = difflib.get_close_matches(str(loc[-1]), parent, n=1) if parent else []
                message = "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
            where = f" (line {line})" if line else ""
            problems.append(f"{key_path(loc)}: {message}{where}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None
    if taken := _bools_taken_as_numbers(raw, config):  # pydantic reads `port: true` as 1
        where = f" (line {lines[taken[0]]})" if taken[0] in lines else ""
        raise ConfigError(
            f"{source}: {key_path(taken[0])}: expected a number, not true/false{where}"
        )
    return config


def _bools_taken_as_numbers(
    raw: Any, value: Any, loc: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """Where a YAML true/false became a number in the validated config."""
    if isinstance(raw, bool):
        return [] if value is None or isinstance(value, bool) else [loc]
    found = []
    if isinstance(raw, dict):
        for key, item in raw.items():
            child = value.get(key) if isinstance(value, dict) else getattr(value, str(key), None)
            found += _bools_taken_as_numbers(item, child, (*loc, key))
    elif isinstance(raw, list) and isinstance(value, (list, tuple)):
        for index, (item, child) in enumerate(zip(raw, value, strict=False)):
            found += _bools_taken_as_numbers(item, child, (*loc, index))
    return found


def _model_at(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def load_config(path: Path | None) -> Config:
    """The config at `path`, or the embedded defaults when `path` is None."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_config(text, str(path))
