"""StageStateUpdater: keeps every customer's stage facts current, a fraction of a second behind ingest.

It watches what ClickHouse has been given since it last looked — new events, and identity changes that
move ids between customers (both carry ``inserted_at``, stamped by ClickHouse) — and updates the facts of
exactly those customers (:class:`query.facts.writer.StateWriter`): new events are merged onto the
customers' stored inputs (``append``: it reads what arrived, not their past); a changed customer, deleted
rows and the first poll after a start or a failure are recomputed from all of their events (``refresh``). When a project's maps or segments
get a new version, it rebuilds that project's facts from all of its events under a new build number, and
only then lets that build serve KPIs (recording the versions it was built for): until then KPIs read the
previous build, and a KPI call never mixes facts computed for different definitions.

**A rebuild stalls nothing** (issue 17). It runs beside the polls, one at a time: ClickHouse computes every
customer's facts into the new build in one statement, while the polls keep the serving build current (with
the definitions it was built for), so the project's KPIs and every other project's stay live. Once the new
build holds everyone, the polls refresh it too, the ids changed since its read began are refreshed into it,
and only then does it serve. When the new definitions store the inputs the serving build stores (a window, a
stage, which stage a touchpoint feeds or a segment's values changed; no rule), the new build starts from a copy
of those instead of reading every event: they hold every row visible when the last completed poll began, so the
ids changed since then are the ones refreshed into it. When only rules changed, it starts from that copy with the
rules renumbered, and the ids a scan finds staged otherwise are refreshed into it too (query/facts/restage.py);
when nothing but the staging changed, the serving build is relabelled instead, with the customers of the ids
the scan finds computed apart and moved into it while the polls leave that project alone for a second or two
(:meth:`StageStateUpdater._relabel_rules`, :meth:`StageStateUpdater._relabel_paused`). When only conversion
windows changed, the serving build is relabelled too, once the entries whose outcome they change are corrected
(computed from its stored inputs beside the polls, then added with that project's polls paused:
:meth:`StageStateUpdater._reconvert`).

Why poll ``inserted_at`` and not hook the collector's inserter: it works the same with several collectors
and with events imported or replayed from a spool, and the collector's hot path stays untouched.

**No change is missed** (issue 18.3). ClickHouse stamps a row when its insert *begins* and the row becomes
visible when the insert's part is committed: a long insert, or one from another collector running at the
same time, makes rows visible after others stamped later. So each poll looks back a margin, and it does not
ask "is this id's newest stamp newer than the one handled?" (a row stamped earlier but visible later hides
behind the newer stamp: that was the hole). It compares, per source table and id, a digest of the rows in
the look-back window (their count and the sum of a hash of each row) with the digest the previous poll
took of the same window. Any row that became visible since — whatever its stamp — changes the digest, and
the id is recomputed by a refresh that starts after the poll saw the row, so the refresh reads it. Every
row a refresh reads is in a polled table (``events``, ``identities``; ``identities_by_customer`` is written
before ``identities``, collector/identity.py): segment facts come off ``events`` itself (query/facts/compute.py),
never off the materialized views' tables, whose parts commit after the events part (tests/segment_facts.py
says why). What remains assumed is the margin: a row visible more than ``margin_s`` (10 s) after its insert
began.

**How fresh the KPIs are** (issue 18.5). Before each poll it reads, in PostgreSQL, every live collector's
watermark (collector/watermark.py: all it acknowledged before that time is in ClickHouse). Once the poll's
refreshes are written, every event acknowledged before the oldest of them is counted: the updater stores
that time with its cursor, KPI answers report it (``includes.acknowledged_before``) and
``journeys_kpi_freshness_seconds`` is now minus it.

One updater works at a time across all query-service replicas (a PostgreSQL advisory lock); the others wait
to take over. The lead is checked on every poll (the session holding the lock is alive); a rebuild under way
survives a failed poll (this process most likely leads again at once) and is cancelled once another replica is
seen to lead; a build begins to serve only if no newer one was begun meanwhile, and a switch under way ends whole
before the lead passes: two rebuilds of a project never switch builds under each other. It never dies: an error
is logged, counted and retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from journeys import identities
from journeys.metrics import Metrics
from journeys.stores import Stores
from query.facts.builds import (
    begin_build,
    current_definitions,
    definitions_of_build,
    drop_build,
    drop_other_builds,
    serving_build,
)
from query.facts.compute import written_since_sql
from query.facts.locks import facts_lock, lock_pool
from query.facts.model import Definitions
from query.facts.restage import Restaging, restaged_ids, restaged_limit
from query.facts.writer import StateWriter, next_generation

log = logging.getLogger(__name__)

_LEADER_LOCK = 0x6A6F75726E7374  # one updater across query-service replicas

# Per project, source table and id: a digest (row count, sum of a hash of each row) of the rows stamped after
# `since`, and the same of those stamped after `next` (the next poll's window: what it compares with). A
# row that became visible in between changes the digest whatever its stamp; a merge that folds rows can
# only make a refresh that was not needed.
CHANGES_SQL = """
SELECT project_id, 0, distinct_id, count(), sum(h), countIf(inserted_at > {next:DateTime64(3, 'UTC')}),
       sumIf(h, inserted_at > {next:DateTime64(3, 'UTC')})
FROM (
    SELECT project_id, distinct_id, inserted_at, cityHash64(message_id, received_at, inserted_at) AS h FROM events
    WHERE inserted_at > {since:DateTime64(3, 'UTC')} AND project_id IN {projects:Array(String)}
)
GROUP BY project_id, distinct_id
UNION ALL
SELECT project_id, 1, distinct_id, count(), sum(h), countIf(inserted_at > {next:DateTime64(3, 'UTC')}),
       sumIf(h, inserted_at > {next:DateTime64(3, 'UTC')})
FROM (
    SELECT project_id, distinct_id, inserted_at, cityHash64(customer_id, version, is_deleted, inserted_at) AS h
    FROM identities
    WHERE inserted_at > {since:DateTime64(3, 'UTC')} AND project_id IN {projects:Array(String)}
)
GROUP BY project_id, distinct_id
"""

# The oldest watermark of the collectors alive (collector/watermark.py): everything they acknowledged before
# it is in ClickHouse. A collector silent past the expiry it wrote is gone (docs/ingest.md, "Watermark").
WATERMARK_SQL = "SELECT min(pending_since) FROM collector_watermarks WHERE expires_at > now()"

# The customers whose inputs in a build were written after a generation: in a new build, by a forget its fold may
# not have seen (query/facts/writer.py, forget_facts), or by a poll that wrote the build it copied meanwhile.
WRITTEN_SINCE_SQL = f"SELECT DISTINCT customer_id FROM ({written_since_sql()})"

# A build serves other definitions as it is (StageStateUpdater._relabel): still the serving one, still for the
# definitions it was checked against, and whole (no change of its facts in place stopped half-way).
_RELABEL_SQL = (
    "UPDATE stage_state_builds SET fingerprint = $4, rebuilding_since = NULL "
    "WHERE project_id = $1 AND build = $2 AND fingerprint = $3 AND changing_to IS NULL RETURNING build"
)
# ... the relabel that ends a change of its facts in place for those definitions (_reconvert, _transplant).
_RELABEL_CHANGED_SQL = (
    "UPDATE stage_state_builds SET fingerprint = $4, rebuilding_since = NULL, changing_to = NULL "
    "WHERE project_id = $1 AND build = $2 AND fingerprint = $3 AND changing_to = $4 RETURNING build"
)
# ... and before the first write of a change of its facts in place that ends in that relabel (_reconvert,
# _transplant): if it stops half-way, the build is known not to be whole (query/facts/builds.py, Build.whole).
_CHANGING_SQL = (
    "UPDATE stage_state_builds SET changing_to = $4 "
    "WHERE project_id = $1 AND build = $2 AND fingerprint = $3 AND changing_to IS NULL RETURNING build"
)

# The ids with a row stamped since a time: what a rebuild's read may have missed.
CHANGED_SINCE_SQL = """
SELECT distinct_id FROM events WHERE project_id = {project_id:String} AND inserted_at > {since:DateTime64(3, 'UTC')}
UNION DISTINCT
SELECT distinct_id FROM identities WHERE project_id = {project_id:String} AND inserted_at > {since:DateTime64(3, 'UTC')}
"""


# The customers with inputs in a build: those a rule edit computed with its rules, and any a forget emptied there
# meanwhile (StageStateUpdater._transplant).
CUSTOMERS_OF_BUILD_SQL = """
SELECT DISTINCT customer_id FROM stage_inputs WHERE project_id = {project_id:String} AND build = {build:UInt64}
"""


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


@dataclass
class _RulesRelabel:
    """A rule edit the serving build is to serve (StageStateUpdater._relabel_rules): the build, the edit's
    definitions and restaging, the server time its scan began, what computed customers to move in, the answer."""

    number: int
    defs: Definitions
    restage: Restaging
    scanned_from_ms: int
    restaged: tuple[int, int, set[str]] | None
    answer: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class StageStateUpdater:
    def __init__(
        self,
        stores: Stores,
        metrics: Metrics,
        *,
        poll_s: float = 0.2,
        margin_s: float = 10.0,
        definitions_every_s: float = 1.0,
    ):
        self.stores = stores
        self.metrics = metrics
        self.poll_s = poll_s
        self.margin_ms = int(margin_s * 1000)
        self.definitions_every_s = definitions_every_s
        self.max_pause_s = 2.0
        self.writer = StateWriter(stores.clickhouse, stores.pg, lock_pool(stores))
        self.writer.on_serving_write = self._changed
        self.writer.on_step = self._took
        # Per project, how many times its serving facts changed in this process, and how many times this process
        # took or lost the lead (another may have written meanwhile): query/kpi_cache.py keys on both.
        self.facts_versions: dict[str, int] = {}
        self.leader_epoch = 0
        self.leader = False
        self.caught_up_at: float | None = None  # monotonic time of the last completed poll
        self.caught_up_from: float | None = None  # ... and when it began: it saw everything inserted before
        # Every event a collector acknowledged before this is counted in the KPIs (the leader's own, or what
        # it stored, read by a replica waiting to take over).
        self.acknowledged_before: datetime | None = None
        self.last_error: str | None = None
        self._definitions: dict[str, Definitions] = {}
        # project → (build, the definitions it was computed for): the serving build, and a new one once it
        # holds every customer (until it serves): the polls keep both current
        self._serving: dict[str, tuple[int, Definitions]] = {}
        self._pending: dict[str, tuple[int, Definitions]] = {}
        self._rebuilds: dict[str, asyncio.Task[None]] = {}
        self._switches: set[asyncio.Future[bool]] = set()  # rebuilds' switches under way (StageStateUpdater.rebuild)
        self._rebuild_after: dict[str, float] = {}  # project → monotonic time before which a failed one waits
        # project → a rule edit the serving build is to serve, relabelled between two polls (_relabel_rules)
        self._rules_relabels: dict[str, _RulesRelabel] = {}
        # Projects the polls leave alone while a rule edit's customers are moved into their serving build
        # (_relabel_paused), each with what it waits for; once resumed, the rows stamped since the first poll that
        # skipped it are merged (_resume_from), or its ids refreshed in full if that poll knew nothing (_resume_full).
        self._pause_asked: dict[str, asyncio.Future[None]] = {}
        self._paused: set[str] = set()
        self._resume_from: dict[str, int] = {}
        self._resume_full: set[str] = set()
        # The last completed poll of this lead: the server time it began (every row visible then is merged into
        # the builds it kept current) and the builds it kept current per project: the serving one and one being
        # built that holds every customer already (once that one serves, its inputs are as current: an edit
        # right after a rebuild copies them too).
        self._polled: tuple[int, dict[str, set[int]]] | None = None
        # How many ids a rule edit may stage otherwise and still be restaged (query/facts/restage.py).
        self.restaged_limit = restaged_limit
        self._one_rebuild = asyncio.Lock()  # a rebuild takes every core ClickHouse has: one at a time
        self._definitions_at = 0.0
        # (project, source table, id) → digest of its rows in the next poll's window, as the last poll saw them
        self._known: dict[tuple[str, int, str], tuple[int, int]] = {}
        self._started = time.time()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Projects whose serving facts changed since the alert evaluator last took them (query/alerts.py), and
        # the event that wakes it: alerts follow the facts, not a clock.
        self.changed_projects: set[str] = set()
        self.facts_changed = asyncio.Event()
        metrics.kpi_freshness.set_function(self.freshness_seconds)

    def freshness_seconds(self) -> float:
        """Now − :attr:`acknowledged_before` (since this process started while nothing is known yet)."""
        at = self.acknowledged_before
        return max(0.0, time.time() - (self._started if at is None else at.timestamp()))

    def take_changes(self) -> set[str]:
        """The projects whose serving facts changed since the last call (and clear them)."""
        changed, self.changed_projects = self.changed_projects, set()
        self.facts_changed.clear()
        return changed

    def _took(self, step: str, seconds: float) -> None:
        self.metrics.stage_state_seconds.labels(step).observe(seconds)

    def _changed(self, project_id: str) -> None:
        self.changed_projects.add(project_id)
        self.facts_versions[project_id] = self.facts_versions.get(project_id, 0) + 1
        self.facts_changed.set()

    def facts_written(self, project_id: str) -> None:
        """Something else in this process changed the project's serving facts (a forget): as if the updater had."""
        self._changed(project_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stage-state-updater")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._cancel_rebuilds()

    async def _switches_ended(self) -> None:
        """Wait for the switches under way (never cancelled: each ends whole, StageStateUpdater.rebuild)."""
        await asyncio.gather(*self._switches, return_exceptions=True)

    async def _cancel_rebuilds(self) -> None:
        """Cancel the rebuilds under way, and wait for a switch one of them began."""
        running = [task for task in self._rebuilds.values() if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self._switches_ended()
        self._rebuilds.clear()

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                async with self.stores.pg.acquire() as conn:
                    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_LOCK):
                        # Another replica leads: it rebuilds what is left to rebuild, and a rebuild still running
                        # here (begun before a failed poll let the lead go) could switch builds under it.
                        await self._cancel_rebuilds()
                        # Waiting to take over: the leader's position, so this replica's gauge tells it too.
                        self.acknowledged_before = await conn.fetchval(
                            "SELECT acknowledged_before FROM stage_state_cursor WHERE id = 1"
                        )
                        await asyncio.sleep(2.0)
                    self.leader = True
                    self.leader_epoch += 1
                    try:
                        await self._loop(conn)
                    finally:
                        self.leader = False
                        self.leader_epoch += 1
                        # A switch under way ends (whole) before the lead can pass; the rebuilds go on until another
                        # replica is seen to lead: after a failed poll this one most likely takes the lead again.
                        await self._switches_ended()
                        await conn.execute("SELECT pg_advisory_unlock($1)", _LEADER_LOCK)
                return  # stopped: stop() cancels the rebuilds
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never dies; see the module docstring
                log.exception("stage-state updater failed; retrying in %.1f s", backoff)
                self.metrics.clickhouse_errors.labels("stage_state").inc()
                self.last_error = f"{exc!r}"[:500]
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _loop(self, leading: Any) -> None:
        """Poll until stopped, while ``leading`` (the connection that holds the lead) is alive: if it is lost,
        PostgreSQL lets the lead go with it, and another replica may take it."""
        pg = self.stores.pg
        row = await pg.fetchrow("SELECT polled_to, acknowledged_before FROM stage_state_cursor WHERE id = 1")
        since_ms: int | None = int(row["polled_to"].timestamp() * 1000) if row else None
        if row is not None:
            self.acknowledged_before = row["acknowledged_before"]
        # Nothing is known of the window yet (first start, or a retry after a failed poll whose refreshes may be
        # half done): every id with a row in it is recomputed once, from all of its events (a failed merge may
        # have stored inputs without writing their facts).
        self._known = {}
        self._merge_unknown = True
        self._polled = None  # another replica may have led meanwhile
        while not self._stop.is_set():
            started = time.monotonic()
            await leading.fetchval("SELECT 1")  # raises once the connection (and with it the lead) is lost
            now_ms = await self._server_now_ms()
            await self._rebuild_changed()
            began = time.monotonic()
            acknowledged = None
            if since_ms is not None:
                # Read before the poll looks: all these collectors had in ClickHouse then, the poll sees.
                acknowledged = await self._acknowledged_position()
                kept: dict[str, set[int]] = {}
                for builds in (self._serving, self._pending):
                    for project_id, (number, _) in builds.items():
                        kept.setdefault(project_id, set()).add(number)
                await self._apply_changes(since_ms - self.margin_ms, now_ms - self.margin_ms)
                if self._resume_from:  # a project paused: what it was sent meanwhile is not merged yet
                    acknowledged = None
                    for project_id in self._resume_from:
                        kept.pop(project_id, None)
                self._polled = (now_ms, kept)
            since_ms = now_ms
            if self._resume_from:  # a project paused: the next lead (or this one, restarted) looks back to it
                polled_to_ms = min(now_ms, min(self._resume_from.values()) + self.margin_ms)
            else:
                polled_to_ms = now_ms
            await pg.execute(
                "INSERT INTO stage_state_cursor (id, polled_to, acknowledged_before) VALUES (1, $1, $2) "
                "ON CONFLICT (id) DO UPDATE SET polled_to = EXCLUDED.polled_to, "
                "acknowledged_before = COALESCE(EXCLUDED.acknowledged_before, stage_state_cursor.acknowledged_before)",
                datetime.fromtimestamp(polled_to_ms / 1000, timezone.utc),
                acknowledged,
            )
            self.caught_up_at = time.monotonic()
            if acknowledged is not None:
                self.acknowledged_before = acknowledged
                self.caught_up_from = started
            self.last_error = None
            # Under heavy ingest a poll (look-back margin included) gets longer: pausing a quarter of what it
            # took leaves ingest its share of the cores (ClickHouse does the poll's work on its own threads)
            # without letting the KPIs fall behind the poll; the cap bounds it after a long one.
            pause = min(max(self.poll_s, (time.monotonic() - began) / 4), self.max_pause_s)
            try:
                await asyncio.wait_for(self._stop.wait(), pause)
            except asyncio.TimeoutError:
                pass

    async def _acknowledged_position(self) -> datetime:
        """Every event acknowledged before the returned time is in ClickHouse now: the oldest watermark of the
        live collectors, or now if none is alive. Its time is the collectors' clocks (the same machine, or
        NTP-synchronised ones)."""
        now = datetime.now(timezone.utc)  # before the read: no collector's watermark is later
        oldest = await self.stores.pg.fetchval(WATERMARK_SQL)
        return now if oldest is None else min(oldest, now)

    async def _server_now_ms(self) -> int:
        _, rows = await self.stores.clickhouse.query("SELECT toUnixTimestamp64Milli(now64(3))")
        return int(rows[0][0])

    async def _project_definitions(self) -> dict[str, Definitions]:
        if time.monotonic() - self._definitions_at >= self.definitions_every_s:
            rows = await self.stores.pg.fetch("SELECT DISTINCT project_id FROM definitions WHERE kind = 'map'")
            self._definitions = {
                r["project_id"]: await current_definitions(self.stores.pg, r["project_id"]) for r in rows
            }
            self._definitions_at = time.monotonic()
        return self._definitions

    async def _rebuild_changed(self) -> None:
        """Start a rebuild for every project whose definitions changed; know which build each one serves."""
        pg = self.stores.pg
        await self._relabel_asked()
        for project_id, asked in list(self._pause_asked.items()):  # between two polls: none is half-way
            del self._pause_asked[project_id]
            if not asked.done():
                self._paused.add(project_id)
                asked.set_result(None)
        for project_id, defs in (await self._project_definitions()).items():
            build = await serving_build(pg, project_id)
            known = self._serving.get(project_id)
            # The fingerprint too: a relabel (this replica's or another's while this one did not lead) keeps the
            # number, and a rule edit relabelled stages new events by its own rules (_relabel_rules).
            if build.number and (
                known is None or (known[0], known[1].fingerprint) != (build.number, build.fingerprint)
            ):
                built = (
                    defs
                    if build.fingerprint == defs.fingerprint
                    else await definitions_of_build(pg, project_id, build.fingerprint)
                )
                if built is not None:  # None: its definitions are gone, so it stays as it is until replaced
                    self._serving[project_id] = (build.number, built)
            running = self._rebuilds.get(project_id)
            if build.fingerprint == defs.fingerprint or (running is not None and not running.done()):
                continue
            serving = self._serving.get(project_id)
            if (
                serving is not None
                and serving[0] == build.number
                and serving[1].facts_key == defs.facts_key
                and build.whole
            ):
                await self._relabel(project_id, build.number, build.fingerprint, defs)
                continue
            if time.monotonic() < self._rebuild_after.get(project_id, 0.0):
                continue
            self._rebuilds[project_id] = asyncio.create_task(
                self._rebuild_task(project_id, defs), name=f"rebuild-{project_id}"
            )

    async def _relabel_rules(
        self, project_id: str, number: int, defs: Definitions, restage: Restaging, scanned_from_ms: int
    ) -> bool:
        """A rule edit that changes nothing but the staging (``restage.facts_kept``) and whose scan found no event
        staged otherwise: the serving build ``number`` holds the inputs the edit gives (rule numbers follow touchpoint
        ids, query/facts/model.py ``MapVersion.rule_numbers``) and their facts, so it serves the edit as it is (a
        rebuild copied both: 1 M customers, ~20 s). Done between two polls (:meth:`_rebuild_changed`), so no poll
        is half-way through writing with the old rules. The polls went on merging events with the old rules after
        the scan began: the events stamped since (less the margin, what may have become visible after the scan
        read) are scanned again first, and if one of them is staged otherwise nothing is relabelled (the rebuild
        goes on). Returns whether it was relabelled. (Some found by the scan: :meth:`_relabel_paused`.)"""
        asked = _RulesRelabel(number, defs, restage, scanned_from_ms, None)
        self._rules_relabels[project_id] = asked
        try:
            return await asyncio.shield(asked.answer)
        finally:
            if self._rules_relabels.get(project_id) is asked:
                del self._rules_relabels[project_id]

    async def _relabel_asked(self) -> None:
        """Relabel the serving builds :meth:`_relabel_rules` asked for, between two polls."""
        for project_id, asked in list(self._rules_relabels.items()):
            del self._rules_relabels[project_id]
            if not asked.answer.done():
                asked.answer.set_result(await self._relabel_checked(project_id, asked))

    async def _relabel_checked(self, project_id: str, asked: _RulesRelabel) -> bool:
        """Relabel the serving build for ``asked`` (:meth:`_relabel_rules`) if it is still the build, with the
        definitions, the scan compared the edit with, and the events stamped since the scan allow it; no poll
        writes the project meanwhile (between two polls, or paused)."""
        try:
            serving = self._serving.get(project_id)
            if serving is not None and (serving[0], serving[1].fingerprint) == (
                asked.number,
                asked.restage.old.definitions.fingerprint,
            ):
                since = _at(asked.scanned_from_ms - self.margin_ms)
                found = await restaged_ids(
                    self.stores.clickhouse, project_id, asked.restage, self.restaged_limit, since
                )
                if found == set() and asked.restaged is None:
                    return await self._relabel(project_id, asked.number, serving[1].fingerprint, asked.defs)
                if found is not None and asked.restaged is not None:
                    return await self._transplant(project_id, asked, serving[1].fingerprint, found)
        except Exception:  # noqa: BLE001 - the rebuild that asked goes on, as if nothing was relabelled
            log.exception("relabelling project %s's build %d failed; it is rebuilt instead", project_id, asked.number)
        return False

    async def _relabel_paused(self, project_id: str, asked: _RulesRelabel) -> bool:
        """:meth:`_relabel_checked` with the project's polls paused (:meth:`_while_paused`): the move of a rule
        edit's customers into the serving build takes a second or two at 1 M customers."""
        return await self._while_paused(project_id, lambda: self._relabel_checked(project_id, asked))

    async def _while_paused(self, project_id: str, work: Callable[[], Awaitable[bool]]) -> bool:
        """Run ``work`` (a change of the serving build that takes a second or more) with the project's polls
        paused (:attr:`_paused`), not between two polls, so the other projects' polls go on meanwhile. The pause
        begins between two polls (no poll is half-way through writing the project), and once it ends the polls
        merge what arrived meanwhile. Shielded, and waited for before the lead passes, as a switch is: cancelled
        half-way, the serving build would hold some of the change and not the relabel that goes with it."""
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pause_asked[project_id] = granted
        try:
            await granted
        except BaseException:  # cancelled, maybe just after the pause was granted: it ends here
            if granted.done() and not granted.cancelled():
                self._paused.discard(project_id)
            raise
        finally:
            if self._pause_asked.get(project_id) is granted:
                del self._pause_asked[project_id]
        done = asyncio.ensure_future(work())
        self._switches.add(done)
        done.add_done_callback(self._switches.discard)
        done.add_done_callback(lambda _: self._paused.discard(project_id))
        return await asyncio.shield(done)

    async def _transplant(self, project_id: str, asked: _RulesRelabel, fingerprint: str, found: set[str]) -> bool:
        """The relabel of a rule edit whose scan found ids staged otherwise (:meth:`_relabel_paused`): their
        customers, computed with the edit's rules into a build of their own (``asked.restaged``: that build, the
        server ms the computation began, the ids) are moved into the serving build as it is relabelled, after
        those that changed since, and ``found`` (the ids with an event stamped since the scan that the edit stages
        otherwise), are computed again."""
        assert asked.restaged is not None
        from_build, refreshed_from_ms, ids = asked.restaged
        ch, pg = self.stores.clickhouse, self.stores.pg
        began = time.monotonic()
        # What changed since their computation began: their customers' rows (a merge of one into another too) and
        # the ids found now, computed again (their customers, from all their events).
        _, rows = await ch.query(
            CHANGED_SINCE_SQL, {"project_id": project_id, "since": _at(refreshed_from_ms - self.margin_ms)}
        )
        changed = {r[0] for r in rows}
        _, rows = await ch.query(CUSTOMERS_OF_BUILD_SQL, {"project_id": project_id, "build": from_build})
        computed = {r[0] for r in rows}
        restaged = ids | found
        current = await identities.current_customers(ch, project_id, sorted(changed | restaged))
        wanted = {current[i] for i in restaged} | computed
        again = (
            found | {i for i in changed if current[i] in wanted} | {i for i in restaged if current[i] not in computed}
        )
        await self.writer.refresh(project_id, asked.defs, from_build, again, serving=False)
        # What those refreshes wrote: each id's customer and the ids retired (merged into another). Not every
        # customer in the build: a forget empties the inputs of its customers there too.
        moved = {current[i] for i in restaged | again} | {i for i in restaged | again if current[i] != i}
        refreshed_s = time.monotonic() - began

        async def relabel() -> None:
            if (
                await pg.fetchval(_RELABEL_CHANGED_SQL, project_id, asked.number, fingerprint, asked.defs.fingerprint)
                is None
            ):
                raise RuntimeError(f"build {asked.number} of project {project_id} changed under the writers' lock")

        async with facts_lock(pg, project_id):
            # Builds switch and relabel under this lock only: still the one the edit is to relabel.
            row = await pg.fetchrow(
                "SELECT build, fingerprint FROM stage_state_builds WHERE project_id = $1", project_id
            )
            if row is None or (row["build"], row["fingerprint"]) != (asked.number, fingerprint):
                return False
            if await pg.fetchval(_CHANGING_SQL, project_id, asked.number, fingerprint, asked.defs.fingerprint) is None:
                return False  # a change in place stopped half-way: rebuilt from the events instead
            await self.writer.transplant(project_id, asked.number, from_build, sorted(moved), relabel)
            await self._serves_relabelled(project_id, asked.number, asked.defs)  # from_build dropped
        log.info(
            "stage facts of project %s serve %s: the serving build, with %d customers computed with its rules "
            "moved in (%d ids computed again, its polls paused, in %.1f s, moved in %.1f s)",
            project_id,
            asked.defs.fingerprint,
            len(moved),
            len(again),
            refreshed_s,
            time.monotonic() - began - refreshed_s,
        )
        return True

    async def _reconvert(
        self, project_id: str, serving: int, before: Definitions, defs: Definitions, number: int, generation: int
    ) -> bool:
        """New definitions whose facts differ from those the serving build holds (computed for ``before``) by the
        conversion windows alone (:attr:`~query.facts.model.Definitions.window_free_key`): the build serves them
        once the entries whose outcome the new windows change are corrected, instead of being rebuilt (1 M
        customers: ~20 s to fold every customer's facts again). The corrections are computed from its stored
        inputs into build ``number`` (begun for this rebuild, after ``generation``), beside the polls; then, the
        project's polls paused, those of the customers written since are computed again, all are added to the
        serving build and it is relabelled, under the facts view lock together. Returns whether it serves them."""
        pg = self.stores.pg
        began = time.monotonic()
        try:
            await self.writer.reconvert(project_id, before, defs, serving, number)
        except Exception:  # noqa: BLE001 - rebuilt instead
            log.exception("correcting project %s's build %d failed; it is rebuilt instead", project_id, serving)
            return False
        computed_s = time.monotonic() - began

        async def relabel() -> None:
            if (
                await pg.fetchval(_RELABEL_CHANGED_SQL, project_id, serving, before.fingerprint, defs.fingerprint)
                is None
            ):
                raise RuntimeError(f"build {serving} of project {project_id} changed under the writers' lock")

        async def reconverted() -> bool:
            try:
                async with facts_lock(pg, project_id):
                    # Builds switch and relabel under this lock only: still the build and definitions corrected.
                    row = await pg.fetchrow(
                        "SELECT build, fingerprint FROM stage_state_builds WHERE project_id = $1", project_id
                    )
                    if row is None or (row["build"], row["fingerprint"]) != (serving, before.fingerprint):
                        return False
                    if (
                        await pg.fetchval(_CHANGING_SQL, project_id, serving, before.fingerprint, defs.fingerprint)
                        is None
                    ):
                        return False  # a change in place stopped half-way: rebuilt from the events instead
                    await self.writer.reconverted(project_id, before, defs, serving, number, generation, relabel)
                    await self._serves_relabelled(project_id, serving, defs)  # build `number` dropped
            except Exception:  # noqa: BLE001 - rebuilt instead (a fresh build: the serving one may be half-corrected)
                log.exception("correcting project %s's build %d failed; it is rebuilt instead", project_id, serving)
                return False
            return True

        if not await self._while_paused(project_id, reconverted):
            return False
        log.info(
            "stage facts of project %s serve %s: the serving build, its entries corrected for the new conversion "
            "windows (computed in %.1f s, its polls paused and the corrections added in %.1f s)",
            project_id,
            defs.fingerprint,
            computed_s,
            time.monotonic() - began - computed_s,
        )
        return True

    async def _serves_relabelled(self, project_id: str, number: int, defs: Definitions) -> None:
        """Build ``number``, just relabelled for ``defs`` (under the writers' lock), serves them: the polls write it
        with them, answers are told, and every other build of the project goes (a rebuild begun, or one that
        failed half-way before)."""
        self._serving[project_id] = (number, defs)
        self._changed(project_id)
        await drop_other_builds(self.stores, project_id, number)

    async def _relabel(self, project_id: str, number: int, fingerprint: str, defs: Definitions) -> bool:
        """New versions whose facts are those the serving build holds (a target, a name or a description
        changed; or rules that stage every event alike, :meth:`_relabel_rules`): the build now serves them as it
        is, at once, instead of being recomputed. Returns whether it does (not if another replica switched)."""
        async with facts_lock(self.stores.pg, project_id):
            relabelled = await self.stores.pg.fetchval(_RELABEL_SQL, project_id, number, fingerprint, defs.fingerprint)
            if relabelled is None:
                return False
            await self._serves_relabelled(project_id, number, defs)
        log.info(
            "stage facts of project %s serve %s as they are (no fact or stored input depends on what changed)",
            project_id,
            defs.fingerprint,
        )
        return True

    async def _rebuild_task(self, project_id: str, defs: Definitions) -> None:
        try:
            async with self._one_rebuild:
                await self.rebuild(project_id, defs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried by a later poll
            log.exception("rebuild of project %s failed; retrying in 10 s", project_id)
            self.metrics.clickhouse_errors.labels("stage_state").inc()
            self.last_error = f"{exc!r}"[:500]
            self._rebuild_after[project_id] = time.monotonic() + 10.0
        finally:
            self._pending.pop(project_id, None)

    async def rebuild(self, project_id: str, defs: Definitions) -> None:
        """Recompute every customer of the project against ``defs`` under a new build; then let it serve KPIs
        and drop the rows of every other build. Until then KPIs read the previous build, kept current."""
        began = time.monotonic()
        ch, pg = self.stores.clickhouse, self.stores.pg
        await self._kept_current_again(project_id, defs)
        # Under the writers' lock: a forget ends before (what the build reads or copies is without its customer)
        # or finds the build and writes a later generation into it (query/facts/writer.py, forget_facts).
        async with facts_lock(pg, project_id):
            number = await begin_build(pg, project_id)
            generation = await next_generation(pg)  # its own inputs'; a later one is someone else's write
            copied = self._current_inputs(project_id, defs)
            serving_now = await serving_build(pg, project_id)
            if copied is not None and (serving_now.number != copied[0] or not serving_now.whole):
                # another replica switched builds meanwhile; or a change of its facts in place stopped half-way
                copied = None
            before = self._serving[project_id][1] if copied is not None else None
        if before is not None and copied is not None and before.window_free_key == defs.window_free_key:
            # Only conversion windows changed: the serving build's facts are corrected where an outcome changes.
            if await self._reconvert(project_id, copied[0], before, defs, number, generation):
                return
            await drop_build(ch, self.stores.settings.clickhouse_cluster, project_id, number)  # rebuilt below
            copied = await self._still_whole(project_id, copied)
        restaged: set[str] = set()
        if copied is not None and copied[2] is not None:
            serving_number, restage = copied[0], copied[2]
            # The copy is current as of a poll that began before now: the scan sees every event it holds.
            scanned_from_ms = await self._server_now_ms()
            found = await restaged_ids(ch, project_id, restage, self.restaged_limit)
            if found is None:  # too many: every event is read
                copied = None
            else:
                restaged = found
            if found == set() and restage.facts_kept:
                if await self._relabel_rules(project_id, serving_number, defs, restage, scanned_from_ms):
                    return
            elif found and restage.facts_kept:
                # Only those ids' customers computed with the new rules, into the build begun, then moved into the
                # serving build as it is relabelled: the inputs and facts of everyone else are the edit's already.
                refreshed_from_ms = await self._server_now_ms()
                await self.writer.refresh(project_id, defs, number, found, serving=False)
                asked = _RulesRelabel(
                    serving_number, defs, restage, scanned_from_ms, (number, refreshed_from_ms, found)
                )
                if await self._relabel_paused(project_id, asked):
                    return
                # Not relabelled: built as below, from an empty build.
                await drop_build(ch, self.stores.settings.clickhouse_cluster, project_id, number)
                copied = await self._still_whole(project_id, copied)
                if copied is None:
                    restaged = set()
        read_from_ms = await self._server_now_ms() if copied is None else copied[1]
        await self.writer.build_all(
            project_id,
            defs,
            number,
            inputs_of=None if copied is None else copied[0],
            generation=generation,
            restage=None if copied is None else copied[2],
        )
        built_s = time.monotonic() - began
        # From here on every poll refreshes this build too; what changed since ClickHouse read the events or
        # since the inputs copied were current (rows visible since a margin before), the customers whose
        # inputs in it were written since it began (forgotten meanwhile) and the ids whose events the new rules
        # stage otherwise than the copied inputs say are refreshed into it once.
        self._pending[project_id] = (number, defs)
        _, rows = await ch.query(
            CHANGED_SINCE_SQL, {"project_id": project_id, "since": _at(read_from_ms - self.margin_ms)}
        )
        _, written = await ch.query(
            WRITTEN_SINCE_SQL, {"project_id": project_id, "build": number, "generation": generation}
        )
        touched = {r[0] for r in rows} | {r[0] for r in written} | restaged
        caught_up = await self.writer.refresh(project_id, defs, number, touched, serving=False)
        # Under the writers' lock: a poll's refresh of the old build either ends before the switch (and its rows
        # go with the partition) or finds the build retired (StateWriter.refresh, still_kept).
        # Its own task, shielded and waited for before the lead passes (_switches_ended): cancelled half-way, the
        # build PostgreSQL serves and the one this process keeps current (and tells the KPI cache and the alerts
        # of) would part. It happens whole or, a newer build begun, not at all.
        switch = asyncio.ensure_future(self._switch(project_id, defs, number))
        self._switches.add(switch)
        switch.add_done_callback(self._switches.discard)
        if not await asyncio.shield(switch):
            log.info("rebuild %d of project %s not switched to: a newer one began meanwhile", number, project_id)
            return
        self.metrics.stage_state_rebuilds.inc()
        self.metrics.stage_state_rows.inc(caught_up)
        log.info(
            "stage facts of project %s rebuilt for %s in %.1f s (%.1f s computing every customer; %d ids changed "
            "or customers forgotten meanwhile, %d customer states recomputed)",
            project_id,
            defs.fingerprint,
            time.monotonic() - began,
            built_s,
            len(touched),
            caught_up,
        )

    async def _kept_current_again(self, project_id: str, defs: Definitions, at_most_s: float = 5.0) -> None:
        """Wait, a few seconds at most, for a completed poll to have kept the project's serving build current, if
        none has since this lead began or since its polls were paused (a change in place just served, the poll that
        resumes them not done yet: an edit right after another). Without one the rebuild cannot start from the
        build's stored inputs and reads every event (1 M customers: a window edit right after another took 48-56 s
        instead of 9)."""
        reusable = self._reusable_inputs(project_id, defs)
        if reusable is None or not (await serving_build(self.stores.pg, project_id)).whole:
            return  # nothing of the serving build would be reused anyway

        deadline = time.monotonic() + at_most_s
        while not self._polled_keeps(project_id, reusable[0]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _still_whole(
        self, project_id: str, copied: tuple[int, int, Restaging | None] | None
    ) -> tuple[int, int, Restaging | None] | None:
        """``copied``, unless a change of that build's facts in place stopped half-way (it may have written some of
        them): then nothing of it is reused, and the rebuild reads the events."""
        if copied is None:
            return None
        now = await serving_build(self.stores.pg, project_id)
        return copied if now.number == copied[0] and now.whole else None

    def _current_inputs(self, project_id: str, defs: Definitions) -> tuple[int, int, Restaging | None] | None:
        """(build, server ms, restaging): the serving build, if the inputs it stores are those ``defs`` store or
        differ only by the rules (then how to restage them, query/facts/restage.py), and when the last completed
        poll that kept it current began: every row visible then is merged into its inputs (a poll merges every
        row visible when it begins; rows it merges later are stamped after that, less the margin). ``None`` if
        there is no such build or poll (a new lead: another replica may have written)."""
        reusable, polled = self._reusable_inputs(project_id, defs), self._polled
        if reusable is None or polled is None or not self._polled_keeps(project_id, reusable[0]):
            return None
        return reusable[0], polled[0], reusable[1]

    def _polled_keeps(self, project_id: str, build: int) -> bool:
        """Whether the last completed poll of this lead kept ``build`` of the project current."""
        return self._polled is not None and build in self._polled[1].get(project_id, set())

    def _reusable_inputs(self, project_id: str, defs: Definitions) -> tuple[int, Restaging | None] | None:
        """(build, restaging): the serving build, if the inputs it stores are those ``defs`` store or differ only
        by the rules (then how to restage them); whether a poll kept them current aside."""
        serving = self._serving.get(project_id)
        if serving is None:
            return None
        statements = self.writer.statements
        if statements(project_id, serving[1]).inputs_key == statements(project_id, defs).inputs_key:
            return serving[0], None
        restage = Restaging(serving[1], defs)
        return (serving[0], restage) if restage.possible else None

    async def _switch(self, project_id: str, defs: Definitions, number: int) -> bool:
        """Let build ``number`` serve ``defs`` and drop every other build, unless a newer build was begun since
        (by whoever leads now, after this process lost the lead): returns whether it switched."""
        pg = self.stores.pg
        async with facts_lock(pg, project_id):
            switched = await pg.fetchval(
                "UPDATE stage_state_builds SET fingerprint = $2, build = $3, built_at = now(), rebuilding_since = NULL, "
                "changing_to = NULL "
                "WHERE project_id = $1 AND last_build = $3 RETURNING build",
                project_id,
                defs.fingerprint,
                number,
            )
            if switched is None:
                return False
            self._serving[project_id] = (number, defs)
            self._pending.pop(project_id, None)
            self._changed(project_id)
            # After every answer still reading the old build (they read the serving build under the shared
            # lock): its rows may go then, without any answer seeing half of them.
            await drop_other_builds(self.stores, project_id, number)
        return True

    def _serves(self, project_id: str, build: int) -> bool:
        found = self._serving.get(project_id)
        return found is not None and found[0] == build

    def _kept(self, project_id: str, build: int) -> bool:
        """Whether ``build`` is still one the polls keep current: the serving one or the one being built."""
        return any(
            t is not None and t[0] == build for t in (self._serving.get(project_id), self._pending.get(project_id))
        )

    async def _apply_changes(self, since_ms: int, next_ms: int) -> None:
        """Recompute every customer with a row that became visible since the last poll (module docstring:
        "No change is missed"): the rows stamped after ``since_ms`` are compared with what the last poll saw of
        them; what the next poll compares with is taken of the rows stamped after ``next_ms``."""
        defs = self._definitions
        if not defs:
            self._known = {}
            self._merge_unknown = True
            return

        # A project resumed after a pause (_relabel_paused): this poll looks back to the first poll that skipped it,
        # for every project (the others' rows merged already change nothing when merged again).
        paused = set(self._paused)  # taken before any await: a pause ends in a callback
        resumed = {p: self._resume_from[p] for p in self._resume_from if p not in paused}
        looked_from_ms = min([since_ms, *resumed.values()])
        params = {"since": _at(looked_from_ms), "next": _at(next_ms), "projects": sorted(defs)}
        began = time.monotonic()
        _, rows = await self.stores.clickhouse.query(CHANGES_SQL, params)
        compared = time.monotonic()
        self._took("changes", compared - began)
        known, following, self._known = self._known, {}, {}
        # Ids with an identity change (their customer may be another now) and ids whose rows left the window
        # (deleted) are refreshed from all their events; ids with new event rows only get those merged on
        # (StateWriter.append), unless nothing is known of what the last poll merged (a start, a failure).
        full: dict[str, set[str]] = {}
        appended: dict[str, set[str]] = {}
        for project_id in paused:  # left alone: what is stamped from here on is merged once it resumes
            self._resume_from.setdefault(project_id, since_ms)
            if self._merge_unknown:
                self._resume_full.add(project_id)
        for project_id in resumed:
            del self._resume_from[project_id]
        for project_id, source, distinct_id, count, digest, next_count, next_digest in rows:
            key = (project_id, source, distinct_id)
            if project_id in paused:
                continue  # its known digests stay as they were (below)
            if known.pop(key, (0, 0)) != (count, digest):
                merge = source == 0 and not self._merge_unknown and project_id not in self._resume_full
                (appended if merge else full).setdefault(project_id, set()).add(distinct_id)
            if next_count:
                following[key] = (next_count, next_digest)
        for key in list(known):
            if key[0] in paused:
                following[key] = known.pop(key)
        for project_id, _, distinct_id in known:  # every row of it left the window: deleted, so recompute too
            full.setdefault(project_id, set()).add(distinct_id)
        self._resume_full -= resumed.keys()
        self._took("compare", time.monotonic() - compared)
        for project_id in full.keys() | appended.keys():
            for target, serving in ((self._serving.get(project_id), True), (self._pending.get(project_id), False)):
                if target is None:
                    continue
                number, built_for = target
                kept = lambda p=project_id, n=number: self._kept(p, n)  # noqa: E731
                # Asked before each chunk, under the writers' lock: a rebuild's switch may make the pending
                # build the serving one between two chunks, and its writes must then be seen as serving ones.
                serves = lambda p=project_id, n=number: self._serves(p, n)  # noqa: E731
                written = await self.writer.refresh(
                    project_id, built_for, number, full.get(project_id, set()), serving=serves, still_kept=kept
                )
                written += await self.writer.append(
                    project_id,
                    built_for,
                    number,
                    appended.get(project_id, set()),
                    looked_from_ms,
                    serving=serves,
                    still_kept=kept,
                )
                self.metrics.stage_state_rows.inc(written)
        self._merge_unknown = False
        # Only now, every refresh written: after a failure the retry starts from nothing known (see _loop).
        self._known = following
