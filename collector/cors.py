"""CORS for the ingest routes: which web pages may send events, and which may read the answers.

The rule is one sentence: a request's ``Origin`` must be one its key's project lists (``journeys project
origins``). What follows from it:

* **Public keys** (``jp_…``, in web pages) write only from a listed origin. Any other ``Origin`` — or none,
  or ``null`` — is refused 403 naming ``Origin``, and nothing is stored. Browsers always send ``Origin``
  on a cross-origin POST, fetch and ``sendBeacon`` alike.
* **Write keys** (``jw_…``, server secrets) are not limited by origin: servers send no ``Origin``, and a
  page that has a write key has leaked it already.
* The answer carries ``Access-Control-Allow-Origin`` (the origin itself, never ``*``, and never
  ``Allow-Credentials``: the collector uses no cookies) only for a listed origin, so only those pages can
  read it — the tracker reads the status and ``Retry-After`` (exposed). Every answer to a request with an
  ``Origin`` says ``Vary: Origin``.

**Preflight.** A browser sends ``OPTIONS`` before a POST that has an ``Authorization`` header or a JSON
content type — and a preflight carries no key, so the project is unknown. It is answered 204 with the
CORS allowances only when *some* project lists the origin, and 403 without any otherwise; the real
request is then checked against its own key's project as above. So an unknown origin is stopped at the
earliest point, and a listed origin gains nothing beyond what its own project granted. (The tracker never
needs a preflight: it sends ``text/plain`` with the key in the body, a CORS "simple" request.)
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from collector.appkeys import ORIGINS
from collector.origins import OriginError, normalize_origin
from journeys.http import ApiError, Handler
from journeys.keys import Principal
from journeys.openapi import error_response as error_spec
from journeys.openapi import operation

_ALLOWED = web.RequestKey("cors_allowed_origin", str)

ALLOW_METHODS = "POST"
# A vetted list, never "*": ours, plus what the official browser SDKs send — RudderStack's analytics-js
# ``AnonymousId`` and ``SentAt``, Segment's analytics-next ``X-Retry-Count``. A header missing here fails
# the preflight, and the browser then sends nothing at all.
ALLOW_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Request-Id, AnonymousId, SentAt, X-Retry-Count"
EXPOSE_HEADERS = "Retry-After, X-Request-Id"
PREFLIGHT_MAX_AGE_S = "600"


async def preflight(request: web.Request) -> web.Response:
    """``OPTIONS`` on an ingest route (they take POST). The route modules declare it on their paths; the
    headers on real answers come from :func:`cors_middleware`, which must be the app's outermost middleware
    so error answers get them too. The origin table is ``app[ORIGINS]`` (collector/appkeys.py)."""
    return await _preflight(request, ALLOW_METHODS)


async def preflight_get(request: web.Request) -> web.Response:
    """``OPTIONS`` on a route that takes GET (RudderStack's ``/sourceConfig``)."""
    return await _preflight(request, "GET")


def _canonical(header: str) -> str | None:
    try:
        return normalize_origin(header)
    except OriginError:
        return None


async def check_origin(request: web.Request, principal: Principal) -> None:
    """Mark the request's origin as allowed for the answer, or refuse a public key's write (see above)."""
    header = request.headers.get("Origin")
    if header is None and principal.kind != "public":
        return  # a server: nothing to allow, nothing to refuse
    allowed = await request.app[ORIGINS].allowed(principal.project_id)
    if header is not None and (header in allowed or _canonical(header) in allowed):
        request[_ALLOWED] = header
        return
    if principal.kind != "public":
        return
    if header is None:
        reason = "a public key writes from web pages only, and this request has no Origin header"
    elif header == "null":
        reason = (
            "Origin is null (a sandboxed frame, a local file, or a Referrer-Policy that hides the origin): "
            "never allowed for a public key"
        )
    elif not allowed:
        reason = f"origin {header!r} is not allowed: this project lists no origins (journeys project origins)"
    else:
        reason = f"origin {header!r} is not among this project's allowed origins (journeys project origins)"
    raise ApiError(403, [{"field": "Origin", "reason": reason}], code="origin_forbidden")


async def _preflight(request: web.Request, methods: str) -> web.Response:
    header = request.headers.get("Origin")
    if header is None:  # a plain OPTIONS, not CORS
        return web.Response(status=204, headers={"Allow": f"{methods}, OPTIONS"})
    origin = _canonical(header)
    if origin is None or not await request.app[ORIGINS].known(origin):
        raise ApiError(
            403,
            [
                {
                    "field": "Origin",
                    "reason": f"origin {header!r} is not allowed for any project (journeys project origins)",
                }
            ],
        )
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": header,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE_S,
        },
    )


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if "Origin" in request.headers:
        response.headers.add("Vary", "Origin")
        allowed = request.get(_ALLOWED)
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response


def preflight_operation() -> dict[str, Any]:
    """The OpenAPI description of the preflight answer on each ingest route."""
    return operation(
        "CORS preflight",
        tags=["ingest"],
        secured=False,
        description="Browsers ask before a POST with an Authorization header or a JSON body. Answered 204 with "
        "the CORS allowances when some project lists the Origin; the POST is then checked against its own key's "
        "project. Without an Origin header: a plain OPTIONS, 204 with Allow.",
        parameters=[
            {
                "name": "Origin",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "The page's origin, e.g. https://shop.example.",
            },
        ],
        responses={
            204: {"description": "Allowed (or not a CORS request)."},
            403: error_spec(403, "No project lists this origin: no CORS allowances, the browser will not send."),
        },
    )
