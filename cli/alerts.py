"""``journeys alert list|history|secret``: where alert rules stand, what they did, and the webhook signing
secret (docs/alerts.md).

``alert apply`` and ``alert show`` are the map and segment commands' own (cli/definitions.py). Like
``journeys map``, these work on PostgreSQL directly, beside a running ``journeys up``.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from cli.commands import Commands
from cli.context import open_project
from journeys.config import Settings


def add_commands(commands: Commands) -> None:
    """Add ``list``, ``history`` and ``secret`` to the ``alert`` group (cli/definitions.py makes it)."""
    actions = commands.group("alert")
    listing = actions.add("list", run, help="every rule and where it stands (firing or ok, per segment)")
    history = actions.add("history", run, help="fired and resolved, newest first, with their deliveries")
    history.add_argument("--rule", help="one rule only")
    history.add_argument("--limit", type=int, default=20, help="transitions to show (default 20)")
    secret = actions.add("secret", run, help="print the project's webhook signing secret")
    secret.add_argument("--rotate", action="store_true", help="replace it first (receivers need the new one)")
    for p in (listing, history, secret):
        p.add_argument("--project", required=True, help="project name or id")
    for p in (listing, history):
        p.add_argument("--json", action="store_true", help="print what GET /v1/alerts answers")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    async with open_project(settings, args.project) as project:
        if args.action == "secret":
            from query.alert_delivery import signing_secret

            print(await signing_secret(project.conn, project.id, rotate=args.rotate))
            return 0
        from query.alerts_api import alerts_view

        limit = max(1, min(getattr(args, "limit", 20), 1000))
        view = await alerts_view(project.conn, project.id, getattr(args, "rule", None), limit)
    if args.json:
        print(orjson.dumps(view if args.action == "history" else view["rules"]).decode())
        return 0
    if args.action == "list":
        for rule in view["rules"]:
            print(_rule_line(rule))
        return 0
    for event in view["history"]:
        print(_event_line(event))
    return 0


def _rule_line(rule: dict[str, Any]) -> str:
    head = f"{rule['name']}\tversion {rule['version']}\t{rule['metric']} of {rule['map']}/{rule['stage']}"
    if not rule["enabled"]:
        return f"{head}\tdisabled"
    if not rule["states"]:
        return f"{head}\tnot judged yet"
    states = []
    for state in rule["states"]:
        who = state["segment"] or "all customers"
        states.append(f"{who}: {state['state']} since {state['since']} ({state['evaluation']['status']})")
    return f"{head}\t" + "; ".join(states)


def _event_line(event: dict[str, Any]) -> str:
    who = event["segment"] or "all customers"
    evaluation = event.get("evaluation") or {}
    actual = evaluation.get("actual")
    value = "" if actual is None else f" at {actual:.4g}"
    deliveries = ", ".join(
        f"{d['target']} {d['state']}" + (f" after {len(d['failed_attempts'])} failed" if d["failed_attempts"] else "")
        for d in event["deliveries"]
    )
    return f"{event['at']}\t{event['kind']}\t{event['rule']}\t{who}{value} ({event['reason']})\t{deliveries or 'no webhooks'}"
