"""OpenAPI 3.1 documents for both services, served at ``GET /openapi.json``.

Why hand-written dicts and not generated from the handlers: the handlers parse their input by hand (the
collector's hot path cannot afford a framework's model layer), so there is nothing to introspect. What keeps
the documents honest instead is ``tests/test_openapi.py``: every route an app's router has must be in its
document and every documented route must exist, and the fuzzers (``tests/test_fuzz.py``) drive each service
from its document with schemathesis.

This module holds what both documents share — the error shape every 4xx/5xx has, the security schemes,
small builders — and :func:`openapi_handler`. The per-service route specs live beside each app:
``collector/api_spec.py`` and ``query/api_spec.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from journeys.http import Handler, json_response

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"

#: ``{"code", "message", "errors": [{"field", "reason", "index"?}]}``: the one error body of both services
#: (journeys.http).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message", "errors"],
    "properties": {
        "code": {
            "type": "string",
            "description": "A short machine-readable code, e.g. `no_valid_events`, `unauthorized`.",
        },
        "message": {
            "type": "string",
            "description": "The errors below in one line, for logs and clients that read only this.",
        },
        "errors": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "properties": {
                    "field": {"type": "string", "description": "The field, parameter, header or `body` at fault."},
                    "reason": {"type": "string", "description": "What is wrong with it, for a person."},
                    "index": {"type": "integer", "minimum": 0, "description": "Batch position of the event."},
                },
            },
        },
    },
}

_ERROR_TEXT = {
    400: "The request is malformed; each error names the field.",
    401: "No key, or an unknown or revoked key.",
    403: "The key is valid but of a kind that may not do this.",
    404: "No such resource in this project.",
    405: "Method not allowed on this path.",
    413: "The body is over the size limit.",
    415: "Unsupported Content-Encoding.",
    429: "Over the key's rate limit; retry after Retry-After seconds.",
    500: "Internal error (a bug: the request id in X-Request-Id finds it in the logs).",
    503: "Temporarily unable; retry after Retry-After seconds.",
}

SECURITY_SCHEMES: dict[str, Any] = {
    "basicKey": {
        "type": "http",
        "scheme": "basic",
        "description": "The API key as the Basic username, password empty (Segment's convention).",
    },
    "bearerKey": {"type": "http", "scheme": "bearer", "description": "The API key as a Bearer token."},
}
KEY_SECURITY: list[dict[str, list[str]]] = [{"basicKey": []}, {"bearerKey": []}]


def error_response(status: int, description: str | None = None, *, retry_after: bool = False) -> dict[str, Any]:
    """An error response object with our error body (and ``Retry-After`` where the service sends it)."""
    response: dict[str, Any] = {
        "description": description or _ERROR_TEXT.get(status, "Error."),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
        }
    return response


def json_ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def operation(
    summary: str,
    *,
    tags: Iterable[str],
    responses: dict[int | str, dict[str, Any]],
    description: str = "",
    parameters: Iterable[dict[str, Any]] = (),
    body: dict[str, Any] | None = None,
    secured: bool = True,
    errors: Iterable[int] = (),
) -> dict[str, Any]:
    """One operation; ``errors`` adds our error shape for each status listed (plus 500, always possible)."""
    op: dict[str, Any] = {"summary": summary, "tags": list(tags)}
    if description:
        op["description"] = description
    params = list(parameters)
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    all_responses: dict[str, Any] = {str(status): spec for status, spec in responses.items()}
    for status in (*errors, 500):
        all_responses.setdefault(str(status), error_response(status, retry_after=status in (429, 503)))
    op["responses"] = all_responses
    op["security"] = KEY_SECURITY if secured else []
    return op


def path_param(name: str, description: str, *, max_length: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def query_param(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


# Operations every service has: probes, metrics and this document.
def ops_paths(service: str) -> dict[str, Any]:
    return {
        "/healthz": {
            "get": operation(
                "Liveness: the process serves HTTP",
                tags=["operations"],
                secured=False,
                responses={
                    200: json_ok({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})
                },
            )
        },
        "/readyz": {
            "get": operation(
                "Readiness: every dependency answers",
                tags=["operations"],
                secured=False,
                description="200 when every check is ok, 503 otherwise; the body names each check either way.",
                responses={
                    200: json_ok(ref("Ready"), "Ready."),
                    503: json_ok(ref("Ready"), "Not ready: at least one check failed (see `checks`)."),
                },
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics",
                tags=["operations"],
                secured=False,
                responses={
                    200: {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/openapi.json": {
            "get": operation(
                f"This document (OpenAPI {OPENAPI_VERSION}) for the {service}",
                tags=["operations"],
                secured=False,
                responses={200: json_ok({"type": "object"}, "The OpenAPI document.")},
            )
        },
    }


READY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ready", "checks"],
    "properties": {
        "ready": {"type": "boolean"},
        "checks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}, "error": {"type": "string"}},
            },
        },
    },
}


def document(
    *, title: str, description: str, paths: dict[str, Any], schemas: dict[str, Any], tags: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": API_VERSION, "description": description},
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, "Ready": READY_SCHEMA, **schemas},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def openapi_handler(doc: dict[str, Any]) -> Handler:
    """``GET /openapi.json``: the document, serialized once."""
    response_body = json_response(doc).body

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=response_body, content_type="application/json")

    return handler


def registered_operations(app: web.Application) -> set[tuple[str, str]]:
    """``(METHOD, /path/{param})`` of every route an app serves, in OpenAPI's path syntax (aiohttp's
    ``{name:regex}`` becomes ``{name}``; the HEAD aiohttp adds beside each GET is left out)."""
    out: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        out.add((route.method, route.resource.canonical))
    return out


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in methods}
