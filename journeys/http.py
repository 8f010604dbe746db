"""HTTP plumbing both services share: credentials, JSON error bodies, and a middleware that stamps a
request id, turns every failure into a JSON body, and records per-route metrics."""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from journeys.errors import JourneysError
from journeys.logs import bind_request_id, reset_request_id
from journeys.metrics import Metrics

log = logging.getLogger(__name__)
# One line per request: method, route (the pattern, never the path: ids in paths are customer data),
# status, duration and, through the context, the request id. Never headers, keys or bodies.
access_log = logging.getLogger("journeys.access")

REQUEST_ID = web.RequestKey("request_id", str)
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# A short code per status for errors that name none of their own.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_encoding",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(JourneysError):
    """Raise from a handler (or anything it calls) to answer with our error shape; the middleware renders
    it with :func:`error_response`, the one renderer.

    ``errors`` say what is wrong with each field, ``headers`` go on the answer (``Retry-After``,
    ``WWW-Authenticate``), and ``code`` is the body's short code (by default the status's). The collector
    also uses ``code`` as the ``reason`` label of ``journeys_events_rejected_total``, so a code is short and
    from a bounded set, never built from input."""

    def __init__(
        self,
        status: int,
        errors: list[dict[str, Any]],
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ):
        super().__init__(f"{status}: {errors}")
        self.status = status
        self.errors = errors
        self.headers = headers
        self.code = code or _STATUS_CODES.get(status, f"http_{status}")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def error_response(
    status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None, code: str | None = None
) -> web.Response:
    """Every error body has the same shape: ``{"code", "message", "errors": [{"field", "reason", "index"?}]}``.

    ``errors`` says what is wrong with each field; ``code`` and ``message`` are there because Segment's and
    RudderStack's libraries read exactly those two from an error body (the Python ones fail on a body
    without them and retry a request that can never succeed)."""
    message = "; ".join(
        (f"event {e['index']}: " if "index" in e else "") + f"{e.get('field', '')}: {e.get('reason', '')}"
        for e in errors[:5]
    )
    if len(errors) > 5:
        message += f"; and {len(errors) - 5} more"
    body = {"code": code or _STATUS_CODES.get(status, f"http_{status}"), "message": message, "errors": errors}
    return json_response(body, status=status, headers=headers)


def presented_key(request: web.Request) -> str | None:
    """The API key from ``Authorization``: Basic (key as username, password empty — Segment's convention;
    a key in the password slot is accepted too) or Bearer."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):  # binascii.Error, and ValueError for non-ASCII text
            return None
        user, _, password = decoded.partition(":")
        return user or password or None
    if scheme == "bearer" and value:
        return value
    return None


async def authorized(request: web.Request, keys: Any, kinds: tuple[str, ...], *, needed: str, cannot: str) -> Any:
    """The principal of the request's key (``keys``: a journeys.keys.KeyResolver) when it is of one of
    ``kinds``: 401 without a valid key (``needed``: what to present, e.g. "read key"), 403 for another kind
    ("a write key cannot ``cannot``")."""
    key = presented_key(request)
    if not key:
        raise ApiError(
            401,
            [{"field": "Authorization", "reason": f"{needed} required: HTTP Basic username or Bearer token"}],
            {"WWW-Authenticate": 'Basic realm="journeys"'},
        )
    principal = await keys.resolve(key)
    if principal is None:
        raise ApiError(401, [{"field": "Authorization", "reason": "unknown or revoked key"}])
    if principal.kind not in kinds:
        raise ApiError(403, [{"field": "Authorization", "reason": f"a {principal.kind} key cannot {cannot}"}])
    return principal


def request_id(request: web.Request) -> str:
    return request.get(REQUEST_ID, "")


def make_middleware(metrics: Metrics, service: str) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-Id", "")
        request[REQUEST_ID] = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
        token = bind_request_id(request[REQUEST_ID])  # every record logged for this request carries it
        try:
            return await _handle(request, handler)
        finally:
            reset_request_id(token)

    async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.errors, exc.headers, exc.code)
        except web.HTTPException as exc:
            # aiohttp's own refusals (404, 405, 413 from client_max_size…) get our JSON shape too.
            if exc.status < 400:
                raise
            field = "body" if exc.status == 413 else "path"
            keep = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
            response = error_response(exc.status, [{"field": field, "reason": exc.reason}], keep)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(500, [{"field": "server", "reason": "internal error"}])
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        elapsed = time.perf_counter() - began
        metrics.http_requests.labels(service, name, str(response.status)).inc()
        metrics.http_latency.labels(service, name).observe(elapsed)
        response.headers["X-Request-Id"] = request[REQUEST_ID]
        # Probes, scrapes and the dashboard's own refreshes repeat every few seconds: DEBUG, unless they fail.
        quiet = response.status < 400 and (name in QUIET_ROUTES or request.headers.get("X-Journeys-Poll") == "1")
        level = logging.DEBUG if quiet else logging.INFO
        if access_log.isEnabledFor(level):
            duration_ms = round(elapsed * 1000, 3)
            access_log.log(
                level,
                "%s %s %s %.1fms",
                request.method,
                name,
                response.status,
                duration_ms,
                extra={
                    "service": service,
                    "method": request.method,
                    "route": name,
                    "status": response.status,
                    "duration_ms": duration_ms,
                },
            )
        return response

    return middleware


def metrics_response(metrics: Metrics) -> web.Response:
    """``GET /metrics``'s answer: ``metrics`` in the Prometheus text format."""
    body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(_: web.Request) -> web.Response:
    """``GET /healthz``: the process answers (liveness); what it depends on is ``/readyz``'s question."""
    return json_response({"status": "ok"})


Checks = Callable[[web.Request], Awaitable[dict[str, dict[str, Any]]]]


def readyz_handler(checks: Checks) -> Handler:
    """``GET /readyz``: 200 when every check of ``checks(request)`` is ok, else 503; the checks either way."""

    async def handler(request: web.Request) -> web.Response:
        found = await checks(request)
        ready = all(bool(check["ok"]) for check in found.values())
        return json_response({"ready": ready, "checks": found}, status=200 if ready else 503)

    return handler


def ops_routes(checks: Checks, metrics_of: Callable[[web.Request], Metrics], openapi: Handler) -> web.RouteTableDef:
    """What every service answers its operators, once: ``/healthz``, ``/readyz`` (``checks``), ``/metrics`` (the
    service's own, ``metrics_of(request)``) and ``/openapi.json`` (``openapi``, the service's document)."""
    routes = web.RouteTableDef()
    routes.get("/healthz")(healthz)
    routes.get("/readyz")(readyz_handler(checks))

    @routes.get("/metrics")
    async def metrics_exposition(request: web.Request) -> web.Response:
        return metrics_response(metrics_of(request))

    routes.get("/openapi.json")(openapi)
    return routes


async def postgres_check(pg: Any) -> dict[str, Any]:
    """PostgreSQL answers a query: any failure to reach it means not ready."""
    try:
        await pg.fetchval("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "error": str(exc)[:200]}


class ServiceRefused(JourneysError):
    """A running service answered a CLI's call with an error: its status and our error list."""

    def __init__(self, status: int, errors: list[dict[str, Any]]):
        super().__init__(f"{status}: " + "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in errors))
        self.status = status
        self.errors = errors


def post_to_service(url: str, body: Any, key: str, timeout_s: float = 3600.0) -> Any:
    """POST ``body`` as JSON to a running service with ``key`` (Basic auth) and return its JSON answer: how the
    CLI reaches a service that owns the embedded stores. Raises :class:`ServiceRefused` for an error answer
    and ``RuntimeError`` when nothing answers."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url,
        data=orjson.dumps(body),
        method="POST",
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            errors = orjson.loads(exc.read()).get("errors") or []
        except (ValueError, AttributeError):
            errors = []
        raise ServiceRefused(exc.code, errors or [{"field": "request", "reason": str(exc.reason)}]) from None
    except urllib.error.URLError as exc:
        raise RuntimeError(f"the stores are in use and the service at {url} did not answer: {exc.reason}") from None
