"""The query service's app factory: the app's keys (query/appkeys.py), every module's routes, and the loops
that run beside the requests (the stage-state updater, the alert evaluator and deliverer).

Each route module declares its routes in a ``web.RouteTableDef`` named ``routes``; its handlers read what
they need from ``request.app[KEY]`` and call :func:`query.auth.principal_of` first. Every route is
documented in query/api_spec.py (tests/test_openapi.py compares the two).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from journeys.http import make_middleware, ops_routes, postgres_check
from journeys.metrics import Metrics
from journeys.openapi import openapi_handler
from journeys.stores import Stores
from query import (
    alerts_api,
    customers_api,
    dashboard,
    definitions_api,
    keys_api,
    kpi_customers,
    kpi_preview,
    kpis_api,
    quarantine_api,
)
from query.alert_delivery import AlertDeliverer
from query.alerts import AlertEvaluator
from query.api_spec import query_openapi
from query.kpi_cache import KpiCache
from query.appkeys import (
    ALERT_DELIVERER,
    ALERT_EVALUATOR,
    DASHBOARD,
    KPI_CACHE,
    KPI_PREVIEWS,
    METRICS,
    STATE_UPDATER,
    STORES,
)
from query.facts.updater import StageStateUpdater

ROUTE_TABLES = (
    customers_api.routes,  # /v1/customers…, /v1/stats: docs/identity.md
    definitions_api.routes,  # /v1/maps, /v1/segments, /v1/alerts/rules (versioned definitions)
    kpis_api.routes,  # GET /v1/kpis, /v1/kpis/daily: docs/kpis.md
    kpi_customers.routes,  # GET /v1/kpis/customers, /v1/kpis/dropped: docs/kpis.md
    kpi_preview.routes,  # POST /v1/kpis/preview: a draft map's KPIs, docs/kpis.md
    quarantine_api.routes,  # GET /v1/quarantine (admin): docs/quarantine.md
    keys_api.routes,  # GET/POST /v1/keys, DELETE /v1/keys/{prefix} (admin): docs/keys.md
    alerts_api.routes,  # /v1/alerts, /v1/alerts/signing-secret: docs/alerts.md
    dashboard.routes,  # GET / and /static/…: the marketer dashboard (query/static/)
)


def create_app(stores: Stores, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[make_middleware(metrics, "query")])
    app[STORES] = stores
    app[METRICS] = metrics
    app[DASHBOARD] = dashboard.Dashboard.load()  # read now: a missing file stops the start, not a page
    app[KPI_PREVIEWS] = asyncio.Lock()
    # Not on a cluster: a facts write is in on one replica first, and an answer read from another meanwhile
    # would be reused for the whole TTL (query/kpi_cache.py).
    app[KPI_CACHE] = KpiCache(0.0 if stores.settings.clickhouse_cluster else stores.settings.kpi_cache_ttl_s, metrics)
    for module_routes in (*ROUTE_TABLES, routes):
        app.router.add_routes(module_routes)
    app.cleanup_ctx.append(_stage_state_updater)
    app.cleanup_ctx.append(_alerts)
    return app


async def _stage_state_updater(app: web.Application) -> AsyncIterator[None]:
    """Keeps the per-customer stage state that KPIs read current (one updater across replicas)."""
    updater = StageStateUpdater(app[STORES], app[METRICS])
    app[STATE_UPDATER] = updater
    updater.start()
    yield
    await updater.stop()


async def _alerts(app: web.Application) -> AsyncIterator[None]:
    """Judges alert rules as the facts change (where the updater leads) and delivers their notifications."""
    stores = app[STORES]
    deliverer = AlertDeliverer(stores, app[METRICS])
    evaluator = AlertEvaluator(
        stores, app[METRICS], app[STATE_UPDATER], every_s=stores.settings.alert_every_s, on_queued=deliverer.wake
    )
    app[ALERT_DELIVERER], app[ALERT_EVALUATOR] = deliverer, evaluator
    deliverer.start()
    evaluator.start()
    yield
    await evaluator.stop()
    await deliverer.stop()


async def _ready_checks(request: web.Request) -> dict[str, dict[str, Any]]:
    stores = request.app[STORES]
    return {"clickhouse": {"ok": await stores.clickhouse.ping()}, "postgres": await postgres_check(stores.pg)}


def _metrics(request: web.Request) -> Metrics:
    return request.app[METRICS]


# This module's own: liveness, readiness, metrics, the OpenAPI document.
routes = ops_routes(_ready_checks, _metrics, openapi_handler(query_openapi()))
