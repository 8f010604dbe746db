"""What the benchmarks share: the five-stage project bench/query.py and bench/live.py measure, and small helpers.

The benchmarks import it with their own directory first on ``sys.path`` and take that directory off again
at once: their file names (query.py) would shadow the packages they measure. It puts the repository root
on ``sys.path`` for ``testkit``, the harness the tests use too (``free_port``, ``basic``), which is not
installed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# re-exported: the benchmarks import them from here
from testkit.net import HOST as HOST, basic as basic, free_port as free_port  # noqa: E402

MAP_FILE = ROOT / "cli" / "templates" / "five-stage.yaml"
# KPI facts are computed per segment too, as in a real project
SEGMENTS = [
    {"name": "vip", "rules": [{"field": "traits.plan", "op": "in", "value": ["pro", "enterprise"]}]},
    {"name": "web-first", "rules": [{"field": "first_channel", "op": "equals", "value": "web"}]},
    {"name": "paid-social", "rules": [{"field": "first_channel", "op": "in", "value": ["ads", "social"]}]},
    {
        "name": "de-known",
        "match": "all",
        "rules": [
            {"field": "traits.country", "op": "equals", "value": "DE"},
            {"field": "traits.plan", "op": "exists"},
        ],
    },
]


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_and_report(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    render: Callable[[dict[str, Any]], str],
    met: Callable[[dict[str, Any]], bool],
    prefix: str,
) -> int:
    """Run a benchmark in ``args.data_dir`` (a temporary one, removed unless ``--keep``), print its table,
    write ``--json``. Exit status: 0 every target met, 1 some missed, 2 the benchmark could not run."""
    temporary = args.data_dir is None
    if temporary:
        args.data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        report = asyncio.run(run(args))
    except Exception as exc:  # noqa: BLE001 - report and exit 2: the benchmark itself could not run
        log(f"benchmark failed: {exc!r}")
        return 2
    finally:
        if temporary and not args.keep:
            shutil.rmtree(args.data_dir, ignore_errors=True)
        elif temporary:
            log(f"kept {args.data_dir}")
    print(render(report))
    if args.json:
        args.json.write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0 if met(report) else 1


async def five_stage_project(stores: Any, prefix: str) -> tuple[Any, dict[str, Any]]:
    """A new project with the five-stage template map and :data:`SEGMENTS` applied: (the project, the map)."""
    import yaml

    from query import definitions
    from journeys.keys import create_project

    map_doc = yaml.safe_load(MAP_FILE.read_text())
    async with stores.pg.acquire() as conn:
        project = await create_project(conn, f"{prefix}-{int(time.time())}")
        await definitions.apply(conn, project.id, "map", map_doc)
        for segment in SEGMENTS:
            await definitions.apply(conn, project.id, "segment", segment)
    return project, map_doc
