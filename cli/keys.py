"""``journeys project list``, ``journeys key list --project P`` and ``journeys key revoke KEY_OR_PREFIX``
(docs/keys.md), each with ``--json``.

Keys are shown by their prefix (the kind and 3 characters: all that is stored in clear), never their
secret. ``key revoke`` takes the whole key (a leaked one, as found) or a prefix that matches exactly one key
not yet revoked; an ambiguous prefix lists the candidates and changes nothing. PostgreSQL only: works beside
a running ``journeys up``, whose services stop accepting a revoked key within ``JOURNEYS_KEY_CACHE_TTL_S``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson

from journeys.config import Settings

WithPostgres = Callable[[Settings, Callable[..., Awaitable[Any]]], Awaitable[Any]]
WithProject = Callable[[Settings, str, Callable[..., Awaitable[Any]]], Awaitable[Any]]


def add_key_commands(project_commands: Any, key_commands: Any) -> None:
    """Add ``project list`` to the ``project`` subcommands and ``list``/``revoke`` to the ``key`` ones."""
    listing = project_commands.add_parser("list", help="every project: name, id, created, active keys")
    listing.add_argument("--json", action="store_true", help="print the projects as JSON")

    keys = key_commands.add_parser(
        "list", help="a project's keys by prefix (never the secret): kind, created, last used, revoked"
    )
    keys.add_argument("--project", required=True, help="project name or id")
    keys.add_argument("--active", action="store_true", help="only keys that are not revoked")
    keys.add_argument("--json", action="store_true", help="print the keys as JSON")

    revoke = key_commands.add_parser(
        "revoke",
        help="revoke a key, given whole or by a prefix that matches one key (services stop accepting "
        "it within JOURNEYS_KEY_CACHE_TTL_S)",
    )
    revoke.add_argument("key", metavar="KEY_OR_PREFIX", help="the whole key, or its prefix as `key list` shows it")
    revoke.add_argument("--project", help="only look in this project (name or id)")
    revoke.add_argument("--json", action="store_true", help="print the revoked key as JSON")


def handles(args: argparse.Namespace) -> bool:
    """Whether ``args`` are one of this module's commands."""
    if args.command == "project":
        return bool(args.project_command == "list")
    return bool(args.command == "key" and args.key_command in ("list", "revoke"))


async def run_keys_command(
    settings: Settings, args: argparse.Namespace, with_postgres: WithPostgres, with_project: WithProject
) -> int:
    if args.command == "project":
        return await _project_list(settings, args, with_postgres)
    if args.key_command == "list":
        return await _key_list(settings, args, with_project)
    return await _key_revoke(settings, args, with_postgres, with_project)


def _when(at: datetime | None, none: str = "-") -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at is not None else none


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])


async def _project_list(settings: Settings, args: argparse.Namespace, with_postgres: WithPostgres) -> int:
    from journeys.keys import list_projects

    projects = await with_postgres(settings, list_projects)
    if args.json:
        print(orjson.dumps({"projects": [p.as_json() for p in projects]}).decode())
    elif not projects:
        print("no projects yet: journeys project create NAME makes one", file=sys.stderr)
    else:
        print(
            _table(
                ["NAME", "ID", "CREATED (UTC)", "ACTIVE KEYS"],
                [[p.name, p.id, _when(p.created_at), str(p.active_keys)] for p in projects],
            )
        )
    return 0


async def _key_list(settings: Settings, args: argparse.Namespace, with_project: WithProject) -> int:
    from journeys.keys import list_keys

    async def work(conn, project_id):
        return project_id, await list_keys(conn, project_id)

    project_id, keys = await with_project(settings, args.project, work)
    if args.active:
        keys = [k for k in keys if not k.revoked]
    if args.json:
        print(orjson.dumps({"project": project_id, "keys": [k.as_json() for k in keys]}).decode())
    elif not keys:
        print(
            f"no {'active ' if args.active else ''}keys in {args.project} (journeys key create makes one)",
            file=sys.stderr,
        )
    else:
        print(
            _table(
                ["PREFIX", "KIND", "CREATED (UTC)", "LAST USED", "REVOKED"],
                [
                    [k.prefix, k.kind, _when(k.created_at), _when(k.last_used_at, "never"), _when(k.revoked_at, "no")]
                    for k in keys
                ],
            )
        )
    return 0


async def _key_revoke(
    settings: Settings, args: argparse.Namespace, with_postgres: WithPostgres, with_project: WithProject
) -> int:
    from journeys.keys import KeyAmbiguous, KeyNotFound, revoke

    async def work(conn, project_id=None):
        try:
            return await revoke(conn, args.key, project_id)
        except KeyAmbiguous as exc:
            return exc
        except KeyNotFound as exc:
            return exc

    if args.project:
        outcome = await with_project(settings, args.project, work)
    else:
        outcome = await with_postgres(settings, work)
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
