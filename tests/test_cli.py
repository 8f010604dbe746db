"""The `journeys` command as a user runs it, and configuration errors as an operator sees them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from journeys.config import ConfigError, load_settings
from testkit.service import journeys, stop_leftover_postgres


@pytest.fixture
def data_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield tmp_path
    stop_leftover_postgres(tmp_path)


def test_project_create_prints_keys_and_stores_only_hashes(data_dir: Path) -> None:
    done = journeys(data_dir, "project", "create", "Acme Retail", "--json")
    assert done.returncode == 0, done.stderr
    project = json.loads(done.stdout)
    assert project["name"] == "Acme Retail" and project["id"].startswith("p_")
    assert project["write_key"].startswith("jw_") and project["read_key"].startswith("jr_")
    human = journeys(data_dir, "project", "create", "Second")
    assert human.returncode == 0 and "write key jw_" in human.stdout and "read key  jr_" in human.stdout
    duplicate = journeys(data_dir, "project", "create", "Acme Retail")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    bad = journeys(data_dir, "project", "create", "../etc")
    assert bad.returncode == 1 and "project name" in bad.stderr
    # The secrets are nowhere in the database files, only their hashes.
    import subprocess

    dump = subprocess.run(["grep", "-r", "-l", project["write_key"], str(data_dir / "postgres")], capture_output=True)
    assert dump.stdout == b""


def test_migrate_is_idempotent(data_dir: Path) -> None:
    first = journeys(data_dir, "migrate")
    assert first.returncode == 0, first.stderr
    assert "0001_projects.sql" in first.stdout and "0001_events.sql" in first.stdout
    second = journeys(data_dir, "migrate")
    assert second.returncode == 0 and second.stdout.count("up to date") == 2


@pytest.mark.parametrize(
    "env,name",
    [
        ({"JOURNEYS_COLLECTOR_PORT": "80000"}, "JOURNEYS_COLLECTOR_PORT"),
        ({"JOURNEYS_MAX_EVENT_BYTES": "lots"}, "JOURNEYS_MAX_EVENT_BYTES"),
        ({"CLICKHOUSE_URL": "mysql://x"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "chdb://relative/path"}, "CLICKHOUSE_URL"),
        ({"DATABASE_URL": "http://pg"}, "DATABASE_URL"),
        ({"JOURNEYS_LOG_LEVEL": "chatty"}, "JOURNEYS_LOG_LEVEL"),
    ],
)
def test_bad_config_fails_at_start_naming_the_variable(data_dir: Path, env: dict[str, str], name: str) -> None:
    done = journeys(data_dir, "up", **env)
    assert done.returncode == 2
    assert name in done.stderr and "invalid configuration" in done.stderr


def test_settings_defaults_are_embedded_under_one_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JOURNEYS_DATA_DIR", str(tmp_path))
    for name in ("CLICKHOUSE_URL", "DATABASE_URL", "JOURNEYS_SPOOL_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.clickhouse_is_embedded and settings.postgres_is_embedded
    assert settings.effective_clickhouse_url == f"chdb://{tmp_path.resolve()}/clickhouse"
    assert settings.resolved_spool_dir == tmp_path.resolve() / "spool"
    assert (settings.collector_port, settings.query_port) == (8080, 8081)
    monkeypatch.setenv("CLICKHOUSE_URL", "https://default:secret@ch.example:8443/journeys")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/journeys")
    real = load_settings()
    assert not real.clickhouse_is_embedded and not real.postgres_is_embedded
    monkeypatch.setenv("JOURNEYS_MAX_EVENT_BYTES", "999999999")
    with pytest.raises(ConfigError, match="JOURNEYS_MAX_EVENT_BYTES"):
        load_settings()


def test_the_data_directory_is_found_from_below_and_never_made_anew_elsewhere(tmp_path: Path) -> None:
    """Run from a sub-folder, a command finds the .journeys that `journeys up` made above it; run from an
    unrelated folder, it refuses instead of starting a second, empty store (which used to answer "no project
    named 'demo'")."""
    import os
    import subprocess
    import sys

    from testkit.service import cli_env

    home, elsewhere = tmp_path / "shop", tmp_path / "elsewhere"
    (home / "src" / "deep").mkdir(parents=True)
    elsewhere.mkdir()
    (home / ".journeys").mkdir()  # as `journeys up` makes it, run from `home`
    env = cli_env(tmp_path)
    del env["JOURNEYS_DATA_DIR"]

    def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )

    try:
        created = run(home / "src" / "deep", "project", "create", "found", "--env")
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("export WRITE_KEY=jw_") and "export READ_KEY=jr_" in created.stdout
        assert (home / ".journeys" / "postgres").is_dir() and not (home / "src" / "deep" / ".journeys").exists()
        listed = run(home / "src", "map", "list", "--project", "found")
        assert listed.returncode == 0, listed.stderr
        refused = run(elsewhere, "map", "list", "--project", "found")
        assert (
            refused.returncode == 2
            and "no journeys data directory" in refused.stderr
            and "JOURNEYS_DATA_DIR" in refused.stderr
        )
        assert os.listdir(elsewhere) == []
        assert run(elsewhere, "map", "template", "five-stage").returncode == 0  # needs no store
        # An import by key needs no store: it gets as far as the (missing) file.
        sent = run(elsewhere, "import", "none.ndjson", "--write-key", "jw_x", "--collector", "http://127.0.0.1:9")
        assert "no journeys data directory" not in sent.stderr and "none.ndjson" in sent.stderr, sent.stderr
        assert os.listdir(elsewhere) == []
    finally:
        stop_leftover_postgres(home / ".journeys")
