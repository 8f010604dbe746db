-- Builds of the stage facts (ClickHouse stage_facts.build), so KPIs keep being served while a new map or
-- segment version is rebuilt:
--   fingerprint, build   the complete build that serves KPIs, and the definitions it was computed for
--                        (build 0 with an empty fingerprint: none yet);
--   last_build           the highest build number ever started: every rebuild writes under a fresh one, so
--                        a rebuild cut off half-way leaves only garbage that the next completed one deletes;
--   rebuilding_since     set while a rebuild runs (KPIs answer from the serving build and say so).
ALTER TABLE stage_state_builds ADD COLUMN IF NOT EXISTS build bigint NOT NULL DEFAULT 0;
ALTER TABLE stage_state_builds ADD COLUMN IF NOT EXISTS last_build bigint NOT NULL DEFAULT 0;
ALTER TABLE stage_state_builds ADD COLUMN IF NOT EXISTS rebuilding_since timestamptz;
