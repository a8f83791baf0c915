"""Home Assistant discovery ids: distinct device ids never share a discovery topic, a unique
id, a device identifier or an entity id; ids that had a readable slug keep it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge import homeassistant
from edge.delivery import AlertsConfig, DeliveryService
from edge.homeassistant import HomeAssistantConfig, discovery_messages
from edge.mqtt import MqttConfig
from edge.outbox import Outbox
from tests.helpers import Mosquitto
from tests.test_delivery_basic import Watcher

TRICKY = [
    "kitchen-pi", "kitchen_pi", "Kitchen-Pi", "KITCHEN_PI", "kitchen.pi", "kitchen--pi",
    "-kitchen-pi", "kitchen-pi-", "kitchen_pi_", "_kitchen_pi", "kitchen-pi-53006324",
    "kitchen_pi_53006324", "kitchen__pi", "x", "-", "_", ".", "X", "a.b-c_d", "dev-1", "dev_1",
    "DEV-1",
]  # fmt: skip


def ids(device_id: str) -> dict[str, set[str]]:
    """Every identifier the discovery messages of `device_id` give Home Assistant."""
    found: dict[str, set[str]] = {
        "topic": set(),
        "unique_id": set(),
        "entity": set(),
        "device": set(),
    }
    for topic, payload in discovery_messages(
        HomeAssistantConfig(), "safeguard", device_id, ["scream", "glass_break"]
    ):
        config = json.loads(payload)
        found["topic"].add(topic)
        found["unique_id"].add(config["unique_id"])
        found["entity"].add(config["default_entity_id"])
        found["entity"].add("binary_sensor." + config["object_id"])
        found["device"].update(config["device"]["identifiers"])
    return found


def test_kitchen_pi_and_kitchen_pi_do_not_collide() -> None:
    """`kitchen-pi` and `kitchen_pi` were both `kitchen_pi`: the second device's retained
    discovery messages replaced the first's, and their unique ids were the same."""
    hyphen, underscore = ids("kitchen-pi"), ids("kitchen_pi")
    for kind in hyphen:
        assert not hyphen[kind] & underscore[kind], kind


def test_distinct_ids_give_distinct_slugs_and_ids() -> None:
    slugs = {device_id: homeassistant.device_slug(device_id) for device_id in TRICKY}
    assert len(set(slugs.values())) == len(TRICKY), slugs
    seen: dict[str, dict[str, str]] = {}
    for device_id in TRICKY:
        for kind, values in ids(device_id).items():
            for value in values:
                other = seen.setdefault(kind, {}).setdefault(value, device_id)
                assert other == device_id, (kind, value, other, device_id)


def test_readable_ids_keep_their_entities_and_the_others_are_stable() -> None:
    # lower-case letters and digits with single hyphens (what host names give): as before
    for device_id, expected in [("kitchen-pi", "kitchen_pi"), ("dev-1", "dev_1"),
                                ("raspberrypi", "raspberrypi"), ("d", "d")]:  # fmt: skip
        assert homeassistant.device_slug(device_id) == expected
    kitchen = ids("kitchen-pi")
    assert "safeguard_kitchen_pi_scream" in kitchen["unique_id"]
    assert "binary_sensor.safeguard_kitchen_pi_problem" in kitchen["entity"]
    assert kitchen["device"] == {"safeguard_kitchen_pi"}
    assert "homeassistant/binary_sensor/kitchen_pi/glass_break/config" in kitchen["topic"]
    # any other id: its old slug and 8 hex digits of the SHA-256 of the raw id, every time
    assert homeassistant.device_slug("kitchen_pi") == "kitchen_pi_53006324"
    assert homeassistant.device_slug("Kitchen-Pi") == "kitchen_pi_45133c7f"
    assert homeassistant.device_slug("kitchen-pi-53006324") != "kitchen_pi_53006324"
    for device_id in TRICKY:
        slug = homeassistant.device_slug(device_id)
        assert slug == homeassistant.device_slug(device_id)
        assert all(c.isdigit() or c == "_" or "a" <= c <= "z" for c in slug), slug
        # what Home Assistant accepts in an entity id: no leading, trailing or double `_`
        assert not slug.startswith("_"), slug
        assert not slug.endswith("_"), slug
        assert "__" not in slug, slug


def test_two_devices_on_one_broker_keep_their_own_sensors(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Both devices announce themselves on one broker (as Home Assistant sees it): each has
    its own retained discovery messages, neither replaces the other's."""
    services = [
        DeliveryService(
            MqttConfig(port=mosquitto.port),
            AlertsConfig(),
            Outbox(tmp_path / f"{n}.db", device_id),
            device_id,
        )
        for n, device_id in enumerate(("kitchen-pi", "kitchen_pi"))
    ]
    for service in services:
        service.publish_state("scream", False)
        service.start()
    watcher = Watcher(mosquitto.port, "homeassistant/#")
    try:
        configs = {}
        slugs = {"kitchen-pi": "kitchen_pi", "kitchen_pi": "kitchen_pi_53006324"}
        for device_id in ("kitchen-pi", "kitchen_pi"):
            topic = f"homeassistant/binary_sensor/{slugs[device_id]}/scream/config"
            configs[device_id] = json.loads(watcher.wait(topic))
        time.sleep(0.5)  # everything retained has arrived
        assert configs["kitchen-pi"]["state_topic"] == "safeguard/kitchen-pi/state/scream"
        assert configs["kitchen_pi"]["state_topic"] == "safeguard/kitchen_pi/state/scream"
        assert configs["kitchen-pi"]["unique_id"] != configs["kitchen_pi"]["unique_id"]
        devices = {json.dumps(c["device"]["identifiers"]) for c in configs.values()}
        assert len(devices) == 2
        announced = [t for t, v in watcher.last.items() if v]
        assert len(announced) == 4, announced  # scream and problem of each device
    finally:
        watcher.close()
        for service in services:
            service.stop(5)
