"""What Segment's and RudderStack's libraries really put on the wire, accepted as they mean it.

The real clients are driven in test_peer_clients_*.py; these tests pin each wire detail on its own, so a
regression names the detail: ``null``/``""`` for absent fields, Segment's one-letter routes, RudderStack's
beacon route and top-level ``channel``, the preflight's headers and error bodies a client can read.
"""

from __future__ import annotations

import uuid

import orjson
import pytest

from support import basic, wait_until
from test_cors import SHOP, public_key


async def _post(http, collector, path, body, headers=None):  # type: ignore[no-untyped-def]
    async with http.post(collector.make_url(path), data=orjson.dumps(body), headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def _stored(stores, project_id: str, n: int) -> dict[str, dict[str, object]]:  # type: ignore[no-untyped-def]
    async def enough() -> dict[str, dict[str, object]] | None:
        columns, rows = await stores.clickhouse.query(
            "SELECT * FROM events WHERE project_id = {p:String}", {"p": project_id}
        )
        found = {r[columns.index("message_id")]: dict(zip(columns, r)) for r in rows}
        return found if len(found) >= n else None

    return await wait_until(enough)


async def test_null_and_empty_optional_fields_are_absent(http, collector, stores, project) -> None:  # type: ignore[no-untyped-def]
    batch = [
        # analytics-python / rudder-sdk-python before identify, and after it.
        {
            "type": "track",
            "messageId": "m1",
            "event": "Viewed",
            "userId": None,
            "anonymousId": "a-1",
            "properties": None,
            "context": {"page": None, "traits": None, "channel": None},
            "integrations": None,
        },
        {
            "type": "identify",
            "messageId": "m2",
            "userId": "u-1",
            "anonymousId": None,
            "traits": None,
            "timestamp": None,
        },
        # RudderStack's browser SDK: "userId": "" before identify; unnamed pages.
        {"type": "page", "messageId": "m3", "userId": "", "anonymousId": "a-1", "name": None, "category": ""},
        {"type": "group", "messageId": "m4", "userId": "u-1", "groupId": "g", "traits": None, "sentAt": ""},
        {"type": "alias", "messageId": "m5", "userId": "u-1", "previousId": "a-0", "anonymousId": None},
    ]
    status, body = await _post(http, collector, "/v1/batch", {"batch": batch, "sentAt": None}, basic(project.write_key))
    assert status == 200 and body["quarantined"] == [], body
    rows = await _stored(stores, project.id, 5)
    assert (rows["m1"]["user_id"], rows["m1"]["anonymous_id"], rows["m1"]["distinct_id"]) == ("", "a-1", "a-1")
    assert (rows["m2"]["user_id"], rows["m2"]["anonymous_id"]) == ("u-1", "")
    assert (rows["m3"]["type"], rows["m3"]["event"], rows["m3"]["distinct_id"]) == ("page", "", "a-1")
    assert rows["m4"]["group_id"] == "g" and rows["m5"]["previous_id"] == "a-0"


async def test_what_is_still_wrong_is_named_in_the_senders_words_with_code_and_message(  # type: ignore[no-untyped-def]
    http, collector, project
) -> None:
    batch = [
        {"type": "track", "event": "x", "userId": None, "anonymousId": None},  # no id at all
        {"type": "track", "event": "x", "anonymousId": ["a"]},  # not a string
        {"type": "track", "event": "", "userId": "u"},  # a track needs its name
    ]
    status, body = await _post(http, collector, "/v1/batch", {"batch": batch}, basic(project.write_key))
    assert status == 400
    assert body["code"] == "no_valid_events"
    fields = {(e["index"], e["field"]) for e in body["errors"]}
    assert fields == {(0, "userId"), (1, "anonymousId"), (2, "event")}, body
    assert all("constrained" not in e["field"] and "-" not in e["field"] for e in body["errors"])
    assert "event 1: anonymousId: must be a string" in body["message"]
    status, body = await _post(http, collector, "/v1/track", {"event": "x", "userId": "u"}, basic("jw_nope"))
    assert status == 401 and body["code"] == "unauthorized" and "unknown or revoked key" in body["message"]


@pytest.mark.parametrize(
    "short,kind,event",
    [
        ("t", "track", {"event": "Clicked"}),
        ("p", "page", {"name": "Home"}),
        ("i", "identify", {"traits": {"plan": "pro"}}),
        ("s", "screen", {"name": "Cart"}),
        ("g", "group", {"groupId": "acme"}),
        ("a", "alias", {"previousId": "old"}),
    ],
)
async def test_segment_short_routes_take_one_event_of_their_kind(  # type: ignore[no-untyped-def]
    http, collector, stores, project, short, kind, event
) -> None:
    # analytics-next: the key in the body (and as Basic auth), the type in the body too.
    body = {"type": kind, "userId": "u-1", "messageId": "m", "writeKey": project.write_key, **event}
    status, answer = await _post(http, collector, f"/v1/{short}", body)
    assert status == 200 and answer["accepted"] == 1, answer
    rows = await _stored(stores, project.id, 1)
    assert rows["m"]["type"] == kind


async def test_segment_short_batch_route(http, collector, stores, project) -> None:  # type: ignore[no-untyped-def]
    batch = [{"type": "track", "event": "e", "anonymousId": "a", "messageId": f"m{i}"} for i in range(3)]
    status, body = await _post(http, collector, "/v1/b", {"batch": batch, "writeKey": project.write_key})
    assert status == 200 and body["accepted"] == 3
    assert len(await _stored(stores, project.id, 3)) == 3


async def test_beacon_route_takes_a_public_key_from_the_query_and_refuses_a_write_key(  # type: ignore[no-untyped-def]
    http, collector, stores, project
) -> None:
    key = await public_key(stores, project, SHOP)
    batch = {"batch": [{"type": "track", "event": "Left", "anonymousId": "a", "messageId": "b1"}]}
    # sendBeacon: text/plain, no Authorization header, the page's Origin.
    headers = {"Origin": SHOP, "Content-Type": "text/plain;charset=UTF-8"}
    async with http.post(
        collector.make_url(f"/beacon/v1/batch?writeKey={key}"), data=orjson.dumps(batch), headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert (await _stored(stores, project.id, 1))["b1"]["event"] == "Left"
    secret = f"/beacon/v1/batch?writeKey={project.write_key}"
    status, body = await _post(
        http, collector, secret, {"batch": [{"type": "track", "event": "x", "anonymousId": "b"}]}
    )
    assert status == 403 and body["errors"][0]["field"] == "writeKey" and "URL" in body["errors"][0]["reason"]
    status, body = await _post(http, collector, "/beacon/v1/batch", batch)
    assert status == 401 and body["errors"][0]["field"] == "writeKey"


async def test_preflight_allows_the_headers_the_browser_sdks_send(http, collector, stores, project) -> None:  # type: ignore[no-untyped-def]
    await public_key(stores, project, SHOP)
    wanted = {"authorization", "content-type", "anonymousid", "sentat", "x-retry-count"}
    for path in ("/v1/t", "/v1/b", "/v1/track", "/v1/batch", "/beacon/v1/batch"):
        asks = {
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": ",".join(sorted(wanted)),
        }
        async with http.options(collector.make_url(path), headers=asks) as resp:
            assert resp.status == 204, path
            allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert wanted <= allowed and "*" not in allowed, (path, allowed)
            assert "Access-Control-Allow-Credentials" not in resp.headers


RUDDER_JS = {"library": {"name": "RudderLabs JavaScript SDK", "version": "3.34.1"}}
RUDDER_IOS = {"library": {"name": "rudder-ios-library", "version": "1.0"}}


@pytest.mark.parametrize(
    "event,channel",
    [
        # rudder-sdk-node: the platform at the top level must not become the touchpoint channel.
        ({"type": "track", "event": "Paid", "channel": "server"}, "unknown"),
        ({"type": "page", "name": "Home", "channel": "server"}, "web"),
        ({"type": "track", "event": "Clicked", "channel": "server", "properties": {"channel": "email"}}, "email"),
        (
            {"type": "track", "event": "Called", "channel": "sources", "context": {"channel": "call_centre"}},
            "call_centre",
        ),
        # analytics-js: "web"; RudderStack's mobile SDKs: "mobile" (an app) — below a channel in properties.
        ({"type": "track", "event": "Clicked", "channel": "web", "context": RUDDER_JS}, "web"),
        (
            {
                "type": "track",
                "event": "Clicked",
                "channel": "web",
                "context": RUDDER_JS,
                "properties": {"channel": "email"},
            },
            "email",
        ),
        ({"type": "track", "event": "Tapped", "channel": "mobile", "context": RUDDER_IOS}, "app"),
        (
            {
                "type": "track",
                "event": "Tapped",
                "channel": "mobile",
                "context": RUDDER_IOS,
                "properties": {"channel": "store"},
            },
            "store",
        ),
        # Our own SDK's and tracker's top-level channel is the touchpoint's, "web" included, and a bad one in
        # properties does not refuse the event.
        ({"type": "track", "event": "Bought", "channel": "store", "properties": {"channel": "email"}}, "store"),
        ({"type": "track", "event": "Signup", "channel": "web", "properties": {"channel": "newsletter"}}, "web"),
        ({"type": "track", "event": "Signup", "channel": "web", "properties": {"channel": "Email / SMS"}}, "web"),
        # A track sent from a web page (the browser SDKs describe the page in context) is web.
        ({"type": "track", "event": "Clicked", "context": {"page": {"url": "https://shop.example/"}}}, "web"),
    ],
)
async def test_rudderstack_platform_channel_never_overrides_the_touchpoint_channel(  # type: ignore[no-untyped-def]
    http, collector, stores, project, event, channel
) -> None:
    message_id = uuid.uuid4().hex
    body = {"batch": [{**event, "anonymousId": "a", "messageId": message_id}]}
    status, answer = await _post(http, collector, "/v1/batch", body, basic(project.write_key))
    assert status == 200 and answer["accepted"] == 1, answer
    assert (await _stored(stores, project.id, 1))[message_id]["channel"] == channel


async def test_rudderstack_source_config_is_served_for_a_public_key_from_its_origin(  # type: ignore[no-untyped-def]
    http, collector, stores, project
) -> None:
    """analytics-js asks ``{configUrl}/sourceConfig/?writeKey=…`` (with the key as Basic auth too) before it
    sends anything; with configUrl = the collector it needs no RudderStack control plane."""
    key = await public_key(stores, project, SHOP)
    asks = {"Origin": SHOP, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    async with http.options(collector.make_url("/sourceConfig/"), headers=asks) as resp:
        assert resp.status == 204 and "GET" in resp.headers["Access-Control-Allow-Methods"]
    url = f"/sourceConfig/?p=npm&v=3.34.1&build=modern&writeKey={key}&lockIntegrationsVersion=true"
    async with http.get(collector.make_url(url), headers={"Origin": SHOP, **basic(key)}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
        source = (await resp.json())["source"]
    assert source["enabled"] is True and source["destinations"] == [] and source["writeKey"] == key
    async with http.get(collector.make_url(f"/sourceConfig?writeKey={project.write_key}")) as resp:
        assert resp.status == 403 and (await resp.json())["errors"][0]["field"] == "writeKey"
    async with http.get(
        collector.make_url(f"/sourceConfig?writeKey={key}"), headers={"Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403 and (await resp.json())["errors"][0]["field"] == "Origin"
