"""Alerts across a crash: the real `journeys` CLI and service processes, a receiver on 127.0.0.1 that is down
while the alert fires, the service SIGKILLed, restarted, and the notification delivered once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml

from testkit.service import Service, create_project, journeys, stop_leftover_postgres
from support import basic, wait_until
from test_alerts import MAP, Receiver, journeys_of, verify


@pytest.fixture
def data_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield tmp_path
    stop_leftover_postgres(tmp_path)


def _cli(data_dir: Path, *args: str) -> str:
    done = journeys(data_dir, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
async def test_a_notification_queued_before_a_crash_is_delivered_once_after_the_restart(data_dir: Path) -> None:
    keys = create_project(data_dir, "shop")
    receiver = Receiver()  # down: connections refused until it starts
    (data_dir / "map.yaml").write_text(yaml.safe_dump(MAP))
    rule = {
        "name": "aware-rate",
        "map": "funnel",
        "stage": "aware",
        "metric": "conversion_rate",
        "min_decided": 3,
        "notify": [{"url": receiver.url}],
    }
    (data_dir / "rule.yaml").write_text(yaml.safe_dump(rule))
    _cli(data_dir, "map", "apply", str(data_dir / "map.yaml"), "--project", "shop")
    # A rule naming a stage the map lacks is refused with the field and reason; nothing is stored.
    (data_dir / "bad.yaml").write_text(yaml.safe_dump({**rule, "stage": "nope"}))
    refused = journeys(data_dir, "alert", "apply", str(data_dir / "bad.yaml"), "--project", "shop")
    assert refused.returncode == 1 and "stage: map 'funnel' has no stage 'nope'" in refused.stderr
    assert "alert aware-rate: created, version 1" in _cli(
        data_dir, "alert", "apply", str(data_dir / "rule.yaml"), "--project", "shop"
    )
    secret = _cli(data_dir, "alert", "secret", "--project", "shop").strip()

    first = Service(data_dir).start()
    async with aiohttp.ClientSession() as http:
        try:
            events = journeys_of("x", converted=0, dropped=3, entered_at=datetime.now(timezone.utc) - timedelta(days=2))
            async with http.post(
                f"{first.collector}/v1/batch", data=orjson.dumps({"batch": events}), headers=basic(keys["write_key"])
            ) as resp:
                assert resp.status == 200, await resp.text()

            async def failed_once() -> dict | None:
                history = json.loads(_cli(data_dir, "alert", "history", "--project", "shop", "--json"))["history"]
                return history[0] if history and history[0]["deliveries"][0]["failed_attempts"] else None

            fired = await wait_until(failed_once, timeout=60)
            assert fired["kind"] == "fired" and fired["deliveries"][0]["state"] == "pending"
        finally:
            first.kill()

        await receiver.start()
        second = Service(data_dir).start()
        try:
            await wait_until(lambda: _true(len(receiver.requests) >= 1), timeout=60)
            listing = _cli(data_dir, "alert", "list", "--project", "shop")
            assert "aware-rate" in listing and "all customers: firing" in listing
            history = _cli(data_dir, "alert", "history", "--project", "shop")
            assert "\tfired\taware-rate\tall customers at 0" in history and "delivered after" in history
            assert "t0ps3cret" not in history  # the URL's secret path is never shown
        finally:
            second.stop()
        [(headers, body, status)] = receiver.requests  # once, not once per process
        assert status == 200 and verify(secret, headers, body)
        assert json.loads(body)["type"] == "alert.fired"
    await receiver.stop()


async def _true(value: bool) -> bool:
    return value
