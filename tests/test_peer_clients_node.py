"""The official Node clients, unmodified — Segment's @segment/analytics-node and RudderStack's
@rudderstack/rudder-sdk-node — against the real collector and read back through the query service.

Each runs in its own ``node`` process (tests/peers/node-client.mjs) with its clock hours off (the
clock-shift shim, loaded with ``node -r``), and makes every call its API has: an anonymous visitor's page,
screen, track (a touchpoint channel in ``properties.channel``) and group, then identify with the user id,
a track as the user, an event under a CRM id that happened ten minutes before it was sent, and alias
CRM id → user id. Every event must be readable exactly once by any of the three ids, at the real time of
the call (only the ``sentAt`` correction can do that), with its channel. The collector notes each request
as it arrived, and a failing assertion shows them.

Needs node and npm (tests/peers_support.py installs the pinned clients once); skipped, loudly, without them.
"""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from peers_support import (  # noqa: F401  (fixtures)
    HOURS,
    TIME_SLACK_S,
    by_name,
    check_clock_shift,
    customer_events,
    parse_time,
    peers,
    wait_customer,
    watched_collector,
)
from support import wait_drained

UTM_URL = "https://shop.example/pricing?utm_source=news&utm_medium=email&utm_campaign=spring"
TEN_MINUTES_S = 600.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("client", "offset_ms"),
    [("segment", 3 * HOURS), ("rudderstack", -3 * HOURS)],
    ids=["segment-analytics-node-3.1.0", "rudder-sdk-node-3.1.1"],
)
async def test_node_client_calls_are_stored_once_stitched_at_real_time_with_their_channels(  # type: ignore[no-untyped-def]
    peers,
    watched_collector,
    query,
    http,
    project,
    client,
    offset_ms,
) -> None:
    collector = await watched_collector()
    run = uuid.uuid4().hex[:8]
    anonymous, user, crm, group = f"anon-{run}", f"user-{run}", f"crm-{run}", f"group-{run}"
    plan = {
        "client": client,
        "host": collector.base,
        "writeKey": project.write_key,
        "anonymousId": anonymous,
        "userId": user,
        "crmId": crm,
        "groupId": group,
        "url": UTM_URL,
    }
    before = time.time()
    result = await peers.run_node("node-client.mjs", plan, offset_ms)
    after = time.time()
    wire = collector.report()
    print(f"\n--- {client}: what the collector received ---\n{wire}\n--- client said: {result}")

    # The client's own view: every call delivered, no error reported (a refused batch shows up here).
    assert [kind for kind, _ in result["calls"]] and all(err is None for _, err in result["calls"]), (result, wire)
    assert result["errors"] == [], (result["errors"], wire)
    assert all(s.status == 200 for s in collector.seen), wire
    check_clock_shift(collector, offset_ms)  # the clock really was off on the wire

    body = await wait_customer(http, query, project.read_key, user, 8)
    await wait_drained(collector.server)  # a late duplicate or a stray event would be in by now
    body = await customer_events(http, query, project.read_key, user)
    events = body["events"]
    named = by_name(events)
    summary = [(e["type"], e["event"], e["channel"], e["user_id"], e["anonymous_id"], e["timestamp"]) for e in events]

    # Exactly once each: the stored message ids are the ones on the wire, one event per call.
    wire_ids = {e.get("messageId") for _, e in collector.wire_events()}
    assert len(wire_ids) == 8 and None not in wire_ids, wire
    assert body["count"] == 8 and {e["message_id"] for e in events} == wire_ids, (summary, wire)
    assert sorted(named) == sorted(
        [
            ("page", "Pricing"),
            ("screen", "Home"),
            ("track", "Email Clicked"),
            ("group", ""),
            ("identify", ""),
            ("track", "Order Completed"),
            ("track", "Store Purchase"),
            ("alias", ""),
        ]
    ), summary
    assert all(len(v) == 1 for v in named.values()), summary

    # Stitching: one customer, the same events by the anonymous id, the user id and the CRM id.
    assert body["customer_id"] == user and set(body["ids"]) >= {anonymous, user, crm}, body["ids"]
    for other in (anonymous, crm):
        by_other = await customer_events(http, query, project.read_key, other)
        assert by_other["customer_id"] == user and {e["message_id"] for e in by_other["events"]} == wire_ids, other
    for key in (("page", "Pricing"), ("screen", "Home"), ("track", "Email Clicked"), ("group", "")):
        assert (named[key][0]["anonymous_id"], named[key][0]["user_id"]) == (anonymous, ""), named[key]
    identify = named[("identify", "")][0]
    assert (identify["user_id"], identify["anonymous_id"], identify["traits"]) == (user, anonymous, {"plan": "pro"})
    assert named[("group", "")][0]["group_id"] == group and named[("group", "")][0]["traits"] == {"name": "Acme"}
    assert named[("alias", "")][0]["previous_id"] == crm and named[("alias", "")][0]["user_id"] == user
    assert named[("track", "Store Purchase")][0]["user_id"] == crm

    # Times: the real time of the call despite a clock hours off — and the till's event ten minutes before.
    for event in events:
        at = parse_time(event["timestamp"])
        expected = (
            (before - TEN_MINUTES_S, after - TEN_MINUTES_S) if event["event"] == "Store Purchase" else (before, after)
        )
        assert expected[0] - TIME_SLACK_S <= at <= expected[1] + TIME_SLACK_S, (
            f"{event['type']}/{event['event']} stored at {event['timestamp']}, real time of the call was "
            f"{time.strftime('%H:%M:%S', time.gmtime(expected[0]))}–{time.strftime('%H:%M:%S', time.gmtime(expected[1]))} UTC"
            f" (client clock {offset_ms / HOURS:+.0f} h)",
            summary,
        )

    # Channels: the touchpoint given in properties wins; a page is web, a screen app; and RudderStack's
    # top-level "channel": "server" (where the library runs) is never a customer's channel.
    assert named[("track", "Email Clicked")][0]["channel"] == "email", summary
    assert named[("track", "Store Purchase")][0]["channel"] == "store", summary
    assert named[("page", "Pricing")][0]["channel"] == "web", summary
    assert named[("screen", "Home")][0]["channel"] == "app", summary
    assert "server" not in {e["channel"] for e in events}, summary

    # The page's URL and campaign, from properties.url.
    page = named[("page", "Pricing")][0]
    assert page["page_url"] == UTM_URL, page
    assert (page["utm_source"], page["utm_medium"], page["utm_campaign"]) == ("news", "email", "spring"), page


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "client", ["segment", "rudderstack"], ids=["segment-analytics-node-3.1.0", "rudder-sdk-node-3.1.1"]
)
async def test_node_client_with_a_wrong_key_is_told_so_once_per_batch_and_stores_nothing(  # type: ignore[no-untyped-def]
    peers,
    watched_collector,
    query,
    http,
    project,
    client,
) -> None:
    collector = await watched_collector()
    run = uuid.uuid4().hex[:8]
    plan = {
        "client": client,
        "host": collector.base,
        "writeKey": f"jw_not_a_key_{run}",
        "anonymousId": f"anon-{run}",
        "userId": f"user-{run}",
        "crmId": f"crm-{run}",
        "groupId": f"group-{run}",
        "url": UTM_URL,
    }
    result = await peers.run_node("node-client.mjs", plan, 0)
    wire = collector.report()
    print(f"\n--- {client}, wrong key: what the collector received ---\n{wire}\n--- client said: {result}")

    # Every call fails at the client (nothing silently dropped as "sent"), and a 401 is final: each batch
    # went once, never retried.
    assert result["calls"] and all(err for _, err in result["calls"]), result
    posts = collector.posts()
    batches = [tuple(e.get("messageId") for e in s.events()) for s in posts]
    assert posts and len(set(batches)) == len(batches), wire
    assert sum(len(b) for b in batches) == 8, wire
    for sent in posts:
        assert sent.status == 401, wire
        answer = orjson.loads(sent.answer)
        # The error body Segment's and RudderStack's libraries read: top-level code and message.
        assert isinstance(answer.get("code"), str) and answer["code"], answer
        assert isinstance(answer.get("message"), str) and answer["message"], answer
    body = await customer_events(http, query, project.read_key, plan["userId"])
    assert body["count"] == 0
