"""Stage facts computed inside ClickHouse: one SQL statement from events to the rows of ``stage_facts``.

The facts of a customer and map (docs/kpis.md; their shape in query/facts/model.py) follow from the
customer's staged touchpoints in journey order. Computing them in Python meant shipping every staged event
to the serving process and folding it on the GIL (~2.4k customers/s: 400 s for a rebuild at 1 M customers,
and the collector starved meanwhile, issue 17). Here ClickHouse does all of it, vectorized and on its own
threads, from one read of the events; Python only says which customers and which build.

1. **Customers** — each event's customer: for a whole project the current mapping in ``identities``
   (``argMax(customer_id, version)``; a deleted mapping or none: the id is its own customer, as
   :func:`journeys.identities.current_customers`), for a refresh the ids and owners the caller resolved.
2. **Staged events** — each event's first matching rule per map (:func:`query.facts.rule_index.rule_index_sql`, proven
   equal to ``CompiledMap.assign``; numbered by touchpoint id, ``MapVersion.rule_numbers``) and the sentiment
   that rule gives it; only events some map stages; each
   message once per customer: the copy received last, equal receipts the earlier time
   (:func:`query.reads.one_copy_each`); sorted in journey order (time, receipt, message id).
3. **Facts** — per customer and map, folded with array functions: a transition wherever the stage changes
   (``first``/``forward``/``skip``/``regression``; ``repeat`` when the stage was visited before), an entry at
   each stage's first transition (moved on: the first later transition into a later stage; converted when
   that is within the stage's window), a feeling for each touchpoint with a sentiment.
4. **Segment keys** — ``''`` and every segment whose rules hold for the customer's traits (per trait the
   newest ``identify`` across the customer's ids, equal times the greater value) and first touch (the
   customer's earliest event by time, then id, receipt, message id): the rules of tests/segment_facts.py
   and ``query.maps.segment_matches``.

Each fact is one row with ``n = 1`` and the customer's segment keys (``segments``: ``''`` first, then the
segments in name order, joined by ``','``; one row, not one per key: 7.2 M rows instead of 15.9 M at 1 M
customers in bench/query.py); identical facts of one customer are several rows whose ``n`` add up, which is
all a reader of ``stage_facts`` sees (``sum(n)``). A refresh subtracts, in the same statement, what the build
holds for its customers (:meth:`FactsSql.insert_difference`): only differences are written, summed by the
insert itself.

tests/test_facts_sql.py proves these rows equal to the Python fold of the definitions (tests/facts_oracle.py)
on generated journeys; the KPI oracle tests (tests/test_kpis.py) run on top of them unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import date
from functools import cached_property
from typing import Any

import orjson

from query.maps import LIST_OPERATORS, UNARY_OPERATORS, SENTIMENTS, Rule, Segment, SentimentFromProperty
from query.facts.model import FACT_COLUMNS, KEY_SEPARATOR
from query.facts.rule_index import holds_sql, SqlParams, property_condition, rule_index_sql
from query.sql import fill

# On a cluster every table named here is a Distributed table: the identity mapping joined to the events is
# read once, on the node that runs the statement, and sent to the shards (GLOBAL), not read by every shard
# from every shard (which ClickHouse refuses by default). Nothing changes on one node.
CLUSTER_SETTINGS = "distributed_product_mode = 'global'"

FACT_TUPLE = (
    "Tuple(fact String, stage UInt16, at Int64, converted UInt8, wait_ms UInt64, touchpoint String, channel String, "
    "from_stage Int16, move_kind String, repeat UInt8, sentiment String)"
)
FACT_IDENTITY = (
    "project_id, map_name, build, customer_id, segments, fact, stage, at, converted, wait_ms, touchpoint, channel, "
    "from_stage, move_kind, repeat, sentiment"
)

# The statements are string.Template texts, filled in by query.sql.fill: `$name` is SQL text chosen here (a
# sub-statement, a fragment, numbers and fixed words as literals), `{name:Type}` a value clickhouse-connect
# binds (among them every name the definitions' authors wrote: FactsSql.params).

# The rows of stage_facts (FACT_IDENTITY, n) from each customer's facts, each with the customer's segment keys;
# n is the customer's sign (1, or -1 for the facts a customer's inputs held before, which a difference withdraws).
_ROWS = """
SELECT {project_id:String} AS project_id, $map_names[map_n] AS map_name, {build:UInt64} AS build,
       customer AS customer_id, keys AS segments, f.fact AS fact, f.stage AS stage,
       fromUnixTimestamp64Milli(f.at, 'UTC') AS at, f.converted AS converted, f.wait_ms AS wait_ms,
       f.touchpoint AS touchpoint, f.channel AS channel, f.from_stage AS from_stage, f.move_kind AS move_kind,
       f.repeat AS repeat, f.sentiment AS sentiment, toInt64(sign) AS n
FROM ($per_customer)
ARRAY JOIN facts AS f
"""

# Per customer and map: the staged events ev (journey order) and their transitions, where the stage changes
# (tpos: their places in ev; ts, tt: their stages and times; occ: the how-manieth visit of that stage each is;
# nx: the first later transition into a later stage, 0 for none: where an entry moved on).
_TRANSITIONS = """
SELECT customer, sign, map_n, keys, ev, tpos, ts, tt, arrayEnumerateUniq(ts) AS occ,
       arrayMap(j -> arrayFirstIndex((s, i) -> i > j AND s > ts[j], ts, arrayEnumerate(ts)), arrayEnumerate(ts)) AS nx
FROM (
    SELECT customer, sign, map_n, keys, ev, tpos, arrayMap(i -> st[i], tpos) AS ts, arrayMap(i -> ev[i].1, tpos) AS tt
    FROM (
        SELECT customer, sign, map_n, keys, ev, st,
               -- a transition wherever the stage changes
               arrayFilter(i -> i = 1 OR st[i] != st[i - 1], arrayEnumerate(st)) AS tpos
        FROM (
            SELECT customer, sign, map_n, keys, ev, arrayMap(e -> $stages[map_n][e.4], ev) AS st
            FROM (
                -- this map's touchpoints: (time, receipt, message id, rule, channel, sentiment)
                SELECT customer, sign, map_n, keys,
                       arrayMap(x -> (x.1, x.2, x.3, x.5[map_n], x.4, x.6[map_n]),
                                arrayFilter(x -> x.5[map_n] > 0, staged)) AS ev
                FROM ($customers)
                ARRAY JOIN range(1, $maps + 1) AS map_n
                WHERE length(ev) > 0$of_map
            )
        )
    )
)
"""

# The entry into the stage of transition j (its first visit): converted when it moved on within the window
# `$window` (stage index → ms) gives it.
_ENTRY = """CAST(tuple(
        'entry', ts[j], tt[j],
        toUInt8(nx[j] > 0 AND tt[nx[j]] - tt[j] <= $window[ts[j] + 1]),
        toUInt64(if(nx[j] > 0 AND tt[nx[j]] - tt[j] <= $window[ts[j] + 1], tt[nx[j]] - tt[j], 0)),
        $touchpoints[map_n][ev[tpos[j]].4], ev[tpos[j]].5, -1, 'none', 0, 'none'), '$fact')"""

# Per customer and map: the staged events ev (journey order) → entries, moves, feelings.
_PER_CUSTOMER = """
SELECT customer, sign, map_n, keys, arrayConcat(
    arrayMap(j -> $entry, arrayFilter(j -> occ[j] = 1, arrayEnumerate(ts))),
    arrayMap(j -> CAST(tuple(
        'move', ts[j], tt[j], 0, 0, '', '', if(j = 1, -1, toInt16(ts[j - 1])),
        multiIf(j = 1, 'first', ts[j] = ts[j - 1] + 1, 'forward', ts[j] > ts[j - 1], 'skip', 'regression'),
        toUInt8(occ[j] > 1), 'none'), '$fact'),
        arrayEnumerate(ts)),
    arrayMap(e -> CAST(tuple('feeling', $stages[map_n][e.4], e.1, 0, 0, '', '', -1, 'none', 0, e.6), '$fact'),
        arrayFilter(e -> e.6 IN $sentiments, ev))
) AS facts
FROM ($transitions)
"""

# Per customer and map: the entries whose outcome other windows change (`$before` → `$windows`, stage index → ms,
# per map), as they were (sign -1) and as they are now (sign 1). Nothing else in the facts reads a window, so
# with these rows added a build's facts are the new windows' (StageStateUpdater._reconvert).
# The segment keys are computed for those customers only (`keys` carries their first touch and traits until then).
_FLIPPED = """
SELECT customer, toInt8(sign * flip) AS sign, map_n, $keys AS keys, arrayMap(j -> $entry, flipped) AS facts
FROM (
    SELECT customer, sign, map_n, keys.1 AS touch, keys.2 AS traits, ev, tpos, ts, tt, nx, flipped
    FROM (
        SELECT customer, sign, map_n, keys, ev, tpos, ts, tt, nx,
               arrayFilter(j -> occ[j] = 1 AND nx[j] > 0
                                AND (tt[nx[j]] - tt[j] <= $before[map_n][ts[j] + 1])
                                    != (tt[nx[j]] - tt[j] <= $windows[map_n][ts[j] + 1]),
                           arrayEnumerate(ts)) AS flipped
        FROM ($transitions)
    )
    WHERE notEmpty(flipped)
)
ARRAY JOIN [toInt8(-1), toInt8(1)] AS flip
"""

#: A customer's inputs: everything its facts are folded from (stored per build in ``stage_inputs``).
STAGED_TYPE = "Array(Tuple(Int64, Int64, String, String, Array(UInt16), Array(String)))"
#: The first touch: (absent, time, id, receipt, message id, channel, utm source, medium, campaign, day); the
#: smallest is the first, and an absent one (1) is greater than any present one.
TOUCH_TYPE = "Tuple(UInt8, Int64, String, Int64, String, String, String, String, String, Date)"
#: Per trait a segment reads: (set by some identify, the newest one's time, its raw JSON value); the greatest
#: is the newest (equal times: the greater value), and one never set (0, 0, '') is less than any set one.
TRAITS_TYPE = "Array(Tuple(UInt8, Int64, String))"
_NO_TOUCH = f"CAST(tuple(toUInt8(1), toInt64(0), '', toInt64(0), '', '', '', '', '', toDate(0)), '{TOUCH_TYPE}')"
_NO_STAGED = f"CAST([], '{STAGED_TYPE}')"
_NO_TRAITS = f"CAST([], '{TRAITS_TYPE}')"
_NO_INPUTS = f"{_NO_STAGED}, {_NO_TOUCH}, {_NO_TRAITS}"  # (staged, touch, traits) holding nothing

# Each event row the statement reads: its staging rules per map and the sentiment each gives it.
_EVENT_ROWS = """
SELECT distinct_id, message_id, timestamp, received_at, type, traits, channel, utm_source, utm_medium,
       utm_campaign, toUnixTimestamp64Milli(timestamp) AS t, toUnixTimestamp64Milli(received_at) AS r,
       toString(channel) AS ch, [$rule_columns] AS rules, [$sentiment_columns] AS sentiments
FROM events
WHERE project_id = {project_id:String} $row_filter
"""

# Per customer, from one read of its event rows: every copy of each staged event (raw), the first touch,
# and per trait the newest identify that sets it. Each is a merge of its rows that gives the same from any
# split of them, a row counted twice included: what lets new rows be merged onto stored inputs.
_AGGREGATES = """
SELECT $customer AS customer,
       groupArrayIf(tuple(t, r, e.message_id, ch, rules, sentiments), arrayExists(x -> x > 0, rules)) AS raw,
       $touch AS touch, $traits AS traits
FROM ($event_rows) AS e
$owners
GROUP BY customer
"""

# The inputs of each customer: each message once (the copy received last; equal receipts: the earlier
# time), in journey order ((time, receipt, message id) first: sorting the tuples is journey order).
_INPUTS = """
SELECT customer, arraySort(arrayFilter((x, i) -> i = 1 OR x.3 != by_message[i - 1].3, by_message,
                                       arrayEnumerate(by_message))) AS staged, touch, traits$carried
FROM (SELECT *, arraySort(x -> (x.3, -x.2, x.1), raw) AS by_message FROM ($aggregates))
"""

# New rows merged onto what a customer's stored inputs hold (none stored: a customer whose every row is new).
_MERGED = """
SELECT n.customer AS customer,
       if(o.found = 1, arrayConcat(o.staged, n.raw), n.raw) AS raw,
       if(o.found = 1 AND o.touch < n.touch, o.touch, n.touch) AS touch,
       if(o.found = 1 AND length(o.traits) = length(n.traits), arrayMap((a, b) -> if(a > b, a, b), o.traits, n.traits),
          n.traits) AS traits,
       if(o.found = 1, o.staged, $no_staged) AS prev_staged, if(o.found = 1, o.touch, $no_touch) AS prev_touch,
       if(o.found = 1, o.traits, $no_traits) AS prev_traits, length(n.raw) > 0 AS staged_some
FROM ($aggregates) AS n
LEFT JOIN (
    SELECT customer_id, toUInt8(1) AS found, argMax(staged, generation) AS staged, argMax(touch, generation) AS touch,
           argMax(traits, generation) AS traits
    FROM stage_inputs
    WHERE project_id = {project_id:String} AND build = {build:UInt64} AND customer_id IN {customers:Array(String)}
    GROUP BY customer_id
) AS o ON o.customer_id = n.customer
"""

_INPUT_COLUMNS = (
    "project_id, build, customer_id, generation, staged, touch, traits, prev_staged, prev_touch, prev_traits"
)
# optimize_on_insert = 0: a statement stores one row per customer (grouped by customer), so a block holds nothing
# to replace, and looking cost a sixth of a rebuild's inputs (10 M events: 12.1-13.0 s against 10.6-11.3 s).
_INSERT_INPUTS = """
INSERT INTO stage_inputs ($columns)
SELECT {project_id:String}, {build:UInt64}, customer, {generation:UInt64}, staged, touch, traits, $prev
FROM ($inputs)$where
 SETTINGS optimize_on_insert = 0, $cluster"""
# A merge stores only the customers whose inputs it may change: rows no rule stages (a third of a busy site's
# events) and a later touch than the customer's first change nothing, and their customers' facts need neither
# storing again nor folding twice to find no difference. Whether some new row is staged, not whether the staged
# events differ: comparing the arrays cost more than the skip saved (20 000 customers: +75 ms).
_CHANGED = "\nWHERE staged_some OR touch != prev_touch OR traits != prev_traits"
#: Empty inputs for ``customers`` in one build: forgotten ones, and every customer (retired ones too: merged
#: into another) of a full refresh before its inputs are stored, so those left without events keep these.
EMPTY_INPUTS_SQL = fill(
    """
INSERT INTO stage_inputs ($columns)
SELECT {project_id:String}, {build:UInt64}, customer, {generation:UInt64}, $no_inputs,
       $no_inputs
FROM (SELECT arrayJoin({customers:Array(String)}) AS customer)
""",
    columns=_INPUT_COLUMNS,
    no_inputs=_NO_INPUTS,
)

#: Every customer's newest stored inputs in ``from_build`` copied into ``build``: a rebuild for definitions
#: that store the same inputs (:attr:`FactsSql.inputs_key`: a window, a stage, which stage a touchpoint feeds or a
#: segment's values changed) starts from these instead of reading every event again (1 M customers: 3.7-4.5 s
#: against ~16-20 s; bench/README.md, "Issue 17, twelfth session"). Each keeps its generation, so a later write into
#: ``build`` wins over the copy; what it held before (``prev_*``) is read only by the write that stored it, so
#: the copy holds none. Customers whose newest inputs hold nothing (forgotten, or merged into another) are left
#: out: a merge onto no stored inputs gives what a merge onto empty ones does, and a forgotten customer's id does
#: not live on from build to build (the filter applies to the newest row, after FINAL). On a cluster each shard
#: copies its own customers (``parallel_distributed_insert_select = 2``: the Distributed tables' shards run the
#: statement on their local tables; a customer's rows are on one shard).
_COPY_INPUTS = fill(
    """
INSERT INTO stage_inputs ($columns)
SELECT project_id, {build:UInt64}, customer_id, generation, $$staged, touch, traits, $no_inputs
FROM stage_inputs FINAL
WHERE project_id = {project_id:String} AND build = {from_build:UInt64}
      AND NOT (empty(staged) AND empty(traits) AND touch.1 = 1)
SETTINGS optimize_on_insert = 0, parallel_distributed_insert_select = 2, $cluster""",
    columns=_INPUT_COLUMNS,
    no_inputs=_NO_INPUTS,
    cluster=CLUSTER_SETTINGS,
)


def copy_inputs_sql(staged: str) -> str:
    """:data:`COPY_INPUTS_SQL` with each customer's staged events rewritten by ``staged`` (an expression of the
    stored ``staged``): the copy of a rebuild whose rules changed (query/facts/restage.py)."""
    return fill(_COPY_INPUTS, staged=staged)


COPY_INPUTS_SQL = copy_inputs_sql("staged")


#: Every fact of ``from_build`` copied into ``build``: a rule edit's new build, when every customer whose events
#: the new rules stage alike keeps the same facts (:attr:`~query.facts.model.Definitions.staging_free_key`), and
#: the others are refreshed into it afterwards (query/facts/restage.py). Rows as they are, not summed: each
#: reader sums ``n``. Written as a fold's are (_INSERT_FACTS), the sort and the projections being most of it
#: (1 M customers, 7.2 M rows: 9.0-9.2 s against 16 s for the fold).
_COPY_FACTS = fill(
    """
INSERT INTO stage_facts ($columns)
SELECT $copied FROM stage_facts
WHERE project_id = {project_id:String} AND build = {from_build:UInt64}$$of_maps
SETTINGS max_insert_threads = 2, optimize_on_insert = 0, min_insert_block_size_rows = 4194304,
         min_insert_block_size_bytes = 1073741824, parallel_distributed_insert_select = 2, $cluster""",
    columns=", ".join(FACT_COLUMNS),
    copied=", ".join("{build:UInt64}" if c == "build" else c for c in FACT_COLUMNS),
    cluster=CLUSTER_SETTINGS,
)
COPY_FACTS_SQL = fill(_COPY_FACTS, of_maps="")
#: :data:`COPY_FACTS_SQL` of some maps only (``maps``): a preview reads one map's facts, and a project keeps one
#: map per target group.
COPY_MAP_FACTS_SQL = fill(_COPY_FACTS, of_maps=" AND map_name IN {maps:Array(String)}")

# The stored inputs written by one write (``generation``) of the given customers, as customers to fold: what
# they hold now (sign 1) and what they held before (sign -1).
_STORED = """
SELECT customer, sign, $keys AS keys, staged
FROM (
    SELECT customer_id AS customer, s.1 AS sign, s.2 AS staged, s.3 AS touch, s.4 AS traits
    FROM (
        SELECT customer_id, [(toInt8(1), staged, touch, traits), (toInt8(-1), prev_staged, prev_touch, prev_traits)] AS both
        FROM stage_inputs
        WHERE project_id = {project_id:String} AND build = {build:UInt64} AND customer_id IN {customers:Array(String)}
              AND generation = {generation:UInt64}
    )
    ARRAY JOIN both AS s
)
"""
# Every customer's stored inputs in a build just written by a rebuild, as customers to fold: the newest of
# each (a forget while the rebuild runs empties some). FINAL, not argMax: the rows come sorted by customer,
# and aggregating every customer's arrays cost a third more (10 M events: 28.7 s against 21.1 s).
_BUILT = """
SELECT customer_id AS customer, toInt8(1) AS sign, $keys AS keys, $staged AS staged
FROM (
    SELECT customer_id, staged AS stored, touch, traits FROM stage_inputs FINAL
    WHERE project_id = {project_id:String} AND build = {inputs_build:UInt64}$of_customers
)
"""

# The inputs just read from the events, as customers to fold (sign 1).
_FROM_EVENTS = "SELECT customer, toInt8(1) AS sign, $keys AS keys, staged FROM ($inputs)"

# optimize_on_insert: the facts of one customer are summed by merges anyway, and summing each insert block
# first cost a third of a rebuild (10 M events: 26.1 s against 16.8 s without, measured in chDB).
# Blocks of 4 Mi rows, not 1 Mi: a part per block, and a merge of stage_facts rebuilds its three projections
# (deduplicate_merge_projection_mode), so the 16 parts of a 10 M-event build kept both cores merging for 13 s
# after it (8 parts of 2 Mi rows: 30 s); 4 parts are left alone, and the insert took 8.7-9.0 s, not 9.8-11.6 s.
# Memory: ~3 GB at its peak instead of ~1.8 GB, below the inputs statement's ~3.9 GB.
_INSERT_FACTS = (
    "INSERT INTO stage_facts ($columns) $rows SETTINGS max_insert_threads = 2, optimize_on_insert = 0, "
    "min_insert_block_size_rows = 4194304, min_insert_block_size_bytes = 1073741824, $cluster"
)

# The difference, written as ClickHouse computes it: the facts now (n = 1) and before (n = -1, or what the build
# holds, negated), and the insert sums rows of one identity and drops those that come to zero
# (optimize_on_insert: what a SummingMergeTree merge would do later; rows of one fact that fall in two blocks, past
# a million rows, are summed by that merge instead, and every reader sums n anyway). Computing the net rows apart,
# sending them back and inserting them cost ~40 % more per poll (5 000 customers, idle: 270-285 ms against 161-172
# ms, bench/README.md "Issue 17, eighth session"): the GROUP BY and its analysis, and JSON both ways.
# insert_deduplicate = 0: on a cluster (Replicated tables) an insert identical to an earlier one would be dropped as
# a retry, and a customer who leaves a segment and comes back writes the same rows twice.
_INSERT_DIFFERENCE = (
    "INSERT INTO stage_facts ($columns) $rows "
    "SETTINGS optimize_on_insert = 1, max_insert_threads = 1, insert_deduplicate = 0, $cluster"
)

# An entry's rows as it was and as it is differ (converted): nothing to sum, so the insert does not (1 M customers,
# 430 000 rows: 4.1-4.4 s against 9.8-12.8 s summing them on one thread, as a difference does). Not deduplicated:
# a window cut, restored and cut again writes the same rows twice (on a cluster the second insert would be dropped
# as a retry).
# Every customer's corrections are read on one thread (max_threads = 1): they are computed beside the polls of every
# project, which wait for a core otherwise (1 M customers, idle: 6.3 s against 4.0 s on two; in bench/query.py the
# edit served in 7.9-9.9 s either way, and another project's KPI freshness p95 meanwhile was 0.57-0.77 s against
# 0.87-1.57 s on two threads: bench/README.md, "Issue 17, fifteenth session").
_INSERT_RECONVERTED = (
    "INSERT INTO stage_facts ($columns) $rows "
    "SETTINGS optimize_on_insert = 0, max_insert_threads = 1, max_threads = $threads, insert_deduplicate = 0, $cluster"
)


def written_since_sql(build: str = "build") -> str:
    """The customers whose inputs in the build bound as ``build`` were written after ``generation`` (a customer
    written twice is listed twice): a new build's written by a forget or a poll while it was computed
    (query/facts/updater.py), the serving build's written while a window edit's corrections were computed."""
    return (
        "SELECT customer_id FROM stage_inputs WHERE project_id = {project_id:String} "
        f"AND build = {{{build}:UInt64}} AND generation > {{generation:UInt64}}"
    )


#: The rows of ``from_build`` (a window edit's corrections, :meth:`FactsSql.insert_reconverted`) added to ``build``
#: (the serving build), but those of the customers whose inputs there were written after ``generation`` (their
#: corrections were computed from older ones). Not deduplicated, as :data:`_INSERT_RECONVERTED`.
RECONVERTED_FACTS_SQL = fill(
    """
INSERT INTO stage_facts ($columns)
SELECT $copied FROM stage_facts
WHERE project_id = {project_id:String} AND build = {from_build:UInt64} AND customer_id NOT IN $written_since
SETTINGS optimize_on_insert = 0, insert_deduplicate = 0, parallel_distributed_insert_select = 2, $cluster""",
    columns=", ".join(FACT_COLUMNS),
    copied=", ".join("{build:UInt64}" if c == "build" else c for c in FACT_COLUMNS),
    written_since=f"({written_since_sql()})",
    cluster=CLUSTER_SETTINGS,
)

# Each id's customer for a whole project: the current mapping (a deleted one or none: itself).
_OWNERS_OF_PROJECT = """
LEFT JOIN (
    SELECT distinct_id, argMax(customer_id, version) AS customer, argMax(is_deleted, version) AS deleted
    FROM identities WHERE project_id = {project_id:String} GROUP BY distinct_id
) AS o ON o.distinct_id = e.distinct_id
"""
_CUSTOMER_OF_PROJECT = "if(o.customer != '' AND o.deleted = 0, o.customer, e.distinct_id)"

# Ids and their customers as the caller resolved them (journeys.identities): a refresh's customers.
_OWNERS_GIVEN = """
INNER JOIN (
    SELECT pair.1 AS distinct_id, pair.2 AS customer
    FROM (SELECT arrayJoin(arrayZip({ids:Array(String)}, {owners:Array(String)})) AS pair)
) AS o ON o.distinct_id = e.distinct_id
"""

# The first touch's fields in TOUCH_TYPE.
_TOUCH_FIELDS = {"first_channel": 6, "first_utm_source": 7, "first_utm_medium": 8, "first_utm_campaign": 9}
_TOUCH_DAY = 10


_HELD_IN = """
SELECT $identity, ${sign}sum(n) AS held
FROM stage_facts
WHERE project_id = {project_id:String} $in_build AND customer_id IN $customers
GROUP BY ALL
HAVING held != 0
"""
# A fact row's identity with its enums as text: what the facts computed from inputs give.
_IDENTITY_TEXT = (
    FACT_IDENTITY.replace("fact,", "toString(fact),")
    .replace("move_kind,", "toString(move_kind),")
    .replace(", sentiment", ", toString(sentiment)")
)


def _held(in_build: str, customers: str = "{customers:Array(String)}", sign: str = "-") -> str:
    return fill(_HELD_IN, identity=_IDENTITY_TEXT, in_build=in_build, customers=customers, sign=sign)


# What a build holds for a refresh's customers, negated: added to the desired rows, the difference.
_HELD = _held("AND build = {build:UInt64}")
#: ``INSERT`` of what every build holds for ``customers``, negated: the rows that withdraw them (forgetting a
#: customer), summed as a difference is.
INSERT_WITHDRAWAL = fill(_INSERT_DIFFERENCE, columns=FACT_IDENTITY + ", n", rows=_held(""), cluster=CLUSTER_SETTINGS)

#: The newest inputs of ``customers`` in ``from_build`` (a rule edit's customers whose events it stages otherwise,
#: computed with its rules) written into ``build`` (the serving build, relabelled for that edit) under a new
#: ``generation``: they win over what it held. Emptied ones too (a customer merged into another or forgotten
#: meanwhile). On a cluster each shard moves its own customers' (a customer's rows are on one shard).
TRANSPLANT_INPUTS_SQL = fill(
    """
INSERT INTO stage_inputs ($columns)
SELECT project_id, {build:UInt64}, customer_id, {generation:UInt64}, staged, touch, traits, $no_inputs
FROM stage_inputs FINAL
WHERE project_id = {project_id:String} AND build = {from_build:UInt64} AND customer_id IN {customers:Array(String)}
SETTINGS optimize_on_insert = 0, parallel_distributed_insert_select = 2, $cluster""",
    columns=_INPUT_COLUMNS,
    no_inputs=_NO_INPUTS,
    cluster=CLUSTER_SETTINGS,
)
#: ``INSERT`` into ``build`` of the difference that makes its facts of ``customers`` the ones ``from_build`` holds
#: for them: what ``from_build`` holds (as ``build``'s rows) and what ``build`` holds, negated. Summed before the
#: insert, not by it as a refresh's difference is: most rows cancel out (the customers' facts that the edit leaves
#: as they were), and the project's polls wait for it (1 M customers, 15 000 moved: 1.8 s with the insert summing
#: them, 1.1 s summed first).
_TRANSPLANTED = (
    _held("AND build = {from_build:UInt64}", sign="").replace(
        # not AS build: ClickHouse would read that alias in the WHERE clause (build = from_build: no row)
        "project_id, map_name, build,",
        "project_id, map_name, {build:UInt64} AS into_build,",
        1,
    )
    + "UNION ALL\n"
    + _held("AND build = {build:UInt64}")
)
TRANSPLANT_FACTS_SQL = fill(
    _INSERT_DIFFERENCE,
    columns=FACT_IDENTITY + ", n",
    rows=f"SELECT * EXCEPT held, sum(held) AS n FROM ({_TRANSPLANTED}) GROUP BY ALL HAVING n != 0",
    cluster=CLUSTER_SETTINGS,
)


class FactsSql:
    """The facts statements of one project's definitions (``query.facts.model.Definitions``).

    Three ways to the same rows: from the events alone (:meth:`desired`: a new build, a preview); from all
    of some customers' events into their stored inputs, then the inputs minus what the build holds
    (:meth:`insert_inputs`, :meth:`insert_difference` with ``held``: identities changed, or nothing is known of
    them); and from only the rows stamped since the last look, merged onto the stored inputs, then the
    inputs' facts now minus those before (:meth:`insert_merged`, :meth:`insert_difference`): the live path, which
    reads what arrived, not the customers' past."""

    def __init__(self, definitions: Any, *, names: str = "f", rules: str = "rules"):
        """``names``: the first letter of every parameter these statements bind, so that two definitions'
        expressions can share one statement (query/facts/restage.py); ``rules``: the name of the column of
        each event's rule indices, which the sentiment expressions read."""
        self.definitions = definitions
        p = SqlParams(f"{names}q_")
        maps = definitions.maps
        rule_columns, sentiment_columns = [], []
        for n, mv in enumerate(maps):
            # Each rule's number is its touchpoint's place in id order (MapVersion.rule_numbers), not its place
            # in the map: what the stored inputs hold survives a reorder.
            expression, values = rule_index_sql(mv.compiled.map, prefix=f"{names}m{n}_", numbers=mv.rule_numbers)
            p.values.update(values)
            rule_columns.append(f"toUInt16({expression})")
            sentiment_columns.append(_sentiment_sql(p, mv, f"{rules}[{n + 1}]"))
        self._rule_columns = ", ".join(rule_columns)
        self._sentiment_columns = ", ".join(sentiment_columns)
        # Rule number → stage index, stage index → window: small numbers, written into the statement.
        # Typed: a map without touchpoints is an empty list, which alone has no type.
        stages = _literal([[mv.compiled.index[r.touchpoint.stage] for r in mv.stored_rules] for mv in maps])
        self._stages = f"CAST({stages}, 'Array(Array(UInt16))')"
        self._windows = f"CAST({_literal([list(mv.windows_ms) for mv in maps])}, 'Array(Array(UInt64))')"
        self._touchpoints = p.bind([[r.touchpoint.id for r in mv.stored_rules] for mv in maps], "Array(Array(String))")
        self._map_names = p.bind([mv.name for mv in maps], "Array(String)")
        self._segments = _SegmentKeys(p, definitions.segments)
        self.params = p.values

    def _aggregates(self, scope: str) -> str:
        """Per customer aggregates (``_AGGREGATES``) of the project's rows (``"project"``), of every row of the
        given ids (``"ids"``: ``ids``, ``owners``), or of their rows stamped after ``since`` (``"since"``)."""
        if scope == "project":
            owners, customer, row_filter = _OWNERS_OF_PROJECT, _CUSTOMER_OF_PROJECT, ""
        else:
            owners, customer, row_filter = _OWNERS_GIVEN, "o.customer", "AND distinct_id IN {ids:Array(String)}"
            if scope == "since":
                # inserted_at first: its minmax index skips the granules of parts written before
                row_filter = "AND inserted_at > {since:DateTime64(3, 'UTC')} " + row_filter
        event_rows = fill(
            _EVENT_ROWS,
            rule_columns=self._rule_columns,
            sentiment_columns=self._sentiment_columns,
            row_filter=row_filter,
        )
        return fill(
            _AGGREGATES,
            customer=customer,
            touch=self._segments.touch,
            traits=self._segments.traits,
            event_rows=event_rows,
            owners=owners,
        )

    def _rows(self, customers: str, map_name: str | None = None) -> str:
        """The facts rows of ``customers`` in every map, or in the map ``map_name`` only."""
        of_map = ""
        if map_name is not None:
            names = [mv.name for mv in self.definitions.maps]
            of_map = f" AND map_n = {names.index(map_name) + 1}"
        per_customer = fill(
            _PER_CUSTOMER,
            transitions=self._transitions(customers, of_map),
            entry=self._entry(f"{self._windows}[map_n]"),
            stages=self._stages,
            fact=FACT_TUPLE,
            sentiments=_literal(list(SENTIMENTS)),
        )
        return fill(_ROWS, map_names=self._map_names, per_customer=per_customer)

    def _transitions(self, customers: str, of_map: str = "") -> str:
        return fill(
            _TRANSITIONS, customers=customers, of_map=of_map, maps=str(len(self.definitions.maps)), stages=self._stages
        )

    def _entry(self, window: str) -> str:
        return fill(_ENTRY, window=window, touchpoints=self._touchpoints, fact=FACT_TUPLE)

    def desired(self, scope: str) -> str:
        """The facts rows (FACT_IDENTITY, n) of every customer of the project (``scope="project"``; parameters
        ``project_id``, ``build``) or of the given ids' customers (``"ids"``; also ``ids`` and ``owners``:
        each id's customer, every id of those customers), from their events."""
        inputs = fill(_INPUTS, aggregates=self._aggregates(scope), carried="")
        return self._rows(fill(_FROM_EVENTS, keys=self._segments.keys, inputs=inputs))

    def insert_all(self, columns: str) -> str:
        """``INSERT`` of every customer's facts (:meth:`desired`, ``"project"``) into ``stage_facts``."""
        return fill(_INSERT_FACTS, columns=columns, rows=self.desired("project"), cluster=CLUSTER_SETTINGS)

    def insert_all_from_inputs(self, columns: str, staged: str = "stored", map_name: str | None = None) -> str:
        """``INSERT`` into ``stage_facts`` (``build``) of every customer's facts folded from the inputs stored in
        ``inputs_build``: the rebuild's own (:meth:`insert_inputs`, ``"project"``: the events are read once, by
        that statement), or another build's whose :attr:`inputs_key` is this one's, or, their staged events
        rewritten by ``staged`` (an expression of the column ``stored``), one whose rules were others
        (query/facts/restage.py). ``map_name``: that map's facts only (a preview reads one map)."""
        rows = self._rows(fill(_BUILT, keys=self._segments.keys, staged=staged, of_customers=""), map_name)
        return fill(_INSERT_FACTS, columns=columns, rows=rows, cluster=CLUSTER_SETTINGS)

    def insert_reconverted(self, columns: str, before: FactsSql, written_since: bool = False) -> str:
        """``INSERT`` into ``stage_facts`` (``build``) of what these definitions' conversion windows change in the
        facts ``before`` folds from the inputs stored in ``inputs_build`` (of every customer, or, with
        ``written_since``, of those whose inputs there were written after ``generation``):
        the entries whose outcome differs, withdrawn as they were and added as they are now. ``before`` differs
        from these definitions by the windows alone (:attr:`~query.facts.model.Definitions.window_free_key`), so
        these rows added to the facts it holds make them this one's, reading no event and folding no other fact:
        a window edit (1 M customers: a few seconds against ~20 s for a rebuild from the same inputs)."""
        of_customers = ""
        if written_since:
            of_customers = f" AND customer_id IN ({written_since_sql('inputs_build')})"
        built = fill(_BUILT, keys="(touch, traits)", staged="stored", of_customers=of_customers)
        flipped = fill(
            _FLIPPED,
            keys=self._segments.keys,
            transitions=self._transitions(built),
            entry=self._entry(f"if(flip > 0, {self._windows}[map_n], {before._windows}[map_n])"),
            before=before._windows,
            windows=self._windows,
        )
        rows = fill(_ROWS, map_names=self._map_names, per_customer=flipped)
        threads = "0" if written_since else "1"  # 0: ClickHouse's default (the cores)
        return fill(_INSERT_RECONVERTED, columns=columns, rows=rows, threads=threads, cluster=CLUSTER_SETTINGS)

    @cached_property
    def inputs_key(self) -> str:
        """What the stored inputs depend on (the rules and sentiments per map, in map order, and the traits and
        first touch the segments read), as the statement that stores them and the values it binds: two
        definitions with one key store the same inputs, so the facts of one can be folded from the inputs
        stored for the other (a draft that moves touchpoints between stages, changes a window or a segment's
        values, but no rule: query/kpi_preview.py)."""
        sql = self.insert_inputs("project")
        used = {name: self.params[name] for name in re.findall(r"\{(\w+):", sql) if name in self.params}
        return hashlib.sha256(orjson.dumps([sql, used], option=orjson.OPT_SORT_KEYS)).hexdigest()

    @cached_property
    def segment_inputs_key(self) -> str:
        """What the stored inputs keep for the segments (the first touch and the traits they read), as the
        expressions that keep them with their bound values written in: two definitions with one key keep the
        same ``touch`` and ``traits``, whatever their rules (a rule edit: query/facts/restage.py)."""
        text = f"{self._segments.touch}\n{self._segments.traits}"
        shown = re.sub(r"\{(\w+):[^}]*\}", lambda m: orjson.dumps(self.params[m.group(1)]).decode(), text)
        return hashlib.sha256(shown.encode()).hexdigest()

    def insert_inputs(self, scope: str) -> str:
        """``INSERT`` of the inputs of every customer of the project (``"project"``) or of the given ids'
        customers (``"ids"``), read from all their events, into ``stage_inputs`` under ``generation``."""
        inputs = fill(_INPUTS, aggregates=self._aggregates(scope), carried="")
        return fill(
            _INSERT_INPUTS, columns=_INPUT_COLUMNS, prev=_NO_INPUTS, inputs=inputs, where="", cluster=CLUSTER_SETTINGS
        )

    def insert_merged(self) -> str:
        """``INSERT`` of the given ids' rows stamped after ``since`` (``ids``, ``owners``: their customers)
        merged onto their customers' stored inputs (``customers``), each keeping what it held before; only
        for the customers whose inputs that changes."""
        merged = fill(
            _MERGED,
            aggregates=self._aggregates("since"),
            no_staged=_NO_STAGED,
            no_touch=_NO_TOUCH,
            no_traits=_NO_TRAITS,
        )
        inputs = fill(_INPUTS, aggregates=merged, carried=", prev_staged, prev_touch, prev_traits, staged_some")
        prev = "prev_staged, prev_touch, prev_traits"
        return fill(
            _INSERT_INPUTS, columns=_INPUT_COLUMNS, prev=prev, inputs=inputs, where=_CHANGED, cluster=CLUSTER_SETTINGS
        )

    def insert_difference(self, columns: str, held: bool) -> str:
        """``INSERT`` into ``stage_facts`` of what the inputs one write stored (``customers``, ``generation``)
        change: their facts now minus their facts before; with ``held``, minus what ``build`` holds for
        ``customers`` instead (inputs written from all of their events: the build may hold anything for them)."""
        rows = self._rows(fill(_STORED, keys=self._segments.keys))
        if held:
            rows += " UNION ALL " + _HELD
        return fill(_INSERT_DIFFERENCE, columns=columns, rows=rows, cluster=CLUSTER_SETTINGS)


def _literal(value: Any) -> str:
    """Numbers and lists of numbers or of fixed words as SQL literals (never user text)."""
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"not a literal: {value!r}")
    if isinstance(value, str):
        if value not in SENTIMENTS:
            raise ValueError(f"not a fixed word: {value!r}")
        return f"'{value}'"
    return str(value)


def _sentiment_sql(p: SqlParams, map_version: Any, rule: str) -> str:
    """The sentiment the matching rule (``rule``: its number, MapVersion.rule_numbers) of a map gives each event
    (``_Rule.sentiment``): the rule's own, or from a numeric property, else the event's."""
    branches = []
    for index, touchpoint_rule in zip(map_version.rule_numbers, map_version.compiled.rules):
        sentiment = touchpoint_rule.touchpoint.sentiment
        if isinstance(sentiment, str):
            branches.append(f"{rule} = {index}, {_literal(sentiment)}")
        elif isinstance(sentiment, SentimentFromProperty):
            positive = p.bind(float(sentiment.positive_at_least), "Float64")
            negative = p.bind(float(sentiment.negative_at_most), "Float64")

            def rating(args: str, positive: str = positive, negative: str = negative) -> str:
                number = f"JSONExtractFloat(properties{args})"
                return (
                    f"if(JSONType(properties{args}) IN ('Int64', 'UInt64', 'Double'), "
                    f"multiIf({number} >= {positive}, 'positive', {number} <= {negative}, 'negative', 'neutral'), "
                    "toString(sentiment))"
                )

            branches.append(f"{rule} = {index}, {property_condition(p, sentiment.property, rating)}")
    if not branches:
        return "toString(sentiment)"
    return f"multiIf({', '.join(branches)}, toString(sentiment))"


def segment_fields(segments: Iterable[Segment]) -> tuple[list[str], bool]:
    """(the trait names the segments' rules read, whether any rule reads the first touch): all that is read."""
    traits: set[str] = set()
    touch = False
    for segment in segments:
        for rule in segment.rules:
            if rule.field.startswith("traits."):
                traits.add(rule.field[7:])
            else:
                touch = True
    return sorted(traits), touch


class _SegmentKeys:
    """Each customer's segment keys (``''`` and every segment it belongs to), from the first touch and the
    traits its inputs keep (only what the segments read: nothing when none does)."""

    def __init__(self, p: SqlParams, segments: tuple[Segment, ...]):
        self.p = p
        self.segments = segments
        traits, touch = segment_fields(segments)
        self.trait_index = {name: i for i, name in enumerate(traits, start=1)}
        self.touch = _NO_TOUCH
        if touch:
            # The least tuple among the rows of the earliest time (-ArgMin): the least of all, as the time leads
            # it, but tuples are compared (as generic values: slow) only on rows as early as the earliest so far,
            # not on every row (10 M events: 2.0-2.4 s -> 1.3-1.4 s).
            self.touch = (
                "minArgMin(tuple(toUInt8(0), t, e.distinct_id, r, e.message_id, ch, toString(e.utm_source), "
                "toString(e.utm_medium), toString(e.utm_campaign), toDate(e.timestamp)), t)"
            )
        self.traits = _NO_TRAITS
        if traits:
            per_trait = []
            # Only an identify's traits parsed: an aggregate's argument is computed for every row, whatever its
            # condition (10 M events: 0.5 s less).
            for name in traits:
                key = p.bind(name, "String")
                per_trait.append(
                    f"maxIf(tuple(toUInt8(1), t, JSONExtractRaw(if(e.type = 'identify', e.traits, ''), {key})), "
                    f"e.type = 'identify' AND JSONHas(e.traits, {key}))"
                )
            self.traits = f"[{', '.join(per_trait)}]"
        # Bound once, here: the statements' parameters are taken from p.values.
        keys = [
            f"if({(' AND ' if s.match == 'all' else ' OR ').join(f'({self._rule(r)})' for r in s.rules) or '1'}, "
            f"[{p.bind(s.name, 'String')}], [])"
            for s in segments
        ]
        #: The keys of a customer joined by ',' (``stage_facts.segments``, migration 0012: ``',b2b,vip'``; in no
        #: segment ``''``), from the columns ``touch`` and ``traits`` of its inputs; joined once per customer,
        #: before its facts are spread into rows.
        self.keys = f"arrayStringConcat(arrayConcat([''], {', '.join(keys)}), '{KEY_SEPARATOR}')" if keys else "''"

    def _rule(self, rule: Rule, touch: str = "touch", traits: str = "traits") -> str:
        p = self.p
        if rule.field.startswith("traits."):
            j = self.trait_index[rule.field[7:]]
            # set by some identify; its value: the newest identify's (equal times: the greater value)
            present, value = f"({traits}[{j}].1 = 1)", f"{traits}[{j}].3"
            return holds_sql(p, rule.op, "", rule.value, doc=value, present=present)
        if rule.field == "first_seen":
            return _date_rule(p, rule, f"{touch}.{_TOUCH_DAY}")
        return _text_rule(p, f"{touch}.{_TOUCH_FIELDS[rule.field]}", rule)


def _text_rule(p: SqlParams, value: str, rule: Rule) -> str:
    """A first-touch text field (``''`` is absent) under ``query.maps.holds``: only text equals text."""
    present = f"({value} != '')"

    def same(expected: Any) -> str:
        return f"{value} = {p.bind(expected, 'String')}" if isinstance(expected, str) else "0"

    op, expected = rule.op, rule.value
    if op == "exists":
        return present
    if op == "not_exists":
        return f"NOT {present}"
    if op == "equals":
        return f"({present} AND {same(expected)})"
    if op == "not_equals":
        return f"NOT ({present} AND {same(expected)})"
    if op in LIST_OPERATORS:
        found = f"({present} AND ({' OR '.join(same(e) for e in expected) or '0'}))"
        return found if op == "in" else f"NOT {found}"
    if op == "contains":
        return (
            f"({present} AND position({value}, {p.bind(expected, 'String')}) > 0)" if isinstance(expected, str) else "0"
        )
    return "0"  # a number never compares with text


def _date_rule(p: SqlParams, rule: Rule, value: str) -> str:
    """``first_seen`` (every customer with events has one) compared as a calendar date."""
    op = rule.op
    if op in UNARY_OPERATORS:
        return "1" if op == "exists" else "0"
    if op in LIST_OPERATORS:
        dates = p.bind([date.fromisoformat(v) for v in rule.value], "Array(Date)")
        return f"{value} IN {dates}" if op == "in" else f"{value} NOT IN {dates}"
    expected = p.bind(date.fromisoformat(rule.value), "Date")
    sql_op = {"equals": "=", "not_equals": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}[op]
    return f"{value} {sql_op} {expected}"
