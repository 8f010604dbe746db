"""IdentityGraph: stitches anonymous ids and user ids into one customer, in ClickHouse.

Rules (also in docs/identity.md):

* **identify** — an event carrying both ``anonymousId`` A and ``userId`` U links A to U's customer, and so
  every event A ever sent — before the identify too — belongs to U's journey. If A already belongs to a
  *different* customer (a shared device: someone else logged in on it before), A is **not** moved: its
  past stays with the first customer, and U's events stay U's.
* **alias** — ``alias(previousId=P, userId=U)`` merges P's whole customer into U's, even when both are known
  customers. U's customer id survives; every id of P's customer is re-pointed to it.
* An id never linked to anything is its own customer.

Storage follows PostHog's distinct-id → person table: one row per change in ``identities`` (and the
reverse index ``identities_by_customer``), versioned, current value = ``argMax(customer_id, version)``.
Merges re-point every member id, so a lookup is one hop: no join over a link graph at query time.

Links are resolved in spool order by the one inserter of a collector, after the events they came with are
in ClickHouse. With several collectors, two conflicting merges of the same ids at the same moment resolve
last-writer-wins per id (the higher version); that is the documented limit of the scale-out story.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from journeys import identities
from journeys.clickhouse import ClickHouse

IDENTITY_COLUMNS = ("project_id", "distinct_id", "customer_id", "version", "is_deleted")
BY_CUSTOMER_COLUMNS = ("project_id", "customer_id", "distinct_id", "version", "is_deleted")


class IdentityGraph:
    def __init__(self, clickhouse: ClickHouse, cache_size: int = 200_000):
        self._ch = clickhouse
        self._cache: dict[tuple[str, str], str] = {}  # (project, id) → current customer (as last seen/written)
        self._cache_size = cache_size
        self._version = 0

    def _next_version(self) -> int:
        self._version = max(time.time_ns() // 1000, self._version + 1)
        return self._version

    async def resolve(self, links: Iterable[list[Any]]) -> int:
        """Apply ``[project_id, kind, from_id, to_id]`` links in order; return how many ids were re-pointed."""
        by_project: dict[str, list[tuple[str, str, str]]] = {}
        for project_id, kind, source, target in links:
            by_project.setdefault(project_id, []).append((kind, source, target))
        moved = 0
        for project_id, project_links in by_project.items():
            moved += await self._resolve_project(project_id, project_links)
        return moved

    async def _resolve_project(self, project_id: str, links: list[tuple[str, str, str]]) -> int:
        """Two reads, whatever the number of links: the ids' current customers, then the stored members of
        every customer a link could move (links are applied in order, on top of what is stored)."""
        await self._load(project_id, {i for _, a, b in links for i in (a, b)})
        pending: dict[str, str] = {}

        def current(distinct_id: str) -> str:
            return pending.get(distinct_id) or self._cache.get((project_id, distinct_id), distinct_id)

        # A customer a link moves is the current customer of one of the links' ids: either as stored (read
        # above) or as an earlier link of this batch re-pointed it, to the stored customer of another of
        # these ids. So the stored members of those customers are all the links can need; nothing is
        # written until the end, so they stay what is stored throughout.
        if all(current(a) == current(b) for _, a, b in links):
            return 0  # the common case: a visitor's events repeat a link already applied
        candidates = sorted({current(i) for _, a, b in links for i in (a, b)})
        stored = await identities.members_of(self._ch, project_id, candidates)
        for kind, source, target in links:
            source_customer, target_customer = current(source), current(target)
            if source_customer == target_customer:
                continue
            if kind == "identify" and source_customer != source:
                continue  # the anonymous id already belongs to someone else: a shared device, not a merge
            for member in self._members(stored.get(source_customer, {source_customer}), source_customer, pending):
                pending[member] = target_customer
        if pending:
            await self._write(project_id, pending)
        return len(pending)

    async def _load(self, project_id: str, ids: set[str]) -> None:
        missing = [i for i in ids if (project_id, i) not in self._cache]
        if not missing:
            return
        if len(self._cache) + len(missing) > self._cache_size:
            # Clearing forgets this batch's cached ids too: load all of them, or they would resolve to
            # themselves and the shared-device and alias rules would act on wrong customers.
            self._cache.clear()
            missing = list(ids)
        for distinct_id, customer_id in (await identities.current_customers(self._ch, project_id, missing)).items():
            self._cache[(project_id, distinct_id)] = customer_id

    @staticmethod
    def _members(stored: set[str], customer_id: str, pending: dict[str, str]) -> set[str]:
        """Every id that belongs to ``customer_id`` now: its stored members, counting changes not yet written."""
        members = set(stored)
        members -= {i for i in members if i in pending and pending[i] != customer_id}
        members |= {i for i, c in pending.items() if c == customer_id}
        return members

    async def _write(self, project_id: str, changes: dict[str, str]) -> None:
        version = self._next_version()
        forward = b"".join(orjson.dumps([project_id, d, c, version, 0]) + b"\n" for d, c in changes.items())
        reverse = b"".join(orjson.dumps([project_id, c, d, version, 0]) + b"\n" for d, c in changes.items())
        # Reverse index first: a reader that sees the forward row can then always find the member.
        await self._ch.insert_lines("identities_by_customer", BY_CUSTOMER_COLUMNS, reverse)
        await self._ch.insert_lines("identities", IDENTITY_COLUMNS, forward)
        for distinct_id, customer_id in changes.items():
            self._cache[(project_id, distinct_id)] = customer_id
