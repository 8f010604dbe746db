"""A customer's journey through a map: stage per touchpoint, transitions, non-linear moves."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

from journeys.keys import add_key
from query.maps import validate_map
from query.journey import CompiledMap, build_journey
from support import basic, wait_drained

MAP = {
    "name": "shop",
    "stages": [
        {"id": "aware", "name": "Aware"},
        {"id": "consider", "name": "Consider"},
        {"id": "buy", "name": "Buy"},
        {"id": "loyal", "name": "Loyal"},
    ],
    "touchpoints": [
        {"id": "ad", "stage": "aware", "match": {"channel": "ads"}},
        {"id": "visit", "stage": "aware", "match": {"type": "page", "channel": "web"}},
        {"id": "email", "stage": "consider", "match": {"event": "Email Clicked", "channel": "email"}},
        {
            "id": "pos",
            "stage": "buy",
            "match": {
                "event": ["Store Purchase", "Order Completed"],
                "where": [{"property": "order.total", "op": ">", "value": 0}],
            },
            "sentiment": "positive",
        },
        {
            "id": "review",
            "stage": "loyal",
            "match": {"event": "Review"},
            "sentiment": {"property": "rating", "positive_at_least": 4, "negative_at_most": 2},
        },
    ],
}


def _e(t, kind, channel, event="", mid=None, **props):  # type: ignore[no-untyped-def]
    return {
        "timestamp": f"2026-05-{t}Z",
        "message_id": mid or t,
        "type": kind,
        "event": event,
        "channel": channel,
        "properties": props,
        "sentiment": "",
    }


def test_transitions_mark_forward_skip_regression_and_repeat() -> None:
    compiled = CompiledMap(validate_map(MAP), 3)
    events = [
        _e("01T10:00:00", "track", "ads", "Ad Viewed"),  # first: aware
        _e("01T11:00:00", "page", "web", "Home"),  # aware again: no transition
        _e("02T09:00:00", "track", "store", "Store Purchase", order={"total": 30}),  # skip consider → buy
        _e("03T09:00:00", "track", "email", "Email Clicked"),  # regression → consider
        _e("04T09:00:00", "track", "web", "Order Completed", order={"total": 0}),  # total 0: no rule
        _e("05T09:00:00", "track", "store", "Order Completed", order={"total": 9}),  # forward buy, a repeat
        _e("06T09:00:00", "track", "app", "Review", rating=1),  # forward loyal, negative
    ]
    journey = build_journey(events, compiled, now=datetime(2026, 5, 7, 9, tzinfo=timezone.utc))
    assert [t["stage"] for t in journey["touchpoints"]] == ["aware", "aware", "buy", "consider", None, "buy", "loyal"]
    assert [t["touchpoint"] for t in journey["touchpoints"]] == ["ad", "visit", "pos", "email", None, "pos", "review"]
    assert [t["sentiment"] for t in journey["touchpoints"]] == ["", "", "positive", "", "", "positive", "negative"]
    assert [(t["from"], t["to"], t["kind"], t["repeat"], t["skipped"]) for t in journey["transitions"]] == [
        (None, "aware", "first", False, []),
        ("aware", "buy", "skip", False, ["consider"]),
        ("buy", "consider", "regression", False, []),
        ("consider", "buy", "forward", True, []),
        ("buy", "loyal", "forward", False, []),
    ]
    assert journey["current_stage"] == "loyal"
    assert journey["current_stage_entered_at"] == "2026-05-06T09:00:00Z"
    assert journey["time_in_current_stage_seconds"] == 86400
    assert journey["non_linear"] == {"repeats": 1, "regressions": 1, "skips": 1}
    assert journey["map"] == {"name": "shop", "version": 3}


def test_first_touch_deep_in_the_map_lists_the_stages_never_seen() -> None:
    compiled = CompiledMap(validate_map(MAP), 1)
    journey = build_journey([_e("01T10:00:00", "track", "store", "Store Purchase", order={"total": 5})], compiled)
    assert journey["transitions"][0]["kind"] == "first"
    assert journey["transitions"][0]["skipped"] == ["aware", "consider"]


async def test_journey_endpoint_reads_the_stitched_customer(http, collector, query, stores, project) -> None:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
    async with http.put(query.make_url("/v1/maps/shop"), data=orjson.dumps(MAP), headers=basic(admin)) as r:
        assert r.status == 201
    batch = [
        {"type": "page", "anonymousId": "v1", "name": "Home", "timestamp": "2026-05-01T10:00:00Z", "messageId": "j1"},
        {
            "type": "identify",
            "anonymousId": "v1",
            "userId": "hal",
            "timestamp": "2026-05-01T10:01:00Z",
            "messageId": "j2",
        },
        {
            "type": "track",
            "userId": "hal",
            "event": "Email Clicked",
            "channel": "email",
            "timestamp": "2026-05-02T10:00:00Z",
            "messageId": "j3",
        },
        {
            "type": "track",
            "userId": "hal",
            "event": "Store Purchase",
            "channel": "store",
            "properties": {"order": {"total": 12}},
            "timestamp": "2026-05-03T10:00:00Z",
            "messageId": "j4",
        },
    ]
    async with http.post(
        collector.make_url("/v1/batch"), data=orjson.dumps({"batch": batch}), headers=basic(project.write_key)
    ) as r:
        assert r.status == 200
    await wait_drained(collector)
    async with http.get(query.make_url("/v1/customers/v1/journey?map=shop"), headers=basic(project.read_key)) as resp:
        journey = await resp.json()
    assert resp.status == 200 and journey["customer_id"] == "hal" and journey["ids"] == ["hal", "v1"]
    assert [(t["message_id"], t["stage"]) for t in journey["touchpoints"]] == [
        ("j1", "aware"),
        ("j2", None),
        ("j3", "consider"),
        ("j4", "buy"),
    ]
    assert [t["kind"] for t in journey["transitions"]] == ["first", "forward", "forward"]
    assert journey["current_stage"] == "buy" and journey["map"]["version"] == 1
    for path, field, status in (
        ("/v1/customers/hal/journey", "map", 400),
        ("/v1/customers/hal/journey?map=nope", "map", 404),
        ("/v1/customers/hal/journey?map=shop&version=2", "map", 404),
        ("/v1/customers/hal/journey?map=shop&version=zero", "version", 400),
    ):
        async with http.get(query.make_url(path), headers=basic(project.read_key)) as resp:
            assert resp.status == status and (await resp.json())["errors"][0]["field"] == field, path
