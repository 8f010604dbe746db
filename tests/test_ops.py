"""Operations: structured JSON logs with the request id, and the metrics the dashboards and alerts use.

The metrics check scrapes ``/metrics`` from a running collector and a running query service (real HTTP on
127.0.0.1, separate registries as in the compose deployment) after real traffic, and compares with every
metric name the Grafana dashboards and Prometheus alert rules under ``deploy/`` reference — both ways.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from journeys.config import ConfigError, load_settings
from journeys.http import make_middleware
from journeys.logs import JsonFormatter, bind_request_id, make_handler, reset_request_id, setup_logging
from journeys.metrics import Metrics
from support import basic, wait_drained

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


# --------------------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Leave the root logger as we found it (handlers, level) whatever a test installs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_time_level_logger_message_request_id_and_exception() -> None:
    buffer = io.StringIO()
    logger = logging.getLogger("journeys.test.json")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(make_handler("json", buffer))
    try:
        logger.info("outside %s", "any request")
        token = bind_request_id("req-abc")
        try:
            logger.warning("inside", extra={"rows": 3})
            try:
                raise ValueError("boom\nsecond line")
            except ValueError:
                logger.exception("failed")
        finally:
            reset_request_id(token)
        logger.info("after")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    assert len(buffer.getvalue().splitlines()) == 4  # one line per record, the traceback escaped inside it
    outside, inside, failed, after = _lines(buffer)
    assert set(outside) == {"time", "level", "logger", "message"}
    assert outside["message"] == "outside any request" and outside["level"] == "INFO"
    assert outside["logger"] == "journeys.test.json"
    assert datetime.fromisoformat(outside["time"].replace("Z", "+00:00")).tzinfo is not None
    assert inside["request_id"] == "req-abc" and inside["level"] == "WARNING" and inside["rows"] == 3
    assert failed["request_id"] == "req-abc" and failed["level"] == "ERROR"
    assert "Traceback" in failed["exception"] and "ValueError: boom\nsecond line" in failed["exception"]
    assert "request_id" not in after


def test_log_level_and_format_come_from_configuration(root_logging, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from cli.main import _setup_logging

    monkeypatch.delenv("JOURNEYS_LOG_FORMAT", raising=False)
    _setup_logging(load_settings(log_level="WARNING"))
    log = logging.getLogger("journeys.test.level")
    log.info("dropped")
    log.warning("kept")
    [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert (line["message"], line["level"]) == ("kept", "WARNING")
    assert logging.getLogger().level == logging.WARNING
    assert len([h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]) == 1

    monkeypatch.setenv("JOURNEYS_LOG_FORMAT", "text")
    _setup_logging(load_settings(log_level="DEBUG"))  # replaces the handler installed above, no duplicates
    token = bind_request_id("r-1")
    try:
        log.debug("plain %d", 1)
    finally:
        reset_request_id(token)
    [text] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\S+ \S+ DEBUG journeys\.test\.level \[r-1\]: plain 1", text), text

    monkeypatch.setenv("JOURNEYS_LOG_FORMAT", "yaml")  # a bad value fails like every setting: named
    with pytest.raises(ConfigError, match="JOURNEYS_LOG_FORMAT"):
        load_settings()


async def test_every_record_of_a_request_carries_its_id(root_logging, http) -> None:  # type: ignore[no-untyped-def]
    buffer = io.StringIO()
    setup_logging("INFO", "json", buffer)
    handler_log = logging.getLogger("journeys.test.handler")

    async def fine(_: web.Request) -> web.Response:
        handler_log.info("working")
        return web.json_response({"ok": True})

    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("kaput")

    app = web.Application(middlewares=[make_middleware(Metrics(), "test")])
    app.router.add_get("/fine", fine)
    app.router.add_get("/broken", broken)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with http.get(server.make_url("/fine"), headers={"X-Request-Id": "given-1"}) as resp:
            assert resp.status == 200
        async with http.get(server.make_url("/broken")) as resp:
            assert resp.status == 500
            minted = resp.headers["X-Request-Id"]
    finally:
        await server.close()
    lines = _lines(buffer)
    working = next(line for line in lines if line["message"] == "working")
    assert working["request_id"] == "given-1" and working["logger"] == "journeys.test.handler"
    error = next(line for line in lines if line["level"] == "ERROR")
    assert error["request_id"] == minted and "RuntimeError: kaput" in error["exception"]
    access = [line for line in lines if line["logger"] == "journeys.access"]
    assert [(a["request_id"], a["route"], a["status"]) for a in access] == [
        ("given-1", "/fine", 200),
        (minted, "/broken", 500),
    ]


async def test_access_log_line_per_request_without_secrets(root_logging, http, collector, query, project) -> None:  # type: ignore[no-untyped-def]
    buffer = io.StringIO()
    setup_logging("INFO", "json", buffer)
    customer = "alice@example.com"
    async with http.post(
        collector.make_url("/v1/track"),
        json={"userId": customer, "event": "Signed Up"},
        headers={**basic(project.write_key), "X-Request-Id": "ingest-42"},
    ) as resp:
        assert resp.status == 200
    from support import wait_drained

    await wait_drained(collector)  # stored: a customer with no event yet is a 404
    async with http.get(
        query.make_url(f"/v1/customers/{customer}/events"), headers={"Authorization": f"Bearer {project.read_key}"}
    ) as resp:
        assert resp.status == 200
        query_id = resp.headers["X-Request-Id"]
    access = {line["request_id"]: line for line in _lines(buffer) if line["logger"] == "journeys.access"}
    ingest = access["ingest-42"]
    assert (ingest["level"], ingest["service"], ingest["method"], ingest["route"], ingest["status"]) == (
        "INFO",
        "collector",
        "POST",
        "/v1/track",
        200,
    )
    assert isinstance(ingest["duration_ms"], float) and ingest["duration_ms"] >= 0
    read = access[query_id]
    assert (read["service"], read["method"], read["route"], read["status"]) == (
        "query",
        "GET",
        "/v1/customers/{customer_id}/events",
        200,
    )
    text = buffer.getvalue()
    for secret in (project.write_key, project.read_key, "Basic ", "Bearer ", "Authorization", customer):
        assert secret not in text, secret


async def test_probes_scrapes_and_dashboard_refreshes_are_logged_at_debug_only(  # type: ignore[no-untyped-def]
    root_logging, http, collector, query, project
) -> None:
    """`journeys up` logged every 5-second dashboard poll at INFO (474 lines in 6 minutes): probes, scrapes and
    the dashboard's refreshes (X-Journeys-Poll: 1) go to DEBUG, unless they fail."""
    buffer = io.StringIO()
    setup_logging("INFO", "json", buffer)
    for server in (collector, query):
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(server.make_url(path)) as resp:
                assert resp.status == 200
    read = {"Authorization": f"Bearer {project.read_key}"}
    async with http.get(query.make_url("/v1/stats"), headers={**read, "X-Journeys-Poll": "1"}) as resp:
        assert resp.status == 200
    async with http.get(query.make_url("/v1/stats"), headers={"X-Journeys-Poll": "1"}) as resp:
        assert resp.status == 401  # a failing poll is still worth a line
    async with http.get(query.make_url("/v1/stats"), headers=read) as resp:
        assert resp.status == 200  # a person's request
    access = [(a["route"], a["status"]) for a in _lines(buffer) if a["logger"] == "journeys.access"]
    assert access == [("/v1/stats", 401), ("/v1/stats", 200)], access
    buffer = io.StringIO()
    setup_logging("DEBUG", "json", buffer)
    async with http.get(collector.make_url("/healthz")) as resp:
        assert resp.status == 200
    assert [a["level"] for a in _lines(buffer) if a["logger"] == "journeys.access"] == ["DEBUG"]


# --------------------------------------------------------------------------------------------------------
# Metrics: what deploy/ references is what the services export
# --------------------------------------------------------------------------------------------------------

PROMETHEUS_BUILTINS = {"up"}  # synthesized by Prometheus per target, not exported by anyone
PROMQL_WORDS = {
    # functions
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log2",
    "log10",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
    "year",
    # aggregations and keywords
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, strings, ranges removed)."""
    e = re.sub(r"\[[^\]]*\]", "", _STRING.sub('""', expr))
    e = re.sub(r"\{[^}]*\}", "", e)
    e = _GROUPING.sub(" ", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)  # Grafana variables
    words = re.findall(r"(?<![\w.$])[a-zA-Z_:][\w:]*", e)
    return {w for w in words if w.lower() not in PROMQL_WORDS}


def _expressions() -> dict[str, list[str]]:
    """Where each PromQL expression in deploy/ lives → the expressions there."""
    out: dict[str, list[str]] = {}
    for path in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                out.setdefault(f"{path.name}: {panel['title']}", []).append(target["expr"])
    for rule in (
        r for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"] for r in g["rules"]
    ):
        out.setdefault(f"alerts.yml: {rule['alert']}", []).append(rule["expr"])
    return out


def _jobs() -> set[str]:
    jobs = set()
    for config in (DEPLOY / "prometheus/prometheus.yml", DEPLOY / "cluster/prometheus.yml"):
        jobs |= {j["job_name"] for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    return jobs


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(journeys_http_request_duration_seconds_bucket"
        '{job="journeys-query", route=~"/v1/.*"}[$__rate_interval]))) > 1e3 and on (instance) up == 0 '
        "or sum(rate(a_total[5m] offset 1h)) / ignoring(x) b"
    )
    assert metric_names(expr) == {"journeys_http_request_duration_seconds_bucket", "up", "a_total", "b"}


class Scrape:
    """One service's /metrics: sample names with their label sets, and every name its families declare."""

    def __init__(self, text: str):
        self.samples: dict[str, list[dict[str, str]]] = {}
        self.declared: set[str] = set()
        self.families: set[str] = set()
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
            "summary": ("_sum", "_count", "_created"),
            "untyped": ("",),
        }
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            self.declared |= {family.name + s for s in suffixes.get(family.type, ("",))}
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append(sample.labels)
        # prometheus-client's text format exposes each counter's and histogram's creation time as a gauge
        # family of its own (NAME_created): a timestamp, not something to chart.
        self.families = {
            f for f in self.families if not (f.endswith("_created") and f.removesuffix("_created") in self.families)
        }


def _declared_labels() -> dict[str, set[str]]:
    """Exported sample name → its label names, from the Metrics definitions (covers series not yet created)."""
    out: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, (Counter, Gauge, Histogram)):
            labels = set(metric._labelnames)  # noqa: SLF001 - prometheus-client keeps them here
            for family in metric.describe():
                for suffix in ("", "_total", "_bucket", "_sum", "_count"):
                    out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def _exports(scrape: Scrape, name: str, declared_labels: dict[str, set[str]]) -> bool:
    """A series of ``name`` is in the scrape, or its family is declared with labels (a labelled series
    appears on its first increment, e.g. the ClickHouse errors counter)."""
    return name in scrape.samples or (name in scrape.declared and bool(declared_labels.get(name, set()) - {"le"}))


@pytest.fixture
async def scraped(http, collector, query, project) -> dict[str, Scrape]:  # type: ignore[no-untyped-def]
    """Real traffic through both services, then their /metrics (as Prometheus' two journeys jobs see them)."""
    batch = [
        {"type": "track", "userId": "m1", "event": "Viewed", "channel": "web"},
        {"type": "track", "userId": "m1", "event": "Bought", "channel": "store"},
        {"type": "track", "userId": "m1"},  # no event name: quarantined
    ]
    async with http.post(
        collector.make_url("/v1/batch"), json={"batch": batch}, headers=basic(project.write_key)
    ) as resp:
        assert resp.status == 200 and (await resp.json())["accepted"] == 2
    async with http.post(
        collector.make_url("/v1/track"), json={"userId": "x", "event": "E"}, headers=basic("jw_nope")
    ) as resp:
        assert resp.status == 401  # rejected
    await wait_drained(collector)  # the inserter has run: insert latency and rows observed
    async with http.get(query.make_url("/v1/stats"), headers=basic(project.read_key)) as resp:
        assert resp.status == 200
    async with http.get(query.make_url("/v1/customers/m1/events"), headers=basic(project.read_key)) as resp:
        assert resp.status == 200
    out = {}
    for job, server in (("journeys-collector", collector), ("journeys-query", query)):
        async with http.get(server.make_url("/metrics")) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            out[job] = Scrape(await resp.text())
    return out


async def test_every_metric_deploy_references_is_exported(scraped) -> None:  # type: ignore[no-untyped-def]
    exported = set().union(*(s.declared for s in scraped.values()))
    declared_labels = _declared_labels()
    jobs = _jobs()
    problems = []
    expressions = _expressions()
    assert len(expressions) >= 20
    for where, exprs in expressions.items():
        for expr in exprs:
            names = metric_names(expr)
            if not names:
                problems.append(f"{where}: no metric in {expr!r}")
            for name in names - PROMETHEUS_BUILTINS:
                if name not in exported:
                    problems.append(f"{where}: {name} is not exported by any service")
            # Label matchers: job names exist in the Prometheus configs and that job's service exports the
            # metric; every other label exists on the metric.
            for name, matchers in _SELECTOR.findall(_STRING.sub(lambda m: m.group(0).replace("}", ")"), expr)):
                for label, op, value in _MATCHER.findall(matchers):
                    if label == "job":
                        if op == "=":
                            if value not in jobs:
                                problems.append(f"{where}: job {value!r} is not scraped")
                            elif value in scraped and not _exports(scraped[value], name, declared_labels):
                                problems.append(f"{where}: job {value} does not export {name}")
                        continue
                    if name in PROMETHEUS_BUILTINS or label == "instance":
                        continue
                    if label not in declared_labels.get(name, set()):
                        problems.append(f"{where}: {name} has no label {label!r}")
                    elif op == "=" and not any(
                        s.get(label) == value for sc in scraped.values() for s in sc.samples.get(name, [])
                    ):
                        problems.append(f"{where}: no {name} series with {label}={value!r}")
            # Grouping labels exist on at least one metric of the expression (or are target labels).
            labels = {"instance", "job"}.union(*(declared_labels.get(n, set()) for n in names))
            for group in _GROUPING.findall(_STRING.sub('""', expr)):
                for label in filter(None, (g.strip() for g in group.split(","))):
                    if label not in labels:
                        problems.append(f"{where}: groups by {label!r}, which none of {sorted(names)} has")
    assert not problems, "\n".join(problems)


# Exported journeys_* families deliberately on no dashboard panel (name → why). Keep it short.
NOT_ON_DASHBOARDS: dict[str, str] = {}


async def test_every_exported_metric_is_on_a_dashboard(scraped) -> None:  # type: ignore[no-untyped-def]
    families = {f for s in scraped.values() for f in s.families if f.startswith("journeys_")}
    assert len(families) >= 10
    used = set()
    for where, exprs in _expressions().items():
        if where.startswith("alerts.yml"):
            continue
        for expr in exprs:
            used |= metric_names(expr)
    unused = {
        f
        for f in families
        if not any(
            n == f or n.startswith(f + "_") and n[len(f) :] in ("_total", "_bucket", "_sum", "_count") for n in used
        )
    }
    assert unused == set(NOT_ON_DASHBOARDS), (
        f"exported but on no dashboard panel: {sorted(unused - set(NOT_ON_DASHBOARDS))}"
    )


async def test_key_metrics_have_live_series_after_traffic(scraped) -> None:  # type: ignore[no-untyped-def]
    collector, query = scraped["journeys-collector"], scraped["journeys-query"]
    channels = {s["channel"] for s in collector.samples["journeys_events_accepted_total"]}
    assert {"web", "store"} <= channels
    assert (
        collector.samples["journeys_events_quarantined_total"] and collector.samples["journeys_events_rejected_total"]
    )
    for name in (
        "journeys_group_commit_requests_count",
        "journeys_request_events_count",
        "journeys_clickhouse_insert_rows_count",
        "journeys_clickhouse_insert_duration_seconds_count",
        "journeys_spool_bytes",
        "journeys_spool_oldest_event_age_seconds",
        "journeys_newest_event_age_seconds",
    ):
        assert collector.samples.get(name), name
    routes = {s["route"] for s in query.samples["journeys_http_request_duration_seconds_count"]}
    assert {"/v1/stats", "/v1/customers/{customer_id}/events"} <= routes
    assert {s["service"] for s in query.samples["journeys_http_requests_total"]} == {"query"}
    # The errors counter is declared (its series appears on the first failure), so alerts can name it.
    assert "journeys_clickhouse_errors_total" in collector.declared


def test_one_process_exports_each_series_on_one_port_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`journeys up` runs both services in one process; scraping both ports used to count everything twice."""
    import json
    import urllib.request

    from testkit.service import Service, create_project, stop_leftover_postgres

    service = Service(tmp_path)
    try:
        service.start()
        key = create_project(tmp_path, "metrics-once")["write_key"]
        request = urllib.request.Request(
            f"{service.collector}/v1/track",
            data=json.dumps({"userId": "u", "event": "E"}).encode(),
            headers={"Content-Type": "application/json", **basic(key)},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        scrapes = {}
        for name, base in (("collector", service.collector), ("query", service.query)):
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
                scrapes[name] = Scrape(resp.read().decode())
        collector, query = scrapes["collector"], scrapes["query"]
        assert collector.samples.get("journeys_events_accepted_total")
        assert not query.samples.get("journeys_events_accepted_total")
        assert {s["service"] for s in collector.samples["journeys_http_requests_total"]} == {"collector"}
        assert {s["service"] for s in query.samples.get("journeys_http_requests_total", [])} <= {"query"}
    finally:
        if service.proc is not None:
            service.stop()
        stop_leftover_postgres(tmp_path)
