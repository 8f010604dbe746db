-- A fact's segment keys as one text, not an array (issue 17): ',' joins them ('' for all customers first, then
-- the segments in name order: ',b2b,vip'; a customer in no segment ''). Segment names are slugs
-- (query/maps.py SLUG), so ',' never occurs in one. A LowCardinality text is a number per row with a small
-- dictionary of the key sets a project has; an array of LowCardinality texts is an offsets column plus a
-- number per key, hashed and compared element by element wherever rows are sorted, summed or grouped (the
-- insert's sort, the three projections, every merge). On the same 1 M customers' inputs the facts statement
-- took 11.6-13.1 s with the text against 15.4-16.0 s with the array (bench/README.md, issue 17). A read splits
-- the text back into its keys where it needs them (query/kpis.py, query/alerts.py, query/kpi_customers.py).
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
    segments     LowCardinality(String),
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
    -- segments last: a bin's waits are read for every key set that holds a key asked for
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
