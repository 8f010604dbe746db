"""What goes over the wire: headers, body shape, and every event type."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import gzip
import json
import uuid

import journeys_sdk
from journeys_sdk import Channel, Client, DropReason, Sentiment, Status
from sdk_fake_collector import FakeCollector, Reply


def test_headers_gzip_auth_and_body_shape(collector: FakeCollector, make_client) -> None:
    client = make_client()
    r = client.track("user-1", "Order Completed", {"total": 42, "currency": "EUR"})
    assert r.status is Status.QUEUED and r.queued and r
    assert client.flush(timeout=5)

    assert len(collector.requests) == 1
    req = collector.requests[0]
    assert req.status == 200
    assert req.headers["Content-Encoding"] == "gzip"
    assert req.headers["Content-Type"] == "application/json"
    user, _, password = base64.b64decode(req.headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert (user, password) == (collector.write_key, "")
    assert set(req.payload) == {"batch", "sentAt"}
    assert dt.datetime.fromisoformat(req.payload["sentAt"]).tzinfo is not None

    (ev,) = req.batch
    assert ev["type"] == "track"
    assert ev["event"] == "Order Completed"
    assert ev["userId"] == "user-1"
    assert "anonymousId" not in ev  # None fields are omitted, not sent as null
    assert ev["properties"] == {"total": 42, "currency": "EUR"}
    assert ev["messageId"] == r.message_id
    assert uuid.UUID(ev["messageId"]).version == 4
    ts = dt.datetime.fromisoformat(ev["timestamp"])
    assert ts.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds()) < 5
    assert ev["context"]["library"] == {"name": "journeys-sdk", "version": journeys_sdk.__version__}


def test_raw_body_is_valid_gzip_json(collector: FakeCollector, make_client) -> None:
    # Independently of the fake's own parsing: the bytes on the wire decompress
    # with the stdlib and parse as JSON.
    from journeys_sdk.encode import batch_body, build_event, encode_event
    from journeys_sdk.request import gzip_body

    raw = encode_event(build_event(("track", "m", 0.0, "u", None, "event", "x", "properties", 1, "a", 1)))
    body = gzip_body(batch_body([raw, raw], "2024-01-01T00:00:00.000+00:00"), 6)
    data = json.loads(gzip.decompress(body))
    assert data["sentAt"] == "2024-01-01T00:00:00.000+00:00"
    assert data["batch"][0]["timestamp"] == "1970-01-01T00:00:00.000+00:00"


def test_all_event_types(collector: FakeCollector, make_client) -> None:
    client = make_client()
    results = [
        client.identify("u1", {"email": "a@example.com", "plan": "pro"}),
        client.track("u1", "Signed Up", {"source": "ads"}),
        client.page("u1", "Docs", "Pricing", {"path": "/pricing"}),
        client.screen(anonymous_id="anon-1", name="Home"),
        client.group("u1", "acct-9", {"seats": 5}),
        client.alias("anon-1", "u1"),
        client.touchpoint(
            "u1",
            channel=Channel.CALL_CENTRE,
            action="complaint_resolved",
            sentiment=Sentiment.POSITIVE,
            properties={"agent": "a7"},
        ),
        client.touchpoint(anonymous_id="anon-2", channel="store", action="visited"),
    ]
    assert all(r.queued for r in results)
    assert client.flush(timeout=5)
    events = {e["messageId"]: e for e in collector.stored_events()}
    assert len(events) == len(results)
    ident, track, page, screen, group, alias, tp, tp2 = (events[r.message_id] for r in results)

    assert ident["type"] == "identify" and ident["traits"] == {"email": "a@example.com", "plan": "pro"}
    assert track["type"] == "track" and track["event"] == "Signed Up"
    assert page["type"] == "page" and page["name"] == "Pricing" and page["category"] == "Docs"
    assert page["properties"] == {"path": "/pricing"}
    assert screen["type"] == "screen" and screen["anonymousId"] == "anon-1" and "userId" not in screen
    assert group["type"] == "group" and group["groupId"] == "acct-9" and group["traits"] == {"seats": 5}
    assert alias["type"] == "alias" and alias["previousId"] == "anon-1" and alias["userId"] == "u1"
    assert tp == {
        **tp,
        "type": "track",
        "event": "complaint_resolved",
        "touchpoint": "complaint_resolved",
        "channel": "call_centre",
        "sentiment": "positive",
        "properties": {"agent": "a7"},
        "userId": "u1",
    }
    assert tp2["channel"] == "store" and tp2["touchpoint"] == "visited" and "sentiment" not in tp2
    # Channels are normalised to the collector's slug form.
    r = client.touchpoint("u", channel="Call-Centre", action="called")
    assert r.queued and client.flush(timeout=5)
    assert {e["messageId"]: e for e in collector.stored_events()}[r.message_id]["channel"] == "call_centre"
    # Quarantine list was empty: the fake applies the collector's per-event rules.
    assert all(r.status == 200 for r in collector.requests)


def test_segment_positional_signature(collector: FakeCollector, make_client) -> None:
    # analytics-python order: user_id, event, properties, context, timestamp,
    # anonymous_id, integrations, message_id.
    client = make_client()
    when = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.timezone.utc)
    r = client.track("u", "E", {"p": 1}, {"ip": "1.2.3.4"}, when, "anon", {"All": True}, "my-id-1")
    assert r.message_id == "my-id-1"
    assert client.flush(timeout=5)
    (ev,) = collector.stored_events()
    assert ev["messageId"] == "my-id-1"
    assert ev["timestamp"] == "2024-05-01T12:00:00.123+00:00"
    assert ev["context"]["ip"] == "1.2.3.4" and ev["context"]["library"]["name"] == "journeys-sdk"
    assert ev["anonymousId"] == "anon" and ev["integrations"] == {"All": True}


def test_values_people_put_in_properties(collector: FakeCollector, make_client) -> None:
    client = make_client()
    u = uuid.uuid4()
    client.track(
        42,  # numeric ids are sent as strings, as Segment does
        "Paid",
        {
            "amount": decimal.Decimal("19.99"),
            "at": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            "day": dt.date(2024, 1, 2),
            "ref": u,
            "tags": {"a"},
            "nested": {"list": [1, 2, {"x": "y"}]},
            "unicode": "café ☕",
        },
        timestamp="2024-01-02T03:04:05+02:00",
    )
    assert client.flush(timeout=5)
    (ev,) = collector.stored_events()
    assert ev["userId"] == "42"
    assert ev["timestamp"] == "2024-01-02T03:04:05+02:00"  # an explicit offset is kept as given
    p = ev["properties"]
    assert p["amount"] == "19.99"
    assert p["at"] == "2024-01-02T03:04:05.000+00:00"
    assert p["day"] == "2024-01-02" and p["ref"] == str(u) and p["tags"] == ["a"]
    assert p["nested"] == {"list": [1, 2, {"x": "y"}]} and p["unicode"] == "café ☕"


def test_timestamp_forms(collector: FakeCollector, make_client) -> None:
    client = make_client()
    naive = dt.datetime(2024, 6, 1, 12, 0, 0)
    rs = [
        client.track("u", "E", timestamp="2024-06-01T12:00:00"),  # naive text: UTC, as Segment reads it
        client.track("u", "E", timestamp="2024-06-01T12:00:00Z"),
        client.track("u", "E", timestamp=1717243200),  # epoch seconds
        client.track("u", "E", timestamp=naive),  # naive datetime: local time, as Python reads it
    ]
    assert client.flush(timeout=5)
    got = {e["messageId"]: e["timestamp"] for e in collector.stored_events()}
    ts = [got[r.message_id] for r in rs]
    assert ts[0] == "2024-06-01T12:00:00.000+00:00"
    assert ts[1] == "2024-06-01T12:00:00Z"
    assert ts[2] == "2024-06-01T12:00:00.000+00:00"
    assert dt.datetime.fromisoformat(ts[3]) == naive.astimezone()


def test_properties_are_copied_at_call_time(collector: FakeCollector, make_client) -> None:
    # Encoding happens later on the consumer thread; a caller reusing one dict
    # must still get one distinct event per call.
    client = make_client(upload_interval=1.0)
    props: dict[str, object] = {}
    for sku in ("a", "b", "c"):
        props["sku"] = sku
        client.track("u", "Added", props)
    props["sku"] = "mutated"
    assert client.flush(timeout=5)
    assert [e["properties"]["sku"] for e in collector.stored_events()] == ["a", "b", "c"]


def test_invalid_calls_never_raise_and_are_counted(collector: FakeCollector, make_client, caplog) -> None:
    client = make_client()
    bad = [
        client.track("u", None),  # type: ignore[arg-type]
        client.track("u", ""),
        client.track(None, "E"),
        client.track("u", "E", properties=["not", "a", "dict"]),  # type: ignore[arg-type]
        client.track("u", "E", timestamp=object()),  # type: ignore[arg-type]
        client.track("u", "E", timestamp="yesterday"),
        client.track(object(), "E"),  # type: ignore[arg-type]
        client.identify(None, {"a": 1}),
        client.group("u", None),
        client.alias(None, "u"),
        client.page("u", name=5),  # type: ignore[arg-type]
        client.touchpoint("u", channel="not/a/slug", action="x"),
        client.touchpoint("u", channel="x" * 33, action="x"),
        client.touchpoint("u", channel="web", action=""),
        client.touchpoint("u", channel="web", action="x", sentiment="ecstatic"),
        client.touchpoint(channel="web", action="x"),
    ]
    for r in bad:
        assert r.status is Status.DROPPED and r.reason is DropReason.INVALID and not r
        assert isinstance(r.error, journeys_sdk.InvalidEventError)
    assert client.stats.dropped == {DropReason.INVALID: len(bad)}
    assert client.stats.queued == 0
    # Logged once, not once per call.
    assert len([rec for rec in caplog.records if "invalid event" in rec.getMessage()]) == 1
    flushed = client.flush(timeout=5)
    assert not flushed and (flushed.queued, flushed.dropped) == (0, len(bad))
    assert collector.requests == []


def test_send_false_validates_but_sends_nothing(collector: FakeCollector) -> None:
    client = Client(collector.write_key, collector.url, send=False)
    r = client.track("u", "E")
    assert r.status is Status.DISCARDED and r and r.message_id
    assert client.track(None, "E").reason is DropReason.INVALID
    flushed = client.flush(timeout=1)
    assert not flushed and (flushed.queued, flushed.dropped) == (0, 1)  # nothing queued; one call dropped
    assert client.flush(timeout=1)  # reported once
    client.shutdown()
    assert collector.requests == []


def test_sync_mode_delivers_inline(collector: FakeCollector, make_client) -> None:
    client = make_client(sync_mode=True)
    r1 = client.track("u", "A")
    assert r1.status is Status.DELIVERED
    assert len(collector.requests) == 1  # already there when the call returned
    r2 = client.touchpoint("u", channel="web", action="B")
    assert r2.status is Status.DELIVERED
    assert collector.stored_ids() == [r1.message_id, r2.message_id]
    assert client.stats.sent == 2 and client.stats.queued == 2

    errors = []
    c2 = make_client(sync_mode=True, on_error=lambda e, evs: errors.append((e, evs)))
    collector.script(Reply.error(400))
    r3 = c2.track("u", "C")
    assert r3.status is Status.FAILED and isinstance(r3.error, journeys_sdk.APIError) and r3.error.status == 400
    assert [evs[0]["messageId"] for _, evs in errors] == [r3.message_id]
    assert len(collector.requests) == 3  # a 400 is not retried
    assert c2.stats.failed == 1


def test_queued_events_are_invisible_to_the_garbage_collector(make_client) -> None:
    # A large backlog during an outage must not make every full collection
    # (a pause for all threads, including callers of track()) proportionally
    # slower: queued entries are flat tuples of atoms, which the collector
    # stops tracking at its first pass over them; a dict holding a dict it
    # keeps traversing for as long as it lives.
    import gc

    client = make_client(upload_interval=30.0, host="http://127.0.0.1:9")
    for i in range(100):
        client.track(f"u{i}", "E", {"plan": "pro", "n": i, "x": None}, context={"ip": "1.2.3.4"})
        client.touchpoint(f"u{i}", channel="web", action="a", sentiment="neutral", properties={"k": "v"})
        client.identify(f"u{i}", {"email": "e"})
    gc.collect(0)
    entries = list(client._buffer.items)
    assert len(entries) >= 250
    assert not any(gc.is_tracked(e) for e in entries)
    # ...while the default mutable form would stay tracked forever.
    msgs = [{"type": "track", "properties": {"plan": "pro"}} for _ in range(10)]
    gc.collect()
    assert all(gc.is_tracked(m) for m in msgs)
    client.shutdown(timeout=0)


def test_module_level_api_like_segment(collector: FakeCollector, caplog) -> None:
    # `import segment.analytics as analytics` -> `import journeys_sdk as analytics`
    import journeys_sdk as analytics

    assert analytics.track("u", "E").reason is DropReason.NOT_CONFIGURED  # not configured: dropped, not raised
    analytics.write_key = collector.write_key
    analytics.host = collector.url
    try:
        r1 = analytics.track("u", "Signed Up", {"plan": "pro"})
        r2 = analytics.touchpoint("u", channel="web", action="visited")
        r3 = analytics.identify("u", {"email": "e@example.com"})
        assert analytics.flush(timeout=5)
        assert collector.stored_ids() == [r1.message_id, r2.message_id, r3.message_id]
    finally:
        assert analytics.shutdown(timeout=5)
        analytics.write_key = None
        analytics.host = journeys_sdk.DEFAULT_HOST
    assert analytics.default_client is None


def test_a_broken_mapping_does_not_raise_into_the_caller(make_client) -> None:
    from collections.abc import Mapping

    class Broken(Mapping):
        def __getitem__(self, key):
            raise KeyError(key)

        def __iter__(self):
            raise RuntimeError("boom")

        def __len__(self):
            return 1

    client = make_client()
    for r in (
        client.track("u", "E", Broken()),
        client.track("u", "E", context=Broken()),
        client.identify("u", Broken()),
        client.page("u", properties=Broken()),
    ):
        assert r.reason is DropReason.INVALID
