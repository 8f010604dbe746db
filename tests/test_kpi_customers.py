"""From a KPI number to the customers behind it (issue 20): ``GET /v1/kpis/customers`` lists exactly the
customers each stage count counts, ``GET /v1/kpis/dropped`` says what those who dropped did, and customers
are findable (``GET /v1/customers?prefix=`` / ``?recent=1``; an unknown id is a 404).

The lists and the drop-off summaries are compared with a brute-force computation over the generated
journeys (the generator and the oracle's definitions of tests/test_kpis.py and tests/kpi_oracle.py), for
every stage, outcome and segment; the lists' lengths with the KPI counts.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.maps import segment_matches, validate_map, validate_segment
from kpi_oracle import _ms
from query.journey import CompiledMap, build_journey
from support import basic, wait_until
from test_kpis import BASE, MAP, SEGMENTS, TODAY, _caught_up, _generate, _kpis, _new_project, _send, customer_st

OUTCOMES = ("reached", "entered", "converted", "dropped", "in_progress")
DAY_MS = 86_400_000
# What the collector stores as an event's touchpoint when the sender names none (journeys/events.py): a
# track's event name, page_view for a page, the type for the rest.
DEFAULT_TOUCHPOINT = {"page": "page_view", "screen": "screen_view"}


def _window_ms(first_day: date, last_day: date) -> tuple[int, int]:
    start = int(datetime(first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc).timestamp() * 1000)
    return start, start + ((last_day - first_day).days + 1) * DAY_MS


def _as_of_ms(answer: dict[str, Any]) -> int:
    return _ms(answer["as_of"])


def oracle_outcomes(journeys, facts, segment: str, first_day: date, last_day: date, now_ms: int):  # type: ignore[no-untyped-def]
    """Brute force, straight from docs/kpis.md: stage id → outcome → the set of customers, and each
    customer's entered time per stage (ms)."""
    journey_map = validate_map(MAP)
    compiled = CompiledMap(journey_map, 1)
    windows = {s.id: int(round(s.conversion_window_days * DAY_MS)) for s in journey_map.stages}
    w_from, w_to = _window_ms(first_day, last_day)
    segments = {s["name"]: validate_segment(s) for s in SEGMENTS}
    out: dict[str, dict[str, set[str]]] = {s: {o: set() for o in OUTCOMES} for s in compiled.order}
    entered_at: dict[tuple[str, str], int] = {}
    for customer, events in journeys.items():
        if segment and not segment_matches(segments[segment], facts[customer]):
            continue
        touches = build_journey(events, compiled)["touchpoints"]
        for i, stage in enumerate(compiled.order):
            entry = next((n for n, t in enumerate(touches) if t["stage"] == stage), None)
            if entry is None:
                continue
            entered = _ms(touches[entry]["time"])
            entered_at[(customer, stage)] = entered
            if entered >= w_to:
                continue
            out[stage]["reached"].add(customer)
            if entered < w_from:
                continue
            out[stage]["entered"].add(customer)
            if i == len(compiled.order) - 1:
                continue
            moved = next(
                (_ms(t["time"]) for t in touches[entry + 1 :] if t["stage"] and compiled.index[t["stage"]] > i), None
            )
            if moved is not None and moved - entered <= windows[stage]:
                out[stage]["converted"].add(customer)
            elif entered + windows[stage] <= now_ms:
                out[stage]["dropped"].add(customer)
            else:
                out[stage]["in_progress"].add(customer)
    return out, entered_at


def _stored_touchpoint(event: dict[str, Any]) -> str:
    if event["type"] == "track":
        return event["event"]
    return DEFAULT_TOUCHPOINT.get(event["type"], event["type"])


def oracle_dropped(journeys, dropped: set[str], entered_at: dict[tuple[str, str], int], stage: str):  # type: ignore[no-untyped-def]
    """docs/kpis.md, "After drop-off", by brute force over the customers' raw events (every event, staged or not)."""
    window = int(round(next(s for s in MAP["stages"] if s["id"] == stage)["conversion_window_days"] * DAY_MS))
    last_tp: Counter[str] = Counter()
    last_chan: Counter[str] = Counter()
    after_tp: dict[str, set[str]] = {}
    after_chan: dict[str, set[str]] = {}
    tp_events: Counter[str] = Counter()
    chan_events: Counter[str] = Counter()
    for customer in dropped:
        events = sorted(journeys[customer], key=lambda e: (_ms(e["timestamp"]), e["message_id"]))
        last = events[-1]
        last_tp[_stored_touchpoint(last)] += 1
        last_chan[last["channel"]] += 1
        start = entered_at[(customer, stage)]
        for e in events:
            if start < _ms(e["timestamp"]) <= start + window:
                tp, chan = _stored_touchpoint(e), e["channel"]
                after_tp.setdefault(tp, set()).add(customer)
                after_chan.setdefault(chan, set()).add(customer)
                tp_events[tp] += 1
                chan_events[chan] += 1

    def ranked(counts: dict[str, int], label: str, events: dict[str, int] | None = None) -> list[dict[str, Any]]:
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return [{label: k, "customers": v, **({} if events is None else {"events": events[k]})} for k, v in top]

    return {
        "dropped": len(dropped),
        "last_touchpoints": ranked(dict(last_tp), "touchpoint"),
        "last_channels": ranked(dict(last_chan), "channel"),
        "after_entry": {
            "customers": len(set().union(*after_tp.values())) if after_tp else 0,
            "touchpoints": ranked({k: len(v) for k, v in after_tp.items()}, "touchpoint", dict(tp_events)),
            "channels": ranked({k: len(v) for k, v in after_chan.items()}, "channel", dict(chan_events)),
        },
    }


async def _get(http, query, key: str, path: str, **params: str) -> tuple[int, Any]:  # type: ignore[no-untyped-def]
    async with http.get(query.make_url(path), params=params, headers=basic(key)) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def _whole_list(  # type: ignore[no-untyped-def]
    http, query, key: str, limit: int = 3, **params: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page of a list, following the cursors: (customers, pages)."""
    pages, customers, cursor = [], [], None
    while True:
        status, page = await _get(
            http, query, key, "/v1/kpis/customers", limit=str(limit), **params, **({"cursor": cursor} if cursor else {})
        )
        assert status == 200, page
        pages.append(page)
        customers += page["customers"]
        assert len(page["customers"]) <= limit
        cursor = page["next_cursor"]
        if cursor is None:
            return customers, pages


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("KPI_EXAMPLES", "4")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    customers=st.lists(customer_st, min_size=4, max_size=10),
    window=st.sampled_from([(-5, 0), (-15, -10), (-19, -19), (-20, 0)]),
)
async def test_every_list_is_its_count_and_the_brute_force_customers(  # type: ignore[no-untyped-def]
    http, collector, query, stores, customers, window
) -> None:
    """For every segment, stage and outcome: the customers listed (all pages, 3 at a time) are exactly those
    the brute force counts at the list's `as_of`, and as many as the KPI count (when no customer crossed a
    boundary between the two answers' `as_of`); the drop-off summary equals its brute force."""
    project = await _new_project(stores)
    first, late, journeys, facts = _generate(project.id[:8], customers)
    await _send(http, collector, project.write_key, first + late)
    await _caught_up(query)
    first_day, last_day = (TODAY + timedelta(days=window[0])).date(), (TODAY + timedelta(days=window[1])).date()
    span = {"from": first_day.isoformat(), "to": last_day.isoformat()}
    kpis = await _kpis(http, query, project.read_key, map="funnel", segment="*", **span)
    key = project.read_key
    order = [s["id"] for s in MAP["stages"]]
    for seg in kpis["segments"]:
        segment = seg["segment"] or ""
        at_kpis, _ = oracle_outcomes(journeys, facts, segment, first_day, last_day, _as_of_ms(kpis))
        for i, stage in enumerate(seg["stages"]):
            outcomes = OUTCOMES[:2] if i == len(order) - 1 else OUTCOMES
            for outcome in outcomes:
                params = {
                    "map": "funnel",
                    "stage": stage["id"],
                    "outcome": outcome,
                    **span,
                    **({"segment": segment} if segment else {}),
                }
                listed, pages = await _whole_list(http, query, key, **params)
                ids = [c["customer_id"] for c in listed]
                assert len(ids) == len(set(ids)), ids
                assert all(p["as_of"] == pages[0]["as_of"] and p["total"] == len(ids) for p in pages)
                expected, entered_at = oracle_outcomes(
                    journeys, facts, segment, first_day, last_day, _as_of_ms(pages[0])
                )
                assert set(ids) == expected[stage["id"]][outcome], (segment, stage["id"], outcome)
                if expected[stage["id"]][outcome] == at_kpis[stage["id"]][outcome]:  # nobody crossed in between
                    assert len(ids) == stage[outcome], (segment, stage["id"], outcome)
                for c in listed:
                    assert _ms(c["entered_at"]) == entered_at[(c["customer_id"], stage["id"])]
                    events = journeys[c["customer_id"]]
                    latest = max(events, key=lambda e: (_ms(e["timestamp"]), e["message_id"]))
                    assert c["last_touch"] == {
                        "touchpoint": _stored_touchpoint(latest),
                        "channel": latest["channel"],
                        "at": latest["timestamp"],
                    }
                    journey = build_journey(events, CompiledMap(validate_map(MAP), 1))
                    assert c["current_stage"] == journey["current_stage"]
                    if outcome in ("converted", "dropped", "in_progress"):
                        assert c["outcome"] == outcome
            if i < len(order) - 1:
                status, summary = await _get(
                    http,
                    query,
                    key,
                    "/v1/kpis/dropped",
                    map="funnel",
                    stage=stage["id"],
                    **span,
                    **({"segment": segment} if segment else {}),
                )
                assert status == 200, summary
                expected, entered_at = oracle_outcomes(
                    journeys, facts, segment, first_day, last_day, _as_of_ms(summary)
                )
                want = oracle_dropped(journeys, expected[stage["id"]]["dropped"], entered_at, stage["id"])
                got = {k: summary[k] for k in ("dropped", "last_touchpoints", "last_channels", "after_entry")}
                assert got == want, (segment, stage["id"])


async def _one_project(http, collector, query, stores):  # type: ignore[no-untyped-def]
    """A small fixed project: three customers through the funnel map, 20 days back (everything decided)."""
    project = await _new_project(stores)

    def at(days: float) -> str:
        return (BASE + timedelta(days=days)).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    events = [
        {"type": "track", "userId": "ann", "event": "A", "channel": "web", "timestamp": at(1), "messageId": "ann-1"},
        {
            "type": "track",
            "userId": "ann",
            "event": "B",
            "channel": "email",
            "timestamp": at(1.5),
            "messageId": "ann-2",
        },
        {"type": "track", "userId": "bob", "event": "A", "channel": "web", "timestamp": at(1), "messageId": "bob-1"},
        {
            "type": "page",
            "userId": "bob",
            "name": "Pricing",
            "channel": "web",
            "timestamp": at(1.2),
            "messageId": "bob-2",
        },
        {"type": "track", "userId": "=cmd", "event": "A", "channel": "store", "timestamp": at(2), "messageId": "cmd-1"},
        {
            "type": "track",
            "userId": "=cmd",
            "event": "Newsletter",
            "channel": "email",
            "timestamp": at(2.5),
            "messageId": "cmd-2",
        },
        {
            "type": "identify",
            "userId": "carl",
            "traits": {"plan": "vip"},
            "channel": "web",
            "timestamp": at(3),
            "messageId": "carl-0",
        },
    ]
    await _send(http, collector, project.write_key, events)
    await _caught_up(query)
    await _kpis(http, query, project.read_key, map="funnel")
    return project


async def test_lists_and_summaries_check_their_parameters(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    project = await _one_project(http, collector, query, stores)
    key = project.read_key
    base = {"map": "funnel", "stage": "aware", "outcome": "dropped"}
    cases = [
        ({**base, "stage": ""}, 400, "stage"),
        ({"map": "funnel", "outcome": "dropped"}, 400, "stage"),
        ({**base, "outcome": "lost"}, 400, "outcome"),
        ({"map": "funnel", "stage": "aware"}, 400, "outcome"),
        ({**base, "limit": "0"}, 400, "limit"),
        ({**base, "limit": "1001"}, 400, "limit"),
        ({**base, "limit": "ten"}, 400, "limit"),
        ({**base, "cursor": "not-a-cursor"}, 400, "cursor"),
        ({**base, "cursor": "W10"}, 400, "cursor"),
        ({**base, "segment": "*"}, 400, "segment"),
        ({**base, "from": "2026-13-01"}, 400, "from"),
        ({**base, "format": "xml"}, 400, "format"),
        ({**base, "stage": "loyal"}, 400, "outcome"),  # the last stage: nobody converts or drops there
        ({**base, "stage": "nope"}, 404, "stage"),
        ({**base, "map": "nope"}, 404, "map"),
        ({**base, "segment": "nope"}, 404, "segment"),
    ]
    for params, status, field in cases:
        got, body = await _get(http, query, key, "/v1/kpis/customers", **params)
        assert (got, body["errors"][0]["field"]) == (status, field), (params, body)
    for params, status, field in (
        ({"map": "funnel", "stage": "loyal"}, 400, "stage"),
        ({"map": "funnel", "stage": "nope"}, 404, "stage"),
        ({"map": "funnel"}, 400, "stage"),
        ({"map": "funnel", "stage": "aware", "outcome": "dropped"}, 400, "outcome"),
        ({"map": "funnel", "stage": "aware", "format": "csv"}, 400, "format"),
        ({"map": "funnel", "stage": "aware", "segment": "nope"}, 404, "segment"),
    ):
        got, body = await _get(http, query, key, "/v1/kpis/dropped", **params)
        assert (got, body["errors"][0]["field"]) == (status, field), (params, body)
    # A cursor belongs to its list: another stage, outcome or window is refused.
    span = {"from": BASE.date().isoformat(), "to": TODAY.date().isoformat()}
    status, page = await _get(http, query, key, "/v1/kpis/customers", **base, **span, limit="1")
    assert status == 200 and page["next_cursor"], page
    for other in (
        {"outcome": "reached"},
        {"stage": "consider"},
        {"from": (BASE - timedelta(days=1)).date().isoformat()},
    ):
        status, body = await _get(
            http, query, key, "/v1/kpis/customers", **{**base, **span, **other}, cursor=page["next_cursor"]
        )
        assert status == 400 and body["errors"][0]["field"] == "cursor", (other, body)
    async with http.get(query.make_url("/v1/kpis/customers"), params=base, headers=basic(project.write_key)) as r:
        assert r.status == 403


async def test_a_list_as_csv_streams_every_page(http, collector, query, stores, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """format=csv: every customer of the list, read a page at a time (here 2 per page), the same rows as the
    JSON pages; a value a spreadsheet would run as a formula is quoted."""
    from query import kpi_customers

    project = await _one_project(http, collector, query, stores)
    monkeypatch.setattr(kpi_customers, "CSV_PAGE", 2)
    params = {"map": "funnel", "stage": "aware", "outcome": "reached", "from": BASE.date().isoformat()}
    async with http.get(
        query.make_url("/v1/kpis/customers"), params={**params, "format": "csv"}, headers=basic(project.read_key)
    ) as r:
        assert r.status == 200 and r.content_type == "text/csv", await r.text()
        assert "attachment" in r.headers["Content-Disposition"] and r.headers["X-Journeys-Acknowledged-Before"]
        rows = list(csv.DictReader(io.StringIO(await r.text())))
    listed, _ = await _whole_list(http, query, project.read_key, limit=1, **params)
    assert [r["customer_id"] for r in rows] == [
        ("'" if c["customer_id"].startswith("=") else "") + c["customer_id"] for c in listed
    ]
    assert {r["customer_id"] for r in rows} == {"ann", "bob", "'=cmd"}
    by_id = {r["customer_id"]: r for r in rows}
    assert (by_id["ann"]["outcome"], by_id["ann"]["current_stage"], by_id["ann"]["last_touchpoint"]) == (
        "converted",
        "consider",
        "B",
    )
    assert (by_id["bob"]["outcome"], by_id["bob"]["last_touchpoint"], by_id["bob"]["last_channel"]) == (
        "dropped",
        "page_view",
        "web",
    )
    status, summary = await _get(
        http,
        query,
        project.read_key,
        "/v1/kpis/dropped",
        map="funnel",
        stage="aware",
        **{"from": BASE.date().isoformat()},
    )
    assert summary["dropped"] == 2
    assert summary["last_touchpoints"] == [
        {"touchpoint": "Newsletter", "customers": 1},
        {"touchpoint": "page_view", "customers": 1},
    ]
    assert summary["after_entry"]["touchpoints"] == [
        {"touchpoint": "Newsletter", "customers": 1, "events": 1},
        {"touchpoint": "page_view", "customers": 1, "events": 1},
    ]


async def test_an_unknown_customer_is_a_404_and_a_known_one_without_this_map_is_not(  # type: ignore[no-untyped-def]
    http, collector, query, stores
) -> None:
    from journeys.keys import add_key

    project = await _one_project(http, collector, query, stores)
    key = project.read_key
    for path in ("/v1/customers/nobody", "/v1/customers/nobody/events", "/v1/customers/nobody/journey?map=funnel"):
        async with http.get(query.make_url(path), headers=basic(key)) as r:
            assert r.status == 404, (path, await r.text())
            assert (await r.json())["errors"][0]["field"] == "customer_id"
    # carl only identified himself: a customer, with traits and segments, and an empty journey through the map.
    status, carl = await _get(http, query, key, "/v1/customers/carl")
    assert status == 200 and carl["traits"] == {"plan": "vip"} and carl["segments"] == ["vip", "web-first"]
    status, journey = await _get(http, query, key, "/v1/customers/carl/journey", map="funnel")
    assert status == 200 and journey["current_stage"] is None and journey["transitions"] == []
    # Forgotten: unknown from then on.
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
    async with http.delete(query.make_url("/v1/customers/carl"), headers=basic(admin)) as r:
        assert r.status == 200
    for path in ("/v1/customers/carl", "/v1/customers/carl/events"):
        async with http.get(query.make_url(path), headers=basic(key)) as r:
            assert r.status == 404, path


async def test_customers_are_found_by_id_prefix_and_by_recent_activity(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    project = await _one_project(http, collector, query, stores)
    key = project.read_key
    now = datetime.now(timezone.utc)
    recent = [
        {
            "type": "page",
            "anonymousId": "anon-zed",
            "name": "Home",
            "channel": "web",
            "messageId": "z-1",
            "timestamp": (now - timedelta(minutes=5)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        },
        {
            "type": "identify",
            "anonymousId": "anon-zed",
            "userId": "zed",
            "channel": "web",
            "messageId": "z-2",
            "timestamp": (now - timedelta(minutes=4)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        },
        {
            "type": "track",
            "userId": "bobby",
            "event": "A",
            "channel": "email",
            "messageId": "bobby-1",
            "timestamp": (now - timedelta(minutes=10)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        },
    ]
    await _send(http, collector, project.write_key, recent)

    async def found(**params: str) -> dict[str, Any]:
        status, body = await _get(http, query, key, "/v1/customers", **params)
        assert status == 200, body
        return body

    async def stitched() -> dict[str, Any] | None:
        body = await found(prefix="anon-")
        return body if body["customers"] and body["customers"][0]["customer_id"] == "zed" else None

    body = await wait_until(stitched, timeout=30)  # the anonymous id is found as the customer it joined
    assert body["customers"] == [
        {
            "customer_id": "zed",
            "matched_ids": ["anon-zed"],
            "last_touch": {"touchpoint": "identify", "channel": "web", "at": recent[1]["timestamp"]},
        }
    ]
    body = await found(prefix="bo")
    assert [c["customer_id"] for c in body["customers"]] == ["bob", "bobby"] and body["truncated"] is False
    body = await found(prefix="bo", limit="1")
    assert [c["customer_id"] for c in body["customers"]] == ["bob"] and body["truncated"] is True
    assert (await found(prefix="nobody"))["customers"] == []
    body = await found(recent="1", limit="2")
    assert [c["customer_id"] for c in body["customers"]] == ["zed", "bobby"]
    body = await found(recent="1")
    assert [c["customer_id"] for c in body["customers"]][:2] == ["zed", "bobby"]
    assert {c["customer_id"] for c in body["customers"]} == {"zed", "bobby", "ann", "bob", "=cmd", "carl"}
    for params, field in (
        ({}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "x" * 256}, "prefix"),
        ({"recent": "yes"}, "recent"),
        ({"prefix": "a", "recent": "1"}, "recent"),
        ({"prefix": "a", "limit": "0"}, "limit"),
        ({"recent": "1", "limit": "101"}, "limit"),
    ):
        status, body = await _get(http, query, key, "/v1/customers", **params)
        assert status == 400 and body["errors"][0]["field"] == field, (params, body)
    other = await _new_project(stores)
    status, body = await _get(http, query, other.read_key, "/v1/customers", prefix="bo")
    assert status == 200 and body["customers"] == []
