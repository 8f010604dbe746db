"""Reading the input: a CSV or NDJSON file (gzip'd or not, or stdin) in chunks of converted rows.

A chunk is a few MB of rows: the request body for one ``POST /v1/import``, with the file line of each body
line so the collector's per-line errors can be said in the *original file*'s lines. :class:`ReadAhead` runs
the reading and converting in a thread, so it overlaps the collector's work on the previous chunk, and
memory holds two chunks whatever the file's size.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import os
import queue
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from cli.importer.mapping import CsvPlan, MapSource, ObjectPlan, RowProblem
from journeys.errors import JourneysError

#: A chunk ends at this many rows or body bytes, whichever comes first: one request's worth.
CHUNK_ROWS = 20_000
CHUNK_BYTES = 8 * 1024 * 1024


class ImportFailed(JourneysError):
    """The import cannot go on; the message says why and from which line to resume."""


@dataclass
class Chunk:
    """Body lines for one request, and where they came from."""

    lines: list[bytes] = field(default_factory=list)
    #: The file line of each body line; None when body line i *is* file line first_line + i (raw NDJSON).
    file_lines: list[int] | None = field(default_factory=list)
    first_line: int = 1
    refused: list[dict[str, Any]] = field(default_factory=list)  # rows the CLI could not convert
    rows: int = 0  # data rows of the file in this chunk, sent or refused
    position: int = 0  # bytes of the (possibly compressed) file read by the end of this chunk
    nbytes: int = 0


class InputFile:
    """The input: a path or ``-`` (stdin), gzip'd or not (by its first bytes), with its read position."""

    def __init__(self, path: str):
        self.path = path
        self.raw: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        self.size = None if path == "-" else os.fstat(self.raw.fileno()).st_size
        head = self.raw.peek(2)[:2] if hasattr(self.raw, "peek") else b""
        self.gzipped = head == b"\x1f\x8b"
        self.stream: BinaryIO = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gzipped else self.raw  # type: ignore[assignment]

    @property
    def position(self) -> int:
        try:
            return self.raw.tell()
        except OSError:
            return 0

    def close(self) -> None:
        if self.stream is not self.raw:
            self.stream.close()
        if self.raw is not sys.stdin.buffer:
            self.raw.close()


def detect_format(path: str, given: str | None) -> str:
    if given:
        return given
    name = path.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    raise ValueError(f"{path}: cannot tell the format from the name; give --format csv or --format ndjson")


def csv_chunks(
    source: InputFile, maps: dict[str, MapSource], drop: set[str], delimiter: str, encoding: str, start_line: int
) -> Iterator[Chunk]:
    text = io.TextIOWrapper(source.stream, encoding=encoding, newline="", errors="strict")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{source.path}: empty file, expected a header row") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{source.path}: line 1 (header): {exc}") from None
    plan = CsvPlan(header, maps, drop)
    chunk = Chunk()
    line = reader.line_num
    dumps = orjson.dumps
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except (UnicodeDecodeError, csv.Error) as exc:
            # A broken row cannot be skipped reliably: the reader's position is lost. Stop, saying where.
            raise ImportFailed(f"{source.path}: line {start}: {exc}") from None
        line = reader.line_num
        if not row or start < start_line:
            continue
        chunk.rows += 1
        try:
            body = dumps(plan.event(row))
        except RowProblem as problem:
            chunk.refused.append({"line": start, "field": problem.field, "reason": problem.reason})
        else:
            chunk.lines.append(body)
            chunk.file_lines.append(start)  # type: ignore[union-attr]
            chunk.nbytes += len(body)
        if chunk.rows >= CHUNK_ROWS or chunk.nbytes >= CHUNK_BYTES:
            chunk.position = source.position
            yield chunk
            chunk = Chunk()
    chunk.position = source.position
    yield chunk


def ndjson_chunks(source: InputFile, plan: ObjectPlan | None, start_line: int) -> Iterator[Chunk]:
    """Raw lines when there is no mapping (the collector numbers them as the file does); otherwise each
    line is parsed, mapped and re-encoded."""
    chunk = Chunk(file_lines=None if plan is None else [], first_line=start_line)
    for number, raw in enumerate(source.stream, 1):
        if number < start_line:
            continue
        line = raw.rstrip(b"\r\n")
        blank = not line.strip()
        if plan is None:
            chunk.lines.append(line)
            chunk.nbytes += len(line)
            chunk.rows += not blank
        elif not blank:
            chunk.rows += 1
            try:
                body = orjson.dumps(plan.event(orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                chunk.refused.append({"line": number, "field": "(line)", "reason": f"invalid JSON: {exc}"})
            except RowProblem as problem:
                chunk.refused.append({"line": number, "field": problem.field, "reason": problem.reason})
            else:
                chunk.lines.append(body)
                chunk.file_lines.append(number)  # type: ignore[union-attr]
                chunk.nbytes += len(body)
        if chunk.rows >= CHUNK_ROWS or chunk.nbytes >= CHUNK_BYTES:
            chunk.position = source.position
            yield chunk
            chunk = Chunk(file_lines=None if plan is None else [], first_line=number + 1)
    chunk.position = source.position
    yield chunk


class ReadAhead:
    """Runs the chunk iterator in a thread, at most two chunks ahead, so reading and converting the file
    overlaps the collector's work on the previous chunk."""

    _END = object()

    def __init__(self, chunks: Iterator[Chunk]):
        self._chunks = chunks
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="import-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(chunk):
                    return
            self._put(self._END)
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt .gz, a read error
            self._put(ImportFailed(f"cannot read the file: {exc}"))
        except BaseException as exc:  # handed to the main thread, which reports it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    async def next(self) -> Chunk | None:
        item = await asyncio.get_running_loop().run_in_executor(None, self._queue.get)
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
