"""Fleet scale, small: two listener processes in one shared-subscription group on PostgreSQL.

The full 10,000-alert run is `python -m bench.listener_fleet` (results in bench/RESULTS.md).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from bench.listener_fleet import BROKER_CONFIG, run_fleet
from tests.helpers import Mosquitto, postgres_cluster


def test_fleet_stores_every_alert_exactly_once(tmp_path: Path) -> None:
    cluster = postgres_cluster()
    name = f"sg_fleet_{uuid.uuid4().hex[:10]}"
    url = cluster.create_database(name)
    broker = Mosquitto(tmp_path / "broker", extra_config=BROKER_CONFIG)
    broker.workdir.mkdir()
    broker.start()
    try:
        result = run_fleet(url, broker, tmp_path, alerts=1000, devices=50, timeout=60)
    finally:
        broker.stop()
        cluster.drop_database(name)
    assert result.stored_rows == result.distinct_ids == 1000
    assert result.missing == 0
    assert [p["stored"] > 0 for p in result.per_instance] == [True, True]
    assert sum(p["stored"] for p in result.per_instance) == 1000
    assert sum(p["duplicate"] for p in result.per_instance) == result.duplicates == 50
    rejected = sum(p["malformed"] + p["spoofed"] + p["oversized"] for p in result.per_instance)
    assert rejected == result.malformed == 10
