"""docker-compose and deploy/ are for users (no Docker engine runs here): check them by parsing."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from journeys.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_both_services_against_real_servers() -> None:
    services = _compose()["services"]
    assert {"clickhouse", "postgres", "collector", "query"} <= set(services)
    for name in ("clickhouse", "postgres"):
        image = services[name]["image"]
        assert re.search(r":\d+(\.\d+)+$", image), f"{name} image must be pinned: {image}"
    for name, port in (("collector", Settings().collector_port), ("query", Settings().query_port)):
        svc = services[name]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert svc["command"] == ["journeys", "up", "--only", name]
        env = svc["environment"]
        assert env["CLICKHOUSE_URL"].startswith("http://") and "@clickhouse:8123/" in env["CLICKHOUSE_URL"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert f"{port}:{port}" in svc["ports"]
        assert set(svc["depends_on"]) == {"clickhouse", "postgres"}
    assert "collector-spool:/data" in services["collector"]["volumes"]


def test_compose_env_is_valid_configuration() -> None:
    env = _compose()["services"]["collector"]["environment"]
    settings = Settings(
        clickhouse_url=env["CLICKHOUSE_URL"], database_url=env["DATABASE_URL"], log_format=env["JOURNEYS_LOG_FORMAT"]
    )
    assert not settings.clickhouse_is_embedded and not settings.postgres_is_embedded
    assert settings.log_format == "json"


def test_dockerfile_copies_paths_that_exist() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    sources = [src for group in copied for src in group]
    assert sources and all((ROOT / src).exists() for src in sources), sources
    assert 'CMD ["journeys", "up"]' in dockerfile


def test_dockerfile_copies_every_installed_package() -> None:
    """The image installs the project from what it copied: a package the wheel holds but the image does not copy
    (cli/ when the CLI moved out of journeys/) fails at `journeys up`, not at build time."""
    import tomllib

    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = {
        src.rstrip("/") for line in dockerfile.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]
    }
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages and packages <= copied, sorted(packages - copied)


# --------------------------------------------------------------------------------------------------------
# Monitoring: Prometheus, alert rules, Grafana (both compose files)
# --------------------------------------------------------------------------------------------------------

DEPLOY = ROOT / "deploy"
CLUSTER = DEPLOY / "cluster"
COMPOSE_FILES = {"single": ROOT / "docker-compose.yml", "cluster": CLUSTER / "docker-compose.yml"}
JOURNEYS_JOBS = {"journeys-collector": "collector", "journeys-query": "query"}  # job → `journeys up --only` value


def _load(name: str) -> dict:
    return yaml.safe_load(COMPOSE_FILES[name].read_text())


def _bind_mounts(name: str) -> dict[str, dict[str, Path]]:
    """service → {container path: host path} for the bind mounts (host paths relative to the compose file)."""
    out: dict[str, dict[str, Path]] = {}
    for service, spec in _load(name)["services"].items():
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                out.setdefault(service, {})[target] = (COMPOSE_FILES[name].parent / source).resolve()
    return out


def _mounted(name: str, service: str, target: str) -> Path:
    mounts = _bind_mounts(name).get(service, {})
    assert target in mounts, f"{name}: {service} does not mount {target}: {mounts}"
    return mounts[target]


def _journeys_role(spec: dict) -> str | None:
    command = spec.get("command") or []
    if command[:2] == ["journeys", "up"]:
        return command[3] if command[2:3] == ["--only"] else "both"
    return None


def _service_port(spec: dict, role: str) -> int:
    env = spec.get("environment", {})
    default = Settings().collector_port if role == "collector" else Settings().query_port
    return int(env.get(f"JOURNEYS_{role.upper()}_PORT", default))


def _pinned(image: str) -> bool:
    return bool(re.search(r":v?\d+(\.\d+)+$", image))


@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_compose_images_pinned_and_references_resolve(name: str) -> None:
    compose = _load(name)
    services = compose["services"]
    for service, spec in services.items():
        if "image" in spec:
            assert _pinned(spec["image"]), f"{service}: image must be pinned to a version: {spec['image']}"
        else:
            build = spec["build"]
            context = (COMPOSE_FILES[name].parent / build["context"]).resolve()
            assert context == ROOT and (context / build["dockerfile"]).is_file(), build
        depends = spec.get("depends_on", [])
        assert set(depends) <= set(services), f"{service} depends on unknown services {set(depends) - set(services)}"
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose.get("volumes", {}), f"{service}: named volume {source} is not declared"
    for service, mounts in _bind_mounts(name).items():
        for target, host in mounts.items():
            assert host.exists(), f"{name}: {service} mounts {host} (→ {target}), which does not exist"


@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_prometheus_scrapes_every_journeys_service_on_its_port(name: str) -> None:
    services = _load(name)["services"]
    prometheus = yaml.safe_load(_mounted(name, "prometheus", "/etc/prometheus/prometheus.yml").read_text())
    assert _pinned(services["prometheus"]["image"]) and "9090:9090" in services["prometheus"]["ports"]

    jobs = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in prometheus["scrape_configs"]
    }
    assert set(JOURNEYS_JOBS) <= set(jobs), jobs
    for job, role in JOURNEYS_JOBS.items():
        expected = {
            f"{svc}:{_service_port(spec, role)}"
            for svc, spec in services.items()
            if _journeys_role(spec) in (role, "both")
        }
        assert expected and set(jobs[job]) == expected, (job, jobs[job], expected)
    for job, targets in jobs.items():
        for target in targets:
            assert target.split(":")[0] in services, f"{job}: {target} is not a compose service"

    # The rule files Prometheus loads are mounted from files that exist and parse.
    for rule_file in prometheus["rule_files"]:
        assert yaml.safe_load(_mounted(name, "prometheus", rule_file).read_text())["groups"]


def test_cluster_scrapes_clickhouse_metrics_port() -> None:
    prometheus = yaml.safe_load((CLUSTER / "prometheus.yml").read_text())
    [job] = [j for j in prometheus["scrape_configs"] if j["job_name"] == "clickhouse"]
    port = ET.parse(CLUSTER / "clickhouse/config.d/cluster.xml").getroot().findtext("prometheus/port")
    assert {t for sc in job["static_configs"] for t in sc["targets"]} == {f"{n}:{port}" for n in _clickhouse_nodes()}


def _alert_rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def test_alert_rules_parse_and_cover_the_pipeline() -> None:
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["expr"].strip() and _balanced(rule["expr"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    by_metric = {
        "spool growth": "journeys_spool_bytes",
        "insert errors": "journeys_clickhouse_errors_total",
        "freshness over SLO": "journeys_spool_oldest_event_age_seconds",
        "5xx rate": 'journeys_http_requests_total{status=~"5.."}',
        "quarantined events": "journeys_events_quarantined_total",
    }
    for what, needle in by_metric.items():
        assert any(needle in r["expr"] for r in rules), f"no alert for {what} ({needle})"


def _minutes(duration: str) -> float:
    number, unit = int(duration[:-1]), duration[-1]
    return number * {"s": 1 / 60, "m": 1, "h": 60}[unit]


def test_quarantine_is_alerted_and_charted_naming_how_to_see_and_replay_it() -> None:
    """Quarantined events are not lost but unseen: the alert and the dashboard say where to look and how to
    take them back in (docs/quarantine.md)."""
    [rule] = [r for r in _alert_rules() if "journeys_events_quarantined_total" in r["expr"]]
    assert re.search(
        r"\brate\(journeys_events_quarantined_total\{[^}]*\}\[\d+m\]\)\)\s*>\s*0\s*$", rule["expr"].strip()
    ), rule
    assert _minutes(str(rule["for"])) >= 10  # a sender that keeps failing, not one bad event
    assert "journeys quarantine replay" in rule["annotations"]["summary"]
    assert "/v1/quarantine" in rule["annotations"]["summary"] + rule["annotations"]["description"]
    ingest = _dashboards()["journeys-ingest.json"]
    charted = [
        p
        for p in _panels(ingest)
        if any("journeys_events_quarantined_total" in t["expr"] for t in p.get("targets", []))
    ]
    assert any(p["type"] == "stat" and "increase(" in p["targets"][0]["expr"] for p in charted), (
        "no quarantine count panel"
    )
    for panel in charted:
        if panel["type"] == "stat" or "by (reason)" in panel["targets"][0]["expr"]:
            assert "journeys quarantine replay" in panel["description"] and "/v1/quarantine" in panel["description"], (
                panel["title"]
            )


def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((DEPLOY / "grafana/dashboards").glob("*.json"))}


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_grafana_provisions_datasource_and_dashboards(name: str) -> None:
    services = _load(name)["services"]
    grafana = services["grafana"]
    assert _pinned(grafana["image"]) and "3000:3000" in grafana["ports"]
    provisioning = _mounted(name, "grafana", "/etc/grafana/provisioning")
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["uid"] == "prometheus"
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"]).groups()  # type: ignore[union-attr]
    assert host in services and f"{port}:{port}" in services[host]["ports"]

    [provider] = yaml.safe_load((provisioning / "dashboards/journeys.yml").read_text())["providers"]
    dashboards_dir = _mounted(name, "grafana", provider["options"]["path"])
    assert dashboards_dir == DEPLOY / "grafana/dashboards" and list(dashboards_dir.glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/") and (dashboards_dir / Path(home).name).is_file()


def test_dashboards_are_well_formed() -> None:
    dashboards = _dashboards()
    assert len({d["uid"] for d in dashboards.values()}) == len(dashboards) >= 2
    for name, dashboard in dashboards.items():
        panels = _panels(dashboard)
        assert len({p["id"] for p in panels}) == len(panels), name
        for panel in panels:
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), (name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "prometheus", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["expr"].strip() and _balanced(target["expr"]), (name, panel["title"], target["expr"])
                assert target["datasource"]["uid"] == "prometheus"


def test_dashboards_cover_what_ops_watch() -> None:
    exprs = [t["expr"] for d in _dashboards().values() for p in _panels(d) for t in p.get("targets", [])]
    wanted = {
        "ingest events/s by channel": r"sum by \(channel\) \(rate\(journeys_events_accepted_total",
        "quarantined": r"journeys_events_quarantined_total",
        "rejected": r"journeys_events_rejected_total",
        "ingest latency p50": r"histogram_quantile\(0\.5, .*journeys_http_request_duration_seconds_bucket\{job=\"journeys-collector\"",
        "ingest latency p99": r"histogram_quantile\(0\.99, .*journeys_http_request_duration_seconds_bucket\{job=\"journeys-collector\"",
        "group-commit batch size": r"journeys_group_commit_requests_bucket",
        "ClickHouse insert latency": r"histogram_quantile\(0\.99, .*journeys_clickhouse_insert_duration_seconds_bucket",
        "ClickHouse errors": r"journeys_clickhouse_errors_total",
        "spool size": r"journeys_spool_bytes",
        "oldest spooled event age": r"journeys_spool_oldest_event_age_seconds",
        "end-to-end freshness": r"journeys_newest_event_age_seconds",
        "query latency by endpoint": r"histogram_quantile\(0\.99, sum by \(le, route\) "
        r"\(rate\(journeys_http_request_duration_seconds_bucket\{job=\"journeys-query\"",
    }
    for what, pattern in wanted.items():
        assert any(re.search(pattern, e) for e in exprs), f"no panel for {what}"


# --------------------------------------------------------------------------------------------------------
# Scale-out layout: deploy/cluster
# --------------------------------------------------------------------------------------------------------


def _cluster_xml() -> ET.Element:
    return ET.parse(CLUSTER / "clickhouse/config.d/cluster.xml").getroot()


def _remote_servers() -> tuple[str, list[list[tuple[str, int]]], list[bool]]:
    [cluster] = list(_cluster_xml().find("remote_servers"))  # type: ignore[arg-type]
    shards = [
        [(r.findtext("host"), int(r.findtext("port"))) for r in shard.findall("replica")]  # type: ignore[arg-type]
        for shard in cluster.findall("shard")
    ]
    internal = [shard.findtext("internal_replication") == "true" for shard in cluster.findall("shard")]
    return cluster.tag, shards, internal  # type: ignore[return-value]


def _clickhouse_nodes() -> list[str]:
    return [
        s
        for s, spec in _load("cluster")["services"].items()
        if spec.get("image", "").startswith("clickhouse/clickhouse-server:")
    ]


def test_cluster_is_two_shards_of_two_replicas() -> None:
    name, shards, internal = _remote_servers()
    assert [len(s) for s in shards] == [2, 2] and all(internal)
    hosts = [host for shard in shards for host, _ in shard]
    assert sorted(hosts) == sorted(_clickhouse_nodes()) and len(set(hosts)) == 4
    assert all(port == 9000 for shard in shards for _, port in shard)
    assert _cluster_xml().find("remote_servers").get("replace") == "true"  # type: ignore[union-attr]


def test_each_node_macros_match_its_place_in_the_cluster() -> None:
    name, shards, _ = _remote_servers()
    services = _load("cluster")["services"]
    for shard_no, shard in enumerate(shards, start=1):
        for host, _ in shard:
            spec = services[host]
            assert spec["hostname"] == host
            macros_file = _mounted("cluster", host, "/etc/clickhouse-server/config.d/macros.xml")
            root = ET.parse(macros_file).getroot()
            assert root.findtext("macros/shard") == str(shard_no), host
            assert root.findtext("macros/replica") == host
            assert root.findtext("macros/cluster") == name
            assert root.findtext("interserver_http_host") == host
            assert (
                _mounted("cluster", host, "/etc/clickhouse-server/config.d/cluster.xml")
                == CLUSTER / "clickhouse/config.d/cluster.xml"
            )
            users = _mounted("cluster", host, "/etc/clickhouse-server/users.d/journeys.xml")
            profile = ET.parse(users).getroot().find("profiles/default")
            assert profile.findtext("distributed_foreground_insert") == "1"  # type: ignore[union-attr]
            assert spec["environment"]["CLICKHOUSE_DB"] == "journeys"
    # Same version everywhere, Keeper included.
    images = {s["image"].split(":")[1] for s in services.values() if s.get("image", "").startswith("clickhouse/")}
    assert len(images) == 1


def test_keeper_ensemble_is_consistent() -> None:
    services = _load("cluster")["services"]
    keepers = {
        s: spec for s, spec in services.items() if spec.get("image", "").startswith("clickhouse/clickhouse-keeper:")
    }
    assert len(keepers) == 3
    config = ET.parse(CLUSTER / "keeper/keeper.xml").getroot()
    raft = {
        int(s.findtext("id")): (s.findtext("hostname"), s.findtext("port"))  # type: ignore[arg-type]
        for s in config.findall("keeper_server/raft_configuration/server")
    }
    assert sorted(raft) == [1, 2, 3]
    tcp_port = config.findtext("keeper_server/tcp_port")
    assert config.find("keeper_server/server_id").get("from_env") == "KEEPER_SERVER_ID"  # type: ignore[union-attr]
    for service, spec in keepers.items():
        server_id = int(spec["environment"]["KEEPER_SERVER_ID"])
        assert raft[server_id][0] == service == spec["hostname"]
        assert _mounted("cluster", service, "/etc/clickhouse-keeper/keeper_config.xml") == CLUSTER / "keeper/keeper.xml"
    zookeeper = [(n.findtext("host"), n.findtext("port")) for n in _cluster_xml().findall("zookeeper/node")]
    assert sorted(zookeeper) == sorted((k, tcp_port) for k in keepers)


def _nginx_parse(text: str) -> list:
    """nginx config → [(directive, [args], children or None)], checking its block structure as nginx does:
    every directive ends with ``;`` or opens a ``{`` block, quotes and braces balance."""
    tokens = re.findall(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|#[^\n]*|[{};]|[^\s{};'\"#]+", text)
    tokens = [t for t in tokens if not t.startswith("#")]
    stack: list[list] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            assert words, "empty directive"
            stack[-1].append((words[0], words[1:], None))
            words = []
        elif token == "{":
            assert words, "block without a name"
            block: list = []
            stack[-1].append((words[0], words[1:], block))
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"directive not terminated: {words}"
            stack.pop()
            assert stack, "unbalanced }"
        else:
            words.append(token)
    assert not words and len(stack) == 1, "unterminated config"
    return stack[0]


def _nginx(path: Path) -> tuple[dict[str, list[str]], list[int]]:
    """(upstream name → its servers, ports listened on); every proxy_pass names a defined upstream."""
    [(_, _, http)] = [d for d in _nginx_parse(path.read_text()) if d[0] == "http"]
    upstreams = {
        args[0]: [c[1][0] for c in body if c[0] == "server"] for name, args, body in http if name == "upstream"
    }
    servers = [body for name, _, body in http if name == "server"]
    listens = [int(c[1][0]) for body in servers for c in body if c[0] == "listen"]

    def walk(body: list):  # type: ignore[no-untyped-def]
        for name, args, children in body:
            yield name, args
            if children:
                yield from walk(children)

    for name, args in walk(http):
        if name == "proxy_pass":
            assert args[0].removeprefix("http://") in upstreams, (path, args)
    for upstream, body in ((a[0], b) for n, a, b in http if n == "upstream"):
        if any("resolve" in c[1] for c in body if c[0] == "server"):
            assert any(c[0] == "zone" for c in body), f"{path}: upstream {upstream} uses resolve without a zone"
            assert any(n == "resolver" for n, _, _ in http), f"{path}: resolve needs a resolver"
    return upstreams, listens


def test_collectors_are_stateless_behind_a_load_balancer() -> None:
    services = _load("cluster")["services"]
    collectors = sorted(s for s, spec in services.items() if _journeys_role(spec) == "collector")
    queries = sorted(s for s, spec in services.items() if _journeys_role(spec) == "query")
    assert len(collectors) >= 3 and len(queries) >= 1
    spools = [next(v for v in services[c]["volumes"] if v.endswith(":/data")) for c in collectors]
    assert len(set(spools)) == len(collectors), "each collector needs a spool volume of its own"

    upstreams, listens = _nginx(_mounted("cluster", "lb", "/etc/nginx/nginx.conf"))
    assert sorted(upstreams["collectors"]) == [f"{c}:{_service_port(services[c], 'collector')}" for c in collectors]
    assert sorted(upstreams["queries"]) == [f"{q}:{_service_port(services[q], 'query')}" for q in queries]
    assert sorted(listens) == [8080, 8081]
    assert sorted(services["lb"]["ports"]) == ["8080:8080", "8081:8081"]
    assert _pinned(services["lb"]["image"])
    assert set(collectors + queries) <= set(services["lb"]["depends_on"])

    ch_upstreams, ch_listens = _nginx(_mounted("cluster", "ch-lb", "/etc/nginx/nginx.conf"))
    assert sorted(ch_upstreams["clickhouse"]) == sorted(f"{n}:8123" for n in _clickhouse_nodes())
    assert ch_listens == [8123]


def test_cluster_services_run_the_cluster_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _load("cluster")["services"]
    cluster_name, _, _ = _remote_servers()
    render = _render_schema_module()
    assert render.CLUSTER == cluster_name
    assert services["migrate"]["command"] == ["journeys", "migrate"]
    for service, spec in services.items():
        if _journeys_role(spec) is None and service != "migrate":
            continue
        env = spec["environment"]
        assert env["JOURNEYS_CLICKHOUSE_CLUSTER"] == cluster_name, service
        with monkeypatch.context() as m:  # the whole environment is a valid configuration
            for variable in [
                v for v in os.environ if v.startswith("JOURNEYS_") or v in ("CLICKHOUSE_URL", "DATABASE_URL")
            ]:
                m.delenv(variable)
            for variable, value in env.items():
                m.setenv(variable, str(value))
            settings = load_settings()
        assert settings.clickhouse_cluster == cluster_name
        assert settings.log_format == "json"
        assert not settings.clickhouse_is_embedded and not settings.postgres_is_embedded
        host = re.search(r"@([\w-]+):8123/", env["CLICKHOUSE_URL"]).group(1)  # type: ignore[union-attr]
        assert host == "ch-lb" and "8123" in str(_nginx(CLUSTER / "nginx/clickhouse-lb.conf")[1])
        assert re.search(r"@postgres:5432/", env["DATABASE_URL"])
        if service != "migrate":
            assert services[service]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def _render_schema_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_schema", CLUSTER / "render_schema.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_cluster_schema_file_is_the_current_rendering() -> None:
    render = _render_schema_module()
    assert (CLUSTER / "schema.sql").read_text() == render.render(), (
        "deploy/cluster/schema.sql is stale: run python deploy/cluster/render_schema.py"
    )


async def test_cluster_schema_parses_with_clickhouse(stores) -> None:  # type: ignore[no-untyped-def]
    from journeys.migrate import clickhouse_migrations, split_statements

    statements = split_statements((CLUSTER / "schema.sql").read_text())
    expected = [s for m in clickhouse_migrations(_render_schema_module().CLUSTER) for s in m.statements]
    assert statements == expected
    assert any(
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}'" in s
        for s in statements
    )
    assert any(
        "Distributed('journeys', currentDatabase(), events_local, cityHash64(project_id, distinct_id))" in s
        for s in statements
    )
    for statement in statements:
        _, rows = await stores.clickhouse.query(f"EXPLAIN AST {statement}")
        assert rows, statement


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    sources = [s for line in dockerfile.splitlines() if line.startswith("COPY ") for s in line.split()[1:-1]]
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert set(sources) <= allowed, set(sources) - allowed


def test_scaling_doc_is_linked() -> None:
    assert (DEPLOY / "SCALING.md").is_file()
    assert "deploy/SCALING.md" in (ROOT / "README.md").read_text()


async def test_stage_facts_sql_parses_with_clickhouse(stores) -> None:  # type: ignore[no-untyped-def]
    """The facts statements (query/facts/compute.py) are the same text on a cluster, where their table names are
    the Distributed tables: ClickHouse's parser takes each one (deploy/SCALING.md, "Stage facts")."""
    from query.maps import validate_map, validate_segment
    from query.facts.compute import (
        COPY_FACTS_SQL,
        COPY_INPUTS_SQL,
        COPY_MAP_FACTS_SQL,
        INSERT_WITHDRAWAL,
        RECONVERTED_FACTS_SQL,
        TRANSPLANT_FACTS_SQL,
        TRANSPLANT_INPUTS_SQL,
        FactsSql,
    )
    from query.facts.model import FACT_COLUMNS, Definitions
    from query.facts.restage import Restaging

    template = yaml.safe_load((ROOT / "cli/templates/five-stage.yaml").read_text())
    segments = [
        {"name": "vip", "rules": [{"field": "traits.plan", "op": "in", "value": ["pro"]}]},
        {"name": "web", "rules": [{"field": "first_channel", "op": "equals", "value": "web"}]},
    ]
    defs = Definitions.of([(validate_map(template), 1)], [(validate_segment(s), 1) for s in segments])
    facts = FactsSql(defs)
    # reordered, and a touchpoint whose id sorts first: every stored rule number moves (a renumbered copy)
    added = {"id": "a-new", "stage": template["stages"][0]["id"], "match": {"event": "X"}}
    edited = {**template, "touchpoints": [*reversed(template["touchpoints"]), added]}
    restage = Restaging(defs, Definitions.of([(validate_map(edited), 2)], [(validate_segment(s), 1) for s in segments]))
    # a window edit: its corrections, of everyone or of those written since, and their copy into the serving build
    windows = {**template, "stages": [{**stage, "conversion_window_days": 1} for stage in template["stages"]]}
    reconverting = FactsSql(Definitions.of([(validate_map(windows), 3)], [(validate_segment(s), 1) for s in segments]))
    statements = (
        restage.copy_sql,
        COPY_FACTS_SQL,
        COPY_MAP_FACTS_SQL,
        facts.insert_all(", ".join(FACT_COLUMNS)),
        facts.insert_all_from_inputs(", ".join(FACT_COLUMNS)),
        facts.insert_inputs("project"),
        facts.insert_inputs("ids"),
        facts.insert_merged(),
        facts.insert_difference(", ".join(FACT_COLUMNS), held=True),
        facts.insert_difference(", ".join(FACT_COLUMNS), held=False),
        INSERT_WITHDRAWAL,
        COPY_INPUTS_SQL,
        TRANSPLANT_INPUTS_SQL,
        TRANSPLANT_FACTS_SQL,
        reconverting.insert_reconverted(", ".join(FACT_COLUMNS), facts),
        reconverting.insert_reconverted(", ".join(FACT_COLUMNS), facts, written_since=True),
        RECONVERTED_FACTS_SQL,
    )
    assert restage.copy_sql != COPY_INPUTS_SQL  # renumbered
    for statement in statements:
        assert "distributed_product_mode = 'global'" in statement
        params = {
            **facts.params,
            **restage.params,
            **reconverting.params,
            "project_id": "p",
            "build": 1,
            "inputs_build": 1,
            "from_build": 1,
            "ids": ["a"],
            "owners": ["a"],
            "customers": ["a"],
            "generation": 1,
            "since": "2026-01-01 00:00:00",
            "maps": ["five-stage"],
        }
        _, rows = await stores.clickhouse.query(f"EXPLAIN AST {statement}", params)
        assert rows, statement
    # A rule edit's scan reads only the events table (no join): the same on a cluster.
    for scan in (restage.scan_sql, restage.scan_since_sql):
        _, rows = await stores.clickhouse.query(
            f"EXPLAIN AST {scan}", {**restage.params, "project_id": "p", "limit": 1, "since": "2026-01-01 00:00:00"}
        )
        assert rows
