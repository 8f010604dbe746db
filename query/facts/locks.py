"""The two PostgreSQL advisory locks around a project's stage facts: one writer at a time, one state per answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

# Writers of stage_facts read a customer's net facts and write the difference; two writers doing that for
# one customer at once would both subtract the same facts. The updater and a forget take this lock (per
# transaction, so a crashed writer never holds it), per project: one project's writes never wait for another's.
_FACTS_LOCK = 0x6A6F7573  # "jous": the advisory lock class; hashtext(project_id) is the object


@asynccontextmanager
async def facts_lock(pg: Any, project_id: str) -> AsyncIterator[None]:
    """Hold the stage-facts writers' lock of ``project_id`` (``pg``: an asyncpg pool or connection; ``None``:
    no lock, for a writer that knows it is alone)."""
    if pg is None:
        yield
        return
    async with pg.acquire() if hasattr(pg, "acquire") else nullcontext(pg) as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _FACTS_LOCK, project_id)
            yield


# A KPI answer is several reads of stage_facts; a write landing between two of them would mix two states
# (a quantile's bin picked from one, its waits read from the other: a KeyError; entered != converted +
# dropped + in progress). So readers of one project's facts share this lock for the length of an answer, and
# a write takes it exclusively for the length of its insert only (the statement that computes a poll's difference
# and inserts it, ~0.2 s for 5 000 customers; merging their new events before it holds nothing): a write waits
# for the answers being computed (~0.1 s), an answer for one insert. Per project (the second
# key is the project's hash), so one project's writes never hold up another's answers. PostgreSQL queues
# lock requests in order, so a steady stream of answers cannot starve the writer.
_FACTS_VIEW_LOCK = 0x6A6F7572  # "jour": the advisory lock class; hashtext(project_id) is the object
LOCK_WAIT_S = 30.0


def lock_pool(stores: Any) -> Any:
    """The connections to hold the facts view lock with (Stores.pg_locks; the main pool where there is none)."""
    return getattr(stores, "pg_locks", None) or stores.pg


@asynccontextmanager
async def _facts_view(pg: Any, project_id: str, mode: str) -> AsyncIterator[None]:
    if pg is None:
        yield
        return
    function = "pg_advisory_xact_lock_shared" if mode == "read" else "pg_advisory_xact_lock"
    # A pool here is Stores.pg_locks: its connections hold this lock and nothing else, so whoever holds one can
    # still take other connections for its reads (a pool shared with those reads ran dry under 9 concurrent
    # answers and hung the service for good). The timeout turns a stall into an error instead of a hang.
    async with pg.acquire(timeout=LOCK_WAIT_S) if hasattr(pg, "acquire") else nullcontext(pg) as conn:
        async with conn.transaction():  # on a caller's connection, a savepoint: held to its transaction's end
            await conn.execute(f"SELECT {function}($1, hashtext($2))", _FACTS_VIEW_LOCK, project_id)
            yield


def facts_change(pg: Any, project_id: str) -> Any:
    """Hold while making a change to ``project_id``'s facts visible (an insert, a build's deletion): it waits
    for the answers being read, and answers wait for it."""
    return _facts_view(pg, project_id, "write")


def consistent_facts(pg: Any, project_id: str) -> Any:
    """Hold while reading one answer's worth of ``project_id``'s facts: no write becomes visible meanwhile
    (``pg``: an asyncpg pool or connection)."""
    return _facts_view(pg, project_id, "read")
