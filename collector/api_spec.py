"""The collector's OpenAPI document (served at ``/openapi.json``; shared pieces in :mod:`journeys.openapi`)."""

from __future__ import annotations

from typing import Any

from journeys.events import EVENT_TYPES, MAX_ID_CHARS
from journeys.openapi import document, error_response, json_ok, operation, ops_paths, ref

_ID = {
    "oneOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}, {"type": "integer"}],
    "description": "A string of 1-255 characters, or an integer (stored as its decimal text).",
}
_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601; naive means UTC."}

_EVENT_FIELDS: dict[str, Any] = {
    "messageId": {**_ID, "description": "Unique per event: retries with the same id are counted once."},
    "userId": _ID,
    "anonymousId": _ID,
    "timestamp": _TIME,
    "originalTimestamp": _TIME,
    "sentAt": {**_TIME, "description": "When the client sent it: corrects the device's clock skew."},
    "event": {"type": "string", "minLength": 1, "maxLength": 255, "description": "track: the event name."},
    "name": {"type": "string", "maxLength": 255, "description": "page/screen: its name."},
    "category": {"type": "string", "maxLength": 255},
    "groupId": {**_ID, "description": "group: the account id."},
    "previousId": {**_ID, "description": "alias: the id being merged into userId."},
    "channel": {"type": "string", "maxLength": 64, "description": "Touchpoint channel, e.g. web, store, email."},
    "touchpoint": {"type": "string", "maxLength": 255},
    "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative", ""]},
    "properties": {"type": "object"},
    "traits": {"type": "object"},
    "context": {"type": "object"},
    "integrations": {"type": "object"},
}

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Segment-spec event. userId or anonymousId is required; an invalid event inside a "
    "request with valid ones is quarantined (listed in the response), not refused.",
    "required": ["type"],
    "properties": {"type": {"type": "string", "enum": list(EVENT_TYPES)}, **_EVENT_FIELDS},
    "additionalProperties": True,
}

_SINGLE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One event; its type is the route's. `writeKey` may carry the key instead of Authorization.",
    "properties": {**_EVENT_FIELDS, "writeKey": {"type": "string"}},
    "additionalProperties": True,
}

BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {"type": "array", "minItems": 1, "items": ref("Event")},
        "sentAt": _TIME,
        "context": {"type": "object", "description": "Merged under each event's own context."},
        "writeKey": {"type": "string", "description": "The write key, when not sent in Authorization."},
    },
    "additionalProperties": True,
}

INGEST_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["success", "accepted", "quarantined"],
    "properties": {
        "success": {"const": True},
        "accepted": {"type": "integer", "minimum": 1, "description": "Events stored (durable before this answer)."},
        "quarantined": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "errors"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "reason"],
                            "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "description": "JSON, optionally with Content-Encoding gzip or deflate (size is capped after inflating).",
        "content": {"application/json": {"schema": schema}},
    }


def _ingest(summary: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return operation(
        summary,
        tags=["ingest"],
        description=description,
        body=_body(schema),
        responses={
            200: json_ok(ref("IngestResult"), "Accepted: every listed event is durable; bad ones are quarantined."),
            503: error_response(
                503, "The spool is full or the disk refused the write: nothing was stored.", retry_after=True
            ),
        },
        errors=(400, 401, 403, 413, 415, 429),
    )


def collector_openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/batch": {
            "post": _ingest(
                "Send a batch of events",
                ref("Batch"),
                "Segment's batch API: a write or public key, events of any type. A request with no valid "
                "event is refused whole (400, each event's problem listed) and nothing is stored.",
            )
        }
    }
    for kind in EVENT_TYPES:
        paths[f"/v1/{kind}"] = {
            "post": _ingest(
                f"Send one {kind} event", _SINGLE_EVENT_SCHEMA, f"Segment's /v1/{kind}: the body is the event."
            )
        }
    from collector.segment import BEACON_PATH, INGEST_PATHS, SEGMENT_SHORT_ROUTES

    paths["/v1/b"] = {
        "post": _ingest(
            "Send a batch of events (Segment's short route)",
            ref("Batch"),
            "The same as /v1/batch: analytics-next posts its batches here.",
        )
    }
    for short, kind in SEGMENT_SHORT_ROUTES.items():
        paths[f"/v1/{short}"] = {
            "post": _ingest(
                f"Send one {kind} event (Segment's short route)",
                _SINGLE_EVENT_SCHEMA,
                f"The same as /v1/{kind}: analytics.js and analytics-next post single events here.",
            )
        }
    paths[BEACON_PATH] = {
        "post": {
            **_ingest(
                "Send a batch of events by sendBeacon (RudderStack's beacon route)",
                ref("Batch"),
                "The same as /v1/batch, with the key in the query string as RudderStack's analytics-js sends it "
                "with useBeacon (sendBeacon cannot set headers). Only a public key: a write key in a URL is "
                "refused 403.",
            ),
            "parameters": [
                {
                    "name": "writeKey",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "A public key (jp_…).",
                },
            ],
            "security": [],
        }
    }
    from collector.rudder_config import rudder_config_openapi_paths

    paths.update(rudder_config_openapi_paths())
    from collector.email import email_openapi_paths  # the email routes document themselves beside their code

    paths.update(email_openapi_paths())
    from collector.imports import import_openapi_paths

    paths.update(import_openapi_paths())
    from collector.quarantine import replay_openapi_paths

    paths.update(replay_openapi_paths())
    from collector.cors import preflight_operation
    from collector.tracker import tracker_openapi_paths

    for path in INGEST_PATHS:
        paths[path]["options"] = preflight_operation()
    paths.update(tracker_openapi_paths())
    paths.update(ops_paths("collector"))
    return document(
        title="journeys collector",
        description="Segment-compatible event ingest. A 200 means the events are on disk (fsync'd) and will "
        "reach ClickHouse; a 503 means nothing was stored and the client should retry.",
        paths=paths,
        schemas={"Event": EVENT_SCHEMA, "Batch": BATCH_SCHEMA, "IngestResult": INGEST_RESULT_SCHEMA},
        tags=[
            {"name": "ingest", "description": "Events in."},
            {"name": "quarantine", "description": "Events validation kept aside (admin key)."},
            {"name": "operations", "description": "Probes."},
        ],
    )
