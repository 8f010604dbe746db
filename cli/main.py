"""The ``journeys`` command: run the services, apply migrations, manage projects, keys, journey maps,
segments and customers.

This module is the composition root: it is the one place that wires the shared stores into the collector
and query apps, so it imports both; nothing else in ``journeys`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import orjson

from journeys.config import DATA_DIR_NAME, ConfigError, Settings, load_settings

log = logging.getLogger("journeys")


def _setup_logging(settings: Settings) -> None:
    """JSON lines on stderr (``JOURNEYS_LOG_FORMAT=text`` for people), at ``JOURNEYS_LOG_LEVEL``; each
    record made while handling a request carries its id (see :mod:`journeys.logs`)."""
    from journeys.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format, sys.stderr)


async def _serve(settings: Settings, services: Sequence[str]) -> None:
    from aiohttp import web

    from collector.app import create_app as create_collector
    from journeys.metrics import Metrics
    from journeys.stores import open_stores
    from query.app import create_app as create_query

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with open_stores(settings) as stores:
        plan = []
        # A registry per service, even in one process: each port's /metrics exports its own service's series
        # only, so a Prometheus scraping both ports counts nothing twice.
        if "collector" in services:
            plan.append(
                ("collector", create_collector(stores, Metrics()), settings.collector_host, settings.collector_port)
            )
        if "query" in services:
            plan.append(("query", create_query(stores, Metrics()), settings.query_host, settings.query_port))
        _tune_gc()
        runners = []
        try:
            for name, app, host, port in plan:
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                runners.append(runner)
                site = web.TCPSite(runner, host, port, reuse_address=True)
                await site.start()
                bound = runner.addresses[0] if runner.addresses else (host, port)
                log.info("%s listening on http://%s:%s", name, bound[0], bound[1])
            print("journeys is up: " + ", ".join(f"{n} http://{h}:{p}" for n, _, h, p in plan), flush=True)
            await stop.wait()
            log.info("shutting down")
        finally:
            # Stop taking requests first, then let each app's cleanup flush its spool and close.
            for runner in reversed(runners):
                await runner.cleanup()


def _tune_gc() -> None:
    """Ingest allocates millions of short-lived dicts and lists that reference counting frees; the cyclic
    GC mostly rescans long-lived startup objects (modules, pydantic schemas). Freeze those and collect
    young objects less often: measured ~15 % of the request thread's time before (bench/README.md)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def _migrate(settings: Settings) -> None:
    from journeys.stores import open_stores

    async with open_stores(settings, migrate=False) as stores:
        from journeys.migrate import migrate_clickhouse, migrate_postgres

        async with stores.pg.acquire() as conn:
            pg = await migrate_postgres(conn)
            ch = await migrate_clickhouse(stores.clickhouse, settings.clickhouse_cluster, lock=conn)
    print(f"PostgreSQL: {', '.join(pg) or 'up to date'}")
    print(f"ClickHouse: {', '.join(ch) or 'up to date'}")


async def _with_postgres(settings: Settings, work):
    """Run ``work(conn)`` on a migrated PostgreSQL. PostgreSQL only: these commands must work beside a
    running `journeys up`, which owns the embedded ClickHouse."""
    from journeys.migrate import migrate_postgres
    from journeys.postgres import postgres_pool

    async with postgres_pool(settings, max_size=1) as pool:
        async with pool.acquire() as conn:
            await migrate_postgres(conn)
            return await work(conn)


async def _with_project(settings: Settings, project: str, work):
    """Run ``work(conn, project_id)`` for the project named (by name or id)."""
    from journeys.keys import ProjectError, find_project

    async def resolved(conn):
        project_id = await find_project(conn, project)
        if project_id is None:
            raise ProjectError(f"no project named {project!r} (journeys project create NAME makes one)")
        return await work(conn, project_id)

    return await _with_postgres(settings, resolved)


async def _project_create(settings: Settings, name: str, as_json: bool, as_env: bool = False) -> int:
    from journeys.keys import ProjectError, create_project

    async def work(conn):
        try:
            return await create_project(conn, name)
        except ProjectError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None

    project = await _with_postgres(settings, work)
    if project is None:
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


def _read_document(path: str):
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


def _summary(kind: str, body: dict) -> str:
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


async def _definition_command(settings: Settings, args: argparse.Namespace) -> int:
    from query import definitions
    from query.maps import DefinitionError

    kind = args.command
    if args.action == "template":
        from importlib import resources

        try:
            print(resources.files("journeys").joinpath("templates", f"{args.name}.yaml").read_text(), end="")
        except FileNotFoundError:
            print(f"error: no template {args.name!r}; templates: {', '.join(TEMPLATES)}", file=sys.stderr)
            return 1
        return 0

    async def work(conn, project_id):
        if args.action == "apply":
            document = _read_document(args.file)
            try:
                if kind == "alert":  # checked against the project's maps and segments too
                    applied = await definitions.apply_alert_rule(conn, project_id, document)
                else:
                    applied = await definitions.apply(conn, project_id, kind, document)
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
        if args.action == "show":
            found = await definitions.get(conn, project_id, kind, args.name, args.version)
            if found is None:
                print(
                    f"error: no {kind} {args.name!r}" + (f" version {args.version}" if args.version else ""),
                    file=sys.stderr,
                )
                return 1
            print(f"# {kind} {found.name} version {found.version}, {found.created_at:%Y-%m-%d %H:%M:%S %Z}")
            print(definitions.to_yaml(kind, found.body), end="")
            return 0
        for item in await definitions.latest_of_each(conn, project_id, kind):
            print(f"{item.name}\tversion {item.version}\t{item.created_at:%Y-%m-%d %H:%M}")
        return 0

    return await _with_project(settings, args.project, work)


async def _key_create(settings: Settings, project: str, kind: str) -> int:
    from journeys.keys import add_key

    async def work(conn, project_id):
        print(await add_key(conn, project_id, kind))  # type: ignore[arg-type]
        if kind == "public":
            print(
                f"A public key writes only from the project's origins: journeys project origins {project} --add https://…",
                file=sys.stderr,
            )
        return 0

    return await _with_project(settings, project, work)


async def _customer_delete(settings: Settings, project: str, customer: str) -> int:
    """Forget a customer everywhere. Directly when this process can open the stores; on the embedded
    default while `journeys up` runs (it owns the chDB directory), through the running query service,
    with a one-time admin key that is revoked right after."""
    from journeys.clickhouse import ClickHouse, ClickHouseError
    from journeys.keys import add_key, revoke_key
    from query.customers import forget

    async def work(conn, project_id):
        try:
            clickhouse = await ClickHouse.connect(settings.effective_clickhouse_url)
        except ClickHouseError as exc:
            if "in use by another process" not in str(exc):
                raise
            secret = await add_key(conn, project_id, "admin")
            try:
                result = await asyncio.to_thread(_delete_via_service, settings, customer, secret)
            finally:
                await revoke_key(conn, secret)
        else:
            try:
                result = await forget(clickhouse, conn, settings.clickhouse_cluster, project_id, customer)
            finally:
                await clickhouse.close()
        print(f"forgot customer {result['customer_id']}: ids {', '.join(result['forgotten_ids'])}")
        return 0

    return await _with_project(settings, project, work)


def _delete_via_service(settings: Settings, customer: str, secret: str) -> dict:
    import base64
    import json
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    host = "127.0.0.1" if settings.query_host in ("0.0.0.0", "::") else settings.query_host
    request = urllib.request.Request(
        f"http://{host}:{settings.query_port}/v1/customers/{quote(customer, safe='')}",
        method="DELETE",
        headers={"Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.URLError as exc:
        raise RuntimeError(f"the embedded stores are in use and the query service did not answer: {exc}") from None


TEMPLATES = ("five-stage", "5a", "b2b")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="journeys", description="Live customer-journey tracking.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the collector and the query service in one process")
    up.add_argument("--only", choices=["collector", "query"], help="run just one service (for separate containers)")
    sub.add_parser("migrate", help="apply pending ClickHouse and PostgreSQL migrations (idempotent)")
    project = sub.add_parser("project", help="manage projects").add_subparsers(dest="project_command", required=True)
    create = project.add_parser("create", help="create a project and print its write and read keys")
    create.add_argument("name")
    shown = create.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print the project and keys as JSON")
    shown.add_argument(
        "--env",
        action="store_true",
        help='print shell lines setting WRITE_KEY and READ_KEY: eval "$(journeys project create NAME --env)"',
    )
    from cli.origins import add_origins_command

    add_origins_command(project)  # project origins NAME --add/--remove: where public keys may send from

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="key_command", required=True)
    key_create = key.add_parser("create", help="make another key for a project and print it (once)")
    key_create.add_argument("--project", required=True, help="project name or id")
    key_create.add_argument(
        "--kind",
        required=True,
        choices=["write", "read", "admin", "public"],
        help="admin keys may change maps and segments over the API",
    )
    from cli.keys import add_key_commands

    add_key_commands(project, key)  # project list, key list, key revoke (docs/keys.md)

    customer = sub.add_parser("customer", help="customers").add_subparsers(dest="customer_command", required=True)
    forget = customer.add_parser("delete", help="forget a customer: events, traits and identity links, everywhere")
    forget.add_argument("id", help="any of the customer's ids (user id, anonymous id, alias)")
    forget.add_argument("--project", required=True, help="project name or id")

    for kind in ("map", "segment"):
        what = "journey maps" if kind == "map" else "customer segments"
        actions = sub.add_parser(kind, help=f"author {what} (versioned)").add_subparsers(dest="action", required=True)
        apply = actions.add_parser("apply", help="create, or add a version if it changed; prints a diff")
        apply.add_argument("file", help="YAML or JSON file, - for stdin")
        show = actions.add_parser("show", help="print the latest (or a given) version as YAML")
        show.add_argument("name")
        show.add_argument("--version", type=int)
        listing = actions.add_parser("list", help="every one, latest version")
        for p in (apply, show, listing):
            p.add_argument("--project", required=True, help="project name or id")
        if kind == "map":
            template = actions.add_parser("template", help=f"print a ready template: {', '.join(TEMPLATES)}")
            template.add_argument("name", choices=TEMPLATES)
            from cli.preview import add_preview_arguments

            add_preview_arguments(actions)
    from cli.alerts import add_alert_commands

    add_alert_commands(sub)  # alert apply|show|list|history|secret: docs/alerts.md
    from cli.email import add_email_commands

    add_email_commands(sub)
    from cli.importer import add_import_command

    add_import_command(sub)  # import FILE: CSV/NDJSON into a project through the collector (docs/import.md)
    from cli.quarantine import add_quarantine_command

    add_quarantine_command(sub)  # quarantine replay: take in quarantined events that pass today (docs/quarantine.md)
    from cli.demo import add_demo_command

    add_demo_command(sub)  # demo: a demo project with realistic journeys, sent through the running service
    return parser


def _needs_embedded_stores(settings: Settings) -> bool:
    return settings.clickhouse_is_embedded or settings.postgres_is_embedded


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    # Commands that make the stores, or need none: a template, an import sent with --write-key to a collector.
    makes_stores = (
        args.command in ("up", "migrate")
        or getattr(args, "action", None) == "template"
        or (args.command == "import" and bool(getattr(args, "write_key", None)))
    )
    if not makes_stores and _needs_embedded_stores(settings) and not settings.data_dir_exists:
        # A command run from another folder used to make a second, empty store there and answer "no project".
        print(
            f"error: no journeys data directory at {settings.resolved_data_dir} (looked for {DATA_DIR_NAME} here and "
            "in every folder above). Run `journeys up` in the folder that should hold the data first, run this "
            "command from there, or set JOURNEYS_DATA_DIR.",
            file=sys.stderr,
        )
        return 2
    try:
        if args.command == "up":
            services = [args.only] if args.only else ["collector", "query"]
            asyncio.run(_serve(settings, services))
            return 0
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
            return 0
        if args.command == "project" and args.project_command == "create":
            return asyncio.run(_project_create(settings, args.name, args.json, args.env))
        if args.command == "project" and args.project_command == "origins":
            from cli.origins import run_origins_command

            return asyncio.run(run_origins_command(settings, args, _with_project))
        from cli import keys as keys_cli

        if keys_cli.handles(args):  # project list, key list, key revoke
            return asyncio.run(keys_cli.run_keys_command(settings, args, _with_postgres, _with_project))
        if args.command == "key":
            return asyncio.run(_key_create(settings, args.project, args.kind))
        if args.command == "customer":
            return asyncio.run(_customer_delete(settings, args.project, args.id))
        if args.command == "map" and args.action == "preview":
            from cli.preview import run_preview

            return asyncio.run(run_preview(settings, args, _with_project, _read_document))
        if args.command == "alert" and args.action not in ("apply", "show"):  # apply, show: as maps
            from cli.alerts import run_alert_command

            return asyncio.run(run_alert_command(settings, args, _with_project))
        if args.command in ("map", "segment") or (args.command == "alert" and args.action in ("apply", "show")):
            return asyncio.run(_definition_command(settings, args))
        if args.command == "email":
            from cli.email import run_email_command

            return asyncio.run(run_email_command(settings, args, _with_project))
        if args.command == "import":
            from cli.importer import run_import

            return asyncio.run(run_import(settings, args, _with_project))
        if args.command == "quarantine":
            from cli.quarantine import run_quarantine_command

            return asyncio.run(run_quarantine_command(settings, args, _with_project))
        if args.command == "demo":
            from cli.demo import run_demo

            return asyncio.run(run_demo(settings, args, _with_postgres))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the operator gets one clear line; the traceback goes to the log at DEBUG
        log.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
