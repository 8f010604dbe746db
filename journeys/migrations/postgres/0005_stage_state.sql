-- Progress of the query service's StageStateUpdater (query/state_updater.py).
-- stage_state_builds: per project, the map and segment versions its ClickHouse stage_state rows were last
--   rebuilt for. A KPI call compares it with the project's current definitions and refuses to answer
--   from rows built for other versions (503 while a rebuild runs).
-- stage_state_cursor: how far the updater has looked at newly inserted events and identity changes
--   (ClickHouse server time), so a restart resumes where it stopped instead of rebuilding everything.
CREATE TABLE IF NOT EXISTS stage_state_builds (
    project_id   text PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    fingerprint  text NOT NULL,
    built_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS stage_state_cursor (
    id         int PRIMARY KEY CHECK (id = 1),
    polled_to  timestamptz NOT NULL
);
