"""flush(), shutdown(), the atexit hook, and the enqueue-cost budget."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time

from journeys_sdk import APIError, Client, DropReason, ShutdownError, Status
from sdk_fake_collector import FakeCollector, Reply


def test_flush_blocks_until_delivered(collector: FakeCollector, make_client) -> None:
    collector.script(Reply(delay=0.2))
    client = make_client(upload_interval=10.0)
    ids = [client.track("u", "E").message_id for _ in range(10)]
    assert collector.requests == []  # would wait 10 s for the interval without flush
    flushed = client.flush()
    assert flushed and (flushed.queued, flushed.delivered, flushed.failed, flushed.pending) == (10, 10, 0, 0)
    assert collector.stored_ids() == ids  # already acknowledged when flush returned
    assert client.stats.pending == 0 and client.stats.sent == 10


def test_flush_with_nothing_queued_returns_at_once(make_client) -> None:
    client = make_client()
    t0 = time.monotonic()
    assert client.flush(timeout=5)
    assert time.monotonic() - t0 < 0.1


def test_flush_timeout_during_outage(collector: FakeCollector, make_client) -> None:
    collector.set_default(Reply.error(503))
    client = make_client()
    client.track("u", "E")
    t0 = time.monotonic()
    timed_out = client.flush(timeout=0.3)
    assert not timed_out and timed_out.pending == 1 and not timed_out.settled
    assert isinstance(timed_out.last_error, APIError) and timed_out.last_error.status == 503
    assert 0.25 <= time.monotonic() - t0 < 1.0
    collector.set_default(Reply())
    assert client.flush(timeout=5)
    assert client.stats.sent == 1 and client.stats.failed == 0


def test_flush_waits_only_for_events_queued_before_it(collector: FakeCollector, make_client) -> None:
    # Another thread keeps recording; flush must still return.
    client = make_client()
    stop = threading.Event()

    def producer() -> None:
        while not stop.is_set():
            client.track("bg", "E")
            time.sleep(0.0005)

    t = threading.Thread(target=producer)
    t.start()
    try:
        mine = [client.track("me", "E").message_id for _ in range(20)]
        assert client.flush(timeout=5)
        assert set(mine) <= set(collector.stored_ids())
    finally:
        stop.set()
        t.join()


def test_concurrent_flushes(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_interval=10.0)
    ids = [client.track("u", "E").message_id for _ in range(30)]
    results = []
    threads = [threading.Thread(target=lambda: results.append(client.flush(timeout=5))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [bool(r) for r in results] == [True] * 4
    # Each covers what no flush had reported when it began: all 30, or none if another had returned already.
    assert {r.delivered for r in results} <= {0, 30} and max(r.delivered for r in results) == 30
    assert collector.stored_ids() == ids


def test_shutdown_flushes_then_stops(collector: FakeCollector) -> None:
    client = Client(collector.write_key, collector.url, upload_interval=10.0)
    ids = [client.track("u", "E").message_id for _ in range(25)]
    consumer = client._consumer
    assert consumer is not None and consumer.is_alive()
    assert client.shutdown()
    assert collector.stored_ids() == ids
    assert not consumer.is_alive()
    late = client.track("u", "E")
    assert late.status is Status.DROPPED and late.reason is DropReason.SHUTDOWN
    assert client.shutdown()  # idempotent
    after = client.flush(timeout=1)
    assert not after and (after.queued, after.dropped) == (0, 1)  # the late event was not delivered
    assert client.stats.dropped == {DropReason.SHUTDOWN: 1}


def test_context_manager_shuts_down(collector: FakeCollector) -> None:
    with Client(collector.write_key, collector.url, upload_interval=10.0) as client:
        r = client.track("u", "E")
    assert collector.stored_ids() == [r.message_id]
    assert client._consumer is not None and not client._consumer.is_alive()


def test_shutdown_deadline_during_outage_reports_undelivered(collector: FakeCollector) -> None:
    collector.set_default(Reply.error(503))
    errors: list = []
    client = Client(
        collector.write_key,
        collector.url,
        on_error=lambda e, evs: errors.append((e, evs)),
        upload_size=10,
        upload_interval=0.01,
        backoff_base=0.01,
        max_backoff=0.05,
        retry_budget=30.0,
    )
    ids = [client.track("u", "E").message_id for _ in range(25)]
    t0 = time.monotonic()
    assert not client.shutdown(timeout=0.3)
    assert time.monotonic() - t0 < 1.5  # bounded, not the 30 s retry budget
    assert all(isinstance(e, ShutdownError) for e, _ in errors)
    assert sorted(ev["messageId"] for _, evs in errors for ev in evs) == sorted(ids)
    s = client.stats
    assert s.failed == 25 and s.sent == 0 and s.pending == 0


_ATEXIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from journeys_sdk import Client
    client = Client(sys.argv[1], sys.argv[2], upload_interval=30.0, atexit_timeout=float(sys.argv[3]),
                    backoff_base=0.01, max_backoff=0.05)
    ids = [client.track("u", "E", {"i": i}).message_id for i in range(50)]
    print(json.dumps(ids), flush=True)
    # no flush(), no shutdown(): the atexit hook must deliver
    """
)


def test_atexit_hook_delivers(collector: FakeCollector) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _ATEXIT_SCRIPT, collector.write_key, collector.url, "5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout)
    assert collector.stored_ids() == ids


def test_atexit_wait_is_bounded_when_collector_is_down(collector: FakeCollector) -> None:
    collector.set_default(Reply.error(503))
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _ATEXIT_SCRIPT, collector.write_key, collector.url, "0.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 50
    assert elapsed < 5.0  # interpreter start-up + 0.5 s wait, never the retry budget
    assert "not delivered" in out.stderr  # and it says so


def test_enqueue_cost(make_client) -> None:
    # The real target (<= 10 us median) is measured by bench/sdk.py; this is a
    # loose guard against regressions such as encoding on the caller's thread.
    client = make_client(upload_interval=10.0, host="http://127.0.0.1:9")
    props = {"plan": "pro", "amount": 42, "currency": "EUR", "sku": "abc-123"}
    samples = []
    pc = time.perf_counter_ns
    for _ in range(5000):
        t0 = pc()
        client.track("user-1", "Order Completed", props)
        samples.append(pc() - t0)
    median_us = statistics.median(samples) / 1000
    assert median_us < 30, f"median track() {median_us:.1f} us"
    client.shutdown(timeout=0)


def test_env_has_no_third_party_runtime_dependencies() -> None:
    # The SDK imports only the standard library.
    code = (
        "import sys, journeys_sdk; "
        "mods = {m.split('.')[0] for m in sys.modules}; "
        "bad = mods & {'aiohttp', 'requests', 'urllib3', 'dateutil', 'orjson', 'pydantic'}; "
        "print(sorted(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": ""}
    )
    assert out.stdout.strip() == "[]", out.stderr
