"""The query service: reads for project read keys. (Journeys and stage KPIs build on these reads.)"""

from __future__ import annotations

from typing import Any

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from journeys.events import MAX_ID_CHARS
from journeys.http import (
    ApiError,
    authorized,
    healthz,
    json_response,
    make_middleware,
    metrics_handler,
    postgres_check,
    readyz_handler,
)
from journeys.keys import Principal
from journeys.metrics import Metrics
from journeys.openapi import openapi_handler
from journeys.stores import Stores
from query import definitions
from query.maps import SLUG, SLUG_RULE, validate_map
from query.journey import CompiledMap, build_journey
from query import alerts_api, customers, definitions_api, keys_api, kpi_customers, kpi_preview, kpis_api, quarantine_api
from query.alert_delivery import AlertDeliverer
from query.alerts import AlertEvaluator
from query.dashboard import add_dashboard_routes
from query.state_updater import StageStateUpdater
from query.api_spec import query_openapi
from query.reads import project_stats, stitched_events

STORES = web.AppKey("stores", Stores)
METRICS = web.AppKey("metrics", Metrics)
STATE_UPDATER = web.AppKey("state_updater", StageStateUpdater)
ALERT_EVALUATOR = web.AppKey("alert_evaluator", AlertEvaluator)
ALERT_DELIVERER = web.AppKey("alert_deliverer", AlertDeliverer)

MAX_LIMIT = 10_000


def create_app(stores: Stores, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[make_middleware(metrics, "query")])
    app[STORES] = stores
    app[METRICS] = metrics
    # Ids are arbitrary strings (emails, URLs, braces, slashes): match anything up to the last segment.
    app.router.add_get("/v1/customers", _find_customers)  # ?prefix= or ?recent=1: docs/identity.md
    app.router.add_get("/v1/customers/{customer_id:.+}/events", _customer_events)
    app.router.add_get("/v1/customers/{customer_id:.+}/journey", _customer_journey)
    app.router.add_get("/v1/customers/{customer_id:.+}", _customer)
    app.router.add_delete("/v1/customers/{customer_id:.+}", _forget_customer)
    app.router.add_get("/v1/stats", _stats)
    definitions_api.add_routes(app, principal_of, STORES)
    kpis_api.add_routes(app, principal_of, STORES)
    kpi_customers.add_routes(app, principal_of, STORES)  # GET /v1/kpis/customers, /v1/kpis/dropped: docs/kpis.md
    kpi_preview.add_route(app, principal_of, STORES)  # POST /v1/kpis/preview: a draft map's KPIs, docs/kpis.md
    quarantine_api.add_routes(app, principal_of, STORES)  # GET /v1/quarantine (admin): docs/quarantine.md
    keys_api.add_routes(app, principal_of, STORES)  # GET/POST /v1/keys, DELETE /v1/keys/{prefix} (admin): docs/keys.md
    alerts_api.add_routes(app, principal_of, STORES)  # /v1/alerts, /v1/alerts/rules…: docs/alerts.md
    add_dashboard_routes(app)  # GET / and /static/…: the marketer dashboard (query/static/)
    app.cleanup_ctx.append(_stage_state_updater)
    app.cleanup_ctx.append(_alerts)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz_handler(_ready_checks))
    app.router.add_get("/metrics", metrics_handler(metrics))
    app.router.add_get("/openapi.json", openapi_handler(query_openapi()))
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


async def principal_of(request: web.Request, kinds: tuple[str, ...] = ("read",)) -> Principal:
    """The project a key belongs to; 401 without a valid key, 403 for a key of another kind."""
    cannot = "change this" if kinds == ("admin",) else "read"
    return await authorized(request, request.app[STORES].keys, kinds, needed="read key", cannot=cannot)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, [{"field": name, "reason": f"must be an integer from {low} to {high}"}])
    return value


def _customer_id(request: web.Request) -> str:
    customer_id = request.match_info["customer_id"]
    if not customer_id or len(customer_id) > MAX_ID_CHARS:
        raise ApiError(400, [{"field": "customer_id", "reason": f"must be 1-{MAX_ID_CHARS} characters"}])
    return customer_id


async def _customer_events(request: web.Request) -> web.Response:
    """Events of the stitched customer: asked for by any of their ids, answered for all of them."""
    principal = await principal_of(request)
    asked = _customer_id(request)
    limit = _int_param(request, "limit", 1000, 1, MAX_LIMIT)
    ch = request.app[STORES].clickhouse
    customer_id, ids, events = await stitched_events(ch, principal.project_id, asked, limit)
    if not events:  # limit >= 1: no event of any of their ids
        raise _no_such_customer(asked)
    return json_response({"customer_id": customer_id, "ids": ids, "count": len(events), "events": events})


async def _customer_journey(request: web.Request) -> web.Response:
    """The stitched customer's journey through a map (latest version, or ``version=N``)."""
    principal = await principal_of(request)
    asked = _customer_id(request)
    map_name = request.query.get("map", "")
    if not map_name:
        raise ApiError(400, [{"field": "map", "reason": "required: the journey map to read the journey against"}])
    if not SLUG.match(map_name):  # only slugs can name a map; a NUL byte would even fail in PostgreSQL
        raise ApiError(400, [{"field": "map", "reason": SLUG_RULE}])
    version = _int_param(request, "version", 0, 1, 1_000_000) or None
    stores = request.app[STORES]
    # The map (PostgreSQL) and the customer (ClickHouse) are read side by side: a journey is latency-bound.
    found, (customer_id, ids, events) = await asyncio.gather(
        definitions.get(stores.pg, principal.project_id, "map", map_name, version),
        stitched_events(stores.clickhouse, principal.project_id, asked, MAX_LIMIT, for_journey=True),
    )
    if found is None:
        what = f"map {map_name!r}" + (f" version {version}" if version else "")
        raise ApiError(404, [{"field": "map", "reason": f"no {what} in this project"}])
    # A known customer has events (maybe none of this map: an empty journey, 200). The journey read is off
    # `timelines`, whose part commits just after the events' part: asked about then, `events` says.
    if not events and not await customers.known(stores.clickhouse, principal.project_id, ids):
        raise _no_such_customer(asked)
    compiled = CompiledMap(validate_map(found.body), found.version)
    return json_response({"customer_id": customer_id, "ids": ids, **build_journey(events, compiled)})


async def _customer(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    stores = request.app[STORES]
    asked = _customer_id(request)
    try:
        return json_response(await customers.profile(stores.clickhouse, stores.pg, principal.project_id, asked))
    except customers.NoSuchCustomer:
        raise _no_such_customer(asked) from None


def _no_such_customer(asked: str) -> ApiError:
    """No id of the customer has an event stored: never seen in this project, or forgotten."""
    return ApiError(404, [{"field": "customer_id", "reason": f"no customer {asked[:80]!r} in this project"}])


SEARCH_LIMIT = 100


async def _find_customers(request: web.Request) -> web.Response:
    """``?prefix=P``: customers with an id starting with P; ``?recent=1``: the most recently active."""
    principal = await principal_of(request)
    query = request.query
    limit = _int_param(request, "limit", 20, 1, SEARCH_LIMIT)
    prefix, recent = query.get("prefix"), query.get("recent")
    if prefix is not None and recent is not None:
        raise ApiError(400, [{"field": "recent", "reason": "give prefix or recent, not both"}])
    ch = request.app[STORES].clickhouse
    if recent is not None:
        if recent not in ("1", "true"):
            raise ApiError(400, [{"field": "recent", "reason": "must be 1 (or true)"}])
        return json_response(await customers.recent(ch, principal.project_id, limit))
    if not prefix or len(prefix) > MAX_ID_CHARS:
        raise ApiError(
            400,
            [{"field": "prefix", "reason": f"required (or recent=1): 1-{MAX_ID_CHARS} characters an id starts with"}],
        )
    return json_response(await customers.search(ch, principal.project_id, prefix, limit))


async def _forget_customer(request: web.Request) -> web.Response:
    principal = await principal_of(request, ("admin",))
    stores = request.app[STORES]
    forgotten = await customers.forget(
        stores.clickhouse, stores.pg, stores.settings.clickhouse_cluster, principal.project_id, _customer_id(request)
    )
    return json_response(forgotten)


async def _stats(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    return json_response(await project_stats(request.app[STORES].clickhouse, principal.project_id))


async def _ready_checks(request: web.Request) -> dict[str, dict[str, Any]]:
    stores = request.app[STORES]
    return {"clickhouse": {"ok": await stores.clickhouse.ping()}, "postgres": await postgres_check(stores.pg)}
