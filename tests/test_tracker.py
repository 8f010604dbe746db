"""The browser tracker (/t.js) in real headless Chromium, against the real collector and chDB.

The test site is served on 127.0.0.1 on a port other than the collector's, so every send is a real
cross-origin request and CORS is the browser's, not ours. The collector is watched from its side (a
middleware that notes each request's method, fetch mode and content type): a beacon is a ``no-cors``
POST, the tracker's ordinary sends are ``cors`` fetches, and Playwright's own request events do not show
beacons at all.

Needs /usr/bin/chromium (or JOURNEYS_CHROMIUM) and the playwright package (the ``test`` extra); where
either is missing every test here is skipped with the reason in the summary. CI installs both (.ci/run).
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from collector.appkeys import METRICS
from collector.app import create_app as create_collector
from collector.tracker import build_script, minify, tracker_source
from journeys.keys import add_key
from journeys.metrics import Metrics
from collector.origins import change_origins
from journeys.stores import Stores
from browser import launch
from support import wait_drained, wait_until, with_settings

UTM = "utm_source=news&utm_medium=email&utm_campaign=spring"
STUB = (
    "window.journeys=window.journeys||[];"
    '["track","identify","page","optOut","optIn","reset","flush"].forEach(function(m){'
    "journeys[m]=journeys[m]||function(){journeys.push([m].concat([].slice.call(arguments)))}});"
)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async for launched in launch("TRACKER"):
        yield launched


@dataclass
class Seen:
    """A request the collector received, as the browser sent it."""

    method: str
    path: str
    mode: str  # Sec-Fetch-Mode: "no-cors" for sendBeacon, "cors" for the tracker's fetch
    content_type: str
    origin: str
    body: bytes
    status: int = 0


@dataclass
class Collector:
    server: TestServer
    metrics: Metrics
    seen: list[Seen] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def batches(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/v1/batch"]


@pytest.fixture
async def make_collector(stores: Stores, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[TestServer] = []

    async def make(**settings: object) -> Collector:
        app = create_collector(
            with_settings(stores, spool_dir=tmp_path / f"spool{len(started)}", **settings), Metrics()
        )
        watched = Collector(TestServer(app, host="127.0.0.1"), app[METRICS])

        @web.middleware
        async def watch(request: web.Request, handler):  # type: ignore[no-untyped-def]
            body = await request.read()
            seen = Seen(
                request.method,
                request.path,
                request.headers.get("Sec-Fetch-Mode", ""),
                request.headers.get("Content-Type", ""),
                request.headers.get("Origin", ""),
                body,
            )
            watched.seen.append(seen)
            response = await handler(request)
            seen.status = response.status
            return response

        app.middlewares.insert(0, watch)  # outermost: sees the request as it came, and the final answer
        await watched.server.start_server()
        started.append(watched.server)
        return watched

    yield make
    for server in started:
        await server.close()


class Site:
    """The test site: pages that load the tracker, on a port of their own (another origin)."""

    def __init__(self, collector: Collector, key: str, variant: str, attrs: str = 'data-flush-ms="200"'):
        self.collector, self.key, self.variant, self.attrs = collector, key, variant, attrs
        app = web.Application()
        app.router.add_get("/plain", self._plain)
        app.router.add_get("/{path:.*}", self._page)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def tag(self, attrs: str) -> str:
        key = html.escape(self.key)
        if self.variant == "minified":  # as a site includes it: served by the collector
            return f'<script async src="{self.collector.base}/t.js" data-key="{key}" {attrs}></script>'
        # The readable source, inline: the same behaviour must come out of both forms.
        source = tracker_source().replace("</", "<\\/")
        return f'<script data-key="{key}" data-host="{self.collector.base}" {attrs}>{source}</script>'

    async def _page(self, request: web.Request) -> web.Response:
        attrs = self.attrs + (" data-opt-out" if request.query.get("consent") == "ask" else "")
        early = "<script>journeys.track('Early', {when: 'before load'})</script>" if request.query.get("early") else ""
        return web.Response(
            content_type="text/html",
            text=f"""<!doctype html><html><head><title>Page {html.escape(request.path)}</title>
<script>{STUB}</script>{early}
{self.tag(attrs)}
</head><body>
<a id="to-a" href="/a?{UTM}&early=1">to a</a>
<button id="buy" onclick="journeys.track('Clicked Buy', {{sku: 'sku-1'}})">buy</button>
<button id="spa" onclick="history.pushState({{}}, '', '/a/step2'); document.title = 'Step 2'">step 2</button>
<button id="login" onclick="journeys.identify('user-42', {{plan: 'pro'}})">log in</button>
<a id="to-b" href="/b">to b</a>
</body></html>""",
        )

    async def _plain(self, _: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text="<!doctype html><title>no tracker</title><p>bye</p>")


@pytest.fixture
async def public_key(stores: Stores, project) -> str:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        return await add_key(conn, project.id, "public")


async def allow(stores: Stores, project_id: str, origin: str) -> None:
    async with stores.pg.acquire() as conn:
        await change_origins(conn, project_id, [origin])


@pytest.fixture
async def site_factory() -> AsyncIterator[Callable[..., Any]]:
    sites: list[Site] = []

    async def make(collector: Collector, key: str, variant: str = "minified", **kw: str) -> Site:
        site = Site(collector, key, variant, **kw)
        await site.server.start_server()
        sites.append(site)
        return site

    yield make
    for site in sites:
        await site.server.close()


async def loaded(page) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function("window.journeys && window.journeys.loaded === true")


async def sent(collector: Collector, page, since: int) -> None:  # type: ignore[no-untyped-def]
    """Flush the tracker's queue now and wait until the collector has answered a send made after the
    first ``since`` (a count taken before the page was loaded, so a send already made counts too)."""
    await page.evaluate("journeys.flush()")

    async def answered() -> bool:
        return any(s.status for s in collector.batches()[since:])

    await wait_until(answered)


async def events(stores: Stores, project_id: str) -> list[dict[str, Any]]:
    columns, rows = await stores.clickhouse.query(
        "SELECT type, event, anonymous_id, user_id, channel, page_url, referrer, utm_source, utm_medium, utm_campaign,"
        " properties, traits, context FROM events WHERE project_id = {p:String}"
        # As every read does: a resent event (same messageId: the tracker delivers at least once) counts once.
        " ORDER BY timestamp LIMIT 1 BY message_id",
        {"p": project_id},
    )
    out = []
    for row in rows:
        item = dict(zip(columns, row))
        for name in ("properties", "traits", "context"):
            item[name] = orjson.loads(item[name])
        out.append(item)
    return out


async def wait_events(stores: Stores, project_id: str, n: int) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        found = await events(stores, project_id)
        return found if len(found) >= n else None

    return await wait_until(enough, timeout=30)


# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["minified", "readable"])
async def test_page_views_track_and_identify_arrive_with_ids_urls_referrers_and_utm(  # type: ignore[no-untyped-def]
    browser, make_collector, site_factory, stores, project, public_key, variant
) -> None:
    collector = await make_collector()
    site = await site_factory(collector, public_key, variant)
    await allow(stores, project.id, site.origin)
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(site.url("/start"))
        await loaded(page)
        await page.click("#to-a")  # a full load: /a with UTM parameters, referred by /start
        await page.wait_for_url("**/a?*")
        await loaded(page)
        await page.click("#buy")
        await page.click("#spa")  # pushState: a page view for /a/step2
        await page.wait_for_function("document.title === 'Step 2'")
        await page.click("#login")
        anonymous_id = await page.evaluate("localStorage.getItem('jny_aid')")
        assert anonymous_id and await page.evaluate("journeys.anonymousId()") == anonymous_id
        await page.click("#to-b")
        await page.wait_for_url("**/b")
        await loaded(page)
        stored = await wait_events(stores, project.id, 7)
        assert await page.evaluate("localStorage.getItem('jny_aid')") == anonymous_id  # the same visitor on /b
    finally:
        await context.close()

    start, a, step2, b = site.url("/start"), site.url(f"/a?{UTM}&early=1"), site.url("/a/step2"), site.url("/b")
    by_kind = {(e["type"], e["event"] if e["type"] == "track" else e["page_url"]): e for e in stored}
    assert len(stored) == 7 and len(by_kind) == 7, [(e["type"], e["event"], e["page_url"]) for e in stored]
    assert {e["anonymous_id"] for e in stored} == {anonymous_id}
    assert {e["channel"] for e in stored} == {"web"}
    assert all(e["context"]["library"]["name"] == "journeys.js" for e in stored)

    first = by_kind[("page", start)]
    assert (first["referrer"], first["utm_source"], first["user_id"]) == ("", "", "")
    landing = by_kind[("page", a)]
    assert landing["referrer"] == start
    assert (landing["utm_source"], landing["utm_medium"], landing["utm_campaign"]) == ("news", "email", "spring")
    assert landing["context"]["campaign"] == {"source": "news", "medium": "email", "name": "spring"}
    assert landing["properties"]["path"] == "/a" and landing["properties"]["title"] == "Page /a"
    for name, props in (("Early", {"when": "before load"}), ("Clicked Buy", {"sku": "sku-1"})):
        tracked = by_kind[("track", name)]  # Early: called before the script loaded, kept by the stub
        assert tracked["properties"] == props
        assert (tracked["page_url"], tracked["referrer"], tracked["utm_campaign"]) == (a, start, "spring")
    spa = by_kind[("page", step2)]
    assert spa["referrer"] == a and spa["utm_source"] == ""  # the new URL has no campaign
    assert spa["context"]["page"]["title"] == "Step 2"  # the title the app set right after pushState
    identify = by_kind[("identify", step2)]  # identified on the SPA page: its URL is in the context too
    assert identify["user_id"] == "user-42" and identify["traits"] == {"plan": "pro"}
    last = by_kind[("page", b)]
    assert (last["user_id"], last["referrer"]) == ("user-42", step2)  # identified, and referred by the SPA URL

    sends = collector.batches()
    assert sends and all(s.method == "POST" and s.content_type.startswith("text/plain") for s in sends)
    assert all(s.origin == site.origin and s.status == 200 for s in sends)
    assert not [s for s in collector.seen if s.method == "OPTIONS"]  # simple requests: never a preflight


@pytest.mark.parametrize("variant", ["minified", "readable"])
async def test_leaving_the_page_delivers_the_queue_by_send_beacon(  # type: ignore[no-untyped-def]
    browser, make_collector, site_factory, stores, project, public_key, variant
) -> None:
    collector = await make_collector()
    # Nothing would be sent for ten minutes or a hundred events: only the page-hide path can deliver.
    site = await site_factory(collector, public_key, variant, attrs='data-flush-ms="600000" data-batch-size="100"')
    await allow(stores, project.id, site.origin)
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(site.url("/b"))
        await loaded(page)
        await page.click("#buy")
        await page.click("#login")
        assert collector.batches() == []
        anonymous_id = await page.evaluate("journeys.anonymousId()")
        await page.goto(site.url("/plain"))  # pagehide
        stored = await wait_events(stores, project.id, 3)
    finally:
        await context.close()
    assert [(e["type"], e["event"]) for e in stored] == [("page", ""), ("track", "Clicked Buy"), ("identify", "")]
    assert {e["anonymous_id"] for e in stored} == {anonymous_id}
    [beacon] = collector.batches()
    assert (beacon.mode, beacon.status) == ("no-cors", 200)
    assert beacon.content_type.startswith("text/plain")
    sent = orjson.loads(beacon.body)
    assert sent["writeKey"] == public_key and len(sent["batch"]) == 3 and sent["sentAt"]


async def test_big_non_ascii_events_go_in_requests_under_the_beacon_limit_and_none_is_lost(  # type: ignore[no-untyped-def]
    browser, make_collector, site_factory, stores, project, public_key
) -> None:
    collector = await make_collector()
    site = await site_factory(collector, public_key, attrs='data-flush-ms="200" data-batch-size="100"')
    await allow(stores, project.id, site.origin)
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(site.url("/b"))
        await loaded(page)
        # 8 events of 24 000 UTF-8 bytes (8 000 three-byte characters): 192 KB, three times what a beacon
        # or a keepalive fetch may carry. Counting characters instead of bytes would send 60 000-character
        # requests of ~180 KB, which the browser refuses every time.
        await page.evaluate("for (var i = 0; i < 8; i++) journeys.track('Big', {i: i, text: '\u754c'.repeat(8000)})")
        await page.goto(site.url("/b"))  # leave at once: beacons, and what they cannot take waits for this page
        await loaded(page)
        stored = await wait_events(stores, project.id, 10)
    finally:
        await context.close()
    big = sorted(e["properties"]["i"] for e in stored if e["event"] == "Big")
    assert big == list(range(8)) and all(len(e["properties"]["text"]) == 8000 for e in stored if e["event"] == "Big")
    assert len([e for e in stored if e["type"] == "page"]) == 2
    sizes = [len(s.body) for s in collector.batches()]
    assert max(sizes) <= 60_000 and all(s.status == 200 for s in collector.batches()), sizes


async def test_opted_out_visitors_send_nothing_and_the_choice_persists(  # type: ignore[no-untyped-def]
    browser, make_collector, site_factory, stores, project, public_key
) -> None:
    collector = await make_collector()
    site = await site_factory(collector, public_key)
    await allow(stores, project.id, site.origin)
    context = await browser.new_context()
    page = await context.new_page()
    try:
        # data-opt-out: nothing is sent, nothing is stored in the browser until the visitor agrees.
        await page.goto(site.url("/consent?consent=ask"))
        await loaded(page)
        await page.evaluate("journeys.track('Secret', {n: 1})")
        assert await page.evaluate("journeys.isOptedOut()") is True
        assert await page.evaluate("[localStorage.getItem('jny_aid'), document.cookie]") == [None, ""]
        await page.goto(site.url("/plain"))
        # Agreeing sends the page view that was held back, and what follows.
        await page.goto(site.url("/consent?consent=ask"))
        await loaded(page)
        await page.evaluate("journeys.optIn()")
        await page.evaluate("journeys.track('Agreed')")
        await page.evaluate("journeys.flush()")
        # The stored choice beats the attribute on the next load; opting out again is stored too.
        mark = len(collector.batches())
        await page.goto(site.url("/consent?consent=ask"))
        await loaded(page)
        assert await page.evaluate("journeys.isOptedOut()") is False
        await sent(collector, page, mark)  # the page view is out before opting out (which drops the queue)
        await page.evaluate("journeys.optOut()")
        assert await page.evaluate("localStorage.getItem('jny_aid')") is None  # the id is forgotten
        await page.goto(site.url("/b"))  # no data-opt-out here: still out
        await loaded(page)
        assert await page.evaluate("journeys.isOptedOut()") is True
        await page.evaluate("journeys.track('Secret', {n: 2})")
        await page.goto(site.url("/plain"))
        # Control: opt in once more; once this event is stored, anything sent before it would be too.
        await page.goto(site.url("/b"))
        await loaded(page)
        await page.evaluate("journeys.optIn(); journeys.track('Control')")
        await page.goto(site.url("/plain"))

        async def control_stored() -> list[dict[str, Any]] | None:
            found = await events(stores, project.id)
            return found if any(e["event"] == "Control" for e in found) else None

        stored = await wait_until(control_stored, timeout=30)
    finally:
        await context.close()
    consent = site.url("/consent?consent=ask")
    assert sorted((e["type"], e["event"] or e["page_url"]) for e in stored) == sorted(
        [("page", consent), ("track", "Agreed"), ("page", consent), ("page", site.url("/b")), ("track", "Control")]
    )
    assert not [s for s in collector.batches() if b"Secret" in s.body]


async def test_a_page_on_an_origin_the_project_does_not_list_stores_nothing(  # type: ignore[no-untyped-def]
    browser, make_collector, site_factory, stores, project, public_key
) -> None:
    collector = await make_collector()
    listed = await site_factory(collector, public_key)
    unlisted = await site_factory(collector, public_key)  # same pages, another port: another origin
    await allow(stores, project.id, listed.origin)
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(unlisted.url("/b"))
        await loaded(page)
        await page.click("#buy")
        await page.evaluate("journeys.flush()")

        async def refused() -> bool:
            return any(s.origin == unlisted.origin and s.status == 403 for s in collector.batches())

        await wait_until(refused)
        await page.goto(unlisted.url("/plain"))  # the beacon is refused too
        await page.goto(listed.url("/b"))  # control: the very same page, from the listed origin
        await loaded(page)
        await page.click("#buy")
        await page.goto(listed.url("/plain"))
        await wait_events(stores, project.id, 2)

        async def beacon_refused() -> bool:
            return any(s.origin == unlisted.origin and s.mode == "no-cors" and s.status for s in collector.batches())

        await wait_until(beacon_refused)
        await wait_drained(collector.server)
        stored = await events(stores, project.id)
    finally:
        await context.close()
    assert [(e["type"], e["event"], e["page_url"]) for e in stored] == [
        ("page", "", listed.url("/b")),
        ("track", "Clicked Buy", listed.url("/b")),
    ]
    refusals = [s for s in collector.batches() if s.origin == unlisted.origin]
    assert {s.status for s in refusals} == {403} and {s.mode for s in refusals} == {"cors", "no-cors"}


async def test_the_tracker_waits_out_a_429_and_delivers(  # type: ignore[no-untyped-def]
    browser, make_collector, site_factory, stores, project, public_key
) -> None:
    # One request per visitor, then one more each second.
    collector = await make_collector(rate_limit_public_per_s=1.0, rate_limit_public_burst=1)
    site = await site_factory(collector, public_key, attrs='data-flush-ms="50"')
    await allow(stores, project.id, site.origin)
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(site.url("/b"))
        await loaded(page)

        async def page_view_sent() -> bool:
            return len(collector.batches()) >= 1

        await wait_until(page_view_sent)  # the visitor's one token is spent
        await page.click("#buy")
        stored = await wait_events(stores, project.id, 2)
    finally:
        await context.close()
    assert [(e["type"], e["event"]) for e in stored] == [("page", ""), ("track", "Clicked Buy")]
    statuses = [s.status for s in collector.batches()]
    assert 429 in statuses and statuses[-1] == 200, statuses
    assert collector.metrics.rate_limited.labels("public")._value.get() >= 1


# ---- the served script ------------------------------------------------------------------------------


def test_the_minifier_keeps_the_program_and_refuses_what_it_cannot_keep() -> None:
    from collector.tracker import MinifyError

    source = tracker_source()
    small = minify(source)
    assert len(small) < len(source) * 0.75
    assert "//" not in small.replace("://", "") and "/*" not in small
    assert minify(small) == small  # nothing left to take away
    for bad in ("var a = `x`;", "var a = 1; // trailing", "var s = 'a\\\n b';", "/* a */ var x;", "/* open"):
        with pytest.raises(MinifyError):
            minify(bad)
    assert (
        minify("f(a,\n  b);\n// c\n/* d\n e */\nreturn\nx") == "f(a,b);return\nx\n"
    )  # joined after ; but never after return


async def test_t_js_is_served_minified_cached_and_gzipped(http, collector) -> None:  # type: ignore[no-untyped-def]
    script = build_script()
    async with http.get(collector.make_url("/t.js"), headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200 and resp.content_type == "application/javascript"
        assert resp.headers["Content-Encoding"] == "gzip" and "max-age" in resp.headers["Cache-Control"]
        assert await resp.read() == script.body  # aiohttp inflates it
        etag = resp.headers["ETag"]
    async with http.get(collector.make_url("/t.js"), headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    print(
        f"\ntracker: source {len(tracker_source().encode())} B, minified {len(script.body)} B, gzip {len(await script.gzipped())} B"
    )
