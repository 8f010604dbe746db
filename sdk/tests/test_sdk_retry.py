"""Which failures are retried, how, for how long, and what gets reported."""

from __future__ import annotations

import random
import time

import pytest
from journeys_sdk import APIError, NetworkError, QuarantinedError, RetryBudgetExceeded
from journeys_sdk.errors import is_retryable_status
from journeys_sdk.retry import Backoff, RetryPolicy, parse_retry_after
from sdk_fake_collector import FakeCollector, Reply


def _errors_sink():
    errors: list = []
    return errors, lambda exc, events: errors.append((exc, events))


@pytest.mark.parametrize(
    "failure",
    [
        Reply.error(503),
        Reply.error(500),
        Reply.error(502),
        Reply.error(504),
        Reply.error(408),
        Reply.error(429, retry_after=0),
        Reply(drop="before"),
        Reply(drop="mid"),
    ],
    ids=["503", "500", "502", "504", "408", "429", "drop", "drop-mid-response"],
)
def test_retryable_failures_resend_the_same_message_ids(collector: FakeCollector, make_client, failure: Reply) -> None:
    errors, on_error = _errors_sink()
    client = make_client(on_error=on_error)
    collector.script(failure, failure)
    ids = [client.track("u", "E", {"i": i}).message_id for i in range(5)]
    assert client.flush(timeout=5)
    attempts = collector.requests
    assert len(attempts) == 3
    for req in attempts:
        assert req.ids == ids  # identical messageIds on every attempt
    assert attempts[-1].status == 200
    # The collector de-duplicates by messageId, so reads see each event once
    # even when a dropped response means it stored the batch twice.
    assert set(collector.stored_ids()) == set(ids)
    s = client.stats
    assert (s.sent, s.retries, s.failed) == (5, 2, 0)
    assert errors == []


def test_slow_collector_times_out_and_is_retried(collector: FakeCollector, make_client) -> None:
    client = make_client(timeout=0.2)
    collector.script(Reply(delay=1.0))
    r = client.track("u", "E")
    assert client.flush(timeout=5)
    assert [req.ids for req in collector.requests] == [[r.message_id], [r.message_id]]
    assert client.stats.retries == 1 and client.stats.sent == 1


def test_connection_refused_is_retried(make_client) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    errors, on_error = _errors_sink()
    client = make_client(host=f"http://127.0.0.1:{port}", retry_budget=0.3, on_error=on_error)
    r = client.track("u", "E")
    flushed = client.flush(timeout=5)  # failed, not left pending
    assert not flushed and (flushed.failed, flushed.pending) == (1, 0)
    ((exc, events),) = errors
    assert flushed.last_error is exc
    assert isinstance(exc, RetryBudgetExceeded) and isinstance(exc.last_error, NetworkError)
    assert [e["messageId"] for e in events] == [r.message_id]
    assert client.stats.retries >= 2 and client.stats.failed == 1


def test_retry_after_is_honoured(collector: FakeCollector, make_client) -> None:
    client = make_client()
    collector.script(Reply.error(503, retry_after=0.4), Reply.error(429, retry_after=0.3))
    client.track("u", "E")
    assert client.flush(timeout=5)
    t = [r.at for r in collector.requests]
    assert len(t) == 3
    assert t[1] - t[0] >= 0.38
    assert t[2] - t[1] >= 0.28


def test_retry_after_is_capped(collector: FakeCollector, make_client) -> None:
    client = make_client(max_retry_after=0.2)
    collector.script(Reply.error(503, retry_after=3600))
    client.track("u", "E")
    t0 = time.monotonic()
    assert client.flush(timeout=5)
    assert time.monotonic() - t0 < 1.5
    assert [r.status for r in collector.requests] == [503, 200]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 501, 505])
def test_non_retryable_status_is_reported_with_the_events(collector: FakeCollector, make_client, status: int) -> None:
    errors, on_error = _errors_sink()
    client = make_client(on_error=on_error, upload_size=3, upload_interval=5.0)
    collector.script(Reply.error(status))
    ids = [client.track("u", "E", {"i": i}).message_id for i in range(5)]
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.queued, flushed.delivered, flushed.failed) == (5, 2, 3)
    # First batch refused once and never retried; the next batch is unaffected.
    assert [r.status for r in collector.requests] == [status, 200]
    assert collector.stored_ids() == ids[3:]
    ((exc, events),) = errors
    assert isinstance(exc, APIError) and exc.status == status and not exc.retryable
    assert exc.errors == [{"field": "server", "reason": f"scripted {status}"}]
    assert f"server: scripted {status}" in str(exc)
    assert [e["messageId"] for e in events] == ids[:3]
    assert flushed.last_error is exc
    s = client.stats
    assert (s.sent, s.failed, s.retries) == (2, 3, 0)


def test_wrong_write_key_gets_401_from_the_collector(collector: FakeCollector, make_client) -> None:
    errors, on_error = _errors_sink()
    client = make_client(write_key="wrong", on_error=on_error)
    client.track("u", "E")
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.delivered, flushed.failed) == (0, 1)
    ((exc, _),) = errors
    assert flushed.last_error is exc
    assert isinstance(exc, APIError) and exc.status == 401
    assert exc.errors == [{"field": "Authorization", "reason": "unknown or revoked key"}]
    assert len(collector.requests) == 1


def test_budget_exhaustion(collector: FakeCollector, make_client) -> None:
    errors, on_error = _errors_sink()
    client = make_client(on_error=on_error, retry_budget=0.5, backoff_base=0.05, max_backoff=0.1)
    collector.set_default(Reply.error(503))
    ids = [client.track("u", "E").message_id for _ in range(3)]
    t0 = time.monotonic()
    flushed = client.flush(timeout=5)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 2.0
    ((exc, events),) = errors
    assert not flushed and flushed.failed == 3 and flushed.last_error is exc
    assert isinstance(exc, RetryBudgetExceeded)
    assert isinstance(exc.last_error, APIError) and exc.last_error.status == 503
    assert exc.attempts == len(collector.requests) >= 3
    assert [e["messageId"] for e in events] == ids
    assert all(r.ids == ids for r in collector.requests)
    s = client.stats
    assert (s.sent, s.failed, s.retries) == (0, 3, exc.attempts - 1)


def test_max_retries_caps_attempts(collector: FakeCollector, make_client) -> None:
    client = make_client(max_retries=2)
    collector.set_default(Reply.error(500))
    client.track("u", "E")
    flushed = client.flush(timeout=5)
    assert not flushed and flushed.failed == 1
    assert len(collector.requests) == 3
    assert client.stats.failed == 1


def test_quarantined_events_are_reported_not_retried(collector: FakeCollector, make_client) -> None:
    errors, on_error = _errors_sink()
    client = make_client(on_error=on_error)
    collector.script(Reply(quarantine=(1,)))
    good = client.track("u", "E")
    bad = client.track("u", "E")
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.delivered, flushed.quarantined, flushed.failed) == (2, 1, 0)
    assert len(collector.requests) == 1
    assert collector.stored_ids() == [good.message_id]
    ((exc, events),) = errors
    assert isinstance(exc, QuarantinedError)
    assert exc.items == [(1, [{"field": "", "reason": "scripted quarantine"}])]
    assert [e["messageId"] for e in events] == [bad.message_id]
    assert flushed.last_error is exc
    s = client.stats
    assert (s.sent, s.quarantined, s.failed, s.retries) == (2, 1, 0, 0)


def test_keepalive_connection_is_reused(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_size=1)
    for _ in range(5):
        client.track("u", "E")
    assert client.flush(timeout=5)
    assert len(collector.requests) == 5
    assert client.stats.retries == 0


# -- units ----------------------------------------------------------------------------


def test_status_classification() -> None:
    retryable = {408, 429, 500, 502, 503, 504, 507, 599}
    not_retryable = {400, 401, 403, 404, 409, 413, 422, 501, 505, 302}
    assert all(is_retryable_status(s) for s in retryable)
    assert not any(is_retryable_status(s) for s in not_retryable)


def test_full_jitter_backoff_bounds() -> None:
    policy = RetryPolicy(base=0.1, cap=2.0)
    random.seed(1)
    for n in range(1, 12):
        ceiling = min(2.0, 0.1 * 2 ** (n - 1))
        samples = [policy.backoff(n) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # really spread over the range...
        assert min(samples) < ceiling * 0.2  # ...down to ~zero ("full" jitter)
    assert policy.backoff(1, rand=lambda: 1.0) == pytest.approx(0.1)
    assert policy.backoff(100, rand=lambda: 1.0) == 2.0


def test_budget_is_time_based() -> None:
    now = [0.0]
    b = Backoff(RetryPolicy(budget=10.0, base=1.0, cap=4.0), clock=lambda: now[0])
    delays = []
    while (d := b.next_delay()) is not None:
        delays.append(d)
        now[0] += d + 0.5  # each attempt takes 0.5 s
    assert now[0] <= 10.0 + 0.5 + 1e-9 and len(delays) == b.retries >= 2
    b2 = Backoff(RetryPolicy(budget=10.0), clock=lambda: 0.0)
    assert b2.next_delay(retry_after=11) is None  # would wait past the budget
    assert b2.next_delay(retry_after=5) == 5


def test_parse_retry_after() -> None:
    from email.utils import formatdate

    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=lambda: now) == pytest.approx(7, abs=1)


def test_batch_with_nothing_valid_is_refused_whole(collector: FakeCollector, make_client) -> None:
    # The collector answers 400 with per-event errors when no event in the
    # batch is valid; that is reported once, with the events, and not retried.
    errors, on_error = _errors_sink()
    client = make_client(on_error=on_error)
    collector.script(Reply(quarantine=(0, 1)))
    ids = [client.track("u", "E").message_id for _ in range(2)]
    flushed = client.flush(timeout=5)
    assert not flushed and flushed.failed == 2
    assert [r.status for r in collector.requests] == [400]
    ((exc, events),) = errors
    assert isinstance(exc, APIError) and exc.status == 400
    assert [e["index"] for e in exc.errors] == [0, 1]
    assert [e["messageId"] for e in events] == ids
    assert client.stats.failed == 2 and client.stats.sent == 0
