"""No silent loss through quarantine: a log line when events are quarantined, and their replay.

An event that fails validation inside a request with good events is kept in the ``quarantine`` table with
its errors and its raw JSON (collector/ingest.py). Three things make sure somebody sees it and nothing is
lost for good (docs/quarantine.md):

* :class:`QuarantineLog`: one WARNING per kind of problem (project, field, reason) per minute, with how many
  more of that kind came since the last line. Every quarantined event still counts in
  ``journeys_events_quarantined_total`` (dashboards, the JourneysEventsQuarantined alert).
* ``GET /v1/quarantine`` on the query service lists them by kind of problem (query/quarantine_api.py).
* :func:`replay`: re-validates a project's quarantined events with the rules of *this* collector and takes
  in those that now pass, through the same accept steps (:mod:`collector.accept`: validate, encode, append)
  and spool → inserter path as any event (identity links included), then removes their quarantine rows.
  ``POST /v1/quarantine/replay`` (admin key) runs it in the collector; ``journeys quarantine replay``
  (cli/quarantine.py) runs it directly or through that route.

Replay takes each event in **exactly once**: copies of one message (a resent bad event) go in once with
their messageId; an event sent without one gets an id derived from its quarantine row (request id and batch
position, :func:`replay_message_id`), so a replay interrupted and run again, or two replays at once, store
the same ids, which every read de-duplicates. A replayed event keeps the receive time of its first delivery,
so the clock-skew correction (``sentAt`` in the event) gives the timestamp the first delivery would have.
Quarantine rows are removed only once the events are durable (in the spool, or for the CLI in ClickHouse);
a second replay therefore finds nothing to replay.

What replay cannot restore: quarantine keeps the event as sent, not the batch around it, so a batch-level
``sentAt`` or ``context`` is not applied to a replayed event (its timestamp is then the client's own), and an
event cut short when quarantined (nested too deep to store) is never replayed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from collector.accept import Limits, append, encode_bounded, validate
from collector.appkeys import API_KEYS, METRICS, REPLAY_LOCK, SPOOL, STORES
from collector.ingest import _CUT
from collector.spool import Spool, SpoolError
from journeys.clickhouse import ClickHouse, ClickHouseError, table_on_cluster
from journeys.http import ApiError, authorized, json_response
from journeys.quarantine import SinceError, parse_since, problem_kind

log = logging.getLogger(__name__)

REPLAY_PATH = "/v1/quarantine/replay"

# --------------------------------------------------------------------------------------------------------
# the log line
# --------------------------------------------------------------------------------------------------------

LOG_WINDOW_S = 60.0


class QuarantineLog:
    """At most one WARNING per (project, field, reason) per ``window_s``; the next line of a kind says how
    many of it were not logged since the previous one. Kinds are bounded (numbers in reasons count as one,
    :func:`journeys.quarantine.problem_kind`) and so is the table that remembers them."""

    def __init__(
        self,
        window_s: float = LOG_WINDOW_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
        max_kinds: int = 10_000,
    ):
        self.window_s = window_s
        self.clock = clock
        self.logger = logger
        self.max_kinds = max_kinds
        self._kinds: dict[tuple[str, str, str], list[float | int]] = {}  # kind → [last logged at, suppressed]

    def note(self, project_id: str, errors: Any) -> bool:
        """Count one quarantined event; log it unless its kind was logged within the window. True if logged."""
        field_name, reason = problem_kind(errors)
        kind = (project_id, field_name, reason)
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        suppressed = int(seen[1]) if seen is not None else 0
        if seen is None and len(self._kinds) >= self.max_kinds:
            self._forget_before(now - self.window_s)
        self._kinds[kind] = [now, 0]
        more = f" (and {suppressed} more like it since the last line)" if suppressed else ""
        self.logger.warning(
            "event quarantined in project %s: %s: %s%s; GET /v1/quarantine lists them, "
            "`journeys quarantine replay --project %s` takes in those that pass today",
            project_id,
            field_name,
            reason,
            more,
            project_id,
            extra={"project_id": project_id, "field": field_name, "reason": reason, "suppressed": suppressed},
        )
        return True

    def _forget_before(self, cutoff: float) -> None:
        self._kinds = {k: v for k, v in self._kinds.items() if v[0] >= cutoff}
        if len(self._kinds) >= self.max_kinds:
            self._kinds.clear()


_LOG = QuarantineLog()


def log_quarantined(project_id: str, errors: Any) -> None:
    """The collector's one call per quarantined event (beside ``journeys_events_quarantined_total``)."""
    _LOG.note(project_id, errors)


# --------------------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------------------

#: Fixed for ever: changing it would give an id-less event a new id on every replay.
REPLAY_ID_NAMESPACE = uuid.UUID("0b9d7a52-3f0e-5c41-9d8e-7a1f6c2e4b90")
#: Quarantine rows read, validated, spooled and removed together: one DELETE (a ClickHouse mutation) per
#: page, with the ids as bound parameters well under the HTTP client's URI limit.
PAGE_ROWS = 1000
#: Largest spool record a replay writes (smaller for a small spool: see :func:`record_bytes_for`).
RECORD_BYTES = 8 * 1024 * 1024

_PAGE_SQL = """
SELECT toUnixTimestamp64Milli(received_at), request_id, batch_index, message_id, raw
FROM quarantine
WHERE project_id = {project_id:String}
  AND received_at >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
  AND ({first:UInt8} = 1 OR (received_at, request_id, batch_index)
       > (fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), {after_request:String}, {after_index:UInt32}))
ORDER BY received_at, request_id, batch_index
LIMIT {page:UInt32}
"""
# Every copy of a replayed message goes (in or out of the window: it is one event, now stored); an id-less
# row is named by its request, position and receive time.
_REPLAYED = (
    "project_id = {project_id:String} AND (message_id IN {ids:Array(String)} OR (message_id = '' AND "
    "concat(request_id, ':', toString(batch_index), ':', toString(toUnixTimestamp64Milli(received_at))) "
    "IN {keys:Array(String)}))"
)
_COUNT_SQL = f"SELECT count() FROM quarantine WHERE {_REPLAYED}"
# Lightweight DELETE: the rows vanish from every read at once (journeys.clickhouse applies pending
# mutations on the fly), so a replay right after this one finds nothing to replay.
_DELETE_SQL = "DELETE FROM {table} WHERE " + _REPLAYED + " SETTINGS lightweight_deletes_sync = 0"

Append = Callable[[list[bytes]], Awaitable[None]]


def replay_message_id(project_id: str, request_id: str, batch_index: int) -> str:
    """The id a quarantined event without messageId is replayed with: the same for the same quarantine row,
    on every replay, in every process."""
    return str(uuid.uuid5(REPLAY_ID_NAMESPACE, f"{project_id}\n{request_id}\n{batch_index}"))


@dataclass
class ReplayReport:
    replayed: int = 0  # events taken in (each message once)
    removed_rows: int = 0  # quarantine rows removed (copies of a message included)
    failing: dict[tuple[str, str], int] = field(default_factory=dict)  # (field, reason) → events still failing
    channels: dict[str, int] = field(default_factory=dict)  # replayed events by channel (metrics)

    @property
    def still_failing(self) -> int:
        return sum(self.failing.values())

    def body(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "removed_rows": self.removed_rows,
            "still_failing": self.still_failing,
            "failing": [
                {"field": f, "reason": r, "count": n}
                for (f, r), n in sorted(self.failing.items(), key=lambda item: (-item[1], item[0]))
            ],
        }


@dataclass
class _Row:
    received_ms: int
    request_id: str
    batch_index: int
    message_id: str
    raw: str

    @property
    def key(self) -> str:
        return f"{self.request_id}:{self.batch_index}:{self.received_ms}"


async def replay(
    clickhouse: ClickHouse,
    project_id: str,
    append_records: Append,
    *,
    cluster: str = "",
    since_ms: int = 0,
    limits: Limits,
    before_delete: Callable[[], Awaitable[None]] | None = None,
    page_rows: int = PAGE_ROWS,
    record_bytes: int = RECORD_BYTES,
) -> ReplayReport:
    """Re-validate the project's quarantined events (received at or after ``since_ms``) with today's rules;
    ``append_records`` the spool records of those that pass (it returns once they are durable), then, after
    ``before_delete`` if given, remove their quarantine rows. Page by page, in quarantine order (receive
    time, request, position), so identity links apply in the order the events first arrived."""
    report = ReplayReport()
    replayed: set[str] = set()  # message keys taken in during this run
    failing: set[str] = set()
    params: dict[str, Any] = {
        "project_id": project_id,
        "since_ms": since_ms,
        "page": page_rows,
        "first": 1,
        "after_ms": 0,
        "after_request": "",
        "after_index": 0,
    }
    delete_sql = _DELETE_SQL.replace("{table}", table_on_cluster("quarantine", cluster))
    while True:
        _, found = await clickhouse.query(_PAGE_SQL, params)
        if not found:
            return report
        rows = [_Row(int(r[0]), r[1], int(r[2]), r[3], r[4]) for r in found]
        last = rows[-1]
        params.update(first=0, after_ms=last.received_ms, after_request=last.request_id, after_index=last.batch_index)
        lines: list[bytes] = []
        links: list[bytes] = []
        done: list[_Row] = []  # rows of messages taken in (this page or an earlier one)
        for row in rows:
            event, message_key, needs_id = _parse(project_id, row)
            if message_key in replayed:
                done.append(row)
                continue
            if message_key in failing:
                continue
            outcome, errors = _validate(event, needs_id, project_id, row, limits)
            if errors is not None:
                failing.add(message_key)
                kind = problem_kind(errors)
                report.failing[kind] = report.failing.get(kind, 0) + 1
                continue
            replayed.add(message_key)
            done.append(row)
            report.replayed += 1
            lines.extend(outcome.lines)
            links.extend(outcome.links)
            for channel, n in outcome.channels.items():
                report.channels[channel] = report.channels.get(channel, 0) + n
        if lines:
            for records in encode_bounded(lines, links, record_bytes):
                await append_records(records)
        if done:
            if before_delete is not None:
                await before_delete()
            where = {
                "project_id": project_id,
                "ids": sorted({r.message_id for r in done if r.message_id}),
                "keys": sorted({r.key for r in done if not r.message_id}),
            }
            _, counted = await clickhouse.query(_COUNT_SQL, where)
            await clickhouse.command(delete_sql, where)
            report.removed_rows += int(counted[0][0])
        if len(rows) < page_rows:
            return report


def _parse(project_id: str, row: _Row) -> tuple[Any, str, bool]:
    """The quarantined event, the key its copies share, and whether it has no messageId of its own."""
    try:
        event = orjson.loads(row.raw)
    except orjson.JSONDecodeError:
        event = row.raw  # not an event: validation says so
    if not isinstance(event, dict):
        return event, f"row:{row.key}", False
    message_id = event.get("messageId")
    if message_id is None or message_id == "":
        return event, "id:" + replay_message_id(project_id, row.request_id, row.batch_index), True
    if isinstance(message_id, (str, int)) and not isinstance(message_id, bool):
        return event, f"id:{message_id}", False
    return event, f"row:{row.key}", False  # an id of no valid type: its own event, and it fails validation


def _validate(
    event: Any, needs_id: bool, project_id: str, row: _Row, limits: Limits
) -> tuple[Any, list[dict[str, str]] | None]:
    """(the outcome, None) when the event passes today's rules, (None, its errors) when it does not."""
    if _CUT in row.raw:
        # Quarantined as "nested too deep" with its first levels only: what was cut off is gone.
        return None, [
            {"field": "(event)", "reason": "kept only in part when quarantined (nested too deep): cannot be replayed"}
        ]

    def check(candidate: Any) -> Any:
        return validate(
            [candidate],
            {},
            project_id=project_id,
            received_ms=row.received_ms,
            request_id=row.request_id,
            limits=limits,
        )

    # The event as it was sent decides; only then does an id-less one get its deterministic id (a value
    # the sender never wrote must not change the verdict, e.g. for an invalid ``"messageId": null``).
    outcome = check(event)
    if outcome.lines and needs_id:
        outcome = check({**event, "messageId": replay_message_id(project_id, row.request_id, row.batch_index)})
    if not outcome.lines:
        return None, outcome.quarantined[0]["errors"]
    return outcome, None


def record_bytes_for(spool: Spool) -> int:
    """A record must fit a spool far smaller than the default many times over (as imports do)."""
    return min(RECORD_BYTES, spool.max_bytes // 8)


# --------------------------------------------------------------------------------------------------------
# POST /v1/quarantine/replay (admin key)
# --------------------------------------------------------------------------------------------------------


routes = web.RouteTableDef()


@routes.post(REPLAY_PATH)
async def replay_quarantine(request: web.Request) -> web.Response:
    """Replay the admin key's project; one replay at a time per collector (``app[REPLAY_LOCK]``)."""
    app = request.app
    project_id = await _admin_project(request)
    since_ms = _since_of(await request.read())
    settings = app[STORES].settings
    metrics = app[METRICS]
    spool = app[SPOOL]

    async def append_durably(records: list[bytes]) -> None:
        await append(spool, records, wait_s=settings.import_spool_wait_s)

    async with app[REPLAY_LOCK]:
        try:
            report = await replay(
                app[STORES].clickhouse,
                project_id,
                append_durably,
                cluster=settings.clickhouse_cluster,
                since_ms=since_ms,
                limits=Limits.of(settings),
                record_bytes=record_bytes_for(spool),
            )
        except SpoolError as exc:
            raise ApiError(
                503,
                [{"field": "server", "reason": f"spool: {exc}; events replayed so far are stored, run again"}],
                {"Retry-After": "5"},
            ) from None
        except ClickHouseError as exc:
            metrics.clickhouse_errors.labels("quarantine_replay").inc()
            log.warning("quarantine replay for project %s stopped: ClickHouse: %s", project_id, exc)
            raise ApiError(
                503,
                [
                    {
                        "field": "server",
                        "reason": "ClickHouse is unavailable; events replayed so far are stored, run again",
                    }
                ],
                {"Retry-After": "5"},
            ) from None
    for channel, n in report.channels.items():
        metrics.count_accepted(channel, n)
    log.info(
        "quarantine replay for project %s: %d replayed, %d quarantine rows removed, %d still failing",
        project_id,
        report.replayed,
        report.removed_rows,
        report.still_failing,
    )
    return json_response(report.body())


async def _admin_project(request: web.Request) -> str:
    """The project of the request's admin key: 401 without a valid key, 403 for any other kind (ingest keys
    must not rewrite what was kept aside)."""
    principal = await authorized(
        request, request.app[API_KEYS], ("admin",), needed="admin key", cannot="replay quarantine"
    )
    return principal.project_id


def _since_of(body: bytes) -> int:
    """``{"since": ISO}`` (optional; an empty body replays everything) → epoch ms."""
    if not body.strip():
        return 0
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, [{"field": "body", "reason": f"invalid JSON: {exc}"}]) from None
    if not isinstance(document, dict):
        raise ApiError(
            400, [{"field": "body", "reason": 'must be a JSON object, e.g. {"since": "2026-03-01T00:00:00Z"}'}]
        )
    if document.get("since") is None:
        return 0
    try:
        return parse_since(document["since"])
    except SinceError as exc:
        raise ApiError(400, [{"field": "since", "reason": str(exc)}]) from None


def replay_openapi_paths() -> dict[str, Any]:
    """``POST /v1/quarantine/replay`` in the collector's OpenAPI document."""
    from journeys.openapi import json_ok, operation

    result = {
        "type": "object",
        "required": ["replayed", "removed_rows", "still_failing", "failing"],
        "properties": {
            "replayed": {
                "type": "integer",
                "minimum": 0,
                "description": "Events that pass today's rules, now stored (each message once).",
            },
            "removed_rows": {
                "type": "integer",
                "minimum": 0,
                "description": "Quarantine rows removed (copies included).",
            },
            "still_failing": {
                "type": "integer",
                "minimum": 0,
                "description": "Events that still fail; they stay in quarantine.",
            },
            "failing": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "reason", "count"],
                    "properties": {
                        "field": {"type": "string"},
                        "reason": {"type": "string"},
                        "count": {"type": "integer"},
                    },
                },
                "description": "Still failing, by the field and reason of the first error (numbers read as N).",
            },
        },
    }
    body = {
        "type": "object",
        "properties": {
            "since": {
                "type": "string",
                "format": "date-time",
                "description": "Only events quarantined at or after this time.",
            }
        },
    }
    return {
        REPLAY_PATH: {
            "post": operation(
                "Replay quarantined events that pass today's rules (admin key)",
                tags=["quarantine"],
                description=(
                    "Re-validates the project's quarantined events with this collector's rules; those that pass are "
                    "stored exactly once (their messageId, or one derived from the quarantine row), through the "
                    "spool like any event, with their original receive time, and removed from quarantine once "
                    "durable. A second replay finds nothing to replay. See docs/quarantine.md."
                ),
                body={"required": False, "content": {"application/json": {"schema": body}}},
                responses={200: json_ok(result, "Replayed: every replayed event is durable.")},
                errors=(400, 401, 403, 413, 503),
            )
        }
    }
