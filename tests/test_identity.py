"""Identity stitching end to end: a cross-channel story told over HTTP, read back as one customer."""

from __future__ import annotations

import orjson

from journeys.keys import add_key
from support import basic, wait_drained


async def _send(http, collector, key, *events):  # type: ignore[no-untyped-def]
    async with http.post(
        collector.make_url("/v1/batch"), data=orjson.dumps({"batch": list(events)}), headers=basic(key)
    ) as r:
        assert r.status == 200, await r.text()
    await wait_drained(collector)


async def _get(http, query, path, key):  # type: ignore[no-untyped-def]
    async with http.get(query.make_url(path), headers=basic(key)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _ev(kind, at, mid, **fields):  # type: ignore[no-untyped-def]
    return {"type": kind, "timestamp": f"2026-04-{at}Z", "messageId": mid, **fields}


async def test_cross_channel_story_is_one_customer(http, collector, query, stores, project) -> None:  # type: ignore[no-untyped-def]
    key = project.write_key
    # Device 1, anonymous: two web visits from a newsletter campaign, then an email click, same anonymous id.
    await _send(
        http,
        collector,
        key,
        _ev(
            "page",
            "01T09:00:00",
            "w1",
            anonymousId="dev1",
            name="Home",
            properties={"url": "https://shop.test/?utm_source=newsletter&utm_campaign=spring"},
        ),
        _ev("page", "01T09:05:00", "w2", anonymousId="dev1", name="Pricing"),
        _ev("track", "02T08:00:00", "e1", anonymousId="dev1", event="Email Clicked", channel="email"),
    )
    # Signs up: identify links the anonymous past to the user.
    await _send(
        http,
        collector,
        key,
        _ev("identify", "02T08:01:00", "i1", anonymousId="dev1", userId="ada", traits={"plan": "b2c", "country": "DE"}),
    )
    # Buys in a store under the user id; then a second device, anonymous first, then logged in.
    await _send(
        http,
        collector,
        key,
        _ev("track", "03T12:00:00", "s1", userId="ada", event="Store Purchase", channel="store"),
        _ev("screen", "04T07:00:00", "a1", anonymousId="dev2", name="Cart"),
        _ev("track", "04T07:02:00", "a2", anonymousId="dev2", userId="ada", event="Logged In", channel="app"),
    )
    # The call centre knew her under an old CRM id; an alias merges it.
    await _send(
        http,
        collector,
        key,
        _ev("track", "05T10:00:00", "c1", userId="crm-77", event="Support Call", channel="call_centre"),
    )
    await _send(http, collector, key, _ev("alias", "05T10:30:00", "al1", previousId="crm-77", userId="ada"))

    stats = await _get(http, query, "/v1/stats", project.read_key)
    assert (stats["customers"], stats["ids"]) == (1, 4)  # one person: ada, dev1, dev2 and crm-77 (ids with events)

    expected = ["w1", "w2", "e1", "i1", "s1", "a1", "a2", "c1", "al1"]
    for asked in ("ada", "dev1", "dev2", "crm-77"):
        body = await _get(http, query, f"/v1/customers/{asked}/events", project.read_key)
        assert body["customer_id"] == "ada", asked
        assert body["ids"] == ["ada", "crm-77", "dev1", "dev2"]
        assert [e["message_id"] for e in body["events"]] == expected, asked
    channels = [e["channel"] for e in body["events"]]
    assert channels == ["web", "web", "email", "unknown", "store", "app", "app", "call_centre", "unknown"]

    profile = await _get(http, query, "/v1/customers/dev2", project.read_key)
    assert profile["traits"] == {"plan": "b2c", "country": "DE"}
    assert profile["first_touch"] == {
        "first_seen": "2026-04-01T09:00:00.000Z",
        "first_channel": "web",
        "first_utm_source": "newsletter",
        "first_utm_medium": "",
        "first_utm_campaign": "spring",
    }


async def test_shared_device_is_not_a_merge_but_alias_merges_known_customers(http, collector, query, project) -> None:  # type: ignore[no-untyped-def]
    key = project.write_key
    await _send(
        http,
        collector,
        key,
        _ev("page", "01T09:00:00", "p1", anonymousId="kiosk"),
        _ev("identify", "01T09:01:00", "p2", anonymousId="kiosk", userId="ben"),
    )
    # Someone else logs in on the same device later: the kiosk's past stays Ben's.
    await _send(
        http,
        collector,
        key,
        _ev("identify", "02T09:00:00", "p3", anonymousId="kiosk", userId="cleo"),
        _ev("track", "02T09:05:00", "p4", userId="cleo", event="Order Completed"),
    )
    ben = await _get(http, query, "/v1/customers/ben/events", project.read_key)
    cleo = await _get(http, query, "/v1/customers/cleo/events", project.read_key)
    assert ben["ids"] == ["ben", "kiosk"] and [e["message_id"] for e in ben["events"]] == ["p1", "p2"]
    assert cleo["ids"] == ["cleo"] and [e["message_id"] for e in cleo["events"]] == ["p3", "p4"]
    # An explicit alias merges two known customers: Cleo's whole history joins Ben's.
    await _send(http, collector, key, _ev("alias", "03T00:00:00", "p5", previousId="cleo", userId="ben"))
    merged = await _get(http, query, "/v1/customers/cleo/events", project.read_key)
    assert merged["customer_id"] == "ben" and merged["ids"] == ["ben", "cleo", "kiosk"]
    assert [e["message_id"] for e in merged["events"]] == ["p1", "p2", "p3", "p4", "p5"]


async def test_newest_identify_wins_per_trait_even_when_it_arrives_first(  # type: ignore[no-untyped-def]
    http, collector, query, stores, project
) -> None:
    key = project.write_key
    await _send(
        http, collector, key, _ev("identify", "10T00:00:00", "t2", userId="dana", traits={"plan": "b2b", "seats": 12})
    )
    await _send(
        http,
        collector,
        key,  # older, late-arriving: must not overwrite plan; adds email
        _ev("identify", "01T00:00:00", "t1", userId="dana", traits={"plan": "trial", "email": "d@x.test"}),
    )
    profile = await _get(http, query, "/v1/customers/dana", project.read_key)
    assert profile["traits"] == {"plan": "b2b", "seats": 12, "email": "d@x.test"}

    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
    for name, rules in (
        ("b2b", [{"field": "traits.plan", "op": "equals", "value": "b2b"}]),
        ("big", [{"field": "traits.seats", "op": ">=", "value": 50}]),
        ("april", [{"field": "first_seen", "op": ">=", "value": "2026-04-01"}]),
    ):
        async with http.put(
            query.make_url(f"/v1/segments/{name}"), data=orjson.dumps({"rules": rules}), headers=basic(admin)
        ) as r:
            assert r.status == 201
    profile = await _get(http, query, "/v1/customers/dana", project.read_key)
    assert profile["segments"] == ["april", "b2b"]


async def test_forgetting_a_customer_removes_everything(http, collector, query, stores, project) -> None:  # type: ignore[no-untyped-def]
    key = project.write_key
    await _send(
        http,
        collector,
        key,
        _ev("page", "01T09:00:00", "f1", anonymousId="anon-f"),
        _ev("identify", "01T09:01:00", "f2", anonymousId="anon-f", userId="eve", traits={"email": "eve@x.test"}),
        _ev("track", "01T09:02:00", "f3", userId="eve", event="Order Completed"),
        _ev("track", "01T09:03:00", "other", userId="frank", event="Order Completed"),
    )
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
    async with http.delete(query.make_url("/v1/customers/anon-f"), headers=basic(project.read_key)) as resp:
        assert resp.status == 403
    async with http.delete(query.make_url("/v1/customers/anon-f"), headers=basic(admin)) as resp:
        assert resp.status == 200 and (await resp.json()) == {"customer_id": "eve", "forgotten_ids": ["anon-f", "eve"]}
    for asked in ("eve", "anon-f"):  # forgotten: no such customer any more
        for path in (f"/v1/customers/{asked}/events", f"/v1/customers/{asked}"):
            async with http.get(query.make_url(path), headers=basic(project.read_key)) as resp:
                assert resp.status == 404 and (await resp.json())["errors"][0]["field"] == "customer_id", path
    for table in ("events", "timelines", "customer_traits", "first_touch", "identities", "identities_by_customer"):
        _, rows = await stores.clickhouse.query(
            f"SELECT count() FROM {table} WHERE project_id = {{p:String}} AND distinct_id IN ('eve', 'anon-f')",
            {"p": project.id},
        )
        assert rows[0][0] == 0, table
    frank = await _get(http, query, "/v1/customers/frank/events", project.read_key)
    assert [e["message_id"] for e in frank["events"]] == ["other"]


async def test_cli_forgets_a_customer_while_the_service_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    from testkit.service import Service, create_project, journeys, stop_leftover_postgres

    try:
        keys = create_project(tmp_path, "gdpr")
        service = Service(tmp_path, JOURNEYS_INSERT_LINGER_MS="5").start()
        try:
            async with aiohttp.ClientSession() as http:
                batch = [
                    _ev("page", "01T09:00:00", "g1", anonymousId="anon-g"),
                    _ev("identify", "01T09:01:00", "g2", anonymousId="anon-g", userId="gina"),
                ]
                async with http.post(
                    f"{service.collector}/v1/batch",
                    data=orjson.dumps({"batch": batch}),
                    headers=basic(keys["write_key"]),
                ) as resp:
                    assert resp.status == 200

                async def events_of(customer: str) -> list:
                    async with http.get(
                        f"{service.query}/v1/customers/{customer}/events", headers=basic(keys["read_key"])
                    ) as r:
                        return [] if r.status == 404 else (await r.json())["events"]  # 404: no such customer (yet)

                from support import wait_until

                await wait_until(lambda: _count_is(events_of, "anon-g", 2))
                done = journeys(
                    tmp_path,
                    "customer",
                    "delete",
                    "anon-g",
                    "--project",
                    "gdpr",
                    JOURNEYS_QUERY_PORT=str(service.query_port),
                )
                assert done.returncode == 0, done.stderr
                assert "forgot customer gina: ids anon-g, gina" in done.stdout
                assert await events_of("gina") == [] and await events_of("anon-g") == []
        finally:
            assert service.stop() == 0
        # With the service stopped the CLI opens the stores itself.
        again = journeys(tmp_path, "customer", "delete", "gina", "--project", "gdpr")
        assert again.returncode == 0 and "forgot customer gina" in again.stdout
    finally:
        stop_leftover_postgres(tmp_path)


async def _count_is(fetch, customer, n):  # type: ignore[no-untyped-def]
    return len(await fetch(customer)) == n


async def test_a_reverse_index_row_without_its_forward_row_is_not_a_member(  # type: ignore[no-untyped-def]
    http, collector, query, stores, project
) -> None:
    """IdentityGraph writes the reverse index first: between its two inserts (or after a crash between
    them) ``identities_by_customer`` names an id that does not belong to the customer yet. Reads asked by
    the customer's own id must leave that id's events out, in every endpoint that reads them."""
    key = project.write_key
    await _send(
        http,
        collector,
        key,
        _ev("track", "01T09:00:00", "g1", userId="gil", event="A", channel="web"),
        _ev("track", "01T09:05:00", "x1", anonymousId="half-linked", event="A", channel="web"),
    )
    await stores.clickhouse.insert_lines(
        "identities_by_customer",
        ("project_id", "customer_id", "distinct_id", "version", "is_deleted"),
        orjson.dumps([project.id, "gil", "half-linked", 1, 0]) + b"\n",
    )
    body = await _get(http, query, "/v1/customers/gil/events", project.read_key)
    assert body["ids"] == ["gil"] and [e["message_id"] for e in body["events"]] == ["g1"]
    other = await _get(http, query, "/v1/customers/half-linked/events", project.read_key)
    assert other["ids"] == ["half-linked"] and [e["message_id"] for e in other["events"]] == ["x1"]
    # The journey reads timelines, not events: the same check there.
    from test_journey import MAP

    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
    async with http.put(query.make_url("/v1/maps/shop"), data=orjson.dumps(MAP), headers=basic(admin)) as resp:
        assert resp.status == 201
    journey = await _get(http, query, "/v1/customers/gil/journey?map=shop", project.read_key)
    assert journey["ids"] == ["gil"] and [t["message_id"] for t in journey["touchpoints"]] == ["g1"]


async def test_a_burst_of_links_is_resolved_in_a_bounded_number_of_reads_and_in_order(stores, project) -> None:  # type: ignore[no-untyped-def]
    """Thousands of links in one insert: two reads (current customers, then stored members), not one per
    link. Order still matters within the batch: an alias chain and a shared device resolve as if applied
    one by one."""
    from collector.identity import IdentityGraph
    from journeys import identities

    class CountingClickHouse:  # the real chDB underneath; only counts the reads
        def __init__(self, real):  # type: ignore[no-untyped-def]
            self.real, self.reads = real, 0

        async def query(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.reads += 1
            return await self.real.query(*args, **kwargs)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.real, name)

    p = project.id
    ch = CountingClickHouse(stores.clickhouse)
    graph = IdentityGraph(ch)  # type: ignore[arg-type]
    # Stored before the burst: crm-1 already has two ids.
    assert await graph.resolve([[p, "identify", "old-anon", "crm-1"]]) == 1
    ch.reads = 0
    links = [[p, "identify", f"anon-{i}", f"user-{i}"] for i in range(3000)]
    links += [
        [p, "alias", "crm-1", "user-7"],  # crm-1's whole customer (old-anon too) joins user-7
        [p, "alias", "user-7", "user-8"],  # ... and then all of that joins user-8
        [p, "identify", "anon-9", "user-10"],  # anon-9 is user-9's now: a shared device, not moved
    ]
    moved = await graph.resolve(links)
    # Two reads per 2 000 ids (bound parameters travel in a URL to a ClickHouse server), whatever the number
    # of links; before: one members read per link that moved ids (3 000+).
    assert ch.reads <= 2 * -(-6006 // identities.ID_CHUNK), ch.reads
    assert moved == 3000 + 2 + 1  # anon-i, crm-1 + old-anon, and user-7 (the rest were re-pointed again)
    members = await identities.members_of(stores.clickhouse, p, ["user-8", "user-9", "user-10", "user-1"])
    assert members["user-8"] == {"user-8", "anon-8", "user-7", "anon-7", "crm-1", "old-anon"}
    assert members["user-9"] == {"user-9", "anon-9"} and members["user-10"] == {"user-10", "anon-10"}
    assert members["user-1"] == {"user-1", "anon-1"}


async def test_a_full_identity_cache_does_not_forget_the_batch_it_is_loading(stores, project) -> None:  # type: ignore[no-untyped-def]
    """The cache was cleared when a batch's new ids would overflow it, and then only those new ids were loaded:
    the batch's other ids, cached a moment before, resolved to themselves (a shared device then moved)."""
    from collector.identity import IdentityGraph
    from journeys import identities

    p = project.id
    graph = IdentityGraph(stores.clickhouse, cache_size=2)
    await graph.resolve([[p, "identify", "device", "first-user"]])  # device belongs to first-user; cache full
    # device is cached, second-user is not and overflows the cache: a shared device, which must not move.
    await graph.resolve([[p, "identify", "device", "second-user"]])
    current = await identities.current_customers(stores.clickhouse, p, ["device"])
    assert current == {"device": "first-user"}
