-- Per distinct id, maintained by ClickHouse as events are inserted (materialized views):
--   customer_traits: each trait from identify calls; the newest by event time wins (argMax at read time),
--     so a late-arriving old identify cannot overwrite a newer value.
--   first_touch: when an id was first seen, and the channel and UTM fields of that first event.
-- A stitched customer combines the rows of all its ids (newest trait, earliest touch).
CREATE TABLE IF NOT EXISTS {{table customer_traits}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    distinct_id  String,
    trait        String,
    value        String,
    updated_at   DateTime64(3, 'UTC')
)
ENGINE = {{engine ReplacingMergeTree(updated_at)}}
ORDER BY (project_id, distinct_id, trait);

{{distributed customer_traits cityHash64(project_id, distinct_id)}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{table customer_traits_mv}} {{on_cluster}} TO {{table customer_traits}} AS
SELECT project_id, distinct_id, kv.1 AS trait, kv.2 AS value, timestamp AS updated_at
FROM {{table events}}
ARRAY JOIN JSONExtractKeysAndValuesRaw(traits) AS kv
WHERE type = 'identify';

CREATE TABLE IF NOT EXISTS {{table first_touch}} {{on_cluster}}
(
    project_id          LowCardinality(String),
    distinct_id         String,
    first_seen          SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    first_channel       AggregateFunction(argMin, String, DateTime64(3, 'UTC')),
    first_utm_source    AggregateFunction(argMin, String, DateTime64(3, 'UTC')),
    first_utm_medium    AggregateFunction(argMin, String, DateTime64(3, 'UTC')),
    first_utm_campaign  AggregateFunction(argMin, String, DateTime64(3, 'UTC'))
)
ENGINE = {{engine AggregatingMergeTree}}
ORDER BY (project_id, distinct_id);

{{distributed first_touch cityHash64(project_id, distinct_id)}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{table first_touch_mv}} {{on_cluster}} TO {{table first_touch}} AS
SELECT
    project_id,
    distinct_id,
    min(timestamp) AS first_seen,
    argMinState(toString(channel), timestamp) AS first_channel,
    argMinState(toString(utm_source), timestamp) AS first_utm_source,
    argMinState(toString(utm_medium), timestamp) AS first_utm_medium,
    argMinState(toString(utm_campaign), timestamp) AS first_utm_campaign
FROM {{table events}}
GROUP BY project_id, distinct_id;
