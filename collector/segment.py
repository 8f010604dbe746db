"""Segment's HTTP tracking API, which RudderStack's SDKs speak too: ``POST /v1/batch`` and the single-event
routes, Segment's one-letter routes, and RudderStack's beacon route.

Existing Segment and RudderStack clients work unchanged: the write key as the Basic username or ``writeKey``
in the body, gzip bodies. Each accepted request goes through the accept steps (:mod:`collector.accept`) and
is one spool record; a 200 means that record is fsync'd (see :mod:`collector.spool`).
"""

from __future__ import annotations

import time

from aiohttp import web

from collector.accept import Limits, append, authorize, count_refusal, prepare
from collector.appkeys import METRICS, SPOOL, STORES
from collector.cors import preflight
from collector.ingest import decode_body, events_of, parse_json
from collector.quarantine import log_quarantined
from collector.spool import SpoolError, SpoolFull
from journeys.events import EVENT_TYPES
from journeys.http import ApiError, json_response, presented_key, request_id
from journeys.keys import Principal


# analytics.js / analytics-next post to one-letter routes (api.segment.io/v1/t, …/v1/b when batching).
SEGMENT_SHORT_ROUTES = {"t": "track", "p": "page", "i": "identify", "s": "screen", "g": "group", "a": "alias"}
# RudderStack's browser SDK with useBeacon: navigator.sendBeacon cannot set headers, so the key rides in the
# query string. Only a public key may (a URL ends up in logs and histories; a write key is a secret).
BEACON_PATH = "/beacon/v1/batch"
#: Each route and the event type it implies (``/v1/track`` → ``track``); ``None``: a batch.
ROUTE_TYPES: dict[str, str | None] = {
    "/v1/batch": None,
    "/v1/b": None,
    **{f"/v1/{kind}": kind for kind in EVENT_TYPES},
    **{f"/v1/{short}": kind for short, kind in SEGMENT_SHORT_ROUTES.items()},
    BEACON_PATH: None,
}
INGEST_PATHS = list(ROUTE_TYPES)
RETRY_AFTER_S = "5"

routes = web.RouteTableDef()


async def ingest(request: web.Request) -> web.Response:
    """Every route of :data:`ROUTE_TYPES`: authorize → validate → encode → append (collector/accept.py)."""
    app = request.app
    metrics = app[METRICS]
    settings = app[STORES].settings
    resource = request.match_info.route.resource
    assert resource is not None  # a matched route
    path = resource.canonical
    received_ms = int(time.time() * 1000)
    try:
        # A key in the header is checked before the body is even decompressed; Segment's other
        # convention, writeKey inside the body, needs the body parsed first.
        key = presented_key(request)
        principal: Principal | None
        if key is None and path == BEACON_PATH:
            principal = await _beacon_principal(request)
        else:
            principal = await authorize(request, key) if key else None
        body = decode_body(
            await request.read(), request.headers.get("Content-Encoding", ""), settings.max_request_bytes
        )
        document = parse_json(body)
        events, inherited = events_of(document, ROUTE_TYPES[path])
        if principal is None:
            body_key = document.get("writeKey")
            principal = await authorize(request, body_key if isinstance(body_key, str) else None)
        prepared = prepare(
            events,
            inherited,
            project_id=principal.project_id,
            received_ms=received_ms,
            request_id=request_id(request),
            limits=Limits.of(settings),
        )
        outcome = prepared.outcome
        if not outcome.lines:
            # Nothing valid: refuse the request as a whole, store nothing, say what is wrong with each.
            errors = [{"index": q["index"], **e} for q in outcome.quarantined for e in q["errors"]]
            raise ApiError(400, errors, code="no_valid_events")
    except ApiError as refused:
        count_refusal(metrics, refused, _count_events(refused))
        raise

    try:
        await append(app[SPOOL], prepared.records)
    except SpoolFull as exc:
        metrics.spool_rejections.inc()
        metrics.events_rejected.labels("spool_full").inc(len(events))
        raise ApiError(
            503, [{"field": "server", "reason": f"overloaded, retry later ({exc})"}], {"Retry-After": RETRY_AFTER_S}
        ) from None
    except SpoolError as exc:
        metrics.events_rejected.labels("spool_unavailable").inc(len(events))
        raise ApiError(503, [{"field": "server", "reason": str(exc)}], {"Retry-After": RETRY_AFTER_S}) from None

    metrics.request_batch_size.observe(len(events))
    for channel, n in outcome.channels.items():
        metrics.count_accepted(channel, n)
    for item in outcome.quarantined:
        metrics.events_quarantined.labels(item["errors"][0]["field"].split(".")[0]).inc()
        log_quarantined(principal.project_id, item["errors"])  # rate-limited WARNING (collector/quarantine.py)
    return json_response({"success": True, "accepted": len(outcome.lines), "quarantined": outcome.quarantined})


for _path in INGEST_PATHS:
    routes.post(_path)(ingest)
    routes.route("OPTIONS", _path)(preflight)  # public keys write only from listed origins (collector/cors.py)


async def _beacon_principal(request: web.Request) -> Principal:
    """The beacon's key, from the query string: a public key only."""
    key = request.query.get("writeKey") or None
    if key is None:
        raise ApiError(
            401,
            [{"field": "writeKey", "reason": "required in the query string: a public key (jp_…)"}],
            code="unauthorized",
        )
    principal = await authorize(request, key)
    if principal.kind != "public":
        raise ApiError(
            403,
            [
                {
                    "field": "writeKey",
                    "reason": f"a {principal.kind} key must not be sent in a URL (URLs end up "
                    "in logs and browser histories): use a public key (jp_…) in web pages",
                }
            ],
            code="key_in_url",
        )
    return principal


def _count_events(refused: ApiError) -> int:
    # Per-event errors carry an index; a refusal of the request as a whole counts as one.
    indexes = {e["index"] for e in refused.errors if "index" in e}
    return len(indexes) or 1
