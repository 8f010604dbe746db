"""KPI answers reused while nothing changed (query/kpi_cache.py), and never past a change of the facts.

The cache's time limit is raised to 10 minutes here, so an answer reused past a write or a forget would show
for the whole test: each change must count at once instead. Every answer is also checked, by
``Reader.answer``, for what ``includes.acknowledged_before`` promises (read anew for a reused answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from journeys.keys import add_key
from query import definitions
from query.appkeys import KPI_CACHE, STATE_UPDATER
from support import basic, wait_until
from test_kpi_freshness import BASE, Reader, _project


def _hits(query, result: str = "hit") -> float:  # type: ignore[no-untyped-def]
    return query.app[KPI_CACHE].metrics.kpi_cache.labels(result)._value.get()


@pytest.fixture
async def long_lived_cache(query) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    cache, updater = query.app[KPI_CACHE], query.app[STATE_UPDATER]

    async def leads() -> bool:
        return updater.leader

    await wait_until(leads, timeout=30)  # only the leading replica reuses answers
    ttl, cache.ttl_s = cache.ttl_s, 600.0
    try:
        yield
    finally:
        cache.ttl_s = ttl


async def test_answers_are_reused_until_an_event_or_a_forget_changes_the_facts(  # type: ignore[no-untyped-def]
    http, collector, query, stores, long_lived_cache
) -> None:
    project = await _project(stores)
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
    reader = Reader(http, query, project)
    first = await reader.send(collector, "u1")
    await wait_until(lambda: reader.counted(first, 1), timeout=60)

    hits = _hits(query)
    assert (await reader.answer())[1] == (await reader.answer())[1] == 1
    assert _hits(query) > hits  # nothing changed between them: the second one, at least, was reused

    # A new event: counted as soon as the updater writes its facts, not when a reused answer expires.
    second = await reader.send(collector, "u2")
    await wait_until(lambda: reader.counted(second, 2), timeout=30)

    # A forget withdraws u1's facts: the very next answer no longer counts them.
    async with http.delete(query.make_url("/v1/customers/u1"), headers=basic(admin)) as r:
        assert r.status == 200, await r.text()
    reader.acknowledged.clear()  # what was acknowledged before counts one fewer now
    assert (await reader.answer())[1] == 1


async def test_a_rebuild_switching_between_a_polls_two_builds_leaves_no_stale_answer(  # type: ignore[no-untyped-def]
    http, collector, query, stores, long_lived_cache
) -> None:
    """A poll writes a new event into the serving build, then into the build being rebuilt; here the rebuild
    switches in between (as it may: the writers' lock is taken per chunk). Its second write goes to the build
    that now serves: it must count as a serving write (the answers' lock, the count the cache keys on), or an
    answer read between the switch and that write is reused without the event."""
    project = await _project(stores)
    reader = Reader(http, query, project)
    first = await reader.send(collector, "u1")
    await wait_until(lambda: reader.counted(first, 1), timeout=60)
    updater = query.app[STATE_UPDATER]
    writer = updater.writer
    real_refresh, real_append = writer.refresh, writer.append
    new_build: list[int] = []
    old_build_written = asyncio.Event()
    read_between: list[int] = []

    async def refresh(project_id: str, defs: Any, build: int, touched: set[str], **kw: Any) -> int:
        written = await real_refresh(project_id, defs, build, touched, **kw)
        if project_id == project.id and kw.get("serving") is False and not new_build:
            # The rebuild's catch-up, just before its switch: u2 arrives only now, so the next poll writes it.
            new_build.append(build)
            await reader.send(collector, "u2")
            await asyncio.wait_for(old_build_written.wait(), 30)
        return written

    async def append(project_id: str, defs: Any, build: int, touched: set[str], since_ms: int, **kw: Any) -> int:
        if project_id != project.id or not new_build or "u2" not in touched:
            return await real_append(project_id, defs, build, touched, since_ms, **kw)
        if build != new_build[0]:
            written = await real_append(project_id, defs, build, touched, since_ms, **kw)
            old_build_written.set()
            return written

        async def switched() -> bool:
            return updater._serves(project.id, new_build[0])

        await wait_until(switched, timeout=30)
        params = {"map": "funnel", "from": BASE.date().isoformat()}
        async with http.get(query.make_url("/v1/kpis"), params=params, headers=basic(project.read_key)) as r:
            assert r.status == 200, await r.text()
            read_between.append((await r.json())["segments"][0]["stages"][0]["reached"])
        return await real_append(project_id, defs, build, touched, since_ms, **kw)

    writer.refresh, writer.append = refresh, append
    try:
        async with stores.pg.acquire() as conn:
            await definitions.apply(
                conn, project.id, "segment", {"name": "late", "rules": [{"field": "traits.plan", "op": "exists"}]}
            )

        async def u2_counted() -> bool:
            return len(reader.acknowledged) == 2 and await reader.counted(reader.acknowledged[1][0], 2)

        await wait_until(u2_counted, timeout=60)
    finally:
        writer.refresh, writer.append = real_refresh, real_append
    assert read_between == [1]  # the switch did come between the two writes, and was read there


async def test_a_zero_ttl_reuses_nothing(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    project = await _project(stores)
    reader = Reader(http, query, project)
    first = await reader.send(collector, "u1")
    await wait_until(lambda: reader.counted(first, 1), timeout=60)  # answers are computed now, not 503s
    cache = query.app[KPI_CACHE]
    ttl, cache.ttl_s = cache.ttl_s, 0.0
    try:
        await reader.answer()
        hits, misses = _hits(query), _hits(query, "miss")
        await reader.answer()
        await reader.answer()
        assert (_hits(query), _hits(query, "miss")) == (hits, misses)  # not even looked up: the cache is off
    finally:
        cache.ttl_s = ttl


async def test_an_answer_expires_after_the_ttl_and_the_least_recent_go_first() -> None:
    import asyncio

    from journeys.metrics import Metrics
    from query.kpi_cache import KpiCache

    cache = KpiCache(ttl_s=0.5, metrics=Metrics(), max_entries=2)
    cache.put("a", {"n": 1})
    assert cache.get("a") == {"n": 1}
    await asyncio.sleep(0.6)
    assert cache.get("a") is None  # older than the TTL: the clock may have decided something since
    cache.put("a", {"n": 1})
    cache.put("b", {"n": 2})
    assert cache.get("a") == {"n": 1}  # now the most recent of the two
    cache.put("c", {"n": 3})
    assert cache.get("b") is None and cache.get("a") == {"n": 1} and cache.get("c") == {"n": 3}
