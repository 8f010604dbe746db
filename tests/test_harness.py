"""testkit/ is the one harness the tests and the benchmarks share: bench/ imports nothing from tests/, and
there is one ``free_port``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _top_level_imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_benchmarks_import_no_test_module() -> None:
    benches = sorted((ROOT / "bench").glob("*.py"))
    # bench/live.py is a sibling of the benchmarks (bench/alerts.py imports it), not tests/live.py
    test_modules = {path.stem for path in (ROOT / "tests").glob("*.py")} - {path.stem for path in benches}
    found = {
        f"bench/{bench.name}": sorted(_top_level_imports(bench.read_text()) & test_modules)
        for bench in benches
        if _top_level_imports(bench.read_text()) & test_modules or '"tests"' in bench.read_text()
    }
    assert not found, f"benchmarks reaching into tests/ (move what they need to testkit/): {found}"


def test_one_free_port() -> None:
    defined = [
        str(path.relative_to(ROOT))
        for folder in ("testkit", "tests", "bench", "journeys", "collector", "query", "cli")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "free_port"
    ]
    assert defined == ["testkit/net.py"]
