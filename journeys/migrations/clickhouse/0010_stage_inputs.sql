-- stage_inputs: per build and customer, everything its stage facts are folded from (issue 17): its staged
-- events (each message once, journey order, with the rule each map gives it and the sentiment), its first
-- touch and the traits the build's segments read. With them the updater's live path reads only the rows
-- stamped since it last looked and merges them on (query/facts_sql.py): a refresh of the customers that
-- random traffic touches no longer reads their past, which a few thousand random ids spread over most
-- granules of `events` and `stage_facts` (bench/README.md, "Issue 17").
--
-- A key-value table on one node: EmbeddedRocksDB finds each key directly (10 000 random customers of 1 M:
-- 0.1 s, measured in chDB), where a MergeTree would read every granule their keys fall in. On a cluster a
-- replicated ReplacingMergeTree (the newest generation per key wins; readers take argMax by generation, which
-- is the one row on one node), sharded by customer like stage_facts.
--
-- `key` is project_id/build/customer_id. `prev_*` are the inputs before the write that stored these (the
-- updater withdraws their facts and adds the new ones: query/stage_state.py). Derived data: a build's rows
-- are written when the build is (every project is rebuilt once after this migration: facts format 4).
CREATE TABLE IF NOT EXISTS {{table stage_inputs}} {{on_cluster}}
(
    key          String,
    project_id   String,
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
{{key_value key generation}};

{{distributed stage_inputs cityHash64(project_id, customer_id)}};
