"""POST /v1/kpis/preview: a draft map's (and segment's) KPIs over all data, equal to what GET /v1/kpis answers
once the draft is applied; nothing published, the preview's facts gone afterwards, bad drafts named."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from query import definitions, kpi_preview
from query.facts.builds import PREVIEW_BUILDS
from support import basic, wait_until
from test_kpis import BASE, MAP, _kpis, _new_project, _send, _stamp

DRAFT = copy.deepcopy(MAP)
DRAFT["touchpoints"][0]["match"] = {"event": ["A", "X"]}  # page views named X now make people aware
DRAFT["stages"][0]["target"] = {"conversion_rate": 0.9}
DRAFT_SEGMENT = {"name": "vip", "rules": [{"field": "traits.plan", "op": "in", "value": ["vip", "basic"]}]}


def _events() -> list[dict[str, Any]]:
    out = []
    for n in range(12):
        user, at = f"p-{n}", BASE + timedelta(hours=n)
        out.append(
            {
                "type": "identify",
                "userId": user,
                "traits": {"plan": ["vip", "basic", "pro"][n % 3]},
                "channel": "web",
                "timestamp": _stamp(at),
            }
        )
        out.append(
            {"type": "track", "userId": user, "event": "X" if n % 2 else "A", "channel": "web", "timestamp": _stamp(at)}
        )
        if n % 3:
            out.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": "B",
                    "channel": "email",
                    "properties": {"score": n % 5},
                    "timestamp": _stamp(at + timedelta(hours=n)),
                }
            )
        if n % 4 == 0:
            out.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": "C",
                    "channel": "store",
                    "timestamp": _stamp(at + timedelta(days=1)),
                }
            )
    return out


async def _preview(http, query, key: str, body: Any, **params: str) -> tuple[int, Any]:  # type: ignore[no-untyped-def]
    async with http.post(query.make_url("/v1/kpis/preview"), params=params, json=body, headers=basic(key)) as r:
        return r.status, await r.json()


async def test_preview_equals_the_kpis_once_the_draft_is_applied(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    project = await _new_project(stores)
    await _send(http, collector, project.write_key, _events())
    window = {"from": BASE.date().isoformat(), "to": (BASE + timedelta(days=15)).date().isoformat(), "segment": "*"}
    before = await _kpis(http, query, project.read_key, map="funnel", **window)

    status, preview = await _preview(http, query, project.read_key, {"map": DRAFT, "segment": DRAFT_SEGMENT}, **window)
    assert status == 200, preview
    assert preview["preview"] is True and preview["map"] == {"name": "funnel", "version": None}
    assert preview["segments"] != before["segments"]  # the draft changes the numbers ...
    # ... and published nothing, and left no facts behind
    async with stores.pg.acquire() as conn:
        assert [v.version for v in await definitions.latest_of_each(conn, project.id, "map")] == [1]
    _, rows = await stores.clickhouse.query(
        "SELECT count() FROM stage_facts WHERE project_id = {p:String} AND build >= {b:UInt64} "
        "SETTINGS apply_mutations_on_fly = 1",
        {"p": project.id, "b": PREVIEW_BUILDS},
    )
    assert rows == [(0,)]

    async with stores.pg.acquire() as conn:
        await definitions.apply(conn, project.id, "map", DRAFT)
        await definitions.apply(conn, project.id, "segment", DRAFT_SEGMENT)

    async def applied() -> dict[str, Any] | None:
        body = await _kpis(http, query, project.read_key, map="funnel", **window)
        return body if body["map"]["version"] == 2 else None

    after = await wait_until(applied, timeout=60)
    assert preview["segments"] == after["segments"]
    # a bare map is a draft too; CSV like GET /v1/kpis
    async with http.post(
        query.make_url("/v1/kpis/preview"),
        params={**window, "format": "csv"},
        json=DRAFT,
        headers=basic(project.read_key),
    ) as r:
        assert r.status == 200 and r.content_type == "text/csv"
        lines = (await r.text()).splitlines()
        assert lines[0].startswith("segment,") and len(lines) == 1 + 4 * 3  # a row per segment (all, 2) and stage


async def test_a_preview_reads_or_folds_what_the_serving_build_holds_when_it_can(  # type: ignore[no-untyped-def]
    http, collector, query, stores, monkeypatch
) -> None:
    """Three ways to a preview of one of two maps, each equal to /v1/kpis once the draft is applied. A draft that
    changes only targets, names or descriptions has the facts the serving build holds: answered from it,
    computing nothing. One that changes a window or a segment's values, but no rule nor what the segments read,
    has the inputs it stores: its facts are folded from them, reading no event. A rule draft starts from the
    build's facts, or from its inputs renumbered, and computes again only the customers it stages otherwise;
    unless the segments read what the inputs do not keep: computed from the events, as is a fold whose serving
    build was replaced meanwhile (its inputs may be gone)."""
    ways: list[str] = []
    replace_serving_build = False

    class Counting(kpi_preview.StateWriter):
        async def build_all(self, *args: Any, **kwargs: Any) -> None:
            ways.append("computed")
            await super().build_all(*args, **kwargs)

        async def copy_facts_of(self, *args: Any) -> None:
            ways.append("copied")
            await super().copy_facts_of(*args)

        async def refresh(self, *args: Any, **kwargs: Any) -> int:
            ways.append(f"refreshed {len(args[3])}")  # the ids touched
            return await super().refresh(*args, **kwargs)

        async def fold_inputs_of(self, project_id: str, *args: Any) -> None:
            ways.append("folded" if len(args) < 4 or args[3] is None else "folded renumbered")
            await super().fold_inputs_of(project_id, *args)
            if replace_serving_build:
                await stores.pg.execute(
                    "UPDATE stage_state_builds SET build = build + 1 WHERE project_id = $1", project_id
                )

    monkeypatch.setattr(kpi_preview, "StateWriter", Counting)
    project = await _new_project(stores)
    another = copy.deepcopy(MAP)  # a second map, sorted first: the draft's is the second of the stored inputs
    another["name"] = "another"
    another["touchpoints"] = list(reversed(another["touchpoints"]))
    async with stores.pg.acquire() as conn:
        await definitions.apply(conn, project.id, "map", another)
    await _send(http, collector, project.write_key, _events())
    window = {"from": BASE.date().isoformat(), "to": (BASE + timedelta(days=15)).date().isoformat(), "segment": "*"}
    before = await _kpis(http, query, project.read_key, map="funnel", **window)
    other = await _kpis(http, query, project.read_key, map="another", **window)
    assert other["segments"] != before["segments"]  # so a fold that read the other map's staged events would show

    async def preview_then_apply(body: dict[str, Any], version: int) -> dict[str, Any]:
        status, preview = await _preview(http, query, project.read_key, body, **window)
        assert status == 200, preview
        async with stores.pg.acquire() as conn:
            await definitions.apply(conn, project.id, "map", body["map"])
            if "segment" in body:
                await definitions.apply(conn, project.id, "segment", body["segment"])

        async def applied() -> dict[str, Any] | None:
            answer = await _kpis(http, query, project.read_key, map="funnel", **window)
            return answer if answer["map"]["version"] == version and answer["rebuilding"] is None else None

        assert preview["segments"] == (await wait_until(applied, timeout=60))["segments"]
        return preview

    targets = copy.deepcopy(MAP)
    targets["stages"][0]["target"] = {"conversion_rate": 0.99}
    targets["stages"][1]["name"] = "Thinking it over"
    preview = await preview_then_apply({"map": targets}, 2)
    assert ways == []
    assert preview["segments"] != before["segments"]  # the new target judges the same counts otherwise

    windows = copy.deepcopy(targets)
    windows["stages"][0]["conversion_window_days"] = 0.2
    preview = await preview_then_apply({"map": windows, "segment": DRAFT_SEGMENT}, 3)
    assert ways == ["folded"]
    assert preview["segments"] != before["segments"]

    # Rule drafts (query/facts/restage.py): the X page views now make people aware (the six users with one are
    # computed again, the rest copied) ...
    rules = copy.deepcopy(windows)
    rules["touchpoints"][0]["match"] = {"event": ["A", "X"]}
    await preview_then_apply({"map": rules}, 4)
    assert ways == ["folded", "copied", "refreshed 6"]
    # ... the rules in another order, no event's first match changed: the serving build's facts are the draft's ...
    reordered = copy.deepcopy(rules)
    reordered["touchpoints"].insert(0, reordered["touchpoints"].pop())  # `loyal` first: no event matches two
    await preview_then_apply({"map": reordered}, 5)
    assert ways == ["folded", "copied", "refreshed 6"]
    # ... a new touchpoint feeding a stage: the stored inputs folded, renumbered, with the X viewers computed again
    added = copy.deepcopy(reordered)
    # (its id sorts first: every rule's number moves, MapVersion.rule_numbers)
    added["touchpoints"].insert(0, {"id": "a-view", "stage": "consider", "match": {"event": "X"}})
    added["touchpoints"][2]["match"] = {"event": "A"}  # `ad` no longer takes the X views
    await preview_then_apply({"map": added}, 6)
    assert ways[3:] == ["folded renumbered", "refreshed 6"]
    # ... and a segment reading a trait the inputs do not keep: computed from the events
    country = {"name": "de", "rules": [{"field": "traits.country", "op": "equals", "value": "de"}]}
    await preview_then_apply({"map": rules, "segment": country}, 7)
    assert ways[5:] == ["computed"]

    later = copy.deepcopy(rules)
    later["stages"][0]["conversion_window_days"] = 0.3
    replace_serving_build = True
    status, replaced = await _preview(http, query, project.read_key, {"map": later}, **window)
    assert status == 200, replaced
    assert ways[6:] == ["folded", "computed"]
    await stores.pg.execute("UPDATE stage_state_builds SET build = build - 1 WHERE project_id = $1", project.id)
    replace_serving_build = False
    status, folded = await _preview(http, query, project.read_key, {"map": later}, **window)
    assert status == 200, folded
    assert ways[-1] == "folded" and replaced["segments"] == folded["segments"]


async def test_a_bad_draft_is_refused_naming_the_field(http, query, stores) -> None:  # type: ignore[no-untyped-def]
    project = await _new_project(stores)
    broken = copy.deepcopy(MAP)
    broken["touchpoints"][0]["stage"] = "nowhere"
    status, body = await _preview(http, query, project.read_key, {"map": broken})
    assert status == 400 and body["errors"][0]["field"].startswith("map.touchpoints[0]"), body
    status, body = await _preview(http, query, project.read_key, {"map": MAP, "segment": {"name": "x", "rules": "no"}})
    assert status == 400 and body["errors"][0]["field"].startswith("segment."), body
    status, body = await _preview(http, query, project.read_key, {"map": MAP, "extra": 1})
    assert (status, body["errors"][0]["field"]) == (400, "extra")
    status, body = await _preview(http, query, project.read_key, [1])
    assert (status, body["errors"][0]["field"]) == (400, "body")
    status, body = await _preview(http, query, project.read_key, MAP, segment="nobody")
    assert (status, body["errors"][0]["field"]) == (404, "segment")
    status, body = await _preview(http, query, project.read_key, MAP, **{"from": "yesterday"})
    assert (status, body["errors"][0]["field"]) == (400, "from")
    async with http.post(query.make_url("/v1/kpis/preview"), json=MAP) as r:
        assert r.status == 401


async def test_cli_previews_through_the_running_query_service(  # type: ignore[no-untyped-def]
    http, collector, query, stores, data_dir, tmp_path
) -> None:
    """This test process holds the embedded ClickHouse, as a running `journeys up` does: `journeys map preview`
    asks the query service, with a read key it revokes afterwards, and prints what the endpoint answers."""
    import asyncio
    import json

    import yaml
    from testkit.service import journeys

    project = await _new_project(stores)
    await _send(http, collector, project.write_key, _events())
    draft = tmp_path / "draft.yaml"
    draft.write_text(yaml.safe_dump(DRAFT))
    window = {"from": BASE.date().isoformat(), "to": (BASE + timedelta(days=15)).date().isoformat()}
    env = {"JOURNEYS_QUERY_HOST": "127.0.0.1", "JOURNEYS_QUERY_PORT": str(query.port)}
    args = ("map", "preview", str(draft), "--project", project.id, "--from", window["from"], "--to", window["to"])
    done = await asyncio.to_thread(journeys, data_dir, *args, "--json", **env)
    assert done.returncode == 0, done.stderr
    status, expected = await _preview(http, query, project.read_key, DRAFT, **window)
    assert status == 200 and json.loads(done.stdout)["segments"] == expected["segments"]
    revoked = await stores.pg.fetch(
        "SELECT revoked_at FROM api_keys WHERE project_id = $1 AND kind = 'read'", project.id
    )
    assert len(revoked) == 2 and sum(r["revoked_at"] is not None for r in revoked) == 1  # its own key, then revoked
    table = await asyncio.to_thread(journeys, data_dir, *args, **env)
    assert table.returncode == 0 and "Aware" in table.stdout and "nothing published" in table.stdout, table.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({**DRAFT, "stages": []}))
    bad = await asyncio.to_thread(journeys, data_dir, "map", "preview", str(broken), "--project", project.id, **env)
    assert bad.returncode == 1 and "error: map." in bad.stderr, bad.stderr


@pytest.mark.slow
def test_cli_previews_directly_when_the_stores_are_free_with_the_endpoints_checks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No service running: `journeys map preview` computes in its own process, and takes its window exactly
    as the endpoint does (the same parameter names and reasons)."""
    import yaml
    from testkit.service import journeys, stop_leftover_postgres

    try:
        assert journeys(tmp_path, "project", "create", "direct").returncode == 0
        assert journeys(tmp_path, "migrate").returncode == 0  # as `journeys up` leaves a data dir
        draft = tmp_path / "draft.yaml"
        draft.write_text(yaml.safe_dump(DRAFT))
        done = journeys(tmp_path, "map", "preview", str(draft), "--project", "direct", "--segment", "*")
        assert done.returncode == 0, done.stderr
        assert "nothing published" in done.stdout and "Aware" in done.stdout, done.stdout
        for args, said in (
            (("--from", "yesterday"), "error: from: must be a date as YYYY-MM-DD (UTC)"),
            (("--from", "2026-02-01", "--to", "2026-01-01"), "error: from: must not be after `to`"),
            (("--from", "1999-12-31"), "error: from: must be a date"),
        ):
            bad = journeys(tmp_path, "map", "preview", str(draft), "--project", "direct", *args)
            assert bad.returncode == 1 and said in bad.stderr, (args, bad.stderr)
    finally:
        stop_leftover_postgres(tmp_path)
