-- stage_inputs: per build and customer, everything its stage facts are folded from (issue 17): its staged
-- events (each message once, journey order, with the rule each map gives it and the sentiment), its first
-- touch and the traits the build's segments read. With them the updater's live path reads only the rows
-- stamped since it last looked and merges them on (query/facts_sql.py): a refresh of the customers that
-- random traffic touches no longer reads their past in `events` and `stage_facts`, where a few thousand
-- random ids fall in most granules (bench/README.md, "Issue 17"). A rebuild folds the facts from here too.
--
-- One row per customer and write: the newest generation wins (readers take argMax by generation or the
-- generation they wrote; merges drop the rest). Small granules: a live refresh reads a few thousand
-- scattered customers (5 000 of 1 M: 35 ms, measured in chDB; an EmbeddedRocksDB table took 86 ms, and
-- deleting a build from it meant scanning all of it: 25 s at 1 M). Partitioned like stage_facts: a build's
-- inputs go with its facts (DROP PARTITION).
--
-- `prev_*` are the inputs before the write that stored these (the updater withdraws their facts and adds
-- the new ones: query/stage_state.py). Derived data: a build's rows are written when the build is (every
-- project is rebuilt once after this migration: facts format 4).
CREATE TABLE IF NOT EXISTS {{table stage_inputs}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    build        UInt64,
    customer_id  String,
    generation   UInt64,
    staged       Array(Tuple(Int64, Int64, String, String, Array(UInt16), Array(String))),
    touch        Tuple(UInt8, Int64, String, Int64, String, String, String, String, String, Date),
    traits       Array(Tuple(UInt8, Int64, String)),
    prev_staged  Array(Tuple(Int64, Int64, String, String, Array(UInt16), Array(String))),
    prev_touch   Tuple(UInt8, Int64, String, Int64, String, String, String, String, String, Date),
    prev_traits  Array(Tuple(UInt8, Int64, String))
)
ENGINE = {{engine ReplacingMergeTree(generation)}}
PARTITION BY (project_id, build)
ORDER BY (project_id, build, customer_id)
SETTINGS index_granularity = 256;

{{distributed stage_inputs cityHash64(project_id, customer_id)}};
