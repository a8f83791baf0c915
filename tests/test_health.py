"""System health: thermal zones (a Pi's and a Jetson's layout), throttling flags, disk, rates."""

from __future__ import annotations

from pathlib import Path

from edge.config import parse_config
from edge.health import (
    DeviceHealth,
    cpu_temperature,
    parse_throttled,
    thermal_zones,
    throttled,
    wifi_power_save_off,
)


def zone(root: Path, n: int, kind: str, millideg: str) -> None:
    folder = root / f"thermal_zone{n}"
    folder.mkdir(parents=True)
    (folder / "type").write_text(kind + "\n")
    (folder / "temp").write_text(millideg + "\n")


def test_raspberry_pi_zone(tmp_path: Path) -> None:
    zone(tmp_path, 0, "cpu-thermal", "48312")
    zones = thermal_zones(tmp_path)
    assert zones == {"cpu-thermal": 48.3}
    assert cpu_temperature(zones) == 48.3


def test_jetson_zones_pick_the_cpu(tmp_path: Path) -> None:
    for n, (kind, temp) in enumerate(
        [("AO-therm", "40500"), ("CPU-therm", "45000"), ("GPU-therm", "52500"), ("bad", "x")]
    ):
        zone(tmp_path, n, kind, temp)
    zones = thermal_zones(tmp_path)
    assert zones == {"AO-therm": 40.5, "CPU-therm": 45.0, "GPU-therm": 52.5}
    assert cpu_temperature(zones) == 45.0
    assert cpu_temperature({"soc": 50.0, "pmic": 55.0}) == 55.0
    assert cpu_temperature({}) is None


def test_throttled_flags() -> None:
    assert parse_throttled("throttled=0x0\n") == {"raw": "0x0", "flags": []}
    assert parse_throttled("throttled=0x50005") == {
        "raw": "0x50005",
        "flags": ["under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"],
    }
    assert throttled(lambda _cmd: "throttled=0x20000") == {
        "raw": "0x20000",
        "flags": ["freq_capped_occurred"],
    }
    assert throttled(lambda _cmd: "VCHI initialization failed") is None


def test_sample_has_the_keys_and_a_capture_rate(tmp_path: Path) -> None:
    thermal = tmp_path / "thermal"
    zone(thermal, 0, "cpu-thermal", "51000")
    health = DeviceHealth(tmp_path, thermal)
    first = health.sample(samples=0)
    assert first["capture_rate_hz"] is None
    assert first["cpu_temp_c"] == 51.0
    assert isinstance(first["disk_free_mb"], int)
    assert first["disk_free_mb"] > 0
    assert isinstance(first["load_1m"], float)
    assert health.capture_rate(16000, now=1e9) is not None
    assert health.capture_rate(32000, now=1e9 + 1.0) == 16000.0


def test_wifi_power_save_runs_iw_per_wlan_interface() -> None:
    calls: list[list[str]] = []

    def run(cmd: list[str]) -> int:
        calls.append(cmd)
        return 0

    changed = wifi_power_save_off(run)
    wlans = sorted(p.name for p in Path("/sys/class/net").glob("wlan*"))
    assert changed == (wlans if calls or not wlans else [])
    assert all(cmd[1:] == ["dev", cmd[2], "set", "power_save", "off"] for cmd in calls)


def test_config_section() -> None:
    config = parse_config("system: {stall_s: 5, wifi_power_save_off: false}\n")
    assert config.system.stall_s == 5.0
    assert config.system.wifi_power_save_off is False
    assert parse_config("").system.wifi_power_save_off is True
