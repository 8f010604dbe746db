from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from journeys_sdk import Client  # noqa: E402
from sdk_fake_collector import FakeCollector  # noqa: E402

# Fast retry settings so failure paths take milliseconds, not seconds.
FAST = dict(
    upload_interval=0.05,
    backoff_base=0.01,
    max_backoff=0.05,
    timeout=2.0,
    retry_budget=5.0,
    atexit_timeout=1.0,
)


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    c = FakeCollector().start()
    yield c
    c.stop()


@pytest.fixture
def make_client(collector: FakeCollector) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(**options: Any) -> Client:
        opts = {**FAST, **options}
        client = Client(opts.pop("write_key", collector.write_key), opts.pop("host", collector.url), **opts)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown(timeout=1.0)
