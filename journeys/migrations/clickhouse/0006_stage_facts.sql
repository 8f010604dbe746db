-- Stage KPIs as signed facts (docs/kpis.md, "How it is computed"). stage_state (0005) keeps one row per
-- customer and KPIs had to fold every customer row on every call (~0.45 µs per customer-row: 0.5–1.1 s at
-- 1 M customers). Here every per-customer state is a set of facts, one row per fact and segment key
-- (segment '' = all customers):
--   entry    stage entered at `at`; converted, wait_ms (moved on - entered, when converted); what brought them
--   move     a transition into `stage` at `at`: from_stage (-1 for the first), move_kind, repeat
--   feeling  a sentiment-bearing touchpoint of `stage` at `at`
-- The StageStateUpdater writes only differences: +n for facts that appear, -n for facts that went away (a
-- late event, a merge, a forgotten customer), after reading the customer's current facts from this same
-- table — so a retried or half-applied write converges instead of counting twice. Net counts are sum(n);
-- SummingMergeTree folds the pairs away in background merges, and reads never depend on that.
--
-- KPI calls read the projections, never the per-customer rows:
--   counts     sum(n) per (segment, fact, stage, day, outcome, move, source, sentiment): reached, entered,
--              converted, dropped on closed days, moves, sentiment, top sources — thousands of rows, not millions;
--   wait_hist  sum(n) per (segment, fact, stage, outcome, day, wait bin): which bin holds the wanted rank of
--              the time to convert (read whole: ~60 % of the time of reading the bins off `waits`, measured);
--   waits      every fact ordered by (segment, stage, outcome, wait bin, day, wait_ms, at): the waits inside
--              the wanted bins for the exact nearest-rank quantiles, and — every open entry has wait_ms = 0 —
--              exactly the open entries of a boundary day entered after a given instant.
-- Smaller granules were measured slower for every KPI query (index_granularity 1024/2048 vs 8192: 1.5-2.5x).
--
-- `build` numbers one computation of a project's facts for one set of map and segment versions
-- (stage_state_builds in PostgreSQL says which build serves KPIs). A new map or segment version is rebuilt
-- under a new build while KPIs keep reading the previous, complete one; then the old build is deleted.
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
ORDER BY (project_id, build, map_name, customer_id, segment, fact, stage, at, converted, wait_ms,
          touchpoint, channel, from_stage, move_kind, repeat, sentiment)
SETTINGS deduplicate_merge_projection_mode = 'rebuild', lightweight_mutation_projection_mode = 'rebuild';

{{distributed stage_facts cityHash64(project_id, customer_id)}};

-- stage_state (0005) is replaced by these facts; the build fingerprints changed with it, so the updater
-- rebuilds every project's facts from its events on first start.
DROP TABLE IF EXISTS stage_state {{on_cluster}};
DROP TABLE IF EXISTS {{table stage_state}} {{on_cluster}};
