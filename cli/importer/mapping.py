"""Rows to events: the ``--map`` options, and how a CSV row or an NDJSON object becomes a Segment event.

``--map userId=customer_no`` takes a column, ``--map event=:Store Purchase`` a constant; columns named like
an event field (``userId`` or ``user_id``, ``timestamp``, ``event``, ``channel``, …) map themselves,
``properties.x``/``traits.x``/``context.x`` columns go there, and every other column becomes a property (a
trait for identify and group events), numbers as numbers. Timestamps are ISO 8601 or epoch
seconds/milliseconds (docs/import.md). A row that cannot be converted raises :class:`RowProblem`, which the
reader reports by the row's line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from journeys.errors import JourneysError

#: Top-level event fields a column can fill, and how its text is read.
ID_FIELDS = ("userId", "anonymousId", "messageId", "groupId", "previousId")
TIME_FIELDS = ("timestamp", "originalTimestamp")
TEXT_FIELDS = ("type", "event", "name", "category", "channel", "touchpoint", "sentiment")
TARGET_FIELDS = frozenset(ID_FIELDS + TIME_FIELDS + TEXT_FIELDS)
NESTED = ("properties", "traits", "context")
#: snake_case column names that map themselves too (exports rarely use camelCase).
ALIASES = {
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "message_id": "messageId",
    "group_id": "groupId",
    "previous_id": "previousId",
    "original_timestamp": "originalTimestamp",
}
#: Keys of a Segment event an NDJSON object keeps at the top level when it is mapped.
SEGMENT_KEYS = TARGET_FIELDS | frozenset(NESTED) | {"integrations", "sentAt"}

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")  # at most 18 digits: always within a signed 64-bit int
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)?\.[0-9]+(?:[eE][-+]?[0-9]+)?|-?(?:0|[1-9][0-9]*)(?:\.[0-9]*)?[eE][-+]?[0-9]+")
_EPOCH = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TIME_HELP = "expected ISO 8601 (2024-03-01T09:30:00Z) or epoch seconds/milliseconds"


class RowProblem(JourneysError):
    """A row that cannot become an event: reported by its line, and the import goes on."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# -- reading values --------------------------------------------------------------------------------------


def typed(text: str) -> Any:
    """A CSV cell as JSON: integers and decimals become numbers; anything else, including numbers with
    leading zeros (store codes, postcodes) and integers too large for 64 bits, stays text."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            return value
    return text


def iso_time(value: Any, field_name: str = "timestamp") -> str:
    """ISO 8601 text or epoch seconds/milliseconds (number or numeric text) → ISO 8601 UTC with ms.

    Epoch values of 10^11 and more are milliseconds: as seconds they would be past the year 5000, and as
    milliseconds anything below is before 1973, which no import of touchpoints needs."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            epoch = float(value)
        elif isinstance(value, str) and _EPOCH.fullmatch(value.strip()):
            epoch = float(value.strip())
        elif isinstance(value, str):
            text = value.strip()
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return _iso(parsed)
        else:
            raise ValueError
        seconds = epoch / 1000 if abs(epoch) >= 1e11 else epoch
        return _iso(datetime.fromtimestamp(seconds, timezone.utc))
    except (ValueError, OverflowError, OSError):
        raise RowProblem(field_name, f"unreadable timestamp {str(value)[:80]!r}: {_TIME_HELP}") from None


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the mapping -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapSource:
    column: str | None = None  # a column (CSV) or key (NDJSON) …
    constant: str | None = None  # … or a constant given as ``:text``


def parse_maps(specs: list[str]) -> dict[str, MapSource]:
    """``FIELD=COLUMN`` / ``FIELD=:constant`` options → {target: Source}; a bad one raises ValueError."""
    out: dict[str, MapSource] = {}
    for spec in specs:
        target, sep, source = spec.partition("=")
        target = target.strip()
        if not sep or not target or not source:
            raise ValueError(f"--map {spec!r}: expected FIELD=COLUMN or FIELD=:constant")
        _check_target(target)
        if target in out:
            raise ValueError(f"--map {target}: given twice")
        out[target] = MapSource(constant=source[1:]) if source.startswith(":") else MapSource(column=source)
    return out


def _check_target(target: str) -> None:
    head, dot, rest = target.partition(".")
    if target in TARGET_FIELDS or (dot and head in NESTED and rest and "" not in rest.split(".")):
        return
    raise ValueError(
        f"--map {target}=…: unknown field; use one of {', '.join(sorted(TARGET_FIELDS))}, "
        "or properties.NAME, traits.NAME, context.NAME"
    )


def _path(target: str) -> tuple[str, ...]:
    return tuple(target.split("."))


def _converter(target: str) -> Callable[[Any], Any]:
    if target in TIME_FIELDS:
        return lambda value: iso_time(value, target)
    if target in TARGET_FIELDS:
        return lambda value: value.strip() if isinstance(value, str) else value
    return lambda value: typed(value) if isinstance(value, str) else value


def _put(event: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = event
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


def _bucket(event: dict[str, Any]) -> str:
    return "traits" if event.get("type") in ("identify", "group") else "properties"


class CsvPlan:
    """A mapping compiled against a CSV header: which cell fills which field, and what goes to properties."""

    def __init__(self, header: list[str], maps: dict[str, MapSource], drop: set[str]):
        self.width = len(header)
        index: dict[str, int] = {}
        for i, name in enumerate(header):
            index.setdefault(name.strip(), i)
        self.fields: list[tuple[tuple[str, ...], int, str | None, Callable[[Any], Any]]] = []
        claimed: set[int] = set()
        for target, source in maps.items():
            if source.column is None:
                self.fields.append((_path(target), -1, source.constant, _converter(target)))
                continue
            if source.column not in index:
                raise ValueError(
                    f"--map {target}={source.column}: no such column (the header has: {', '.join(header)})"
                )
            claimed.add(index[source.column])
            self.fields.append((_path(target), index[source.column], None, _converter(target)))
        self.extras: list[tuple[int, str]] = []
        for i, raw_name in enumerate(header):
            name = raw_name.strip()
            if i in claimed or name in drop or not name:
                continue
            target = ALIASES.get(name, name)
            head, dot, rest = target.partition(".")
            if (target in TARGET_FIELDS or (dot and head in NESTED and rest)) and target not in maps:
                self.fields.append((_path(target), i, None, _converter(target)))
            else:
                self.extras.append((i, name))
        self.has_type = any(path == ("type",) for path, *_ in self.fields)

    def event(self, row: list[str]) -> dict[str, Any]:
        if len(row) != self.width:
            raise RowProblem("(row)", f"{len(row)} fields where the header has {self.width}")
        event: dict[str, Any] = {}
        for path, column, constant, convert in self.fields:
            raw = constant if column < 0 else row[column]
            if raw:  # an empty cell is no value
                _put(event, path, convert(raw))
        if not self.has_type:
            event["type"] = "track"
        if self.extras:
            bucket = event.get(_bucket(event))
            if not isinstance(bucket, dict):
                bucket = event[_bucket(event)] = {}
            for column, name in self.extras:
                raw = row[column]
                if raw:
                    bucket[name] = typed(raw)
        return event


class ObjectPlan:
    """The mapping applied to NDJSON objects: mapped keys move, Segment's own keys stay, the rest go to
    properties (traits for identify/group). Values keep their JSON types; timestamps are converted."""

    def __init__(self, maps: dict[str, MapSource], drop: set[str]):
        self.maps = [(_path(t), s, _converter(t)) for t, s in maps.items()]
        self.consumed = {s.column for s in maps.values() if s.column is not None} | drop
        self.targets = set(maps)

    def event(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise RowProblem("(line)", "must be a JSON object: one event per line")
        event: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for key, value in obj.items():
            if key in self.consumed:
                continue
            target = ALIASES.get(key, key)
            if target in SEGMENT_KEYS and target not in self.targets:
                event[target] = iso_time(value, target) if target in TIME_FIELDS and value is not None else value
            else:
                extras[key] = value
        for path, source, convert in self.maps:
            value = source.constant if source.column is None else obj.get(source.column)
            if value is not None and value != "":
                _put(event, path, convert(value))
        event.setdefault("type", "track")
        if extras:
            bucket = event.get(_bucket(event))
            if not isinstance(bucket, dict):
                bucket = event[_bucket(event)] = {}
            for key, value in extras.items():
                bucket.setdefault(key, value)
        return event
