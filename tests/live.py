"""A running ``journeys up`` (testkit/service.py) with projects and keys of every kind, plus a raw HTTP client.

For tests that drive the services from synchronous code (hypothesis, schemathesis) or need the service's
own log: the in-process fixtures of conftest.py live on the test session's event loop, which a sync
hypothesis test cannot run. The raw client (http.client) sends bytes exactly as given — invalid UTF-8,
NUL bytes, hostile paths — which higher-level clients would refuse or normalize.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.service import Service, journeys, stop_leftover_postgres
from support import basic


@dataclass(frozen=True)
class Keys:
    id: str
    name: str
    write: str
    read: str
    admin: str
    public: str


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def errors(self) -> list[dict[str, Any]]:
        return self.json()["errors"]


def call(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Reply:
    """One request on a fresh connection; ``path`` is sent byte-for-byte (already percent-encoded)."""
    host, _, port = base.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Reply(resp.status, {k: v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass
class Live:
    """``journeys up`` in a temporary data dir, with projects made through the CLI beside it."""

    data_dir: Path
    service: Service = field(init=False)

    def __post_init__(self) -> None:
        self.service = Service(self.data_dir, JOURNEYS_INSERT_LINGER_MS="20", JOURNEYS_KEY_CACHE_TTL_S="0").start()

    @property
    def collector(self) -> str:
        return self.service.collector

    @property
    def query(self) -> str:
        return self.service.query

    def project(self, name: str) -> Keys:
        done = journeys(self.data_dir, "project", "create", name, "--json")
        assert done.returncode == 0, done.stderr
        made = json.loads(done.stdout)
        extra = {}
        for kind in ("admin", "public"):
            key = journeys(self.data_dir, "key", "create", "--project", made["id"], "--kind", kind)
            assert key.returncode == 0, key.stderr
            extra[kind] = key.stdout.strip()
        return Keys(made["id"], name, made["write_key"], made["read_key"], extra["admin"], extra["public"])

    def stats(self, keys: Keys) -> dict[str, Any]:
        reply = call(self.query, "GET", "/v1/stats", headers=basic(keys.read))
        assert reply.status == 200, reply.body
        return reply.json()

    def wait_stats(self, keys: Keys, events: int, quarantined: int, timeout: float = 30.0) -> dict[str, Any]:
        """Poll /v1/stats until it shows exactly these totals (and fail if it ever shows more)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats(keys)
            assert stats["events"] <= events and stats["quarantined"] <= quarantined, (stats, events, quarantined)
            if (stats["events"], stats["quarantined"]) == (events, quarantined):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"stats {stats} never reached events={events} quarantined={quarantined}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return (
            call(self.collector, "GET", "/healthz").status == 200 and call(self.query, "GET", "/healthz").status == 200
        )

    def log(self) -> str:
        return self.service.log.read_text(errors="replace")

    def stop(self) -> int:
        try:
            return self.service.stop()
        finally:
            stop_leftover_postgres(self.data_dir)
