"""Email open pixels and tracked links over real HTTP: signed by the SDK (or the CLI), verified by the real
collector with the project's key from PostgreSQL, recorded through the spool into chDB."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import io
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestServer

from collector.app import create_app
from collector.appkeys import SPOOL
from collector.email import PIXEL_GIF
from collector.email_keys import SigningKeyResolver, current_key, rotate_key
from collector.email_tokens import TokenError, sign
from journeys.keys import add_key, create_project
from journeys.metrics import Metrics
from journeys_sdk.links import EmailLinks, InvalidLinkError
from support import basic, stored_rows, wait_drained, wait_stored, with_settings

# A person's browser and mail clients; what the collector must *not* flag.
BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"
)
OUTLOOK_DESKTOP = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"
TARGET = "https://shop.example.com/sale/spring?utm_source=newsletter&utm_campaign=spring-26&q=a%20b#top"


@pytest.fixture
async def signing_key(stores, project) -> str:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        return await current_key(conn, project.id)


@pytest.fixture
def links(collector, project, signing_key) -> EmailLinks:  # type: ignore[no-untyped-def]
    return EmailLinks(project.id, signing_key, str(collector.make_url("/")))


async def _get(http, url, user_agent=BROWSER, method="GET"):  # type: ignore[no-untyped-def]
    async with http.request(method, url, allow_redirects=False, headers={"User-Agent": user_agent}) as resp:
        return resp.status, resp.headers, await resp.read()


async def _email_rows(stores, project_id):  # type: ignore[no-untyped-def]
    columns, rows = await stores.clickhouse.query(
        "SELECT event, channel, touchpoint, user_id, properties, context, page_url, utm_campaign, message_id "
        "FROM events WHERE project_id = {p:String} ORDER BY timestamp",
        {"p": project_id},
    )
    out = []
    for row in rows:
        item = dict(zip(columns, row))
        item["properties"], item["context"] = json.loads(item["properties"]), json.loads(item["context"])
        out.append(item)
    return out


def _gif_pixels(data: bytes) -> tuple[int, int, list[int], int | None]:
    """(width, height, colour indexes, transparent index) of a one-frame GIF, LZW-decoded: the pixel
    must be a real image a mail client renders, not just bytes that start with GIF89a."""
    assert data[:6] == b"GIF89a" and data[-1:] == b";"
    width, height, flags = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"), data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    transparent = None
    while data[pos] == 0x21:  # extensions
        label, size = data[pos + 1], data[pos + 2]
        if label == 0xF9 and data[pos + 3] & 1:
            transparent = data[pos + 6]
        pos += 3 + size
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C
    pos += 10
    min_size, pos = data[pos], pos + 1
    stream = b""
    while data[pos]:
        stream += data[pos + 1 : pos + 1 + data[pos]]
        pos += data[pos] + 1
    assert data[pos + 1 :] == b";"
    clear, end = 1 << min_size, (1 << min_size) + 1
    bits = int.from_bytes(stream, "little")
    table: list[list[int]] = []
    out: list[int] = []
    previous: int | None = None
    width_bits, offset = min_size + 1, 0
    while True:
        code = (bits >> offset) & ((1 << width_bits) - 1)
        offset += width_bits
        if code == clear:
            table = [[i] for i in range(clear)] + [[], []]
            width_bits, previous = min_size + 1, None
            continue
        if code == end:
            break
        entry = table[code] if code < len(table) else table[previous] + table[previous][:1]  # type: ignore[index]
        if previous is not None:
            table.append(table[previous] + entry[:1])
        out.extend(entry)
        previous = code
        if len(table) == 1 << width_bits and width_bits < 12:
            width_bits += 1
    return width, height, out, transparent


async def test_pixel_is_a_transparent_gif_and_records_the_open(http, collector, stores, project, links) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = await _get(http, links.open_pixel("c-42", "spring-26", {"variant": "B", "step": 2}))
    assert status == 200 and headers["Content-Type"] == "image/gif" and headers["Cache-Control"] == "no-store"
    assert body == PIXEL_GIF
    width, height, pixels, transparent = _gif_pixels(body)
    assert (width, height, len(pixels)) == (1, 1, 1) and pixels[0] == transparent
    await wait_stored(stores, project.id, 1)
    [row] = await _email_rows(stores, project.id)
    assert (row["event"], row["channel"], row["touchpoint"], row["user_id"]) == (
        "Email Opened",
        "email",
        "email-open",
        "c-42",
    )
    assert row["properties"] == {"variant": "B", "step": 2, "campaign": "spring-26"}
    assert row["context"] == {"userAgent": BROWSER}


async def test_each_open_is_its_own_event(http, collector, stores, project, links) -> None:  # type: ignore[no-untyped-def]
    url = links.open_pixel("c-7", "weekly")
    for _ in range(3):
        assert (await _get(http, url))[0] == 200
    await wait_stored(stores, project.id, 3)
    rows = await _email_rows(stores, project.id)
    assert len({r["message_id"] for r in rows}) == 3  # re-reading the mail is another open, not a retry


async def test_click_redirects_to_exactly_the_signed_url_once_the_event_is_durable(  # type: ignore[no-untyped-def]
    http, collector, stores, project, links
) -> None:
    spool = collector.app[SPOOL]
    before = spool.durable_position
    status, headers, _ = await _get(http, links.click("c-42", "spring-26", TARGET))
    # The answer came after the fsync: the spool's durable end moved before the response was sent.
    assert spool.durable_position > before
    assert status == 302 and headers["Location"] == TARGET
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
    await wait_stored(stores, project.id, 1)
    [row] = await _email_rows(stores, project.id)
    assert (row["event"], row["channel"], row["touchpoint"]) == ("Email Clicked", "email", "email-click")
    assert row["properties"] == {"campaign": "spring-26", "url": TARGET}
    # The target's own UTM tags land in the derived columns like any page view's would.
    assert row["page_url"] == TARGET and row["utm_campaign"] == "spring-26"


def _tampered(token: str, other_key: str) -> dict[str, str]:
    project_id, payload, sig = token.split(".")
    flip = lambda text, i: text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]  # noqa: E731
    document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    swapped = (
        base64.urlsafe_b64encode(
            json.dumps({**document, "url": "https://evil.example/phish"}, separators=(",", ":")).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    return {
        "payload byte flipped": f"{project_id}.{flip(payload, 10)}.{sig}",
        "signature byte flipped": f"{project_id}.{payload}.{flip(sig, 3)}",
        "last signature char flipped": f"{project_id}.{payload}.{flip(sig, len(sig) - 1)}",
        "url swapped": f"{project_id}.{swapped}.{sig}",
        "truncated": token[:-4],
        "signature dropped": f"{project_id}.{payload}",
        "signed with another project's key": sign(other_key, project_id, "click", "c-42", "x", "https://evil.example/"),
        "garbage": "not-a-token",
        "empty parts": "p_1..",
        "unknown project": "p_000000000000." + payload + "." + sig,
    }


async def test_tampered_foreign_and_garbage_tokens_get_400_and_never_a_redirect(  # type: ignore[no-untyped-def]
    http, collector, stores, project, links
) -> None:
    async with stores.pg.acquire() as conn:
        other = await create_project(conn, f"other-{project.id}")
        other_key = await current_key(conn, other.id)
    token = links.click_token("c-42", "spring-26", TARGET)
    cases = _tampered(token, other_key)
    # A token genuinely signed by the other project is valid there, but cannot be moved to this one.
    foreign = EmailLinks(other.id, other_key, "http://x").click_token("c-42", "spring-26", TARGET)
    cases["another project's token relabelled"] = project.id + foreign[foreign.index(".") :]
    base = str(collector.make_url("/v1/email/click/"))
    for name, bad in cases.items():
        status, headers, body = await _get(http, base + bad)
        assert status == 400, (name, status)
        assert "Location" not in headers, name
        assert headers["Content-Type"].startswith("application/json"), name
        errors = orjson.loads(body)["errors"]
        assert errors[0]["field"] == "token" and errors[0]["reason"], (name, errors)
    # An open-pixel token is not a click link, and the other way round.
    status, headers, _ = await _get(http, base + links.open_token("c-42", "spring-26"))
    assert status == 400 and "Location" not in headers
    status, _, _ = await _get(http, str(collector.make_url("/v1/email/open/" + token)))
    assert status == 400
    # A path that is not a token at all is the router's 404, in our shape.
    status, headers, body = await _get(http, str(collector.make_url("/v1/email/click/")))
    assert status == 404 and "Location" not in headers and orjson.loads(body)["errors"]
    # Nothing was recorded for any of them: the one good click afterwards is the only event.
    assert (await _get(http, links.click("c-42", "spring-26", TARGET)))[0] == 302
    await wait_drained(collector)
    assert await stored_rows(stores, project.id) == 1
    async with http.get(collector.make_url("/metrics")) as resp:
        metrics = await resp.text()
    assert 'journeys_email_bad_tokens_total{kind="click",reason="signature"}' in metrics
    assert 'journeys_email_bad_tokens_total{kind="click",reason="kind"} 1.0' in metrics


async def test_a_validly_signed_non_http_target_is_still_refused(http, collector, project, signing_key) -> None:  # type: ignore[no-untyped-def]
    """Defence in depth: a signer that skipped the URL check (another SDK, an old version) still cannot
    make the collector redirect to javascript: or data: URLs."""
    for target in ("javascript:alert(1)", "data:text/html,<b>x</b>", "//evil.example/", "https:///nohost"):
        payload = (
            base64.urlsafe_b64encode(json.dumps({"v": 1, "k": "c", "u": "c-1", "c": "x", "url": target}).encode())
            .rstrip(b"=")
            .decode()
        )
        mac = hmac.new(signing_key.encode(), f"{project.id}.{payload}".encode(), hashlib.sha256).digest()[:16]
        token = f"{project.id}.{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        status, headers, _ = await _get(http, str(collector.make_url("/v1/email/click/" + token)))
        assert status == 400 and "Location" not in headers, target


@pytest.mark.parametrize(
    "target",
    [
        "javascript:alert(document.cookie)",
        "JavaScript:alert(1)",
        "data:text/html,x",
        "vbscript:x",
        "/relative",
        "//evil.example/",
        "ftp://files.example/",
        "https://",
        "https://exa mple.com/",
        "https://example.com/\\evil",
        "https://bücher.example/",
    ],
)
def test_only_absolute_http_urls_can_be_signed(target: str) -> None:
    with pytest.raises(InvalidLinkError, match="url"):
        EmailLinks("p_1", "je_k", "https://c.example").click("u", "c", target)
    with pytest.raises(TokenError):
        sign("je_k", "p_1", "click", "u", "c", target)


@pytest.mark.parametrize(
    "user_agent,method,kind,expected",
    [
        ("Mozilla/5.0", "GET", "open", ("Apple Mail Privacy Protection", "prefetch")),
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "GET",
            "open",
            ("Google Image Proxy", "proxy"),
        ),
        (
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            "GET",
            "open",
            ("Yahoo Mail Proxy", "proxy"),
        ),
        (BROWSER, "HEAD", "click", ("HEAD request", "scanner")),
        (
            "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
            "GET",
            "click",
            ("Microsoft Office link check", "scanner"),
        ),
        ("Mozilla/5.0 (compatible; Mimecast URL Protect)", "GET", "click", ("Mimecast", "scanner")),
        ("", "GET", "click", ("no User-Agent", "bot")),
    ],
)
async def test_prefetchers_and_scanners_are_recorded_but_flagged(  # type: ignore[no-untyped-def]
    http, collector, stores, project, links, user_agent, method, kind, expected
) -> None:
    url = links.open_pixel("c-9", "weekly") if kind == "open" else links.click("c-9", "weekly", TARGET)
    status, headers, _ = await _get(http, url, user_agent, method)
    # Flagged or not, the answer is the same: a scanner that gets no redirect would mark the link unsafe.
    assert status == (200 if kind == "open" else 302)
    if kind == "click":
        assert headers["Location"] == TARGET
    await wait_stored(stores, project.id, 1)
    [row] = await _email_rows(stores, project.id)
    name, bot_kind = expected
    assert row["properties"]["bot"] == bot_kind
    assert row["context"]["bot"] == {"name": name, "kind": bot_kind}


async def test_a_journey_map_leaves_flagged_opens_and_clicks_out(  # type: ignore[no-untyped-def]
    http, collector, query, stores, project, links
) -> None:
    """The query-side rule docs/email.md recommends: ``where: bot not_exists``."""
    human = [{"property": "bot", "op": "not_exists"}]
    journey_map = {
        "name": "newsletter",
        "stages": [{"id": "reached", "name": "Reached"}, {"id": "engaged", "name": "Engaged"}],
        "touchpoints": [
            {
                "id": "opened",
                "stage": "reached",
                "match": {"event": "Email Opened", "channel": "email", "where": human},
            },
            {
                "id": "clicked",
                "stage": "engaged",
                "match": {"event": "Email Clicked", "channel": "email", "where": human},
            },
        ],
    }
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
    async with http.put(
        query.make_url("/v1/maps/newsletter"), data=orjson.dumps(journey_map), headers=basic(admin)
    ) as r:
        assert r.status == 201, await r.text()
    await _get(http, links.open_pixel("c-5", "weekly"), "Mozilla/5.0")  # Apple MPP prefetch
    await _get(http, links.click("c-5", "weekly", TARGET), BROWSER, "HEAD")  # link checker
    await _get(http, links.open_pixel("c-5", "weekly"), OUTLOOK_DESKTOP)  # the person, in Outlook
    # The click a few ms later: events stamped in the same millisecond are ordered by message id (random),
    # and this test is about which touchpoints count, not about ties (it failed so, twice, under load).
    await asyncio.sleep(0.01)
    await _get(http, links.click("c-5", "weekly", TARGET), BROWSER)  # the person, clicking
    await wait_drained(collector)
    async with http.get(
        query.make_url("/v1/customers/c-5/journey?map=newsletter"), headers=basic(project.read_key)
    ) as resp:
        journey = await resp.json()
    assert resp.status == 200, journey
    assert Counter((t["event"], t["touchpoint"]) for t in journey["touchpoints"]) == Counter(
        {
            ("Email Opened", None): 1,
            ("Email Clicked", None): 1,
            ("Email Opened", "opened"): 1,
            ("Email Clicked", "clicked"): 1,
        }
    )
    assert journey["current_stage"] == "engaged"


async def test_a_full_spool_still_serves_the_pixel_and_the_redirect_and_counts_the_loss(  # type: ignore[no-untyped-def]
    http, stores, project, signing_key, tmp_path
) -> None:
    full = with_settings(stores, spool_dir=tmp_path / "spool", spool_max_bytes=64)  # smaller than any record
    server = TestServer(create_app(full, Metrics()), host="127.0.0.1")
    await server.start_server()
    try:
        links = EmailLinks(project.id, signing_key, str(server.make_url("/")))
        status, headers, body = await _get(http, links.click("c-1", "x", TARGET))
        assert status == 302 and headers["Location"] == TARGET  # the person reaches the page regardless
        status, _, body = await _get(http, links.open_pixel("c-1", "x"))
        assert status == 200 and body == PIXEL_GIF
        async with http.get(server.make_url("/metrics")) as resp:
            metrics = await resp.text()
        assert 'journeys_email_unrecorded_total{kind="click",reason="spool_full"} 1.0' in metrics
        assert 'journeys_email_unrecorded_total{kind="open",reason="spool_full"} 1.0' in metrics
        assert "journeys_email_events_total{" not in metrics
    finally:
        await server.close()


async def test_rotation_keeps_old_links_working_for_the_grace_period_only(  # type: ignore[no-untyped-def]
    http, stores, project, signing_key, tmp_path
) -> None:
    uncached = with_settings(stores, spool_dir=tmp_path / "spool", key_cache_ttl_s=0)
    server = TestServer(create_app(uncached, Metrics()), host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("/"))
        old_link = EmailLinks(project.id, signing_key, base).click("c-1", "x", TARGET)
        async with stores.pg.acquire() as conn:
            new_key = await rotate_key(conn, project.id, timedelta(days=7))
        assert new_key != signing_key
        new_link = EmailLinks(project.id, new_key, base).click("c-1", "x", TARGET)
        assert (await _get(http, old_link))[0] == 302  # mail already sent keeps working
        assert (await _get(http, new_link))[0] == 302
        async with stores.pg.acquire() as conn:
            newest = await rotate_key(conn, project.id, timedelta(0))  # no grace: the previous key stops now
        assert (await _get(http, new_link))[0] == 400
        assert (await _get(http, old_link))[0] == 302  # still inside its own 7-day grace
        assert (await _get(http, EmailLinks(project.id, newest, base).click("c-1", "x", TARGET)))[0] == 302
    finally:
        await server.close()


async def test_a_new_key_verifies_before_the_cache_expires(stores, project) -> None:  # type: ignore[no-untyped-def]
    resolver = SigningKeyResolver(stores.pg, ttl=3600, refresh_after=0)
    assert await resolver.keys(project.id) == ()  # no key yet: cached as such
    async with stores.pg.acquire() as conn:
        key = await current_key(conn, project.id)
        assert await current_key(conn, project.id) == key  # made once, then the same
    assert await resolver.keys(project.id) == ()  # still the cached answer…
    assert await resolver.fresher_keys(project.id) == (key,)  # …until a failed signature asks again
    assert await resolver.keys(project.id) == (key,)
    throttled = SigningKeyResolver(stores.pg, ttl=3600, refresh_after=3600)
    await throttled.keys(project.id)
    assert await throttled.fresher_keys(project.id) is None  # forged-token floods cannot hammer PostgreSQL


@pytest.mark.slow
async def test_cli_signs_a_send_list_that_round_trips_through_the_collector(tmp_path: Path) -> None:
    import aiohttp

    from testkit.service import Service, create_project as cli_create_project, journeys, stop_leftover_postgres
    from support import wait_until

    try:
        keys = cli_create_project(tmp_path, "mailer")
        service = Service(tmp_path, JOURNEYS_INSERT_LINGER_MS="5").start()
        try:
            shown = journeys(tmp_path, "email", "key", "--project", "mailer", "--json")
            assert shown.returncode == 0, shown.stderr
            key = json.loads(shown.stdout)
            assert key["project_id"] == keys["id"] and key["key"].startswith("je_")
            again = journeys(tmp_path, "email", "key", "--project", "mailer", "--json")
            assert json.loads(again.stdout)["key"] == key["key"]  # stable until rotated

            send_list = tmp_path / "send.csv"
            send_list.write_text(
                "user_id,url,campaign\n"
                f"c-1,{TARGET},\n"
                "c-2,https://shop.example.com/b,autumn\n"
                "c-3,,\n"  # no link for this one: pixel only
            )
            done = journeys(
                tmp_path,
                "email",
                "link",
                "--project",
                "mailer",
                "--campaign",
                "spring-26",
                "--csv",
                str(send_list),
                "--base-url",
                service.collector,
                "--prop",
                "variant=B",
            )
            assert done.returncode == 0, done.stderr
            rows = list(csv.DictReader(io.StringIO(done.stdout)))
            assert [(r["user_id"], r["campaign"], r["url"]) for r in rows] == [
                ("c-1", "spring-26", TARGET),
                ("c-2", "autumn", "https://shop.example.com/b"),
                ("c-3", "spring-26", ""),
            ]
            assert rows[2]["click_url"] == ""
            # The CLI signs what the SDK signs, byte for byte.
            sdk = EmailLinks(keys["id"], key["key"], service.collector)
            assert rows[0]["click_url"] == sdk.click("c-1", "spring-26", TARGET, {"variant": "B"})

            one = journeys(
                tmp_path,
                "email",
                "link",
                "--project",
                "mailer",
                "--campaign",
                "solo",
                "--user",
                "c-4",
                "--url",
                "https://shop.example.com/solo",
                "--base-url",
                service.collector,
            )
            assert one.returncode == 0, one.stderr
            bad = journeys(
                tmp_path,
                "email",
                "link",
                "--project",
                "mailer",
                "--campaign",
                "x",
                "--user",
                "c-4",
                "--url",
                "javascript:alert(1)",
                "--base-url",
                service.collector,
            )
            assert bad.returncode == 1 and "only http and https" in bad.stderr and bad.stdout == ""
            send_list.write_text(f"user_id,url\nc-1,{TARGET}\n,https://ok.example/\nc-3,data:text/html,x\n")
            partial = journeys(
                tmp_path,
                "email",
                "link",
                "--project",
                "mailer",
                "--campaign",
                "c",
                "--csv",
                str(send_list),
                "--base-url",
                service.collector,
            )
            assert partial.returncode == 1 and partial.stdout == ""  # one bad row: nothing signed
            assert "line 3: user_id" in partial.stderr and "line 4: url" in partial.stderr

            async with aiohttp.ClientSession() as http:
                for row in rows:
                    if row["click_url"]:
                        status, headers, _ = await _get(http, row["click_url"])
                        assert status == 302 and headers["Location"] == row["url"]
                    assert (await _get(http, row["open_url"]))[0] == 200
                status, headers, _ = await _get(http, one.stdout.strip())
                assert status == 302 and headers["Location"] == "https://shop.example.com/solo"

                async def events_of(customer: str) -> list:
                    async with http.get(
                        f"{service.query}/v1/customers/{customer}/events", headers=basic(keys["read_key"])
                    ) as r:
                        return [] if r.status == 404 else (await r.json())["events"]  # 404: no such customer (yet)

                async def all_landed() -> dict:
                    found = {c: await events_of(c) for c in ("c-1", "c-2", "c-3", "c-4")}
                    return found if [len(found[c]) for c in ("c-1", "c-2", "c-3", "c-4")] == [2, 2, 1, 1] else {}

                found = await wait_until(all_landed)
            c1 = sorted(found["c-1"], key=lambda e: e["event"])
            assert [e["event"] for e in c1] == ["Email Clicked", "Email Opened"]
            assert all(e["channel"] == "email" for e in c1)
            props = c1[0]["properties"]
            props = json.loads(props) if isinstance(props, str) else props
            assert props == {"variant": "B", "campaign": "spring-26", "url": TARGET}
        finally:
            assert service.stop() == 0
    finally:
        stop_leftover_postgres(tmp_path)


HUMAN_AGENTS = [
    BROWSER,
    OUTLOOK_DESKTOP,
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 13; CUBOT KingKong 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0 Thunderbird/115.10.1",
]


@pytest.mark.parametrize("user_agent", HUMAN_AGENTS)
@pytest.mark.parametrize("kind", ["open", "click"])
def test_people_are_not_flagged(user_agent: str, kind: str) -> None:
    from collector.email_bots import classify

    assert classify(user_agent, "GET", kind) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "user_agent,name",
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 "
            "Safari/537.36 Edge/12.246 Mozilla/5.0",
            "Gmail prefetch",
        ),
        ("Mozilla/5.0 (compatible; Proofpoint URL Defense)", "Proofpoint"),
        ("Barracuda Sentinel (EE)", "Barracuda"),
        ("Mozilla/5.0 (Windows NT 10.0) Microsoft-URLAnalyzer", "Microsoft Defender Safe Links"),
        ("Mozilla/5.0 (compatible; BingPreview/1.0b)", "Microsoft Defender Safe Links"),
        ("Microsoft Office Existence Discovery", "Microsoft Office link check"),
        ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "Link preview"),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "Link preview"),
        ("python-requests/2.31.0", "HTTP library"),
        ("curl/8.5.0", "HTTP library"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0 Safari/537.36",
            "Headless browser",
        ),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Crawler"),
    ],
)
def test_known_fetchers_are_named(user_agent: str, name: str) -> None:
    from collector.email_bots import classify

    found = classify(user_agent, "GET", "click")
    assert found is not None and found.name == name


def test_the_office_link_probe_rule_applies_to_clicks_only() -> None:
    from collector.email_bots import classify

    probe = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"
    assert classify(probe, "GET", "click") is not None
    assert classify(probe, "GET", "open") is None  # Outlook desktop loading images is a real open


def test_every_rule_says_why() -> None:
    from collector.email_bots import RULES

    assert len({r.name for r in RULES}) == len(RULES)
    assert all(r.why and r.kind in ("proxy", "prefetch", "scanner", "bot") for r in RULES)


async def test_without_postgresql_a_link_is_not_followed(http, stores, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The keys cannot be read, so the token cannot be trusted: 503, no Location."""
    import dataclasses

    import asyncpg

    from testkit.net import free_port

    dead = await asyncpg.create_pool(f"postgresql://nobody@127.0.0.1:{free_port()}/none", min_size=0)
    unreachable = dataclasses.replace(with_settings(stores, spool_dir=tmp_path / "spool"), pg=dead)
    server = TestServer(create_app(unreachable, Metrics()), host="127.0.0.1")
    await server.start_server()
    try:
        link = EmailLinks("p_0123456789ab", "je_k", str(server.make_url("/"))).click("c-1", "x", TARGET)
        status, headers, body = await _get(http, link)
        assert status == 503 and "Location" not in headers and headers["Retry-After"]
        assert orjson.loads(body)["errors"][0]["field"] == "server"
    finally:
        await server.close()
        await dead.close()
