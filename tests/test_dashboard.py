"""The marketer dashboard (``GET /`` on the query service) in real headless Chromium.

Events go through the real collector into chDB, the real StageStateUpdater condenses them, and the page
reads the real query service with a real read key. What is on screen is compared with what the API answers
for the same parameters (each cell carries the raw number in ``data-value``; the text is checked too for
counts). Screenshots of every view (1280×800, and the journey map at 390×844) are written to
tests/output/screenshots/ for a reviewer.

Needs /usr/bin/chromium (or JOURNEYS_CHROMIUM) and the playwright package (the ``test`` extra); where
either is missing every test here is skipped with the reason in the summary.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from query import definitions
from journeys.keys import add_key, create_project
from browser import launch
from support import basic, wait_drained, wait_until

SCREENSHOTS = Path(__file__).parent / "output" / "screenshots"
NOW = datetime.now(timezone.utc)
BASE = NOW - timedelta(days=3)

MAP = {
    "name": "funnel",
    "stages": [
        {"id": "aware", "name": "Aware", "conversion_window_days": 1, "target": {"conversion_rate": 0.9}},
        {
            "id": "consider",
            "name": "Consider",
            "conversion_window_days": 5,
            "target": {"conversion_rate": 0.3, "median_days_to_convert": 1},
        },
        {"id": "buy", "name": "Buy", "conversion_window_days": 10},
        {"id": "loyal", "name": "Loyal"},
    ],
    "touchpoints": [
        {"id": "ad", "stage": "aware", "match": {"event": "A"}},
        {
            "id": "rated",
            "stage": "consider",
            "match": {"event": "B"},
            "sentiment": {"property": "score", "positive_at_least": 4, "negative_at_most": 2},
        },
        {"id": "purchase", "stage": "buy", "match": {"event": "C"}, "sentiment": "positive"},
        {"id": "repeat-buy", "stage": "loyal", "match": {"event": "D"}},
    ],
}
SEGMENTS = [{"name": "vip", "rules": [{"field": "traits.plan", "op": "equals", "value": "vip"}]}]
# (events, channel, vip): forward, skips (A→C), a regression with a repeat (A B A B), drop-offs (A alone).
CUSTOMERS = [
    ("ABCD", "web", True),
    ("ABC", "web", True),
    ("AC", "email", True),
    ("ABAB", "web", True),
    ("A", "store", False),
    ("AB", "store", False),
    ("A", "email", False),
    ("ACD", "store", False),
]
_names = itertools.count()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async for launched in launch("DASHBOARD"):
        yield launched


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _events(tag: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, (kinds, channel, vip) in enumerate(CUSTOMERS):
        user = f"{tag}-c{k}"
        if vip:
            out.append(
                {
                    "type": "identify",
                    "userId": user,
                    "channel": channel,
                    "traits": {"plan": "vip"},
                    "timestamp": _iso(BASE - timedelta(hours=1)),
                    "messageId": f"{tag}-{k}-identify",
                }
            )
        for n, kind in enumerate(kinds):
            out.append(
                {
                    "type": "track",
                    "event": kind,
                    "userId": user,
                    "channel": channel,
                    "properties": {"score": 5 if k % 2 else 1},
                    "timestamp": _iso(BASE + timedelta(hours=2 * n + k)),
                    "messageId": f"{tag}-{k}-{n}",
                }
            )
    return out


async def _send(http, collector, key: str, events: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    async with http.post(collector.make_url("/v1/batch"), json={"batch": events}, headers=basic(key)) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["quarantined"] == []
    await wait_drained(collector)


async def _api(http, query, key: str, path: str, **params: str) -> Any:  # type: ignore[no-untyped-def]
    async with http.get(query.make_url(path), params=params, headers=basic(key)) as r:
        assert r.status == 200, await r.text()
        return await r.json() if r.content_type == "application/json" else await r.text()


async def _kpis_when(http, query, key: str, reached: int, **params: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The KPIs of the latest definitions once they hold ``reached`` customers in the first stage (503 before
    the first build, ``rebuilding`` while a newer one is computed)."""

    async def ready() -> dict[str, Any] | None:
        async with http.get(query.make_url("/v1/kpis"), params={"map": "funnel", **params}, headers=basic(key)) as r:
            if r.status == 503:
                return None
            assert r.status == 200, await r.text()
            body = await r.json()
            return (
                body if body["rebuilding"] is None and body["segments"][0]["stages"][0]["reached"] == reached else None
            )

    return await wait_until(ready, timeout=60, interval=0.2)


@pytest.fixture
async def seeded(http, collector, query, stores):  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        project = await create_project(conn, f"dash-{os.getpid()}-{next(_names)}")
        await definitions.apply(conn, project.id, "map", MAP)
        for segment in SEGMENTS:
            await definitions.apply(conn, project.id, "segment", segment)
    tag = project.id[:8]
    await _send(http, collector, project.write_key, _events(tag))
    await _kpis_when(http, query, project.read_key, len(CUSTOMERS))
    return project, tag


async def _page(browser, query, width: int = 1280, height: int = 800):  # type: ignore[no-untyped-def]
    context = await browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    await page.goto(str(query.make_url("/")))
    return context, page, problems


async def _sign_in(page, key: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    # Keyboard only: type the key into the labelled field and press Enter.
    await page.get_by_label("Project read key").fill(key)
    await page.get_by_label("Project read key").press("Enter")
    await expect(page.get_by_test_id("view-journey")).to_be_visible()


def _value(raw: Any) -> str:
    """How a KPI value is written into ``data-value`` (JavaScript's String(number); null is empty)."""
    if raw is None:
        return ""
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


async def _cells_equal(page, api_stages: list[dict[str, Any]], fields: dict[str, Any], prefix: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    for stage in api_stages:
        for field, pick in fields.items():
            cell = page.get_by_test_id(f"{prefix}{stage['id']}-{field}")
            await expect(cell).to_have_attribute("data-value", _value(pick(stage)))


STAGE_FIELDS = {
    "reached": lambda s: s["reached"],
    "entered": lambda s: s["entered"],
    "conversion": lambda s: s["conversion_rate"],
    "dropoff": lambda s: s["drop_off_rate"],
    "in-progress": lambda s: s["in_progress"],
    "median": lambda s: s["time_to_next_seconds"]["median"],
    "regressions": lambda s: s["regressions_into"],
    "skips": lambda s: s["skips_over"],
    "repeats": lambda s: s["repeats"],
}


async def _screenshot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.wait_for_timeout(300)  # let plotly finish its transition before the picture
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def _download(page, testid: str) -> str:  # type: ignore[no-untyped-def]
    async with page.expect_download() as info:
        await page.get_by_test_id(testid).click()
    download = await info.value
    return Path(await download.path()).read_text(encoding="utf-8")


async def test_dashboard_views_show_the_api_numbers(browser, http, collector, query, seeded) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    project, tag = seeded
    key = project.read_key
    context, page, problems = await _page(browser, query)
    await _sign_in(page, key)
    assert key not in page.url
    assert await page.evaluate("sessionStorage.getItem('journeys.readKey')") == key
    window = {
        "from": await page.get_by_test_id("from-input").input_value(),
        "to": await page.get_by_test_id("to-input").input_value(),
    }

    # Journey map, all customers: every stage's numbers equal the API's, status colours and the bottleneck.
    overall = await _api(http, query, key, "/v1/kpis", map="funnel", **window)
    stages = overall["segments"][0]["stages"]
    assert [s["reached"] for s in stages] == [8, 4, 4, 2]  # the data is what the test thinks it is
    await _cells_equal(page, stages, STAGE_FIELDS, "stage-")
    await expect(page.get_by_test_id("stage-aware-reached")).to_have_text("8")
    for stage in stages:
        await expect(page.get_by_test_id(f"stage-{stage['id']}")).to_have_attribute("data-status", stage["status"])
    bottleneck = overall["segments"][0]["bottleneck"]
    assert bottleneck is not None
    await expect(page.get_by_test_id("bottleneck")).to_have_attribute("data-stage", bottleneck["stage"])
    await expect(page.get_by_test_id(f"stage-{bottleneck['stage']}").get_by_test_id("bottleneck-flag")).to_be_visible()
    top = stages[0]["top_touchpoints"][0]
    await expect(page.get_by_test_id("stage-aware-touchpoints")).to_contain_text(
        f"{top['touchpoint']} · {top['customers']}"
    )
    sent = stages[1]["sentiment"]
    await expect(page.get_by_test_id("stage-consider-sentiment")).to_contain_text(f"positive {sent['positive']}")
    await expect(page.get_by_test_id("freshness")).to_contain_text("Newest event")
    await page.locator("#daily-chart .main-svg").first.wait_for()
    assert await _download(page, "download-kpis") == await _api(
        http, query, key, "/v1/kpis", map="funnel", format="csv", **window
    )
    await _screenshot(page, "journey-all-1280x800")

    # Switching segment changes the numbers, to the API's numbers for that segment.
    vip_segment = (await _api(http, query, key, "/v1/kpis", map="funnel", segment="vip", **window))["segments"][0]
    vip = vip_segment["stages"]
    assert vip[0]["reached"] != stages[0]["reached"]
    await page.get_by_label("Segment").select_option("vip")
    await expect(page.get_by_test_id("stage-aware-reached")).to_have_text(str(vip[0]["reached"]))
    await _cells_equal(page, vip, STAGE_FIELDS, "stage-")
    await _screenshot(page, "journey-vip-1280x800")

    # Funnel and flow: plotly drew both, and the movement table is the API's.
    await page.get_by_test_id("nav-flow").click()
    await expect(page.get_by_test_id("view-flow")).to_be_visible()
    for chart, kind in (("funnel-chart", "funnel"), ("flow-chart", "sankey")):
        await page.locator(f"#{chart} .main-svg").first.wait_for()
        assert await page.evaluate(f"document.getElementById('{chart}').data[0].type") == kind
    funnel = await page.evaluate("document.getElementById('funnel-chart').data[0].x")
    assert funnel == [s["entered"] for s in vip]  # one group: the customers who entered each stage in the range
    flow_fields = {
        "reached": lambda s: s["reached"],
        "converted": lambda s: s["converted"],
        "dropped": lambda s: s["dropped"],
        "regressions": lambda s: s["regressions_into"],
        "skips": lambda s: s["skips_over"],
        "repeats": lambda s: s["repeats"],
    }
    await _cells_equal(page, vip, flow_fields, "flow-")
    # The sankey carries the non-linear moves between the exact stage pairs of the API's transitions.
    links = await page.evaluate("document.getElementById('flow-chart').data[0].link")
    index = {s["id"]: i for i, s in enumerate(vip)}
    for kind, prefix in (("regression", "back from"), ("skip", "skipped from")):
        drawn = sorted(
            (a, b, v)
            for a, b, v, label in zip(links["source"], links["target"], links["value"], links["label"])
            if label.startswith(prefix)
        )
        expected = sorted(
            (index[t["from"]], index[t["to"]], t["count"]) for t in vip_segment["transitions"] if t["kind"] == kind
        )
        assert drawn == expected and expected, kind
    await _screenshot(page, "flow-vip-1280x800")

    # Segments side by side.
    both = await _api(http, query, key, "/v1/kpis", map="funnel", segment="*", **window)
    await page.get_by_test_id("nav-compare").click()
    await page.locator("#compare-chart .main-svg").first.wait_for()
    for seg in both["segments"]:
        name = "all" if seg["segment"] is None else seg["segment"]
        await _cells_equal(
            page,
            seg["stages"],
            {"reached": lambda s: s["reached"], "conversion": lambda s: s["conversion_rate"]},
            f"cmp-{name}-",
        )
    assert await _download(page, "download-compare") == await _api(
        http, query, key, "/v1/kpis", map="funnel", segment="*", format="csv", **window
    )
    await _screenshot(page, "compare-1280x800")

    # A customer: the stitched timeline, stage by stage, as the journey API tells it; CSV built in the page.
    customer = f"{tag}-c3"  # A B A B: a regression and a repeat
    journey = await _api(http, query, key, f"/v1/customers/{customer}/journey", map="funnel")
    await page.get_by_test_id("nav-customer").click()
    await page.get_by_label("Customer id").fill(customer)
    await page.get_by_test_id("customer-search").click()
    await expect(page.get_by_test_id("profile-id")).to_have_text(customer)
    await expect(page.get_by_test_id("profile-segments")).to_have_text("vip")
    rows = page.locator("[data-testid^=timeline-row-]")
    await expect(rows).to_have_count(len(journey["touchpoints"]))
    names = {s["id"]: s["name"] for s in journey["stages"]}
    for i, touch in enumerate(journey["touchpoints"]):
        await expect(page.get_by_test_id(f"timeline-stage-{i}")).to_have_text(names.get(touch["stage"], "—"))
    await page.locator("#timeline-chart .main-svg").first.wait_for()
    timeline = list(csv.reader(io.StringIO(await _download(page, "download-timeline"))))
    assert timeline[0][:5] == ["time", "channel", "event", "touchpoint", "stage"]
    assert [r[4] for r in timeline[1:]] == [t["stage"] or "" for t in journey["touchpoints"]]
    moves = [(t["kind"], str(t["repeat"]).lower()) for t in journey["transitions"]]
    assert [(r[5], r[6]) for r in timeline[1:] if r[5]] == moves and ("regression", "true") in moves
    await _screenshot(page, "customer-1280x800")

    # Live: a new customer arrives while the page is open; the journey map shows it without a reload.
    await page.get_by_test_id("nav-journey").click()
    await page.get_by_label("Segment").select_option("")
    await expect(page.get_by_test_id("stage-aware-reached")).to_have_text("8")
    await page.evaluate("window.__marker = 'same page'")
    live = {
        "type": "track",
        "event": "A",
        "userId": f"{tag}-live",
        "channel": "web",
        "timestamp": _iso(datetime.now(timezone.utc) - timedelta(minutes=1)),
        "messageId": f"{tag}-live",
    }
    await _send(http, collector, project.write_key, [live])
    await expect(page.get_by_test_id("stage-aware-reached")).to_have_text("9", timeout=60_000)
    assert await page.evaluate("window.__marker") == "same page"

    # Reload keeps the session (sessionStorage), and nothing went wrong in the page along the way.
    await page.reload()
    await expect(page.get_by_test_id("stage-aware-reached")).to_have_text("9")
    assert not problems, problems
    await context.close()

    # Phone width: the same view fits, the stage columns scroll sideways instead of the page.
    context, page, problems = await _page(browser, query, 390, 844)
    await _sign_in(page, key)
    await expect(page.get_by_test_id("stage-aware-reached")).to_have_text("9")
    scroll = await page.evaluate(
        "(() => { const s = document.getElementById('stages'); return [s.scrollWidth > s.clientWidth, "
        "document.documentElement.scrollWidth <= window.innerWidth + 1]; })()"
    )
    assert scroll == [True, True], scroll
    await _screenshot(page, "journey-all-390x844")
    await page.get_by_test_id("nav-customer").click()
    await _screenshot(page, "customer-empty-390x844")
    assert not problems, problems
    await context.close()


async def test_a_bad_key_is_refused(browser, query, stores) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    async with stores.pg.acquire() as conn:
        project = await create_project(conn, f"dash-{os.getpid()}-{next(_names)}")
        admin = await add_key(conn, project.id, "admin")
    context, page, _ = await _page(browser, query)
    for key, reason in (
        ("jr_" + "0" * 32, "unknown or revoked key"),
        (project.write_key, "cannot read"),
        (admin, "cannot read"),
    ):
        await page.get_by_label("Project read key").fill(key)
        await page.get_by_test_id("signin-button").click()
        await expect(page.get_by_test_id("signin-error")).to_contain_text("refused")
        await expect(page.get_by_test_id("signin-error")).to_contain_text(reason)
        assert await page.locator("#app").is_hidden()
        assert await page.evaluate("sessionStorage.getItem('journeys.readKey')") is None
    await _screenshot(page, "signin-refused-1280x800")
    # The right key still gets in afterwards; signing out forgets it.
    await _sign_in(page, project.read_key)
    # Keyboard: Tab reaches the view links with a visible focus ring, and Enter opens a view.
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.dataset.testid") == "nav-flow":
            break
    else:
        raise AssertionError("Tab never reached the 'Funnel & flow' link")
    assert await page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("view-flow")).to_be_visible()
    await page.get_by_test_id("signout").click()
    await expect(page.get_by_test_id("signin-form")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('journeys.readKey')") is None
    await context.close()


async def test_assets_are_served_with_caching(http, query) -> None:  # type: ignore[no-untyped-def]
    import plotly

    async with http.get(query.make_url("/static/plotly.min.js"), headers={"Accept-Encoding": "gzip"}) as r:
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
        assert "max-age=" in r.headers["Cache-Control"] and r.headers["ETag"] == f'"plotly-{plotly.__version__}"'
        body = await r.read()  # aiohttp un-gzips
    shipped = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    assert body == shipped
    async with http.get(query.make_url("/static/plotly.min.js"), headers={"If-None-Match": r.headers["ETag"]}) as again:
        assert again.status == 304
    async with http.get(query.make_url("/")) as page:
        assert page.status == 200 and page.content_type == "text/html"
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert "/static/plotly.min.js" in await page.text()
    for path in ("/static/dashboard.js", "/static/dashboard.css"):
        async with http.get(query.make_url(path)) as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-cache" and r.headers["ETag"]
