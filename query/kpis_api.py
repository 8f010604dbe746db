"""HTTP for stage KPIs: ``GET /v1/kpis`` and ``GET /v1/kpis/daily`` (read key), JSON or CSV.

Parameters (each bad one answers 400 naming it):

* ``map`` (required) and ``version`` (optional; KPIs are kept for a map's latest version);
* ``segment``: a segment name, ``*`` for all customers and every segment side by side, or absent for all
  customers;
* ``from`` / ``to``: UTC calendar days, both included (default: the 30 days ending today);
* ``format``: ``json`` (default) or ``csv``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from journeys.clickhouse import ClickHouse
from journeys.http import ApiError, json_response
from journeys.keys import Principal
from journeys.stores import Stores
from query import definitions
from query.appkeys import KPI_CACHE, STATE_UPDATER, STORES
from query.auth import principal_of
from query.kpis import ALL, DailyKpiAnswer, KpiAnswer, KpiRequest, daily_kpis, stage_kpis, to_csv
from query.maps import SLUG
from query.reads import iso
from query.facts.builds import built_for, current_definitions, serving_build
from query.facts.locks import consistent_facts, lock_pool

MAX_DAYS = 3660
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2299, 12, 31)
DEFAULT_DAYS = 30

routes = web.RouteTableDef()


async def _answer(
    request: web.Request, compute: Callable[[ClickHouse, KpiRequest], Awaitable[KpiAnswer | DailyKpiAnswer]]
) -> tuple[KpiRequest, bool, dict[str, Any]]:
    """One answer from one state of the facts: the serving build is read, and every KPI query run, while no
    facts write (nor a switch to a new build and the old one's deletion) can become visible."""
    stores = request.app[STORES]
    principal = await principal_of(request)
    async with consistent_facts(lock_pool(stores), principal.project_id):
        # First, before the serving build and the facts: the poll that stored it had written its facts, and
        # whichever build serves now holds them (a build that began after that poll read everything then).
        acknowledged_before = await stores.pg.fetchval(INCLUDES_SQL)
        kpi_request, csv = await parse_kpi_request(request, principal, stores)
        cache, updater = request.app[KPI_CACHE], request.app[STATE_UPDATER]
        key = None
        if cache.enabled and updater.leader:  # query/kpi_cache.py: when an answer may be reused
            key = (
                compute.__name__,
                kpi_request.project_id,
                updater.leader_epoch,
                updater.facts_versions.get(kpi_request.project_id, 0),
                kpi_request.build,
                kpi_request.definitions,
                kpi_request.journey_map.name,
                kpi_request.map_version,
                None if kpi_request.segments is None else tuple(kpi_request.segments),
                kpi_request.first_day,
                kpi_request.last_day,
                repr(kpi_request.rebuilding),
            )
            reused = cache.get(key)
            if reused is not None:
                # The facts are those it was computed from, so what they count is acknowledged_before as read now.
                return kpi_request, csv, with_includes(reused, acknowledged_before)
        result = await compute(stores.clickhouse, kpi_request)
        if key is not None:
            cache.put(key, dict(result))
    return kpi_request, csv, with_includes(result, acknowledged_before)


@routes.get("/v1/kpis")
async def kpis(request: web.Request) -> web.StreamResponse:
    kpi_request, csv, result = await _answer(request, stage_kpis)
    return _respond(result, csv, f"kpis-{kpi_request.journey_map.name}")


@routes.get("/v1/kpis/daily")
async def daily(request: web.Request) -> web.StreamResponse:
    kpi_request, csv, result = await _answer(request, daily_kpis)
    return _respond(result, csv, f"kpis-daily-{kpi_request.journey_map.name}")


# Every event a collector acknowledged before this time is counted in the stage facts (query/facts/updater.py,
# "How fresh the KPIs are"); NULL before the updater's first poll.
INCLUDES_SQL = "SELECT acknowledged_before FROM stage_state_cursor WHERE id = 1"
INCLUDES_HEADER = "X-Journeys-Acknowledged-Before"


def with_includes(result: Mapping[str, Any], acknowledged_before: datetime | None) -> dict[str, Any]:
    """The answer with ``includes`` placed after ``rebuilding``: the ingest position it counts."""
    includes = {"acknowledged_before": None if acknowledged_before is None else iso(acknowledged_before)}
    out: dict[str, Any] = {}
    for key, value in result.items():
        out[key] = value
        if key == "rebuilding":
            out["includes"] = includes
    out.setdefault("includes", includes)
    return out


def _respond(result: dict[str, Any], csv: bool, filename: str) -> web.StreamResponse:
    acknowledged_before = result["includes"]["acknowledged_before"]
    headers = {INCLUDES_HEADER: acknowledged_before} if acknowledged_before else {}
    if not csv:
        return json_response(result, headers=headers)
    return web.Response(
        text=to_csv(result),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}.csv"', **headers},
    )


def _day(query: Mapping[str, str], name: str, default: date) -> date:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        day = date.fromisoformat(raw) if len(raw) == 10 else _bad_day(name)
    except ValueError:
        return _bad_day(name)
    # Events before 2000 are never stored, and date arithmetic near year 1 or 9999 overflows (a 500).
    return day if FIRST_DAY <= day <= LAST_DAY else _bad_day(name)


def _bad_day(name: str) -> date:
    raise ApiError(400, [{"field": name, "reason": f"must be a date as YYYY-MM-DD (UTC), {FIRST_DAY} to {LAST_DAY}"}])


def parse_window(query: Mapping[str, str]) -> tuple[date, date, datetime, bool]:
    """(first day, last day, now, CSV?) from ``from``, ``to`` and ``format`` (a request's query, or the same
    names from the CLI): 400 naming a bad one."""
    fmt = query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, [{"field": "format", "reason": "must be json or csv"}])
    now = datetime.now(timezone.utc)
    last_day = _day(query, "to", now.date())
    first_day = _day(query, "from", last_day - timedelta(days=DEFAULT_DAYS - 1))
    if first_day > last_day:
        raise ApiError(400, [{"field": "from", "reason": "must not be after `to`"}])
    if (last_day - first_day).days >= MAX_DAYS:
        raise ApiError(400, [{"field": "from", "reason": f"the window may span at most {MAX_DAYS} days"}])
    return first_day, last_day, now, fmt == "csv"


async def parse_kpi_request(request: web.Request, principal: Principal, stores: Stores) -> tuple[KpiRequest, bool]:
    query = request.query
    first_day, last_day, now, csv = parse_window(query)
    map_name = query.get("map", "")
    if not map_name:
        raise ApiError(400, [{"field": "map", "reason": "required: the journey map to compute KPIs for"}])
    if not SLUG.match(map_name):  # only slugs name maps; anything else cannot exist (and a NUL upsets PostgreSQL)
        raise ApiError(404, [{"field": "map", "reason": f"no map {map_name!r} in this project"}])

    # KPIs read the build of the stage facts that is complete (query/facts/builds.py). While newer map or
    # segment versions are being computed, that build is for the previous ones: the answer says so.
    latest, build = await asyncio.gather(
        current_definitions(stores.pg, principal.project_id), serving_build(stores.pg, principal.project_id)
    )
    served = (
        latest if build.fingerprint == latest.fingerprint else await built_for(stores.pg, principal.project_id, build)
    )
    rebuilding = None
    if served is not latest:
        rebuilding = {"since": None if build.rebuilding_since is None else iso(build.rebuilding_since)}

    def computing(field: str, what: str) -> ApiError:
        return ApiError(
            503,
            [{"field": field, "reason": f"KPIs for {what} are being computed; retry shortly"}],
            {"Retry-After": "2"},
        )

    # What the project has (404/400 otherwise), then what the serving build has (503 until it has it).
    newest = next((m for m in latest.maps if m.name == map_name), None)
    if newest is None:
        raise ApiError(404, [{"field": "map", "reason": f"no map {map_name!r} in this project"}])
    raw_version = query.get("version")
    # isascii and a length cap: str.isdigit() accepts digits int() refuses ('²') or cannot parse (5000 of them).
    if raw_version is not None and (
        not (raw_version.isascii() and raw_version.isdigit() and len(raw_version) <= 9)
        or await definitions.get(stores.pg, principal.project_id, "map", map_name, int(raw_version)) is None
    ):
        raise ApiError(404, [{"field": "version", "reason": f"map {map_name!r} has no version {raw_version!r}"}])
    raw_segment = query.get("segment")
    if raw_segment not in (None, "", "*") and raw_segment not in {s.name for s in latest.segments}:
        raise ApiError(404, [{"field": "segment", "reason": f"no segment {raw_segment!r} in this project"}])

    mv = None if served is None else next((m for m in served.maps if m.name == map_name), None)
    if served is None or mv is None:
        raise computing("map", f"map {map_name!r} version {newest.version}")
    if raw_version is not None and int(raw_version) != mv.version:
        if int(raw_version) == newest.version:
            raise computing("version", f"map {map_name!r} version {raw_version}")
        raise ApiError(
            400,
            [
                {
                    "field": "version",
                    "reason": f"KPIs are kept for the latest version of a map ({newest.version}); "
                    "read older versions' journeys per customer",
                }
            ],
        )
    names = [s.name for s in served.segments]
    if raw_segment is None or raw_segment == "":
        segments = None
    elif raw_segment == "*":
        segments = [ALL, *names]
    elif raw_segment in names:
        segments = [raw_segment]
    else:
        raise computing("segment", f"segment {raw_segment!r}")
    return (
        KpiRequest(
            project_id=principal.project_id,
            journey_map=mv.compiled.map,
            map_version=mv.version,
            build=build.number,
            order=mv.compiled.order,
            segments=segments,
            first_day=first_day,
            last_day=last_day,
            now=now,
            rebuilding=rebuilding,
            definitions=f"{build.fingerprint} {latest.fingerprint}",
        ),
        csv,
    )
