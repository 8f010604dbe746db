"""Projects and API keys, stored in PostgreSQL.

A key is ``<kind prefix>_<43 url-safe chars>`` (32 random bytes). Only its SHA-256 is stored: the secret is
random, so a fast hash cannot be reversed by guessing, and the hash doubles as the lookup index. The prefix
tells a human (and a leaked-secret scanner) what a key is: ``jw_`` writes events, ``jr_`` reads them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import asyncpg

KeyKind = Literal["write", "read", "public", "admin"]
_PREFIX: dict[str, str] = {"write": "jw", "read": "jr", "public": "jp", "admin": "ja"}
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


class ProjectError(Exception):
    """A project could not be created or found; the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who a request's key belongs to, and what it may do."""

    project_id: str
    kind: str


@dataclass(frozen=True)
class NewProject:
    id: str
    name: str
    write_key: str
    read_key: str


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def new_secret(kind: KeyKind) -> str:
    return f"{_PREFIX[kind]}_{secrets.token_urlsafe(32)}"


async def create_project(conn: asyncpg.Connection, name: str) -> NewProject:
    """Create a project with one write key and one read key; the secrets are returned once, never stored."""
    if not _PROJECT_NAME.match(name):
        raise ProjectError("project name must be 1-64 letters, digits, space, '_', '.' or '-', starting alphanumeric")
    project_id = "p_" + secrets.token_hex(6)
    write_key, read_key = new_secret("write"), new_secret("read")
    async with conn.transaction():
        try:
            await conn.execute("INSERT INTO projects (id, name) VALUES ($1, $2)", project_id, name)
        except asyncpg.UniqueViolationError:
            raise ProjectError(f"a project named {name!r} already exists") from None
        for kind, secret in (("write", write_key), ("read", read_key)):
            await add_key(conn, project_id, kind, secret)  # type: ignore[arg-type]
    return NewProject(project_id, name, write_key, read_key)


async def find_project(conn: asyncpg.Connection, name_or_id: str) -> str | None:
    """A project's id, given its name or its id."""
    return await conn.fetchval("SELECT id FROM projects WHERE id = $1 OR name = $1", name_or_id)


async def add_key(conn: asyncpg.Connection, project_id: str, kind: KeyKind, secret: str | None = None) -> str:
    secret = secret or new_secret(kind)
    await conn.execute(
        "INSERT INTO api_keys (project_id, kind, prefix, key_hash) VALUES ($1, $2, $3, $4)",
        project_id,
        kind,
        secret[:6],
        hash_key(secret),
    )
    return secret


async def revoke_key(conn: asyncpg.Connection, secret: str) -> None:
    await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1", hash_key(secret))


class KeyResolver:
    """Resolve a presented secret to a :class:`Principal`, caching answers (good and bad) briefly.

    The cache keeps PostgreSQL off the hot ingest path: one lookup per key per ``ttl`` seconds. A revoked
    key therefore stops working within ``ttl``.
    """

    def __init__(self, pool: asyncpg.Pool, ttl: float = 30.0, max_entries: int = 100_000):
        self._pool = pool
        self._ttl = ttl
        self._max = max_entries
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def resolve(self, secret: str) -> Principal | None:
        if not secret or len(secret) > 200:
            return None
        digest = hash_key(secret)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await self._pool.fetchrow(
            "SELECT project_id, kind, key_hash FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest
        )
        # The index lookup already matched; compare again in constant time so no code path leaks timing.
        principal = (
            Principal(row["project_id"], row["kind"])
            if row is not None and hmac.compare_digest(bytes(row["key_hash"]), digest)
            else None
        )
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, principal)
        return principal
