-- One row per fact, not one per segment key (issue 17). Each fact was written once for all customers
-- ('') and again for every segment the customer was in: at 10 M events / 1 M customers, 15.9 M rows for
-- 7.2 M facts, and writing them and their three projections was half of a rebuild (bench/query.py; the
-- facts statement took 17-18 s, with this table's key array 13-15 s, the same day and data; without any keys
-- at all 7-8 s). Now a row carries the customer's
-- segment keys as one array (always '' first, then the segments in name order), which the projections
-- group by like any key; a KPI read sums by that array from a projection, then splits each sum among the
-- keys asked for (query/kpis.py). A customer entering or leaving a segment withdraws its rows under the old
-- array and writes them under the new one, as any other change of a fact.
--
-- The facts are derived: the table is made anew, empty, and the facts format changes with it
-- (query/facts/model.py FACTS_FORMAT), so the updater rebuilds every project's facts on first start; until a
-- project's are rebuilt its KPIs answer 503 "being computed", never numbers from an empty build.
DROP TABLE IF EXISTS stage_facts {{on_cluster}};
DROP TABLE IF EXISTS {{table stage_facts}} {{on_cluster}};

CREATE TABLE IF NOT EXISTS {{table stage_facts}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    build        UInt64,
    map_name     LowCardinality(String),
    customer_id  String,
    segments     Array(LowCardinality(String)),
    fact         Enum8('entry' = 1, 'move' = 2, 'feeling' = 3),
    stage        UInt16,
    at           DateTime64(3, 'UTC'),
    day          Date MATERIALIZED toDate(at),
    converted    UInt8,
    wait_ms      UInt64,
    -- 1/32-octave bins of wait_ms (about 2 % wide): the exact quantiles first find the bin that holds the
    -- wanted rank from per-bin counts, then rank only that bin's values (query/kpis.py).
    wait_bucket  UInt16 MATERIALIZED toUInt16(floor(log2(wait_ms + 1) * 32)),
    touchpoint   LowCardinality(String),
    channel      LowCardinality(String),
    from_stage   Int16,
    move_kind    Enum8('none' = 0, 'first' = 1, 'forward' = 2, 'skip' = 3, 'regression' = 4),
    repeat       UInt8,
    sentiment    Enum8('none' = 0, 'positive' = 1, 'neutral' = 2, 'negative' = 3),
    n            Int64,
    PROJECTION counts
    (
        SELECT project_id, build, map_name, segments, fact, stage, day, converted, touchpoint, channel,
               from_stage, move_kind, repeat, sentiment, sum(n)
        GROUP BY project_id, build, map_name, segments, fact, stage, day, converted, touchpoint, channel,
                 from_stage, move_kind, repeat, sentiment
    ),
    PROJECTION wait_hist
    (
        SELECT project_id, build, map_name, segments, fact, stage, converted, day, wait_bucket, sum(n)
        GROUP BY project_id, build, map_name, segments, fact, stage, converted, day, wait_bucket
    ),
    -- segments last: a bin's waits are read for every array that holds a key asked for
    PROJECTION waits
    (
        SELECT project_id, build, map_name, segments, fact, stage, converted, wait_bucket, day, wait_ms, at, n
        ORDER BY project_id, build, map_name, fact, stage, converted, wait_bucket, day, wait_ms, at, segments
    )
)
ENGINE = {{engine SummingMergeTree((n))}}
PARTITION BY (project_id, build)
ORDER BY (project_id, build, map_name, customer_id, segments, fact, stage, at, converted, wait_ms,
          touchpoint, channel, from_stage, move_kind, repeat, sentiment)
SETTINGS deduplicate_merge_projection_mode = 'rebuild', lightweight_mutation_projection_mode = 'rebuild';

{{distributed stage_facts cityHash64(project_id, customer_id)}};
