"""Projects and API keys, stored in PostgreSQL.

A key is ``<kind prefix>_<43 url-safe chars>`` (32 random bytes). Only its SHA-256 is stored: the secret is
random, so a fast hash cannot be reversed by guessing, and the hash doubles as the lookup index. The prefix
tells a human (and a leaked-secret scanner) what a key is: ``jw_`` writes events, ``jr_`` reads them.

Kept in clear: the first :data:`PREFIX_CHARS` characters (the kind and 3 random characters, 18 of the 256
bits), so people can tell keys apart in ``journeys key list`` and revoke one by it; when each key was
created, last used (to within a minute, see :class:`KeyResolver`) and revoked. docs/keys.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import asyncpg

from journeys.errors import JourneysError

KeyKind = Literal["write", "read", "public", "admin"]
_PREFIX: dict[str, str] = {"write": "jw", "read": "jr", "public": "jp", "admin": "ja"}
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
KEY_KINDS: tuple[KeyKind, ...] = ("write", "read", "public", "admin")
PREFIX_CHARS = 6  # what api_keys.prefix keeps of a key: "jw_" and 3 random characters
_WHOLE_KEY = re.compile(r"^j[wrpa]_[A-Za-z0-9_-]{43}$")
# last_used_at is written at most this often per key (and only when a lookup missed the cache).
LAST_USED_EVERY_S = 60


class ProjectError(JourneysError):
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


# ---------------------------------------------------------------------------------------------------------
# listing and revoking (journeys key list / revoke, journeys project list, /v1/keys): docs/keys.md
# ---------------------------------------------------------------------------------------------------------


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ProjectInfo:
    id: str
    name: str
    created_at: datetime
    active_keys: int

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": _iso(self.created_at), "active_keys": self.active_keys}


@dataclass(frozen=True)
class KeyInfo:
    """A key as people see it: never its secret (nor its hash, which is kept out of every answer)."""

    project_id: str
    project_name: str
    kind: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    id: int = field(repr=False)
    key_hash: bytes = field(repr=False)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "kind": self.kind,
            "created_at": _iso(self.created_at),
            "last_used_at": _iso(self.last_used_at),
            "revoked": self.revoked,
            "revoked_at": _iso(self.revoked_at),
        }

    def describe(self) -> str:
        """One line naming the key for a person (its prefix, kind, project and dates)."""
        used = f"last used {self.last_used_at:%Y-%m-%d %H:%M} UTC" if self.last_used_at else "never used"
        revoked = f", revoked {self.revoked_at:%Y-%m-%d %H:%M} UTC" if self.revoked_at else ""
        return (
            f"{self.prefix}  {self.kind} key of {self.project_name}, created {self.created_at:%Y-%m-%d %H:%M} UTC, "
            f"{used}{revoked}"
        )


class KeyNotFound(ProjectError):
    """No key matches what was given."""


class KeyAmbiguous(ProjectError):
    """A prefix matches more than one key that could be revoked; ``candidates`` lists them."""

    def __init__(self, message: str, candidates: list[KeyInfo]):
        super().__init__(message)
        self.candidates = candidates


class KeyInUse(ProjectError):
    """The key to revoke is the one making the request (the admin API refuses that)."""


@dataclass(frozen=True)
class Revoked:
    """What ``revoke`` did: ``keys`` (one, or every match when all were already revoked), and whether they
    were revoked already (then nothing changed)."""

    keys: list[KeyInfo]
    already: bool


_KEY_COLUMNS = """k.id, k.project_id, p.name AS project_name, k.kind, k.prefix, k.key_hash, k.created_at,
                  k.last_used_at, k.revoked_at"""


def _key_info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        row["project_id"],
        row["project_name"],
        row["kind"],
        row["prefix"],
        row["created_at"],
        row["last_used_at"],
        row["revoked_at"],
        row["id"],
        bytes(row["key_hash"]),
    )


async def list_projects(conn: asyncpg.Connection) -> list[ProjectInfo]:
    rows = await conn.fetch(
        """SELECT p.id, p.name, p.created_at, count(k.id) FILTER (WHERE k.revoked_at IS NULL) AS active_keys
           FROM projects p LEFT JOIN api_keys k ON k.project_id = p.id
           GROUP BY p.id, p.name, p.created_at
           ORDER BY p.created_at, p.name"""
    )
    return [ProjectInfo(r["id"], r["name"], r["created_at"], r["active_keys"]) for r in rows]


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool, project_id: str) -> list[KeyInfo]:
    """Every key of the project, revoked ones too, oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id
            WHERE k.project_id = $1 ORDER BY k.created_at, k.id""",
        project_id,
    )
    return [_key_info(r) for r in rows]


async def create_key(conn: asyncpg.Connection | asyncpg.Pool, project_id: str, kind: KeyKind) -> tuple[str, KeyInfo]:
    """A new key of ``kind``: its secret (to hand out once, never stored) and how it is listed."""
    secret = new_secret(kind)
    row = await conn.fetchrow(
        f"""WITH k AS (INSERT INTO api_keys (project_id, kind, prefix, key_hash) VALUES ($1, $2, $3, $4) RETURNING *)
            SELECT {_KEY_COLUMNS} FROM k JOIN projects p ON p.id = k.project_id""",
        project_id,
        kind,
        secret[:PREFIX_CHARS],
        hash_key(secret),
    )
    assert row is not None
    return secret, _key_info(row)


def is_whole_key(text: str) -> bool:
    return bool(_WHOLE_KEY.match(text))


async def revoke(
    conn: asyncpg.Connection | asyncpg.Pool,
    key_or_prefix: str,
    project_id: str | None = None,
    *,
    exact_prefix: bool = False,
    not_hash: bytes | None = None,
) -> Revoked:
    """Revoke one key: given whole (matched by its hash) or by a prefix that matches exactly one key not
    yet revoked (of ``project_id``, or of any project). ``exact_prefix``: the prefix must be the whole stored
    one (as listed). ``not_hash``: refuse to revoke that key (the one making the request).

    Raises :class:`KeyNotFound`, :class:`KeyAmbiguous` (with the candidates) or :class:`KeyInUse`. Keys that
    match but are all revoked already come back with ``already=True``. Services stop accepting a revoked key
    within the key-cache TTL (``JOURNEYS_KEY_CACHE_TTL_S``)."""
    text = key_or_prefix.strip()
    where = "" if project_id is None else " in this project"
    scope = "" if project_id is None else " AND k.project_id = $2"
    args: list[Any] = [] if project_id is None else [project_id]
    if is_whole_key(text):
        rows = await conn.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.key_hash = $1{scope}",
            hash_key(text),
            *args,
        )
        what = f"no such key{where} (it may belong to another data directory or database)"
    elif not text or len(text) > PREFIX_CHARS or "\x00" in text:
        raise KeyNotFound(
            f"give the whole key, or its prefix as `journeys key list` shows it (at most {PREFIX_CHARS} characters, "
            "e.g. jw_AbC): only that much of a key is stored in clear"
        )
    else:
        match = "k.prefix = $1" if exact_prefix else "starts_with(k.prefix, $1)"
        rows = await conn.fetch(
            f"""SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id
                WHERE {match}{scope} ORDER BY k.created_at, k.id""",
            text,
            *args,
        )
        what = f"no key{where} starts with {text!r}"
    if not rows:
        raise KeyNotFound(what)
    found = [_key_info(r) for r in rows]
    active = [k for k in found if not k.revoked]
    if not active:
        return Revoked(found, already=True)
    if len(active) > 1:
        raise KeyAmbiguous(
            f"{text!r} matches {len(active)} keys that are not revoked; give more of it, or the whole key", active
        )
    key = active[0]
    if not_hash is not None and hmac.compare_digest(key.key_hash, not_hash):
        raise KeyInUse(f"{key.prefix} is the key making this request: revoke it with another admin key")
    revoked_at = await conn.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING revoked_at", key.id
    )
    if revoked_at is None:  # revoked by someone else meanwhile
        row = await conn.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.id = $1", key.id
        )
        assert row is not None
        return Revoked([_key_info(row)], already=True)
    return Revoked([replace(key, revoked_at=revoked_at)], already=False)


# The lookup also records when the key was last used: in the same statement, and only when the stored time
# is over LAST_USED_EVERY_S old (checked again on the row itself, so lookups racing at the minute write
# once). A lookup that finds nothing to update writes nothing. $1 is the key's SHA-256, nothing else.
_RESOLVE_SQL = f"""
WITH found AS (
    SELECT id, project_id, kind, key_hash, last_used_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL
), touched AS (
    UPDATE api_keys SET last_used_at = now()
    FROM found
    WHERE api_keys.id = found.id
      AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < now() - interval '{LAST_USED_EVERY_S} seconds')
    RETURNING api_keys.id
)
SELECT project_id, kind, key_hash FROM found
"""


class KeyResolver:
    """Resolve a presented secret to a :class:`Principal`, caching answers (good and bad) briefly.

    The cache keeps PostgreSQL off the hot ingest path: one lookup per key per ``ttl`` seconds. A revoked
    key therefore stops working within ``ttl``. A lookup (a cache miss) also records when the key was last
    used, at most once a minute per key (``_RESOLVE_SQL``): never a write per request, even with ``ttl=0``.
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
        row = await self._pool.fetchrow(_RESOLVE_SQL, digest)
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
