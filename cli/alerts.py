"""``journeys alert apply|show|list|history|secret``: alert rules and what they did (docs/alerts.md).

``apply`` and ``show`` are the map and segment commands' own (cli/main.py); the rest is here.

Like ``journeys map``, these work on PostgreSQL directly, beside a running ``journeys up``.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson


def add_alert_commands(sub: Any) -> None:
    actions = sub.add_parser("alert", help="alert rules: when a stage falls below its target").add_subparsers(
        dest="action", required=True
    )
    apply = actions.add_parser("apply", help="create a rule, or add a version if it changed; prints a diff")
    apply.add_argument("file", help="YAML or JSON file, - for stdin")
    show = actions.add_parser("show", help="print the latest (or a given) version of a rule as YAML")
    show.add_argument("name")
    show.add_argument("--version", type=int)
    listing = actions.add_parser("list", help="every rule and where it stands (firing or ok, per segment)")
    history = actions.add_parser("history", help="fired and resolved, newest first, with their deliveries")
    history.add_argument("--rule", help="one rule only")
    history.add_argument("--limit", type=int, default=20, help="transitions to show (default 20)")
    secret = actions.add_parser("secret", help="print the project's webhook signing secret")
    secret.add_argument("--rotate", action="store_true", help="replace it first (receivers need the new one)")
    for p in (apply, show, listing, history, secret):
        p.add_argument("--project", required=True, help="project name or id")
    for p in (listing, history):
        p.add_argument("--json", action="store_true", help="print what GET /v1/alerts answers")


async def run_alert_command(settings: Any, args: argparse.Namespace, with_project: Any) -> int:
    """``list``, ``history`` and ``secret``; ``apply`` and ``show`` run as for maps (cli/main.py)."""

    async def work(conn: Any, project_id: str) -> int:
        if args.action == "secret":
            from query.alert_delivery import signing_secret

            print(await signing_secret(conn, project_id, rotate=args.rotate))
            return 0
        from query.alerts_api import alerts_view

        limit = max(1, min(getattr(args, "limit", 20), 1000))
        view = await alerts_view(conn, project_id, getattr(args, "rule", None), limit)
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

    return int(await with_project(settings, args.project, work))


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
