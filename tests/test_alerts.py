"""Alerts: real events through the real collector and updater, judged by the real evaluator, delivered over
real HTTP to a webhook receiver on 127.0.0.1 whose signature check is written here from docs/alerts.md."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web

from query import definitions
from query.alert_rules import redact, thresholds, validate_alert_rule
from journeys.keys import add_key, create_project
from query.maps import DefinitionError, validate_map
from aiohttp.test_utils import TestServer

from journeys.metrics import Metrics
from query.alert_delivery import _error_text
from query.alerts import judge
from query.app import create_app as create_query
from testkit.net import free_port
from support import basic, wait_drained, wait_until, with_settings

MAP: dict[str, Any] = {
    "name": "funnel",
    "stages": [
        {"id": "aware", "name": "Aware", "conversion_window_days": 1, "target": {"conversion_rate": 0.5}},
        {"id": "consider", "name": "Consider", "conversion_window_days": 1},
        {"id": "buy", "name": "Buy"},
    ],
    "touchpoints": [
        {"id": "ad", "stage": "aware", "match": {"event": "A"}},
        {"id": "look", "stage": "consider", "match": {"event": "B"}},
        {"id": "order", "stage": "buy", "match": {"event": "C"}},
    ],
}
SEGMENT = {"name": "pro", "rules": [{"field": "traits.plan", "op": "equals", "value": "pro"}]}
_names = iter(range(1_000_000))


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request and answers ``answers`` first, then 200."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.answers: list[int] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/t0ps3cret"

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hooks/{token}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 200
        self.requests.append((dict(request.headers), body, status))
        return web.Response(status=status)

    def delivered(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [(h, json.loads(b)) for h, b, s in self.requests if 200 <= s < 300]


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What docs/alerts.md tells a receiver to do, written independently of the service's signer."""
    fields = dict(part.split("=", 1) for part in headers["X-Journeys-Signature"].split(","))
    timestamp = int(fields["t"])
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def journeys_of(
    prefix: str, converted: int, dropped: int, entered_at: datetime, plan: str = "free"
) -> list[dict[str, Any]]:
    """Customers who entered Aware at ``entered_at``: ``converted`` of them moved on an hour later."""
    events = []
    for i in range(converted + dropped):
        user = f"{prefix}-{i}"
        events.append({"type": "identify", "userId": user, "traits": {"plan": plan}, "messageId": f"{user}-id"})
        events.append(
            {"type": "track", "userId": user, "event": "A", "messageId": f"{user}-a", "timestamp": _iso(entered_at)}
        )
        if i < converted:
            moved = entered_at + timedelta(hours=1)
            events.append(
                {"type": "track", "userId": user, "event": "B", "messageId": f"{user}-b", "timestamp": _iso(moved)}
            )
    return events


async def new_project(stores) -> tuple[Any, str]:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        project = await create_project(conn, f"alerts-{os.getpid()}-{next(_names)}")
        await definitions.apply(conn, project.id, "map", MAP)
        await definitions.apply(conn, project.id, "segment", SEGMENT)
        admin = await add_key(conn, project.id, "admin")
    return project, admin


async def send(http, collector, key: str, events: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    async with http.post(collector.make_url("/v1/batch"), json={"batch": events}, headers=basic(key)) as r:
        assert r.status == 200, await r.text()
    await wait_drained(collector)


async def put_rule(http, query, key: str, rule: dict[str, Any]) -> tuple[int, dict[str, Any]]:  # type: ignore[no-untyped-def]
    url = query.make_url(f"/v1/alerts/rules/{rule['name']}")
    async with http.put(url, json=rule, headers=basic(key)) as r:
        return r.status, await r.json()


async def alerts(http, query, key: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    async with http.get(query.make_url("/v1/alerts"), headers=basic(key)) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def state_where(http, query, key: str, check) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Wait for GET /v1/alerts to show the (only) rule's all-customers state passing ``check``."""

    async def ready() -> dict[str, Any] | None:
        view = await alerts(http, query, key)
        states = view["rules"][0]["states"] if view["rules"] else []
        return view if states and check(states[0]) else None

    return await wait_until(ready, timeout=30)


def rate_rule(*receivers: Receiver, **changes: Any) -> dict[str, Any]:
    """Aware's conversion rate against the map's 0.5, from two decided customers, to these receivers."""
    rule = {"name": "aware-rate", "map": "funnel", "stage": "aware", "metric": "conversion_rate", "min_decided": 2}
    return {**rule, "notify": [{"url": r.url} for r in receivers], **changes}


async def firing(http, collector, query, stores, rule: dict[str, Any], prefix: str) -> tuple[Any, str]:  # type: ignore[no-untyped-def]
    """A new project whose ``rule`` fires: two customers who entered Aware two days ago and dropped."""
    project, admin = await new_project(stores)
    assert (await put_rule(http, query, admin, rule))[0] == 201
    entered = datetime.now(timezone.utc) - timedelta(days=2)
    await send(http, collector, project.write_key, journeys_of(prefix, converted=0, dropped=2, entered_at=entered))
    await state_where(http, query, project.read_key, lambda s: s["state"] == "firing")
    return project, admin


async def resolved_history(http, query, key: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Once the newest transition is a resolution: the history."""

    async def resolved() -> list[dict[str, Any]] | None:
        history = (await alerts(http, query, key))["history"]
        return history if history and history[0]["kind"] == "resolved" else None

    return await wait_until(resolved, timeout=30)


# --- the rule document -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "path", "reason"),
    [
        ({"name": "r", "map": "funnel", "stage": "aware", "metric": "drop_off_rate"}, "threshold", "required"),
        (
            {"name": "r", "map": "funnel", "stage": "aware", "metric": "conversion_rate", "threshold": 1.5},
            "threshold",
            "share",
        ),
        (
            {
                "name": "r",
                "map": "funnel",
                "stage": "aware",
                "metric": "conversion_rate",
                "threshold": 0.5,
                "recover_at": 0.4,
            },
            "recover_at",
            "at or above",
        ),
        (
            {
                "name": "r",
                "map": "funnel",
                "stage": "aware",
                "metric": "conversion_rate",
                "notify": [{"url": "ftp://x/y"}],
            },
            "notify[0].url",
            "http",
        ),
        ({"name": "r", "map": "funnel", "stage": "aware", "metric": "speed"}, "metric", "conversion_rate"),
        (
            {"name": "r", "map": "funnel", "stage": "aware", "metric": "in_progress", "threshold": 2.5},
            "threshold",
            "whole",
        ),
        ({"name": "R!", "map": "funnel", "stage": "aware", "metric": "conversion_rate"}, "name", "lowercase"),
        (
            {"name": "r", "map": "funnel", "stage": "aware", "metric": "in_progress", "threshold": float("inf")},
            "threshold",
            "finite",
        ),
        (
            {
                "name": "r",
                "map": "funnel",
                "stage": "aware",
                "metric": "conversion_rate",
                "notify": [{"url": "https://h.example\\@x/SECRET"}],
            },
            "notify[0].url",
            "not a valid URL",
        ),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(document: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        validate_alert_rule(document)
    assert any(p["path"] == path and reason in p["reason"] for p in caught.value.problems), caught.value.problems


def _counts(converted: int, dropped: int, in_progress: int, median_ms: int | None = None) -> dict[str, Any]:
    return {"converted": converted, "dropped": dropped, "in_progress": in_progress, "median_ms": median_ms}


def test_customers_in_progress_count_neither_way() -> None:
    """3 converted and nobody dropped meets 0.5: the 30 still inside their conversion window are no drops (they
    could still convert), and they alone decide nothing."""
    rule = validate_alert_rule({"name": "r", "map": "m", "stage": "s", "metric": "conversion_rate", "min_decided": 3})
    limits = (Fraction(1, 2), Fraction(21, 40))
    assert (judge(rule, _counts(3, 0, 30), limits).status, judge(rule, _counts(3, 0, 30), limits).fire) == (
        "met",
        False,
    )
    assert judge(rule, _counts(0, 0, 30), limits).status == "no_data"
    decided = judge(rule, _counts(1, 3, 30), limits)
    assert (decided.status, decided.fire, decided.numbers["actual"]) == ("below_target", True, 0.25)
    too_few = judge(rule, _counts(0, 2, 0), limits)
    assert (too_few.status, too_few.fire) == ("too_few_decided", False)
    median = validate_alert_rule(
        {"name": "r", "map": "m", "stage": "s", "metric": "median_days_to_convert", "threshold": 1, "min_decided": 2}
    )
    # One converted customer's wait is no median to page on, however many dropped beside it.
    assert judge(median, _counts(1, 19, 0, median_ms=3 * 86_400_000), (Fraction(1), Fraction(19, 20))).status == (
        "too_few_decided"
    )
    assert judge(median, _counts(2, 0, 0, median_ms=3 * 86_400_000), (Fraction(1), Fraction(19, 20))).fire


def test_a_stage_on_the_edge_does_not_flap() -> None:
    """Exactly at the threshold it no longer fires, but it only recovers 5 % of the way above it."""
    rule = validate_alert_rule({"name": "r", "map": "m", "stage": "s", "metric": "conversion_rate", "min_decided": 4})
    limits = (Fraction(1, 2), Fraction(21, 40))
    edge = judge(rule, _counts(3, 3, 0), limits)
    assert (edge.status, edge.fire, edge.recover) == ("met", False, False)
    assert judge(rule, _counts(4, 3, 0), limits).recover
    lower = validate_alert_rule(
        {"name": "r", "map": "m", "stage": "s", "metric": "drop_off_rate", "threshold": 0.5, "min_decided": 1}
    )
    assert judge(lower, _counts(1, 3, 0), (Fraction(1, 2), Fraction(19, 40))).fire
    assert not judge(lower, _counts(1, 3, 0), (Fraction(1, 2), Fraction(19, 40))).recover


def test_default_recovery_thresholds_lie_between_the_threshold_and_the_ideal() -> None:
    journey_map = validate_map(MAP)
    for metric, threshold, recover_at in (
        ("conversion_rate", 0.5, Fraction(21, 40)),
        ("conversion_rate", 0.96, Fraction(962, 1000)),  # not 1.008 capped at 1: reachable short of perfection
        ("drop_off_rate", 0.5, Fraction(19, 40)),
        ("in_progress", 20, Fraction(19)),
    ):
        rule = validate_alert_rule(
            {"name": "r", "map": "funnel", "stage": "aware", "metric": metric, "threshold": threshold}
        )
        assert thresholds(rule, journey_map) == (Fraction(str(threshold)), recover_at), metric
    from_target = validate_alert_rule({"name": "r", "map": "funnel", "stage": "aware", "metric": "conversion_rate"})
    assert thresholds(from_target, journey_map) == (Fraction(1, 2), Fraction(21, 40))


def test_webhook_urls_are_shown_without_their_secrets() -> None:
    assert redact("https://user:pw@hooks.example.com:8443/services/T0/B0/XYZ?q=1") == "https://hooks.example.com:8443/…"
    assert redact("http://[::1]/x") == "http://[::1]/…"
    # Errors an attempt records: the URL, in whatever form a library prints it, loses its path and user info.
    url = "http://u:pw@hooks.example.com/x y/SECRET"
    for exc in (aiohttp.InvalidURL(url), ValueError(f"bad {yarl.URL(url)}"), OSError("at //u:pw@elsewhere/")):
        text = _error_text(exc, url)
        assert "SECRET" not in text and "pw" not in text, text


# --- the service --------------------------------------------------------------------------------------------


async def test_rules_are_checked_against_the_project_and_need_an_admin_key(http, query, stores) -> None:  # type: ignore[no-untyped-def]
    project, admin = await new_project(stores)
    rule = {"name": "aware-rate", "map": "funnel", "stage": "aware", "metric": "conversion_rate"}
    status, body = await put_rule(http, query, project.read_key, rule)
    assert status == 403, body
    for bad, field in (
        ({**rule, "map": "nope"}, "map"),
        ({**rule, "stage": "nope"}, "stage"),
        ({**rule, "stage": "buy"}, "stage"),  # the last stage: nobody converts from it
        ({**rule, "stage": "consider"}, "threshold"),  # no conversion_rate target there, and none given
        ({**rule, "segments": ["vip"]}, "segments[0]"),
    ):
        status, body = await put_rule(http, query, admin, bad)
        assert status == 400 and body["errors"][0]["field"] == field, body
    hooked = {**rule, "notify": [{"url": "https://hooks.example.com/services/T0/B0/SECRET", "format": "slack"}]}
    status, body = await put_rule(http, query, admin, hooked)
    assert (status, body["version"]) == (201, 1), body
    async with http.get(query.make_url("/v1/alerts/rules/aware-rate"), headers=basic(project.read_key)) as r:
        shown = await r.json()
    assert shown["definition"]["notify"][0]["url"] == "https://hooks.example.com/…"
    async with http.get(query.make_url("/v1/alerts/rules/aware-rate"), headers=basic(admin)) as r:
        assert (await r.json())["definition"]["notify"][0]["url"].endswith("/SECRET")
    status, body = await put_rule(http, query, admin, hooked)
    assert (status, body["changed"]) == (200, False)


async def test_a_stage_falling_below_target_fires_once_then_resolves_signed(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    """Fire from real events, hold at the edge, resolve past the recovery threshold: each transition delivered
    once (after the receiver's two failures), signed with the project's secret."""
    project, admin = await new_project(stores)
    receiver = await Receiver().start()
    receiver.answers = [503, 500]
    try:
        rule = {
            "name": "aware-rate",
            "map": "funnel",
            "stage": "aware",
            "metric": "conversion_rate",
            "min_decided": 4,
            "notify": [{"url": receiver.url}, {"url": receiver.url, "format": "slack"}],
        }
        assert (await put_rule(http, query, admin, rule))[0] == 201
        entered = datetime.now(timezone.utc) - timedelta(days=3)  # every conversion window has closed
        await send(http, collector, project.write_key, journeys_of("a", converted=1, dropped=3, entered_at=entered))
        view = await state_where(http, query, project.read_key, lambda s: s["state"] == "firing")
        evaluation = view["rules"][0]["states"][0]["evaluation"]
        assert (evaluation["status"], evaluation["actual"], evaluation["threshold"]) == ("below_target", 0.25, 0.5)
        await wait_until(lambda: _true(len(receiver.delivered()) == 2), timeout=30)
        async with http.get(query.make_url("/metrics")) as r:
            exposition = await r.text()
        assert f'journeys_alert_firing{{project="{project.id}",rule="aware-rate",segment="*all*"}} 1.0' in exposition

        # 3 of 6: the threshold is met, but not the recovery threshold (0.525): it stays firing.
        await send(http, collector, project.write_key, journeys_of("b", converted=2, dropped=0, entered_at=entered))
        await state_where(http, query, project.read_key, lambda s: s["evaluation"]["converted"] == 3)
        view = await alerts(http, query, project.read_key)
        assert view["rules"][0]["states"][0]["state"] == "firing"
        assert view["rules"][0]["states"][0]["evaluation"]["status"] == "met"

        await send(http, collector, project.write_key, journeys_of("c", converted=1, dropped=0, entered_at=entered))
        await state_where(http, query, project.read_key, lambda s: s["state"] == "ok")
        await wait_until(lambda: _true(len(receiver.delivered()) == 4), timeout=30)
        await asyncio.sleep(1.5)  # nothing more arrives: each notification once

        async with http.get(query.make_url("/v1/alerts/signing-secret"), headers=basic(admin)) as r:
            secret = (await r.json())["secret"]
        delivered = receiver.delivered()
        assert len(delivered) == 4 and len({h["X-Journeys-Delivery"] for h, _ in delivered}) == 4
        for headers, body in [(h, b) for h, b, s in receiver.requests]:
            assert verify(secret, headers, body)
            assert not verify(secret, headers, body + b" ")
            assert not verify("whsec_other", headers, body)
        fired = [b for h, b in delivered if "type" in b and b["type"] == "alert.fired"]
        resolved = [b for h, b in delivered if "type" in b and b["type"] == "alert.resolved"]
        assert len(fired) == 1 and len(resolved) == 1
        assert fired[0]["id"] == [h for h, b in delivered if b is fired[0]][0]["X-Journeys-Delivery"]
        assert (fired[0]["rule"]["stage"], fired[0]["segment"], fired[0]["evaluation"]["dropped"]) == ("aware", None, 3)
        assert resolved[0]["evaluation"]["actual"] == 4 / 7 and resolved[0]["sequence"] > fired[0]["sequence"]
        texts = [b["text"] for h, b in delivered if set(b) == {"text"}]
        assert len(texts) == 2 and texts[0].startswith("Firing: aware-rate") and texts[1].startswith("Resolved")

        history = (await alerts(http, query, project.read_key))["history"]
        assert [e["kind"] for e in history] == ["resolved", "fired"]
        fired_deliveries = history[1]["deliveries"]
        assert {d["state"] for d in fired_deliveries} == {"delivered"}
        assert sum(len(d["failed_attempts"]) for d in fired_deliveries) == 2  # the receiver's 503 and 500
        assert all(d["target"] == f"http://127.0.0.1:{receiver.port}/…" for d in fired_deliveries)
        assert "t0ps3cret" not in json.dumps(history)
    finally:
        await receiver.stop()


async def test_a_rule_on_undecided_customers_does_not_fire(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    """Customers who entered an hour ago with a day to go are undecided: alone they decide nothing, and beside
    two converters they are no drops (counted as drops, 2 of 7 would fire against 0.5)."""
    project, admin = await new_project(stores)
    receiver = await Receiver().start()
    try:
        rule = {
            "name": "aware-rate",
            "map": "funnel",
            "stage": "aware",
            "metric": "conversion_rate",
            "min_decided": 1,
            "segments": "*",
            "notify": [{"url": receiver.url}],
        }
        assert (await put_rule(http, query, admin, rule))[0] == 201
        entered = datetime.now(timezone.utc) - timedelta(hours=1)
        await send(http, collector, project.write_key, journeys_of("u", 0, 5, entered, plan="pro"))

        def judged(converted: int) -> Any:
            def check(view: dict[str, Any]) -> bool:
                states = view["rules"][0]["states"]
                return len(states) == 2 and all(
                    (s["evaluation"].get("in_progress"), s["evaluation"].get("converted")) == (5, converted)
                    for s in states
                )

            return check

        view = await wait_until(lambda: _when(alerts(http, query, project.read_key), judged(0)), timeout=30)
        assert [(s["segment"], s["state"], s["evaluation"]["status"]) for s in view["rules"][0]["states"]] == [
            (None, "ok", "no_data"),
            ("pro", "ok", "no_data"),
        ]
        long_ago = datetime.now(timezone.utc) - timedelta(days=3)
        await send(http, collector, project.write_key, journeys_of("c", 2, 0, long_ago, plan="pro"))
        view = await wait_until(lambda: _when(alerts(http, query, project.read_key), judged(2)), timeout=30)
        for state in view["rules"][0]["states"]:
            assert (state["state"], state["evaluation"]["status"], state["evaluation"]["actual"]) == ("ok", "met", 1.0)
            assert state["evaluation"]["dropped"] == 0
        await asyncio.sleep(1.0)
        assert receiver.requests == [] and view["history"] == []
    finally:
        await receiver.stop()


async def test_a_new_version_watching_something_else_resolves_the_old_alert_where_it_was_sent(  # type: ignore[no-untyped-def]
    http, collector, query, stores
) -> None:
    """Firing on Aware, the rule is moved to Consider and to another webhook: "resolved (rule changed)" goes to
    the receiver that was told "fired", and the state starts afresh on Consider."""
    first, second = await Receiver().start(), await Receiver().start()
    try:
        rule = rate_rule(first, name="rate")
        project, admin = await firing(http, collector, query, stores, rule, "m")
        moved = {**rule, "stage": "consider", "threshold": 0.5, "notify": [{"url": second.url}]}
        assert (await put_rule(http, query, admin, moved))[0] == 200
        await wait_until(lambda: _true(len(first.delivered()) == 2), timeout=30)
        assert [(b["type"], b["reason"], b["rule"]["stage"]) for _, b in first.delivered()] == [
            ("alert.fired", "below", "aware"),
            ("alert.resolved", "rule changed", "aware"),  # what fired, not what the rule watches now
        ]
        view = await state_where(http, query, project.read_key, lambda s: s["rule_version"] == 2)
        assert view["rules"][0]["states"][0]["state"] == "ok"  # nobody entered Consider: nothing to judge
        assert second.requests == []
    finally:
        await first.stop()
        await second.stop()


async def test_a_firing_alert_whose_map_target_is_removed_resolves(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    project, admin = await firing(http, collector, query, stores, rate_rule(), "n")
    untargeted = {**MAP, "stages": [{k: v for k, v in MAP["stages"][0].items() if k != "target"}, *MAP["stages"][1:]]}
    async with stores.pg.acquire() as conn:
        await definitions.apply(conn, project.id, "map", untargeted)
    view = await state_where(http, query, project.read_key, lambda s: s["state"] == "ok")
    assert view["rules"][0]["states"][0]["evaluation"]["status"] == "no_threshold"
    assert [(e["kind"], e["reason"]) for e in view["history"]][:1] == [("resolved", "no threshold")]


async def _true(value: bool) -> bool:
    return value


async def _when(view, check):  # type: ignore[no-untyped-def]
    got = await view
    return got if check(got) else None


async def test_a_receiver_down_then_back_gets_each_notification_once(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    project, admin = await new_project(stores)
    receiver = Receiver()  # not listening yet: connections are refused
    rule = {
        "name": "aware-rate",
        "map": "funnel",
        "stage": "aware",
        "metric": "conversion_rate",
        "min_decided": 2,
        "notify": [{"url": receiver.url}],
    }
    assert (await put_rule(http, query, admin, rule))[0] == 201
    entered = datetime.now(timezone.utc) - timedelta(days=2)
    await send(http, collector, project.write_key, journeys_of("d", converted=0, dropped=2, entered_at=entered))

    async def failed_twice() -> bool:
        history = (await alerts(http, query, project.read_key))["history"]
        return bool(history) and len(history[0]["deliveries"][0]["failed_attempts"]) >= 2

    await wait_until(failed_twice, timeout=30)
    await receiver.start()
    try:
        await wait_until(lambda: _true(len(receiver.delivered()) == 1), timeout=30)
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == 1
        [delivery] = (await alerts(http, query, project.read_key))["history"][0]["deliveries"]
        assert delivery["state"] == "delivered" and delivery["attempts"] == len(delivery["failed_attempts"]) + 1
        assert "ClientConnectorError" in delivery["failed_attempts"][0]["error"]
        assert "t0ps3cret" not in json.dumps(delivery)
    finally:
        await receiver.stop()


async def test_the_signing_secret_rotates_with_an_admin_key(http, query, stores) -> None:  # type: ignore[no-untyped-def]
    project, admin = await new_project(stores)
    url = query.make_url("/v1/alerts/signing-secret")
    async with http.get(url, headers=basic(project.read_key)) as r:
        assert r.status == 403
    async with http.get(url, headers=basic(admin)) as r:
        first = (await r.json())["secret"]
    async with http.get(url, headers=basic(admin)) as r:
        assert (await r.json())["secret"] == first
    async with http.post(url, headers=basic(admin)) as r:
        rotated = (await r.json())["secret"]
    assert rotated != first and rotated.startswith("whsec_")


async def test_disabling_a_firing_rule_resolves_it(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    receiver = await Receiver().start()
    try:
        rule = rate_rule(receiver)
        project, admin = await firing(http, collector, query, stores, rule, "z")
        assert (await put_rule(http, query, admin, {**rule, "enabled": False}))[0] == 200
        history = await resolved_history(http, query, project.read_key)
        assert [(e["kind"], e["reason"]) for e in history] == [("resolved", "rule disabled"), ("fired", "below")]
        view = await alerts(http, query, project.read_key)
        assert view["rules"][0]["enabled"] is False and view["rules"][0]["states"] == []
        await wait_until(lambda: _true(len(receiver.delivered()) == 2), timeout=30)
        assert [b["type"] for _, b in receiver.delivered()] == ["alert.fired", "alert.resolved"]
    finally:
        await receiver.stop()


async def test_a_project_whose_rules_cannot_be_judged_holds_no_other_back(http, collector, stores) -> None:  # type: ignore[no-untyped-def]
    """A stored rule that no longer validates (written by a later version, or by hand) fails its own project's
    evaluation, every round; the projects judged after it in the same round are still judged."""
    broken = f"0-broken-{os.getpid()}-{next(_names)}"  # sorts before every generated project id
    async with stores.pg.acquire() as conn:
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, $1)", broken)
        await conn.execute(
            "INSERT INTO definitions (project_id, kind, name, version, body) VALUES ($1, 'alert', 'odd', 1, $2::jsonb)",
            broken,
            json.dumps({"name": "odd", "map": "funnel", "stage": "aware", "metric": "speed"}),
        )
    query = TestServer(create_query(with_settings(stores, alert_every_s=0.3), Metrics()), host="127.0.0.1")
    await query.start_server()
    try:
        project, _ = await firing(http, collector, query, stores, rate_rule(), "k")
        view = await alerts(http, query, project.read_key)
        # No event since: only the rounds that judge every project (every 0.3 s here) judge it again.
        judged_at = view["rules"][0]["states"][0]["evaluated_at"]
        await state_where(http, query, project.read_key, lambda s: s["evaluated_at"] > judged_at)
    finally:
        await query.close()
        async with stores.pg.acquire() as conn:
            await conn.execute("DELETE FROM projects WHERE id = $1", broken)


async def test_a_stage_removed_from_the_map_resolves_its_alert(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    project, _ = await firing(http, collector, query, stores, rate_rule(), "g")
    without_aware = {
        **MAP,
        "stages": MAP["stages"][1:],
        "touchpoints": [t for t in MAP["touchpoints"] if t["stage"] != "aware"],
    }
    async with stores.pg.acquire() as conn:
        await definitions.apply(conn, project.id, "map", without_aware)
    history = await resolved_history(http, query, project.read_key)
    assert (history[0]["reason"], history[0]["segment"]) == ("no longer watched", None)
    assert (await alerts(http, query, project.read_key))["rules"][0]["states"] == []
