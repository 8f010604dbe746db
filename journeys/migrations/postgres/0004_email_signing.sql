-- Per-project keys that sign email open pixels and tracked links (journeys/email_tokens.py).
--
-- Unlike API keys these are stored as they are, not hashed: an HMAC needs the secret itself, on the
-- collector (to verify) and for the sender (`journeys email key` prints it). A project has one current
-- key (retires_at NULL) that new links are signed with; a rotated-out key keeps verifying until its
-- retires_at, so links in mail already sent keep working for the grace period.
CREATE TABLE IF NOT EXISTS email_signing_keys (
    id          bigserial PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    secret      text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retires_at  timestamptz
);

-- At most one current key per project; also what makes "create it if missing" safe under concurrency.
CREATE UNIQUE INDEX IF NOT EXISTS email_signing_keys_current ON email_signing_keys (project_id) WHERE retires_at IS NULL;
CREATE INDEX IF NOT EXISTS email_signing_keys_project ON email_signing_keys (project_id, retires_at);
