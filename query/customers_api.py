"""HTTP for customers (read key; forgetting needs an admin key): docs/identity.md.

* ``GET /v1/customers?prefix=P`` or ``?recent=1`` — find customers by an id's prefix, or the most recently
  active;
* ``GET /v1/customers/{id}`` — the stitched customer's ids, traits, first touch and segments;
* ``GET /v1/customers/{id}/events`` and ``/journey?map=M`` — their events, and their journey through a map;
* ``DELETE /v1/customers/{id}`` — forget them entirely;
* ``GET /v1/stats`` — the project's totals.

Ids are arbitrary strings (emails, URLs, braces, slashes): a route matches anything up to its last segment.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from journeys.events import MAX_ID_CHARS
from journeys.http import ApiError, json_response
from query import customers, definitions
from query.appkeys import STATE_UPDATER, STORES
from query.auth import principal_of
from query.journey import CompiledMap, build_journey
from query.maps import SLUG, SLUG_RULE, validate_map
from query.reads import project_stats, stitched_events

routes = web.RouteTableDef()

MAX_LIMIT = 10_000
SEARCH_LIMIT = 100


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


def _no_such_customer(asked: str) -> ApiError:
    """No id of the customer has an event stored: never seen in this project, or forgotten."""
    return ApiError(404, [{"field": "customer_id", "reason": f"no customer {asked[:80]!r} in this project"}])


@routes.get("/v1/customers")  # ?prefix= or ?recent=1: docs/identity.md
async def find_customers(request: web.Request) -> web.Response:
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


@routes.get("/v1/customers/{customer_id:.+}/events")
async def customer_events(request: web.Request) -> web.Response:
    """Events of the stitched customer: asked for by any of their ids, answered for all of them."""
    principal = await principal_of(request)
    asked = _customer_id(request)
    limit = _int_param(request, "limit", 1000, 1, MAX_LIMIT)
    ch = request.app[STORES].clickhouse
    customer_id, ids, events = await stitched_events(ch, principal.project_id, asked, limit)
    if not events:  # limit >= 1: no event of any of their ids
        raise _no_such_customer(asked)
    return json_response({"customer_id": customer_id, "ids": ids, "count": len(events), "events": events})


@routes.get("/v1/customers/{customer_id:.+}/journey")
async def customer_journey(request: web.Request) -> web.Response:
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


@routes.get("/v1/customers/{customer_id:.+}")
async def customer(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    stores = request.app[STORES]
    asked = _customer_id(request)
    try:
        return json_response(await customers.profile(stores.clickhouse, stores.pg, principal.project_id, asked))
    except customers.NoSuchCustomer:
        raise _no_such_customer(asked) from None


@routes.delete("/v1/customers/{customer_id:.+}")
async def forget_customer(request: web.Request) -> web.Response:
    principal = await principal_of(request, ("admin",))
    stores = request.app[STORES]
    try:
        forgotten = await customers.forget(
            stores.clickhouse,
            stores.pg,
            stores.settings.clickhouse_cluster,
            principal.project_id,
            _customer_id(request),
        )
    finally:  # their facts may be withdrawn, if only in part: cached KPI answers counted them
        request.app[STATE_UPDATER].facts_written(principal.project_id)
    return json_response(forgotten)


@routes.get("/v1/stats")
async def stats(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    return json_response(await project_stats(request.app[STORES].clickhouse, principal.project_id))
