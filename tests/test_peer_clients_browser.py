"""The official browser clients, unmodified — Segment's @segment/analytics-next and RudderStack's
@rudderstack/analytics-js v3 — in real headless Chromium against the real collector, read back through the
query service.

Each is bundled by the pinned esbuild (tests/peers/build.mjs) into a script the test site serves from
127.0.0.1 on a port of its own, so every send to the collector is a real cross-origin request and CORS
(preflights included) is the browser's. Nothing may come from anywhere else: analytics-next gets its
settings in ``cdnSettings`` (the Segment.io integration's ``apiHost`` is the collector, ``protocol: http``)
and never fetches them; RudderStack's "bundled" build carries its plugins (XhrQueue, BeaconQueue) and
asks the collector's ``/sourceConfig`` for its source config (``configUrl``: no RudderStack control plane);
its ``destSDKBaseURL``/``pluginsSDKBaseURL`` point at the test site, which must never be asked for them.
The browser context sends every non-loopback request to a proxy on 127.0.0.1 that refuses it and notes
it, and a test fails if there is one. (Not ``page.route``: with any route installed Playwright answers
every CORS preflight itself, allowing everything, which would hide the collector's CORS.)

The pages use a public key (``jp_…``; the test site's origin is allowed), the way a web page must; the
page's clock runs hours off (an init script shifts ``Date``), so only the ``sentAt`` correction can store
the events at the real time. Every event must be readable exactly once by the user id after identify,
the anonymous ones included, with the page's URL and UTM campaign and the channel given in properties.
The collector notes each request as it arrived, and a failing assertion shows them.

Needs node/npm (tests/peers_support.py), /usr/bin/chromium and playwright; skipped, loudly, without them.
"""

from __future__ import annotations

import asyncio
import html
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from browser import launch
from journeys.keys import add_key
from collector.origins import change_origins
from journeys.stores import Stores
from peers_support import (  # noqa: F401  (fixtures)
    CLOCK_SHIFT,
    HOURS,
    TIME_SLACK_S,
    WatchedCollector,
    by_name,
    check_clock_shift,
    customer_events,
    parse_time,
    peers,
    wait_customer,
    watched_collector,
)
from support import basic, wait_drained, wait_until

UTM = "utm_source=news&utm_medium=email&utm_campaign=spring"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async for launched in launch("PEER CLIENT (BROWSER)"):
        yield launched


@pytest.fixture
async def public_key(stores: Stores, project) -> str:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        return await add_key(conn, project.id, "public")


# ---- the test site and the guard against other hosts ------------------------------------------------


class Site:
    """The pages that load a bundled client, its scripts, and RudderStack's source config: another origin."""

    def __init__(self, peers, write_key: str):  # type: ignore[no-untyped-def]
        self.peers, self.write_key = peers, write_key
        self.requests: list[str] = []  # every path+query asked of the site
        app = web.Application()
        app.router.add_get("/page/{client}", self._page)
        app.router.add_get("/dist/{name}.js", self._bundle)
        app.router.add_route("*", "/{path:.*}", self._other)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def _note(self, request: web.Request) -> None:
        self.requests.append(f"{request.method} {request.path_qs}")

    async def _page(self, request: web.Request) -> web.Response:
        self._note(request)
        name = {"segment": "segment", "rudder": "rudder"}.get(request.match_info["client"])
        if name is None:
            raise web.HTTPNotFound()
        return web.Response(
            content_type="text/html",
            text=f'<!doctype html><html><head><title>Peer {html.escape(name)}</title><link rel="icon" href="data:,">'
            f'<script src="/dist/{name}.js"></script></head><body><p>peer client page</p></body></html>',
        )

    async def _bundle(self, request: web.Request) -> web.Response:
        self._note(request)
        path = self.peers.bundles.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type="application/javascript")

    async def _other(self, request: web.Request) -> web.Response:
        self._note(request)  # a plugin or integration fetched from the "CDN" base URLs would land here
        raise web.HTTPNotFound()


class Refuser:
    """An HTTP proxy on 127.0.0.1 for the browser context: every request for another host comes here, is
    noted, and is refused. Loopback bypasses it (the context's proxy bypass list), so the test's own
    servers are reached directly and see the browser's real requests, preflights included."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            self.attempts.append(line.decode(errors="replace").strip())
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Browsing:
    site: Site
    refuser: Refuser
    page: Any
    requests: list[str] = field(default_factory=list)  # every URL the page asked for (Playwright's view)
    console: list[str] = field(default_factory=list)

    def foreign(self) -> list[str]:
        """Requests for anything but 127.0.0.1 (data:/blob: URLs are not requests to a host)."""
        seen = [u for u in self.requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")]
        return [u for u in seen if urlsplit(u).hostname != "127.0.0.1"] + self.refuser.attempts


@pytest.fixture
async def browse(browser, peers, stores, project, public_key):  # type: ignore[no-untyped-def]
    """``await browse(offset_ms)`` → a page in a fresh context whose clock is ``offset_ms`` off, on a test
    site whose origin the project allows, behind the refusing proxy."""
    opened: list[tuple[Any, Site, Refuser]] = []

    async def open_page(offset_ms: int) -> Browsing:
        site = Site(peers, public_key)
        await site.server.start_server()
        refuser = Refuser()
        await refuser.start()
        async with stores.pg.acquire() as conn:
            await change_origins(conn, project.id, [site.origin])
        context = await browser.new_context(proxy={"server": refuser.address, "bypass": "127.0.0.1"})
        opened.append((context, site, refuser))
        shift = f"globalThis.__PEER_CLOCK_OFFSET_MS = {int(offset_ms)};\n" + CLOCK_SHIFT.read_text()
        await context.add_init_script(script=shift)
        page = await context.new_page()
        browsing = Browsing(site, refuser, page)
        page.on("request", lambda request: browsing.requests.append(request.url))
        page.on(
            "console",
            lambda msg: (
                browsing.console.append(f"{msg.type}: {msg.text}") if msg.type in ("error", "warning") else None
            ),
        )
        page.on("pageerror", lambda exc: browsing.console.append(f"pageerror: {exc}"))
        return browsing

    yield open_page
    for context, site, refuser in opened:
        await context.close()
        await site.server.close()
        await refuser.close()


async def send_crm_event(http, collector: WatchedCollector, write_key: str, crm: str) -> str:  # type: ignore[no-untyped-def]
    """The same person as the CRM knows them, sent server-side (write key) before the visit; the page's
    alias(user, crm) must bring it into the user's journey. Not noted as the browser client's traffic."""
    message_id = f"crm-{uuid.uuid4().hex[:12]}"
    event = {"userId": crm, "event": "Store Purchase", "properties": {"channel": "store"}, "messageId": message_id}
    async with http.post(
        collector.server.make_url("/v1/track"), data=orjson.dumps(event), headers=basic(write_key)
    ) as r:
        assert r.status == 200, await r.text()
    collector.seen.clear()
    return message_id


def presented_key(sent) -> str:  # type: ignore[no-untyped-def]
    import base64

    auth = sent.headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        return base64.b64decode(auth[6:]).decode().split(":")[0]
    body = sent.body
    return sent.query.get("writeKey") or (body.get("writeKey", "") if isinstance(body, dict) else "")


# ---- the clients' calls -------------------------------------------------------------------------------

SEGMENT_CALLS = """
async ({writeKey, apiHost, user, crm, group, batching}) => {
  const segmentio = {apiKey: writeKey, apiHost, protocol: 'http'}
  if (batching) segmentio.deliveryStrategy = {strategy: 'batching', config: {size: 3, timeout: 300}}
  // The settings the CDN would serve, given instead; nothing is fetched. Remote metrics off (they would
  // post to apiHost/m every 30 s).
  const [analytics] = await window.AnalyticsBrowser.load(
    {writeKey, cdnSettings: {integrations: {'Segment.io': segmentio}, metrics: {sampleRate: 0}}},
    {integrations: {'Segment.io': segmentio}},
  )
  window.analytics = analytics
  const anonymousId = analytics.user().anonymousId()
  await analytics.page()  // the snippet's call: no name, no category (null on the wire)
  await analytics.screen('Home')
  await analytics.track('Email Clicked', {channel: 'email', campaign: 'spring'})
  await analytics.group(group, {name: 'Acme'})
  await analytics.identify(user, {plan: 'pro'})
  await analytics.track('Order Completed', {total: 42})
  await analytics.page('Account')
  await analytics.alias(user, crm)
  return {anonymousId, clock: new Date().toISOString()}
}
"""

RUDDER_CALLS = """
async ({writeKey, dataPlaneUrl, siteOrigin, useBeacon, user, crm, group}) => {
  const analytics = new window.RudderAnalytics()
  await new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error('RudderStack did not load within 10 s')), 10000)
    analytics.load(writeKey, dataPlaneUrl, {
      configUrl: dataPlaneUrl,  // → GET collector/sourceConfig/?writeKey=…: no RudderStack control plane
      destSDKBaseURL: siteOrigin + '/rs/integrations',
      pluginsSDKBaseURL: siteOrigin + '/rs/plugins',
      useBeacon,
      beaconQueueOptions: {flushQueueInterval: 200},
      logLevel: 'WARN',
      onLoaded: () => resolve(),
    })
  })
  window.rudderanalytics = analytics
  const anonymousId = analytics.getAnonymousId()
  analytics.page()
  analytics.track('Email Clicked', {channel: 'email', campaign: 'spring'})
  analytics.group(group, {name: 'Acme'})
  analytics.identify(user, {plan: 'pro'})
  analytics.track('Order Completed', {total: 42})
  analytics.page('Account')
  analytics.alias(user, crm)
  return {anonymousId, clock: new Date().toISOString()}
}
"""


@dataclass
class Visit:
    anonymous: str
    user: str
    crm: str
    group: str
    crm_message_id: str
    page_url: str
    before: float
    after: float
    offset_ms: int
    collector: WatchedCollector
    browsing: Browsing

    def report(self) -> str:
        return (
            f"--- what the collector received ---\n{self.collector.report()}\n"
            f"--- the site served: {self.browsing.site.requests}\n"
            f"--- console: {self.browsing.console}\n"
            f"--- requests for other hosts: {self.browsing.foreign()}"
        )


async def visit(browse, watched_collector, http, project, client: str, offset_ms: int, **options: Any) -> Visit:  # type: ignore[no-untyped-def]
    collector = await watched_collector()
    browsing = await browse(offset_ms)
    run = uuid.uuid4().hex[:8]
    user, crm, group = f"user-{run}", f"crm-{run}", f"group-{run}"
    crm_message_id = await send_crm_event(http, collector, project.write_key, crm)
    page_url = browsing.site.url(f"/page/{client}?{UTM}")
    before = time.time()
    await browsing.page.goto(page_url)
    if client == "segment":
        args = {"writeKey": browsing.site.write_key, "apiHost": f"127.0.0.1:{collector.server.port}/v1", **options}
        done = await browsing.page.evaluate(SEGMENT_CALLS, {**args, "user": user, "crm": crm, "group": group})
    else:
        args = {
            "writeKey": browsing.site.write_key,
            "dataPlaneUrl": collector.base,
            "siteOrigin": browsing.site.origin,
            **options,
        }
        done = await browsing.page.evaluate(RUDDER_CALLS, {**args, "user": user, "crm": crm, "group": group})
    after = time.time()
    assert done["anonymousId"], done
    shown = parse_time(done["clock"]) - time.time()
    assert abs(shown - offset_ms / 1000) < 60, f"the page's clock is {shown:.0f}s off, not {offset_ms / 1000:.0f}s"
    return Visit(
        done["anonymousId"], user, crm, group, crm_message_id, page_url, before, after, offset_ms, collector, browsing
    )


async def read_back(http, query, project, v: Visit, calls: list[tuple[str, str]]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The checks every browser client must pass; returns the events read by the user id."""
    n = len(calls) + 1  # and the CRM's event, joined by alias
    try:
        await wait_customer(http, query, project.read_key, v.user, n)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{v.report()}") from None
    # Once the browser's sends are all answered and the spool is drained, a late duplicate would be in.
    await wait_until(lambda: _answered(v.collector), timeout=10)
    await wait_drained(v.collector.server)
    body = await customer_events(http, query, project.read_key, v.user)
    events = body["events"]
    named = by_name(events)
    summary = [(e["type"], e["event"], e["channel"], e["user_id"], e["anonymous_id"], e["timestamp"]) for e in events]
    print(f"\n{v.report()}\n--- stored: {summary}")

    assert v.browsing.foreign() == [], f"requests for other hosts: {v.browsing.foreign()}\n{v.report()}"

    # Exactly once each: the stored message ids are those on the wire (and the CRM's), one per call.
    wire_ids = {e.get("messageId") for _, e in v.collector.wire_events()}
    assert len(wire_ids) == len(calls) and None not in wire_ids, (wire_ids, v.report())
    assert body["count"] == n and {e["message_id"] for e in events} == wire_ids | {v.crm_message_id}, (
        summary,
        v.report(),
    )
    assert sorted(named) == sorted([*calls, ("track", "Store Purchase")]), (summary, v.report())
    assert all(len(same) == 1 for same in named.values()), summary

    # Stitching: the anonymous events are the user's, and the CRM id's (alias) too.
    assert body["customer_id"] == v.user and set(body["ids"]) >= {v.anonymous, v.user, v.crm}, body["ids"]
    by_anonymous = await customer_events(http, query, project.read_key, v.anonymous)
    assert {e["message_id"] for e in by_anonymous["events"]} == {e["message_id"] for e in events}
    for key in calls[: calls.index(("identify", ""))]:
        assert (named[key][0]["anonymous_id"], named[key][0]["user_id"]) == (v.anonymous, ""), named[key]
    for key in calls[calls.index(("identify", "")) :]:
        assert named[key][0]["user_id"] == v.user, named[key]
    assert named[("identify", "")][0]["anonymous_id"] == v.anonymous
    assert named[("identify", "")][0]["traits"] == {"plan": "pro"}
    assert named[("group", "")][0]["group_id"] == v.group
    assert named[("alias", "")][0]["previous_id"] == v.crm

    # Times: the real time of the call, though the page's clock is hours off.
    for event in events:
        at = parse_time(event["timestamp"])
        assert v.before - TIME_SLACK_S <= at <= v.after + TIME_SLACK_S, (
            f"{event['type']}/{event['event']} stored at {event['timestamp']}; the calls were made "
            f"{time.strftime('%H:%M:%S', time.gmtime(v.before))}–{time.strftime('%H:%M:%S', time.gmtime(v.after))} UTC",
            summary,
        )
    check_clock_shift(v.collector, v.offset_ms)

    # The pages: URL and campaign from the page the client ran on; channels.
    for key in (("page", ""), ("page", "Account")):
        page = named[key][0]
        assert page["page_url"] == v.page_url, (key, page["page_url"], page["context"].get("page"))
        assert (page["utm_source"], page["utm_medium"], page["utm_campaign"]) == ("news", "email", "spring"), page
        assert page["channel"] == "web", (key, page["channel"])
    assert named[("track", "Email Clicked")][0]["channel"] == "email", summary
    assert named[("track", "Store Purchase")][0]["channel"] == "store", summary

    # The key on the wire is the public one, from the allowed origin; every request was answered 2xx.
    for sent in v.collector.seen:
        assert sent.headers.get("Origin") == v.browsing.site.origin, (sent.method, sent.path, sent.headers)
        if sent.method == "POST":
            assert presented_key(sent).startswith("jp_"), (sent.path, sent.headers)
        assert 200 <= sent.status < 300, v.report()
    return events


async def _answered(collector: WatchedCollector) -> bool:
    return bool(collector.seen) and all(s.status for s in collector.seen)


# ---- the tests ----------------------------------------------------------------------------------------

SEGMENT_EXPECTED = [
    ("page", ""),
    ("screen", "Home"),
    ("track", "Email Clicked"),
    ("group", ""),
    ("identify", ""),
    ("track", "Order Completed"),
    ("page", "Account"),
    ("alias", ""),
]
RUDDER_EXPECTED = [
    ("page", ""),
    ("track", "Email Clicked"),
    ("group", ""),
    ("identify", ""),
    ("track", "Order Completed"),
    ("page", "Account"),
    ("alias", ""),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("delivery", "offset_ms"), [("standard", -3 * HOURS), ("batching", 3 * HOURS)], ids=["fetch-per-event", "batching"]
)
async def test_segment_analytics_next_in_chromium(  # type: ignore[no-untyped-def]
    browse,
    watched_collector,
    http,
    query,
    project,
    delivery,
    offset_ms,
) -> None:
    v = await visit(browse, watched_collector, http, project, "segment", offset_ms, batching=delivery == "batching")
    events = await read_back(http, query, project, v, SEGMENT_EXPECTED)
    named = by_name(events)
    assert named[("screen", "Home")][0]["channel"] == "app"  # no channel given: a screen is app (README)

    posts = v.collector.posts()
    routes = {s.path for s in posts}
    if delivery == "standard":  # one request per event, on Segment's one-letter routes
        assert routes == {"/v1/p", "/v1/s", "/v1/t", "/v1/g", "/v1/i", "/v1/a"}, v.report()
    else:
        assert routes == {"/v1/b"}, v.report()
    assert all(s.headers.get("Content-Type", "").startswith("text/plain") for s in posts), v.report()
    # analytics-next sends Authorization: a CORS preflight the collector itself must allow (not Playwright).
    preflights = [s for s in v.collector.seen if s.method == "OPTIONS"]
    assert preflights and all(s.status == 204 for s in preflights), v.report()
    assert v.browsing.site.requests[:2] == [f"GET /page/segment?{UTM}", "GET /dist/segment.js"]
    assert len(v.browsing.site.requests) == 2, v.browsing.site.requests  # nothing else: settings were given


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("transport", "offset_ms"), [("xhr", 3 * HOURS), ("beacon", -3 * HOURS)], ids=["xhr", "use-beacon"]
)
async def test_rudderstack_analytics_js_v3_in_chromium(  # type: ignore[no-untyped-def]
    browse,
    watched_collector,
    http,
    query,
    project,
    public_key,
    transport,
    offset_ms,
) -> None:
    v = await visit(browse, watched_collector, http, project, "rudder", offset_ms, useBeacon=transport == "beacon")
    await read_back(http, query, project, v, RUDDER_EXPECTED)

    # The source config came from the collector (configUrl), with the page's key; no plugin or SDK was
    # fetched from the site's "CDN" paths.
    site = v.browsing.site.requests
    assert site == [f"GET /page/rudder?{UTM}", "GET /dist/rudder.js"], site
    config = [s for s in v.collector.seen if s.method == "GET" and s.path.startswith("/sourceConfig")]
    assert config and config[0].query.get("writeKey") == public_key and config[0].status == 200, v.report()

    posts = v.collector.posts()
    if transport == "xhr":  # one request per event, /v1/<type>, JSON with its custom headers → preflights
        assert {s.path for s in posts} == {"/v1/page", "/v1/track", "/v1/group", "/v1/identify", "/v1/alias"}, (
            v.report()
        )
        assert all(s.headers.get("AnonymousId") and s.headers.get("SentAt") for s in posts), v.report()
        preflights = [s for s in v.collector.seen if s.method == "OPTIONS"]
        assert preflights and all(s.status == 204 for s in preflights), v.report()
    else:  # navigator.sendBeacon: text/plain, no headers, the (public) key in the query string, no preflight
        assert {s.path for s in posts} == {"/beacon/v1/batch"}, v.report()
        assert all(s.query.get("writeKey") == public_key for s in posts), v.report()
        assert all(s.headers.get("Content-Type", "").startswith("text/plain") for s in posts), v.report()
        assert all(s.headers.get("Sec-Fetch-Mode") == "no-cors" for s in posts), v.report()
        # The source config's GET (Authorization) is the only preflight.
        assert all(s.path.startswith("/sourceConfig") for s in v.collector.seen if s.method == "OPTIONS"), v.report()
