"""Alerts on the dashboard (issue 22) in real headless Chromium.

Against the real collector, StageStateUpdater, alert evaluator, webhook deliverer and query service, with
tests/test_dashboard.py's data and helpers: a rule applied with an admin key fires on real events (Aware
converts 6 of 8 decided customers against its 90 % target); while the page stays open, the Aware stage is
marked "alerting" for all customers and not for the vip segment (whose 4 of 4 converted), nor any other
stage; the Alerts view lists the fired transition with its value, threshold and deliveries (one receiver
that fails once then takes it, one that is down: pending with its failed attempts). When ``/v1/alerts``
fails, the marks go and the KPIs stay; disabling the rule resolves it and the mark goes too.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from journeys.keys import add_key
from support import wait_until
from test_alerts import Receiver, alerts, put_rule
from test_dashboard import _iso, _page, _screenshot, _send, _sign_in, browser, seeded  # noqa: F401

RULE = "aware-rate"


def _pct(x: float) -> str:
    """As the page writes a share (JavaScript's (x * 100).toFixed(1) + "%")."""
    return f"{x * 100:.1f}%"


def _states(view: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    rules = [r for r in view["rules"] if r["name"] == RULE]
    return {s["segment"]: s for s in rules[0]["states"]} if rules else {}


async def test_a_firing_rule_marks_its_stage_and_the_history_lists_it(  # type: ignore[no-untyped-def]
    browser, http, collector, query, stores, seeded
) -> None:
    from playwright.async_api import expect

    project, tag = seeded
    key = project.read_key
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
    context, page, problems = await _page(browser, query)
    await _sign_in(page, key)

    # No rule yet: nothing is marked, and the Alerts view says there is nothing to list.
    await expect(page.get_by_test_id("stage-aware-reached")).to_have_text("8")
    await expect(page.get_by_test_id("alert-badge")).to_have_count(0)
    await expect(page.get_by_test_id("alerts-count")).to_be_hidden()
    await page.get_by_test_id("nav-alerts").click()
    await expect(page.get_by_test_id("view-alerts")).to_be_visible()
    await expect(page.get_by_test_id("alerts-rules-empty")).to_be_visible()
    await expect(page.get_by_test_id("alerts-history-empty")).to_be_visible()
    await expect(page.get_by_test_id("alerts-history")).to_be_hidden()
    await page.get_by_test_id("nav-journey").click()

    # A rule on Aware's conversion (the map's 90 % target), for all customers and each segment, with two
    # webhooks: one answers 503 once then takes it, one is down.
    up = await Receiver().start()
    up.answers = [503]
    down = Receiver()
    try:
        rule = {
            "name": RULE,
            "map": "funnel",
            "stage": "aware",
            "metric": "conversion_rate",
            "min_decided": 4,
            "segments": "*",
            "notify": [{"url": up.url}, {"url": down.url, "format": "slack"}],
        }
        status, body = await put_rule(http, query, admin, rule)
        assert status == 201, body
        # A real event changes Aware's facts, so the rule is judged at once (not at the next 10-s pass).
        live = {
            "type": "track",
            "event": "A",
            "userId": f"{tag}-live",
            "channel": "web",
            "timestamp": _iso(datetime.now(timezone.utc) - timedelta(minutes=1)),
            "messageId": f"{tag}-live",
        }
        await _send(http, collector, project.write_key, [live])

        async def judged() -> dict[str, Any] | None:
            view = await alerts(http, query, key)
            states = _states(view)
            everyone, vip = states.get(None), states.get("vip")
            ready = everyone and vip and everyone["state"] == "firing" and vip["evaluation"]["status"] == "met"
            return view if ready else None

        view = await wait_until(judged, timeout=60, interval=0.3)
        states = _states(view)
        firing = states[None]["evaluation"]
        assert (firing["converted"], firing["dropped"], firing["threshold"]) == (6, 2, 0.9), firing  # the data
        assert states["vip"]["state"] == "ok"
        assert [(e["rule"], e["kind"], e["segment"]) for e in view["history"]] == [(RULE, "fired", None)]

        # The page, left open, marks Aware for all customers, and only Aware.
        badge = page.get_by_test_id("stage-aware-alerts").get_by_test_id("alert-badge")
        await expect(badge).to_have_text(f"alerting: {RULE}", timeout=30_000)
        label = await badge.get_attribute("aria-label")
        assert label is not None and label.startswith(f"alerting: {RULE}")
        for text in (
            "conversion rate",
            _pct(firing["actual"]),
            "threshold " + _pct(firing["threshold"]),
            "All customers",
            "last 7 days",
        ):
            assert text in label, (text, label)
        assert await badge.get_attribute("title") == label
        card = page.get_by_test_id("stage-aware")
        await expect(card).to_have_class(re.compile(r"\balerting\b"))
        plain = await card.get_attribute("data-label")
        await expect(card).to_have_attribute("aria-label", f"{plain}, alerting: {RULE}")
        await expect(page.get_by_test_id("alert-badge")).to_have_count(1)
        for other in ("consider", "buy", "loyal"):
            await expect(page.get_by_test_id(f"stage-{other}-alerts").get_by_test_id("alert-badge")).to_have_count(0)
        await expect(page.get_by_test_id("alerts-count")).to_have_text("1 firing")
        await _screenshot(page, "journey-alerting-1280x800")

        # vip converts 4 of 4: its rule state is ok, so nothing is marked there.
        await page.get_by_label("Segment").select_option("vip")
        await expect(page.get_by_test_id("stage-aware-reached")).to_have_attribute("data-value", "4")
        await expect(page.get_by_test_id("alert-badge")).to_have_count(0)
        await expect(card).not_to_have_class(re.compile(r"\balerting\b"))
        await page.get_by_label("Segment").select_option("")
        await expect(badge).to_be_visible()

        # The flow table and the comparison mark the same stage, for the same segment only.
        await page.get_by_test_id("nav-flow").click()
        await expect(page.get_by_test_id("flow-aware-alerts").get_by_test_id("alert-badge")).to_have_text(
            f"alerting: {RULE}"
        )
        await expect(page.get_by_test_id("flow-table").get_by_test_id("alert-badge")).to_have_count(1)
        await page.get_by_test_id("nav-compare").click()
        await expect(page.get_by_test_id("cmp-all-aware-alerts").get_by_test_id("alert-badge")).to_be_visible()
        await expect(page.get_by_test_id("cmp-vip-aware-alerts").get_by_test_id("alert-badge")).to_have_count(0)
        await expect(page.get_by_test_id("compare-table").get_by_test_id("alert-badge")).to_have_count(1)

        # The badge leads to the Alerts view: the fired transition, its value against the threshold, and its
        # deliveries as they go (delivered after one failure; pending with its failed attempts).
        await page.get_by_test_id("nav-journey").click()
        await badge.click()
        await expect(page.get_by_test_id("view-alerts")).to_be_visible()
        await expect(page.locator("#filters")).to_be_hidden()
        event = page.get_by_test_id("alert-event-0")
        await expect(event).to_have_attribute("data-kind", "fired")
        await expect(event).to_have_attribute("data-rule", RULE)
        await expect(event).to_have_attribute("data-segment", "")
        await expect(event).to_contain_text("All customers")
        await expect(event).to_contain_text("funnel · aware")
        await expect(event).to_contain_text(view["history"][0]["at"].replace("T", " ").replace("Z", "")[:19] + " UTC")
        await expect(page.get_by_test_id("alert-event-0-kind")).to_have_text("fired")
        await expect(page.get_by_test_id("alert-event-0-value")).to_have_text(
            f"conversion rate of the decided {_pct(firing['actual'])} · threshold {_pct(firing['threshold'])}"
        )
        await expect(page.locator("tr[data-testid^=alert-event-]")).to_have_count(1)
        delivered = page.locator("[data-testid^=alert-event-0-delivery-][data-state=delivered]")
        pending = page.locator("[data-testid^=alert-event-0-delivery-][data-state=pending]")
        await expect(delivered).to_have_count(1, timeout=30_000)
        await expect(delivered).to_contain_text(f"http://127.0.0.1:{up.port}/…")
        await expect(delivered).to_contain_text("after 1 failed attempt")
        await expect(pending).to_have_count(1)
        await expect(pending).to_contain_text(f"http://127.0.0.1:{down.port}/… (slack): pending — ")
        await expect(pending).to_contain_text("failed attempt")
        await expect(pending).to_contain_text("ClientConnectorError")
        assert "t0ps3cret" not in await page.content()
        # Where each rule stands, per segment.
        await expect(page.get_by_test_id(f"alert-rule-{RULE}-all")).to_have_attribute("data-state", "firing")
        await expect(page.get_by_test_id(f"alert-rule-{RULE}-vip")).to_have_attribute("data-state", "ok")
        await expect(page.get_by_test_id("alerts-rules-empty")).to_be_hidden()
        await expect(page.get_by_test_id("alerts-history-empty")).to_be_hidden()
        # The page's failed attempts agree with the API's.
        history = (await alerts(http, query, key))["history"]
        [down_delivery] = [d for d in history[0]["deliveries"] if d["state"] == "pending"]
        assert (
            down_delivery["failed_attempts"] and "ClientConnectorError" in down_delivery["failed_attempts"][0]["error"]
        )
        await _screenshot(page, "alerts-1280x800")

        # /v1/alerts failing: the marks go, the KPIs stay, the Alerts link and view say so; then it recovers.
        await page.get_by_test_id("nav-journey").click()
        await expect(badge).to_be_visible()
        failing = {"errors": [{"field": "alerts", "reason": "the alert store is away"}]}
        await page.route("**/v1/alerts", lambda route: route.fulfill(status=500, json=failing))
        await expect(page.get_by_test_id("alerts-count")).to_have_text("!", timeout=15_000)
        await expect(page.get_by_test_id("alert-badge")).to_have_count(0)
        await expect(page.get_by_test_id("stage-aware-reached")).to_have_text("9")
        await expect(page.get_by_test_id("status")).to_contain_text("Updated")
        await page.get_by_test_id("nav-alerts").click()
        await expect(page.get_by_test_id("status")).to_contain_text(
            "Could not load alerts: alerts: the alert store is away"
        )
        await expect(page.get_by_test_id("alerts-history")).to_be_hidden()
        await page.unroute("**/v1/alerts")
        await expect(page.get_by_test_id("alert-event-0")).to_have_attribute("data-kind", "fired", timeout=15_000)
        await expect(page.get_by_test_id("alerts-count")).to_have_text("1 firing")

        # Disabling the rule resolves it: the history shows it newest first, and the mark goes.
        status, body = await put_rule(http, query, admin, {**rule, "enabled": False})
        assert status == 200 and body["version"] == 2, body
        await expect(page.get_by_test_id("alert-event-0")).to_have_attribute("data-kind", "resolved", timeout=45_000)
        await expect(page.get_by_test_id("alert-event-0-kind")).to_have_text("resolved (rule disabled)")
        await expect(page.get_by_test_id("alert-event-1")).to_have_attribute("data-kind", "fired")
        await expect(page.get_by_test_id("alerts-count")).to_be_hidden()
        await expect(page.get_by_test_id("alerts-rules")).to_contain_text("(disabled)")
        await page.get_by_test_id("nav-journey").click()
        await expect(page.get_by_test_id("stage-aware-reached")).to_have_text("9")
        await expect(page.get_by_test_id("alert-badge")).to_have_count(0)
        await expect(card).to_have_attribute("aria-label", plain or "")
    finally:
        await up.stop()
    # Chromium logs every non-2xx fetch: the routed 500s of /v1/alerts, as they must; nothing else went wrong.
    assert all("status of 500" in p for p in problems), problems
    await context.close()
