"""Writes the stage facts ClickHouse computes: a whole project into a new build, or some customers' difference.

ClickHouse computes the facts from the events (:mod:`query.facts.compute`); :class:`StateWriter` says whose
and into which build: every customer of a project into a new build (:meth:`StateWriter.build_all`), or the
customers whose events or ids changed (:meth:`StateWriter.refresh`, :meth:`StateWriter.append`), writing only
the difference from what the build holds for them. The query service's
:class:`~query.facts.updater.StageStateUpdater` decides which customers those are; :func:`forget_facts`
withdraws a forgotten customer's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from journeys import identities
from journeys.clickhouse import ClickHouse
from query.facts.builds import PREVIEW_BUILDS, building
from query.facts.compute import (
    COPY_FACTS_SQL,
    COPY_INPUTS_SQL,
    COPY_MAP_FACTS_SQL,
    EMPTY_INPUTS_SQL,
    INSERT_WITHDRAWAL,
    RECONVERTED_FACTS_SQL,
    TRANSPLANT_FACTS_SQL,
    TRANSPLANT_INPUTS_SQL,
    FactsSql,
)
from query.facts.locks import facts_change, facts_lock
from query.facts.model import FACT_COLUMNS, Definitions
from query.facts.restage import Restaging

log = logging.getLogger(__name__)

#: Whether a write goes to the build that serves KPIs: fixed, or asked under the writers' lock before each chunk
#: (a rebuild's switch, under the same lock, can make a pending build the serving one between two chunks).
Serving = bool | Callable[[], bool]


async def next_generation(pg: Any) -> int:
    """A write's generation in ``stage_inputs``, taken under the project's facts lock: a later write gets a
    greater one, whichever process makes it (a PostgreSQL sequence, migration 0009; ``pg``: a pool or a
    connection). Without PostgreSQL (``None``: a writer that knows it is alone, as in tests), microseconds."""
    if pg is None:
        return time.time_ns() // 1000
    return int(await pg.fetchval("SELECT nextval('stage_inputs_generation')"))


# Every build of a project: those being built too (their inputs are written before their facts).
_BUILDS_SQL = """
SELECT DISTINCT build FROM stage_facts WHERE project_id = {project_id:String} AND build < {previews:UInt64}
UNION DISTINCT
SELECT DISTINCT build FROM stage_inputs WHERE project_id = {project_id:String} AND build < {previews:UInt64}
"""


async def forget_facts(ch: ClickHouse, pg: Any, project_id: str, customers: list[str]) -> None:
    """Withdraw every fact of ``customers`` (all maps and builds): their KPI contributions go at once, and
    their rows go with the next merge (the pairs sum to zero). Their stored inputs are emptied, so that an
    event of theirs arriving later is merged onto nothing.

    A build being computed gets their emptied inputs too, even before it holds a row: it may have read their
    events, or copied their inputs, before they were deleted. Its number and the generation of its own inputs
    are taken under this lock (:func:`~query.facts.builds.begin_build`), so a forget either ended before the
    rebuild began (what it reads or copies is already without them) or finds the build and writes a later
    generation; the rebuild then refreshes every customer whose inputs in it were written after its own (its
    fold may have read before this write), query/facts/updater.py."""
    async with facts_lock(pg, project_id):
        _, found = await ch.query(_BUILDS_SQL, {"project_id": project_id, "previews": PREVIEW_BUILDS})
        builds = {build for (build,) in found}
        computing = None if pg is None else await building(pg, project_id)
        for build in sorted(builds | ({computing} if computing else set())):
            await ch.execute(
                EMPTY_INPUTS_SQL,
                {
                    "project_id": project_id,
                    "build": build,
                    "customers": customers,
                    "generation": await next_generation(pg),
                },
            )
        async with facts_change(pg, project_id):
            await ch.execute(INSERT_WITHDRAWAL, {"project_id": project_id, "customers": customers})


# How many customers a merge stored inputs for (it skips those whose inputs it leaves as they were). By the
# write's generation alone (a sequence: no other write has it): the customers as well cost 40-100 ms more at
# 20 000 customers (bench/facts_poll.py), ClickHouse building the set of their ids again.
_STORED_SQL = """
SELECT count() FROM stage_inputs
WHERE project_id = {project_id:String} AND build = {build:UInt64} AND generation = {generation:UInt64}
"""

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
    """Writes the facts ClickHouse computes (:mod:`query.facts.compute`): a whole project into a new build, or
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
        # Told how long each step of a refresh took (journeys_stage_state_step_seconds): where a poll's time goes
        # under load is what says which statement to make cheaper.
        self.on_step: Callable[[str, float], None] | None = None

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            if self.on_step is not None:
                self.on_step(name, time.monotonic() - began)

    def statements(self, project_id: str, definitions: Definitions) -> FactsSql:
        key = (project_id, definitions.fingerprint)  # two projects may have same-named maps with other rules
        found = self._sql.get(key)
        if found is None:
            found = FactsSql(definitions)
            self._sql = {**dict(list(self._sql.items())[-7:]), key: found}  # a few projects' at a time
        return found

    async def build_all(
        self,
        project_id: str,
        definitions: Definitions,
        build: int,
        *,
        inputs: bool = True,
        inputs_of: int | None = None,
        generation: int | None = None,
        restage: Restaging | None = None,
    ) -> None:
        """Compute every customer's facts into ``build``, which no answer reads yet and nobody else writes:
        all of it inside ClickHouse. With ``inputs`` (every build but a preview) their inputs are stored too,
        and the facts folded from them: read from the events, or with ``inputs_of`` copied from that build,
        whose definitions store the same inputs (:attr:`~query.facts.compute.FactsSql.inputs_key`) and which
        holds them up to date (the caller vouches; the updater then refreshes what it had not merged yet).
        ``generation``: the inputs' (read from the events), taken by the caller before this began; a new one if
        ``None``. ``restage``: the copy is of a build whose rules were others, renumbered to these (the caller
        refreshes the customers whose events these rules stage otherwise, query/facts/restage.py)."""
        if not definitions.maps:
            return
        sql = self.statements(project_id, definitions)
        params = {**sql.params, "project_id": project_id, "build": build}
        if not inputs:
            await self.ch.execute(sql.insert_all(", ".join(FACT_COLUMNS)), params)
            return
        # Two statements, the events read once (or not at all): every customer's inputs, then their facts folded
        # from those.
        began = time.monotonic()
        if inputs_of is None:
            if generation is None:
                generation = await next_generation(self.pg)
            await self.ch.execute(sql.insert_inputs("project"), {**params, "generation": generation})
        else:
            copied = {"project_id": project_id, "build": build, "from_build": inputs_of}
            if restage is None:
                await self.ch.execute(COPY_INPUTS_SQL, copied)
            else:
                await self.ch.execute(restage.copy_sql, {**restage.params, **copied})
        stored = time.monotonic()
        if restage is not None and restage.facts_kept and inputs_of is not None:
            await self.copy_facts_of(project_id, build, inputs_of)
        else:
            await self.ch.execute(
                sql.insert_all_from_inputs(", ".join(FACT_COLUMNS)), {**params, "inputs_build": build}
            )
        log.info(
            "build %d of project %s: inputs %s in %.1f s, facts %s in %.1f s",
            build,
            project_id,
            "read from the events"
            if inputs_of is None
            else f"copied from build {inputs_of}{'' if restage is None or restage.numbers_kept else ', rules renumbered'}",
            stored - began,
            f"copied from build {inputs_of}" if restage is not None and restage.facts_kept else "folded from them",
            time.monotonic() - stored,
        )

    async def fold_inputs_of(
        self,
        project_id: str,
        definitions: Definitions,
        build: int,
        inputs_build: int,
        restage: Restaging | None = None,
        map_name: str | None = None,
    ) -> None:
        """Compute every customer's facts (in ``map_name`` only, if given) into ``build`` from the inputs stored in
        ``inputs_build``, whose definitions have the same :attr:`~query.facts.compute.FactsSql.inputs_key` (a
        preview's), or whose rules ``restage`` renumbers (the caller refreshes the customers it stages otherwise):
        the events are not read."""
        sql = self.statements(project_id, definitions)
        params = {**sql.params, "project_id": project_id, "build": build, "inputs_build": inputs_build}
        staged = "stored" if restage is None else restage.renumbered("stored")
        statement = sql.insert_all_from_inputs(", ".join(FACT_COLUMNS), staged, map_name)
        await self.ch.execute(statement, params if restage is None else {**params, **restage.params})

    async def copy_facts_of(self, project_id: str, build: int, from_build: int, maps: list[str] | None = None) -> None:
        """Copy every fact of ``from_build`` (of ``maps`` only, if given) into ``build``
        (:data:`~query.facts.compute.COPY_FACTS_SQL`)."""
        params = {"project_id": project_id, "build": build, "from_build": from_build}
        if maps is None:
            await self.ch.execute(COPY_FACTS_SQL, params)
        else:
            await self.ch.execute(COPY_MAP_FACTS_SQL, {**params, "maps": maps})

    async def reconvert(
        self, project_id: str, before: Definitions, definitions: Definitions, inputs_build: int, build: int
    ) -> None:
        """Write into ``build`` (a build of its own) what ``definitions``, whose facts differ from ``before``'s by
        the conversion windows alone, change in the facts of every customer with inputs in ``inputs_build`` (the
        serving build, computed for ``before``): the entries whose outcome differs, as they were (``n = -1``) and as
        they are (:meth:`~query.facts.compute.FactsSql.insert_reconverted`). Added to the serving build by
        :meth:`reconverted`."""
        sql = self.statements(project_id, definitions)
        params = {**sql.params, "project_id": project_id, "build": build, "inputs_build": inputs_build}
        with self._step("reconvert"):
            statement = sql.insert_reconverted(", ".join(FACT_COLUMNS), self.statements(project_id, before))
            await self.ch.execute(statement, params)

    async def reconverted(
        self,
        project_id: str,
        before: Definitions,
        definitions: Definitions,
        build: int,
        from_build: int,
        generation: int,
        then: Callable[[], Awaitable[None]],
    ) -> None:
        """Make the facts of ``build`` (the serving build, computed for ``before``) those of ``definitions``: the
        corrections :meth:`reconvert` wrote into ``from_build`` added, but for the customers whose inputs in
        ``build`` were written after ``generation`` (taken before :meth:`reconvert` read them), whose corrections
        are computed again from their inputs now. ``then`` runs under the facts view lock, after the facts and
        before any answer reads them (the relabel). The caller holds the writers' lock, so nothing writes them
        meanwhile."""
        sql = self.statements(project_id, definitions)
        params = {**sql.params, "project_id": project_id, "build": build, "generation": generation}
        again = sql.insert_reconverted(", ".join(FACT_COLUMNS), self.statements(project_id, before), written_since=True)
        with self._step("reconvert"):
            async with facts_change(self.locks, project_id):
                try:
                    await self.ch.execute(again, {**params, "inputs_build": build})
                    await self.ch.execute(RECONVERTED_FACTS_SQL, {**params, "from_build": from_build})
                    await then()
                finally:  # told even if an insert raised: it may have landed
                    if self.on_serving_write is not None:
                        self.on_serving_write(project_id)

    async def transplant(
        self,
        project_id: str,
        build: int,
        from_build: int,
        customers: list[str],
        then: Callable[[], Awaitable[None]],
    ) -> None:
        """Make the inputs and facts of ``customers`` in ``build`` (the serving build) those ``from_build`` holds for
        them (a rule edit's customers whose events it stages otherwise, computed with its rules:
        query/facts/updater.py, ``_relabel_rules``); ``then`` runs under the facts view lock, after the facts and
        before any answer reads them (the relabel that makes the build serve that edit). The caller holds the
        writers' lock. Only the customers the caller computed: a forget writes emptied inputs into the build
        being computed too, of customers whose later events the serving build may hold."""
        params = {
            "project_id": project_id,
            "build": build,
            "from_build": from_build,
            "generation": await next_generation(self.pg),
        }
        chunks = list(refresh_chunks(customers, self.ch.embedded))
        with self._step("transplant"):
            # A preview folding the serving build's inputs (no lock) checks that it still serves the same
            # definitions afterwards (query/kpi_preview.py): KPI answers read only the facts.
            for chunk in chunks:
                await self.ch.execute(TRANSPLANT_INPUTS_SQL, {**params, "customers": chunk})
            async with facts_change(self.locks, project_id):
                try:
                    for chunk in chunks:
                        await self.ch.execute(TRANSPLANT_FACTS_SQL, {**params, "customers": chunk})
                    await then()
                finally:  # told even if the insert raised: it may have landed
                    if self.on_serving_write is not None:
                        self.on_serving_write(project_id)

    async def refresh(
        self,
        project_id: str,
        definitions: Definitions,
        build: int,
        touched: set[str],
        *,
        serving: Serving = True,
        still_kept: Callable[[], bool] | None = None,
    ) -> int:
        """Rewrite the facts and inputs in ``build`` of every customer that ``touched`` ids belong to, from all
        of their events, and withdraw those of customers that no longer exist (merged into another). Returns the
        customers × maps recomputed.

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
        serving: Serving = True,
        still_kept: Callable[[], bool] | None = None,
    ) -> int:
        """Merge the rows of ``touched`` ids stamped after ``since_ms`` onto their customers' inputs in ``build``
        and write the facts that changes. The caller vouches that every other row of theirs is merged already
        and that their customers did not change (else :meth:`refresh`); merging a row twice changes nothing.
        Returns the customers × maps recomputed."""

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
        serving: Serving,
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
                serves = serving() if callable(serving) else serving
                if serves:
                    await self._serves_these(project_id, definitions, build)
                written += await locked(project_id, definitions, build, chunk, serves)
        return written

    async def _serves_these(self, project_id: str, definitions: Definitions, build: int) -> None:
        """Raise if ``build`` serves other definitions than ``definitions`` now (asked under the writers' lock, which
        relabels take): a writer that took the lead while another relabelled it knew the old ones, and writing with
        them would leave those customers' facts stale. The writer's caller retries from what PostgreSQL says."""
        if self.pg is None:
            return
        now = await self.pg.fetchval(
            "SELECT fingerprint FROM stage_state_builds WHERE project_id = $1 AND build = $2", project_id, build
        )
        if now is not None and now != definitions.fingerprint:
            raise RuntimeError(
                f"build {build} of project {project_id} serves {now} now, not {definitions.fingerprint}: not written"
            )

    async def _refresh_locked(
        self, project_id: str, definitions: Definitions, build: int, touched: list[str], serving: bool
    ) -> int:
        with self._step("customers"):
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
        # Empty inputs for every customer and retired id, and with a greater generation the inputs of those who
        # still have events: a customer whose every event is gone (or who no longer exists) keeps empty inputs,
        # not its last ones, and no customer has two rows of one generation. The inputs go in first: a reader of
        # the stored inputs between the two inserts (a preview folding them, query/kpi_preview.py, takes no
        # writers' lock) sees each customer with events as before or as after, never emptied.
        emptied = {"project_id": project_id, "build": build, "customers": everyone}
        with self._step("merge"):
            empty_generation = await next_generation(self.pg)
            params = {
                **sql.params,
                **emptied,
                "generation": await next_generation(self.pg),
                "ids": [i for i, _ in owned],
                "owners": [c for _, c in owned],
            }
            await self.ch.execute(sql.insert_inputs("ids"), params)
            await self.ch.execute(EMPTY_INPUTS_SQL, {**emptied, "generation": empty_generation})
        return await self._write_difference(project_id, sql, True, params, serving, len(everyone))

    async def _append_locked(
        self, project_id: str, definitions: Definitions, build: int, touched: list[str], since_ms: int, serving: bool
    ) -> int:
        with self._step("customers"):
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
        with self._step("merge"):
            await self.ch.execute(sql.insert_merged(), params)
            asked = {name: params[name] for name in ("project_id", "build", "generation")}
            _, stored = await self.ch.query(_STORED_SQL, asked)
        if not stored[0][0]:  # no customer's inputs changed: nothing to fold, no answer to wait for or forget
            return 0
        return await self._write_difference(project_id, sql, False, params, serving, stored[0][0])

    async def _write_difference(
        self, project_id: str, sql: FactsSql, held: bool, params: dict[str, Any], serving: bool, customers: int
    ) -> int:
        """Compute and insert the difference of ``customers`` recomputed in one statement
        (:meth:`FactsSql.insert_difference`): under the facts view lock when the build serves, so no answer reads
        half a poll. Returns customers × maps recomputed (not the rows the insert summed down to: ClickHouse does
        not say over HTTP how many an ``INSERT … SELECT`` wrote)."""
        statement = sql.insert_difference(", ".join(FACT_COLUMNS), held)
        # A build that does not serve yet is read by no answer: its inserts need not wait for them.
        try:
            with self._step("difference"):
                async with facts_change(self.locks if serving else None, project_id):
                    await self.ch.execute(statement, params)
        finally:  # told even if the insert raised: it may have landed (a timeout after the server took it)
            if serving and self.on_serving_write is not None:
                self.on_serving_write(project_id)
        return customers * len(sql.definitions.maps)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)
