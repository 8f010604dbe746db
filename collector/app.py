"""The collector: Segment-spec HTTP ingest that acknowledges only what is durable.

:func:`create_app` wires it, and does only that: it sets the app's keys (collector/appkeys.py), adds each
route module's table (aiohttp ``RouteTableDef``: the handlers read what they need from ``request.app``) and
the cleanup contexts that open and close the spool, the inserter and the watermark. The routes:

* collector/segment.py: ``/v1/batch``, the single-event and one-letter routes, the beacon;
* collector/email.py: ``/v1/email/open|click/{token}``, signed pixels and links;
* collector/imports.py: ``POST /v1/import``, streamed NDJSON (docs/import.md);
* collector/quarantine.py: ``POST /v1/quarantine/replay`` (admin key, docs/quarantine.md);
* collector/tracker.py: ``GET /t.js``, the browser tracker;
* collector/rudder_config.py: ``GET /sourceConfig``, which RudderStack's browser SDK asks before it sends;
* here: the probes, ``/metrics`` and ``/openapi.json``.

Every route that takes events in goes through the same accept steps (collector/accept.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from collector import email, imports, quarantine, rudder_config, segment, tracker, watermark
from collector.api_spec import collector_openapi
from collector.appkeys import (
    API_KEYS,
    EMAIL_KEYS,
    INSERTER,
    METRICS,
    ORIGINS,
    RATE_LIMITER,
    REPLAY_LOCK,
    SPOOL,
    STORES,
    TRACKER_SCRIPT,
)
from collector.cors import cors_middleware
from collector.email_keys import SigningKeyResolver
from collector.identity import IdentityGraph
from collector.inserter import Inserter
from collector.origins import OriginTable
from collector.ratelimit import RateLimiter
from collector.spool import Spool
from journeys.http import make_middleware, ops_routes, postgres_check
from journeys.metrics import Metrics
from journeys.openapi import openapi_handler
from journeys.stores import Stores

log = logging.getLogger(__name__)


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
    app[RATE_LIMITER] = RateLimiter(settings, metrics)
    # The per-project caches, made together and living as long as the app, each trusting what it read for
    # key_cache_ttl_s. The API keys' is the stores' resolver: the query service in the same process asks it
    # too, and a test that needs another TTL hands its own in with the stores.
    app[API_KEYS] = stores.keys
    app[ORIGINS] = OriginTable(stores.pg, ttl=settings.key_cache_ttl_s)
    app[EMAIL_KEYS] = SigningKeyResolver(stores.pg, ttl=settings.key_cache_ttl_s)
    app[TRACKER_SCRIPT] = tracker.build_script()  # here, so a source the minifier refuses stops the start
    app[REPLAY_LOCK] = asyncio.Lock()
    app.cleanup_ctx.append(spool_and_inserter)
    app.cleanup_ctx.append(watermark.publishing)  # after the spool, so it stops first
    for module_routes in (
        segment.routes,
        email.routes,
        imports.routes,
        quarantine.routes,
        tracker.routes,
        rudder_config.routes,
        routes,
    ):
        app.router.add_routes(module_routes)
    return app


async def spool_and_inserter(app: web.Application) -> AsyncIterator[None]:
    """Open the spool (replaying what the previous run left) and start the inserter; on the way out, drain."""
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


# --------------------------------------------------------------------------------------------------------
# probes, metrics, the API document
# --------------------------------------------------------------------------------------------------------


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


def _metrics(request: web.Request) -> Metrics:
    return request.app[METRICS]


routes = ops_routes(_ready_checks, _metrics, openapi_handler(collector_openapi()))
