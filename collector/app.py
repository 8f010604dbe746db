"""The collector: Segment-spec HTTP ingest that acknowledges only what is durable.

Existing Segment and RudderStack clients work unchanged: ``POST /v1/batch`` and the single-event routes,
write key as the Basic username or ``writeKey`` in the body, gzip bodies. Each accepted request is one
spool record; a 200 means that record is fsync'd (see :mod:`collector.spool`).
"""

from __future__ import annotations

import logging
import time
from typing import Any
from collections.abc import AsyncIterator

from aiohttp import web

from collector.api_spec import collector_openapi
from collector.cors import add_cors, check_origin, cors_middleware
from collector.email import add_email_routes
from collector.identity import IdentityGraph
from collector.imports import add_import_route
from collector.ingest import RequestProblem, decode_body, events_of, parse_json, process_events
from collector.inserter import Inserter, encode_records
from collector.quarantine import add_quarantine_routes, log_quarantined
from collector.ratelimit import RateLimiter
from collector.rudder_config import add_rudder_config_route
from collector.spool import Spool, SpoolFull, SpoolError
from collector.tracker import add_tracker_route
from collector import watermark
from journeys.events import EVENT_TYPES
from journeys.http import (
    error_response,
    healthz,
    json_response,
    make_middleware,
    metrics_handler,
    postgres_check,
    presented_key,
    readyz_handler,
    request_id,
)
from journeys.metrics import Metrics
from journeys.openapi import openapi_handler
from journeys.stores import Stores

log = logging.getLogger(__name__)

STORES = web.AppKey("stores", Stores)
METRICS = web.AppKey("metrics", Metrics)
SPOOL = web.AppKey("spool", Spool)
INSERTER = web.AppKey("inserter", Inserter)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)

WRITE_KINDS = frozenset({"write", "public"})
# analytics.js / analytics-next post to one-letter routes (api.segment.io/v1/t, …/v1/b when batching).
SEGMENT_SHORT_ROUTES = {"t": "track", "p": "page", "i": "identify", "s": "screen", "g": "group", "a": "alias"}
# RudderStack's browser SDK with useBeacon: navigator.sendBeacon cannot set headers, so the key rides in the
# query string. Only a public key may (a URL ends up in logs and histories; a write key is a secret).
BEACON_PATH = "/beacon/v1/batch"
INGEST_PATHS = [
    "/v1/batch",
    "/v1/b",
    *(f"/v1/{kind}" for kind in EVENT_TYPES),
    *(f"/v1/{short}" for short in SEGMENT_SHORT_ROUTES),
    BEACON_PATH,
]
RETRY_AFTER_S = "5"


def create_app(stores: Stores, metrics: Metrics) -> web.Application:
    settings = stores.settings
    # aiohttp refuses bodies over this before we read them; gzip can be a little larger than its input.
    # Bodies are decompressed by us (collector.ingest.decode_body) with the inflated size capped, so
    # aiohttp's own decompression is off and its size limit applies to the bytes on the wire.
    app = web.Application(
        client_max_size=settings.max_request_bytes + 64 * 1024,
        # CORS outermost: its headers must reach every answer, errors rendered by the other one included.
        middlewares=[cors_middleware, make_middleware(metrics, "collector")],
        handler_args={"auto_decompress": False},
    )
    app[STORES] = stores
    app[METRICS] = metrics
    app.cleanup_ctx.append(_spool_and_inserter)
    app.cleanup_ctx.append(watermark.publisher(SPOOL, STORES))  # what is in ClickHouse, for KPI freshness
    app[RATE_LIMITER] = RateLimiter(settings, metrics)
    app.router.add_post("/v1/batch", _ingest_handler(None))
    app.router.add_post("/v1/b", _ingest_handler(None))
    for kind in EVENT_TYPES:
        app.router.add_post(f"/v1/{kind}", _ingest_handler(kind))
    for short, kind in SEGMENT_SHORT_ROUTES.items():
        app.router.add_post(f"/v1/{short}", _ingest_handler(kind))
    app.router.add_post(BEACON_PATH, _ingest_handler(None, key_in_query=True))
    add_cors(app, stores, INGEST_PATHS)  # OPTIONS preflights; public keys write only from listed origins
    add_tracker_route(app)  # GET /t.js: the browser tracker
    add_rudder_config_route(app, _authorize)  # GET /sourceConfig: RudderStack's browser SDK asks before it sends
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz_handler(_ready_checks))
    app.router.add_get("/metrics", metrics_handler(metrics))
    add_email_routes(app, stores, metrics, SPOOL)  # /v1/email/open|click/{token}: signed pixels and links
    add_import_route(app, stores, metrics, SPOOL, _authorize)  # POST /v1/import: streamed NDJSON, docs/import.md
    add_quarantine_routes(app, stores, metrics, SPOOL)  # POST /v1/quarantine/replay (admin key): docs/quarantine.md
    app.router.add_get("/openapi.json", openapi_handler(collector_openapi()))
    return app


async def _spool_and_inserter(app: web.Application) -> AsyncIterator[None]:
    settings = app[STORES].settings
    metrics = app[METRICS]
    spool = await Spool(
        settings.resolved_spool_dir, max_bytes=settings.spool_max_bytes, segment_bytes=settings.spool_segment_bytes
    ).open()
    spool.on_group_commit = metrics.group_commit_size.observe
    if spool.pending_bytes:
        log.info("spool: replaying %d bytes left by the previous run", spool.pending_bytes)
    inserter = Inserter(
        spool,
        app[STORES].clickhouse,
        metrics,
        max_bytes=settings.insert_max_bytes,
        linger_s=settings.insert_linger_ms / 1000,
        identity=IdentityGraph(app[STORES].clickhouse),
    )
    app[SPOOL] = spool
    app[INSERTER] = inserter
    metrics.spool_bytes.set_function(lambda: spool.pending_bytes)
    metrics.spool_oldest_age.set_function(spool.oldest_age_seconds)
    metrics.freshness.set_function(
        lambda: 0.0 if inserter.newest_visible_ms is None else max(0.0, time.time() - inserter.newest_visible_ms / 1000)
    )
    inserter.start()
    try:
        yield
    finally:
        # Requests have stopped by now (aiohttp closes the sites before cleanup): flush the spool's queue,
        # give ClickHouse a bounded chance to take the rest; whatever remains is replayed on the next start.
        await inserter.stop(drain_timeout=10.0)
        await spool.close()


def _ingest_handler(route_type: str | None, *, key_in_query: bool = False):
    async def handler(request: web.Request) -> web.Response:
        app = request.app
        metrics = app[METRICS]
        settings = app[STORES].settings
        received_ms = int(time.time() * 1000)
        try:
            # A key in the header is checked before the body is even decompressed; Segment's other
            # convention, writeKey inside the body, needs the body parsed first.
            key = presented_key(request)
            if key is None and key_in_query:
                key = request.query.get("writeKey") or None
                if key is None:
                    raise RequestProblem(
                        401,
                        [{"field": "writeKey", "reason": "required in the query string: a public key (jp_…)"}],
                        "unauthorized",
                    )
                principal = await _authorize(request, key)
                if principal.kind != "public":
                    raise RequestProblem(
                        403,
                        [
                            {
                                "field": "writeKey",
                                "reason": f"a {principal.kind} key must not be sent in a URL (URLs end up "
                                "in logs and browser histories): use a public key (jp_…) in web pages",
                            }
                        ],
                        "key_in_url",
                    )
            else:
                principal = await _authorize(request, key) if key else None
            body = decode_body(
                await request.read(), request.headers.get("Content-Encoding", ""), settings.max_request_bytes
            )
            document = parse_json(body)
            events, inherited = events_of(document, route_type)
            if principal is None:
                body_key = document.get("writeKey")
                principal = await _authorize(request, body_key if isinstance(body_key, str) else None)
            outcome = process_events(
                events,
                inherited,
                project_id=principal.project_id,
                received_ms=received_ms,
                request_id=request_id(request),
                max_event_bytes=settings.max_event_bytes,
                max_future_ms=int(settings.max_clock_skew_future_s * 1000),
            )
            if not outcome.lines:
                # Nothing valid: refuse the request as a whole, store nothing, say what is wrong with each.
                errors = [{"index": q["index"], **e} for q in outcome.quarantined for e in q["errors"]]
                raise RequestProblem(400, errors, "no_valid_events")
        except RequestProblem as problem:
            metrics.events_rejected.labels(problem.reason).inc(_count_events(problem))
            return error_response(problem.status, problem.errors, code=problem.reason)

        try:
            await app[SPOOL].append(*encode_records(outcome.lines, outcome.quarantine_lines, outcome.links))
        except SpoolFull as exc:
            metrics.spool_rejections.inc()
            metrics.events_rejected.labels("spool_full").inc(len(events))
            return error_response(
                503, [{"field": "server", "reason": f"overloaded, retry later ({exc})"}], {"Retry-After": RETRY_AFTER_S}
            )
        except SpoolError as exc:
            metrics.events_rejected.labels("spool_unavailable").inc(len(events))
            return error_response(503, [{"field": "server", "reason": str(exc)}], {"Retry-After": RETRY_AFTER_S})

        metrics.request_batch_size.observe(len(events))
        for channel, n in outcome.channels.items():
            metrics.count_accepted(channel, n)
        for item in outcome.quarantined:
            metrics.events_quarantined.labels(item["errors"][0]["field"].split(".")[0]).inc()
            log_quarantined(principal.project_id, item["errors"])  # rate-limited WARNING (collector/quarantine.py)
        return json_response({"success": True, "accepted": len(outcome.lines), "quarantined": outcome.quarantined})

    return handler


async def _authorize(request: web.Request, key: str | None):
    """The key's principal, once it may write here: a write or public key, a public one from an origin its
    project lists (collector/cors.py), within its rate limit (collector/ratelimit.py, 429 otherwise)."""
    app = request.app
    if not key:
        raise RequestProblem(
            401,
            [{"field": "Authorization", "reason": "write key required: HTTP Basic username or writeKey"}],
            "unauthorized",
        )
    principal = await app[STORES].keys.resolve(key)
    if principal is None:
        raise RequestProblem(401, [{"field": "Authorization", "reason": "unknown or revoked key"}], "unauthorized")
    if principal.kind not in WRITE_KINDS:
        raise RequestProblem(
            403, [{"field": "Authorization", "reason": f"a {principal.kind} key cannot write events"}], "forbidden"
        )
    await check_origin(request, principal)
    app[RATE_LIMITER].admit(request, principal, key)
    return principal


def _count_events(problem: RequestProblem) -> int:
    # Per-event errors carry an index; a refusal of the request as a whole counts as one.
    indexes = {e["index"] for e in problem.errors if "index" in e}
    return len(indexes) or 1


async def _ready_checks(request: web.Request) -> dict[str, dict[str, Any]]:
    app = request.app
    stores = app[STORES]
    spool = app[SPOOL]
    inserter = app[INSERTER]
    checks: dict[str, dict[str, Any]] = {}
    clickhouse_ok = inserter.healthy and await stores.clickhouse.ping()
    checks["clickhouse"] = {"ok": clickhouse_ok, **({"error": inserter.last_error} if inserter.last_error else {})}
    checks["postgres"] = await postgres_check(stores.pg)
    checks["spool"] = {
        "ok": not spool.above_high_water and spool.write_error is None,
        "pending_bytes": spool.pending_bytes,
        "max_bytes": spool.max_bytes,
        "oldest_age_seconds": round(spool.oldest_age_seconds(), 3),
        **({"error": spool.write_error} if spool.write_error else {}),
    }
    return checks
