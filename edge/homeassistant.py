"""Home Assistant MQTT discovery: one binary sensor per category and a diagnostic `problem`
sensor, with device availability.

The discovery messages are retained and published on every connect and again whenever
Home Assistant announces itself (`<discovery_prefix>/status` = `online`).
"""

from __future__ import annotations

import hashlib
import json
import re

from pydantic import BaseModel, ConfigDict, Field

_SLUG = re.compile(r"[^a-z0-9_]+")
_HASHED = re.compile(r"_[0-9a-f]{8}$")  # how every disambiguated device slug ends


class HomeAssistantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Publish Home Assistant MQTT discovery messages.")
    discovery_prefix: str = Field(
        "homeassistant",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Home Assistant's discovery prefix; its birth topic is <prefix>/status.",
    )
    categories: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Categories announced as binary sensors beside the device's own (every "
        "category it detects is announced at start, others when first seen).",
    )


def slug(text: str) -> str:
    """`text` in lower case, every run of other characters than letters, digits and `_` as
    one `_` (for category names)."""
    return _SLUG.sub("_", text.lower()).strip("_") or "x"


def device_slug(device_id: str) -> str:
    """The device's part of discovery topics, unique ids and entity ids: distinct device ids
    give distinct slugs.

    An id of lower-case letters and digits joined by single hyphens (`kitchen-pi`, what a host
    name gives) keeps the slug it always had (`kitchen_pi`), so existing installs keep their
    entities: the id can be read back from it. Any other id (`kitchen_pi`, `Kitchen-Pi`,
    `kitchen.pi`, ...) would share that slug, so the first 8 hex digits of the SHA-256 of the
    raw id are appended (`kitchen_pi_53006324`). No slug kept as it was ends like that
    (such an id is given a hash too), so the two kinds never meet.
    """
    plain = re.sub("_+", "_", slug(device_id))  # Home Assistant refuses `__` in entity ids
    if plain.replace("_", "-") == device_id and not _HASHED.search(plain):
        return plain
    digest = hashlib.sha256(device_id.encode("utf-8")).hexdigest()[:8]
    return f"{plain}_{digest}"


def birth_topic(config: HomeAssistantConfig) -> str:
    return f"{config.discovery_prefix}/status"


def discovery_topic(config: HomeAssistantConfig, device_id: str, name: str) -> str:
    node = device_slug(device_id)
    return f"{config.discovery_prefix}/binary_sensor/{node}/{slug(name)}/config"


# ON when the device cannot do its job: capture or camera not running, a fallback channel off
PROBLEM = (
    "{{ 'ON' if value_json.capture not in ('running', 'none')"
    " or value_json.get('video_capture', 'running') != 'running'"
    " or value_json.delivery.fallback_off is defined else 'OFF' }}"
)


def discovery_messages(
    config: HomeAssistantConfig, prefix: str, device_id: str, categories: list[str]
) -> list[tuple[str, str]]:
    """(topic, retained JSON payload) for each category's binary sensor, and a diagnostic
    `problem` sensor from the health message (its fields as attributes)."""
    base = f"{prefix}/{device_id}"
    device = {
        "identifiers": [f"safeguard_{device_slug(device_id)}"],
        "name": f"Safeguard {device_id}",
        "manufacturer": "Safeguard",
        "model": "edge daemon",
    }
    availability = {
        "topic": f"{base}/status",
        "value_template": "{{ 'online' if value == 'online' else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    messages = []
    for category in [*categories, "problem"]:
        object_id = f"safeguard_{device_slug(device_id)}_{slug(category)}"
        payload: dict[str, object] = {
            "name": category.replace("_", " ").capitalize(),
            "unique_id": object_id,
            # Home Assistant 2025.10 and later read default_entity_id, older ones object_id
            "default_entity_id": f"binary_sensor.{object_id}",
            "object_id": object_id,
            "state_topic": f"{base}/state/{category}",
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "safety",
            "availability": [availability],
            "device": device,
        }
        if category == "problem":
            payload |= {
                "state_topic": f"{base}/health",
                "value_template": PROBLEM,
                "json_attributes_topic": f"{base}/health",
                "device_class": "problem",
                "entity_category": "diagnostic",
            }
        topic = discovery_topic(config, device_id, category)
        messages.append((topic, json.dumps(payload, separators=(",", ":"))))
    return messages
