-- Journey maps and segments, versioned: every change is a new row, old versions stay readable, and KPIs
-- can be computed against any version. The body is the validated, normalized document (defaults filled
-- in), so "unchanged" is a plain jsonb equality.
CREATE TABLE IF NOT EXISTS definitions (
    project_id  text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('map', 'segment')),
    name        text NOT NULL,
    version     integer NOT NULL CHECK (version > 0),
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, kind, name, version)
);
