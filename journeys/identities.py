"""Who is who: the identity lookups both the collector (to merge) and the query service (to read) need.

``identities`` maps a distinct id to its customer (current value = ``argMax(customer_id, version)``, an id
with no row is its own customer); ``identities_by_customer`` is the reverse index, confirmed against the
forward table because a member merged elsewhere later keeps its old reverse row. See docs/identity.md.
"""

from __future__ import annotations

from journeys.clickhouse import ClickHouse

#: Ids (or customers) per query: bound parameters travel URL-encoded to a ClickHouse server, whose URI limit
#: they must stay well under. The many-id lookups below read in chunks of this size from a server; in-process
#: (chDB binds them directly) in one query: 20 000 ids in 10 chunks took 84 ms, in one 43 ms (the stage-state
#: updater resolves every id a poll touched).
ID_CHUNK = 2000


def _chunks(ch: ClickHouse, values: list[str]) -> list[list[str]]:
    size = max(1, len(values)) if ch.embedded else ID_CHUNK
    return [values[start : start + size] for start in range(0, len(values), size)]


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

# The ids that may belong to a customer: its reverse-index rows (possibly stale, see above) and itself.
CANDIDATES_SQL = """
SELECT distinct_id FROM identities_by_customer WHERE project_id = {project_id:String} AND customer_id = {id:String}
UNION ALL SELECT {id:String}
"""

# resolve() guesses that the id asked for is the customer itself (true for every id never stitched, and
# for lookups by user id): the forward rows of that id and of every candidate member, in one round trip.
GUESS_SQL = f"""
SELECT distinct_id, argMax(customer_id, version), argMax(is_deleted, version)
FROM identities
WHERE project_id = {{project_id:String}} AND distinct_id IN ({CANDIDATES_SQL})
GROUP BY distinct_id
"""


class Guess:
    """What :data:`GUESS_SQL` says about ``asked``: its customer now, and — when that is ``asked`` itself —
    its members."""

    def __init__(self, asked: str, rows: list[tuple]):
        current = {distinct_id: (distinct_id if deleted else customer) for distinct_id, customer, deleted in rows}
        self.customer = current.get(asked, asked)
        self.right = self.customer == asked
        self.members = sorted({i for i, c in current.items() if c == asked} | {asked}) if self.right else []


async def guess(ch: ClickHouse, project_id: str, asked: str) -> Guess:
    _, rows = await ch.query(GUESS_SQL, {"project_id": project_id, "id": asked})
    return Guess(asked, rows)


async def current_customers(ch: ClickHouse, project_id: str, ids: list[str]) -> dict[str, str]:
    """The customer each id belongs to now (ids without a mapping map to themselves)."""
    found: dict[str, str] = {}
    for chunk in _chunks(ch, ids):
        _, rows = await ch.query(CURRENT_SQL, {"project_id": project_id, "ids": chunk})
        found.update({distinct_id: (distinct_id if deleted else customer) for distinct_id, customer, deleted in rows})
    return {i: found.get(i, i) for i in ids}


async def members_of(ch: ClickHouse, project_id: str, customers: list[str]) -> dict[str, set[str]]:
    """Every id that belongs to each of ``customers`` now, each customer's own id included."""
    found: dict[str, set[str]] = {c: {c} for c in customers}
    for chunk in _chunks(ch, customers):
        _, rows = await ch.query(MEMBERS_SQL, {"project_id": project_id, "customers": chunk})
        for distinct_id, customer in rows:
            found[customer].add(distinct_id)
    return found


async def members(ch: ClickHouse, project_id: str, customer_id: str) -> set[str]:
    """Every id that belongs to ``customer_id`` now, the customer's own id included."""
    return (await members_of(ch, project_id, [customer_id]))[customer_id]


async def resolve(ch: ClickHouse, project_id: str, any_id: str) -> tuple[str, list[str]]:
    """Any of a customer's ids → (the customer id, all its ids, sorted)."""
    found = await guess(ch, project_id, any_id)
    if found.right:
        return found.customer, found.members
    return found.customer, sorted(await members(ch, project_id, found.customer))
