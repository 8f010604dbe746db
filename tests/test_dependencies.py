"""Every third-party module our code imports is declared in pyproject.toml (issue 23: `typing_extensions` and
`psutil` were used but not declared, so they worked only while something else happened to install them).

The service packages may import only the runtime dependencies; tests/ and bench/ also the `test` extra. The SDK
(sdk/) declares none at all, which sdk/tests checks on its own.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"journeys", "collector", "query", "cli", "tests", "bench", "journeys_sdk", "testkit"}
# Modules that tests and benches import from their own directory (they put it on sys.path).
LOCAL_DIRS = ("tests", "bench")
# Imported only where present, each behind its guard.
OPTIONAL = {
    "brotli": "the HTTP-over-chDB test server decodes `br` bodies only when brotli is installed",
    "compression": "the standard library's zstd from Python 3.14 on (backports.zstd before)",
}


def _declared(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in requirements
    }


def _imported_top_level(folder: Path) -> dict[str, str]:
    """Every top-level module name imported anywhere under ``folder`` (inside functions too) → one file importing it."""
    found: dict[str, str] = {}
    for path in folder.rglob("*.py"):
        if "node_modules" in path.parts or "output" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _undeclared(folders: list[str], declared: set[str]) -> list[str]:
    distributions = packages_distributions()
    local = {path.stem for folder in LOCAL_DIRS for path in (ROOT / folder).glob("*.py")}
    problems = []
    for folder in folders:
        for module, where in sorted(_imported_top_level(ROOT / folder).items()):
            if module in sys.stdlib_module_names or module in OURS or module in local or module in OPTIONAL:
                continue
            providers = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
            if not providers & declared:
                problems.append(f"{module} (imported by {where}; from {sorted(providers)})")
    return problems


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_services_import_only_declared_runtime_dependencies() -> None:
    declared = _declared(_project()["dependencies"])
    # clickhouse-connect[chdb] brings chdb: the extra is what is declared.
    declared |= {"chdb"}
    assert not _undeclared(["journeys", "collector", "query", "cli"], declared)


def test_tests_and_benches_import_only_declared_dependencies() -> None:
    project = _project()
    declared = _declared(project["dependencies"]) | _declared(project["optional-dependencies"]["test"]) | {"chdb"}
    # The SDK is installed beside the service for the tests (README), from sdk/.
    declared |= {"journeys-sdk"}
    folders = [folder for folder in ("tests", "bench", "testkit") if (ROOT / folder).is_dir()]
    assert not _undeclared(folders, declared)
