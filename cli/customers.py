"""``journeys customer delete ID --project P``: forget a customer everywhere (events, traits, identity links).

Directly when this process can open the stores; on the embedded default while ``journeys up`` runs (it owns
the chDB directory), through the running query service, with a one-time admin key that is revoked right
after.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cli.commands import Commands
from cli.context import open_project
from journeys.config import Settings


def add_commands(commands: Commands) -> None:
    customer = commands.group("customer", help="customers", dest="customer_command")
    forget = customer.add("delete", run, help="forget a customer: events, traits and identity links, everywhere")
    forget.add_argument("id", help="any of the customer's ids (user id, anonymous id, alias)")
    forget.add_argument("--project", required=True, help="project name or id")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from journeys.clickhouse import ClickHouse, ClickHouseError
    from journeys.keys import add_key, revoke_key
    from query.customers import forget

    async with open_project(settings, args.project) as project:
        try:
            clickhouse = await ClickHouse.connect(settings.effective_clickhouse_url)
        except ClickHouseError as exc:
            if "in use by another process" not in str(exc):
                raise
            secret = await add_key(project.conn, project.id, "admin")
            try:
                result = await asyncio.to_thread(_delete_via_service, settings, args.id, secret)
            finally:
                await revoke_key(project.conn, secret)
        else:
            try:
                result = await forget(clickhouse, project.conn, settings.clickhouse_cluster, project.id, args.id)
            finally:
                await clickhouse.close()
        print(f"forgot customer {result['customer_id']}: ids {', '.join(result['forgotten_ids'])}")
    return 0


def _delete_via_service(settings: Settings, customer: str, secret: str) -> dict[str, Any]:
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
