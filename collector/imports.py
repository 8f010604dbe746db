"""Bulk import: ``POST /v1/import``, historical events from stores, CRMs and other offline systems.

The body is NDJSON, one Segment-style event per line, optionally gzip'd, and may be hundreds of MB. It is
*streamed*: read from the socket a piece at a time, inflated a bounded step at a time, cut into lines, and
every few thousand lines taken through the same accept steps as ``/v1/batch`` (:mod:`collector.accept`:
validated, encoded, appended to the spool as one record). Memory stays bounded by two chunks (one being
read, one being fsync'd: the two overlap), whatever the file's size.

What differs from ``/v1/batch``, and why:

* **Times are kept as sent.** Historical data has no device clock to correct, so ``sentAt`` is ignored (and
  not stored) and every line needs a ``timestamp``: stamping a year-old sale with the import time would be
  silently wrong. Absurd times (before 2000, past the clock-skew allowance) are still refused.
* **Deterministic ids.** A line without ``messageId`` gets one derived from the project and the event's
  canonical JSON (:func:`derive_message_id`), so importing a file twice stores the same ids and reads,
  which de-duplicate by ``(project, messageId)``, count each event once (docs/import.md).
* **Bad lines are reported, not quarantined.** The response lists each bad line by number with the field and
  reason; the file is the copy of what was refused, and quarantining would duplicate it on every re-import.
* **Partial success is normal.** A stream can fail half-way (spool full for too long, a corrupt gzip tail,
  the size cap): whatever was accepted before that point is durable, and every response says up to which
  line (``last_durable_line``) so the client resumes after it. Line numbers are the client's own: a
  resumed upload says where it starts with ``X-Import-First-Line``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import ClientError, web
from aiohttp.http_exceptions import HttpProcessingError

from collector.accept import Limits, append, authorize, count_refusal, prepare
from collector.appkeys import METRICS, SPOOL, STORES
from collector.ingest import inflater_for
from collector.spool import Spool, SpoolError, SpoolFull
from journeys.config import Settings
from journeys.errors import JourneysError
from journeys.http import ApiError, json_response, presented_key, request_id
from journeys.metrics import Metrics

log = logging.getLogger(__name__)

FIRST_LINE_HEADER = "X-Import-First-Line"
#: Lines validated and spooled together: one spool record and fsync, and ~10-30 ms of event-loop time, so
#: other requests on this collector wait no longer than that behind an import (5000 measured no faster).
CHUNK_LINES = 2000
CHUNK_BYTES = 8 * 1024 * 1024
#: Bad lines listed in a response; the total is always given.
MAX_LISTED_ERRORS = 1000
_READ_BYTES = 256 * 1024
_INFLATE_STEP = 1024 * 1024
#: Fixed for ever: changing it would give every re-imported line a new id and double-count it.
MESSAGE_ID_NAMESPACE = uuid.UUID("6f1d2c3e-9a57-5b8e-a4f0-3c2b1e0d9f87")
_NAMESPACE_BYTES = MESSAGE_ID_NAMESPACE.bytes

routes = web.RouteTableDef()


def derive_message_id(project_id: str, event: dict[str, Any]) -> str | None:
    """A UUIDv5 of the project and the event's canonical JSON (compact, keys sorted at every level): the
    same event always gets the same id, however its keys were ordered or spaced. ``None`` for an event that
    cannot be serialized (nested too deep), which validation refuses anyway."""
    try:
        canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return None
    # uuid.uuid5(namespace, f"{project_id}\n{canonical}") by hand, over bytes: the same value (tested) at
    # a third of the cost, which matters once per line of a million-line file.
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + project_id.encode() + b"\n" + canonical).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class StreamProblem(JourneysError):
    """The body cannot be read further (bad or truncated compression, over the size cap). Lines before this
    point were handed out whole and are processed normally."""

    def __init__(self, status: int, field: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.field = field
        self.reason = reason


class _TooLong:
    """Stands in for a line over the per-line cap; its bytes were skipped, never buffered."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int):
        self.nbytes = nbytes


async def split_lines(
    pieces: AsyncIterator[bytes], content_encoding: str, *, max_line_bytes: int, max_total_bytes: int
) -> AsyncGenerator[list[bytes | _TooLong], None]:
    """The body's lines, a list per piece read (without their ``\\n``). Inflates at most ``_INFLATE_STEP``
    bytes at a time and never holds more than one line over ``max_line_bytes``: a longer line is skipped
    and handed out as :class:`_TooLong`. Raises :class:`StreamProblem` where the body stops making sense,
    after handing out every whole line before that point."""
    inflater = inflater_for(content_encoding)
    encoding = content_encoding.strip().lower()
    total = 0
    partial = b""
    skipping = 0  # > 0: inside an over-long line, this many bytes of it seen

    def take(data: bytes) -> list[bytes | _TooLong]:
        """The whole lines ``data`` completes; past the size cap, only those that end within it."""
        nonlocal partial, skipping, total
        total += len(data)
        if total > max_total_bytes:
            data = data[: max(0, len(data) - (total - max_total_bytes))]
        out: list[bytes | _TooLong] = []
        if skipping:
            end = data.find(b"\n")
            if end < 0:
                skipping += len(data)
                return out
            out.append(_TooLong(skipping + end))
            skipping = 0
            data = data[end + 1 :]
        parts = (partial + data).split(b"\n")
        partial = parts.pop()
        for part in parts:
            out.append(part if len(part) <= max_line_bytes else _TooLong(len(part)))
        if len(partial) > max_line_bytes:
            skipping, partial = len(partial), b""
        return out

    def over() -> StreamProblem:
        return StreamProblem(413, "body", f"over the {max_total_bytes}-byte import limit (decompressed)")

    wire = 0
    async for raw in pieces:
        if inflater is None:
            lines = take(raw)
            if lines:
                yield lines
            if total > max_total_bytes:
                raise over()
            continue
        data = raw
        while data:
            try:
                chunk = inflater.decompress(data, _INFLATE_STEP)
            except zlib.error as exc:
                raise StreamProblem(400, "body", f"invalid {encoding} data: {exc}") from None
            data = inflater.unconsumed_tail
            if inflater.eof and inflater.unused_data:
                # Concatenated gzip members (`cat a.gz b.gz`) are one valid stream: start the next member.
                data = inflater.unused_data + data
                inflater = inflater_for(content_encoding)
            lines = take(chunk)
            if lines:
                yield lines
            if total > max_total_bytes:
                raise over()
        wire += len(raw)
        if wire > max_total_bytes:  # the compressed bytes too: a run of empty gzip members inflates to nothing
            raise over()
    if inflater is not None:
        lines = take(inflater.flush())  # output zlib still holds (never more than its window)
        if lines:
            yield lines
        if total > max_total_bytes:
            raise over()
    if inflater is not None and not inflater.eof:
        raise StreamProblem(400, "body", f"truncated {encoding} data: the body ends inside the compressed stream")
    last: list[bytes | _TooLong] = []
    if skipping:
        last.append(_TooLong(skipping))
    elif partial:
        last.append(partial)  # the last line of a file often has no newline
    if last:
        yield last


@dataclass
class _Chunk:
    """Lines read since the last flush, and what became of them; counted in the report only once durable."""

    through_line: int = 0
    accepted: int = 0
    rejects: list[tuple[int, list[dict[str, str]]]] = field(default_factory=list)


@dataclass
class ImportReport:
    """What one import request did, counting only lines up to ``last_durable_line``: after a failure the
    client resends from the next line, and nothing it resends has been counted (or listed) yet."""

    first_line: int
    accepted: int = 0
    rejected: int = 0
    last_durable_line: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_total: int = 0

    def __post_init__(self) -> None:
        self.last_durable_line = self.first_line - 1

    @property
    def lines(self) -> int:
        """Lines accounted for, blank ones included (they keep the numbering)."""
        return self.last_durable_line - self.first_line + 1

    def commit(self, chunk: _Chunk) -> None:
        self.accepted += chunk.accepted
        for line, errors in chunk.rejects:
            self.rejected += 1
            for error in errors:
                self.errors_total += 1
                if len(self.errors) < MAX_LISTED_ERRORS:
                    self.errors.append({"line": line, "field": error["field"], "reason": error["reason"]})
        self.last_durable_line = chunk.through_line

    def body(self, problem: dict[str, str] | None = None) -> dict[str, Any]:
        """The response: counts, and ``errors`` — the request's own problem first (no ``line``), then each
        bad line's. A 4xx/5xx therefore still has our error shape."""
        return {
            "success": problem is None and self.accepted > 0,
            "first_line": self.first_line,
            "last_durable_line": self.last_durable_line,
            "lines": self.lines,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "errors": ([problem] if problem else []) + self.errors,
            "errors_total": self.errors_total,
            "errors_truncated": self.errors_total > len(self.errors),
        }


@routes.post("/v1/import")
async def import_events(request: web.Request) -> web.Response:
    """``POST /v1/import``: the key is checked as for /v1/batch (the same rules and rate limit), then only a
    write key may import."""
    settings = request.app[STORES].settings
    metrics = request.app[METRICS]
    try:
        # Header only: a writeKey inside the body would mean reading the whole body before knowing
        # whether to read it at all.
        principal = await authorize(request, presented_key(request))
        if principal.kind != "write":
            # Public keys sit in web pages for anyone to copy: they must not be able to rewrite history.
            raise ApiError(
                403,
                [{"field": "Authorization", "reason": f"imports need a write key, not a {principal.kind} key"}],
                code="forbidden",
            )
        first_line = _first_line(request.headers.get(FIRST_LINE_HEADER))
        inflater_for(request.headers.get("Content-Encoding", ""))  # refuse an unknown encoding up front
    except ApiError as refused:
        count_refusal(metrics, refused)
        raise
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity") and (request.content_length or 0) > settings.max_import_bytes:
        raise ApiError(413, [{"field": "body", "reason": f"over the {settings.max_import_bytes}-byte import limit"}])
    run = _ImportRun(
        request.app[SPOOL], settings, metrics, principal.project_id, request_id(request), ImportReport(first_line)
    )
    lines = split_lines(
        request.content.iter_chunked(_READ_BYTES),
        encoding,
        max_line_bytes=settings.max_request_bytes,
        max_total_bytes=settings.max_import_bytes,
    )
    report = run.report
    try:
        async with aclosing(lines):
            status, problem, headers = await run.consume(lines)
    except (ConnectionError, ClientError, HttpProcessingError) as exc:
        # The client went away or broke the framing mid-body: what was spooled stays (it is durable and
        # a re-import de-duplicates), and the answer, if anyone reads it, says how far it got.
        log.info("import: the body stopped (%s); durable through line %d", exc, report.last_durable_line)
        problem = {"field": "body", "reason": f"the body stopped after line {report.last_durable_line}: {exc}"}
        return json_response(report.body(problem), status=400)
    if status == 200 and report.accepted == 0:
        # Nothing stored: a 4xx, like a batch with no valid event.
        status = 400
        if report.rejected == 0:
            problem = {"field": "body", "reason": "no events: expected NDJSON, one JSON event per line"}
    log.info(
        "import: lines %d-%d, %d accepted, %d rejected",
        report.first_line,
        report.last_durable_line,
        report.accepted,
        report.rejected,
    )
    return json_response(report.body(problem), status=status, headers=headers)


def _first_line(value: str | None) -> int:
    if value is None:
        return 1
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 10**12:
        raise ApiError(
            400,
            [{"field": FIRST_LINE_HEADER, "reason": "must be a line number from 1 (where this upload starts)"}],
            code="invalid_body",
        )
    return int(text)


class _ImportRun:
    """One request's import: parse lines, batch them, validate, spool, and keep the report."""

    def __init__(
        self, spool: Spool, settings: Settings, metrics: Metrics, project_id: str, request_id: str, report: ImportReport
    ):
        self.metrics = metrics
        self.spool = spool
        self.project_id = project_id
        self.request_id = request_id
        self.report = report
        self.limits = Limits.of(settings)
        self.spool_wait_s = settings.import_spool_wait_s
        self.max_line_bytes = settings.max_request_bytes
        # A chunk is one spool record: it must fit a spool far smaller than the default many times over.
        self.chunk_bytes = min(CHUNK_BYTES, spool.max_bytes // 8)
        self._chunk = _Chunk()
        self._events: list[Any] = []
        self._event_lines: list[int] = []
        self._chunk_lines = 0
        self._chunk_bytes = 0
        self._in_flight: tuple[asyncio.Task[None], _Chunk] | None = None

    async def consume(
        self, lines: AsyncIterator[list[bytes | _TooLong]]
    ) -> tuple[int, dict[str, str] | None, dict[str, str] | None]:
        """Read everything; return (status, the request's own problem or None, extra headers)."""
        report = self.report
        line_no = report.first_line - 1
        try:
            try:
                async for batch in lines:
                    for item in batch:
                        line_no += 1
                        self._take(line_no, item)
                        if self._chunk_lines >= CHUNK_LINES or self._chunk_bytes >= self.chunk_bytes:
                            await self._flush(line_no)
            except StreamProblem as problem:
                await self._flush(line_no)  # what was read whole before the problem is good
                await self._settle()
                return problem.status, {"field": problem.field, "reason": problem.reason}, None
            await self._flush(line_no)
            await self._settle()
        except SpoolError as exc:
            full = isinstance(exc, SpoolFull)
            if full:
                self.metrics.spool_rejections.inc()
            self.metrics.events_rejected.labels("spool_full" if full else "spool_unavailable").inc()
            resume = report.last_durable_line + 1
            why = f"the spool stayed full for {self.spool_wait_s:g} s" if full else str(exc)
            reason = (
                f"{why}: lines through {report.last_durable_line} are stored and counted here; "
                f"resend from line {resume} (with {FIRST_LINE_HEADER}: {resume})"
            )
            return 503, {"field": "server", "reason": reason}, {"Retry-After": "5"}
        finally:
            if self._in_flight is not None:
                # The client went away mid-body: let the append under way finish (the report then says it
                # is durable) rather than leave it running unowned.
                try:
                    await self._settle()
                except SpoolError:
                    pass
        return 200, None, None

    def _take(self, line_no: int, item: bytes | _TooLong) -> None:
        self._chunk_lines += 1
        if isinstance(item, _TooLong):
            self._reject(line_no, "(line)", f"{item.nbytes} bytes, over the {self.max_line_bytes}-byte line limit")
            return
        text = item.strip()
        if not text:
            return  # blank lines are allowed (and still numbered)
        self._chunk_bytes += len(text)
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self._reject(line_no, "(line)", f"invalid JSON: {exc}")
            return
        if not isinstance(event, dict):
            self._reject(line_no, "(line)", "must be a JSON object: one event per line")
            return
        event.pop("writeKey", None)  # a credential never reaches storage
        event.pop("sentAt", None)  # historical: no clock-skew correction (module docstring)
        if not event.get("timestamp") and not event.get("originalTimestamp"):
            self._reject(line_no, "timestamp", "required for imports: when the event happened (ISO 8601)")
            return
        if event.get("messageId") is None:
            derived = derive_message_id(self.project_id, event)
            if derived is not None:
                event["messageId"] = derived
        self._events.append(event)
        self._event_lines.append(line_no)

    def _reject(self, line_no: int, field_name: str, reason: str) -> None:
        self._chunk.rejects.append((line_no, [{"field": field_name, "reason": reason}]))
        self.metrics.events_rejected.labels("import_invalid_line").inc()

    async def _flush(self, through_line: int) -> None:
        """Validate and encode the lines gathered so far and start appending them; first wait for the previous
        chunk's append (chunks land in order, and at most one is in flight)."""
        chunk, events, event_lines = self._chunk, self._events, self._event_lines
        self._chunk, self._events, self._event_lines = _Chunk(), [], []
        self._chunk_lines = self._chunk_bytes = 0
        chunk.through_line = through_line
        records: list[bytes] = []
        if events:
            # Bad lines are reported, not quarantined (module docstring): no quarantine records.
            prepared = prepare(
                events,
                {},
                project_id=self.project_id,
                received_ms=int(time.time() * 1000),
                request_id=self.request_id,
                limits=self.limits,
                quarantine=False,
            )
            outcome = prepared.outcome
            for item in outcome.quarantined:
                chunk.rejects.append((event_lines[item["index"]], item["errors"]))
            if outcome.quarantined:
                self.metrics.events_rejected.labels("import_invalid_line").inc(len(outcome.quarantined))
                chunk.rejects.sort(key=lambda r: r[0])  # read-time and validation rejects, in line order
            chunk.accepted = len(outcome.lines)
            for channel, n in outcome.channels.items():
                self.metrics.count_accepted(channel, n)
            records = prepared.records
        await self._settle()
        if records:
            self._in_flight = (asyncio.create_task(self._append(records)), chunk)
        elif through_line > self.report.last_durable_line:
            self.report.commit(chunk)  # nothing to write: durable as soon as everything before it is

    async def _settle(self) -> None:
        """Wait for the append in flight; once it is durable, its chunk counts."""
        if self._in_flight is None:
            return
        (task, chunk), self._in_flight = self._in_flight, None
        await task  # raises SpoolError if it could not be made durable
        self.report.commit(chunk)

    async def _append(self, records: list[bytes]) -> None:
        """Append, waiting out a full spool for up to ``import_spool_wait_s``: an import is a batch job that
        would rather slow down than fail, while the inserter drains the spool behind it."""
        await append(self.spool, records, wait_s=self.spool_wait_s)


def import_openapi_paths() -> dict[str, Any]:
    """``POST /v1/import`` in the collector's OpenAPI document (collector/api_spec.py adds it)."""
    from journeys.openapi import error_response as error_spec
    from journeys.openapi import json_ok, operation

    line_error = {
        "type": "object",
        "required": ["field", "reason"],
        "properties": {
            "line": {
                "type": "integer",
                "minimum": 1,
                "description": "The bad line; absent for the request's own problem.",
            },
            "field": {"type": "string"},
            "reason": {"type": "string"},
        },
    }
    result = {
        "type": "object",
        "required": ["success", "lines", "accepted", "rejected", "last_durable_line", "errors", "errors_total"],
        "properties": {
            "success": {"type": "boolean"},
            "first_line": {"type": "integer"},
            "lines": {"type": "integer", "minimum": 0, "description": "Lines accounted for, blank ones included."},
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "last_durable_line": {
                "type": "integer",
                "description": "Every accepted line up to this one is on disk, and the counts cover exactly "
                "these lines: resend from the next one.",
            },
            "errors": {"type": "array", "items": line_error, "description": f"At most {MAX_LISTED_ERRORS} bad lines."},
            "errors_total": {"type": "integer", "minimum": 0},
            "errors_truncated": {"type": "boolean"},
        },
    }
    body_text = {"schema": {"type": "string", "description": "One Segment-style JSON event per line."}}
    return {
        "/v1/import": {
            "post": operation(
                "Bulk import historical events (NDJSON, streamed)",
                tags=["ingest"],
                description=(
                    "One event per line, each with a timestamp (kept as sent: no clock-skew correction). A line "
                    "without messageId gets one derived from its content, so re-importing a file counts each "
                    "event once. Streamed: the body may be far larger than a batch (JOURNEYS_MAX_IMPORT_BYTES). "
                    f"`{FIRST_LINE_HEADER}` numbers the first line (default 1) when resuming. Every response "
                    "carries the counts and `last_durable_line`. See docs/import.md."
                ),
                parameters=[
                    {
                        "name": FIRST_LINE_HEADER,
                        "in": "header",
                        "required": False,
                        "description": "Number of the body's first line in the client's file (resuming).",
                        "schema": {"type": "integer", "minimum": 1},
                    }
                ],
                body={
                    "required": True,
                    "description": "NDJSON, optionally with Content-Encoding gzip or deflate.",
                    "content": {"application/x-ndjson": body_text, "text/plain": body_text},
                },
                responses={
                    200: json_ok(result, "Read to the end; accepted lines are durable, bad ones listed by number."),
                    400: error_spec(400, "No line accepted, or the body is corrupt; `errors` lists why, by line."),
                    413: error_spec(
                        413, "Over the import size limit; lines before it may be stored (last_durable_line)."
                    ),
                    503: error_spec(
                        503,
                        "The spool stayed full: lines through last_durable_line are stored; resume after it.",
                        retry_after=True,
                    ),
                },
                errors=(401, 403, 415),
            )
        }
    }
