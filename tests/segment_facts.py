"""What segment rules look at — traits and first touch — read straight from ``events`` in Python: the
oracle of the segment keys ClickHouse computes with the stage facts (query/facts/compute.py, tests/facts_oracle.py).

Why ``events`` and not the views' tables: the profile endpoint (:func:`query.reads.facts_of`) reads the same
facts off ``customer_traits`` and ``first_touch``, which materialized views fill from every insert into
``events`` (migration 0004). An insert is not atomic across them: ClickHouse commits the ``events`` part
first and the views' parts after it (measured in chDB: 15–90 ms later for 10–20 000-row inserts), and
nothing stamps the views' rows for the updater to see. A refresh that ran in between computed the
customer's segments without the new trait and the id was then marked handled (issue 18.3). Read from
``events``, every row a refresh depends on is a row the updater watches (docs/kpis.md, "No change is
missed"). test_no_change_missed.py proves these equal to the profiles'.

The rules are those of the views and ``facts_of``: per trait, the newest ``identify`` by event time wins
across the customer's ids (equal times: the greater value, as ``facts_of`` breaks them across ids); the
first touch is that of the customer's earliest event, an id's earliest by (time, receipt, message id) — the
journey's order — so that all four fields come from one event, and across ids the earliest, then the
smaller id, as ``facts_of``. Only what the segments' rules name is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from journeys.clickhouse import ClickHouse
from query.maps import Segment
from query.facts.compute import segment_fields
from query.reads import ID_CHUNK, CustomerFactsFold

TRAITS_SQL = """
SELECT distinct_id, kv.1 AS trait, argMax(kv.2, (timestamp, kv.2)), max(timestamp)
FROM events
ARRAY JOIN JSONExtractKeysAndValuesRaw(traits) AS kv
WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)} AND type = 'identify'
  AND trait IN {traits:Array(String)}
GROUP BY distinct_id, trait
"""

# argMin over (time, receipt, message id): all four fields come from one event, the journey's first.
FIRST_TOUCH_SQL = """
SELECT distinct_id, min(timestamp),
       argMin(toString(channel), (timestamp, received_at, message_id)),
       argMin(toString(utm_source), (timestamp, received_at, message_id)),
       argMin(toString(utm_medium), (timestamp, received_at, message_id)),
       argMin(toString(utm_campaign), (timestamp, received_at, message_id))
FROM events
WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)}
GROUP BY distinct_id
"""


async def segment_facts(
    ch: ClickHouse, project_id: str, members: dict[str, list[str]], segments: Iterable[Segment]
) -> dict[str, dict[str, Any]]:
    """``{"traits", "first_touch"}`` of each customer (``customer → its ids``), as :func:`query.reads.facts_of`
    gives them, with only the traits (and the first touch only if) the ``segments`` read."""
    trait_names, touch = segment_fields(segments)
    owner = {i: customer for customer, ids in members.items() for i in ids}
    all_ids = list(owner)
    folded = CustomerFactsFold(members)

    async def none() -> tuple[list[str], list[tuple]]:
        return [], []

    for start in range(0, len(all_ids) if trait_names or touch else 0, ID_CHUNK):
        params = {"project_id": project_id, "ids": all_ids[start : start + ID_CHUNK], "traits": trait_names}
        (_, trait_rows), (_, touch_rows) = await asyncio.gather(
            ch.query(TRAITS_SQL, params) if trait_names else none(),
            ch.query(FIRST_TOUCH_SQL, params) if touch else none(),
        )
        folded.add(owner, trait_rows, touch_rows)
    return folded.result()
