"""Email touchpoints: the open pixel and tracked-link redirect, recorded like every other event.

``GET /v1/email/open/{token}`` answers a 1×1 transparent GIF and records "Email Opened";
``GET /v1/email/click/{token}`` records "Email Clicked" and answers 302 to the link's target. The token
(collector/email_tokens.py, docs/email.md) is signed with the project's email key, so the URL alone is the
credential: no API key can ride in an ``<img src>`` or an ``<a href>``.

Two promises pull against each other here, and this is the order they win in:

1. A bad token never redirects. An edited, truncated or foreign token gets 400 with our JSON error body
   and no ``Location``: the collector must not become an open redirect.
2. A person who clicked reaches the page. The event goes through the same accept steps as ``/v1/track``
   (:mod:`collector.accept`: validated, encoded, fsync'd to the spool) and the answer waits for that, but
   if the spool refuses (full, broken) or is too slow, the redirect and the pixel are still sent; the loss
   is counted (``journeys_email_unrecorded``) and logged, never silent.

Requests from mail privacy prefetchers and link scanners are recorded but flagged
(:mod:`collector.email_bots`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from collector.accept import Limits, append, prepare
from collector.appkeys import EMAIL_KEYS, METRICS, SPOOL, STORES
from collector.email_bots import Bot, classify
from collector.email_keys import SigningKeyResolver
from collector.email_tokens import MAX_TOKEN_CHARS, Claims, Kind, TokenError, claims_of, signed_by, split
from collector.spool import SpoolError, SpoolFull
from journeys.http import ApiError, request_id

log = logging.getLogger(__name__)

#: The classic 43-byte GIF89a: one pixel, colour index 0, which the graphic control extension makes
#: transparent.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
EVENT_NAMES: dict[str, str] = {"open": "Email Opened", "click": "Email Clicked"}
TOUCHPOINTS: dict[str, str] = {"open": "email-open", "click": "email-click"}
#: How long an open or click waits for its event to be fsync'd before answering anyway (a hung disk must
#: not strand a person on a blank page). The write is not abandoned: it may still land.
DURABLE_WAIT_S = 5.0
MAX_USER_AGENT_CHARS = 512
# Never cache: every fetch is an open, and a cached redirect would skip the click. The token (readable
# base64 with the user id) must not leak to the target site through Referer.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_REDIRECT_HEADERS = {**_NO_STORE, "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex, nofollow"}


routes = web.RouteTableDef()  # GET, and HEAD, which link checkers use and which is flagged as such


@routes.get("/v1/email/open/{token}")
async def email_open(request: web.Request) -> web.StreamResponse:
    return await _touch(request, "open")


@routes.get("/v1/email/click/{token}")
async def email_click(request: web.Request) -> web.StreamResponse:
    return await _touch(request, "click")


def email_openapi_paths() -> dict[str, Any]:
    """These routes in the collector's OpenAPI document (collector/api_spec.py adds them)."""
    from journeys.openapi import error_response as error_spec
    from journeys.openapi import operation, path_param

    token = path_param(
        "token",
        "project.payload.signature, signed with the project's email key (docs/email.md).",
        max_length=MAX_TOKEN_CHARS,
    )
    no_store = {
        "Cache-Control": {"description": "no-store: every fetch is an open or a click.", "schema": {"type": "string"}}
    }
    bad = "The token is malformed, edited, truncated, for another project, or of the other kind: no redirect."
    keys_down = "The project's keys cannot be read (PostgreSQL unreachable): the token cannot be trusted, no redirect."
    common: dict[int | str, dict[str, Any]] = {
        400: error_spec(400, bad),
        503: error_spec(503, keys_down, retry_after=True),
    }
    description = (
        "The token is the credential (no API key). Known prefetchers and scanners are recorded with "
        "properties.bot; the answer is the same for them."
    )
    return {
        "/v1/email/open/{token}": {
            "get": operation(
                "Email open pixel: records Email Opened",
                tags=["ingest"],
                description=description,
                parameters=[token],
                secured=False,
                responses={
                    200: {
                        "description": "A 1x1 transparent GIF, also when the event could not be stored (counted).",
                        "headers": no_store,
                        "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **common,
                },
            )
        },
        "/v1/email/click/{token}": {
            "get": operation(
                "Email link: records Email Clicked and redirects",
                tags=["ingest"],
                description=description,
                parameters=[token],
                secured=False,
                responses={
                    302: {
                        "description": "To the signed http(s) target, also when the event could not be stored (counted).",
                        "headers": {
                            **no_store,
                            "Location": {
                                "description": "Exactly the signed URL.",
                                "schema": {"type": "string", "format": "uri"},
                            },
                        },
                    },
                    **common,
                },
            )
        },
    }


def email_event(claims: Claims, bot: Bot | None, user_agent: str) -> dict[str, Any]:
    """The Segment track event an open or click becomes.

    Properties: the token's extras, then ``campaign``, ``url`` (clicks) and ``bot`` (its kind, when
    flagged) — last, so a token cannot set them. ``context.bot`` names the fetcher."""
    properties: dict[str, Any] = {**claims.props, "campaign": claims.campaign}
    if claims.url is not None:
        properties["url"] = claims.url
    context: dict[str, Any] = {"userAgent": user_agent[:MAX_USER_AGENT_CHARS]} if user_agent else {}
    if bot is not None:
        properties["bot"] = bot.kind
        context["bot"] = {"name": bot.name, "kind": bot.kind}
    return {
        "type": "track",
        "event": EVENT_NAMES[claims.kind],
        "userId": claims.user_id,
        # Every fetch is a real, separate event (a second open is a second open): a fresh id each time.
        "messageId": str(uuid.uuid4()),
        "channel": "email",
        "touchpoint": TOUCHPOINTS[claims.kind],
        "properties": properties,
        "context": context,
    }


async def _touch(request: web.Request, kind: Kind) -> web.StreamResponse:
    metrics = request.app[METRICS]
    try:
        claims = await _verify(request.app[EMAIL_KEYS], request.match_info["token"], kind)
    except TokenError as problem:
        metrics.email_bad_tokens.labels(kind, problem.code).inc()
        raise ApiError(400, [{"field": problem.field, "reason": problem.reason}], dict(_NO_STORE)) from None
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Without the project's keys the token cannot be trusted, so not even a click redirects.
        log.error("email %s: cannot read signing keys: %s", kind, exc)
        metrics.email_bad_tokens.labels(kind, "keys_unavailable").inc()
        raise ApiError(
            503,
            [{"field": "server", "reason": "cannot check the link now, retry shortly"}],
            {**_NO_STORE, "Retry-After": "5"},
        ) from None
    user_agent = request.headers.get("User-Agent", "")
    bot = classify(user_agent, request.method, kind)
    await _record(request, claims, bot, user_agent)
    if kind == "open":
        return web.Response(body=PIXEL_GIF, content_type="image/gif", headers=_NO_STORE)
    assert claims.url is not None  # claims_of guarantees a checked http(s) URL for clicks
    return web.Response(status=302, headers={**_REDIRECT_HEADERS, "Location": claims.url})


async def _verify(resolver: SigningKeyResolver, token: str, kind: Kind) -> Claims:
    parsed = split(token)
    if not signed_by(parsed, await resolver.keys(parsed.project_id)):
        # A key made or rotated in the last ttl seconds is not in the cache yet: look once more.
        fresher = await resolver.fresher_keys(parsed.project_id)
        if fresher is None or not signed_by(parsed, fresher):
            raise TokenError(
                "the link's signature does not verify (edited, truncated, or for another project)",
                code="signature",
            )
    claims = claims_of(parsed)
    if claims.kind != kind:
        raise TokenError(f"this is an email {claims.kind} token, not a {kind} token", code="kind")
    return claims


async def _record(request: web.Request, claims: Claims, bot: Bot | None, user_agent: str) -> None:
    """Make the event durable, or count and log why it is not; never raise."""
    kind = claims.kind
    metrics = request.app[METRICS]
    prepared = prepare(
        [email_event(claims, bot, user_agent)],
        {},
        project_id=claims.project_id,
        received_ms=int(time.time() * 1000),
        request_id=request_id(request),
        limits=Limits.of(request.app[STORES].settings),
    )
    reason = None
    try:
        await asyncio.wait_for(append(request.app[SPOOL], prepared.records), DURABLE_WAIT_S)
    except SpoolFull:
        reason = "spool_full"
    except SpoolError:
        reason = "spool_unavailable"
    except asyncio.TimeoutError:
        reason = "timeout"
    if reason is None and not prepared.outcome.lines:
        reason = "quarantined"  # stored in the quarantine table with why, but not as an event
    if reason is not None:
        metrics.email_unrecorded.labels(kind, reason).inc()
        log.error(
            "email %s for project %s answered but not recorded: %s",
            kind,
            claims.project_id,
            reason,
            extra={"project_id": claims.project_id, "reason": reason},
        )
        return
    metrics.email_events.labels(kind, bot.kind if bot else "none").inc()
    metrics.count_accepted("email")
