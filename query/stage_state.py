"""Per-customer journey state for stage KPIs, kept as signed facts in ``stage_facts``.

A KPI call must not rescan every event, nor fold every customer (docs/kpis.md): each stitched customer's
journey through each of the project's maps is condensed into facts — the first entry into every stage and
when they moved on, every transition, sentiment-bearing touchpoints — once per segment key the customer
counts under, and KPIs sum the facts' pre-aggregated projections. ClickHouse computes the facts from the
events (:mod:`query.facts_sql`); :class:`StateWriter` says whose and into which build: every customer of a
project into a new build (:meth:`StateWriter.build_all`), or the customers whose events or ids changed
(:meth:`StateWriter.refresh`), writing only the difference from what the build holds for them. The query
service's :class:`~query.state_updater.StageStateUpdater` decides which customers those are.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import orjson

from journeys import identities
from journeys.clickhouse import ClickHouse
from query.maps import JourneyMap, Segment, Stage
from journeys.migrate import render_clickhouse_sql
from query.facts_sql import EMPTY_INPUTS_SQL, WITHDRAW_SQL, FactsSql
from query.journey import CompiledMap

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
# Part of every build fingerprint: a store written in another format is rebuilt (facts:2: before migration
# 0009 partitioned stage_facts by project and build; facts:3: before migration 0010 kept each customer's
# inputs in stage_inputs).
FACTS_FORMAT = "facts:4"

FACT_COLUMNS = (
    "project_id",
    "map_name",
    "build",
    "customer_id",
    "segment",
    "fact",
    "stage",
    "at",
    "converted",
    "wait_ms",
    "touchpoint",
    "channel",
    "from_stage",
    "move_kind",
    "repeat",
    "sentiment",
    "n",
)

# Writers of stage_facts read a customer's net facts and write the difference; two writers doing that for
# one customer at once would both subtract the same facts. The updater and a forget take this lock (per
# transaction, so a crashed writer never holds it), per project: one project's writes never wait for another's.
_FACTS_LOCK = 0x6A6F7573  # "jous": the advisory lock class; hashtext(project_id) is the object


#: Builds at or above this are previews: never served, deleted once answered.
PREVIEW_BUILDS = 1 << 62
#: A preview older than this is left over from a crash: a rebuild's clean-up takes it.
PREVIEW_LIFETIME_MS = 3_600_000


def preview_build(now_ms: int) -> int:
    """A fresh preview build number; its order says when it began (see :func:`stale_previews_below`)."""
    return PREVIEW_BUILDS + now_ms * 1000 + random.randrange(1000)


def stale_previews_below(now_ms: int) -> int:
    """Preview builds below this number began over :data:`PREVIEW_LIFETIME_MS` ago."""
    return PREVIEW_BUILDS + (now_ms - PREVIEW_LIFETIME_MS) * 1000


_DROP_BUILD_SQL = "ALTER TABLE {{table {name}}} {{on_cluster}} DROP PARTITION ({project}, {build})"
_PROJECT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


async def drop_build(ch: ClickHouse, cluster: str, project_id: str, build: int) -> None:
    """Delete every fact and stored input of one build of a project at once: its partitions (migrations 0009,
    0010). Nothing is rewritten, and answers reading other builds are untouched."""
    # ALTER … DROP PARTITION takes a literal, not a bound parameter: project ids are generated ("p_" + hex).
    if not _PROJECT_ID.match(project_id):
        raise ValueError(f"not a project id: {project_id!r}")
    sql = _DROP_BUILD_SQL.replace("{project}", f"'{project_id}'").replace("{build}", str(int(build)))
    for table in ("stage_facts", "stage_inputs"):
        await ch.command(render_clickhouse_sql(sql.replace("{name}", table), cluster))


async def next_generation(pg: Any) -> int:
    """A write's generation in ``stage_inputs``, taken under the project's facts lock: a later write gets a
    greater one, whichever process makes it (a PostgreSQL sequence, migration 0009; ``pg``: a pool or a
    connection). Without PostgreSQL (``None``: a writer that knows it is alone, as in tests), microseconds."""
    if pg is None:
        return time.time_ns() // 1000
    return int(await pg.fetchval("SELECT nextval('stage_inputs_generation')"))


def conversion_window_ms(stage: Stage) -> int:
    """A stage's conversion window in ms: what "converted" means in the facts and in the KPIs."""
    return int(round(stage.conversion_window_days * DAY_MS))


@dataclass(frozen=True)
class MapVersion:
    """The latest version of one map, compiled for both paths (Python rules and the SQL rule index)."""

    compiled: CompiledMap

    @property
    def name(self) -> str:
        return self.compiled.map.name

    @property
    def version(self) -> int:
        return self.compiled.version

    @cached_property
    def windows_ms(self) -> list[int]:
        """Each stage's conversion window, in stage order."""
        by_id = {s.id: s for s in self.compiled.map.stages}
        return [conversion_window_ms(by_id[s]) for s in self.compiled.order]


@dataclass(frozen=True)
class Definitions:
    """What a project's state rows are computed against: its maps' and segments' latest versions."""

    maps: tuple[MapVersion, ...]
    segments: tuple[Segment, ...]
    fingerprint: str

    @staticmethod
    def of(maps: list[tuple[JourneyMap, int]], segments: list[tuple[Segment, int]]) -> "Definitions":
        maps = sorted(maps, key=lambda mv: mv[0].name)
        segments = sorted(segments, key=lambda sv: sv[0].name)
        fingerprint = ";".join(
            [FACTS_FORMAT] + [f"map:{m.name}:{v}" for m, v in maps] + [f"segment:{s.name}:{v}" for s, v in segments]
        )
        return Definitions(
            tuple(MapVersion(CompiledMap(m, v)) for m, v in maps), tuple(s for s, _ in segments), fingerprint
        )

    @cached_property
    def facts_key(self) -> str:
        """What the facts depend on, and nothing else: two definitions with one key have the same facts, so a
        build computed for one serves the other as it is. Targets, names and descriptions are read from the map
        when an answer is made, never stored in the facts: a target edit needs no recomputation."""
        shown = {
            "format": FACTS_FORMAT,
            "maps": [mv.compiled.map.model_dump(mode="json", exclude=_NOT_IN_FACTS) for mv in self.maps],
            "segments": [s.model_dump(mode="json", exclude={"description"}) for s in self.segments],
        }
        return hashlib.sha256(orjson.dumps(shown, option=orjson.OPT_SORT_KEYS)).hexdigest()


# The parts of a map the facts never read (query/facts_sql.py reads stage ids, order and conversion windows,
# touchpoints, and the map's name).
_NOT_IN_FACTS: Any = {
    "description": True,
    "stages": {"__all__": {"name", "description", "target"}},
    "touchpoints": {"__all__": {"description"}},
}


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
# a write takes it exclusively for the length of its insert only (computing the difference happens before):
# a write waits for the answers being computed (~0.1 s), an answer for one insert. Per project (the second
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


# Every build of a project: those being built too (their inputs are written before their facts).
_BUILDS_SQL = """
SELECT DISTINCT build FROM stage_facts WHERE project_id = {project_id:String} AND build < {previews:UInt64}
UNION DISTINCT
SELECT DISTINCT build FROM stage_inputs WHERE project_id = {project_id:String} AND build < {previews:UInt64}
"""


async def forget_facts(ch: ClickHouse, pg: Any, project_id: str, customers: list[str]) -> int:
    """Withdraw every fact of ``customers`` (all maps and builds): their KPI contributions go at once, and
    their rows go with the next merge (the pairs sum to zero). Their stored inputs are emptied, so that an
    event of theirs arriving later is merged onto nothing."""
    async with facts_lock(pg, project_id):
        _, builds = await ch.query(_BUILDS_SQL, {"project_id": project_id, "previews": PREVIEW_BUILDS})
        for (build,) in builds:
            await ch.execute(
                EMPTY_INPUTS_SQL,
                {
                    "project_id": project_id,
                    "build": build,
                    "customers": customers,
                    "generation": await next_generation(pg),
                },
            )
        rows = await ch.raw_query(WITHDRAW_SQL, {"project_id": project_id, "customers": customers})
        if rows:  # rows in the insert's own format, as a refresh's difference
            async with facts_change(pg, project_id):
                await ch.insert_lines("stage_facts", FACT_COLUMNS, rows)
        return rows.count(b"\n")


# Customers per refresh statement. Reading scattered customers' events costs about the granules their ids
# fall in, which a few thousand random ids already spread over most of the table: fewer, larger statements
# cost hardly more each (clickhouse-connect sends large parameters in the request body, not the URL).
REFRESH_CHUNK = 20_000
# Over HTTP each bound parameter is one form field, which ClickHouse caps (http_max_field_value_size, 128 KiB
# by default): there a chunk's ids take at most this many bytes, so they and the customers and members they
# expand to fit.
HTTP_CHUNK_BYTES = 32 * 1024


def refresh_chunks(ids: list[str], embedded: bool) -> Iterator[list[str]]:
    """``ids`` in the chunks one refresh statement takes (:data:`REFRESH_CHUNK`, :data:`HTTP_CHUNK_BYTES`)."""
    chunk: list[str] = []
    size = 0
    for i in ids:
        cost = len(i.encode()) + 4  # quoted, escaped at most a little, and a comma
        if chunk and (len(chunk) >= REFRESH_CHUNK or (not embedded and size + cost > HTTP_CHUNK_BYTES)):
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += cost
    if chunk:
        yield chunk


class StateWriter:
    """Writes the facts ClickHouse computes (:mod:`query.facts_sql`): a whole project into a new build, or
    the difference for the customers whose events or ids changed.

    Every build but a preview keeps each customer's inputs in ``stage_inputs`` beside its facts, and the
    build's facts are always those of its inputs. Two ways to refresh customers keep it so:
    :meth:`refresh` reads all of their events, stores their inputs and writes what the build lacks (for ids
    whose customer changed, or when nothing is known of what was merged); :meth:`append` merges only the
    rows stamped since the last look onto the stored inputs and writes the facts they add and withdraw: the
    live path, whose cost is what arrived, not the customers' past."""

    def __init__(self, ch: ClickHouse, pg: Any = None, locks: Any = None):
        self.ch = ch
        self.pg = pg
        self.locks = locks or pg  # where the facts view lock is taken (Stores.pg_locks)
        self._sql: dict[tuple[str, str], FactsSql] = {}  # (project, fingerprint) → its statements
        # Told the project after each insert into a serving build (the alert evaluator judges it then): a poll
        # of many customers writes several chunks, and the first ones count in the KPIs before the last.
        self.on_serving_write: Callable[[str], None] | None = None

    def statements(self, project_id: str, definitions: Definitions) -> FactsSql:
        key = (project_id, definitions.fingerprint)  # two projects may have same-named maps with other rules
        found = self._sql.get(key)
        if found is None:
            found = FactsSql(definitions)
            self._sql = {**dict(list(self._sql.items())[-7:]), key: found}  # a few projects' at a time
        return found

    async def build_all(self, project_id: str, definitions: Definitions, build: int, *, inputs: bool = True) -> None:
        """Compute every customer's facts into ``build``, which no answer reads yet and nobody else writes:
        all of it inside ClickHouse. With ``inputs`` (every build but a preview) their inputs are stored too,
        and the facts folded from them."""
        if not definitions.maps:
            return
        sql = self.statements(project_id, definitions)
        params = {**sql.params, "project_id": project_id, "build": build}
        if not inputs:
            await self.ch.execute(sql.insert_all(", ".join(FACT_COLUMNS)), params)
            return
        # Two statements, the events read once: every customer's inputs, then their facts folded from those.
        began = time.monotonic()
        await self.ch.execute(sql.insert_inputs("project"), {**params, "generation": await next_generation(self.pg)})
        stored = time.monotonic()
        await self.ch.execute(sql.insert_all_from_inputs(", ".join(FACT_COLUMNS)), params)
        log.info(
            "build %d of project %s: inputs stored in %.1f s, facts folded from them in %.1f s",
            build,
            project_id,
            stored - began,
            time.monotonic() - stored,
        )

    async def refresh(
        self,
        project_id: str,
        definitions: Definitions,
        build: int,
        touched: set[str],
        *,
        serving: bool = True,
        still_kept: Callable[[], bool] | None = None,
    ) -> int:
        """Rewrite the facts and inputs in ``build`` of every customer that ``touched`` ids belong to, from all
        of their events, and withdraw those of customers that no longer exist (merged into another). Returns the
        number of rows written.

        ``still_kept`` is asked under the writers' lock before each statement: a build retired meanwhile (its
        partition dropped under the same lock) is not written to again."""
        return await self._chunks(project_id, definitions, build, touched, serving, still_kept, self._refresh_locked)

    async def append(
        self,
        project_id: str,
        definitions: Definitions,
        build: int,
        touched: set[str],
        since_ms: int,
        *,
        serving: bool = True,
        still_kept: Callable[[], bool] | None = None,
    ) -> int:
        """Merge the rows of ``touched`` ids stamped after ``since_ms`` onto their customers' inputs in ``build``
        and write the facts that changes. The caller vouches that every other row of theirs is merged already
        and that their customers did not change (else :meth:`refresh`); merging a row twice changes nothing."""

        async def locked(
            project_id: str, definitions: Definitions, build: int, touched: list[str], serving: bool
        ) -> int:
            return await self._append_locked(project_id, definitions, build, touched, since_ms, serving)

        return await self._chunks(project_id, definitions, build, touched, serving, still_kept, locked)

    async def _chunks(
        self,
        project_id: str,
        definitions: Definitions,
        build: int,
        touched: set[str],
        serving: bool,
        still_kept: Callable[[], bool] | None,
        locked: Callable[..., Any],
    ) -> int:
        if not definitions.maps or not touched:
            return 0
        written = 0
        for chunk in refresh_chunks(sorted(touched), self.ch.embedded):
            async with facts_lock(self.pg, project_id):
                if still_kept is not None and not still_kept():
                    break
                written += await locked(project_id, definitions, build, chunk, serving)
        return written

    async def _refresh_locked(
        self, project_id: str, definitions: Definitions, build: int, touched: list[str], serving: bool
    ) -> int:
        current = await identities.current_customers(self.ch, project_id, touched)
        # A merge re-points every member of the old customer, its own id included, so a customer that no
        # longer exists is always among the touched ids: an id whose customer is now someone else. Its facts
        # are not desired any more, so the difference withdraws them, and its inputs are emptied.
        retired = sorted({i for i, c in current.items() if c != i})
        customers = sorted(set(current.values()))
        members = await identities.members_of(self.ch, project_id, customers)
        owned = [(i, c) for c, ids in members.items() for i in ids]
        sql = self.statements(project_id, definitions)
        everyone = sorted(set(customers) | set(retired))
        # Empty inputs first, for every customer and retired id; then, with a greater generation, the inputs of
        # those who still have events. So a customer whose every event is gone (or who no longer exists) keeps
        # empty inputs, not its last ones, and no customer has two rows of one generation.
        emptied = {"project_id": project_id, "build": build, "customers": everyone}
        await self.ch.execute(EMPTY_INPUTS_SQL, {**emptied, "generation": await next_generation(self.pg)})
        params = {
            **sql.params,
            **emptied,
            "generation": await next_generation(self.pg),
            "ids": [i for i, _ in owned],
            "owners": [c for _, c in owned],
        }
        await self.ch.execute(sql.insert_inputs("ids"), params)
        return await self._write_difference(project_id, sql.difference(held=True), params, serving)

    async def _append_locked(
        self, project_id: str, definitions: Definitions, build: int, touched: list[str], since_ms: int, serving: bool
    ) -> int:
        current = await identities.current_customers(self.ch, project_id, touched)
        sql = self.statements(project_id, definitions)
        params = {
            **sql.params,
            "project_id": project_id,
            "build": build,
            "generation": await next_generation(self.pg),
            "ids": touched,
            "owners": [current[i] for i in touched],
            "since": _at(since_ms),
            "customers": sorted(set(current.values())),
        }
        await self.ch.execute(sql.insert_merged(), params)
        return await self._write_difference(project_id, sql.difference(held=False), params, serving)

    async def _write_difference(self, project_id: str, sql: str, params: dict[str, Any], serving: bool) -> int:
        # The difference comes back as rows in the insert's own format: Python never decodes them.
        rows = await self.ch.raw_query(sql, params)
        if not rows:
            return 0
        # A build that does not serve yet is read by no answer: its inserts need not wait for them.
        async with facts_change(self.locks if serving else None, project_id):
            await self.ch.insert_lines("stage_facts", FACT_COLUMNS, rows)
        if serving and self.on_serving_write is not None:
            self.on_serving_write(project_id)
        return rows.count(b"\n")


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)
