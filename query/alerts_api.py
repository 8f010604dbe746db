"""HTTP for alerts (docs/alerts.md).

* ``GET /v1/alerts`` (read key): each rule's state per segment, and the history of transitions with their
  deliveries (delivered, pending with its failed attempts, given up). ``rule=`` narrows it; ``limit=`` caps
  the history (default 50, at most 1000).
* ``/v1/alerts/rules[/{name}[/versions]]``: rules, versioned like maps (query/definitions_api.py).
* ``GET``/``POST /v1/alerts/signing-secret`` (admin key): the project's webhook signing secret; ``POST``
  replaces it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from journeys.http import ApiError, json_response
from query import definitions
from query.alert_delivery import signing_secret
from query.alert_rules import redact
from query.alerts import from_jsonb
from query.appkeys import STORES
from query.auth import principal_of
from query.maps import SLUG, SLUG_RULE
from query.reads import iso

HISTORY_LIMIT = 50
SHOWN_ATTEMPTS = 10
MAX_HISTORY = 1000

_STATES_SQL = """
SELECT rule, segment, state, since, rule_version, evaluated_at, last FROM alert_states
WHERE project_id = $1 AND ($2::text IS NULL OR rule = $2) ORDER BY rule, segment
"""
_EVENTS_SQL = """
SELECT id, rule, rule_version, segment, kind, at, details FROM alert_events
WHERE project_id = $1 AND ($2::text IS NULL OR rule = $2) ORDER BY id DESC LIMIT $3
"""
_DELIVERIES_SQL = """
SELECT d.id, d.event_id, d.url, d.format, d.attempts, d.next_attempt_at, d.delivered_at, d.gave_up_at,
       coalesce(array_agg(a.at ORDER BY a.at) FILTER (WHERE a.at IS NOT NULL AND a.error IS NOT NULL), '{}') AS failed_at,
       coalesce(array_agg(a.status ORDER BY a.at) FILTER (WHERE a.at IS NOT NULL AND a.error IS NOT NULL), '{}') AS failed_status,
       coalesce(array_agg(a.error ORDER BY a.at) FILTER (WHERE a.at IS NOT NULL AND a.error IS NOT NULL), '{}') AS failed_error
FROM alert_deliveries d LEFT JOIN alert_attempts a ON a.delivery_id = d.id
WHERE d.project_id = $1 AND d.event_id = ANY($2::bigint[])
GROUP BY d.id ORDER BY d.event_id, d.url
"""


routes = web.RouteTableDef()


@routes.get("/v1/alerts")
async def alerts(request: web.Request) -> web.Response:
    principal = await principal_of(request, ("read", "admin"))
    pg = request.app[STORES].pg
    rule = request.query.get("rule")
    if rule is not None and not SLUG.match(rule):
        raise ApiError(400, [{"field": "rule", "reason": SLUG_RULE}])
    limit = _limit(request)
    return json_response(await alerts_view(pg, principal.project_id, rule, limit))


@routes.get("/v1/alerts/signing-secret")
async def get_secret(request: web.Request) -> web.Response:
    principal = await principal_of(request, ("admin",))
    return json_response({"secret": await signing_secret(request.app[STORES].pg, principal.project_id)})


@routes.post("/v1/alerts/signing-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    principal = await principal_of(request, ("admin",))
    secret = await signing_secret(request.app[STORES].pg, principal.project_id, rotate=True)
    return json_response({"secret": secret})


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return HISTORY_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5) or not 1 <= int(raw) <= MAX_HISTORY:
        raise ApiError(400, [{"field": "limit", "reason": f"must be an integer from 1 to {MAX_HISTORY}"}])
    return int(raw)


async def alerts_view(pg: Any, project_id: str, rule: str | None, limit: int) -> dict[str, Any]:
    """What ``GET /v1/alerts`` answers (the CLI prints the same)."""
    rules = [v for v in await definitions.latest_of_each(pg, project_id, "alert") if rule is None or v.name == rule]
    states = await pg.fetch(_STATES_SQL, project_id, rule)
    events = await pg.fetch(_EVENTS_SQL, project_id, rule, limit)
    deliveries = await pg.fetch(_DELIVERIES_SQL, project_id, [e["id"] for e in events])
    by_event: dict[int, list[dict[str, Any]]] = {}
    for d in deliveries:
        state = "delivered" if d["delivered_at"] else "gave_up" if d["gave_up_at"] else "pending"
        by_event.setdefault(d["event_id"], []).append(
            {
                "id": str(d["id"]),
                "target": redact(d["url"]),
                "format": d["format"],
                "state": state,
                "attempts": d["attempts"],
                "delivered_at": None if d["delivered_at"] is None else iso(d["delivered_at"]),
                "gave_up_at": None if d["gave_up_at"] is None else iso(d["gave_up_at"]),
                "next_attempt_at": iso(d["next_attempt_at"]) if state == "pending" else None,
                # The latest few: a receiver down for days leaves hundreds of attempts per notification.
                "failed_attempts": [
                    {"at": iso(at), "status": status, "error": error}
                    for at, status, error in list(zip(d["failed_at"], d["failed_status"], d["failed_error"]))[
                        -SHOWN_ATTEMPTS:
                    ]
                ],
                "failed_attempts_total": len(d["failed_at"]),
            }
        )
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for s in states:
        by_rule.setdefault(s["rule"], []).append(
            {
                "segment": s["segment"] or None,
                "state": s["state"],
                "since": iso(s["since"]),
                "rule_version": s["rule_version"],
                "evaluated_at": iso(s["evaluated_at"]),
                "evaluation": from_jsonb(s["last"]),
            }
        )
    return {
        "rules": [
            {
                "name": v.name,
                "version": v.version,
                "enabled": v.body["enabled"],
                "map": v.body["map"],
                "stage": v.body["stage"],
                "metric": v.body["metric"],
                "window_days": v.body["window_days"],
                "firing": any(s["state"] == "firing" for s in by_rule.get(v.name, [])),
                "states": by_rule.get(v.name, []),
            }
            for v in rules
        ],
        "history": [
            {
                "id": e["id"],
                "rule": e["rule"],
                "rule_version": e["rule_version"],
                "segment": e["segment"] or None,
                "kind": e["kind"],
                "at": iso(e["at"]),
                **from_jsonb(e["details"]),
                "deliveries": by_event.get(e["id"], []),
            }
            for e in events
        ],
    }
