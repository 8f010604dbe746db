"""Builds of a project's stage facts: which one serves and what it was computed for, previews, deleting one.

A map or segment version that changes the facts is computed under a new build number while the previous
build keeps serving; it serves only once complete (the updater, :mod:`query.facts.updater`, switches it in
``stage_state_builds``). Every reader of the facts starts here: the serving :class:`Build`, and the
:class:`~query.facts.model.Definitions` it was computed for, read under
:func:`~query.facts.locks.consistent_facts`. Each build's facts and stored inputs are partitions of their
own (migrations 0009, 0010), so deleting one rewrites nothing.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from journeys.clickhouse import ClickHouse, table_on_cluster
from journeys.stores import Stores
from query import definitions
from query.facts.locks import facts_change, lock_pool
from query.facts.model import Definitions
from query.maps import validate_map, validate_segment

#: Builds at or above this are previews: never served, deleted once answered.
PREVIEW_BUILDS = 1 << 62
#: A preview older than this is left over from a crash: a rebuild's clean-up takes it.
PREVIEW_LIFETIME_MS = 3_600_000


def preview_build(now_ms: int) -> int:
    """A fresh preview build number; its order says when it began (see :func:`stale_previews_below`)."""
    return PREVIEW_BUILDS + now_ms * 1000 + random.randrange(1000)


def stale_previews_below(now_ms: int) -> int:
    """Preview builds below this number began over :data:`PREVIEW_LIFETIME_MS` ago."""
    return PREVIEW_BUILDS + (now_ms - PREVIEW_LIFETIME_MS) * 1000


@dataclass(frozen=True)
class Build:
    """The complete build of a project's stage facts that serves KPIs (``number`` 0: none yet), the
    definitions it was computed for, and since when a newer one is being computed, if one is."""

    number: int
    fingerprint: str
    rebuilding_since: datetime | None
    #: A change of its facts in place begun for other definitions and not ended (PostgreSQL migration 0011).
    changing_to: str | None = None

    @property
    def whole(self) -> bool:
        """Whether its facts are all those of :attr:`fingerprint`'s definitions: no change of them in place stopped
        half-way. Only then may they be reused (relabelled, copied, changed in place, previewed from)."""
        return self.changing_to is None


async def serving_build(pg: Any, project_id: str) -> Build:
    row = await pg.fetchrow(
        "SELECT build, fingerprint, rebuilding_since, changing_to FROM stage_state_builds WHERE project_id = $1",
        project_id,
    )
    if row is None:
        return Build(0, "", None)
    return Build(row["build"], row["fingerprint"] if row["build"] else "", row["rebuilding_since"], row["changing_to"])


async def begin_build(pg: Any, project_id: str) -> int:
    """A new build number for the project, marked as being computed (``rebuilding_since``) until it serves or a
    newer one begins. Take it under the writers' lock (:func:`~query.facts.locks.facts_lock`): a forget then
    either finished before it or finds it (:func:`building`)."""
    return int(
        await pg.fetchval(
            "INSERT INTO stage_state_builds (project_id, fingerprint, last_build, rebuilding_since) "
            "VALUES ($1, '', 1, now()) ON CONFLICT (project_id) DO UPDATE "
            "SET last_build = stage_state_builds.last_build + 1, rebuilding_since = now() RETURNING last_build",
            project_id,
        )
    )


async def building(pg: Any, project_id: str) -> int | None:
    """The build being computed for the project (begun, not serving yet), if one is; maybe one whose rebuild
    failed and will be retried under a newer number."""
    return await pg.fetchval(
        "SELECT last_build FROM stage_state_builds WHERE project_id = $1 AND rebuilding_since IS NOT NULL",
        project_id,
    )


async def current_definitions(pg: Any, project_id: str) -> Definitions:
    """The latest version of each of a project's maps and segments."""
    maps = [(validate_map(v.body), v.version) for v in await definitions.latest_of_each(pg, project_id, "map")]
    segments = [
        (validate_segment(v.body), v.version) for v in await definitions.latest_of_each(pg, project_id, "segment")
    ]
    return Definitions.of(maps, segments)


async def built_for(pg: Any, project_id: str, build: Build) -> Definitions | None:
    """The definitions ``build`` (a project's serving build) was computed for: ``None`` before the first build,
    or if one of them is gone."""
    if build.number == 0:
        return None
    return await definitions_of_build(pg, project_id, build.fingerprint)


async def definitions_of_build(pg: Any, project_id: str, fingerprint: str) -> Definitions | None:
    """The exact map and segment versions a build was computed for (``None`` if one is gone)."""
    wanted = []
    for part in fingerprint.split(";")[1:]:  # after the facts format: kind:name:version
        kind, name, version = part.split(":")
        wanted.append((kind, name, int(version)))
    found = await definitions.these_versions(pg, project_id, wanted)  # type: ignore[arg-type]
    if len(found) != len(wanted):
        return None
    maps = [(validate_map(found[w].body), w[2]) for w in wanted if w[0] == "map"]
    segments = [(validate_segment(found[w].body), w[2]) for w in wanted if w[0] == "segment"]
    built = Definitions.of(maps, segments)
    return built if built.fingerprint == fingerprint else None


_PROJECT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


async def drop_build(ch: ClickHouse, cluster: str, project_id: str, build: int) -> None:
    """Delete every fact and stored input of one build of a project at once: its partitions (migrations 0009,
    0010). Nothing is rewritten, and answers reading other builds are untouched."""
    # ALTER … DROP PARTITION takes a literal, not a bound parameter: project ids are generated ("p_" + hex).
    if not _PROJECT_ID.match(project_id):
        raise ValueError(f"not a project id: {project_id!r}")
    for table in ("stage_facts", "stage_inputs"):
        target = table_on_cluster(table, cluster)
        await ch.command(f"ALTER TABLE {target} DROP PARTITION ('{project_id}', {int(build)})")


# Garbage collection only: KPIs read the serving build, so rows of other builds never count. Previews being
# answered are spared (query/kpi_preview.py): every build below `below` is a published one or a preview left
# over from a crash.
OTHER_BUILDS_SQL = """
SELECT DISTINCT build FROM stage_facts
WHERE project_id = {project_id:String} AND build != {keep:UInt64} AND build < {below:UInt64}
UNION DISTINCT
SELECT DISTINCT build FROM stage_inputs
WHERE project_id = {project_id:String} AND build != {keep:UInt64} AND build < {below:UInt64}
"""


async def drop_other_builds(stores: Stores, project_id: str, keep: int) -> None:
    """Drop every build of the project but ``keep`` (previews being answered are spared), after every answer
    still reading one of them: call it holding the writers' lock (:func:`~query.facts.locks.facts_lock`)."""
    ch = stores.clickhouse
    _, others = await ch.query(
        OTHER_BUILDS_SQL,
        {"project_id": project_id, "keep": keep, "below": stale_previews_below(int(time.time() * 1000))},
    )
    async with facts_change(lock_pool(stores), project_id):
        for (other,) in others:
            await drop_build(ch, stores.settings.clickhouse_cluster, project_id, other)
