"""What the collector (replay, the rate-limited log line) and the query service (``GET /v1/quarantine``,
``/v1/stats``) share about quarantined events: what counts as one event, what counts as one kind of
problem, and how a ``since`` time is read. See docs/quarantine.md.

* **One event.** A client that resends a bad event (an SDK retry after a lost response) leaves a quarantine
  row per delivery, all with the same ``message_id``: they are one event, counted once, as every read of
  ``events`` counts a message once. A row without ``message_id`` is one event of its own, identified by its
  request, its position in the batch and its receive time (only a spool replay after a crash makes an exact
  copy of that, which is the same delivery again).
* **One kind of problem.** The field and reason of an event's first error, with every run of digits read
  as ``N``: ``"40123 bytes, over the 32768-byte event limit"`` and ``"51200 bytes, …"`` are one problem,
  not one per event (the samples keep the exact text).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from journeys.errors import JourneysError
from journeys.events import MAX_STORABLE_MS

#: ClickHouse: distinct quarantined events among the rows aggregated (see the module docstring).
DISTINCT_EVENTS_SQL = (
    "uniqExactIf(message_id, message_id != '') + uniqExactIf((request_id, batch_index, received_at), message_id = '')"
)
#: ClickHouse: the field and the normalized reason of a row's first error (:func:`problem_kind`).
FIELD_SQL = "JSONExtractString(reason, 1, 'field')"
REASON_SQL = "replaceRegexpAll(JSONExtractString(reason, 1, 'reason'), '[0-9]+', 'N')"

_DIGITS = re.compile(r"[0-9]+")
SINCE_RULE = "an ISO-8601 date-time, e.g. 2026-03-01T09:30:00Z (naive means UTC; in a URL write + as %2B)"


def problem_kind(errors: Any) -> tuple[str, str]:
    """``(field, reason)`` of the first error, numbers read as ``N``: the same as FIELD_SQL/REASON_SQL."""
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    field = first.get("field")
    reason = first.get("reason")
    return (
        field if isinstance(field, str) else "",
        _DIGITS.sub("N", reason) if isinstance(reason, str) else "",
    )


class SinceError(JourneysError, ValueError):
    """A ``since`` value that is not a date-time; the message says what is expected."""


def parse_since(value: Any) -> int:
    """An ISO-8601 date-time (or date) → epoch milliseconds, clamped to what ClickHouse stores."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise SinceError(f"must be {SINCE_RULE}")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ms = int(parsed.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise SinceError(f"must be {SINCE_RULE}") from None
    return min(max(ms, 0), MAX_STORABLE_MS)
