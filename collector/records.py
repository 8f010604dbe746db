"""What a spool record holds: the one format the producers (every ingest route, through
:mod:`collector.accept`, and quarantine replay) write and the :class:`~collector.inserter.Inserter` reads.

The spool (:mod:`collector.spool`) stores opaque payloads; this module says what is in them. A payload is
one kind byte and then JSONCompactEachRow lines, ready for ClickHouse as they are, so the inserter never
parses an event again: ``E`` lines are rows of ``events``, ``Q`` lines rows of ``quarantine``, and ``L``
lines identity links (``[project_id, kind, from_id, to_id]``), resolved into ``identities`` after the
events they came with are in (collector/identity.py).

A kind the inserter does not know (a spool written by another version) is skipped loudly rather than stall
every event behind it; adding a kind therefore means the inserter first, then the producers.
"""

from __future__ import annotations

from collections.abc import Sequence

from journeys.events import EVENT_COLUMNS, QUARANTINE_COLUMNS

EVENTS = b"E"
QUARANTINE = b"Q"
LINKS = b"L"
#: The table and columns each kind of row record goes to (links are not rows: see the module docstring).
TABLES: dict[int, tuple[str, tuple[str, ...]]] = {
    EVENTS[0]: ("events", EVENT_COLUMNS),
    QUARANTINE[0]: ("quarantine", QUARANTINE_COLUMNS),
}


def encode_records(
    event_lines: Sequence[bytes], quarantine_lines: Sequence[bytes] = (), links: Sequence[bytes] = ()
) -> list[bytes]:
    """The spool payloads for one request: its events and, if any, its quarantined events and links."""
    records = [EVENTS + b"\n".join(event_lines) + b"\n"] if event_lines else []
    for kind, lines in ((QUARANTINE, quarantine_lines), (LINKS, links)):
        if lines:
            records.append(kind + b"\n".join(lines) + b"\n")
    return records
