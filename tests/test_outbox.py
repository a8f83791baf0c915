"""The durable outbox: storage, bound policy, acks, retry and fallback bookkeeping."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from edge import schema
from edge.outbox import Outbox
from tests.delivery_helpers import make_event


def test_submit_is_durable_and_valid(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "dev-1", {"lat": 1.0, "lon": 2.0})
    box.submit(make_event(1))
    box.close()
    again = Outbox(tmp_path / "o.db", "dev-1")
    [alert] = again.pending()
    assert schema.validate(alert)["device_id"] == "dev-1"
    assert alert["location"] == {"lat": 1.0, "lon": 2.0}
    assert again.depth() == 1
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_event_id_shared_by_phases(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "dev-1")
    for phase in ("start", "update", "end"):
        box.submit(make_event(7, phase=phase))
    start, update, end = box.pending()
    assert start["event_id"] == start["id"] == update["event_id"] == end["event_id"]
    assert start["id"] < update["id"] < end["id"]


def test_ack_due_and_resend(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "d")
    box.submit(make_event(1))
    box.submit(make_event(2))
    (id1, payload), (id2, _) = box.due(time.time(), 10, 300)
    assert json.loads(payload)["id"] == id1
    box.mark_sent(id1, time.time())
    assert [i for i, _ in box.due(time.time() - 60, 10, 300)] == [id2]
    assert box.ack(id1)
    assert not box.ack(id1)
    assert not box.ack("nope")
    assert box.is_acked(id1)
    assert box.depth() == 1
    box.forget_sent()
    assert [i for i, _ in box.due(0, 10, 300)] == [id2]


def test_bound_drops_in_stated_order_and_keeps_critical_starts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "d", max_rows=4)
    box.submit(make_event(1, severity="critical"))  # critical start: never dropped
    box.submit(make_event(2, severity="info"))  # non-critical start
    box.submit(make_event(3, severity="warning", phase="update"))
    box.submit(make_event(4, severity="critical", phase="end"))
    first = box.pending()[0]["id"]
    box.submit(make_event(5, severity="critical"))  # 5 rows: the update goes
    phases = [(a["event"], a["severity"]) for a in box.pending()]
    assert ("update", "warning") not in phases
    assert len(phases) == 4
    box.submit(make_event(6, severity="critical"))  # then the end
    assert "end" not in [a["event"] for a in box.pending()]
    box.submit(make_event(7, severity="critical"))  # then the non-critical start
    assert {a["severity"] for a in box.pending()} == {"critical"}
    box.submit(make_event(8, severity="critical"))  # over the bound: kept, with a warning
    assert box.depth() == 5
    assert box.pending()[0]["id"] == first
    assert box.stats()["dropped"] == 3
    box.ack(first)
    box.submit(make_event(9, severity="critical"))  # acked rows go first
    assert first not in [a["id"] for a in box.pending()]
    assert box.stats()["dropped"] == 3
    box.close()
    assert Outbox(tmp_path / "o.db", "d").stats()["dropped"] == 3  # survives restarts


def test_fallback_records_and_candidates(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "d")
    box.submit(make_event(1, severity="info"))
    box.submit(make_event(2, severity="warning"))
    box.submit(make_event(3, severity="critical", phase="update"))
    later = time.time() + 1
    [cand] = box.fallback_candidates(later, "warning", ("start",))
    assert cand["severity"] == "warning"
    assert len(box.fallback_candidates(later, "info", ("start", "update"))) == 3
    assert box.fallback_candidates(time.time() - 100, "info", ("start",)) == []
    box.record_fallback(cand["id"], "sms", "+15550001", state="sent", detail="SM1", attempts=2)
    assert box.fallback_state(cand["id"], "sms", "+15550001")[0] == "sent"  # type: ignore[index]
    assert box.fallback_results(cand["id"]) == [("sms", "+15550001", "sent", "SM1")]
    assert box.sent_since("sms", time.time() - 3600) == 1
    box.mark_fallback_done(cand["id"])
    assert box.fallback_candidates(later, "warning", ("start",)) == []
    box.ack(cand["id"])
    assert box.purge_acked(time.time() + 1) == 1
    assert box.fallback_results(cand["id"]) == []


def fill_the_disk(box: Outbox) -> None:
    """SQLite's own page limit: every write that grows the file fails with SQLITE_FULL, as on
    a full disk."""
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")


def test_an_alert_that_cannot_be_stored_is_held_sent_and_stored_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.db", "d")
    fill_the_disk(box)
    for n in range(40):  # enough rows to need a new page
        box.submit(make_event(n))
    stats = box.stats()
    assert stats["unstored"] > 0
    assert stats["store_failures"] == stats["unstored"]
    assert stats["outbox_depth"] == box.depth() == 40  # held alerts count as unacked
    assert "cannot store alert" in caplog.text
    held = [i for i, _ in box.due(time.time(), 10, 300)]
    assert len(held) == 40  # published like the stored ones
    box.mark_sent(held[0], time.time())
    assert held[0] not in [i for i, _ in box.due(time.time(), 10, 300)]
    assert box.ack(held[1])  # delivered while held: nothing left to store for it
    assert box.store_unstored() > 0  # the disk is still full
    box._db.execute("PRAGMA max_page_count = 1000000")
    assert box.store_unstored() == 0
    assert box.stats()["unstored"] == 0
    stored = {a["id"] for a in box.pending()}
    assert stored == set(held) - {held[1]}
    box.close()


def test_a_held_alert_still_held_at_exit_is_logged_by_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.db", "d")
    fill_the_disk(box)
    for n in range(40):
        box.submit(make_event(n))
    unstored = box.stats()["unstored"]
    box.close()
    assert f"{unstored} alerts could neither be stored nor acknowledged" in caplog.text


def test_resends_back_off_up_to_resend_max(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "d")
    box.submit(make_event(1))
    t = 1000.0
    waits = []
    for _ in range(7):
        ((alert_id, _),) = box.due(t, 10, 60)
        box.mark_sent(alert_id, t)
        wait = 0.5
        while box.due(t + wait, 10, 60) == []:
            wait += 0.5
        waits.append(wait)
        t += wait
    assert waits == [10, 20, 40, 60, 60, 60, 60]
