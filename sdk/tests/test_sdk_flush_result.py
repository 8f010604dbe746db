"""flush() says whether everything recorded was delivered: a FlushResult, truthy only then, with counts.

Before, flush() answered True after a 401 (wrong write key) and after giving up on a collector that was down
("nothing pending"), while the README invites ``if client.flush():``.
"""

from __future__ import annotations

import asyncio
import socket
import time

import journeys_sdk
from journeys_sdk import APIError, FlushResult, NetworkError, RetryBudgetExceeded
from journeys_sdk.buffer import EventBuffer
from sdk_fake_collector import FakeCollector, Reply


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once closed


def test_everything_delivered_is_truthy_with_counts(collector: FakeCollector, make_client) -> None:
    client = make_client()
    ids = [client.track("u", "E", {"i": i}).message_id for i in range(12)]
    flushed = client.flush(timeout=5)
    assert isinstance(flushed, FlushResult)
    assert flushed and flushed.ok and flushed.settled
    assert (
        flushed.queued,
        flushed.delivered,
        flushed.quarantined,
        flushed.failed,
        flushed.pending,
        flushed.dropped,
    ) == (12, 12, 0, 0, 0, 0)
    assert flushed.last_error is None
    assert flushed == True  # noqa: E712 -- code written for the old bool keeps working
    assert "ok=True" in repr(flushed) and "delivered=12" in repr(flushed)
    assert collector.stored_ids() == ids
    nothing = client.flush(timeout=5)  # nothing new: an empty, truthy result
    assert nothing and nothing.queued == 0


def test_wrong_write_key_401_is_falsy_and_says_why(collector: FakeCollector, make_client) -> None:
    client = make_client(write_key="jw_wrong")
    client.track("u", "A")
    client.track("u", "B")
    flushed = client.flush(timeout=5)
    assert not flushed and flushed == False  # noqa: E712
    assert flushed.settled  # nothing left to wait for: the events failed
    assert (flushed.queued, flushed.delivered, flushed.failed, flushed.pending) == (2, 0, 2, 0)
    error = flushed.last_error
    assert isinstance(error, APIError) and error.status == 401 and not error.retryable
    assert "unknown or revoked key" in str(error)
    # A failure is reported by the flush that saw it; a later one covers only what came after.
    client.track("u", "C")
    again = client.flush(timeout=5)
    assert not again and (again.queued, again.failed) == (1, 1)


def test_collector_down_past_the_retry_budget_is_falsy(make_client) -> None:
    client = make_client(host=f"http://127.0.0.1:{_dead_port()}", retry_budget=0.3)
    client.track("u", "E")
    t0 = time.monotonic()
    flushed = client.flush(timeout=5)
    assert time.monotonic() - t0 < 3
    assert not flushed and flushed.settled
    assert (flushed.delivered, flushed.failed, flushed.pending) == (0, 1, 0)
    assert isinstance(flushed.last_error, RetryBudgetExceeded)
    assert isinstance(flushed.last_error.last_error, NetworkError)


def test_timed_out_events_are_reported_by_the_next_flush(collector: FakeCollector, make_client) -> None:
    collector.set_default(Reply.error(503))
    client = make_client(retry_budget=1.0)
    client.track("u", "E")
    early = client.flush(timeout=0.2)
    assert not early and (early.pending, early.failed) == (1, 0) and not early.settled
    assert isinstance(early.last_error, APIError) and early.last_error.status == 503  # the last attempt
    late = client.flush(timeout=5)  # the same event, given up meanwhile
    assert not late and (late.queued, late.failed, late.pending) == (1, 1, 0)
    assert isinstance(late.last_error, RetryBudgetExceeded)
    # The collector is back: what is recorded now is delivered, and the flush says so.
    collector.set_default(Reply())
    client.track("u", "F")
    assert client.flush(timeout=5)


def test_sync_mode_failures_count_too(collector: FakeCollector, make_client) -> None:
    client = make_client(sync_mode=True, write_key="jw_wrong")
    assert not client.track("u", "E")
    flushed = client.flush()
    assert not flushed and (flushed.queued, flushed.failed) == (1, 1)
    assert isinstance(flushed.last_error, APIError) and flushed.last_error.status == 401


async def test_aflush_answers_the_same(collector: FakeCollector, make_client) -> None:
    good = make_client()
    good.track("u", "E")
    assert await good.aflush(timeout=5)
    bad = make_client(write_key="jw_wrong")
    bad.track("u", "E")
    flushed = await bad.aflush(timeout=5)
    assert not flushed and flushed.failed == 1 and isinstance(flushed.last_error, APIError)


def test_shutdown_returns_the_flush_result(collector: FakeCollector, make_client) -> None:
    client = make_client(write_key="jw_wrong")
    client.track("u", "E")
    result = client.shutdown(timeout=5)
    assert not result and result.failed == 1


def test_module_level_flush_without_a_client_is_empty_and_truthy() -> None:
    assert journeys_sdk.default_client is None
    assert journeys_sdk.flush() == FlushResult() and journeys_sdk.flush()


def test_window_boundary_inside_a_batch_is_exact() -> None:
    # Events recorded after a flush began can travel in the same batch as those before it: each flush
    # counts exactly its own, and the buffer keeps no history once the flushes have returned.
    buf = EventBuffer(100, 1 << 20, wake_count=100, wake_bytes=1 << 20)
    for _ in range(3):
        assert buf.put(("track",), 10) is None
    first = buf.begin_flush()
    for _ in range(2):
        assert buf.put(("track",), 10) is None
    second = buf.begin_flush()
    refused = APIError(401, [{"field": "Authorization", "reason": "unknown or revoked key"}])
    buf.settle(5, delivered=0, error=refused)
    a, b = buf.end_flush(first), buf.end_flush(second)
    assert (a.queued, a.failed, a.pending, a.last_error) == (3, 3, 0, refused)
    assert (b.queued, b.failed, b.pending) == (5, 5, 0)  # b began before a was reported: it covers all
    third = buf.begin_flush()
    assert buf.put(("track",), 10) is None
    fourth = buf.begin_flush()
    buf.settle(1, delivered=1)
    c, d = buf.end_flush(third), buf.end_flush(fourth)
    assert c and c.queued == 0
    assert d and (d.queued, d.delivered) == (1, 1)
    assert buf._marks == {}
    for _ in range(1000):  # nobody flushing: nothing accumulates
        buf.put(("track",), 10)
        buf.take(1)
        buf.settle(1, delivered=1)
    assert buf._marks == {}


async def test_a_cancelled_aflush_leaves_nothing_behind(collector: FakeCollector, make_client) -> None:
    collector.set_default(Reply.error(503))
    client = make_client()
    client.track("u", "E")
    task = asyncio.create_task(client.aflush())
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert client._buffer._marks == {}
    collector.set_default(Reply())
    flushed = await client.aflush(timeout=5)
    assert flushed and flushed.delivered == 1  # not reported by the cancelled one
