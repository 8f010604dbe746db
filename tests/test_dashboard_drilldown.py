"""The dashboard from a number to the people behind it (issue 20), in real headless Chromium.

Against the real collector, StageStateUpdater and query service (tests/test_dashboard.py's data and
helpers): on undecided data the page never reads "met" for an undecided stage and says "too early to
tell" up front; every stage count opens the list of its customers, exactly as many as the count (and the
same customers as ``GET /v1/kpis/customers``); a dropped list says what those customers did; a list row
opens the customer's timeline; an unknown customer is "no such customer", and customers can be found by
the start of their id or among the recently active.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from query import definitions
from journeys.keys import create_project
from test_dashboard import MAP, SEGMENTS, _api, _kpis_when, _page, _screenshot, _send, _sign_in, browser, seeded  # noqa: F401

NAMES = iter(range(10**6))
COUNTS = {
    "reached": "reached",
    "entered": "entered",
    "converted": "converted",
    "dropped": "dropped",
    "in-progress": "in_progress",
}


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _list_ids(http, query, key: str, **params: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Every customer of a list, all pages."""
    ids: list[str] = []
    cursor = None
    while True:
        page = await _api(
            http, query, key, "/v1/kpis/customers", limit="1000", **params, **({"cursor": cursor} if cursor else {})
        )
        ids += [c["customer_id"] for c in page["customers"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def _drill_ids(page) -> list[str]:  # type: ignore[no-untyped-def]
    return await page.locator("[data-testid^=drill-row-]").evaluate_all("rows => rows.map(r => r.dataset.customer)")


async def _open_and_count(page, cell, expected: int) -> None:  # type: ignore[no-untyped-def]
    """Click a count; the list opens with exactly that many customers."""
    from playwright.async_api import expect

    await cell.get_by_role("button").click()
    await expect(page.get_by_test_id("drill")).to_be_visible()
    await expect(page.get_by_test_id("drill-count")).to_have_attribute("data-total", str(expected))
    await expect(page.locator("[data-testid^=drill-row-]")).to_have_count(expected)


async def test_undecided_data_never_reads_met(browser, http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    """Issue 20's trial in small: everyone entered in the last hours, so Aware (1 of 5 converted, 4 still
    inside their 1-day window) and Consider (1 in progress) cannot be judged. The default range must say
    "Too early to tell" — on the cards, above them, and in the comparison — and never "Target met"."""
    from playwright.async_api import expect

    async with stores.pg.acquire() as conn:
        project = await create_project(conn, f"dash-undecided-{os.getpid()}-{next(NAMES)}")
        await definitions.apply(conn, project.id, "map", MAP)
        for segment in SEGMENTS:
            await definitions.apply(conn, project.id, "segment", segment)
    recent = datetime.now(timezone.utc) - timedelta(hours=3)
    events = [
        {
            "type": "track",
            "event": "A",
            "userId": f"u{k}",
            "channel": "web",
            "timestamp": _iso(recent),
            "messageId": f"u{k}-a",
        }
        for k in range(5)
    ]
    events.append(
        {
            "type": "track",
            "event": "B",
            "userId": "u0",
            "channel": "web",
            "timestamp": _iso(recent + timedelta(minutes=30)),
            "messageId": "u0-b",
        }
    )
    await _send(http, collector, project.write_key, events)
    kpis = await _kpis_when(http, query, project.read_key, 5)
    stages = kpis["segments"][0]["stages"]
    assert [s["status"] for s in stages[:2]] == ["undecided", "undecided"]  # the data is what the test thinks
    assert stages[0]["conversion_rate"] == 1.0  # the flattering rate of the decided alone

    context, page, problems = await _page(browser, query)
    await _sign_in(page, project.read_key)
    for stage in ("aware", "consider"):
        card = page.get_by_test_id(f"stage-{stage}")
        await expect(card).to_have_attribute("data-status", "undecided")
        await expect(page.get_by_test_id(f"stage-{stage}-status")).to_have_text("Too early to tell")
        await expect(card).not_to_contain_text("met")
    await expect(page.get_by_test_id("stages")).not_to_contain_text("Target met")
    await expect(page.get_by_test_id("bottleneck")).to_contain_text("too early to tell")
    await expect(page.get_by_test_id("bottleneck")).not_to_contain_text("No stage is below its target")
    banner = page.get_by_test_id("undecided-banner")
    await expect(banner).to_be_visible()
    await expect(page.get_by_test_id("undecided-text")).to_contain_text("Too early to tell")
    await expect(page.get_by_test_id("stage-aware-in-progress")).to_have_attribute("data-value", "4")
    await expect(page.get_by_test_id("stage-aware-decided")).to_have_attribute("data-value", "0.2")
    await expect(page.get_by_test_id("stage-aware-bounds")).to_have_text("20.0% – 100.0%")
    await _screenshot(page, "journey-undecided-1280x800")

    await page.get_by_test_id("nav-compare").click()
    await page.locator("#compare-chart .main-svg").first.wait_for()
    for stage in ("aware", "consider"):
        await expect(page.get_by_test_id(f"cmp-all-{stage}-status")).to_have_text("Too early to tell")
    await expect(page.get_by_test_id("compare-table")).not_to_contain_text("Target met")
    await expect(banner).to_be_visible()
    # The way out: a range that ended the longest conversion window ago, where outcomes are decided.
    await page.get_by_test_id("decided-range").click()
    today = datetime.now(timezone.utc).date()
    await expect(page.get_by_test_id("to-input")).to_have_value((today - timedelta(days=10)).isoformat())
    await expect(banner).to_be_hidden()
    assert not problems, problems
    await context.close()


async def test_every_stage_count_opens_its_customers(browser, http, query, seeded) -> None:  # type: ignore[no-untyped-def]
    """Journey map, flow table and comparison: each count opens a list of exactly that many customers, the
    customers the API lists for it; a dropped list says what they did last and after entering."""
    from playwright.async_api import expect

    project, _ = seeded
    key = project.read_key
    context, page, problems = await _page(browser, query)
    await _sign_in(page, key)
    window = {
        "from": await page.get_by_test_id("from-input").input_value(),
        "to": await page.get_by_test_id("to-input").input_value(),
    }
    stages = (await _api(http, query, key, "/v1/kpis", map="funnel", **window))["segments"][0]["stages"]
    opened = 0
    for stage in stages:
        for field, outcome in COUNTS.items():
            value = stage[outcome]
            cell = page.get_by_test_id(f"stage-{stage['id']}-{field}")
            await expect(cell).to_have_attribute("data-value", "" if value is None else str(value))
            if not value:
                await expect(cell.get_by_role("button")).to_have_count(0)  # nothing to open
                continue
            await _open_and_count(page, cell, value)
            listed = await _list_ids(http, query, key, map="funnel", stage=stage["id"], outcome=outcome, **window)
            assert await _drill_ids(page) == listed and len(listed) == value
            opened += 1
    assert opened >= 8
    # The dropped at Aware: what they did last, and after entering.
    aware = stages[0]
    assert aware["dropped"]
    await _open_and_count(page, page.get_by_test_id("stage-aware-dropped"), aware["dropped"])
    summary = await _api(http, query, key, "/v1/kpis/dropped", map="funnel", stage="aware", **window)
    await expect(page.get_by_test_id("drill-dropped")).to_be_visible()
    first = summary["last_touchpoints"][0]
    await expect(page.get_by_test_id("dropped-last-touchpoints")).to_contain_text(
        f"{first['touchpoint']} · {first['customers']}"
    )
    await _screenshot(page, "drill-dropped-1280x800")

    # The flow table's cells, for a segment.
    await page.get_by_label("Segment").select_option("vip")
    await page.get_by_test_id("nav-flow").click()
    vip = (await _api(http, query, key, "/v1/kpis", map="funnel", segment="vip", **window))["segments"][0]["stages"]
    consider = vip[1]
    await expect(page.get_by_test_id("flow-consider-entered")).to_have_attribute("data-value", str(consider["entered"]))
    await _open_and_count(page, page.get_by_test_id("flow-consider-entered"), consider["entered"])
    assert await _drill_ids(page) == await _list_ids(
        http, query, key, map="funnel", stage="consider", outcome="entered", segment="vip", **window
    )
    await expect(page.get_by_test_id("flow-links")).to_contain_text("skipped from Aware to Buy: 1")

    # The comparison: a segment's table cell, and a segment's bar in the chart.
    both = await _api(http, query, key, "/v1/kpis", map="funnel", segment="*", **window)
    await page.get_by_test_id("nav-compare").click()
    await page.locator("#compare-chart .main-svg").first.wait_for()
    vip_aware = next(s for s in both["segments"] if s["segment"] == "vip")["stages"][0]
    await _open_and_count(page, page.get_by_test_id("cmp-vip-aware-converted"), vip_aware["converted"])
    # Bars are (stage, segment) pairs in stage order, segments side by side; trace 0 is "converted".
    segments = [s["segment"] for s in both["segments"]]
    bar = page.locator("#compare-chart .barlayer .trace").nth(0).locator(".point").nth(segments.index(None))
    box = await bar.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    everyone_aware = both["segments"][0]["stages"][0]
    await expect(page.get_by_test_id("drill-title")).to_contain_text("Converted · Aware · All customers")
    await expect(page.get_by_test_id("drill-count")).to_have_attribute("data-total", str(everyone_aware["converted"]))
    await expect(page.locator("[data-testid^=drill-row-]")).to_have_count(everyone_aware["converted"])
    assert not problems, problems
    await context.close()


async def test_a_list_row_opens_the_timeline_and_customers_are_findable(browser, http, query, seeded) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    project, tag = seeded
    key = project.read_key
    context, page, problems = await _page(browser, query)
    await _sign_in(page, key)
    entered = int(await page.get_by_test_id("stage-consider-entered").get_attribute("data-value"))
    await _open_and_count(page, page.get_by_test_id("stage-consider-entered"), entered)
    row = page.get_by_test_id("drill-row-1")
    customer = await row.get_attribute("data-customer")
    await page.get_by_test_id("drill-open-1").click()
    await expect(page.get_by_test_id("view-customer")).to_be_visible()
    await expect(page.get_by_test_id("profile-id")).to_have_text(customer)
    journey = await _api(http, query, key, f"/v1/customers/{customer}/journey", map="funnel")
    await expect(page.locator("[data-testid^=timeline-row-]")).to_have_count(len(journey["touchpoints"]))
    profile = await _api(http, query, key, f"/v1/customers/{customer}")
    await expect(page.get_by_test_id("profile-traits")).to_have_text(
        "".join(f"{k}: {v}" for k, v in profile["traits"].items()) or "none"
    )
    await expect(page.get_by_test_id("profile-segments")).to_have_text(", ".join(profile["segments"]) or "none")
    await page.locator("#timeline-chart .main-svg").first.wait_for()
    await _screenshot(page, "customer-from-list-1280x800")

    # A vip customer's traits are on the profile.
    await page.get_by_label("Customer id").fill(f"{tag}-c0")
    await page.get_by_test_id("customer-search").click()
    await expect(page.get_by_test_id("profile-trait-plan")).to_have_text("plan: vip")

    # An id of nobody: "no such customer", not an empty profile; the ids that start so are offered.
    await page.get_by_label("Customer id").fill(f"{tag}-c")
    await page.get_by_test_id("customer-search").click()
    await expect(page.get_by_test_id("customer-missing")).to_contain_text("No such customer")
    await expect(page.locator("#customer-body")).to_be_hidden()
    await expect(page.locator("[data-testid^=match-]")).to_have_count(8)  # c0 … c7 all start with it
    await _screenshot(page, "customer-missing-1280x800")
    await page.locator("[data-testid=match-3] button").click()
    await expect(page.get_by_test_id("profile-id")).to_have_text(f"{tag}-c3")
    await expect(page.get_by_test_id("customer-missing")).to_be_hidden()

    # No customer chosen: the recently active are listed, newest first, and open their timeline.
    await page.reload()
    await expect(page.get_by_test_id("view-customer")).to_be_visible()
    recent = await _api(http, query, key, "/v1/customers", recent="1", limit="10")
    await expect(page.locator("[data-testid^=recent-item-]")).to_have_count(len(recent["customers"]))
    await expect(page.get_by_test_id("recent-item-0")).to_contain_text(recent["customers"][0]["customer_id"])
    await page.locator("[data-testid=recent-item-0] button").click()
    await expect(page.get_by_test_id("profile-id")).to_have_text(recent["customers"][0]["customer_id"])
    # Chromium logs every non-2xx fetch: the unknown customer's profile and journey answered 404, as they must.
    expected = [p for p in problems if "status of 404" in p]
    assert expected and len(expected) == len(problems), problems
    await context.close()
