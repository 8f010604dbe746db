-- Alerts (query/alerts.py, docs/alerts.md). Rules are definitions of kind 'alert', versioned like maps.
ALTER TABLE definitions DROP CONSTRAINT IF EXISTS definitions_kind_check;
ALTER TABLE definitions ADD CONSTRAINT definitions_kind_check CHECK (kind IN ('map', 'segment', 'alert'));

-- What each rule watches (one row per rule and segment; '' = all customers) stands at: 'ok' or 'firing', since
-- when, and the last evaluation's numbers. A transition updates it in the same transaction that records the
-- event and queues its notifications, so none is lost and none is queued twice.
CREATE TABLE IF NOT EXISTS alert_states (
    project_id    text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    rule          text NOT NULL,
    segment       text NOT NULL,
    state         text NOT NULL CHECK (state IN ('ok', 'firing')),
    since         timestamptz NOT NULL,
    rule_version  integer NOT NULL,
    evaluated_at  timestamptz NOT NULL,
    last          jsonb NOT NULL,
    watching      jsonb NOT NULL,  -- what the state is about (map, stage, metric, window): a change starts it afresh
    PRIMARY KEY (project_id, rule, segment)
);

-- Every transition: the history GET /v1/alerts shows.
CREATE TABLE IF NOT EXISTS alert_events (
    id            bigserial PRIMARY KEY,
    project_id    text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    rule          text NOT NULL,
    rule_version  integer NOT NULL,
    segment       text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('fired', 'resolved')),
    at            timestamptz NOT NULL,
    details       jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_events_project ON alert_events (project_id, id DESC);

-- The outbox: one row per notification and webhook, its body fixed when queued (a retry sends the same bytes;
-- the signature is made at each attempt, over its own timestamp). `id` is the idempotency key receivers see.
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id               uuid PRIMARY KEY,
    event_id         bigint NOT NULL REFERENCES alert_events(id) ON DELETE CASCADE,
    project_id       text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    url              text NOT NULL,
    format           text NOT NULL,
    body             bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    gave_up_at       timestamptz
);
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX IF NOT EXISTS alert_deliveries_event ON alert_deliveries (event_id);

CREATE TABLE IF NOT EXISTS alert_attempts (
    delivery_id  uuid NOT NULL REFERENCES alert_deliveries(id) ON DELETE CASCADE,
    at           timestamptz NOT NULL,
    status       integer,
    error        text,
    duration_ms  integer NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_attempts_delivery ON alert_attempts (delivery_id, at);

-- Each project's webhook signing secret (HMAC-SHA256); made on first use, replaced by a rotation.
CREATE TABLE IF NOT EXISTS alert_signing_secrets (
    project_id  text PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
