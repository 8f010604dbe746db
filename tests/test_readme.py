"""The README's Quickstart is the contract with a new user: keep CI running exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_quickstart_has_a_run_command_and_a_test_command() -> None:
    blocks = _quickstart_blocks()
    assert len(blocks) >= 2
    run, test = blocks[0], blocks[1]
    assert "pip install" in run and run.rstrip().endswith("journeys up")
    assert "pip install" in test and "pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _quickstart_blocks()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


@pytest.mark.slow
def test_the_quickstart_commands_run_as_written(tmp_path: Path) -> None:
    """The second terminal's commands, verbatim but for the ports (the test's service has free ones), run by
    bash from the folder where `journeys up` runs: no JOURNEYS_DATA_DIR, so the data directory is found as
    a user's would be; keys captured by the commands themselves; every step succeeds."""
    import json
    import os
    import subprocess
    import sys

    from testkit.service import Service, cli_env, stop_leftover_postgres

    blocks = _quickstart_blocks()[2:]
    assert any("project create demo --env" in b for b in blocks), blocks
    (tmp_path / ".journeys").mkdir()  # where `journeys up` would make it, run from tmp_path
    service = Service(tmp_path / ".journeys")
    try:
        service.start()
        env = cli_env(tmp_path)
        del env["JOURNEYS_DATA_DIR"]  # found from the working directory, as a user's shell would
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's journeys
        script = "set -euo pipefail\n" + "\n".join(blocks)
        script = script.replace("127.0.0.1:8080", f"127.0.0.1:{service.collector_port}")
        script = script.replace("127.0.0.1:8081", f"127.0.0.1:{service.query_port}")
        done = subprocess.run(
            ["bash", "-c", script + "\necho\n"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
        answers, decoder, at = [], json.JSONDecoder(), 0  # curl prints no newline: JSON bodies run together
        while (at := done.stdout.find('{"', at)) != -1:
            try:
                answer, end = decoder.raw_decode(done.stdout, at)
            except ValueError:
                at += 1
                continue
            answers.append(answer)
            at = end
        events = next(a for a in answers if "events" in a)
        journey = next(a for a in answers if "touchpoints" in a)
        kpis = next(a for a in answers if "segments" in a)
        assert events["count"] == 1 and events["events"][0]["event"] == "Store Purchase", events
        assert journey["map"]["name"] == "five-stage", journey
        assert kpis["map"]["name"] == "five-stage" and kpis["segments"], kpis
    finally:
        if service.proc is not None:
            service.stop()
        stop_leftover_postgres(tmp_path / ".journeys")


def test_the_layout_table_names_every_module() -> None:
    """The README's layout is where a newcomer looks for a module: it names them all (it named 4 of 12)."""
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = [
        f"{package}/{path.name}"
        for package in ("journeys", "collector", "query", "cli")
        for path in sorted((ROOT / package).glob("*.py"))
        if path.name != "__init__.py" and f"`{path.name}`" not in layout
    ]
    assert not missing, f"not in the README's layout table: {missing}"
