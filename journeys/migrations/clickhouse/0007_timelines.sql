-- Timelines: each event once more, in the shape a journey reads it, for one customer's read to be cheap.
--
-- A journey read from `events` is a key-range read of 7 columns over every part of every monthly partition:
-- chDB spends ~3.5 ms finding the key in each part plus ~0.5 ms per column, 7-10 ms per journey (measured
-- on 10 M events / 1 M customers). Here each event is one JSON array in one String column, the table is not
-- partitioned and its granules are 256 rows: the same read takes half the time, and the journey (identity
-- guess and events side by side) 5.6 ms instead of 10.6 ms at p50 (measured, same data). The cost: 26 B per
-- event on the events table's 87 B (60 % on leaner events), and 1-3 µs of ClickHouse CPU per inserted row
-- at 10k-50k-row inserts (bench/clickhouse_insert.py, bench/README.md).
--
-- `entry` is [message_id, type, event, channel, sentiment, timestamp ms, received_at ms, properties]
-- (query.reads.timeline_events decodes it). A retried event is stored twice here as in `events`, and readers
-- keep one copy per message_id exactly as the events reads do (the copy received last, which a merge of
-- `events` keeps: query.reads.one_copy_each), so a timeline never depends on merges. A new field for journeys means a new migration that rebuilds the table.
CREATE TABLE IF NOT EXISTS {{table timelines}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    distinct_id  String,
    entry        String CODEC(ZSTD(1))
)
ENGINE = {{engine MergeTree}}
ORDER BY (project_id, distinct_id)
SETTINGS index_granularity = 256;

{{distributed timelines cityHash64(project_id, distinct_id)}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{table timelines_mv}} {{on_cluster}} TO {{table timelines}} AS
SELECT project_id, distinct_id, concat(
    '[', toJSONString(message_id), ',', toJSONString(type), ',', toJSONString(event), ',',
    toJSONString(toString(channel)), ',', toJSONString(toString(sentiment)), ',',
    toString(toUnixTimestamp64Milli(timestamp)), ',', toString(toUnixTimestamp64Milli(received_at)), ',',
    if(properties = '', '{}', properties), ']') AS entry
FROM {{table events}};

-- Events stored before this migration. On a cluster both names are the Distributed tables, so every
-- shard's events are read and each row lands on its id's shard. Events inserted while this runs may be in
-- both (the view is already live), and a run interrupted half-way and run again leaves duplicates the same
-- way: readers keep one copy. Only an insert already under way when the view is created, and finished
-- after this read, can be in neither: the embedded service migrates before it takes events, and on a
-- cluster `journeys migrate` should run before the collectors take traffic. It streams (10 M events: ~6 s
-- on 2 cores, +0.5 GB of memory).
INSERT INTO timelines (project_id, distinct_id, entry)
SELECT project_id, distinct_id, concat(
    '[', toJSONString(message_id), ',', toJSONString(type), ',', toJSONString(event), ',',
    toJSONString(toString(channel)), ',', toJSONString(toString(sentiment)), ',',
    toString(toUnixTimestamp64Milli(timestamp)), ',', toString(toUnixTimestamp64Milli(received_at)), ',',
    if(properties = '', '{}', properties), ']') AS entry
FROM events
SETTINGS min_insert_block_size_rows = 262144, min_insert_block_size_bytes = 67108864;
