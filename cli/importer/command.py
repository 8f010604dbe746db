"""``journeys import FILE``: the options, the pipeline (read ahead, two requests in flight, results counted
in file order) and the summary; the package's docstring says how an import works.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from cli.commands import Commands
from cli.context import open_project
from cli.importer.mapping import MapSource, ObjectPlan, parse_maps
from cli.importer.progress import Progress
from cli.importer.reading import Chunk, ImportFailed, InputFile, ReadAhead, csv_chunks, detect_format, ndjson_chunks
from cli.importer.sender import Sender, Sent
from journeys.config import Settings

#: Rejected rows the summary lists (the rest are counted).
MAX_LISTED = 1000
#: Requests in flight: the collector reads the next chunk while it fsyncs and answers the previous one.
IN_FLIGHT = 2


def add_commands(commands: Commands) -> None:
    cmd = commands.add(
        "import",
        run,
        # With --write-key, the import goes to a collector and needs no stores here.
        needs_data=lambda args: not args.write_key,
        help="import historical events from a CSV or NDJSON file (gzip'd too) through the collector",
        description="Rows become Segment events (docs/import.md). Re-importing a file counts each event once.",
    )
    cmd.add_argument("file", help="CSV or NDJSON file, optionally .gz; - for stdin (with --format)")
    who = cmd.add_mutually_exclusive_group(required=True)
    who.add_argument("--project", help="project name or id (a temporary write key is made and revoked after)")
    who.add_argument("--write-key", help="the project's write key (no database access needed)")
    cmd.add_argument("--collector", help="collector URL (default: this machine's collector from the settings)")
    cmd.add_argument("--format", choices=["csv", "ndjson"], help="default: from the file name")
    cmd.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="fill an event field from a column, or from a constant with FIELD=:text (repeatable), e.g. "
        "--map userId=customer_no --map event=:Store Purchase; FIELD may be properties.NAME etc.",
    )
    cmd.add_argument("--drop", action="append", default=[], metavar="COLUMN", help="leave a column out (repeatable)")
    cmd.add_argument("--delimiter", default=None, help="CSV delimiter (default , or tab for .tsv; 'tab' works)")
    cmd.add_argument("--encoding", default="utf-8-sig", help="CSV text encoding (default utf-8, BOM or not)")
    cmd.add_argument("--start-line", type=int, default=1, metavar="N", help="skip the file's lines before N (resuming)")
    cmd.add_argument(
        "--gzip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compress requests (default: only to a collector on another machine)",
    )
    cmd.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="keep retrying a busy or unreachable collector this long per chunk (default 300)",
    )
    cmd.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    cmd.add_argument("--json", action="store_true", help="print the summary as JSON")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        maps = parse_maps(args.map)
        fmt = detect_format(args.file, args.format)
        if args.start_line < 1:
            raise ValueError("--start-line must be 1 or more")
        if args.file == "-" and not args.format:
            raise ValueError("reading stdin needs --format")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    collector = args.collector or default_collector_url(settings)
    parts = urlsplit(collector)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"error: --collector {collector!r}: expected http(s)://HOST[:PORT]", file=sys.stderr)
        return 2
    if args.write_key:
        return await _import(args, fmt, maps, collector, args.write_key)

    from journeys.keys import add_key, revoke_key

    async with open_project(settings, args.project) as project:
        secret = await add_key(project.conn, project.id, "write")
        try:
            return await _import(args, fmt, maps, collector, secret)
        finally:
            await revoke_key(project.conn, secret)


def default_collector_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.collector_host in ("0.0.0.0", "::", "") else settings.collector_host
    return f"http://{host}:{settings.collector_port}"


async def _import(args: argparse.Namespace, fmt: str, maps: dict[str, MapSource], collector: str, key: str) -> int:
    import aiohttp

    try:
        source = InputFile(args.file)
    except OSError as exc:
        print(f"error: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    drop = set(args.drop)
    delimiter = args.delimiter or ("\t" if args.file.lower().removesuffix(".gz").endswith(".tsv") else ",")
    delimiter = "\t" if delimiter.lower() in ("tab", "\\t") else delimiter
    if fmt == "csv":
        chunks: Iterator[Chunk] = csv_chunks(source, maps, drop, delimiter, args.encoding, args.start_line)
    else:
        plan = ObjectPlan(maps, drop) if (maps or drop) else None
        chunks = ndjson_chunks(source, plan, args.start_line)
    host = urlsplit(collector).hostname or ""
    compress = args.gzip if args.gzip is not None else host not in ("127.0.0.1", "localhost", "::1")
    progress = Progress(source.size, not args.no_progress)
    totals = Totals(last_line=args.start_line - 1)
    reader = ReadAhead(chunks)
    began = time.monotonic()
    failure: str | None = None
    usage = False
    in_flight: collections.deque[tuple[Chunk, asyncio.Task[Sent]]] = collections.deque()
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sender = Sender(session, collector, key, compress=compress, retry_for=args.retry_for)
            # Two requests in flight: the collector reads the next chunk while it fsyncs and answers the
            # previous one, instead of idling for a round trip per chunk. Results are counted in file order.
            while (chunk := await reader.next()) is not None:
                in_flight.append((chunk, asyncio.create_task(sender.send(chunk))))
                if len(in_flight) >= IN_FLIGHT:
                    done, task = in_flight.popleft()
                    totals.absorb(done, await task)
                    progress.update(totals.position, totals.rows)
            while in_flight:
                done, task = in_flight.popleft()
                totals.absorb(done, await task)
                progress.update(totals.position, totals.rows)
    except ValueError as exc:  # the file does not fit the options (a mapped column missing, no header)
        failure, usage = str(exc), True
    except ImportFailed as exc:
        failure = str(exc)
    finally:
        for _, task in in_flight:
            task.cancel()
        await asyncio.gather(*(task for _, task in in_flight), return_exceptions=True)
        reader.stop()
        source.close()
    elapsed = time.monotonic() - began
    if usage:
        print(f"error: {failure}", file=sys.stderr)
        return 2
    progress.update(totals.position, totals.rows, final=True)
    _summary(args, totals, elapsed, failure)
    if failure:
        return 1
    return 0 if totals.rejected == 0 else 1


@dataclass
class Totals:
    """What the import did so far, counted in file order: what the summary says and where to resume."""

    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_total: int = 0
    position: int = 0
    last_line: int = 0  # every file line up to this one is done: stored or reported

    def absorb(self, chunk: Chunk, sent: Sent) -> None:
        """Count a finished chunk; chunks are absorbed in file order, so the listed errors are the first."""
        self.rows += chunk.rows
        self.accepted += sent.accepted
        self.rejected += sent.rejected + len(chunk.refused)
        for error in sorted(chunk.refused + sent.errors, key=lambda e: e["line"]):
            self.errors_total += 1
            if len(self.errors) < MAX_LISTED:
                self.errors.append(error)
        self.errors_total += sent.unlisted
        self.position = chunk.position
        self.last_line = max(self.last_line, _last_line(chunk))


def _last_line(chunk: Chunk) -> int:
    if chunk.file_lines is None:
        return chunk.first_line + len(chunk.lines) - 1
    last = [chunk.file_lines[-1]] if chunk.file_lines else []
    last += [e["line"] for e in chunk.refused[-1:]]
    return max(last, default=0)


def _summary(args: argparse.Namespace, totals: Totals, elapsed: float, failure: str | None) -> None:
    rate = totals.rows / elapsed if elapsed > 0 else 0.0
    if args.json:
        print(
            orjson.dumps(
                {
                    "file": args.file,
                    "rows": totals.rows,
                    "accepted": totals.accepted,
                    "rejected": totals.rejected,
                    "seconds": round(elapsed, 3),
                    "rows_per_second": round(rate),
                    "errors": totals.errors,
                    "errors_total": totals.errors_total,
                    "completed": failure is None,
                    **({"error": failure, "resume_from_line": totals.last_line + 1} if failure else {}),
                }
            ).decode()
        )
    else:
        print(
            f"imported {args.file}: {totals.rows:,} rows read, {totals.accepted:,} accepted, "
            f"{totals.rejected:,} rejected, in {elapsed:.1f} s ({rate:,.0f} rows/s)"
        )
        kinds = {(e["field"], e["reason"]) for e in totals.errors}
        if len(kinds) == 1 and totals.errors_total > 1 and totals.errors_total == len(totals.errors):
            # Rows that all fail alike are one problem, said once (a thousand identical lines hide the fix).
            (field_name, reason), lines = kinds.pop(), [e["line"] for e in totals.errors]
            every = "every row" if totals.accepted == 0 else f"{totals.errors_total:,} rows"
            print(f"{every} rejected for one reason: {field_name}: {reason} (lines {min(lines)}–{max(lines)})")
            print(f"  likely fix: {_likely_fix(args, field_name)}")
        elif totals.errors:
            print("rejected rows (line: field: reason):")
            for error in totals.errors:
                print(f"  line {error['line']}: {error['field']}: {error['reason']}")
            if totals.errors_total > len(totals.errors):
                print(
                    f"  … and {totals.errors_total - len(totals.errors):,} more (the first {len(totals.errors):,} are listed)"
                )
    if failure:
        print(
            f"error: {failure}\nEvery row through line {totals.last_line} is stored or listed above; "
            f"resume with --start-line {totals.last_line + 1} (or re-run: re-imported rows are not counted twice)",
            file=sys.stderr,
        )


def _likely_fix(args: argparse.Namespace, field_name: str) -> str:
    """What usually makes every row fail on ``field_name``: columns not mapped to the event's fields."""
    if getattr(args, "map", None):
        return (
            f"check the --map option that should fill {field_name!r} (FIELD=COLUMN names a column of the "
            "file; FIELD=:value a constant); docs/import.md"
        )
    return (
        f"the file's columns are not mapped to event fields: name the one for {field_name!r} with "
        f"--map {field_name}=COLUMN (and e.g. --map userId=COLUMN --map timestamp=COLUMN); docs/import.md"
    )
