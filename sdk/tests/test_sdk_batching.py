"""Batching by count, bytes and time; per-event and per-request size limits."""

from __future__ import annotations

import math
import time

from journeys_sdk import DropReason, EventTooLargeError, SerializationError, Status
from journeys_sdk.encode import estimate_size
from sdk_fake_collector import MAX_BODY, FakeCollector


def test_batches_by_count_in_order(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_size=10, upload_interval=5.0)
    ids = [client.track("u", "E", {"i": i}).message_id for i in range(35)]
    assert client.flush(timeout=5)
    assert [len(r.batch) for r in collector.requests] == [10, 10, 10, 5]
    assert collector.stored_ids() == ids  # exact order, no duplicates
    s = client.stats
    assert (s.queued, s.sent, s.batches, s.failed, s.retries, s.pending) == (35, 35, 4, 0, 0, 0)


def test_full_batch_is_sent_without_waiting_for_the_interval(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_size=20, upload_interval=30.0)
    t0 = time.monotonic()
    for _ in range(20):
        client.track("u", "E")
    ids = collector.wait_for(20, timeout=5)
    assert len(ids) == 20
    assert time.monotonic() - t0 < 2.0


def test_batches_by_time(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_size=500, upload_interval=0.1)
    ids = [client.track("u", "E").message_id for _ in range(3)]
    # No flush: the interval alone must get them out.
    assert collector.wait_for(3, timeout=3) == ids
    assert len(collector.requests) == 1


def test_batches_by_bytes_stay_under_the_request_limit(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_size=500, upload_interval=5.0)
    blob = "x" * 20_000  # ~20 KiB per event: 500 of them would be ~10 MB
    ids = [client.track("u", "Big", {"blob": blob, "i": i}).message_id for i in range(60)]
    assert client.flush(timeout=10)
    assert collector.stored_ids() == ids
    assert all(r.status == 200 for r in collector.requests)
    assert all(0 < r.body_size <= MAX_BODY for r in collector.requests)
    # Packed close to the limit, not one event per request.
    assert len(collector.requests) == math.ceil(60 / (MAX_BODY // 20_100))


def test_oversized_event_is_rejected_at_enqueue(collector: FakeCollector, make_client) -> None:
    client = make_client()
    r = client.track("u", "Huge", {"blob": "x" * 40_000})
    assert r.status is Status.DROPPED and r.reason is DropReason.TOO_LARGE
    assert isinstance(r.error, EventTooLargeError)
    ok = client.track("u", "Fine", {"blob": "x" * 30_000})
    assert ok.queued
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.queued, flushed.delivered, flushed.dropped) == (1, 1, 1)  # not all got there
    assert collector.stored_ids() == [ok.message_id]
    assert client.stats.dropped == {DropReason.TOO_LARGE: 1}


def test_event_that_only_encodes_too_large_is_dropped_by_the_consumer(collector: FakeCollector, make_client) -> None:
    # 'é' is one character but two bytes in UTF-8: the cheap estimate lets it
    # through, the exact check on the consumer thread catches it.
    errors = []
    client = make_client(on_error=lambda exc, events: errors.append((exc, events)))
    before = client.track("u", "Before")
    r = client.track("u", "Accented", {"text": "é" * 20_000})
    after = client.track("u", "After")
    assert r.queued  # accepted by the estimate...
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.queued, flushed.delivered, flushed.failed) == (3, 2, 1)
    assert isinstance(flushed.last_error, EventTooLargeError)
    assert collector.stored_ids() == [before.message_id, after.message_id]  # ...never sent
    assert client.stats.dropped == {DropReason.TOO_LARGE: 1}
    ((exc, events),) = errors
    assert isinstance(exc, EventTooLargeError) and exc.size > 32 * 1024
    assert [e["messageId"] for e in events] == [r.message_id]
    s = client.stats
    assert s.queued == 3 and s.sent == 2 and s.pending == 0


def test_unencodable_event_is_dropped_and_reported(collector: FakeCollector, make_client) -> None:
    errors = []
    client = make_client(on_error=lambda exc, events: errors.append((exc, events)))
    loop: dict[str, object] = {}
    loop["self"] = loop
    r1 = client.track("u", "Loop", {"d": loop})
    r2 = client.track("u", "NaN", {"x": float("nan")})
    ok = client.track("u", "Fine")
    assert r1.queued and r2.queued  # no encoding on the caller's thread
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.queued, flushed.delivered, flushed.failed) == (3, 1, 2)
    assert isinstance(flushed.last_error, SerializationError)
    assert collector.stored_ids() == [ok.message_id]
    assert client.stats.dropped == {DropReason.UNSERIALIZABLE: 2}
    assert [type(e) for e, _ in errors] == [SerializationError, SerializationError]
    assert [evs[0]["messageId"] for _, evs in errors] == [r1.message_id, r2.message_id]


def test_estimate_is_a_lower_bound() -> None:
    import json

    samples = [
        {},
        {"a": 1, "b": "two", "c": None, "d": True, "e": 1.5},
        {"nested": {"list": [1, "x", {"y": [None]}]}, "t": ("a", "b")},
        {"u": "é☕" * 10, "k": ""},
        {1: "int key"},
    ]
    for s in samples:
        exact = len(json.dumps(s, separators=(",", ":"), ensure_ascii=False).encode())
        assert estimate_size(s) <= exact, s
    # Cheap even for huge payloads: stops counting past the limit.
    big = {str(i): "v" * 100 for i in range(100_000)}
    t0 = time.perf_counter()
    assert estimate_size(big) > 32 * 1024
    assert time.perf_counter() - t0 < 0.01
    # A self-referencing structure must not recurse forever on the caller's thread.
    loop: dict[str, object] = {}
    loop["x"] = loop
    assert estimate_size(loop) > 0
