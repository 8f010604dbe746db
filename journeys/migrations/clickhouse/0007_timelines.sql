-- Timelines: each id's events in the shape a journey reads them, a few rows per id instead of one per event.
--
-- A journey read from `events` is a key-range read of 7 columns over every part of every monthly partition:
-- chDB spends ~3.5 ms finding the key in each part plus ~0.5 ms per column, 7-10 ms per journey (measured
-- on 10 M events / 1 M customers). Here the same events are one String column in rows of up to 1 000
-- events, with 256-row granules: 1.7 ms for the same read, and the journey (identity guess and events side by
-- side) 5.7 ms instead of 10.6 ms at p50 (measured, same data; the cost is ~60 % of the events table's disk).
--
-- Rows are written by the materialized view, one per id per insert (more when an insert holds over 1 000
-- events of one id), and are never folded together: a customer's rows sit next to each other in the sort
-- order anyway, and a row's size stays bounded however many events a bot sends. A retried event may be in
-- two rows; readers keep one copy per message_id exactly as the events reads do (earliest timestamp,
-- then received_at), so a timeline never depends on merges.
--
-- Each event is a JSON array: [message_id, type, event, channel, sentiment, timestamp ms, received_at ms,
-- properties]; `payload` joins a row's events with commas (query.reads.timeline_events decodes it). A new
-- field for journeys means a new migration here that rebuilds the table.
CREATE TABLE IF NOT EXISTS {{table timelines}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    distinct_id  String,
    n            UInt32,
    payload      String CODEC(ZSTD(1))
)
ENGINE = {{engine MergeTree}}
ORDER BY (project_id, distinct_id)
SETTINGS index_granularity = 256;

{{distributed timelines cityHash64(project_id, distinct_id)}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{table timelines_mv}} {{on_cluster}} TO {{table timelines}} AS
SELECT project_id, distinct_id, length(chunk) AS n, arrayStringConcat(chunk, ',') AS payload
FROM
(
    SELECT project_id, distinct_id, groupArray(concat(
        '[', toJSONString(message_id), ',', toJSONString(type), ',', toJSONString(event), ',',
        toJSONString(toString(channel)), ',', toJSONString(toString(sentiment)), ',',
        toString(toUnixTimestamp64Milli(timestamp)), ',', toString(toUnixTimestamp64Milli(received_at)), ',',
        if(properties = '', '{}', properties), ']')) AS items
    FROM {{table events}}
    GROUP BY project_id, distinct_id
)
ARRAY JOIN arrayMap(k -> arraySlice(items, k * 1000 + 1, 1000), range(intDiv(length(items) + 999, 1000))) AS chunk;

-- Events stored before this migration, grouped the same way. On a cluster both names are the Distributed
-- tables, so every shard's events are read and each row lands on its id's shard. Events inserted while this
-- runs may be in both (the view is already live): readers keep one copy. A run interrupted half-way and run
-- again leaves duplicates the same way, never gaps. Large installs: this reads the whole events table once,
-- on one thread, spilling the grouping to disk past 100 MB and writing modest blocks, so that it cannot run
-- an upgrade out of memory (10 M events: 11 s, +330 MB; with default threads and blocks 6 s, but +1.9 GB).
INSERT INTO timelines (project_id, distinct_id, n, payload)
SELECT project_id, distinct_id, length(chunk) AS n, arrayStringConcat(chunk, ',') AS payload
FROM
(
    SELECT project_id, distinct_id, groupArray(concat(
        '[', toJSONString(message_id), ',', toJSONString(type), ',', toJSONString(event), ',',
        toJSONString(toString(channel)), ',', toJSONString(toString(sentiment)), ',',
        toString(toUnixTimestamp64Milli(timestamp)), ',', toString(toUnixTimestamp64Milli(received_at)), ',',
        if(properties = '', '{}', properties), ']')) AS items
    FROM events
    GROUP BY project_id, distinct_id
)
ARRAY JOIN arrayMap(k -> arraySlice(items, k * 1000 + 1, 1000), range(intDiv(length(items) + 999, 1000))) AS chunk
SETTINGS max_threads = 1, max_bytes_before_external_group_by = 100000000,
         min_insert_block_size_rows = 65536, min_insert_block_size_bytes = 67108864;
