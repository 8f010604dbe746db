"""``journeys import FILE``: historical events from a CSV or NDJSON file (gzip'd or not) into a project.

The file is read a chunk at a time (a few MB of rows) in a reader thread that turns rows into Segment
events, while the main thread sends the previous chunk to the collector's ``POST /v1/import``
(collector/imports.py): the CLI's conversion and the collector's validation overlap, and memory holds
two chunks whatever the file's size.

Rows become events through a mapping (docs/import.md): ``--map userId=customer_no`` takes a column,
``--map event=:Store Purchase`` a constant; columns named like an event field (``userId`` or
``user_id``, ``timestamp``, ``event``, ``channel``, …) map themselves, ``properties.x``/``traits.x``/
``context.x`` columns go there, and every other column becomes a property (a trait for identify and
group events), numbers as numbers. Timestamps are ISO 8601 or epoch seconds/milliseconds.

Bad rows are reported by their line in the *original file*: the CLI refuses what it cannot convert
(an unreadable timestamp, a row with the wrong number of fields) and maps the collector's per-line
errors back through each chunk's line table. A collector that is restarting or whose spool is full is
waited for and the chunk resent from its last durable line; re-sending is safe because every event has a
deterministic id (its messageId, or one the collector derives from its content).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import csv
import gzip
import io
import math
import os
import queue
import re
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, Callable
from urllib.parse import urlsplit

import orjson

from journeys.config import Settings
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
CHUNK_ROWS = 20_000
CHUNK_BYTES = 8 * 1024 * 1024
MAX_LISTED = 1000
IN_FLIGHT = 2
#: Answers that mean "not now": spool full (with the line to resume from), rate limited, a proxy's hiccup.
RETRYABLE = frozenset({429, 502, 503, 504})
FIRST_LINE_HEADER = "X-Import-First-Line"

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")  # at most 18 digits: always within a signed 64-bit int
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)?\.[0-9]+(?:[eE][-+]?[0-9]+)?|-?(?:0|[1-9][0-9]*)(?:\.[0-9]*)?[eE][-+]?[0-9]+")
_EPOCH = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TIME_HELP = "expected ISO 8601 (2024-03-01T09:30:00Z) or epoch seconds/milliseconds"


class ImportFailed(JourneysError):
    """The import cannot go on; the message says why and from which line to resume."""


class RowProblem(JourneysError):
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


# -- reading the file in chunks --------------------------------------------------------------------------


@dataclass
class Chunk:
    """Body lines for one request, and where they came from."""

    lines: list[bytes] = field(default_factory=list)
    #: The file line of each body line; None when body line i *is* file line first_line + i (raw NDJSON).
    file_lines: list[int] | None = field(default_factory=list)
    first_line: int = 1
    refused: list[dict[str, Any]] = field(default_factory=list)  # rows the CLI could not convert
    rows: int = 0  # data rows of the file in this chunk, sent or refused
    position: int = 0  # bytes of the (possibly compressed) file read by the end of this chunk
    nbytes: int = 0


class InputFile:
    """The input: a path or ``-`` (stdin), gzip'd or not (by its first bytes), with its read position."""

    def __init__(self, path: str):
        self.path = path
        self.raw: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        self.size = None if path == "-" else os.fstat(self.raw.fileno()).st_size
        head = self.raw.peek(2)[:2] if hasattr(self.raw, "peek") else b""
        self.gzipped = head == b"\x1f\x8b"
        self.stream: BinaryIO = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gzipped else self.raw  # type: ignore[assignment]

    @property
    def position(self) -> int:
        try:
            return self.raw.tell()
        except OSError:
            return 0

    def close(self) -> None:
        if self.stream is not self.raw:
            self.stream.close()
        if self.raw is not sys.stdin.buffer:
            self.raw.close()


def detect_format(path: str, given: str | None) -> str:
    if given:
        return given
    name = path.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    raise ValueError(f"{path}: cannot tell the format from the name; give --format csv or --format ndjson")


def csv_chunks(
    source: InputFile, maps: dict[str, MapSource], drop: set[str], delimiter: str, encoding: str, start_line: int
) -> Iterator[Chunk]:
    text = io.TextIOWrapper(source.stream, encoding=encoding, newline="", errors="strict")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{source.path}: empty file, expected a header row") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{source.path}: line 1 (header): {exc}") from None
    plan = CsvPlan(header, maps, drop)
    chunk = Chunk()
    line = reader.line_num
    dumps = orjson.dumps
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except (UnicodeDecodeError, csv.Error) as exc:
            # A broken row cannot be skipped reliably: the reader's position is lost. Stop, saying where.
            raise ImportFailed(f"{source.path}: line {start}: {exc}") from None
        line = reader.line_num
        if not row or start < start_line:
            continue
        chunk.rows += 1
        try:
            body = dumps(plan.event(row))
        except RowProblem as problem:
            chunk.refused.append({"line": start, "field": problem.field, "reason": problem.reason})
        else:
            chunk.lines.append(body)
            chunk.file_lines.append(start)  # type: ignore[union-attr]
            chunk.nbytes += len(body)
        if chunk.rows >= CHUNK_ROWS or chunk.nbytes >= CHUNK_BYTES:
            chunk.position = source.position
            yield chunk
            chunk = Chunk()
    chunk.position = source.position
    yield chunk


def ndjson_chunks(source: InputFile, plan: ObjectPlan | None, start_line: int) -> Iterator[Chunk]:
    """Raw lines when there is no mapping (the collector numbers them as the file does); otherwise each
    line is parsed, mapped and re-encoded."""
    chunk = Chunk(file_lines=None if plan is None else [], first_line=start_line)
    for number, raw in enumerate(source.stream, 1):
        if number < start_line:
            continue
        line = raw.rstrip(b"\r\n")
        blank = not line.strip()
        if plan is None:
            chunk.lines.append(line)
            chunk.nbytes += len(line)
            chunk.rows += not blank
        elif not blank:
            chunk.rows += 1
            try:
                body = orjson.dumps(plan.event(orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                chunk.refused.append({"line": number, "field": "(line)", "reason": f"invalid JSON: {exc}"})
            except RowProblem as problem:
                chunk.refused.append({"line": number, "field": problem.field, "reason": problem.reason})
            else:
                chunk.lines.append(body)
                chunk.file_lines.append(number)  # type: ignore[union-attr]
                chunk.nbytes += len(body)
        if chunk.rows >= CHUNK_ROWS or chunk.nbytes >= CHUNK_BYTES:
            chunk.position = source.position
            yield chunk
            chunk = Chunk(file_lines=None if plan is None else [], first_line=number + 1)
    chunk.position = source.position
    yield chunk


# -- progress --------------------------------------------------------------------------------------------


class Progress:
    """Bytes and rows done, rate and ETA on stderr: one redrawn line on a terminal, a plain line every few
    seconds otherwise (logs, CI)."""

    def __init__(self, total_bytes: int | None, enabled: bool, stream: Any = sys.stderr):
        self.total = total_bytes
        self.enabled = enabled
        self.stream = stream
        self.tty = enabled and stream.isatty()
        self.began = time.monotonic()
        self.last_drawn = 0.0
        self.last_rows = -1
        self.interval = 0.2 if self.tty else 5.0

    def update(self, position: int, rows: int, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last_drawn < self.interval:
            return
        if final and not self.tty and rows == self.last_rows:
            return  # the last plain line already says it
        self.last_drawn, self.last_rows = now, rows
        elapsed = max(now - self.began, 1e-6)
        rate = rows / elapsed
        parts = []
        if self.total:
            fraction = min(position / self.total, 1.0)
            parts.append(f"{fraction * 100:3.0f}%")
            if self.tty:
                filled = int(fraction * 24)
                parts.append("[" + "#" * filled + "." * (24 - filled) + "]")
            parts.append(f"{_size(position)}/{_size(self.total)}")
        else:
            parts.append(_size(position))
        parts.append(f"{rows:,} rows")
        parts.append(f"{rate:,.0f} rows/s")
        if self.total and 0 < position < self.total and not final:
            parts.append(f"ETA {_duration(elapsed * (self.total - position) / position)}")
        text = " ".join(parts)
        if self.tty:
            self.stream.write("\r" + text.ljust(78) + ("\n" if final else ""))
        else:
            self.stream.write("import: " + text + "\n")
        self.stream.flush()


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- sending ---------------------------------------------------------------------------------------------


@dataclass
class Sent:
    """What the collector did with one chunk (the CLI's own refusals not included)."""

    accepted: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # with file line numbers
    unlisted: int = 0  # errors the collector counted but did not list (over its cap)


@dataclass
class Totals:
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_total: int = 0
    position: int = 0
    last_line: int = 0  # every file line up to this one is done: stored or reported

    def absorb(self, chunk: Chunk, sent: Sent) -> None:
        """Count a finished chunk; chunks are absorbed in file order, so the listed errors are the first."""
        self.rows += chunk.rows
        self.accepted += sent.accepted
        self.rejected += sent.rejected + len(chunk.refused)
        for error in sorted(chunk.refused + sent.errors, key=lambda e: e["line"]):
            self.errors_total += 1
            if len(self.errors) < MAX_LISTED:
                self.errors.append(error)
        self.errors_total += sent.unlisted
        self.position = chunk.position
        self.last_line = max(self.last_line, _last_line(chunk))


class Sender:
    """Posts chunks to ``/v1/import``, resending from the last durable line while the collector is busy
    or away, for up to ``retry_for`` seconds per chunk."""

    def __init__(self, session: Any, url: str, key: str, *, compress: bool, retry_for: float):
        self.session = session
        self.url = url.rstrip("/") + "/v1/import"
        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        self.compress = compress
        self.retry_for = retry_for

    async def send(self, chunk: Chunk) -> Sent:
        import aiohttp

        sent = Sent()
        offset = 0 if chunk.file_lines is not None else chunk.first_line - 1  # body line i ↔ offset + i
        start = 0  # body lines before this index are done
        deadline = time.monotonic() + self.retry_for
        pause = 0.5
        while start < len(chunk.lines) and any(line.strip() for line in chunk.lines[start:]):
            body = b"\n".join(chunk.lines[start:]) + b"\n"
            headers = {
                "Authorization": self.auth,
                "Content-Type": "application/x-ndjson",
                FIRST_LINE_HEADER: str(offset + start + 1),
            }
            if self.compress:
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            try:
                async with self.session.post(self.url, data=body, headers=headers) as resp:
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                    try:
                        answer = await resp.json(content_type=None)
                    except ValueError:
                        answer = {"errors": [{"field": "body", "reason": (await resp.text())[:300]}]}
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                # The collector is restarting or unreachable: resend the rest of the chunk (already stored
                # events keep their ids, so nothing is counted twice).
                if time.monotonic() + pause > deadline:
                    raise ImportFailed(f"cannot reach {self.url}: {exc}") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            if not isinstance(answer, dict):
                answer = {"errors": [{"field": "body", "reason": str(answer)[:300]}]}
            if "last_durable_line" in answer:
                # The counts cover exactly the lines through last_durable_line: add them, resend the rest.
                self._account(chunk, answer, sent)
                start = max(start, int(answer["last_durable_line"]) - offset)
            if status in RETRYABLE and time.monotonic() < deadline:
                await asyncio.sleep(_seconds(retry_after, pause))
                pause = min(pause * 2, 10.0)
                continue
            problems = [e for e in answer.get("errors", []) if isinstance(e, dict) and "line" not in e]
            if status in (200, 400) and "last_durable_line" in answer and not problems:
                return sent
            reasons = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in (problems or answer.get("errors", [])))
            raise ImportFailed(f"the collector answered {status}: {reasons or answer}")
        return sent

    @staticmethod
    def _account(chunk: Chunk, answer: dict[str, Any], sent: Sent) -> None:
        sent.accepted += int(answer.get("accepted", 0))
        sent.rejected += int(answer.get("rejected", 0))
        lines = chunk.file_lines
        listed = 0
        for error in answer.get("errors", []):
            if "line" not in error:
                continue
            n = int(error["line"])
            sent.errors.append({**error, "line": lines[n - 1] if lines is not None else n})
            listed += 1
        sent.unlisted += max(int(answer.get("errors_total", 0)) - listed, 0)


def _seconds(retry_after: str | None, default: float) -> float:
    try:
        return min(max(float(retry_after or ""), 0.1), 30.0)
    except ValueError:
        return default


# -- the command -----------------------------------------------------------------------------------------


def add_import_command(sub: Any) -> None:
    cmd = sub.add_parser(
        "import",
        help="import historical events from a CSV or NDJSON file (gzip'd too) through the collector",
        description="Rows become Segment events (docs/import.md). Re-importing a file counts each event once.",
    )
    cmd.add_argument("file", help="CSV or NDJSON file, optionally .gz; - for stdin (with --format)")
    who = cmd.add_mutually_exclusive_group(required=True)
    who.add_argument("--project", help="project name or id (a temporary write key is made and revoked after)")
    who.add_argument("--write-key", help="the project's write key (no database access needed)")
    cmd.add_argument("--collector", help="collector URL (default: this machine's collector from the settings)")
    cmd.add_argument("--format", choices=["csv", "ndjson"], help="default: from the file name")
    cmd.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="fill an event field from a column, or from a constant with FIELD=:text (repeatable), e.g. "
        "--map userId=customer_no --map event=:Store Purchase; FIELD may be properties.NAME etc.",
    )
    cmd.add_argument("--drop", action="append", default=[], metavar="COLUMN", help="leave a column out (repeatable)")
    cmd.add_argument("--delimiter", default=None, help="CSV delimiter (default , or tab for .tsv; 'tab' works)")
    cmd.add_argument("--encoding", default="utf-8-sig", help="CSV text encoding (default utf-8, BOM or not)")
    cmd.add_argument("--start-line", type=int, default=1, metavar="N", help="skip the file's lines before N (resuming)")
    cmd.add_argument(
        "--gzip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compress requests (default: only to a collector on another machine)",
    )
    cmd.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="keep retrying a busy or unreachable collector this long per chunk (default 300)",
    )
    cmd.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    cmd.add_argument("--json", action="store_true", help="print the summary as JSON")


async def run_import(settings: Settings, args: argparse.Namespace, with_project: Any) -> int:
    try:
        maps = parse_maps(args.map)
        fmt = detect_format(args.file, args.format)
        if args.start_line < 1:
            raise ValueError("--start-line must be 1 or more")
        if args.file == "-" and not args.format:
            raise ValueError("reading stdin needs --format")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    collector = args.collector or default_collector_url(settings)
    parts = urlsplit(collector)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"error: --collector {collector!r}: expected http(s)://HOST[:PORT]", file=sys.stderr)
        return 2
    if args.write_key:
        return await _import(args, fmt, maps, collector, args.write_key)

    async def work(conn, project_id):
        from journeys.keys import add_key, revoke_key

        secret = await add_key(conn, project_id, "write")
        try:
            return await _import(args, fmt, maps, collector, secret)
        finally:
            await revoke_key(conn, secret)

    return await with_project(settings, args.project, work)


def default_collector_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.collector_host in ("0.0.0.0", "::", "") else settings.collector_host
    return f"http://{host}:{settings.collector_port}"


async def _import(args: argparse.Namespace, fmt: str, maps: dict[str, MapSource], collector: str, key: str) -> int:
    import aiohttp

    try:
        source = InputFile(args.file)
    except OSError as exc:
        print(f"error: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    drop = set(args.drop)
    delimiter = args.delimiter or ("\t" if args.file.lower().removesuffix(".gz").endswith(".tsv") else ",")
    delimiter = "\t" if delimiter.lower() in ("tab", "\\t") else delimiter
    if fmt == "csv":
        chunks: Iterator[Chunk] = csv_chunks(source, maps, drop, delimiter, args.encoding, args.start_line)
    else:
        plan = ObjectPlan(maps, drop) if (maps or drop) else None
        chunks = ndjson_chunks(source, plan, args.start_line)
    host = urlsplit(collector).hostname or ""
    compress = args.gzip if args.gzip is not None else host not in ("127.0.0.1", "localhost", "::1")
    progress = Progress(source.size, not args.no_progress)
    totals = Totals(last_line=args.start_line - 1)
    reader = _Reader(chunks)
    began = time.monotonic()
    failure: str | None = None
    usage = False
    in_flight: collections.deque[tuple[Chunk, asyncio.Task[Sent]]] = collections.deque()
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sender = Sender(session, collector, key, compress=compress, retry_for=args.retry_for)
            # Two requests in flight: the collector reads the next chunk while it fsyncs and answers the
            # previous one, instead of idling for a round trip per chunk. Results are counted in file order.
            while (chunk := await reader.next()) is not None:
                in_flight.append((chunk, asyncio.create_task(sender.send(chunk))))
                if len(in_flight) >= IN_FLIGHT:
                    done, task = in_flight.popleft()
                    totals.absorb(done, await task)
                    progress.update(totals.position, totals.rows)
            while in_flight:
                done, task = in_flight.popleft()
                totals.absorb(done, await task)
                progress.update(totals.position, totals.rows)
    except ValueError as exc:  # the file does not fit the options (a mapped column missing, no header)
        failure, usage = str(exc), True
    except ImportFailed as exc:
        failure = str(exc)
    finally:
        for _, task in in_flight:
            task.cancel()
        await asyncio.gather(*(task for _, task in in_flight), return_exceptions=True)
        reader.stop()
        source.close()
    elapsed = time.monotonic() - began
    if usage:
        print(f"error: {failure}", file=sys.stderr)
        return 2
    progress.update(totals.position, totals.rows, final=True)
    _summary(args, totals, elapsed, failure)
    if failure:
        return 1
    return 0 if totals.rejected == 0 else 1


def _last_line(chunk: Chunk) -> int:
    if chunk.file_lines is None:
        return chunk.first_line + len(chunk.lines) - 1
    last = [chunk.file_lines[-1]] if chunk.file_lines else []
    last += [e["line"] for e in chunk.refused[-1:]]
    return max(last, default=0)


def _summary(args: argparse.Namespace, totals: Totals, elapsed: float, failure: str | None) -> None:
    rate = totals.rows / elapsed if elapsed > 0 else 0.0
    if args.json:
        print(
            orjson.dumps(
                {
                    "file": args.file,
                    "rows": totals.rows,
                    "accepted": totals.accepted,
                    "rejected": totals.rejected,
                    "seconds": round(elapsed, 3),
                    "rows_per_second": round(rate),
                    "errors": totals.errors,
                    "errors_total": totals.errors_total,
                    "completed": failure is None,
                    **({"error": failure, "resume_from_line": totals.last_line + 1} if failure else {}),
                }
            ).decode()
        )
    else:
        print(
            f"imported {args.file}: {totals.rows:,} rows read, {totals.accepted:,} accepted, "
            f"{totals.rejected:,} rejected, in {elapsed:.1f} s ({rate:,.0f} rows/s)"
        )
        kinds = {(e["field"], e["reason"]) for e in totals.errors}
        if len(kinds) == 1 and totals.errors_total > 1 and totals.errors_total == len(totals.errors):
            # Rows that all fail alike are one problem, said once (a thousand identical lines hide the fix).
            (field_name, reason), lines = kinds.pop(), [e["line"] for e in totals.errors]
            every = "every row" if totals.accepted == 0 else f"{totals.errors_total:,} rows"
            print(f"{every} rejected for one reason: {field_name}: {reason} (lines {min(lines)}–{max(lines)})")
            print(f"  likely fix: {_likely_fix(args, field_name)}")
        elif totals.errors:
            print("rejected rows (line: field: reason):")
            for error in totals.errors:
                print(f"  line {error['line']}: {error['field']}: {error['reason']}")
            if totals.errors_total > len(totals.errors):
                print(
                    f"  … and {totals.errors_total - len(totals.errors):,} more (the first {len(totals.errors):,} are listed)"
                )
    if failure:
        print(
            f"error: {failure}\nEvery row through line {totals.last_line} is stored or listed above; "
            f"resume with --start-line {totals.last_line + 1} (or re-run: re-imported rows are not counted twice)",
            file=sys.stderr,
        )


def _likely_fix(args: argparse.Namespace, field_name: str) -> str:
    """What usually makes every row fail on ``field_name``: columns not mapped to the event's fields."""
    if getattr(args, "map", None):
        return (
            f"check the --map option that should fill {field_name!r} (FIELD=COLUMN names a column of the "
            "file; FIELD=:value a constant); docs/import.md"
        )
    return (
        f"the file's columns are not mapped to event fields: name the one for {field_name!r} with "
        f"--map {field_name}=COLUMN (and e.g. --map userId=COLUMN --map timestamp=COLUMN); docs/import.md"
    )


class _Reader:
    """Runs the chunk iterator in a thread, at most two chunks ahead, so reading and converting the file
    overlaps the collector's work on the previous chunk."""

    _END = object()

    def __init__(self, chunks: Iterator[Chunk]):
        self._chunks = chunks
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="import-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(chunk):
                    return
            self._put(self._END)
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt .gz, a read error
            self._put(ImportFailed(f"cannot read the file: {exc}"))
        except BaseException as exc:  # handed to the main thread, which reports it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    async def next(self) -> Chunk | None:
        item = await asyncio.get_running_loop().run_in_executor(None, self._queue.get)
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
