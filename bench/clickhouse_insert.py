"""What one stored event costs ClickHouse itself: CPU per row of the collector's inserts, by insert size.

Runs the real schema (our migrations) in chDB — the same engine as a ClickHouse server — in this process,
and inserts realistic rows exactly as the inserter does (JSONCompactEachRow lines built by ``to_row``).
Baselines in the same run: the same rows into the events table with the journey timelines' view taken away
(what that view costs), and into a plain MergeTree table without the derived web columns. Then the disk each
event takes, merged, in the events table and in the timelines. This is the floor under ``bench/ingest.py``'s
stored events/s on the embedded default.

    python bench/clickhouse_insert.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
import uuid
from typing import Any

import clickhouse_connect
import orjson

from journeys.events import EVENT_COLUMNS, to_row
from journeys.migrate import clickhouse_migrations


def _event(rng: random.Random) -> dict:
    kind = rng.choice(["track", "track", "page", "identify"])
    event: dict[str, Any] = {
        "type": kind,
        "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
        "timestamp": "2026-11-24T06:00:00.123Z",
        "userId": f"user-{rng.randint(1, 10_000)}",
        "anonymousId": str(uuid.UUID(int=rng.getrandbits(128))),
        "context": {
            "library": {"name": "analytics-python", "version": "2.3"},
            "ip": "10.1.2.3",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
        },
        "properties": {"channel": rng.choice(["web", "email", "store", "app"]), "total": 12.5, "sku": "A-1"},
    }
    if kind == "track":
        event["event"] = rng.choice(["Order Completed", "Email Clicked", "Store Visit"])
    elif kind == "page":
        event["name"] = "Home"
        event["properties"]["url"] = "https://shop.test/p?utm_source=news&utm_campaign=spring"
    else:
        event["traits"] = {"plan": "b2b", "country": "DE"}
    return event


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    lines = [orjson.dumps(to_row(_event(rng), "p_bench", now_ms, 86_400_000)) + b"\n" for _ in range(args.rows)]
    print(f"{args.rows} rows, {sum(map(len, lines)) / len(lines):.0f} bytes of JSON each")

    with tempfile.TemporaryDirectory() as data:
        client = clickhouse_connect.get_client(dsn=f"chdb://{data}")
        statements = [s for m in clickhouse_migrations() for s in m.statements]
        for statement in statements:
            client.command(statement)
        plain = statements[0].split("    page_url")[0].rstrip().rstrip(",") + (
            "\n) ENGINE = MergeTree PARTITION BY toYYYYMM(timestamp) ORDER BY (project_id, distinct_id, message_id)"
        )
        client.command(plain.replace("IF NOT EXISTS events", "IF NOT EXISTS events_plain"))
        settings = {"input_format_json_read_objects_as_strings": 1}
        timelines_view = next(
            s for s in statements if s.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS timelines_mv")
        )

        def insert(table: str, size: int) -> str:
            chunks = [b"".join(lines[k : k + size]) for k in range(0, len(lines), size)]
            began_wall, began_cpu = time.perf_counter(), _cpu()
            for chunk in chunks:
                client.raw_insert(
                    table, list(EVENT_COLUMNS), insert_block=chunk, fmt="JSONCompactEachRow", settings=settings
                )
            wall, cpu = time.perf_counter() - began_wall, _cpu() - began_cpu
            return f"{cpu / len(lines) * 1e6:6.2f} µs CPU/row ({len(lines) / wall:,.0f} rows/s)"

        # The journey timelines' view (migration 0007) is measured by taking it away for one pass, same run.
        print(f"{'insert size':>12} {'events table':>34} {'events without timelines':>34} {'plain MergeTree':>34}")
        for size in (2_000, 10_000, 50_000):
            with_view = insert("events", size)
            client.command("DROP VIEW timelines_mv")
            without_view = insert("events", size)
            client.command(timelines_view)
            print(f"{size:>12,} {with_view:>34} {without_view:>34} {insert('events_plain', size):>34}")

        # Disk per event: the rows once, merged, as they end up on disk.
        for table in ("events", "timelines"):
            client.command(f"TRUNCATE TABLE {table}")
        insert("events", 50_000)
        for table in ("events", "timelines"):
            client.command(f"OPTIMIZE TABLE {table} FINAL")
        for table in ("events", "timelines"):
            on_disk = client.command(f"SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND table = '{table}'")
            print(f"disk per event, {table}: {int(str(on_disk)) / len(lines):.0f} B")  # one value: str or int
        client.close()


if __name__ == "__main__":
    main()
