"""Versioned storage of journey maps and segments in PostgreSQL (``kubectl apply`` semantics).

Applying a document validates it, then either creates version 1, adds version N+1 when it differs from
the latest, or reports "unchanged". The diff an author sees is a unified diff of the normalized YAML.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import yaml

from query.alert_rules import check_against, validate_alert_rule
from query.maps import validate_map, validate_segment

Kind = Literal["map", "segment", "alert"]
_VALIDATORS = {"map": validate_map, "segment": validate_segment, "alert": validate_alert_rule}


@dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    version: int
    previous_version: int | None
    changed: bool
    diff: str


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    created_at: datetime
    body: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "definition": self.body,
        }


def normalize(kind: Kind, document: Any) -> dict[str, Any]:
    """Validate (raising :class:`~query.maps.DefinitionError`) and return the stored form."""
    return _VALIDATORS[kind](document).model_dump(mode="json")


def to_yaml(kind: Kind, body: dict[str, Any]) -> str:
    """The document as an author would write it: schema order (jsonb does not keep key order), defaults
    left out. Storage keeps the full normalized form, so a later change of a default cannot change what
    an old version meant."""
    shown = _VALIDATORS[kind](body).model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)


def _diff(
    kind: Kind, name: str, old: dict[str, Any] | None, new: dict[str, Any], old_version: int | None, new_version: int
) -> str:
    before = to_yaml(kind, old).splitlines(keepends=True) if old is not None else []
    after = to_yaml(kind, new).splitlines(keepends=True)
    return "".join(
        difflib.unified_diff(
            before,
            after,
            fromfile=f"{name}@{old_version}" if old_version else "/dev/null",
            tofile=f"{name}@{new_version}",
        )
    )


def _body(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


async def apply(conn: asyncpg.Connection, project_id: str, kind: Kind, document: Any) -> Applied:
    body = normalize(kind, document)
    name = body["name"]
    async with conn.transaction():
        # Serialize appliers of the same document so two concurrent applies cannot both take version N+1.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{project_id}/{kind}/{name}")
        latest = await conn.fetchrow(
            "SELECT version, body FROM definitions WHERE project_id = $1 AND kind = $2 AND name = $3 "
            "ORDER BY version DESC LIMIT 1",
            project_id,
            kind,
            name,
        )
        previous = latest["version"] if latest else None
        old_body = _body(latest["body"]) if latest else None
        if old_body == body:
            return Applied(kind, name, previous, previous, False, "")  # type: ignore[arg-type]
        version = (previous or 0) + 1
        await conn.execute(
            "INSERT INTO definitions (project_id, kind, name, version, body) VALUES ($1, $2, $3, $4, $5::jsonb)",
            project_id,
            kind,
            name,
            version,
            json.dumps(body),
        )
    return Applied(kind, name, version, previous, True, _diff(kind, name, old_body, body, previous, version))


async def get(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, kind: Kind, name: str, version: int | None = None
) -> Version | None:
    """The latest version, or the one asked for; ``None`` if there is no such document or version."""
    row = await conn.fetchrow(
        "SELECT name, version, created_at, body FROM definitions WHERE project_id = $1 AND kind = $2 AND name = $3 "
        "AND ($4::int IS NULL OR version = $4) ORDER BY version DESC LIMIT 1",
        project_id,
        kind,
        name,
        version,
    )
    return Version(row["name"], row["version"], row["created_at"], _body(row["body"])) if row else None


async def versions(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, kind: Kind, name: str
) -> list[tuple[int, datetime]]:
    """``(version, created_at)`` of every version, oldest first (bodies stay in the database)."""
    rows = await conn.fetch(
        "SELECT version, created_at FROM definitions WHERE project_id = $1 AND kind = $2 AND name = $3 "
        "ORDER BY version",
        project_id,
        kind,
        name,
    )
    return [(r["version"], r["created_at"]) for r in rows]


async def these_versions(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, wanted: list[tuple[Kind, str, int]]
) -> dict[tuple[str, str, int], Version]:
    """The named versions, keyed by ``(kind, name, version)``, in one round trip (missing ones left out)."""
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT d.kind, d.name, d.version, d.created_at, d.body FROM definitions d "
        "JOIN unnest($2::text[], $3::text[], $4::int[]) AS w(kind, name, version) "
        "ON d.kind = w.kind AND d.name = w.name AND d.version = w.version "
        "WHERE d.project_id = $1",
        project_id,
        [kind for kind, _, _ in wanted],
        [name for _, name, _ in wanted],
        [version for _, _, version in wanted],
    )
    return {
        (r["kind"], r["name"], r["version"]): Version(r["name"], r["version"], r["created_at"], _body(r["body"]))
        for r in rows
    }


async def latest_of_each(conn: asyncpg.Connection | asyncpg.Pool, project_id: str, kind: Kind) -> list[Version]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (name) name, version, created_at, body FROM definitions "
        "WHERE project_id = $1 AND kind = $2 ORDER BY name, version DESC",
        project_id,
        kind,
    )
    return [Version(r["name"], r["version"], r["created_at"], _body(r["body"])) for r in rows]


async def apply_alert_rule(conn: asyncpg.Connection, project_id: str, document: Any) -> Applied:
    """Apply an alert rule, refusing (:class:`~query.maps.DefinitionError`) one that names a map, stage,
    target or segment the project does not have now: a rule that could never fire is a silent one."""
    rule = validate_alert_rule(document)
    maps = {v.name: validate_map(v.body) for v in await latest_of_each(conn, project_id, "map")}
    segments = {v.name: validate_segment(v.body) for v in await latest_of_each(conn, project_id, "segment")}
    check_against(rule, maps, segments)
    return await apply(conn, project_id, "alert", document)
