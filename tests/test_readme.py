"""The README's Quickstart is the contract with a new user: keep CI running exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

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
