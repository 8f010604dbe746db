"""The official Python clients of Segment and RudderStack, unmodified, against the real collector.

Each runs in its own process (tests/peer_python_client.py) with its clock three hours off, sends every
kind of call for a visitor who is anonymous first and identifies later (so it sends ``"userId": null``
and then ``"anonymousId": null``, as these libraries do), and everything is read back through the query
service: each event exactly once, placed at the real time by the sentAt correction, found by the user id.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from support import basic, wait_until

pytest.importorskip("segment.analytics")  # the test extra pins both clients
pytest.importorskip("rudderstack.analytics")

DRIVER = Path(__file__).with_name("peer_python_client.py")
SHIFT_S = 3 * 3600


async def _drive(which: str, host: str, key: str, shift_s: float) -> tuple[str, dict[str, str], list[str]]:
    run = uuid.uuid4().hex[:10]
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(DRIVER), which, host, key, str(shift_s), run],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return run, report["sent"], report["errors"]


async def _events(http, query, key: str, customer: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    async with http.get(query.make_url(f"/v1/customers/{customer}/events"), headers=basic(key)) as response:
        if response.status == 404:  # none of their events stored yet
            return []
        assert response.status == 200, await response.text()
        return (await response.json())["events"]


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("which", ["segment", "rudderstack"])
@pytest.mark.parametrize("shift_s", [SHIFT_S, -SHIFT_S])
async def test_every_call_arrives_once_at_the_real_time_and_stitched(  # type: ignore[no-untyped-def]
    which,
    shift_s,
    collector,
    query,
    project,
    http,
) -> None:
    host = str(collector.make_url("")).rstrip("/")
    began = time.time()
    run, sent, errors = await _drive(which, host, project.write_key, shift_s)
    ended = time.time()
    assert errors == []

    async def all_arrived() -> list[dict[str, Any]] | None:
        events = await _events(http, query, project.read_key, f"user-{run}")
        return events if len(events) >= len(sent) else None

    events = await wait_until(all_arrived)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_id.setdefault(event["message_id"], []).append(event)
    # Every call, each exactly once; the anonymous visit is found by the user id (stitched).
    assert sorted(by_id) == sorted(sent.values())
    assert all(len(copies) == 1 for copies in by_id.values())
    event = {name: by_id[message_id][0] for name, message_id in sent.items()}
    assert {e["type"] for e in event.values()} == {"page", "track", "identify", "screen", "group", "alias"}
    assert (event["page"]["user_id"], event["page"]["anonymous_id"]) == ("", f"anon-{run}")
    assert (event["track_email"]["user_id"], event["track_email"]["anonymous_id"]) == (f"user-{run}", "")
    assert (event["identify"]["user_id"], event["identify"]["anonymous_id"]) == (f"user-{run}", f"anon-{run}")
    assert event["alias"]["previous_id"] == f"crm-{run}"
    assert event["group"]["group_id"] == f"acme-{run}"
    # The clock was hours off: only the sentAt correction puts every event inside the real send window.
    for name, e in event.items():
        assert began - 2 <= _at(e["timestamp"]) <= ended + 2, (name, e["timestamp"], began, ended)
    # Channels: the page is web, a channel in properties is the touchpoint's, the SDK's platform is not.
    assert event["page"]["channel"] == "web"
    assert event["page"]["utm_source"] == "news" and event["page"]["utm_campaign"] == f"spring-{run}"
    assert event["track_email"]["channel"] == "email"
    assert event["screen"]["channel"] == "app"
    assert all(e["channel"] != "server" for e in event.values())


@pytest.mark.parametrize("which", ["segment", "rudderstack"])
async def test_a_refusal_is_an_error_the_client_reports_not_a_retry_loop(  # type: ignore[no-untyped-def]
    which,
    collector,
) -> None:
    """A 400 (here: a read key cannot write) carries ``code`` and ``message``: the clients read those two,
    and RudderStack's crashed on a body without them and retried a request that can never succeed."""
    host = str(collector.make_url("")).rstrip("/")
    began = time.monotonic()
    _, sent, errors = await _drive(which, host, "jw_not-a-key", 0)
    assert time.monotonic() - began < 60
    assert len(errors) == len(sent)
    assert all("401" in error and "unknown or revoked key" in error for error in errors), errors[:2]
