"""System health merged into the daemon's health message: CPU temperature (thermal zones,
also Jetson's named zones), Raspberry Pi throttling flags (`vcgencmd get_throttled`), free
disk of the storage folder, load average and the capture rate. Also turns Wi-Fi power saving
off on a Raspberry Pi (`python -m edge.health --wifi`, run privileged by the unit's
ExecStartPre) unless the config says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)
THERMAL = Path("/sys/class/thermal")
MODEL = Path("/proc/device-tree/model")
# Bits of `vcgencmd get_throttled`: now (0-3) and since boot (16-19).
THROTTLE_BITS = {
    0: "under_voltage",
    1: "freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


class SystemConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    stall_s: float = Field(
        10.0,
        ge=2.0,
        le=600.0,
        description="Capture, inference or video analysis idle this long is a stall: the "
        "systemd watchdog pings stop, so systemd restarts the service.",
    )
    wifi_power_save_off: bool = Field(
        True,
        description="On a Raspberry Pi, turn Wi-Fi power saving off when the service starts "
        "(it delays and drops MQTT traffic).",
    )


def board_model(path: Path = MODEL) -> str:
    try:
        return path.read_text(errors="replace").strip("\0 \n")
    except OSError:
        return ""


def thermal_zones(root: Path = THERMAL) -> dict[str, float]:
    """Each thermal zone's temperature in deg C, by its type (Jetson: CPU-therm, GPU-therm...)."""
    zones: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            zones[kind] = round(int((zone / "temp").read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            continue
    return zones


def cpu_temperature(zones: dict[str, float]) -> float | None:
    """The CPU's zone (cpu-thermal on a Pi, CPU-therm on a Jetson), else the hottest zone."""
    for kind, temp in zones.items():
        if kind.lower().startswith("cpu"):
            return temp
    return max(zones.values()) if zones else None


def parse_throttled(text: str) -> dict[str, object]:
    """`throttled=0x50005` -> the raw value and the names of the bits set."""
    value = int(text.strip().split("=")[-1], 16)
    flags = [name for bit, name in THROTTLE_BITS.items() if value & (1 << bit)]
    return {"raw": hex(value), "flags": flags}


def throttled(run: Callable[[list[str]], str] | None = None) -> dict[str, object] | None:
    """The Raspberry Pi firmware's throttling flags, or None when vcgencmd is not there."""
    if run is None:
        exe = shutil.which("vcgencmd")
        if exe is None:
            return None

        def run(cmd: list[str]) -> str:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=2, check=True).stdout

        cmd = [exe, "get_throttled"]
    else:
        cmd = ["vcgencmd", "get_throttled"]
    try:
        return parse_throttled(run(cmd))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.debug("vcgencmd get_throttled failed: %s", exc)
        return None


class DeviceHealth:
    """Samples the system's health; also the capture rate between two samples."""

    def __init__(self, storage: Path, thermal: Path = THERMAL) -> None:
        self.storage = storage
        self.thermal = thermal
        self._last: tuple[float, int] | None = None

    def capture_rate(self, samples: int, now: float) -> float | None:
        last, self._last = self._last, (now, samples)
        if last is None or now <= last[0]:
            return None
        return round((samples - last[1]) / (now - last[0]), 1)

    def sample(self, samples: int = 0) -> dict[str, object]:
        zones = thermal_zones(self.thermal)
        try:
            free = shutil.disk_usage(self.storage).free // 2**20
        except OSError:
            free = None
        return {
            "capture_rate_hz": self.capture_rate(samples, time.monotonic()),
            "cpu_temp_c": cpu_temperature(zones),
            "thermal_zones": zones,
            "throttled": throttled(),
            "disk_free_mb": free,
            "load_1m": round(os.getloadavg()[0], 2),
        }


def wifi_power_save_off(run: Callable[[list[str]], int] | None = None) -> list[str]:
    """Turn power saving off on each wlan interface; returns the interfaces it changed."""
    exe = shutil.which("iw")
    if exe is None:
        log.warning("iw is not installed: Wi-Fi power saving left as it is")
        return []

    def _run(cmd: list[str]) -> int:
        return subprocess.run(cmd, capture_output=True, timeout=5, check=False).returncode

    runner = run or _run
    changed = []
    for iface in sorted(p.name for p in Path("/sys/class/net").glob("wlan*")):
        if runner([exe, "dev", iface, "set", "power_save", "off"]) == 0:
            changed.append(iface)
            log.info("Wi-Fi power saving off on %s", iface)
        else:
            log.warning("could not turn Wi-Fi power saving off on %s", iface)
    return changed


def main(argv: list[str] | None = None) -> int:
    """`python -m edge.health --wifi [--config PATH]`: the unit's privileged start step."""
    from edge.config import load_config

    parser = argparse.ArgumentParser(prog="python -m edge.health")
    parser.add_argument("--config", type=Path, default=Path("/etc/safeguard/config.yaml"))
    parser.add_argument("--wifi", action="store_true", help="apply the Wi-Fi power setting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.wifi:
        model = board_model()
        if "Raspberry Pi" not in model:
            log.info("not a Raspberry Pi (%s): Wi-Fi power saving left as it is", model or "?")
        elif load_config(args.config).system.wifi_power_save_off:
            wifi_power_save_off()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
