-- Events that failed validation inside an otherwise good request: kept with the reason and the raw
-- payload so nothing a client sent vanishes silently, and so it can be fixed and replayed.
CREATE TABLE IF NOT EXISTS {{table quarantine}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    received_at  DateTime64(3, 'UTC'),
    request_id   String,
    batch_index  UInt32,
    message_id   String,
    reason       String,
    raw          String CODEC(ZSTD(3))
)
ENGINE = {{engine MergeTree}}
PARTITION BY toYYYYMM(received_at)
ORDER BY (project_id, received_at);

{{distributed quarantine rand()}};
