"""Who is who: the identity lookups both the collector (to merge) and the query service (to read) need.

``identities`` maps a distinct id to its customer (current value = ``argMax(customer_id, version)``, an id
with no row is its own customer); ``identities_by_customer`` is the reverse index, confirmed against the
forward table because a member merged elsewhere later keeps its old reverse row. See docs/identity.md.
"""

from __future__ import annotations

from journeys.clickhouse import ClickHouse

CURRENT_SQL = """
SELECT distinct_id, argMax(customer_id, version), argMax(is_deleted, version)
FROM identities
WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)}
GROUP BY distinct_id
"""

#: Every current member of some customers: ``(distinct_id, customer)``.
MEMBERS_SQL = """
SELECT distinct_id, argMax(customer_id, version) AS customer
FROM identities
WHERE project_id = {project_id:String}
  AND distinct_id IN (
      SELECT distinct_id FROM identities_by_customer
      WHERE project_id = {project_id:String} AND customer_id IN {customers:Array(String)})
GROUP BY distinct_id
HAVING customer IN {customers:Array(String)} AND argMax(is_deleted, version) = 0
"""

# resolve() guesses that the id asked for is the customer itself (true for every id never stitched, and
# for lookups by user id): its forward mapping and the members it would have, in one round trip.
RESOLVE_SQL = f"""
SELECT 'mapped', argMax(customer_id, version), toString(argMax(is_deleted, version))
FROM identities
WHERE project_id = {{project_id:String}} AND distinct_id = {{id:String}}
HAVING count() > 0
UNION ALL
SELECT 'member', distinct_id, customer FROM ({MEMBERS_SQL})
"""


async def current_customers(ch: ClickHouse, project_id: str, ids: list[str]) -> dict[str, str]:
    """The customer each id belongs to now (ids without a mapping map to themselves)."""
    _, rows = await ch.query(CURRENT_SQL, {"project_id": project_id, "ids": ids})
    found = {distinct_id: (distinct_id if deleted else customer) for distinct_id, customer, deleted in rows}
    return {i: found.get(i, i) for i in ids}


async def members_of(ch: ClickHouse, project_id: str, customers: list[str]) -> dict[str, set[str]]:
    """Every id that belongs to each of ``customers`` now, each customer's own id included."""
    found: dict[str, set[str]] = {c: {c} for c in customers}
    _, rows = await ch.query(MEMBERS_SQL, {"project_id": project_id, "customers": customers})
    for distinct_id, customer in rows:
        found[customer].add(distinct_id)
    return found


async def members(ch: ClickHouse, project_id: str, customer_id: str) -> set[str]:
    """Every id that belongs to ``customer_id`` now, the customer's own id included."""
    return (await members_of(ch, project_id, [customer_id]))[customer_id]


async def resolve(ch: ClickHouse, project_id: str, any_id: str) -> tuple[str, list[str]]:
    """Any of a customer's ids → (the customer id, all its ids, sorted)."""
    _, rows = await ch.query(RESOLVE_SQL, {"project_id": project_id, "id": any_id, "customers": [any_id]})
    customer_id = any_id
    for kind, value, deleted in rows:
        if kind == "mapped" and deleted == "0":
            customer_id = value
    if customer_id == any_id:  # the guess was right: the members came with it
        return customer_id, sorted({value for kind, value, _ in rows if kind == "member"} | {any_id})
    return customer_id, sorted(await members(ch, project_id, customer_id))
