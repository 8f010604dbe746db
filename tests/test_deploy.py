"""docker-compose and deploy/ are for users (no Docker engine runs here): check them by parsing."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from journeys.config import Settings

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
    settings = Settings(clickhouse_url=env["CLICKHOUSE_URL"], database_url=env["DATABASE_URL"])
    assert not settings.clickhouse_is_embedded and not settings.postgres_is_embedded


def test_dockerfile_copies_paths_that_exist() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    sources = [src for group in copied for src in group]
    assert sources and all((ROOT / src).exists() for src in sources), sources
    assert 'CMD ["journeys", "up"]' in dockerfile
