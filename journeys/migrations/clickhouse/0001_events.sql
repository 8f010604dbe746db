-- Touchpoint events: one row per accepted event.
--
-- Reads de-duplicate by message_id (LIMIT 1 BY message_id), so a retried event is counted once without
-- waiting for a background merge; ReplacingMergeTree only reclaims the space of retries over time.
-- The sort key has no timestamp on purpose: a retried event can get a slightly different skew-corrected
-- time and must still collapse onto its first copy. (project_id, distinct_id) first makes one customer's
-- events one contiguous range, which is what the journey read wants.
CREATE TABLE IF NOT EXISTS {{table events}} {{on_cluster}}
(
    project_id          LowCardinality(String),
    message_id          String,
    type                LowCardinality(String),
    event               String,
    channel             LowCardinality(String),
    touchpoint          LowCardinality(String),
    sentiment           LowCardinality(String),
    distinct_id         String,
    user_id             String,
    anonymous_id        String,
    group_id            String,
    previous_id         String,
    timestamp           DateTime64(3, 'UTC'),
    original_timestamp  DateTime64(3, 'UTC'),
    sent_at             Nullable(DateTime64(3, 'UTC')),
    received_at         DateTime64(3, 'UTC'),
    page_url            String,
    referrer            String,
    utm_source          LowCardinality(String),
    utm_medium          LowCardinality(String),
    utm_campaign        LowCardinality(String),
    utm_term            String,
    utm_content         String,
    properties          String CODEC(ZSTD(3)),
    traits              String CODEC(ZSTD(3)),
    context             String CODEC(ZSTD(3))
)
ENGINE = {{engine ReplacingMergeTree(received_at)}}
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project_id, distinct_id, message_id);

{{distributed events cityHash64(project_id, distinct_id)}};
