"""``journeys project origins NAME [--add ORIGIN]… [--remove ORIGIN]… [--json]``: the web origins a
project's public keys may send events from (collector/origins.py, docs/tracker.md).

Prints the list after the change. Every origin given is checked before anything is changed, so a typo in
one leaves the list as it was. PostgreSQL only: works beside a running ``journeys up``, whose collectors
pick the change up within ``JOURNEYS_KEY_CACHE_TTL_S`` seconds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from journeys.config import Settings

WithProject = Callable[[Settings, str, Callable[..., Awaitable[Any]]], Awaitable[Any]]


def add_origins_command(project_commands: Any) -> None:
    """Add ``project origins`` to the ``project`` subcommands."""
    origins = project_commands.add_parser(
        "origins", help="list, add or remove the web origins the project's public (browser) keys may send from"
    )
    origins.add_argument("name", help="project name or id")
    origins.add_argument(
        "--add", action="append", default=[], metavar="ORIGIN", help="e.g. https://shop.example (repeatable)"
    )
    origins.add_argument("--remove", action="append", default=[], metavar="ORIGIN", help="repeatable")
    origins.add_argument("--json", action="store_true", help="print the project id and its origins as JSON")


async def run_origins_command(settings: Settings, args: argparse.Namespace, with_project: WithProject) -> int:
    from collector.origins import OriginError, change_origins, normalize_origin

    add: list[str] = []
    remove: list[str] = []
    problems = []
    for target, given in ((add, args.add), (remove, args.remove)):
        for text in given:
            try:
                target.append(normalize_origin(text))
            except OriginError as exc:
                problems.append(f"{text!r}: {exc}")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2

    async def work(conn, project_id):
        return project_id, await change_origins(conn, project_id, add, remove)

    project_id, origins = await with_project(settings, args.name, work)
    if args.json:
        print(orjson.dumps({"project": project_id, "origins": origins}).decode())
    elif origins:
        print("\n".join(origins))
    else:
        print(f"no origins: the public keys of {args.name} cannot send events from any web page", file=sys.stderr)
    return 0
