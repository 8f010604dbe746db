"""``/openapi.json`` on both services: served, well-formed, and covering exactly the routes each app has.

A route added to an app without documenting it fails here, naming the route; so does a documented route
that no longer exists.
"""

from __future__ import annotations

from typing import Any

import pytest

from collector.api_spec import collector_openapi
from journeys.openapi import documented_operations, registered_operations
from query.api_spec import query_openapi


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.fixture(params=["collector", "query"])
def served(request, collector, query):  # type: ignore[no-untyped-def]
    return {"collector": (collector, collector_openapi()), "query": (query, query_openapi())}[request.param]


async def test_every_registered_route_is_documented_and_nothing_else(served) -> None:  # type: ignore[no-untyped-def]
    server, doc = served
    registered = registered_operations(server.app)
    documented = documented_operations(doc)
    missing, stale = sorted(registered - documented), sorted(documented - registered)
    assert not missing, f"routes missing from {doc['info']['title']}'s OpenAPI document: {missing}"
    assert not stale, f"documented but not served by {doc['info']['title']}: {stale}"


async def test_the_document_is_served_as_built(served, http) -> None:  # type: ignore[no-untyped-def]
    server, doc = served
    async with http.get(server.make_url("/openapi.json")) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == doc


@pytest.mark.parametrize("build", [collector_openapi, query_openapi])
def test_documents_are_openapi_3_1_with_resolvable_refs_and_our_error_shape(build) -> None:  # type: ignore[no-untyped-def]
    doc = build()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for target in _refs(doc):
        assert target.startswith("#/components/schemas/") and target.rsplit("/", 1)[1] in schemas, target
    for path, item in doc["paths"].items():
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(_path_names(path)), (method, path)
            assert op["responses"], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400 and path != "/readyz":  # not ready: the checks body, by design
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    assert schemas["Error"]["required"] == ["code", "message", "errors"]


def _path_names(path: str) -> list[str]:
    import re

    return re.findall(r"\{([^}]+)\}", path)


def test_schemathesis_loads_both_documents() -> None:
    schemathesis = pytest.importorskip("schemathesis")
    for build in (collector_openapi, query_openapi):
        schema = schemathesis.openapi.from_dict(build())
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == len(documented_operations(build()))
