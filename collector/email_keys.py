"""Per-project email signing keys in PostgreSQL: create, rotate, and look up (cached) for verification.

A key is ``je_<43 url-safe chars>`` (32 random bytes); the HMAC key is its UTF-8 text. See
``0004_email_signing.sql`` for why it is stored in clear and how rotation keeps old links working.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

DEFAULT_GRACE = timedelta(days=30)


def new_signing_key() -> str:
    return f"je_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class SigningKey:
    secret: str
    created_at: datetime
    retires_at: datetime | None  # None: the current key


async def current_key(conn: asyncpg.Connection, project_id: str) -> str:
    """The key new links are signed with, created on first use.

    ``ON CONFLICT`` on the one-current-key index makes two first uses at once agree on one key."""
    await conn.execute(
        "INSERT INTO email_signing_keys (project_id, secret) VALUES ($1, $2) "
        "ON CONFLICT (project_id) WHERE retires_at IS NULL DO NOTHING",
        project_id,
        new_signing_key(),
    )
    return await conn.fetchval(
        "SELECT secret FROM email_signing_keys WHERE project_id = $1 AND retires_at IS NULL", project_id
    )


async def rotate_key(conn: asyncpg.Connection, project_id: str, grace: timedelta = DEFAULT_GRACE) -> str:
    """Make a new current key; the old one keeps verifying for ``grace`` (zero: it stops at once)."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE email_signing_keys SET retires_at = now() + $2 WHERE project_id = $1 AND retires_at IS NULL",
            project_id,
            grace,
        )
        secret = new_signing_key()
        await conn.execute("INSERT INTO email_signing_keys (project_id, secret) VALUES ($1, $2)", project_id, secret)
    return secret


async def list_keys(conn: asyncpg.Connection, project_id: str) -> list[SigningKey]:
    """Keys that still verify, current first."""
    rows = await conn.fetch(
        "SELECT secret, created_at, retires_at FROM email_signing_keys "
        "WHERE project_id = $1 AND (retires_at IS NULL OR retires_at > now()) "
        "ORDER BY retires_at IS NOT NULL, created_at DESC",
        project_id,
    )
    return [SigningKey(r["secret"], r["created_at"], r["retires_at"]) for r in rows]


class SigningKeyResolver:
    """The keys that verify a project's tokens, cached so PostgreSQL stays off the pixel's hot path.

    Like :class:`journeys.keys.KeyResolver` a retired key stops verifying within ``ttl``. The other way
    round must be faster: a key made by ``journeys email key`` (first use, or a rotation) signs links that
    may be clicked seconds later, so a signature that fails against cached keys re-reads the project's
    keys once the entry is ``refresh_after`` seconds old. That bounds what a flood of forged tokens can
    cost PostgreSQL to one query per project per ``refresh_after``.
    """

    def __init__(self, pool: asyncpg.Pool, ttl: float = 30.0, refresh_after: float = 1.0, max_entries: int = 100_000):
        self._pool = pool
        self._ttl = ttl
        self._refresh_after = refresh_after
        self._max = max_entries
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}  # project → (fetched at, keys)

    async def keys(self, project_id: str) -> tuple[str, ...]:
        hit = self._cache.get(project_id)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        return await self._fetch(project_id)

    async def fresher_keys(self, project_id: str) -> tuple[str, ...] | None:
        """Re-read the keys after a failed signature, if the cached ones are old enough to be stale;
        ``None`` when they were read too recently to be worth asking again."""
        hit = self._cache.get(project_id)
        if hit is not None and time.monotonic() - hit[0] < self._refresh_after:
            return None
        return await self._fetch(project_id)

    async def _fetch(self, project_id: str) -> tuple[str, ...]:
        rows = await self._pool.fetch(
            "SELECT secret FROM email_signing_keys WHERE project_id = $1 AND (retires_at IS NULL OR retires_at > now())",
            project_id,
        )
        keys = tuple(r["secret"] for r in rows)
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[project_id] = (time.monotonic(), keys)
        return keys
