-- How fresh the KPIs are (docs/kpis.md, "Freshness"; issue 18.5).
--
-- collector_watermarks: written by the collectors only (collector/watermark.py), read by the query service.
--   One row per collector spool: pending_since is the receive time of the oldest record still in its spool
--   (not yet in ClickHouse, identity links included), or the collector's clock when the spool was empty, so
--   every event it acknowledged before pending_since is in ClickHouse. The collector rewrites it twice a
--   second and says until when it counts (expires_at): a collector that stopped answering stops holding
--   the KPIs' position back then. A collector that stops cleanly with an empty spool deletes its row.
-- stage_state_cursor.acknowledged_before: written by the StageStateUpdater after each poll's refreshes are in
--   stage_facts: every event any live collector acknowledged before it is counted. KPI answers report it.
CREATE TABLE IF NOT EXISTS collector_watermarks (
    collector_id   text PRIMARY KEY,
    pending_since  timestamptz NOT NULL,
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);

ALTER TABLE stage_state_cursor ADD COLUMN IF NOT EXISTS acknowledged_before timestamptz;
