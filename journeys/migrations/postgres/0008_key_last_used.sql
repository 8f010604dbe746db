-- When each API key was last used (journeys key list, GET /v1/keys). Written when a service looks a key up
-- because its cache missed, and only when the stored time is over a minute old (journeys/keys.py): at most
-- one write per key per minute across every process, never one per request.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS last_used_at timestamptz;
