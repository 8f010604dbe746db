-- Web origins allowed to send events with a project's public (browser) keys, e.g. https://shop.example.
--
-- Stored normalized (lower-case scheme and host, no default port, no path: exactly what a browser puts in
-- the Origin header), so the collector compares strings. The collector loads the whole table into memory
-- and refreshes it every JOURNEYS_KEY_CACHE_TTL_S seconds: a flood of requests or preflights from random
-- origins never reaches PostgreSQL (collector/cors.py).
CREATE TABLE IF NOT EXISTS project_origins (
    project_id  text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    origin      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, origin)
);
