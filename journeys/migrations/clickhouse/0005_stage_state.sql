-- Per-customer journey state for stage KPIs, kept current by the query service's StageStateUpdater
-- (query/state_updater.py), so a KPI call aggregates one row per customer instead of rescanning events.
--
-- inserted_at (set by ClickHouse when a row is written) is how the updater finds what changed since it
-- last looked: new events, and identity changes that move ids between customers. received_at cannot serve:
-- a spool replay after an outage inserts rows that were received long ago. Rows that existed before this
-- migration get the time the column is materialized, once.
ALTER TABLE {{table events}} {{on_cluster}} ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE {{table events}} {{on_cluster}} ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;
ALTER TABLE {{table events}} {{on_cluster}} MATERIALIZE COLUMN inserted_at;
{{alter_distributed events ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC')}};
ALTER TABLE {{table identities}} {{on_cluster}} ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE {{table identities}} {{on_cluster}} ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;
ALTER TABLE {{table identities}} {{on_cluster}} MATERIALIZE COLUMN inserted_at;
{{alter_distributed identities ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC')}};

-- One row per (map version, stitched customer), replaced whenever the customer's events or ids change.
-- Per stage i of the map (arrays of the map's stage count, in stage order; time 0 means "never"):
--   entered[i]            first touchpoint of stage i (the customer's entry into it)
--   next_at[i]            first entry into any later stage after entered[i] (moving on from i)
--   entry_touchpoint[i], entry_channel[i]   what brought the customer into stage i the first time
-- Per transition (docs/journeys.md): time, from (-1 for the first), to, kind, repeat.
-- Per touchpoint that carries a sentiment: time, stage, sentiment.
-- segments: the project's segments the customer is in (latest versions), evaluated when the row is written.
-- Definitions of the KPIs computed from these: docs/kpis.md.
CREATE TABLE IF NOT EXISTS {{table stage_state}} {{on_cluster}}
(
    project_id        LowCardinality(String),
    map_name          LowCardinality(String),
    map_version       UInt32,
    customer_id       String,
    version           UInt64,
    is_deleted        UInt8 DEFAULT 0,
    ids               Array(String),
    segments          Array(LowCardinality(String)),
    entered           Array(DateTime64(3, 'UTC')),
    next_at           Array(DateTime64(3, 'UTC')),
    entry_touchpoint  Array(LowCardinality(String)),
    entry_channel     Array(LowCardinality(String)),
    t_time            Array(DateTime64(3, 'UTC')),
    t_from            Array(Int16),
    t_to              Array(UInt16),
    t_kind            Array(Enum8('first' = 1, 'forward' = 2, 'skip' = 3, 'regression' = 4)),
    t_repeat          Array(UInt8),
    s_time            Array(DateTime64(3, 'UTC')),
    s_stage           Array(UInt16),
    s_sentiment       Array(Enum8('positive' = 1, 'neutral' = 2, 'negative' = 3)),
    updated_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{engine ReplacingMergeTree(version, is_deleted)}}
ORDER BY (project_id, map_name, map_version, customer_id);

{{distributed stage_state cityHash64(project_id, customer_id)}};
