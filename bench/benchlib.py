"""What bench/query.py and bench/live.py share: the five-stage project they measure, and small helpers.

The benchmarks import it with their own directory first on ``sys.path`` and take that directory off again
at once: their file names (query.py) would shadow the packages they measure.
"""

from __future__ import annotations

import base64
import socket
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"  # every byte of traffic stays on loopback
MAP_FILE = Path(__file__).resolve().parent.parent / "journeys" / "templates" / "five-stage.yaml"
# KPI facts are computed per segment too, as in a real project
SEGMENTS = [
    {"name": "vip", "rules": [{"field": "traits.plan", "op": "in", "value": ["pro", "enterprise"]}]},
    {"name": "web-first", "rules": [{"field": "first_channel", "op": "equals", "value": "web"}]},
    {"name": "paid-social", "rules": [{"field": "first_channel", "op": "in", "value": ["ads", "social"]}]},
    {"name": "de-known", "match": "all", "rules": [
        {"field": "traits.country", "op": "equals", "value": "DE"},
        {"field": "traits.plan", "op": "exists"},
    ]},
]


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
