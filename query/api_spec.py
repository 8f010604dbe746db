"""The query service's OpenAPI document (served at ``/openapi.json``; shared pieces in :mod:`journeys.openapi`)."""

from __future__ import annotations

from typing import Any

from journeys.openapi import document, error_response, json_ok, operation, ops_paths, path_param, query_param, ref
from journeys.events import MAX_ID_CHARS

MAX_LIMIT = 10_000

_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_IDS = {"type": "array", "items": {"type": "string"}, "description": "Every id of the stitched customer."}

STORED_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["message_id", "type", "timestamp", "received_at"],
    "properties": {
        **{
            name: {"type": "string"}
            for name in (
                "message_id",
                "type",
                "event",
                "channel",
                "touchpoint",
                "sentiment",
                "user_id",
                "anonymous_id",
                "group_id",
                "previous_id",
                "page_url",
                "referrer",
                "utm_source",
                "utm_medium",
                "utm_campaign",
                "utm_term",
                "utm_content",
            )
        },
        "timestamp": {"type": "string", "format": "date-time"},
        "received_at": {"type": "string", "format": "date-time"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": {"type": "object"},
    },
}

CUSTOMER_EVENTS: dict[str, Any] = {
    "type": "object",
    "required": ["customer_id", "ids", "count", "events"],
    "properties": {
        "customer_id": {"type": "string"},
        "ids": _IDS,
        "count": {"type": "integer", "minimum": 0},
        "events": {"type": "array", "items": ref("StoredEvent")},
    },
}

CUSTOMER: dict[str, Any] = {
    "type": "object",
    "required": ["customer_id", "ids", "traits", "first_touch", "segments"],
    "properties": {
        "customer_id": {"type": "string"},
        "ids": _IDS,
        "traits": {"type": "object", "description": "Latest value of each identify trait."},
        "first_touch": {
            "type": ["object", "null"],
            "properties": {
                "first_seen": {"type": "string", "format": "date-time"},
                "first_channel": {"type": "string"},
                "first_utm_source": {"type": "string"},
                "first_utm_medium": {"type": "string"},
                "first_utm_campaign": {"type": "string"},
            },
        },
        "segments": {"type": "array", "items": {"type": "string"}, "description": "Segments the customer is in now."},
    },
}

JOURNEY: dict[str, Any] = {
    "type": "object",
    "required": ["customer_id", "ids", "map", "stages", "touchpoints", "transitions", "current_stage"],
    "properties": {
        "customer_id": {"type": "string"},
        "ids": _IDS,
        "map": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "integer"}}},
        "stages": {"type": "array", "items": {"type": "object"}},
        "touchpoints": {"type": "array", "items": {"type": "object"}},
        "transitions": {"type": "array", "items": {"type": "object"}},
        "current_stage": {"type": ["string", "null"]},
        "current_stage_entered_at": _NULLABLE_TIME,
        "time_in_current_stage_seconds": {"type": ["number", "null"]},
        "non_linear": {"type": "object"},
    },
}

STATS: dict[str, Any] = {
    "type": "object",
    "required": ["events", "customers", "ids", "quarantined", "newest_received_at", "newest_event_at"],
    "properties": {
        "events": {"type": "integer", "minimum": 0, "description": "Distinct events (each messageId once)."},
        "customers": {
            "type": "integer",
            "minimum": 0,
            "description": "People: each id counted as the customer it is stitched to now.",
        },
        "ids": {"type": "integer", "minimum": 0, "description": "Distinct ids (anonymous and user ids) with events."},
        "quarantined": {
            "type": "integer",
            "minimum": 0,
            "description": "Distinct quarantined events (a resent bad event once).",
        },
        "newest_received_at": _NULLABLE_TIME,
        "newest_event_at": _NULLABLE_TIME,
    },
}

QUARANTINE_SAMPLE: dict[str, Any] = {
    "type": "object",
    "required": ["message_id", "request_id", "batch_index", "received_at", "errors", "raw"],
    "properties": {
        "message_id": {"type": "string", "description": "Empty when the event had none (or not as a string)."},
        "request_id": {"type": "string", "description": "The X-Request-Id of the request that carried it."},
        "batch_index": {"type": "integer", "minimum": 0},
        "received_at": {"type": "string", "format": "date-time"},
        "errors": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Every problem found, as answered then.",
        },
        "raw": {"description": "The event as sent (any JSON value)."},
    },
}

QUARANTINE: dict[str, Any] = {
    "type": "object",
    "required": ["since", "quarantined", "reasons", "truncated"],
    "properties": {
        "since": _NULLABLE_TIME,
        "quarantined": {
            "type": "integer",
            "minimum": 0,
            "description": "Distinct events in quarantine (since `since`).",
        },
        "reasons": {
            "type": "array",
            "description": "By the field and reason of each event's first error (numbers read as N), most events first.",
            "items": {
                "type": "object",
                "required": ["field", "reason", "count", "first_seen", "last_seen", "samples"],
                "properties": {
                    "field": {"type": "string"},
                    "reason": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1, "description": "Events, each message once."},
                    "first_seen": {"type": "string", "format": "date-time"},
                    "last_seen": {"type": "string", "format": "date-time"},
                    "samples": {
                        "type": "array",
                        "maxItems": 3,
                        "items": ref("QuarantineSample"),
                        "description": "The newest distinct events.",
                    },
                },
            },
        },
        "truncated": {"type": "boolean", "description": "More reasons than `limit`."},
    },
}

_TIME = {"type": "string", "format": "date-time"}
_KEY_KINDS = ["write", "read", "public", "admin"]

API_KEY: dict[str, Any] = {
    "type": "object",
    "description": "A key as listed: its prefix, never its secret (docs/keys.md).",
    "required": ["prefix", "kind", "created_at", "last_used_at", "revoked", "revoked_at"],
    "properties": {
        "prefix": {
            "type": "string",
            "description": "The first 6 characters (kind and 3 more): all that is kept in clear.",
        },
        "kind": {"type": "string", "enum": _KEY_KINDS},
        "created_at": _TIME,
        "last_used_at": {
            **_NULLABLE_TIME,
            "description": "To within about a minute (plus the key-cache TTL); null: never used.",
        },
        "revoked": {"type": "boolean"},
        "revoked_at": _NULLABLE_TIME,
        "current": {"type": "boolean", "description": "GET /v1/keys: the key making the request."},
    },
}

API_KEYS: dict[str, Any] = {
    "type": "object",
    "required": ["project", "keys"],
    "properties": {"project": {"type": "string"}, "keys": {"type": "array", "items": ref("ApiKey")}},
}

NEW_API_KEY: dict[str, Any] = {
    "allOf": [ref("ApiKey")],
    "type": "object",
    "required": ["key"],
    "properties": {"key": {"type": "string", "description": "The secret: shown in this answer only, stored hashed."}},
}

REVOKED_API_KEYS: dict[str, Any] = {
    "type": "object",
    "required": ["revoked", "already_revoked"],
    "properties": {
        "revoked": {
            "type": "array",
            "items": ref("ApiKey"),
            "description": "The key (every match if all were revoked already).",
        },
        "already_revoked": {"type": "boolean", "description": "Nothing changed: it was revoked before."},
    },
}

FORGOTTEN: dict[str, Any] = {
    "type": "object",
    "required": ["customer_id", "forgotten_ids"],
    "properties": {"customer_id": {"type": "string"}, "forgotten_ids": _IDS},
}

DEFINITION_VERSION: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "created_at", "definition"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "created_at": {"type": "string", "format": "date-time"},
        "definition": {"type": "object", "description": "The normalized document."},
    },
}

APPLIED: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "previous_version", "changed", "diff", "warnings"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "previous_version": {"type": ["integer", "null"]},
        "changed": {"type": "boolean"},
        "diff": {"type": "string", "description": "Unified diff of the normalized YAML; empty when unchanged."},
        "warnings": {
            "type": "array",
            "description": "Valid but almost certainly not meant, e.g. a touchpoint rule an earlier one always shadows.",
            "items": {
                "type": "object",
                "required": ["path", "reason"],
                "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}

_CUSTOMER_ID = path_param(
    "customer_id", "Any of the customer's ids (user id, anonymous id, alias); may contain '/'.", max_length=MAX_ID_CHARS
)
_VERSION = query_param(
    "version", {"type": "integer", "minimum": 1, "maximum": 1_000_000}, "A given version; default the latest."
)
_READ = (400, 401, 403)


def _definition_paths(kind: str, plural: str, schema_name: str) -> dict[str, Any]:
    name = path_param("name", f"The {kind}'s name.")
    return {
        f"/v1/{plural}": {
            "get": operation(
                f"Every {kind}, latest version",
                tags=["definitions"],
                responses={
                    200: json_ok(
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": {"type": "array", "items": ref("DefinitionVersion")}},
                        }
                    )
                },
                errors=(401, 403),
            )
        },
        f"/v1/{plural}/{{name}}": {
            "get": operation(
                f"One {kind} (latest, or ?version=N)",
                tags=["definitions"],
                parameters=[name, _VERSION],
                responses={200: json_ok(ref("DefinitionVersion"))},
                errors=(*_READ, 404),
            ),
            "put": operation(
                f"Create a {kind}, or add a version if it changed (admin key)",
                tags=["definitions"],
                description="`kubectl apply` semantics: 201 for version 1, 200 otherwise (changed or not); "
                "every validation problem is listed at once with its path.",
                parameters=[name],
                body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": ref(schema_name)},
                        "application/yaml": {"schema": ref(schema_name)},
                    },
                },
                responses={
                    200: json_ok(ref("Applied"), "Applied (a new version, or unchanged)."),
                    201: json_ok(ref("Applied"), "Created."),
                },
                errors=(400, 401, 403, 413),
            ),
        },
        f"/v1/{plural}/{{name}}/versions": {
            "get": operation(
                f"Versions of a {kind}",
                tags=["definitions"],
                parameters=[name],
                responses={
                    200: json_ok(
                        {
                            "type": "object",
                            "required": ["name", "versions"],
                            "properties": {
                                "name": {"type": "string"},
                                "versions": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "version": {"type": "integer"},
                                            "created_at": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        }
                    )
                },
                errors=(401, 403, 404),
            )
        },
    }


def _alert_paths() -> dict[str, Any]:
    """``/v1/alerts`` and the signing secret (query/alerts_api.py, docs/alerts.md)."""
    secret = json_ok({"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}})
    return {
        "/v1/alerts": {
            "get": operation(
                "Every alert rule's state per segment, and the history of transitions with their deliveries",
                tags=["alerts"],
                description="History newest first: fired and resolved, each with its webhook deliveries (delivered, "
                "pending with its failed attempts, or given up). Webhook targets show scheme and host only.",
                parameters=[
                    query_param("rule", {"type": "string"}, "One rule only."),
                    query_param(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Transitions at most (default 50)."
                    ),
                ],
                responses={200: json_ok({"type": "object", "required": ["rules", "history"]})},
                errors=_READ,
            )
        },
        "/v1/alerts/signing-secret": {
            "get": operation(
                "The project's webhook signing secret (admin key)",
                tags=["alerts"],
                description="Made on first use. Receivers check X-Journeys-Signature with it (docs/alerts.md).",
                responses={200: secret},
                errors=(401, 403),
            ),
            "post": operation(
                "Replace the webhook signing secret (admin key)",
                tags=["alerts"],
                description="Notifications sent from now on are signed with the new secret.",
                responses={200: secret},
                errors=(401, 403),
            ),
        },
    }


def _key_paths() -> dict[str, Any]:
    """``/v1/keys`` (query/keys_api.py, docs/keys.md)."""
    return {
        "/v1/keys": {
            "get": operation(
                "The project's keys, by prefix (admin key)",
                tags=["keys"],
                description="Every key, revoked ones too, oldest first; never a secret. `current` marks the key "
                "making the request.",
                responses={200: json_ok(ref("ApiKeys"))},
                errors=(401, 403),
            ),
            "post": operation(
                "Make a key (admin key)",
                tags=["keys"],
                description="The secret is in this answer (`Cache-Control: no-store`) and nowhere else: only its "
                "SHA-256 is stored.",
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["kind"],
                                "additionalProperties": False,
                                "properties": {"kind": {"type": "string", "enum": _KEY_KINDS}},
                            }
                        }
                    },
                },
                responses={201: json_ok(ref("NewApiKey"), "Made; the secret is in `key`.")},
                errors=(400, 401, 403, 413),
            ),
        },
        "/v1/keys/{prefix}": {
            "delete": operation(
                "Revoke a key by its prefix (admin key)",
                tags=["keys"],
                description="The prefix exactly as GET /v1/keys lists it; never a whole key (a URL is logged: "
                "400). Services stop accepting the key within JOURNEYS_KEY_CACHE_TTL_S. A key already revoked "
                "answers 200 with `already_revoked`. 409 when two live keys share the prefix (revoke it whole "
                "with `journeys key revoke`) or when it is the key making the request (use another admin key).",
                parameters=[
                    path_param("prefix", "The key's prefix, as listed (6 characters, e.g. jw_AbC).", max_length=6)
                ],
                responses={
                    200: json_ok(ref("RevokedApiKeys")),
                    409: error_response(409, "Two live keys have this prefix, or it is the key making the request."),
                },
                errors=(400, 401, 403, 404),
            )
        },
    }


# The KPI bodies are left open (``type: object``) until their shapes settle; what an answer includes is fixed.
_KPI_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["includes"],
    "properties": {
        "includes": {
            "type": "object",
            "required": ["acknowledged_before"],
            "properties": {
                "acknowledged_before": {
                    **_NULLABLE_TIME,
                    "description": "Every event a collector acknowledged (answered 200) before this time is counted "
                    "in this answer; `null` only before the stage-state updater's first poll.",
                }
            },
        }
    },
}


def _kpi_paths() -> dict[str, Any]:
    """``/v1/kpis`` and ``/v1/kpis/daily`` (query/kpis_api.py). The result bodies are left open
    (``type: object``) until the KPI shapes settle; the parameters and error answers are exact."""
    day = {"type": "string", "format": "date"}
    parameters = [
        query_param("map", {"type": "string", "minLength": 1}, "The journey map (its latest version).", required=True),
        query_param(
            "version",
            {"type": "integer", "minimum": 1},
            "Must be the version KPIs are kept for (the latest, once computed) if given.",
        ),
        query_param(
            "segment", {"type": "string"}, "A segment name, `*` for every segment side by side; default all customers."
        ),
        query_param("from", day, "First UTC day, included (default: 29 days before `to`)."),
        query_param("to", day, "Last UTC day, included (default: today)."),
        query_param("format", {"type": "string", "enum": ["json", "csv"]}, "json (default) or csv."),
    ]

    def kpi_op(summary: str) -> dict[str, Any]:
        return operation(
            summary,
            tags=["kpis"],
            parameters=parameters,
            responses={
                200: {
                    "description": "The KPIs, as JSON or (format=csv) as CSV. While newer map or segment versions are "
                    "being computed they are those of the previous versions, and `rebuilding` says since when "
                    "(`null` otherwise; `map.version` is the version answered for). `includes.acknowledged_before`: "
                    "every event a collector acknowledged before that time is counted in this answer (docs/kpis.md).",
                    "headers": {
                        "X-Journeys-Acknowledged-Before": {
                            "description": "`includes.acknowledged_before`, for CSV answers too (absent before the "
                            "stage-state updater's first poll).",
                            "schema": {"type": "string", "format": "date-time"},
                        }
                    },
                    "content": {
                        "application/json": {"schema": _KPI_ANSWER},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                503: error_response(
                    503,
                    "KPIs for this map, version or segment are being computed for the first time.",
                    retry_after=True,
                ),
            },
            errors=(400, 401, 403, 404),
        )

    preview = operation(
        "The stage KPIs a draft map (and segment) would give over all data; publishes nothing",
        tags=["kpis"],
        description='Body: `{"map": {…}, "segment": {…}}` in the map and segment formats (`segment` optional: it '
        "joins the project's segments or replaces its namesake), or a bare map; JSON, or YAML with a YAML "
        "Content-Type. The answer is what `GET /v1/kpis` gives once the draft is applied and computed, with "
        '`preview: true` and `map.version: null` (docs/kpis.md, "Preview a draft").',
        parameters=[p for p in parameters if p["name"] not in ("map", "version")],
        body={
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        },
        responses={
            200: {
                "description": "The draft's KPIs, as JSON or (format=csv) as CSV.",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
        },
        errors=(400, 401, 403, 404, 413),
    )
    return {
        "/v1/kpis": {"get": kpi_op("Stage KPIs of a map over a window of days")},
        "/v1/kpis/daily": {"get": kpi_op("Stage KPIs of a map, day by day")},
        "/v1/kpis/preview": {"post": preview},
    }


_LAST_TOUCH: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "The customer's latest event (over every stitched id, each message once): its `touchpoint` and "
    "`channel` columns and its time; null without events.",
    "properties": {
        "touchpoint": {"type": "string"},
        "channel": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
    },
}

KPI_CUSTOMERS: dict[str, Any] = {
    "type": "object",
    "required": [
        "map",
        "window",
        "as_of",
        "rebuilding",
        "includes",
        "segment",
        "stage",
        "outcome",
        "total",
        "customers",
        "next_cursor",
    ],
    "properties": {
        "map": {"type": "object"},
        "window": {"type": "object"},
        "as_of": {
            "type": "string",
            "format": "date-time",
            "description": "Now, for dropped vs in progress; fixed by the cursor for every later page.",
        },
        "rebuilding": {"type": ["object", "null"]},
        "includes": {"type": "object"},
        "segment": {"type": ["string", "null"]},
        "stage": {"type": "object"},
        "outcome": {"type": "string", "enum": ["reached", "entered", "converted", "dropped", "in_progress"]},
        "total": {
            "type": "integer",
            "minimum": 0,
            "description": "Customers in the whole list: the KPI count (same as_of).",
        },
        "customers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "customer_id",
                    "entered_at",
                    "outcome",
                    "moved_on_at",
                    "brought_in_by",
                    "current_stage",
                    "last_touch",
                ],
                "properties": {
                    "customer_id": {"type": "string"},
                    "entered_at": {"type": "string", "format": "date-time", "description": "entered(S)."},
                    "outcome": {
                        "type": ["string", "null"],
                        "enum": ["converted", "dropped", "in_progress", None],
                        "description": "At this stage as of `as_of` (null at the last stage).",
                    },
                    "moved_on_at": _NULLABLE_TIME,
                    "brought_in_by": {
                        "type": "object",
                        "description": "The touchpoint rule and channel of their entry.",
                    },
                    "current_stage": {
                        "type": ["string", "null"],
                        "description": "The stage of their latest transition.",
                    },
                    "last_touch": _LAST_TOUCH,
                },
            },
        },
        "next_cursor": {
            "type": ["string", "null"],
            "description": "Pass as `cursor` for the next page; null on the last.",
        },
    },
}

_RANKED = {
    "type": "array",
    "items": {"type": "object"},
    "description": "Most customers first (ties by name), at most 10.",
}
DROPPED_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": ["stage", "dropped", "last_touchpoints", "last_channels", "after_entry"],
    "properties": {
        "stage": {"type": "object"},
        "segment": {"type": ["string", "null"]},
        "dropped": {"type": "integer", "minimum": 0, "description": "The KPI `dropped` of the stage (same as_of)."},
        "last_touchpoints": _RANKED,
        "last_channels": _RANKED,
        "after_entry": {
            "type": "object",
            "description": "Their events after entered(S), up to entered(S) + the conversion window.",
            "properties": {"customers": {"type": "integer", "minimum": 0}, "touchpoints": _RANKED, "channels": _RANKED},
        },
    },
}

CUSTOMER_SEARCH: dict[str, Any] = {
    "type": "object",
    "required": ["customers", "truncated"],
    "properties": {
        "customers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["customer_id", "matched_ids", "last_touch"],
                "properties": {"customer_id": {"type": "string"}, "matched_ids": _IDS, "last_touch": _LAST_TOUCH},
            },
        },
        "truncated": {"type": "boolean", "description": "More customers matched than `limit`."},
    },
}


def _kpi_customer_paths() -> dict[str, Any]:
    """``/v1/kpis/customers`` and ``/v1/kpis/dropped`` (query/kpi_customers.py, docs/kpis.md)."""
    day = {"type": "string", "format": "date"}
    common = [
        query_param("map", {"type": "string", "minLength": 1}, "The journey map (its latest version).", required=True),
        query_param("stage", {"type": "string", "minLength": 1}, "The stage's id.", required=True),
        query_param(
            "segment", {"type": "string"}, "A segment name; default all customers (`*` is refused: one list at a time)."
        ),
        query_param("from", day, "First UTC day, included (default: 29 days before `to`)."),
        query_param("to", day, "Last UTC day, included (default: today)."),
        query_param("version", {"type": "integer", "minimum": 1}, "Must be the version KPIs are kept for, if given."),
    ]
    return {
        "/v1/kpis/customers": {
            "get": operation(
                "The customers behind a stage count",
                tags=["kpis"],
                description="Exactly the customers `/v1/kpis` counts as `outcome` at `stage` (same facts, window and "
                'now; docs/kpis.md, "The customers behind a count"), newest entry first, paged by `cursor`. '
                "`format=csv` streams every page.",
                parameters=[
                    *common,
                    query_param(
                        "outcome",
                        {"type": "string", "enum": ["reached", "entered", "converted", "dropped", "in_progress"]},
                        "Which count.",
                        required=True,
                    ),
                    query_param(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Customers per page (default 100)."
                    ),
                    query_param("cursor", {"type": "string"}, "`next_cursor` of the previous page."),
                    query_param(
                        "format", {"type": "string", "enum": ["json", "csv"]}, "json (default) or csv (every page)."
                    ),
                ],
                responses={
                    200: {
                        "description": "One page (JSON), or the whole list (CSV).",
                        "content": {
                            "application/json": {"schema": ref("KpiCustomers")},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    503: error_response(
                        503,
                        "KPIs for this map, version or segment are being computed for the first time.",
                        retry_after=True,
                    ),
                },
                errors=(400, 401, 403, 404),
            )
        },
        "/v1/kpis/dropped": {
            "get": operation(
                "What the customers who dropped at a stage did",
                tags=["kpis"],
                description="Their most frequent last touchpoints and channels, and their touchpoints between entering "
                'the stage and the end of its conversion window (docs/kpis.md, "After drop-off").',
                parameters=common,
                responses={
                    200: json_ok(ref("DroppedSummary")),
                    503: error_response(
                        503,
                        "KPIs for this map, version or segment are being computed for the first time.",
                        retry_after=True,
                    ),
                },
                errors=(400, 401, 403, 404),
            )
        },
    }


def query_openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/customers": {
            "get": operation(
                "Find customers: by id prefix, or the most recently active",
                tags=["customers"],
                description="`prefix=P`: customers with an id (with events) starting with P, by customer id. "
                "`recent=1`: the customers with the latest events (of the last 30 days; all time when fewer). One of "
                "the two is required (docs/identity.md).",
                parameters=[
                    query_param(
                        "prefix",
                        {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
                        "Start of any of the customer's ids.",
                    ),
                    query_param(
                        "recent", {"type": "string", "enum": ["1", "true"]}, "The most recently active customers."
                    ),
                    query_param(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 100}, "At most this many (default 20)."
                    ),
                ],
                responses={200: json_ok(ref("CustomerSearch"))},
                errors=_READ,
            )
        },
        "/v1/customers/{customer_id}/events": {
            "get": operation(
                "A customer's events, every id stitched, each event once, in time order",
                tags=["customers"],
                parameters=[
                    _CUSTOMER_ID,
                    query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                        "At most this many (default 1000).",
                    ),
                ],
                responses={
                    200: json_ok(ref("CustomerEvents")),
                    404: error_response(404, "No customer with this id (no event of any of their ids)."),
                },
                errors=_READ,
            )
        },
        "/v1/customers/{customer_id}/journey": {
            "get": operation(
                "A customer's journey through a map",
                tags=["customers"],
                parameters=[
                    _CUSTOMER_ID,
                    query_param("map", {"type": "string", "minLength": 1}, "The journey map.", required=True),
                    _VERSION,
                ],
                responses={
                    200: json_ok(
                        ref("Journey"), "The journey; empty for a known customer with no touchpoint of the map."
                    )
                },
                errors=(*_READ, 404),
            )
        },
        "/v1/customers/{customer_id}": {
            "get": operation(
                "A customer: ids, latest traits, first touch, segments",
                tags=["customers"],
                parameters=[_CUSTOMER_ID],
                responses={
                    200: json_ok(ref("Customer")),
                    404: error_response(404, "No customer with this id (no event of any of their ids)."),
                },
                errors=_READ,
            ),
            "delete": operation(
                "Forget a customer everywhere (admin key)",
                tags=["customers"],
                description="Every event, trait, first touch and identity link of every id of the customer.",
                parameters=[_CUSTOMER_ID],
                responses={200: json_ok(ref("Forgotten"))},
                errors=_READ,
            ),
        },
        "/v1/stats": {
            "get": operation(
                "Project totals and freshness",
                tags=["customers"],
                responses={200: json_ok(ref("Stats"))},
                errors=(401, 403),
            )
        },
        "/v1/quarantine": {
            "get": operation(
                "Quarantined events by reason, with samples (admin key)",
                tags=["quarantine"],
                description="Events that failed validation inside otherwise good requests, grouped by the field and "
                "reason of their first error; each message counted once. Replay those that pass today's rules with "
                "`journeys quarantine replay` (the collector's POST /v1/quarantine/replay). See docs/quarantine.md.",
                parameters=[
                    query_param(
                        "since",
                        {"type": "string", "format": "date-time"},
                        "Only what was quarantined at or after this time.",
                    ),
                    query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "At most this many reasons (default 100).",
                    ),
                ],
                responses={200: json_ok(ref("Quarantine"))},
                errors=_READ,
            )
        },
        **_key_paths(),
        **_kpi_paths(),
        **_kpi_customer_paths(),
        **_definition_paths("map", "maps", "MapDocument"),
        **_definition_paths("segment", "segments", "SegmentDocument"),
        **_definition_paths("alert rule", "alerts/rules", "AlertRuleDocument"),
        **_alert_paths(),
    }
    from query.dashboard import dashboard_openapi_paths

    paths.update(dashboard_openapi_paths())
    paths.update(ops_paths("query service"))
    return document(
        title="journeys query service",
        description="Reads for a project's read key (admin keys also change maps and segments, forget "
        "customers, list quarantined events and manage the project's keys). Every user-supplied value reaches SQL as a bound parameter.",
        paths=paths,
        schemas={
            "StoredEvent": STORED_EVENT,
            "CustomerEvents": CUSTOMER_EVENTS,
            "Customer": CUSTOMER,
            "Journey": JOURNEY,
            "KpiCustomers": KPI_CUSTOMERS,
            "DroppedSummary": DROPPED_SUMMARY,
            "CustomerSearch": CUSTOMER_SEARCH,
            "Stats": STATS,
            "Forgotten": FORGOTTEN,
            "Quarantine": QUARANTINE,
            "QuarantineSample": QUARANTINE_SAMPLE,
            "DefinitionVersion": DEFINITION_VERSION,
            "Applied": APPLIED,
            "ApiKey": API_KEY,
            "ApiKeys": API_KEYS,
            "NewApiKey": NEW_API_KEY,
            "RevokedApiKeys": REVOKED_API_KEYS,
            "MapDocument": {
                "type": "object",
                "description": "A journey map: name, stages, touchpoints, targets (see docs/maps.md).",
                "required": ["stages"],
            },
            "AlertRuleDocument": {
                "type": "object",
                "description": "An alert rule: map, stage, metric, segments, window, threshold, webhooks (docs/alerts.md).",
                "required": ["map", "stage", "metric"],
            },
            "SegmentDocument": {
                "type": "object",
                "description": "A segment: name and rules over traits and first touch (see docs/maps.md).",
                "required": ["rules"],
            },
        },
        tags=[
            {"name": "customers", "description": "Customers and their events."},
            {"name": "definitions", "description": "Journey maps and segments (versioned)."},
            {"name": "kpis", "description": "Stage KPIs against the map's targets."},
            {"name": "quarantine", "description": "Events validation kept aside (admin key)."},
            {"name": "keys", "description": "The project's API keys (admin key)."},
            {"name": "alerts", "description": "Alerts when a stage falls below its target (docs/alerts.md)."},
            {"name": "operations", "description": "Probes."},
            {"name": "dashboard", "description": "The marketer dashboard page and its assets."},
        ],
    )
