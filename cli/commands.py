"""How a command module declares its commands: the one convention every module of ``cli/`` follows.

A command module has ``add_commands(commands: Commands) -> None``, which adds its subcommands, and one
``async def run(settings, args) -> int``, which each of them is given to (argparse hands it back as
``args.run``). ``cli/main.py`` builds the parser from the modules and calls ``args.run``: it knows no
command by name.

A group such as ``journeys map`` may hold commands from more than one module (``map preview`` has its own):
the first module to ask for the group makes it, with its help and the attribute that names the chosen
subcommand; the others ask for it by name. Groups appear in ``--help`` in the order they were made.

Command modules keep their heavy imports (aiohttp, asyncpg, the services) inside their functions: the
parser is built from all of them on every run, ``journeys --help`` included.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from journeys.config import Settings

#: A module's entry: the settings and the parsed arguments in, the exit code out.
Run = Callable[[Settings, argparse.Namespace], Awaitable[int]]
#: Whether a command works on existing stores: ``False`` for one that makes them (``up``, ``migrate``) or
#: needs none (a template); a function of the arguments where that depends on them (``import --write-key``).
NeedsData = bool | Callable[[argparse.Namespace], bool]


class Commands:
    """The subcommands at one level of ``journeys`` (the top, or a group's)."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers
        self._groups: dict[str, Commands] = {}

    def add(self, name: str, run: Run, *, needs_data: NeedsData = True, **options: Any) -> argparse.ArgumentParser:
        """A command run by ``run``; ``options`` as for ``add_parser`` (``help``, ``description``)."""
        parser = self._subparsers.add_parser(name, **options)
        parser.set_defaults(run=run, needs_data=needs_data)
        return parser

    def group(self, name: str, *, help: str | None = None, dest: str | None = None) -> Commands:
        """The group ``name``: made with ``help`` and ``dest`` by the first module to ask, found by the rest."""
        found = self._groups.get(name)
        if found is not None:
            return found
        if help is None or dest is None:
            raise ValueError(f"command group {name!r} is asked for before any module made it (with help and dest)")
        parser = self._subparsers.add_parser(name, help=help)
        group = self._groups[name] = Commands(parser.add_subparsers(dest=dest, required=True))
        return group


def needs_data(args: argparse.Namespace) -> bool:
    """Whether the parsed command works on existing stores (see :data:`NeedsData`)."""
    given: NeedsData = args.needs_data
    return given(args) if callable(given) else given
