"""Web origins a project's public (browser) keys may send events from, stored in PostgreSQL.

A public key (``jp_…``) is written into web pages, so anyone can copy it. What stops another site from
sending events in your name is the browser: it stamps every cross-origin request with an ``Origin`` header
that page scripts cannot forge, and the collector accepts a public key's events only from the origins its
project lists here (collector/cors.py). Scripts outside a browser can of course send any ``Origin``; the
per-client rate limit (collector/ratelimit.py) is what bounds them.

Origins are kept in the exact form browsers send: ``scheme://host[:port]``, lower case, no default port,
no path. :func:`normalize_origin` turns what an operator types into that form, or says why it cannot.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import asyncpg

from journeys.errors import JourneysError

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_IPV6 = re.compile(r"^[0-9a-f:.]+$")
MAX_ORIGIN_CHARS = 300


class OriginError(JourneysError, ValueError):
    """Text that is not a web origin; the message says why."""


def normalize_origin(text: str) -> str:
    """``text`` as a browser would send it in ``Origin``, e.g. ``HTTPS://Shop.Example:443/`` →
    ``https://shop.example``. Refuses ``null`` (sandboxed frames, ``file:`` pages: any site can produce
    it) and wildcards: each origin is listed on its own."""
    value = text.strip()
    if not value or len(value) > MAX_ORIGIN_CHARS:
        raise OriginError(f"must be 1-{MAX_ORIGIN_CHARS} characters, like https://shop.example")
    if value.lower() == "null":
        raise OriginError("'null' is the origin of sandboxed frames and local files: any page can claim it")
    if "*" in value:
        raise OriginError(
            "wildcards are not supported: list each origin (e.g. https://example.com and https://www.example.com)"
        )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise OriginError(f"not a URL origin: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise OriginError("must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise OriginError("must not contain a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise OriginError("an origin is scheme://host[:port] only: no path, query or fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise OriginError("missing host, e.g. https://shop.example")
    if ":" in host:  # IPv6 literal; urlsplit removed the brackets
        if not _IPV6.match(host):
            raise OriginError(f"invalid IPv6 address {host!r}")
        host = f"[{host}]"
    else:
        try:
            host = host.encode("idna").decode("ascii")  # browsers send internationalized names as punycode
        except UnicodeError:
            raise OriginError(f"invalid host name {host!r}") from None
        if not _HOST.match(host):
            raise OriginError(f"invalid host name {host!r}")
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


async def list_origins(conn: asyncpg.Connection, project_id: str) -> list[str]:
    rows = await conn.fetch("SELECT origin FROM project_origins WHERE project_id = $1 ORDER BY origin", project_id)
    return [r["origin"] for r in rows]


async def change_origins(
    conn: asyncpg.Connection, project_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> list[str]:
    """Add and remove origins (already normalized) in one transaction; return the project's list after."""
    async with conn.transaction():
        if remove:
            await conn.execute(
                "DELETE FROM project_origins WHERE project_id = $1 AND origin = ANY($2::text[])",
                project_id,
                list(remove),
            )
        if add:
            await conn.execute(
                "INSERT INTO project_origins (project_id, origin) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
                project_id,
                list(add),
            )
        return await list_origins(conn, project_id)


class OriginTable:
    """Every project's allowed origins, held in memory and reloaded every ``ttl`` seconds.

    The whole table is loaded at once (it is small: a few origins per project) rather than looked up per
    origin: a flood of requests from random origins then costs a set lookup each, never a query. A change
    made with ``journeys project origins`` takes effect within ``ttl``, like a revoked key.
    """

    def __init__(self, pool: asyncpg.Pool, ttl: float = 30.0):
        self._pool = pool
        self._ttl = ttl
        self._by_project: dict[str, frozenset[str]] = {}
        self._any: frozenset[str] = frozenset()
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def allowed(self, project_id: str) -> frozenset[str]:
        """The origins ``project_id``'s public keys may send from."""
        await self._fresh()
        return self._by_project.get(project_id, frozenset())

    async def known(self, origin: str) -> bool:
        """Whether any project allows ``origin`` (what a preflight, which carries no key, can check)."""
        await self._fresh()
        return origin in self._any

    def invalidate(self) -> None:
        self._expires = 0.0

    async def _fresh(self) -> None:
        if time.monotonic() < self._expires:
            return
        async with self._lock:  # one reload at a time; the others wait for it instead of querying too
            if time.monotonic() < self._expires:
                return
            rows = await self._pool.fetch("SELECT project_id, origin FROM project_origins")
            by_project: dict[str, set[str]] = {}
            for row in rows:
                by_project.setdefault(row["project_id"], set()).add(row["origin"])
            self._by_project = {p: frozenset(o) for p, o in by_project.items()}
            self._any = frozenset(o for origins in by_project.values() for o in origins)
            self._expires = time.monotonic() + self._ttl
