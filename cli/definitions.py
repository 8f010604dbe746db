"""``journeys map|segment|alert apply|show`` and ``map|segment list``, ``map template``: the versioned
documents people author (query/definitions.py, docs/maps.md, docs/alerts.md).

Maps, segments and alert rules share this code: ``apply`` creates a document or adds a version if it
changed, printing a diff (a new one, a summary); ``show`` prints the latest or a given version as YAML;
``list`` the latest of each. An alert rule is checked against the project's maps and segments too. The
rest of ``journeys alert`` (``list``, ``history``, ``secret``) is cli/alerts.py; ``map preview`` is
cli/preview.py. PostgreSQL only, so they work beside a running ``journeys up``.

The map templates (``templates/*.yaml`` beside this module) are what ``map template`` prints and what the
demo's map starts from.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.commands import Commands
from cli.context import open_project
from journeys.config import Settings

TEMPLATES = ("five-stage", "5a", "b2b")


def add_commands(commands: Commands) -> None:
    for kind in ("map", "segment"):
        what = "journey maps" if kind == "map" else "customer segments"
        actions = commands.group(kind, help=f"author {what} (versioned)", dest="action")
        apply = actions.add("apply", run, help="create, or add a version if it changed; prints a diff")
        apply.add_argument("file", help="YAML or JSON file, - for stdin")
        show = actions.add("show", run, help="print the latest (or a given) version as YAML")
        show.add_argument("name")
        show.add_argument("--version", type=int)
        listing = actions.add("list", run, help="every one, latest version")
        for p in (apply, show, listing):
            p.add_argument("--project", required=True, help="project name or id")
        if kind == "map":
            # Prints a file of this package: works with no stores at all.
            template = actions.add(
                "template", run, needs_data=False, help=f"print a ready template: {', '.join(TEMPLATES)}"
            )
            template.add_argument("name", choices=TEMPLATES)
    alert = commands.group("alert", help="alert rules: when a stage falls below its target", dest="action")
    apply = alert.add("apply", run, help="create a rule, or add a version if it changed; prints a diff")
    apply.add_argument("file", help="YAML or JSON file, - for stdin")
    show = alert.add("show", run, help="print the latest (or a given) version of a rule as YAML")
    show.add_argument("name")
    show.add_argument("--version", type=int)
    for p in (apply, show):
        p.add_argument("--project", required=True, help="project name or id")


def template(name: str) -> str:
    """A map template's YAML text; ``FileNotFoundError`` if there is no such template."""
    from importlib import resources

    return resources.files("cli").joinpath("templates", f"{name}.yaml").read_text()


def read_document(path: str) -> Any:
    """A YAML or JSON document from a file, or stdin for ``-``; a syntax error says file:line:column."""
    import yaml

    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON: one parser for both
    except yaml.YAMLError as exc:
        # file:line:column, as compilers say it (editors jump there); not PyYAML's "<unicode string>".
        where = "<stdin>" if path == "-" else path
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where += f":{mark.line + 1}:{mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise ValueError(f"{where}: not valid YAML/JSON: {problem}" + (f" ({context})" if context else "")) from None


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "template":
        try:
            print(template(args.name), end="")
        except FileNotFoundError:
            print(f"error: no template {args.name!r}; templates: {', '.join(TEMPLATES)}", file=sys.stderr)
            return 1
        return 0
    if args.action == "apply":
        return await _apply(settings, args)
    if args.action == "show":
        return await _show(settings, args)
    return await _list(settings, args)


async def _apply(settings: Settings, args: argparse.Namespace) -> int:
    from query import definitions
    from query.maps import DefinitionError

    kind = args.command
    async with open_project(settings, args.project) as project:
        document = read_document(args.file)
        try:
            if kind == "alert":  # checked against the project's maps and segments too
                applied = await definitions.apply_alert_rule(project.conn, project.id, document)
            else:
                applied = await definitions.apply(project.conn, project.id, kind, document)
        except DefinitionError as exc:
            print(f"error: {args.file} is not a valid {kind}:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem['path']}: {problem['reason']}", file=sys.stderr)
            return 1
    if kind == "map":
        from query.maps import map_warnings, validate_map

        for warning in map_warnings(validate_map(document)):
            print(f"warning: {args.file}: {warning['path']}: {warning['reason']}", file=sys.stderr)
    if not applied.changed:
        print(f"{kind} {applied.name} unchanged (version {applied.version})")
    else:
        was = f"version {applied.previous_version} → " if applied.previous_version else "created, "
        print(f"{kind} {applied.name}: {was}version {applied.version}")
        # A change shows what changed; a new one its summary, not its whole text as a diff.
        print(applied.diff if applied.previous_version else _summary(kind, document), end="")
    return 0


async def _show(settings: Settings, args: argparse.Namespace) -> int:
    from query import definitions

    kind = args.command
    async with open_project(settings, args.project) as project:
        found = await definitions.get(project.conn, project.id, kind, args.name, args.version)
    if found is None:
        print(
            f"error: no {kind} {args.name!r}" + (f" version {args.version}" if args.version else ""),
            file=sys.stderr,
        )
        return 1
    print(f"# {kind} {found.name} version {found.version}, {found.created_at:%Y-%m-%d %H:%M:%S %Z}")
    print(definitions.to_yaml(kind, found.body), end="")
    return 0


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    from query import definitions

    async with open_project(settings, args.project) as project:
        latest = await definitions.latest_of_each(project.conn, project.id, args.command)
    for item in latest:
        print(f"{item.name}\tversion {item.version}\t{item.created_at:%Y-%m-%d %H:%M}")
    return 0


def _summary(kind: str, body: dict[str, Any]) -> str:
    """What a newly created map or segment holds, in a line or two (its whole text is what the author wrote)."""
    if kind == "map":
        stages = body.get("stages") or []
        targets = sum(1 for s in stages if s.get("target"))
        names = " → ".join(str(s.get("name") or s.get("id")) for s in stages)
        return (
            f"  {len(stages)} stages ({names}), {len(body.get('touchpoints') or [])} touchpoints, "
            f"targets on {targets} stage{'' if targets == 1 else 's'}\n"
        )
    if kind == "alert":
        hooks = len(body.get("notify") or [])
        return (
            f"  {body.get('metric')} of stage {body.get('stage')} (map {body.get('map')}), "
            f"{hooks} webhook{'' if hooks == 1 else 's'}\n"
        )
    rules = body.get("rules") or []
    return f"  {len(rules)} rule{'' if len(rules) == 1 else 's'}, matching {body.get('match', 'all')} of them\n"
