-- stage_facts partitioned by (project_id, build) (issue 17). A superseded build, and a draft map's preview
-- (query/kpi_preview.py), went with a lightweight DELETE: a mutation that marked rows in every part holding
-- them and, with projections, rebuilt the projections of those parts, and merges had mixed builds and
-- projects into the same parts, so that was most of the table. Measured at 10 M events / 1 M customers
-- (bench/query.py): a preview 23.6 s, then 18.0 s with its partition dropped (0.07 s); the rebuild after a map
-- edit 56.1 s, then 36.6 s. Now each project's build is a partition of its own: it goes with DROP PARTITION
-- (no rewrite, at once), merges never mix builds, and a KPI read prunes to its build's parts. Partitions are
-- about one per project (two during a rebuild or a preview).
--
-- The facts are derived: the table is made anew, empty, and the facts format changes with it
-- (query/stage_state.py FACTS_FORMAT), so the updater rebuilds every project's facts on first start; until a
-- project's are rebuilt its KPIs answer 503 "being computed", never numbers from an empty build.
DROP TABLE IF EXISTS stage_facts {{on_cluster}};
DROP TABLE IF EXISTS {{table stage_facts}} {{on_cluster}};

CREATE TABLE IF NOT EXISTS {{table stage_facts}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    build        UInt64,
    map_name     LowCardinality(String),
    customer_id  String,
    segment      LowCardinality(String),
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
        SELECT project_id, build, map_name, segment, fact, stage, day, converted, touchpoint, channel,
               from_stage, move_kind, repeat, sentiment, sum(n)
        GROUP BY project_id, build, map_name, segment, fact, stage, day, converted, touchpoint, channel,
                 from_stage, move_kind, repeat, sentiment
    ),
    PROJECTION wait_hist
    (
        SELECT project_id, build, map_name, segment, fact, stage, converted, day, wait_bucket, sum(n)
        GROUP BY project_id, build, map_name, segment, fact, stage, converted, day, wait_bucket
    ),
    PROJECTION waits
    (
        SELECT project_id, build, map_name, segment, fact, stage, converted, wait_bucket, day, wait_ms, at, n
        ORDER BY project_id, build, map_name, fact, segment, stage, converted, wait_bucket, day, wait_ms, at
    )
)
ENGINE = {{engine SummingMergeTree((n))}}
PARTITION BY (project_id, build)
ORDER BY (project_id, build, map_name, customer_id, segment, fact, stage, at, converted, wait_ms,
          touchpoint, channel, from_stage, move_kind, repeat, sentiment)
SETTINGS deduplicate_merge_projection_mode = 'rebuild', lightweight_mutation_projection_mode = 'rebuild';

{{distributed stage_facts cityHash64(project_id, customer_id)}};
