"""What the stage facts are computed against, and what a fact row is.

A KPI call must not rescan every event, nor fold every customer (docs/kpis.md): each stitched customer's
journey through each of the project's maps is condensed into facts — the first entry into every stage and
when they moved on, every transition, sentiment-bearing touchpoints — each with the segment keys the
customer counts under, and KPIs sum the facts' pre-aggregated projections. :class:`Definitions` are the map and
segment versions a build of the facts is computed for; its fingerprint names them, its :attr:`facts_key`
says what of them the facts depend on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from query.journey import CompiledMap
from query.maps import JourneyMap, Segment, Stage

DAY_MS = 86_400_000
# Part of every build fingerprint: a store written in another format is rebuilt (facts:2: before migration
# 0009 partitioned stage_facts by project and build; facts:3: before migration 0010 kept each customer's
# inputs in stage_inputs; facts:4: before migration 0011 wrote a fact once per segment key; facts:5: before
# migration 0012 held a fact's segment keys as an array). Bump it too when what a customer's stored inputs hold
# changes (query/facts/compute.py, the inputs statement): a rebuild for definitions that store the same inputs
# copies the serving build's, so without a new format inputs written by older code would be carried forward
# (facts:6: before the stored rule numbers were the touchpoints' places in id order, MapVersion.rule_numbers).
FACTS_FORMAT = "facts:7"

# A fact row's segment keys are one text, joined by this (migration 0012: ',b2b,vip'; '' in no segment).
# Segment names are slugs (query/maps.py SLUG), so it never occurs in one.
KEY_SEPARATOR = ","


def split_keys(text: str) -> str:
    """SQL: the keys a ``segments`` text (``text``: a column or expression) holds, as an array (``''`` first)."""
    return f"splitByChar('{KEY_SEPARATOR}', {text})"


def holds_key(text: str, key: str) -> str:
    """SQL: whether the ``segments`` text ``text`` holds ``key`` (a bound text; ``''``, all customers, is held by
    every row). It finds ``,key,`` in the text: a function of the LowCardinality column, computed once per key
    set of its dictionary, not split per row (1 M customers, one segment's stage_kpis p50: 208 → 160 ms)."""
    s = KEY_SEPARATOR
    return f"({key} = '' OR position(concat({text}, '{s}'), concat('{s}', {key}, '{s}')) > 0)"


FACT_COLUMNS = (
    "project_id",
    "map_name",
    "build",
    "customer_id",
    "segments",
    "fact",
    "stage",
    "at",
    "converted",
    "wait_ms",
    "touchpoint",
    "channel",
    "from_stage",
    "move_kind",
    "repeat",
    "sentiment",
    "n",
)


def conversion_window_ms(stage: Stage) -> int:
    """A stage's conversion window in ms: what "converted" means in the facts and in the KPIs."""
    return int(round(stage.conversion_window_days * DAY_MS))


@dataclass(frozen=True)
class MapVersion:
    """The latest version of one map, compiled for both paths (Python rules and the SQL rule index)."""

    compiled: CompiledMap

    @property
    def name(self) -> str:
        return self.compiled.map.name

    @property
    def version(self) -> int:
        return self.compiled.version

    @cached_property
    def stored_rules(self) -> tuple[Any, ...]:
        """The map's rules in the order of their numbers in the stored inputs: by touchpoint id (ids are unique
        in a map), not by the order rules are tried in. A rule edit that keeps each touchpoint's id then keeps
        every number the inputs hold: reordered or narrowed rules need no renumbering, and an edit that stages
        every event alike serves the build as it is (query/facts/updater.py, ``_relabel_rules``)."""
        return tuple(sorted(self.compiled.rules, key=lambda rule: rule.touchpoint.id))

    @cached_property
    def rule_numbers(self) -> list[int]:
        """The number the stored inputs give each rule, in map order (1-based: 0 is "no rule")."""
        place = {rule.touchpoint.id: i for i, rule in enumerate(self.stored_rules, start=1)}
        return [place[rule.touchpoint.id] for rule in self.compiled.rules]

    @cached_property
    def windows_ms(self) -> list[int]:
        """Each stage's conversion window, in stage order."""
        by_id = {s.id: s for s in self.compiled.map.stages}
        return [conversion_window_ms(by_id[s]) for s in self.compiled.order]


@dataclass(frozen=True)
class Definitions:
    """What a project's state rows are computed against: its maps' and segments' latest versions."""

    maps: tuple[MapVersion, ...]
    segments: tuple[Segment, ...]
    fingerprint: str

    @staticmethod
    def of(maps: list[tuple[JourneyMap, int]], segments: list[tuple[Segment, int]]) -> "Definitions":
        maps = sorted(maps, key=lambda mv: mv[0].name)
        segments = sorted(segments, key=lambda sv: sv[0].name)
        fingerprint = ";".join(
            [FACTS_FORMAT] + [f"map:{m.name}:{v}" for m, v in maps] + [f"segment:{s.name}:{v}" for s, v in segments]
        )
        return Definitions(
            tuple(MapVersion(CompiledMap(m, v)) for m, v in maps), tuple(s for s, _ in segments), fingerprint
        )

    @cached_property
    def facts_key(self) -> str:
        """What the facts depend on, and nothing else: two definitions with one key have the same facts, so a
        build computed for one serves the other as it is. Targets, names and descriptions are read from the map
        when an answer is made, never stored in the facts: a target edit needs no recomputation."""
        return _facts_key(self.maps, self.segments)

    def map_facts_key(self, name: str) -> str | None:
        """What the facts of the map ``name`` depend on besides the project's other maps (``None``: no such
        map): a build of the project's maps holding a map of this key holds the facts a draft of this key gets
        once applied, the other maps unchanged. What lets a preview of a draft that changes only targets, names
        or descriptions answer from the serving build (query/kpi_preview.py)."""
        found = tuple(mv for mv in self.maps if mv.name == name)
        return _facts_key(found, self.segments) if found else None

    @cached_property
    def staging_free_key(self) -> str:
        """What the facts depend on besides which touchpoint, with which sentiment, each event is: the
        touchpoints' rules and their order left out, each touchpoint's stage kept. Two definitions with one key
        give the same facts to every customer whose events both stage alike, so a rule edit's new build can
        copy those customers' facts instead of folding them (query/facts/restage.py)."""
        return _facts_key(self.maps, self.segments, staging=False)

    @cached_property
    def window_free_key(self) -> str:
        """What the facts depend on besides the stages' conversion windows. Two definitions with one key give
        every customer the same facts but for whether an entry converted (and its wait): a build of one serves the
        other once the entries whose outcome the windows change are corrected (query/facts/compute.py,
        ``FactsSql.insert_reconverted``)."""
        return _facts_key(self.maps, self.segments, windows=False)


def _facts_key(
    maps: tuple[MapVersion, ...], segments: tuple[Segment, ...], staging: bool = True, windows: bool = True
) -> str:
    excluded = _NOT_IN_FACTS if windows else _NOT_IN_WINDOW_FREE_FACTS
    dumped = [mv.compiled.map.model_dump(mode="json", exclude=excluded) for mv in maps]
    if not staging:
        for shown_map in dumped:
            shown_map["touchpoints"] = sorted((tp["id"], tp["stage"]) for tp in shown_map["touchpoints"])
    shown = {
        "format": FACTS_FORMAT,
        "maps": dumped,
        "segments": [s.model_dump(mode="json", exclude={"description"}) for s in segments],
    }
    return hashlib.sha256(orjson.dumps(shown, option=orjson.OPT_SORT_KEYS)).hexdigest()


# The parts of a map the facts never read (query/facts/compute.py reads stage ids, order and conversion
# windows, touchpoints, and the map's name).
_NOT_IN_FACTS: Any = {
    "description": True,
    "stages": {"__all__": {"name", "description", "target"}},
    "touchpoints": {"__all__": {"description"}},
}
# ... and the stages' conversion windows: what Definitions.window_free_key leaves out.
_NOT_IN_WINDOW_FREE_FACTS: Any = {
    **_NOT_IN_FACTS,
    "stages": {"__all__": {"name", "description", "target", "conversion_window_days"}},
}
