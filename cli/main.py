"""The ``journeys`` command: run the services, apply migrations, manage projects, keys, journey maps,
segments and customers.

This module builds the parser from the command modules, loads the settings and runs the command chosen;
each module declares and runs its own commands (cli/commands.py says how). The order of
:data:`COMMAND_MODULES` is the order of ``journeys --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from cli import (
    alerts,
    customers,
    definitions,
    demo,
    email,
    keys,
    preview,
    projects,
    quarantine,
    serve,
)
from cli.commands import Commands, needs_data
from cli.importer import command as importer
from journeys.config import DATA_DIR_NAME, ConfigError, Settings, load_settings

log = logging.getLogger("journeys")

#: ``definitions`` makes the ``map`` and ``alert`` groups that ``preview`` and ``alerts`` add to.
COMMAND_MODULES = (
    serve,  # up, migrate
    projects,  # project create|origins|list
    keys,  # key create|list|revoke (docs/keys.md)
    customers,  # customer delete
    definitions,  # map|segment apply|show|list, map template, alert apply|show
    preview,  # map preview: a draft map's KPIs, publishing nothing
    alerts,  # alert list|history|secret (docs/alerts.md)
    email,  # email key|link (docs/email.md)
    importer,  # import FILE: CSV/NDJSON into a project through the collector (docs/import.md)
    quarantine,  # quarantine replay: take in quarantined events that pass today (docs/quarantine.md)
    demo,  # demo: a demo project with realistic journeys, sent through the running service
)


def _setup_logging(settings: Settings) -> None:
    """JSON lines on stderr (``JOURNEYS_LOG_FORMAT=text`` for people), at ``JOURNEYS_LOG_LEVEL``; each
    record made while handling a request carries its id (see :mod:`journeys.logs`)."""
    from journeys.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format, sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="journeys", description="Live customer-journey tracking.")
    commands = Commands(parser.add_subparsers(dest="command", required=True))
    for module in COMMAND_MODULES:
        module.add_commands(commands)
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
    if needs_data(args) and _needs_embedded_stores(settings) and not settings.data_dir_exists:
        # A command run from another folder used to make a second, empty store there and answer "no project".
        print(
            f"error: no journeys data directory at {settings.resolved_data_dir} (looked for {DATA_DIR_NAME} here and "
            "in every folder above). Run `journeys up` in the folder that should hold the data first, run this "
            "command from there, or set JOURNEYS_DATA_DIR.",
            file=sys.stderr,
        )
        return 2
    try:
        return int(asyncio.run(args.run(settings, args)))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the operator gets one clear line; the traceback goes to the log at DEBUG
        log.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
