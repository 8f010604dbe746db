"""REST for journey maps and segments: ``/v1/maps`` and ``/v1/segments``.

Reading needs the project's read key (or an admin key); changing needs an **admin key** (``ja_…``, made
with ``journeys key create --kind admin``). Read keys are handed to dashboards and analysts; the map that
defines every KPI should not be editable by whoever holds one.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from aiohttp import web

from journeys import definitions
from journeys.http import ApiError, error_response, json_response
from journeys.maps import DefinitionError

MAX_DOCUMENT_BYTES = 1024 * 1024


def add_routes(app: web.Application, principal_of: Any, stores_key: Any) -> None:
    """``principal_of(request, kinds)`` authenticates; ``stores_key`` is the app's Stores AppKey."""

    def handlers(kind: definitions.Kind) -> tuple[Any, Any, Any, Any]:
        async def list_all(request: web.Request) -> web.Response:
            principal = await principal_of(request, ("read", "admin"))
            found = await definitions.latest_of_each(request.app[stores_key].pg, principal.project_id, kind)
            return json_response({"items": [v.as_json() for v in found]})

        async def get_one(request: web.Request) -> web.Response:
            principal = await principal_of(request, ("read", "admin"))
            version = _version_param(request)
            name = request.match_info["name"]
            found = await definitions.get(request.app[stores_key].pg, principal.project_id, kind, name, version)
            if found is None:
                what = f"{kind} {name!r}" + (f" version {version}" if version else "")
                return error_response(404, [{"field": "name", "reason": f"no {what} in this project"}])
            return json_response(found.as_json())

        async def get_versions(request: web.Request) -> web.Response:
            principal = await principal_of(request, ("read", "admin"))
            name = request.match_info["name"]
            found = await definitions.versions(request.app[stores_key].pg, principal.project_id, kind, name)
            if not found:
                return error_response(404, [{"field": "name", "reason": f"no {kind} {name!r} in this project"}])
            return json_response(
                {"name": name, "versions": [{"version": v, "created_at": at.isoformat()} for v, at in found]}
            )

        async def put(request: web.Request) -> web.Response:
            principal = await principal_of(request, ("admin",))
            name = request.match_info["name"]
            document = await _document(request)
            if isinstance(document, dict):
                document.setdefault("name", name)
                if document["name"] != name:
                    return error_response(
                        400, [{"field": "name", "reason": f"the document is named {document['name']!r}, the URL {name!r}"}]
                    )
            try:
                async with request.app[stores_key].pg.acquire() as conn:
                    applied = await definitions.apply(conn, principal.project_id, kind, document)
            except DefinitionError as exc:
                return error_response(400, [{"field": p["path"], "reason": p["reason"]} for p in exc.problems])
            body = {
                "name": applied.name,
                "version": applied.version,
                "previous_version": applied.previous_version,
                "changed": applied.changed,
                "diff": applied.diff,
            }
            return json_response(body, status=201 if applied.previous_version is None else 200)

        return list_all, get_one, get_versions, put

    for kind, plural in (("map", "maps"), ("segment", "segments")):
        list_all, get_one, get_versions, put = handlers(kind)  # type: ignore[arg-type]
        app.router.add_get(f"/v1/{plural}", list_all)
        app.router.add_get(f"/v1/{plural}/{{name}}", get_one)
        app.router.add_put(f"/v1/{plural}/{{name}}", put)
        app.router.add_get(f"/v1/{plural}/{{name}}/versions", get_versions)


def _version_param(request: web.Request) -> int | None:
    raw = request.query.get("version")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise ApiError(400, [{"field": "version", "reason": "must be a positive integer"}])
    return int(raw)


async def _document(request: web.Request) -> Any:
    """The request body as JSON, or YAML when the Content-Type says so."""
    raw = await request.read()
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ApiError(413, [{"field": "body", "reason": f"document over {MAX_DOCUMENT_BYTES} bytes"}])
    try:
        if "yaml" in request.content_type:
            return yaml.safe_load(raw)
        return orjson.loads(raw)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        kind = "YAML" if "yaml" in request.content_type else "JSON"
        raise ApiError(400, [{"field": "body", "reason": f"not valid {kind}: {exc}"}]) from None

