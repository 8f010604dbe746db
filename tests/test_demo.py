"""`journeys demo` as a new user runs it: against a real `journeys up` in a child process, on 127.0.0.1.

The demo sends its data set through the collector's real doors (SDK, tracker requests, store CSV import,
signed email links); these tests read it back through the query service only, as the dashboard does.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cli.demo import SHOP, generate
from testkit.net import free_port
from testkit.service import Service, journeys, stop_leftover_postgres

CHANNELS = {"web", "email", "store", "app", "call_centre", "ads", "social"}
SMALL = ("--customers", "60", "--days", "30")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("demo")
    svc = Service(data_dir).start()
    yield svc
    svc.stop()
    stop_leftover_postgres(data_dir)


def _demo(service: Service, *args: str) -> tuple[dict[str, Any], str]:
    done = journeys(
        service.data_dir,
        "demo",
        *args,
        "--json",
        JOURNEYS_COLLECTOR_PORT=str(service.collector_port),
        JOURNEYS_QUERY_PORT=str(service.query_port),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def _call(url: str, key: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()} if key else {}
    request = urllib.request.Request(url, data=body, headers={**auth, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _get(service: Service, path: str, key: str) -> Any:
    status, answer = _call(service.query + path, key)
    assert status == 200, (path, answer)
    return answer


def _stats_until(service: Service, key: str, events: int, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = _get(service, "/v1/stats", key)
        if stats["events"] == events or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


@pytest.mark.slow
def test_demo_sends_a_whole_project_through_the_running_service_and_a_rerun_counts_nothing_twice(
    service: Service,
) -> None:
    expected = generate(customers=60, days=30)  # event counts and ids do not depend on the anchor time
    first, progress = _demo(service, *SMALL)
    assert first["created"] is True and first["project"] == "demo"
    assert first["dashboard"] == service.query + "/"
    assert first["events"] == expected.total_events
    assert "demo [" in progress and "100%" in progress  # the plain-text progress bar, on stderr
    read = first["read_key"]
    assert first["write_key"].startswith("jw_") and read.startswith("jr_") and first["public_key"].startswith("jp_")

    # Visible when the command returns: every event once, nothing quarantined.
    stats = _get(service, "/v1/stats", read)
    assert stats["events"] == expected.total_events and stats["quarantined"] == 0

    # Every channel, read back per customer (by the first id each person used).
    seen: set[str] = set()
    for ids in expected.people.values():
        answer = _get(service, f"/v1/customers/{ids[0]}/events?limit=10000", read)
        seen |= {event["channel"] for event in answer["events"]}
    assert CHANNELS <= seen, CHANNELS - seen

    # Anonymous visitors who signed up or logged in are stitched: each such anonymous id is their customer.
    links = {(e["anonymousId"], e["userId"]) for e in expected.tracker if e["type"] == "identify"}
    assert len(links) >= 5
    for anonymous_id, user_id in links:
        answer = _get(service, f"/v1/customers/{anonymous_id}/events?limit=1", read)
        assert answer["customer_id"] == user_id and anonymous_id in answer["ids"]

    # The map's targets: some stages met, some missed, in the window the demo covers.
    window = first["window"]
    kpis = _get(service, f"/v1/kpis?map=five-stage&segment=*&from={window['from']}&to={window['to']}", read)
    statuses = {stage["status"] for stage in kpis["segments"][0]["stages"]}
    assert {"met", "below_target"} <= statuses, statuses
    assert kpis["segments"][0]["bottleneck"] is not None
    assert {s["segment"] for s in kpis["segments"]} == {None, "loyalty-members", "paid-acquisition", "store-first"}

    # Again: the same project, new keys (the old ones are stored hashed), the same events, each counted once.
    second, _ = _demo(service, *SMALL)
    assert second["created"] is False and second["project_id"] == first["project_id"]
    assert {second[k] for k in ("write_key", "read_key", "public_key")}.isdisjoint(
        {first[k] for k in ("write_key", "read_key", "public_key")}
    )
    assert second["events"] == expected.total_events
    assert _get(service, "/v1/stats", second["read_key"])["events"] == expected.total_events

    # The printed write and public keys write (the public one from the demo shop's origin only).
    event = {"userId": "probe", "event": "Probe", "messageId": "probe-write"}
    status, _ = _call(
        service.collector + "/v1/track",
        second["write_key"],
        json.dumps(event).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200
    batch = {"batch": [{**event, "type": "track", "messageId": "probe-public"}], "writeKey": second["public_key"]}
    body = json.dumps(batch).encode()
    assert _call(service.collector + "/v1/batch", "", body, {"Origin": "https://elsewhere.example"})[0] == 403
    assert _call(service.collector + "/v1/batch", "", body, {"Origin": SHOP, "Content-Type": "text/plain"})[0] == 200
    assert _stats_until(service, first["read_key"], expected.total_events + 2)["events"] == expected.total_events + 2


def test_demo_without_a_running_service_says_so_in_one_line(tmp_path: Path) -> None:
    done = journeys(
        tmp_path, "demo", *SMALL, JOURNEYS_COLLECTOR_PORT=str(free_port()), JOURNEYS_QUERY_PORT=str(free_port())
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "journeys up" in lines[0], done.stderr
    assert not (tmp_path / "postgres").exists()  # nothing was created


def test_the_data_set_is_the_same_for_a_seed_and_has_every_kind_of_journey() -> None:
    a = generate(seed=7, customers=80, days=60, anchor=datetime(2026, 3, 1, 8, 15, tzinfo=timezone.utc))
    b = generate(
        seed=7, customers=80, days=60, anchor=datetime(2026, 3, 1, 8, 15, tzinfo=timezone.utc) + timedelta(hours=13)
    )
    c = generate(seed=8, customers=80, days=60, anchor=datetime(2026, 3, 1, 8, 15, tzinfo=timezone.utc))

    def ids(data: Any) -> list[str]:
        return (
            [k["message_id"] for _, k in data.sdk]
            + [e["messageId"] for e in data.tracker]
            + [r["message_id"] for r in data.store_rows]
        )

    assert ids(a) == ids(b) and len(set(ids(a))) == len(ids(a))  # deterministic, unique, anchor-independent
    assert not set(ids(a)) & set(ids(c))
    assert a.channels == CHANNELS
    end = a.anchor_ms
    times = (
        [k["timestamp"] for _, k in a.sdk] + [e["timestamp"] for e in a.tracker] + [r["sold_at"] for r in a.store_rows]
    )
    assert all(end - 60 * 86_400_000 - 3_600_000 <= _ms(t) < end for t in times)  # history, never the future
    assert a.store_rows and a.live_emails and any(m == "alias" for m, _ in a.sdk)
    assert any(k.get("sentiment") == "negative" for _, k in a.sdk) and any(
        k.get("sentiment") == "positive" for _, k in a.sdk
    )


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
