"""Memory bounds: dropped results, one log line, counters, and no blocking."""

from __future__ import annotations

import logging
import time

from journeys_sdk import DropReason, Status
from sdk_fake_collector import FakeCollector, Reply


def _drop_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "queue full" in r.getMessage()]


def test_queue_bound_drops_with_result_single_log_line_and_stats(collector: FakeCollector, make_client, caplog) -> None:
    collector.set_default(Reply.error(503, retry_after=0.3))  # consumer busy retrying
    client = make_client(max_queue_size=50, upload_size=10)
    caplog.set_level(logging.WARNING, logger="journeys_sdk")
    results = [client.track("u", "E", {"i": i}) for i in range(1000)]

    queued = [r for r in results if r.status is Status.QUEUED]
    dropped = [r for r in results if r.status is Status.DROPPED]
    # 10 may already be in the consumer's in-flight batch; the queue holds 50.
    assert 50 <= len(queued) <= 60
    assert len(queued) + len(dropped) == 1000
    assert all(r.reason is DropReason.QUEUE_FULL and r.message_id for r in dropped)
    assert all(r.queued for r in results[:50])  # no drop before the bound is reached
    assert len(_drop_warnings(caplog)) == 1  # one line for 940+ drops
    s = client.stats
    assert s.dropped == {DropReason.QUEUE_FULL: len(dropped)}
    assert s.queued == len(queued)

    # Collector recovers: everything accepted arrives, in order, exactly once.
    collector.set_default(Reply())
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.delivered, flushed.dropped) == (len(queued), len(dropped))  # drops count
    assert collector.stored_ids() == [r.message_id for r in queued]
    assert client.stats.sent == len(queued) and client.stats.failed == 0


def test_queue_bound_recovery_and_rearmed_log(collector: FakeCollector, make_client, caplog) -> None:
    collector.script(Reply.error(503, retry_after=0.3))
    client = make_client(max_queue_size=20, upload_size=5)
    caplog.set_level(logging.WARNING, logger="journeys_sdk")
    first = [client.track("u", "E") for _ in range(100)]
    accepted = [r.message_id for r in first if r.queued]
    assert len(accepted) < 100
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.delivered, flushed.dropped) == (len(accepted), 100 - len(accepted))
    assert collector.stored_ids() == accepted  # in order, no duplicates, none lost
    assert client.stats.sent == len(accepted)
    # Room again: a second episode of drops is logged again (once).
    collector.script(Reply.error(503, retry_after=0.3))
    client.track("u", "E")
    time.sleep(0.05)
    more = [client.track("u", "E") for _ in range(100)]
    assert any(r.dropped for r in more)
    assert client.flush(timeout=5).dropped == sum(r.dropped for r in more)
    assert len(_drop_warnings(caplog)) == 2
    assert any("room again" in r.getMessage() for r in caplog.records)


def test_byte_bound_drops_large_events_first(collector: FakeCollector, make_client) -> None:
    collector.set_default(Reply.error(503, retry_after=0.3))
    client = make_client(max_queue_bytes=200_000, max_queue_size=100_000, upload_size=1)
    blob = "x" * 10_000
    results = [client.track("u", "E", {"b": blob}) for _ in range(100)]
    dropped = [r for r in results if r.dropped]
    assert dropped and all(r.reason is DropReason.QUEUE_BYTES for r in dropped)
    assert client.stats.pending_bytes <= 200_000
    assert client.stats.pending < 25
    # Small events still fit while big ones are refused.
    small = client.track("u", "small")
    assert small.queued
    collector.set_default(Reply())
    flushed = client.flush(timeout=5)
    assert not flushed and flushed.dropped == len(dropped) and flushed.failed == 0
    assert collector.stored_ids() == [r.message_id for r in results if r.queued] + [small.message_id]


def test_default_limits_absorb_a_20000_burst_during_an_outage(collector: FakeCollector, make_client) -> None:
    collector.script(Reply.error(503, retry_after=0.3))
    client = make_client(max_queue_size=100_000, max_queue_bytes=32 * 1024 * 1024)  # the defaults
    props = {"plan": "pro", "amount": 42, "sku": "abc-123"}
    worst = 0.0
    ids = []
    for i in range(20_000):
        t0 = time.perf_counter()
        r = client.track(f"user-{i % 97}", "Order Completed", props)
        worst = max(worst, time.perf_counter() - t0)
        ids.append(r.message_id)
        assert r.queued
    assert client.flush(timeout=20)
    stored = collector.stored_ids()
    assert len(stored) == 20_000 and set(stored) == set(ids)
    assert client.stats.dropped == {}
    # Never blocked on the outage (generous bound: shared CI machines stall).
    assert worst < 0.25
