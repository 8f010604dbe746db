"""``POST /v1/kpis/preview`` (read key): the KPIs a draft map — and optionally a draft segment — would give
over all of the project's data, before anyone publishes it. Nothing is published and no version is made.

The body is ``{"map": {…}, "segment": {…}}`` in the map and segment formats (``segment`` optional: it joins
the project's segments, or replaces the one of its name), or a bare map; JSON, or YAML with a YAML
Content-Type. The query parameters are those of ``GET /v1/kpis`` without ``map`` and ``version``.

ClickHouse computes every customer's facts for the draft into a build of its own (:mod:`query.facts.compute`,
the computation a published map gets), the ordinary KPI code answers from that build, and the build is
deleted. So a preview is what ``GET /v1/kpis`` answers once the draft is applied and computed, by
construction (tests/test_kpi_preview.py checks it). Preview builds are numbered from
``query.facts.builds.PREVIEW_BUILDS`` up, apart from published builds, and a rebuild's clean-up spares the
ones still being read. A preview costs what a rebuild does (every customer's facts): one runs at a time per
query service, the others wait their turn.

Except when the serving build already holds the draft's facts: a draft that changes only targets, names or
descriptions (``Definitions.map_facts_key``; the usual "what if the target were …" question). Applied, such a
draft is served by that build as it is (the updater relabels it), so the preview answers from it at once. And
when it holds the draft's inputs (``FactsSql.inputs_key``: no rule, sentiment or segment field changed, only
stages, windows or segment values): the draft's facts are folded from the inputs that build stores, reading
no event, as a rebuild folds them from the inputs it stores. When only rules changed (query/facts/restage.py),
a scan lists the ids whose events the draft stages otherwise: none, and nothing else changed either (no
touchpoint added, removed or renamed, no stage, window or segment: ``Definitions.staging_free_key``) — the serving
build's facts are the draft's (a reordering that changes no first match); a few — the build's facts copied (or
its inputs folded, renumbered) and those customers computed again from their events.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import date, datetime
from typing import Any

from aiohttp import web

from query import definitions
from journeys.clickhouse import ClickHouse
from journeys.http import ApiError, json_response
from query.maps import DefinitionError, Segment, validate_map, validate_segment
from query.appkeys import KPI_PREVIEWS, STORES
from query.auth import principal_of
from query.definitions_api import read_document
from query.kpis import ALL, KpiAnswer, KpiRequest, stage_kpis, to_csv
from query.kpis_api import parse_window
from query.facts.builds import built_for, drop_build, preview_build, serving_build
from query.facts.locks import consistent_facts, lock_pool
from query.facts.compute import FactsSql
from query.facts.model import Definitions
from query.facts.restage import Restaging, restaged_ids
from query.facts.writer import StateWriter


class PreviewAnswer(KpiAnswer):
    """``POST /v1/kpis/preview``: what ``GET /v1/kpis`` answers, marked as a preview (``map.version`` is None:
    nothing was published)."""

    preview: bool


def draft_of(document: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(map document, segment document or None) from a preview body; 400 naming the field otherwise."""
    if not isinstance(document, dict):
        raise ApiError(400, [{"field": "body", "reason": 'must be an object: {"map": {…}, "segment": {…}} or a map'}])
    if "map" not in document:
        return document, None  # a bare map
    unknown = sorted(set(document) - {"map", "segment"})
    if unknown:
        raise ApiError(400, [{"field": unknown[0], "reason": "unknown field; the body holds map and segment"}])
    if not isinstance(document["map"], dict):
        raise ApiError(400, [{"field": "map", "reason": "must be a map document (an object)"}])
    segment = document.get("segment")
    if segment is not None and not isinstance(segment, dict):
        raise ApiError(400, [{"field": "segment", "reason": "must be a segment document (an object)"}])
    return document["map"], segment


async def draft_definitions(
    pg: Any, project_id: str, map_doc: dict[str, Any], segment_doc: dict[str, Any] | None
) -> Definitions:
    """The draft map with the project's segments (the draft segment added or in place of its namesake)."""
    problems = []
    journey_map = segment = None
    try:
        journey_map = validate_map(map_doc)
    except DefinitionError as exc:
        problems += [{"field": f"map.{p['path']}", "reason": p["reason"]} for p in exc.problems]
    if segment_doc is not None:
        try:
            segment = validate_segment(segment_doc)
        except DefinitionError as exc:
            problems += [{"field": f"segment.{p['path']}", "reason": p["reason"]} for p in exc.problems]
    if problems or journey_map is None:
        raise ApiError(400, problems)
    segments: list[tuple[Segment, int]] = [
        (validate_segment(v.body), v.version) for v in await definitions.latest_of_each(pg, project_id, "segment")
    ]
    if segment is not None:
        segments = [(s, v) for s, v in segments if s.name != segment.name] + [(segment, 0)]
    return Definitions.of([(journey_map, 0)], segments)


def segments_asked(raw: str | None, defs: Definitions) -> list[str] | None:
    """The ``segment`` parameter against the draft's segments, as ``GET /v1/kpis`` reads it."""
    names = [s.name for s in defs.segments]
    if raw is None or raw == "":
        return None
    if raw == "*":
        return [ALL, *names]
    if raw in names:
        return [raw]
    raise ApiError(404, [{"field": "segment", "reason": f"no segment {raw!r} in this project or the draft"}])


async def preview_kpis(
    ch: ClickHouse,
    pg: Any,
    cluster: str | None,
    project_id: str,
    defs: Definitions,
    segments: list[str] | None,
    first_day: date,
    last_day: date,
    now: datetime,
    *,
    locks: Any = None,
    computing: AbstractAsyncContextManager[Any] | None = None,
) -> PreviewAnswer:
    """The KPIs of the draft ``defs`` (one map): from the serving build if it holds the draft's facts (read
    under ``locks``, query.facts.locks.consistent_facts), else folded from the inputs it stores if they are the
    draft's, else — only rules changed — from its facts or inputs with the customers the draft stages otherwise
    computed again, else computed from the events; all but the first into a preview build, then deleted, while
    holding ``computing`` (one at a time). Events that arrive between a rule draft's scan and the read of the
    serving build count as that build staged them (the scan reads what it finds when it starts).

    The serving build holds the project's other maps as they will be once the draft is applied, and a map's
    facts depend on the others' only in one corner (of a message's copies that differ, the one kept is chosen
    among those some map stages): so its facts, or those folded with the draft in place of its namesake, are
    what ``/v1/kpis`` answers after applying the draft, that corner included. A fold reads the stored inputs
    without the writers' lock: a refresh of stitched customers landing as it starts can leave a customer just
    merged into another counted in both (query/facts/writer.py stores the inputs before emptying the rest)."""
    mv = defs.maps[0]

    def request(build: int) -> KpiRequest:
        return KpiRequest(
            project_id=project_id,
            journey_map=mv.compiled.map,
            map_version=0,
            build=build,
            order=mv.compiled.order,
            segments=segments,
            first_day=first_day,
            last_day=last_day,
            now=now,
        )

    async def from_serving_build(kept: str | None = None) -> KpiAnswer | None:
        """The answer from the serving build, if it holds the draft's facts (or if it is still build ``kept``)."""
        async with consistent_facts(locks, project_id):  # the build read stays the serving one until answered
            serving = await serving_build(pg, project_id)
            served = await built_for(pg, project_id, serving)
            if serving.whole and (
                kept == serving.fingerprint
                or (served is not None and served.map_facts_key(mv.name) == defs.map_facts_key(mv.name))
            ):
                return await stage_kpis(ch, request(serving.number))
        return None

    result = await from_serving_build()
    if result is None:
        writer = StateWriter(ch)
        async with computing or nullcontext():
            serving = await serving_build(pg, project_id)  # again: another preview may have run meanwhile
            # Nothing of a build whose change in place stopped half-way is reused: computed from the events.
            served = await built_for(pg, project_id, serving) if serving.whole else None
            merged = None if served is None else _with_draft(served, defs)
            restage, restaged = None, set[str]()
            if served is not None and merged is not None and FactsSql(merged).inputs_key != FactsSql(served).inputs_key:
                restage = Restaging(served, merged)
                found = await restaged_ids(ch, project_id, restage) if restage.possible else None
                if found is None:
                    merged = None  # computed from the events
                elif not found and restage.facts_kept:
                    result = await from_serving_build(kept=serving.fingerprint)  # the same facts, every customer
                else:
                    restaged = found
            build = preview_build(int(time.time() * 1000))
            try:
                if result is None and merged is not None:
                    if restage is not None and restage.facts_kept:
                        await writer.copy_facts_of(project_id, build, serving.number, [mv.name])  # all it reads
                    else:
                        await writer.fold_inputs_of(project_id, merged, build, serving.number, restage, mv.name)
                    if restaged:
                        await writer.refresh(project_id, merged, build, restaged, serving=False)
                    now_serving = await serving_build(pg, project_id)
                    # its inputs may be gone; or relabelled for another edit, which rewrites some customers'
                    if (now_serving.number, now_serving.fingerprint, now_serving.changing_to) != (
                        serving.number,
                        serving.fingerprint,
                        serving.changing_to,
                    ):
                        await drop_build(ch, cluster or "", project_id, build)
                        merged = None
                if result is None:
                    if merged is None:
                        await writer.build_all(project_id, defs, build, inputs=False)  # never refreshed
                    result = await stage_kpis(ch, request(build))
            finally:
                await drop_build(ch, cluster or "", project_id, build)
    result["map"]["version"] = None  # not a version: nothing was published
    return {"preview": True, **result}


def _with_draft(served: Definitions, draft: Definitions) -> Definitions | None:
    """The serving build's maps with the draft's in place of its namesake, and the draft's segments (``None``:
    the draft's map is new). If these store the inputs the serving build's definitions store (the draft changes
    stages, windows, which stage a touchpoint feeds or segment values, but no rule, touchpoint id nor what the
    segments read), the draft's facts
    are folded from the inputs that build holds, without reading the events; if only rules changed, from those
    inputs renumbered, the customers the new rules stage otherwise read again (query/facts/restage.py)."""
    name = draft.maps[0].name
    if all(mv.name != name for mv in served.maps):
        return None
    maps = [(mv.compiled.map, mv.version) for mv in served.maps if mv.name != name]
    return Definitions.of([*maps, (draft.maps[0].compiled.map, 0)], [(s, 0) for s in draft.segments])


routes = web.RouteTableDef()


@routes.post("/v1/kpis/preview")
async def preview(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    principal = await principal_of(request)
    first_day, last_day, now, csv = parse_window(request.query)
    map_doc, segment_doc = draft_of(await read_document(request))
    defs = await draft_definitions(stores.pg, principal.project_id, map_doc, segment_doc)
    segments = segments_asked(request.query.get("segment"), defs)
    result = await preview_kpis(
        stores.clickhouse,
        stores.pg,
        stores.settings.clickhouse_cluster,
        principal.project_id,
        defs,
        segments,
        first_day,
        last_day,
        now,
        locks=lock_pool(stores),
        computing=request.app[KPI_PREVIEWS],  # a computed preview takes every core ClickHouse has, as a rebuild
    )
    if not csv:
        return json_response(result)
    return web.Response(
        text=to_csv(result),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="kpis-preview-{defs.maps[0].name}.csv"'},
    )
