"""Threads, os.fork() and asyncio."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import traceback

import pytest
from sdk_fake_collector import FakeCollector, Reply


def test_many_threads_enqueuing_exact_count_arrives(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_size=100)
    per_thread, n_threads = 2500, 8
    ids: list[list[str]] = [[] for _ in range(n_threads)]
    start = threading.Barrier(n_threads)

    def worker(k: int) -> None:
        start.wait()
        out = ids[k]
        for i in range(per_thread):
            r = client.track(f"user-{k}", "E", {"i": i})
            assert r.queued
            out.append(r.message_id)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.flush(timeout=20)
    stored = collector.stored_ids()
    expected = [i for chunk in ids for i in chunk]
    assert len(stored) == len(expected) == per_thread * n_threads
    assert sorted(stored) == sorted(expected)  # every id exactly once
    for k in range(n_threads):  # each thread's events keep their order
        mine = set(ids[k])
        assert [i for i in stored if i in mine] == ids[k]
    s = client.stats
    assert (s.queued, s.sent, s.pending, s.dropped_total) == (20000, 20000, 0, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_fork_child_gets_a_fresh_queue_and_thread(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_interval=30.0, upload_size=1000)  # parent's events stay queued
    parent_ids = [client.track("parent", "E").message_id for _ in range(5)]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            report: dict = {"pending_at_start": client.stats.pending}
            report["ids"] = [client.track("child", "E").message_id for _ in range(7)]
            report["flushed"] = bool(client.flush(timeout=10))
            s = client.stats
            report["stats"] = [s.queued, s.sent, s.pending]
            report["thread_alive"] = client._consumer is not None and client._consumer.is_alive()
            code = 0
        except BaseException:
            report = {"error": traceback.format_exc()}
        finally:
            os.write(write_fd, json.dumps(report).encode())
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        report = json.loads(f.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report

    assert report["pending_at_start"] == 0  # the parent's queue was not inherited
    assert report["flushed"] is True and report["thread_alive"] is True
    assert report["stats"] == [7, 7, 0]
    assert collector.stored_ids() == report["ids"]  # the child sent only its own

    # The parent is unaffected: still its own queue, thread and counters.
    assert client.stats.pending == 5
    assert client.flush(timeout=5)
    stored = collector.stored_ids()
    assert stored == report["ids"] + parent_ids  # each exactly once


async def test_aflush_does_not_block_the_event_loop(collector: FakeCollector, make_client) -> None:
    collector.script(Reply(delay=0.3))
    client = make_client(upload_interval=10.0)
    ids = [client.track("u", "E").message_id for _ in range(10)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    t0 = time.monotonic()
    flushed = await client.aflush(timeout=5)
    assert flushed and flushed.delivered == 10
    waited = time.monotonic() - t0
    task.cancel()
    assert waited >= 0.25
    assert ticks >= 10  # the loop kept running while we waited
    assert collector.stored_ids() == ids


async def test_aflush_timeout_and_cancellation(collector: FakeCollector, make_client) -> None:
    collector.set_default(Reply.error(503))
    client = make_client()
    client.track("u", "E")
    timed_out = await client.aflush(timeout=0.2)
    assert not timed_out and (timed_out.pending, timed_out.delivered) == (1, 0)
    task = asyncio.create_task(client.aflush())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client._buffer._async_waiters == []  # nothing left behind
    collector.set_default(Reply())
    flushed = await client.aflush(timeout=5)
    assert flushed and (flushed.queued, flushed.delivered) == (1, 1)  # the pending event, now delivered


async def test_recording_from_many_coroutines(collector: FakeCollector, make_client) -> None:
    client = make_client(upload_size=50)

    async def session(k: int) -> list[str]:
        out = []
        for i in range(100):
            out.append(client.touchpoint(f"user-{k}", channel="web", action="viewed", properties={"i": i}).message_id)
            if i % 10 == 0:
                await asyncio.sleep(0)
        return out

    chunks = await asyncio.gather(*(session(k) for k in range(20)))
    assert await client.aflush(timeout=10)
    expected = [i for c in chunks for i in c]
    stored = collector.stored_ids()
    assert len(stored) == 2000 and sorted(stored) == sorted(expected)


async def test_track_does_not_block_the_loop_during_an_outage(collector: FakeCollector, make_client) -> None:
    collector.set_default(Reply(delay=0.5))  # slow collector: requests take 0.5 s
    client = make_client(upload_size=10)
    worst = 0.0
    for i in range(500):
        t0 = time.perf_counter()
        assert client.track("u", "E").queued
        worst = max(worst, time.perf_counter() - t0)
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    assert worst < 0.05
    collector.set_default(Reply())
