"""On-disk overflow: spill during long outages, replay in order, survive restarts."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from journeys_sdk import Client
from sdk_fake_collector import FakeCollector, Reply


def _segments(d: Path) -> list[str]:
    return sorted(p for p in os.listdir(d) if p.endswith(".jsonl"))


def test_outage_past_budget_parks_on_disk_and_replays_in_order(
    collector: FakeCollector, make_client, tmp_path: Path
) -> None:
    collector.set_default(Reply.error(503, retry_after=0.05))
    client = make_client(overflow_dir=tmp_path, retry_budget=0.2, upload_size=10)
    ids = [client.track("u", "E", {"i": i}).message_id for i in range(95)]
    # Down past the budget: flush reports "not delivered" instead of waiting for
    # the outage to end, and nothing was given up.
    parked = client.flush(timeout=5)
    assert not parked and (parked.pending, parked.failed) == (95, 0)
    s = client.stats
    assert (s.pending, s.overflow_pending, s.failed, s.dropped_total) == (0, 95, 0, 0)
    assert len(_segments(tmp_path)) == 10  # one file per batch

    collector.set_default(Reply())
    back = client.flush(timeout=5)
    assert back and back.delivered == 95  # the parked events, reported again and delivered
    assert collector.stored_ids() == ids  # exact order, exactly once
    assert _segments(tmp_path) == []
    s = client.stats
    assert (s.sent, s.failed, s.overflow_pending, s.overflowed) == (95, 0, 0, 95)


def test_new_events_during_parking_queue_behind_the_disk(collector: FakeCollector, make_client, tmp_path: Path) -> None:
    collector.set_default(Reply.error(503, retry_after=0.05))
    client = make_client(overflow_dir=tmp_path, retry_budget=0.2, upload_size=10)
    early = [client.track("u", "early").message_id for _ in range(25)]
    assert not client.flush(timeout=5)
    late = [client.track("u", "late").message_id for _ in range(25)]
    time.sleep(0.15)  # parked consumer moves them to disk too
    assert client.stats.pending == 0 and client.stats.overflow_pending == 50
    collector.set_default(Reply())
    assert client.flush(timeout=5)
    assert collector.stored_ids() == early + late


def test_spills_while_retrying_so_a_small_memory_bound_loses_nothing(
    collector: FakeCollector, make_client, tmp_path: Path
) -> None:
    collector.set_default(Reply.error(503, retry_after=0.05))
    client = make_client(overflow_dir=tmp_path, retry_budget=30.0, max_queue_size=100, upload_size=10)
    ids = []
    for _ in range(10):  # 400 events against a 100-event memory bound
        for _ in range(40):
            r = client.track("u", "E")
            assert r.queued, r
            ids.append(r.message_id)
        time.sleep(0.08)
    assert client.stats.overflow_pending > 0
    collector.set_default(Reply())
    assert client.flush(timeout=10)
    assert collector.stored_ids() == ids
    assert client.stats.dropped_total == 0 and client.stats.failed == 0


def test_undelivered_events_survive_a_restart(collector: FakeCollector, tmp_path: Path) -> None:
    collector.set_default(Reply.error(503))
    opts = dict(overflow_dir=tmp_path, upload_size=10, upload_interval=0.02, backoff_base=0.01, max_backoff=0.05)
    first = Client(collector.write_key, collector.url, **opts)
    ids1 = [first.track("u", "E", {"run": 1}).message_id for _ in range(33)]
    down = first.shutdown(timeout=0.2)
    assert not down and down.pending == 33 and down.failed == 0  # collector down: written to disk, not lost
    assert first.stats.failed == 0
    assert sum(int(n.split("-")[1].split(".")[0]) for n in _segments(tmp_path)) == 33

    collector.set_default(Reply())
    second = Client(collector.write_key, collector.url, **opts)
    try:
        assert second.stats.recovered == 33
        ids2 = [second.track("u", "E", {"run": 2}).message_id for _ in range(5)]
        assert second.flush(timeout=5)
        stored = collector.stored_ids()
        assert set(stored) == set(ids1 + ids2) and len(stored) == 38
        assert stored == ids1 + ids2  # the old run's events first, in order
        assert _segments(tmp_path) == []
    finally:
        second.shutdown(timeout=1)


def test_directory_has_one_owner(collector: FakeCollector, make_client, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="journeys_sdk")
    a = make_client(overflow_dir=tmp_path)
    b = make_client(overflow_dir=tmp_path)
    assert a._overflow is not None and b._overflow is None
    assert any("in use by another" in r.getMessage() for r in caplog.records)
    r = b.track("u", "E")  # still works, memory-only
    assert b.flush(timeout=5) and collector.stored_ids() == [r.message_id]


def test_half_written_segment_is_ignored(collector: FakeCollector, make_client, tmp_path: Path) -> None:
    (tmp_path / ".0000000000000001-3.jsonl.tmp").write_bytes(b'{"partial"')
    client = make_client(overflow_dir=tmp_path)
    assert client.stats.recovered == 0
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    client.track("u", "E")
    assert client.flush(timeout=5) and len(collector.stored_ids()) == 1


def test_flush_while_parked_probes_once_instead_of_waiting(
    collector: FakeCollector, make_client, tmp_path: Path
) -> None:
    collector.set_default(Reply.error(503))
    # Probes while parked are spaced by max_backoff (60 s here); a flush must
    # not wait for that, in either direction.
    client = make_client(overflow_dir=tmp_path, retry_budget=0.2, max_backoff=60.0)
    ids = [client.track("u", "E").message_id for _ in range(5)]
    assert not client.flush(timeout=5)
    n = len(collector.requests)
    t0 = time.monotonic()
    assert not client.flush(timeout=5)  # still down: one probe, then False
    assert time.monotonic() - t0 < 1.0
    assert len(collector.requests) == n + 1
    collector.set_default(Reply())
    t0 = time.monotonic()
    assert client.flush(timeout=5)  # back: the probe succeeds and the flush completes
    assert time.monotonic() - t0 < 1.0
    assert collector.stored_ids() == ids
