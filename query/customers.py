"""A customer as one person: their ids, traits, first touch, segments — and forgetting them entirely."""

from __future__ import annotations

from typing import Any

from journeys import definitions, identities
from journeys.clickhouse import ClickHouse
from journeys.maps import segment_matches, validate_segment
from journeys.migrate import render_clickhouse_sql
from query.reads import customer_facts
from query.stage_state import forget_facts

# Per table: which column holds the ids to forget. Lightweight DELETE: rows vanish from reads at once,
# the disk space goes with the next merge. On a cluster it runs on the local tables of every node.
_FORGET = (
    ("events", "distinct_id"),
    ("timelines", "distinct_id"),
    ("customer_traits", "distinct_id"),
    ("first_touch", "distinct_id"),
    ("identities", "distinct_id"),
    ("identities_by_customer", "distinct_id"),
    ("identities_by_customer", "customer_id"),
)


async def profile(ch: ClickHouse, pg: Any, project_id: str, any_id: str) -> dict[str, Any]:
    customer_id, ids = await identities.resolve(ch, project_id, any_id)
    facts = await customer_facts(ch, project_id, ids)
    segments = [
        version.name
        for version in await definitions.latest_of_each(pg, project_id, "segment")
        if segment_matches(validate_segment(version.body), facts)
    ]
    return {"customer_id": customer_id, "ids": ids, **facts, "segments": segments}


async def forget(ch: ClickHouse, pg: Any, cluster: str, project_id: str, any_id: str) -> dict[str, Any]:
    """Right to be forgotten: every event, trait, first touch and identity link of the customer, and their
    part in the KPIs (their stage facts are withdrawn, not deleted: a pending DELETE would keep KPI reads off
    the pre-aggregated projections until it is done; the withdrawn pairs leave the disk with the next merge)."""
    customer_id, ids = await identities.resolve(ch, project_id, any_id)
    params = {"project_id": project_id, "ids": ids}
    for table, column in _FORGET:
        sql = render_clickhouse_sql(
            f"DELETE FROM {{{{table {table}}}}} {{{{on_cluster}}}} "
            f"WHERE project_id = {{project_id:String}} AND {column} IN {{ids:Array(String)}} "
            "SETTINGS lightweight_deletes_sync = 0",  # reads apply it at once (journeys.clickhouse)
            cluster,
        )
        await ch.command(sql, params)
    await forget_facts(ch, pg, project_id, ids)  # after the events: a refresh from now on finds none
    return {"customer_id": customer_id, "forgotten_ids": ids}
