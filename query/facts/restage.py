"""A rule edit rebuilt from the serving build's inputs: only the customers whose events it stages anew are read.

A rebuild for definitions whose rules changed read every event again (1 M customers, 10 M events: ~20 s of a
~40 s rebuild), though most rule edits restage few events: a touchpoint narrowed to some campaigns, one added
for a new form, the rules put in another order. The inputs a build stores say, per staged event and map, which
rule staged it and the sentiment it gave, and nothing else depends on the rules. So when the segments keep the
same first touch and traits (:attr:`~query.facts.compute.FactsSql.segment_inputs_key`), the new build's
inputs are the serving build's with each rule renumbered to the new number of its touchpoint (numbers follow
touchpoint ids, :attr:`~query.facts.model.MapVersion.rule_numbers`: only a touchpoint added, removed or renamed
moves them), except for the customers with an event that the new rules give another touchpoint or another
sentiment:

1. :attr:`Restaging.scan_sql` — one read of the project's events, both definitions' rules evaluated on the rows
   that may stage otherwise (:func:`_suspects`), lists the ids with such an event (at most ``limit``: past it,
   reading every event costs less than refreshing them, :data:`RESTAGED_PER_EVENT`);
2. :attr:`Restaging.copy_sql` — the serving build's inputs copied into the new build, renumbered
   (:func:`~query.facts.compute.copy_inputs_sql`);
3. the facts folded from those inputs; or, when nothing but the staging changed (no stage, window, segment or
   touchpoint's stage: :attr:`~query.facts.model.Definitions.staging_free_key`), the serving build's facts
   copied, every customer not listed keeping the facts it had (:data:`~query.facts.compute.COPY_FACTS_SQL`);
4. the updater refreshes the listed ids into the new build from all their events, as it does the ids changed
   while a rebuild runs (query/facts/updater.py).

When nothing but the staging changed, nothing is copied: the serving build's facts and inputs are the edit's for
everyone not listed, so the updater computes the listed ids' customers with the new rules into a build of their
own and moves them into the serving build as it relabels it for the edit, the project's polls paused (none
listed: it only relabels it, between two polls), once a second scan (:attr:`Restaging.scan_since_sql`) of the events stamped since the first
began has listed those arrived meanwhile (``StageStateUpdater._relabel_rules``).

Maps are matched by name; a map new in the edit stages anew every event it stages, a touchpoint removed unstages
what it staged (both listed); a map removed makes every event read (it may have kept a message's other copy).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from collections.abc import Callable
from typing import Any

import orjson

from journeys.clickhouse import ClickHouse
from query.facts.compute import COPY_INPUTS_SQL, STAGED_TYPE, FactsSql, copy_inputs_sql
from query.facts.model import Definitions
from query.facts.rule_index import touchpoint_conditions_sql
from query.maps import JourneyMap, Touchpoint
from query.sql import fill

log = logging.getLogger(__name__)
_SORTED = orjson.OPT_SORT_KEYS

#: An edit's scan lists at most one id per this many events of the project, else every event is read. Refreshing
#: an id from all its events cost ~0.23 ms (20 000 scattered ids: 4.6 s; 60 000: 13.0 s) where the copy and the
#: scan save ~1 µs per event against reading them all (10 M events: inputs read in ~20 s, copied in ~4 s, scanned
#: in 1-3 s): the two meet near one id per ~220 events (bench/README.md, "Issue 17, thirteenth session").
RESTAGED_PER_EVENT = 250
#: ... and at least this many, whatever the events: 1 000 ids are refreshed in ~0.3 s, less than reading the
#: 250 000 events a project of that size may have.
RESTAGED_AT_LEAST = 1000


def restaged_limit(events: int) -> int:
    """How many ids a rule edit may stage otherwise in a project of ``events`` events and still be restaged."""
    return max(events // RESTAGED_PER_EVENT, RESTAGED_AT_LEAST)


async def restaged_ids(
    ch: ClickHouse,
    project_id: str,
    restage: Restaging,
    limit_of: Callable[[int], int] = restaged_limit,
    since: datetime | None = None,
) -> set[str] | None:
    """The ids with an event the new rules stage otherwise than the old ones, or ``None`` if there are more than
    ``limit_of(the project's events)`` (reading every event costs less). ``since``: among the events stamped after
    it only (the parts written before are skipped: what arrived since a first scan)."""
    began = time.monotonic()
    _, counted = await ch.query(_EVENTS, {"project_id": project_id})
    limit = limit_of(int(counted[0][0]))
    params = {**restage.params, "project_id": project_id, "limit": limit + 1}
    if since is None:
        _, rows = await ch.query(restage.scan_sql, params)
    else:
        _, rows = await ch.query(restage.scan_since_sql, {**params, "since": since})
    log.info(
        "rule edit of project %s: %s%d ids with events%s staged otherwise (at most %d restaged), scanned in %.1f s",
        project_id,
        "over " if len(rows) > limit else "",
        min(len(rows), limit),
        "" if since is None else f" stamped since {since.isoformat()}",
        limit,
        time.monotonic() - began,
    )
    return None if len(rows) > limit else {r[0] for r in rows}


_EVENTS = "SELECT count() FROM events WHERE project_id = {project_id:String}"

# The ids with an event that the new rules give another touchpoint (or another sentiment) than the serving
# build's rules do, in any map of the new definitions. DISTINCT with a LIMIT stops reading once it has enough.
_SCAN = """
SELECT DISTINCT distinct_id
FROM (
    SELECT distinct_id, [$old_rules] AS old_rules, [$old_sentiments] AS old_sentiments,
           [$new_rules] AS new_rules, [$new_sentiments] AS new_sentiments
    FROM events
    WHERE project_id = {project_id:String} $since AND ($suspects)
)
WHERE $differs
LIMIT {limit:UInt64}
"""


class Restaging:
    """The statements that rebuild ``new`` from the inputs a build of ``old`` stores (module docstring), or
    ``possible`` false when the segments keep other inputs (then every event is read)."""

    def __init__(self, old: Definitions, new: Definitions):
        self.old = FactsSql(old, names="o", rules="old_rules")
        self.new = FactsSql(new, names="n", rules="new_rules")
        # A map removed may have kept a message's other copy (the inputs keep one per message among those some map
        # stages): read every event then, as for a segment that reads other traits.
        removed = {mv.name for mv in old.maps} - {mv.name for mv in new.maps}
        self.possible = bool(new.maps) and not removed and self.old.segment_inputs_key == self.new.segment_inputs_key
        # Every customer whose events stage alike keeps its facts: they are copied, not folded again. And the
        # inputs too, as they are: the same touchpoint ids (the staging-free key keeps them), so the same rule
        # numbers (MapVersion.rule_numbers). With no id listed, the serving build serves the edit as it is.
        self.facts_kept = old.staging_free_key == new.staging_free_key
        self.params = {**self.old.params, **self.new.params}
        old_position = {mv.name: m for m, mv in enumerate(old.maps, start=1)}
        old_maps = {mv.name: mv.compiled.map for mv in old.maps}
        old_ids = [["", *(r.touchpoint.id for r in mv.stored_rules)] for mv in old.maps]
        new_ids = [["", *(r.touchpoint.id for r in mv.stored_rules)] for mv in new.maps]
        self.params["r_old_ids"] = old_ids
        self.params["r_new_ids"] = new_ids
        differs, rules, sentiments, renumbered = [], [], [], []
        for n, mv in enumerate(new.maps, start=1):
            m = old_position.get(mv.name)
            touchpoint = f"{{r_new_ids:Array(Array(String))}}[{n}][new_rules[{n}] + 1]"
            if m is None:
                differs.append(f"new_rules[{n}] > 0")
                rules.append("toUInt16(0)")
                sentiments.append("''")
                continue
            was = f"{{r_old_ids:Array(Array(String))}}[{m}][old_rules[{m}] + 1]"
            differs.append(
                f"{touchpoint} != {was} OR (new_rules[{n}] > 0 AND new_sentiments[{n}] != old_sentiments[{m}])"
            )
            # Old rule number + 1 → the new number of the same touchpoint (0: none, or a touchpoint removed).
            position = {tp: i for i, tp in enumerate(new_ids[n - 1]) if tp}
            renumbered.append([position.get(tp, 0) for tp in old_ids[m - 1]])
            rules.append(f"{{r_renumbered:Array(Array(UInt16))}}[{len(renumbered)}][x.5[{m}] + 1]")
            sentiments.append(f"x.6[{m}]")
        self.params["r_renumbered"] = renumbered
        scan = dict(
            old_rules=self.old._rule_columns or "toUInt16(0)",
            old_sentiments=self.old._sentiment_columns or "''",
            new_rules=self.new._rule_columns,
            new_sentiments=self.new._sentiment_columns,
            differs=" OR ".join(f"({d})" for d in differs),
            suspects=" OR ".join(
                f"({_suspects(old_maps.get(mv.name), mv.compiled.map, n, self.params)})"
                for n, mv in enumerate(new.maps, start=1)
            ),
        )
        self.scan_sql = fill(_SCAN, since="", **scan)
        # The events stamped since a time: the minmax index of inserted_at skips the granules written before (it
        # runs between two polls or with the project's polls paused, StageStateUpdater._relabel_checked)
        self.scan_since_sql = fill(_SCAN, since="AND inserted_at > {since:DateTime64(3, 'UTC')}", **scan)
        # Each staged event with its rules renumbered; one that no map stages any more is left out, as a read of
        # the events leaves it out.
        self._renumbered = (
            f"arrayFilter(x -> arrayExists(r -> r > 0, x.5), arrayMap(x -> CAST(tuple(x.1, x.2, x.3, x.4, "
            f"[{', '.join(rules)}], [{', '.join(sentiments)}]), '{STAGED_TYPE[len('Array(') : -1]}'), $column))"
        )
        # The same maps and touchpoint ids (as every edit whose facts are kept): every number stays what it was.
        self.numbers_kept = [mv.name for mv in old.maps] == [mv.name for mv in new.maps] and all(
            numbers == list(range(len(numbers))) for numbers in renumbered
        )
        self.copy_sql = COPY_INPUTS_SQL if self.numbers_kept else copy_inputs_sql(self.renumbered("staged"))

    def renumbered(self, column: str) -> str:
        """SQL: the staged events in ``column`` (stored for the old definitions) as the new ones store them."""
        return column if self.numbers_kept else fill(self._renumbered, column=column)


def _suspects(old: JourneyMap | None, new: JourneyMap, n: int, params: dict[str, Any]) -> str:
    """SQL: whether an event row may be staged otherwise by ``new`` than by ``old`` (the map of that name before;
    ``None``: none), so that the scan evaluates both maps' rules only on those rows (10 M events: ~2.5 s per map's
    rules). An event none of whose matching touchpoints changed stages alike, as long as the touchpoints it
    matches keep their order: so the rows matching a touchpoint whose rule or sentiment changed (or that is new,
    or gone), and those matching two of the unchanged ones whose order changed."""
    new_conditions, values = touchpoint_conditions_sql(new, prefix=f"sn{n}_")
    params.update(values)
    if old is None:
        return " OR ".join(new_conditions) or "0"
    old_conditions, values = touchpoint_conditions_sql(old, prefix=f"so{n}_")
    params.update(values)

    def staging(touchpoint: Touchpoint) -> bytes:
        # As JSON text: a rule's 1 and true differ (booleans only equal booleans), though Python's == holds.
        return orjson.dumps(touchpoint.model_dump(mode="json", include={"match", "sentiment"}), option=_SORTED)

    was = {tp.id: (i, staging(tp)) for i, tp in enumerate(old.touchpoints)}
    now = {tp.id: (i, staging(tp)) for i, tp in enumerate(new.touchpoints)}
    kept = {tp for tp in now if tp in was and was[tp][1] == now[tp][1]}
    terms = [old_conditions[i] for tp, (i, _) in was.items() if tp not in kept]
    terms += [new_conditions[i] for tp, (i, _) in now.items() if tp not in kept]
    reordered = {a for a in kept for b in kept if (was[a][0] < was[b][0]) != (now[a][0] < now[b][0])}
    if reordered:
        matched = " + ".join(f"toUInt8{new_conditions[now[tp][0]]}" for tp in sorted(reordered))
        terms.append(f"({matched}) >= 2")
    return " OR ".join(terms) or "0"
