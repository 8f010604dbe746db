"""The project's API keys over HTTP, for admin keys (docs/keys.md):

* ``GET /v1/keys`` — every key of the project by prefix (never a secret): kind, created, last used,
  revoked, and which one is making the request (``current``);
* ``POST /v1/keys`` ``{"kind": "write"|"read"|"public"|"admin"}`` — a new key; its secret is in this answer
  (201, ``Cache-Control: no-store``) and nowhere else, ever;
* ``DELETE /v1/keys/{prefix}`` — revoke the key with that prefix, exactly as listed. Services stop accepting
  it within ``JOURNEYS_KEY_CACHE_TTL_S``. Already revoked: 200 saying so. Two live keys with that prefix:
  409 naming them (``journeys key revoke`` takes the whole key). The key making the request cannot revoke
  itself (409): revoke it with another admin key, so a slip cannot lock the last admin out.

A whole key in the URL is refused (400): URLs end up in proxy logs and browser history. The CLI takes whole
keys (``journeys key revoke jw_…``).
"""

from __future__ import annotations

import re
from typing import Any, cast

import orjson
from aiohttp import web

from journeys.http import ApiError, json_response, presented_key
from journeys.keys import (
    KEY_KINDS,
    PREFIX_CHARS,
    KeyAmbiguous,
    KeyInUse,
    KeyKind,
    KeyNotFound,
    Principal,
    create_key,
    hash_key,
    is_whole_key,
    list_keys,
    revoke,
)
from query.appkeys import STORES
from query.auth import principal_of


_PREFIX = re.compile(rf"^[A-Za-z0-9_-]{{1,{PREFIX_CHARS}}}$")
MAX_BODY_BYTES = 4096


routes = web.RouteTableDef()


async def _admin(request: web.Request) -> tuple[Principal, bytes]:
    principal = await principal_of(request, ("read", "admin"))
    if principal.kind != "admin":
        raise ApiError(
            403, [{"field": "Authorization", "reason": f"a {principal.kind} key cannot manage keys (admin key)"}]
        )
    return principal, hash_key(presented_key(request) or "")


@routes.get("/v1/keys")
async def list_(request: web.Request) -> web.Response:
    principal, current = await _admin(request)
    keys = await list_keys(request.app[STORES].pg, principal.project_id)
    return json_response(
        {
            "project": principal.project_id,
            "keys": [{**key.as_json(), "current": key.key_hash == current} for key in keys],
        }
    )


@routes.post("/v1/keys")
async def create(request: web.Request) -> web.Response:
    principal, _ = await _admin(request)
    kind = _kind(await _body(request))
    secret, key = await create_key(request.app[STORES].pg, principal.project_id, kind)
    return json_response({"key": secret, **key.as_json()}, status=201, headers={"Cache-Control": "no-store"})


@routes.delete("/v1/keys/{prefix}")
async def delete(request: web.Request) -> web.Response:
    principal, current = await _admin(request)
    prefix = request.match_info["prefix"]
    if is_whole_key(prefix):
        raise ApiError(
            400,
            [
                {
                    "field": "prefix",
                    "reason": "that is a whole key: never put one in a URL (treat it as "
                    f"leaked); give its prefix, the first {PREFIX_CHARS} characters, as GET /v1/keys lists it",
                }
            ],
        )
    if not _PREFIX.match(prefix):
        raise ApiError(
            400,
            [
                {
                    "field": "prefix",
                    "reason": f"a key's prefix as GET /v1/keys lists it ({PREFIX_CHARS} characters, e.g. jw_AbC)",
                }
            ],
        )
    try:
        outcome = await revoke(
            request.app[STORES].pg, prefix, principal.project_id, exact_prefix=True, not_hash=current
        )
    except KeyNotFound:
        raise ApiError(
            404, [{"field": "prefix", "reason": f"no key of this project has the prefix {prefix!r}"}]
        ) from None
    except KeyAmbiguous as exc:
        listed = "; ".join(f"{k.kind} key created {k.created_at:%Y-%m-%d %H:%M:%S} UTC" for k in exc.candidates)
        raise ApiError(
            409,
            [
                {
                    "field": "prefix",
                    "reason": f"{len(exc.candidates)} live keys have the prefix "
                    f"{prefix!r} ({listed}): revoke the one you mean whole, with `journeys key revoke KEY`",
                }
            ],
        ) from None
    except KeyInUse as exc:
        raise ApiError(409, [{"field": "prefix", "reason": str(exc)}]) from None
    return json_response({"revoked": [k.as_json() for k in outcome.keys], "already_revoked": outcome.already})


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, [{"field": "body", "reason": f"at most {MAX_BODY_BYTES} bytes"}])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, [{"field": "body", "reason": 'must be a JSON object: {"kind": "write"}'}]) from None


def _kind(document: Any) -> KeyKind:
    if not isinstance(document, dict):
        raise ApiError(400, [{"field": "body", "reason": 'must be a JSON object: {"kind": "write"}'}])
    unknown = sorted(str(name) for name in document if name != "kind")
    if unknown:
        raise ApiError(400, [{"field": name, "reason": "unknown field (only `kind`)"} for name in unknown[:10]])
    kind = document.get("kind")
    if kind not in KEY_KINDS:
        raise ApiError(400, [{"field": "kind", "reason": f"required: one of {', '.join(KEY_KINDS)}"}])
    return cast(KeyKind, kind)
