"""``journeys project create|list|origins``: projects, and where their public keys may send from.

``project create NAME`` prints the new project's write and read keys, once (as text, ``--json`` or
``--env`` shell lines). ``project list`` shows every project with its count of active keys.
``project origins NAME [--add ORIGIN]… [--remove ORIGIN]… [--json]`` changes the web origins a project's
public keys may send events from (collector/origins.py, docs/tracker.md) and prints the list after the
change. Every origin given is checked before anything is changed, so a typo in one leaves the list as it
was. PostgreSQL only: works beside a running ``journeys up``, whose collectors pick an origin change up
within ``JOURNEYS_KEY_CACHE_TTL_S`` seconds.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from cli.commands import Commands
from cli.context import open_postgres, open_project
from cli.tables import table, when
from journeys.config import Settings


def add_commands(commands: Commands) -> None:
    project = commands.group("project", help="manage projects", dest="project_command")
    create = project.add("create", run, help="create a project and print its write and read keys")
    create.add_argument("name")
    shown = create.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print the project and keys as JSON")
    shown.add_argument(
        "--env",
        action="store_true",
        help='print shell lines setting WRITE_KEY and READ_KEY: eval "$(journeys project create NAME --env)"',
    )

    origins = project.add(
        "origins", run, help="list, add or remove the web origins the project's public (browser) keys may send from"
    )
    origins.add_argument("name", help="project name or id")
    origins.add_argument(
        "--add", action="append", default=[], metavar="ORIGIN", help="e.g. https://shop.example (repeatable)"
    )
    origins.add_argument("--remove", action="append", default=[], metavar="ORIGIN", help="repeatable")
    origins.add_argument("--json", action="store_true", help="print the project id and its origins as JSON")

    listing = project.add("list", run, help="every project: name, id, created, active keys")
    listing.add_argument("--json", action="store_true", help="print the projects as JSON")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.project_command == "create":
        return await _create(settings, args.name, args.json, args.env)
    if args.project_command == "origins":
        return await _origins(settings, args)
    return await _list(settings, args)


async def _create(settings: Settings, name: str, as_json: bool, as_env: bool) -> int:
    from journeys.keys import ProjectError, create_project

    async with open_postgres(settings) as conn:
        try:
            project = await create_project(conn, name)
        except ProjectError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if as_json:
        print(
            orjson.dumps(
                {"id": project.id, "name": project.name, "write_key": project.write_key, "read_key": project.read_key}
            ).decode()
        )
    elif as_env:
        # Keys are [A-Za-z0-9_-] only: nothing in them needs quoting for a shell.
        print(f"export WRITE_KEY={project.write_key}")
        print(f"export READ_KEY={project.read_key}")
        print(
            f"# project {project.name} ({project.id}); keys are stored hashed and cannot be shown again",
            file=sys.stderr,
        )
    else:
        print(f"project   {project.name} ({project.id})")
        print(f"write key {project.write_key}   (ingest only: SDKs, collectors)")
        print(f"read key  {project.read_key}   (query only: journeys, KPIs, dashboard)")
        print("Keys are stored hashed and cannot be shown again.")
    return 0


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    from journeys.keys import list_projects

    async with open_postgres(settings) as conn:
        projects = await list_projects(conn)
    if args.json:
        print(orjson.dumps({"projects": [p.as_json() for p in projects]}).decode())
    elif not projects:
        print("no projects yet: journeys project create NAME makes one", file=sys.stderr)
    else:
        print(
            table(
                ["NAME", "ID", "CREATED (UTC)", "ACTIVE KEYS"],
                [[p.name, p.id, when(p.created_at), str(p.active_keys)] for p in projects],
            )
        )
    return 0


async def _origins(settings: Settings, args: argparse.Namespace) -> int:
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

    async with open_project(settings, args.name) as project:
        origins = await change_origins(project.conn, project.id, add, remove)
    if args.json:
        print(orjson.dumps({"project": project.id, "origins": origins}).decode())
    elif origins:
        print("\n".join(origins))
    else:
        print(f"no origins: the public keys of {args.name} cannot send events from any web page", file=sys.stderr)
    return 0
