"""REST for journey maps, segments and alert rules: ``/v1/maps``, ``/v1/segments``, ``/v1/alerts/rules``.

Reading needs the project's read key (or an admin key); changing needs an **admin key** (``ja_…``, made
with ``journeys key create --kind admin``). Read keys are handed to dashboards and analysts; the map that
defines every KPI should not be editable by whoever holds one. A read key sees an alert rule's webhook URLs as
scheme and host only: their paths and user info are secrets (docs/alerts.md).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import asyncpg
import orjson
import yaml
from aiohttp import web

from journeys.http import ApiError, json_response
from query import definitions
from query.alert_rules import redact
from query.appkeys import STORES
from query.auth import principal_of
from query.maps import SLUG, SLUG_RULE, DefinitionError, map_warnings, validate_map

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 32  # the deepest real map is ~7 levels (touchpoints[].match.where[].value[])
MAX_VALUES = 100_000


routes = web.RouteTableDef()


async def list_all(kind: definitions.Kind, request: web.Request) -> web.Response:
    principal = await principal_of(request, ("read", "admin"))
    found = await definitions.latest_of_each(request.app[STORES].pg, principal.project_id, kind)
    return json_response({"items": [_shown(v.as_json(), principal) for v in found]})


async def get_one(kind: definitions.Kind, request: web.Request) -> web.Response:
    principal = await principal_of(request, ("read", "admin"))
    version = version_param(request)
    name = name_param(request)
    found = await definitions.get(request.app[STORES].pg, principal.project_id, kind, name, version)
    if found is None:
        what = f"{_WHAT[kind]} {name!r}" + (f" version {version}" if version else "")
        raise ApiError(404, [{"field": "name", "reason": f"no {what} in this project"}])
    return json_response(_shown(found.as_json(), principal))


async def get_versions(kind: definitions.Kind, request: web.Request) -> web.Response:
    principal = await principal_of(request, ("read", "admin"))
    name = name_param(request)
    found = await definitions.versions(request.app[STORES].pg, principal.project_id, kind, name)
    if not found:
        raise ApiError(404, [{"field": "name", "reason": f"no {_WHAT[kind]} {name!r} in this project"}])
    return json_response({"name": name, "versions": [{"version": v, "created_at": at.isoformat()} for v, at in found]})


async def put(kind: definitions.Kind, request: web.Request) -> web.Response:
    principal = await principal_of(request, ("admin",))
    name = name_param(request)
    document = await read_document(request)
    if isinstance(document, dict):
        document.setdefault("name", name)
        if document["name"] != name:
            raise ApiError(
                400,
                [{"field": "name", "reason": f"the document is named {document['name']!r}, the URL {name!r}"}],
            )
    try:
        async with request.app[STORES].pg.acquire() as conn:
            if kind == "alert":  # checked against the project's maps and segments too
                applied = await definitions.apply_alert_rule(conn, principal.project_id, document)
            else:
                applied = await definitions.apply(conn, principal.project_id, kind, document)
    except DefinitionError as exc:
        raise ApiError(400, [{"field": p["path"], "reason": p["reason"]} for p in exc.problems])
    except asyncpg.UntranslatableCharacterError:
        # PostgreSQL text and jsonb cannot hold U+0000; refuse it rather than fail the insert.
        raise ApiError(400, [{"field": "body", "reason": "text must not contain NUL (\\u0000)"}])
    body = {
        "name": applied.name,
        "version": applied.version,
        "previous_version": applied.previous_version,
        "changed": applied.changed,
        "diff": applied.diff,
        # Valid but almost certainly not meant (a rule that can never match): said, not refused.
        "warnings": map_warnings(validate_map(document)) if kind == "map" else [],
    }
    return json_response(body, status=201 if applied.previous_version is None else 200)


# The same four routes for each kind of definition, its kind bound to each handler.
_KINDS: tuple[tuple[definitions.Kind, str], ...] = (("map", "maps"), ("segment", "segments"), ("alert", "alerts/rules"))
for _kind, _plural in _KINDS:
    routes.get(f"/v1/{_plural}")(partial(list_all, _kind))
    routes.get(f"/v1/{_plural}/{{name}}")(partial(get_one, _kind))
    routes.put(f"/v1/{_plural}/{{name}}")(partial(put, _kind))
    routes.get(f"/v1/{_plural}/{{name}}/versions")(partial(get_versions, _kind))

_WHAT = {"map": "map", "segment": "segment", "alert": "alert rule"}


def _shown(version: dict[str, Any], principal: Any) -> dict[str, Any]:
    """A definition as its reader may see it: an alert rule's webhook URLs whole for admin keys only."""
    if principal.kind == "admin" or "notify" not in version["definition"]:
        return version
    rule = dict(version["definition"])
    rule["notify"] = [{**hook, "url": redact(hook["url"])} for hook in rule["notify"]]
    return {**version, "definition": rule}


def name_param(request: web.Request) -> str:
    """A map or segment name from the path; only slugs can exist, so anything else is a 400, not a lookup."""
    name = request.match_info["name"]
    if not SLUG.match(name):
        raise ApiError(400, [{"field": "name", "reason": SLUG_RULE}])
    return name


def version_param(request: web.Request) -> int | None:
    raw = request.query.get("version")
    if raw is None:
        return None
    # isascii too: str.isdigit() accepts digits int() refuses ('²'), and 5000 digits would be a ValueError.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7) or not 1 <= int(raw) <= 1_000_000:
        raise ApiError(400, [{"field": "version", "reason": "must be a positive integer"}])
    return int(raw)


async def read_document(request: web.Request) -> Any:
    """The request body as JSON, or YAML when the Content-Type says so."""
    raw = await request.read()
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ApiError(413, [{"field": "body", "reason": f"document over {MAX_DOCUMENT_BYTES} bytes"}])
    kind = "YAML" if "yaml" in request.content_type else "JSON"
    try:
        document = yaml.safe_load(raw) if kind == "YAML" else orjson.loads(raw)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise ApiError(400, [{"field": "body", "reason": f"not valid {kind}: {exc}"}]) from None
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise ApiError(400, [{"field": "body", "reason": f"{kind} nested deeper than {MAX_DEPTH} levels"}]) from None
    _check_shape(document, kind)
    return document


def _check_shape(document: Any, kind: str) -> None:
    """Refuse documents no map or segment needs: nested past MAX_DEPTH (validation and storage recurse) or,
    counting YAML aliases as what they expand to, over MAX_VALUES values (a few hundred bytes of YAML
    aliases can stand for billions). Iterative, and stops at the first limit crossed."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ApiError(
                400, [{"field": "body", "reason": f"{kind} has over {MAX_VALUES} values (aliases expanded)"}]
            )
        if depth > MAX_DEPTH:
            raise ApiError(400, [{"field": "body", "reason": f"{kind} nested deeper than {MAX_DEPTH} levels"}])
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
