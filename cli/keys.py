"""``journeys key create|list|revoke`` (docs/keys.md).

``key create`` prints a new key once. Keys are listed by their prefix (the kind and 3 characters: all that
is stored in clear), never their secret. ``key revoke`` takes the whole key (a leaked one, as found) or a
prefix that matches exactly one key not yet revoked; an ambiguous prefix lists the candidates and changes
nothing. PostgreSQL only: works beside a running ``journeys up``, whose services stop accepting a revoked
key within ``JOURNEYS_KEY_CACHE_TTL_S``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from cli.commands import Commands
from cli.context import open_postgres, open_project
from cli.tables import table, when
from journeys.config import Settings


def add_commands(commands: Commands) -> None:
    key = commands.group("key", help="manage API keys", dest="key_command")
    create = key.add("create", run, help="make another key for a project and print it (once)")
    create.add_argument("--project", required=True, help="project name or id")
    create.add_argument(
        "--kind",
        required=True,
        choices=["write", "read", "admin", "public"],
        help="admin keys may change maps and segments over the API",
    )

    keys = key.add("list", run, help="a project's keys by prefix (never the secret): kind, created, last used, revoked")
    keys.add_argument("--project", required=True, help="project name or id")
    keys.add_argument("--active", action="store_true", help="only keys that are not revoked")
    keys.add_argument("--json", action="store_true", help="print the keys as JSON")

    revoke = key.add(
        "revoke",
        run,
        help="revoke a key, given whole or by a prefix that matches one key (services stop accepting "
        "it within JOURNEYS_KEY_CACHE_TTL_S)",
    )
    revoke.add_argument("key", metavar="KEY_OR_PREFIX", help="the whole key, or its prefix as `key list` shows it")
    revoke.add_argument("--project", help="only look in this project (name or id)")
    revoke.add_argument("--json", action="store_true", help="print the revoked key as JSON")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.key_command == "create":
        return await _create(settings, args.project, args.kind)
    if args.key_command == "list":
        return await _list(settings, args)
    return await _revoke(settings, args)


async def _create(settings: Settings, project_name: str, kind: str) -> int:
    from journeys.keys import add_key

    async with open_project(settings, project_name) as project:
        print(await add_key(project.conn, project.id, kind))  # type: ignore[arg-type]
        if kind == "public":
            print(
                f"A public key writes only from the project's origins: journeys project origins {project_name} --add https://…",
                file=sys.stderr,
            )
    return 0


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    from journeys.keys import list_keys

    async with open_project(settings, args.project) as project:
        keys = await list_keys(project.conn, project.id)
    if args.active:
        keys = [k for k in keys if not k.revoked]
    if args.json:
        print(orjson.dumps({"project": project.id, "keys": [k.as_json() for k in keys]}).decode())
    elif not keys:
        print(
            f"no {'active ' if args.active else ''}keys in {args.project} (journeys key create makes one)",
            file=sys.stderr,
        )
    else:
        print(
            table(
                ["PREFIX", "KIND", "CREATED (UTC)", "LAST USED", "REVOKED"],
                [
                    [k.prefix, k.kind, when(k.created_at), when(k.last_used_at, "never"), when(k.revoked_at, "no")]
                    for k in keys
                ],
            )
        )
    return 0


async def _revoke(settings: Settings, args: argparse.Namespace) -> int:
    from journeys.keys import KeyAmbiguous, KeyNotFound, Revoked, revoke

    async def revoked(conn: Any, project_id: str | None) -> Revoked | KeyAmbiguous | KeyNotFound:
        try:
            return await revoke(conn, args.key, project_id)
        except (KeyAmbiguous, KeyNotFound) as exc:
            return exc

    if args.project:
        async with open_project(settings, args.project) as project:
            outcome = await revoked(project.conn, project.id)
    else:
        async with open_postgres(settings) as conn:
            outcome = await revoked(conn, None)
    if isinstance(outcome, KeyNotFound):
        print(f"error: {outcome}", file=sys.stderr)
        return 1
    if isinstance(outcome, KeyAmbiguous):
        if args.json:
            print(
                orjson.dumps(
                    {"error": str(outcome), "candidates": [_with_project_name(k) for k in outcome.candidates]}
                ).decode()
            )
        print(f"error: {outcome}; nothing was revoked. Candidates:", file=sys.stderr)
        for key in outcome.candidates:
            print(f"  {key.describe()}", file=sys.stderr)
        return 1
    ttl = settings.key_cache_ttl_s
    if args.json:
        print(
            orjson.dumps(
                {"revoked": [_with_project_name(k) for k in outcome.keys], "already_revoked": outcome.already}
            ).decode()
        )
    elif outcome.already:
        for key in outcome.keys:
            print(f"already revoked: {key.describe()}")
    else:
        (key,) = outcome.keys
        print(f"revoked {key.describe()}")
        print(
            f"Services stop accepting it within the key cache's {ttl:g} s (JOURNEYS_KEY_CACHE_TTL_S).", file=sys.stderr
        )
    return 0


def _with_project_name(key: Any) -> dict[str, Any]:
    return {**key.as_json(), "project": key.project_id, "project_name": key.project_name}
