"""``GET /sourceConfig``: the one control-plane answer RudderStack's browser SDK needs, so it runs unchanged.

@rudderstack/analytics-js v3 asks its control plane for the source's configuration before it sends anything
(``{configUrl}/sourceConfig/?writeKey=…``, by default at RudderStack's own host) and does not start without
an answer. Pointing ``configUrl`` at the collector answers it here: an enabled source with no device-mode
destinations (every event comes to this collector, and only here) and the SDK's error and metrics reports
to RudderStack's hosts turned off. The key is checked as for sending events (a public key from one of its
project's origins; a secret write key in a URL is refused, as on the beacon route).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from collector.accept import authorize
from collector.cors import preflight_get
from journeys.http import ApiError, json_response, presented_key
from journeys.openapi import error_response as error_spec
from journeys.openapi import json_ok, operation

PATHS = ("/sourceConfig", "/sourceConfig/")

routes = web.RouteTableDef()


async def source_config(request: web.Request) -> web.Response:
    in_query = request.query.get("writeKey") or None
    key = presented_key(request) or in_query
    principal = await authorize(request, key)
    if in_query is not None and (in_query != key or principal.kind != "public"):
        # Whatever the header says, a secret in the URL is one too many (logs, histories).
        raise ApiError(
            403,
            [
                {
                    "field": "writeKey",
                    "reason": "only a public key (jp_…) may be sent in a URL: use a public key in web pages",
                }
            ],
            code="key_in_url",
        )
    return json_response(
        {
            "isHosted": True,
            "source": {
                "id": principal.project_id,
                "name": principal.project_id,
                "writeKey": key,
                "workspaceId": principal.project_id,
                "enabled": True,
                "config": {"statsCollection": {"errors": {"enabled": False}, "metrics": {"enabled": False}}},
                "destinations": [],
            },
        },
        headers={"Cache-Control": "no-store"},
    )


for _path in PATHS:
    routes.get(_path)(source_config)
    routes.route("OPTIONS", _path)(preflight_get)


def rudder_config_openapi_paths() -> dict[str, Any]:
    from collector.cors import preflight_operation

    get = operation(
        "RudderStack source configuration",
        tags=["ingest"],
        description="What @rudderstack/analytics-js asks its control plane for before sending: point its "
        "`configUrl` load option at the collector. An enabled source without device-mode destinations. The key "
        "as HTTP Basic username or `writeKey` in the query (public keys only there).",
        parameters=[
            {
                "name": "writeKey",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "A public key (jp_…), as the SDK sends it.",
            },
        ],
        responses={
            200: json_ok({"type": "object", "required": ["source"]}, "The source configuration."),
            403: error_spec(403, "A secret key in the URL, or an origin the project does not list."),
        },
        errors=(401, 429),
    )
    return {path: {"get": get, "options": preflight_operation()} for path in PATHS}
