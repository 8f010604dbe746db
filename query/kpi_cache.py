"""A short-lived cache of KPI answers: many readers of the same KPIs cost one computation per change of the facts.

Why: a dashboard refreshes its KPIs every few seconds per viewer (and a freshness probe polls them), and each
answer costs ClickHouse ~100–200 ms of reads under ingest, reads that compete with the updater keeping the facts
current: in bench/live.py at 5 000 events/s, polling the KPIs back to back doubled the time of each of the
updater's polls. Between two writes of a project's facts the same question has the same answer, but for what the
clock decides (a conversion window closing: dropped, not in progress) and ``as_of``. So an answer is reused only
while all of these hold:

1. no facts write of the project happened in this process since it was computed: the updater counts every
   insert into a serving build, a relabel and a forget (``StageStateUpdater.facts_versions``), and the count is
   part of the key. It is read under the same shared lock as the facts (``consistent_facts``), and a write bumps
   it only after its rows are in, so an answer is never stored under a count newer than the facts it read;
2. the serving build, the definitions it serves and the newest definitions are the same (a switch, a relabel or
   a new version makes another key);
3. it is at most ``JOURNEYS_KPI_CACHE_TTL_S`` old (1 s): what the clock decides shows at most that late.

The ingest position an answer claims (``includes.acknowledged_before``) is read for every request, reused or
not: the updater stores it after a poll's writes, so with the facts unchanged since (1), every event
acknowledged before it is counted in them, as in a new answer.

Only the replica whose updater leads caches: it alone sees every write as it happens, and the others compute
every answer. The key holds how many times this process took or lost the lead (``leader_epoch``): another
replica may have written in between. A customer forgotten through another replica (or by ``journeys customer
delete`` against stores the service does not hold) leaves this one's cached answers within the TTL. Off on a
cluster (``JOURNEYS_CLICKHOUSE_CLUSTER``): a write is in on one replica before the others, and an answer read from
another meanwhile would be reused for the whole TTL. The drill-down (the people behind a number) and
previews are never cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from journeys.metrics import Metrics


class KpiCache:
    """Answers by key, each for ``ttl_s`` at most; the ``max_entries`` used most recently are kept."""

    def __init__(self, ttl_s: float, metrics: Metrics, max_entries: int = 256):
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.max_entries = max_entries
        self._answers: OrderedDict[Hashable, tuple[float, dict[str, Any]]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, key: Hashable) -> dict[str, Any] | None:
        found = self._answers.get(key)
        if found is None or time.monotonic() - found[0] > self.ttl_s:
            self.metrics.kpi_cache.labels("miss").inc()
            return None
        self._answers.move_to_end(key)
        self.metrics.kpi_cache.labels("hit").inc()
        return found[1]

    def put(self, key: Hashable, answer: dict[str, Any]) -> None:
        """Keep ``answer`` under ``key``. Every reader gets the same object: nothing may change it afterwards.
        Answers past the TTL go first, so what is kept is at most what was computed within the last TTL."""
        now = time.monotonic()
        for old in [k for k, (at, _) in self._answers.items() if now - at > self.ttl_s]:
            del self._answers[old]
        self._answers[key] = (now, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
