"""The durable spool: an append-only, fsync'd log that every accepted request passes through.

Why every request and not only when ClickHouse is down: one path for the normal case, an outage and a crash
means the outage path is exercised millions of times a day instead of once a year. A request is answered
200 once its record is fsync'd here; the :class:`~collector.inserter.Inserter` moves records into
ClickHouse in large batches (few parts, high throughput) and advances a checkpoint.

Layout (Kafka-like): the log is a sequence of segment files named by the *logical offset* of their first
byte (20 digits). A position is one integer across all segments, so "bytes not yet in ClickHouse" is simply
``durable_position - checkpoint``. A record is ``[u32 length][u32 crc32][u64 written_at_ms][payload]``; the
payload's own format (a kind byte, then rows ready for ClickHouse) is in :mod:`collector.records`, beside
this module, which every producer and the inserter import.

Crash safety: records are only appended and acknowledged after fsync, so a crash can only leave a torn
*tail*. On open the last segment is scanned and truncated to its last whole record, then writes continue in
a fresh segment. The checkpoint is written after ClickHouse confirms an insert; a crash between the two
replays a batch, which reads de-duplicate by messageId.

Group commit: concurrent appends queue up while an fsync is in flight and go down together in the next
write+fsync, so the fsync rate adapts to load without a fixed delay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from journeys.errors import JourneysError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIQ")
_SEGMENT_SUFFIX = ".seg"
_CHECKPOINT = "checkpoint"
MAX_RECORD_BYTES = 256 * 1024 * 1024
HIGH_WATER = 0.9


class SpoolError(JourneysError):
    """The spool cannot take this record; the request must not be acknowledged."""


class SpoolFull(SpoolError):
    """Un-inserted data is over the cap: shed load (503 + Retry-After) until the inserter catches up."""


class SpoolWriteError(SpoolError):
    """The disk refused the write (full, read-only, I/O error). Nothing partial is left behind."""


@dataclass
class Record:
    position: int  # logical offset of the record's header
    end: int  # logical offset just past it
    written_at_ms: int
    payload: bytes


@dataclass
class _Pending:
    frames: list[bytes] = field(default_factory=list)
    futures: list[asyncio.Future[None]] = field(default_factory=list)
    nbytes: int = 0


def _segment_name(base: int) -> str:
    return f"{base:020d}{_SEGMENT_SUFFIX}"


def frame(payload: bytes, written_at_ms: int | None = None) -> bytes:
    ts = int(time.time() * 1000) if written_at_ms is None else written_at_ms
    crc = zlib.crc32(payload, zlib.crc32(ts.to_bytes(8, "little")))
    return _HEADER.pack(len(payload), crc, ts) + payload


def _scan(data: bytes, start: int = 0) -> tuple[list[tuple[int, int, int, bytes]], int]:
    """Parse whole records from ``data[start:]``; return them as (offset, end, ts, payload) and the offset
    just past the last whole, checksum-valid record."""
    out = []
    pos = start
    size = len(data)
    while pos + _HEADER.size <= size:
        length, crc, ts = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if length > MAX_RECORD_BYTES or end > size:
            break
        payload = data[pos + _HEADER.size : end]
        if zlib.crc32(payload, zlib.crc32(ts.to_bytes(8, "little"))) != crc:
            break
        out.append((pos, end, ts, payload))
        pos = end
    return out, pos


class Spool:
    """Append (async, group-committed, durable) and read/commit (for the inserter) over one directory.

    Exactly one process may own a spool directory; :meth:`open` takes an exclusive lock on it.
    """

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = 64 * 1024 * 1024):
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._io = ThreadPoolExecutor(1, thread_name_prefix="spool-io")
        self._read_io = ThreadPoolExecutor(1, thread_name_prefix="spool-read")
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment_base = 0
        self._segment_size = 0
        self._durable = 0  # logical end of fsync'd data
        self._checkpoint = 0
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._data = asyncio.Event()  # set when durable data is beyond what the reader has consumed
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._oldest_ms: int | None = None
        self.on_group_commit: Callable[[int], None] | None = None
        self.write_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> "Spool":
        await asyncio.get_running_loop().run_in_executor(self._io, self._open_sync)
        self._writer = asyncio.create_task(self._write_loop(), name="spool-writer")
        if self._durable > self._checkpoint:
            self._data.set()
        return self

    def _open_sync(self) -> None:
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolError(f"spool {self.directory} is in use by another process") from None
        segments = self._segments()
        self._checkpoint = self._read_checkpoint(segments[0] if segments else 0)
        end = self._checkpoint
        if segments:
            last = segments[-1]
            path = self.directory / _segment_name(last)
            data = path.read_bytes()
            _, valid = _scan(data)
            if valid < len(data):
                log.warning("spool: truncating torn tail of %s (%d bytes)", path.name, len(data) - valid)
                with open(path, "r+b") as fh:
                    fh.truncate(valid)
                    os.fsync(fh.fileno())
            end = max(end, last + valid)
        self._durable = end
        self._checkpoint = min(self._checkpoint, end)
        self._start_segment(end)
        self._drop_consumed_segments()

    def _segments(self) -> list[int]:
        bases = []
        for entry in self.directory.iterdir():
            if entry.name.endswith(_SEGMENT_SUFFIX) and entry.name[:-4].isdigit():
                bases.append(int(entry.name[:-4]))
        return sorted(bases)

    def _read_checkpoint(self, default: int) -> int:
        try:
            return int((self.directory / _CHECKPOINT).read_text().strip())
        except (FileNotFoundError, ValueError):
            return default

    def _start_segment(self, base: int) -> None:
        if self._fd is not None:
            # Forget the old descriptor before opening the new one: if the open fails, a later write must
            # not go to a closed descriptor number that the process may have reused for another file.
            fd, self._fd = self._fd, None
            os.close(fd)
        path = self.directory / _segment_name(base)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment_base = base
        self._segment_size = os.fstat(self._fd).st_size
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        # A new file's directory entry must be durable too, or a crash could lose an fsync'd segment.
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    async def close(self) -> None:
        """Write what is queued, then stop. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._close_sync)
        self._io.shutdown(wait=True)
        self._read_io.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- write side --------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes accepted but not yet confirmed in ClickHouse, including those waiting for fsync."""
        return self._durable - self._checkpoint + self._pending.nbytes

    @property
    def above_high_water(self) -> bool:
        """Over 90 % of the cap: readiness turns off here, so a load balancer steers traffic away
        *before* requests start bouncing off the cap."""
        return self.pending_bytes >= self.max_bytes * HIGH_WATER

    async def append_waiting(self, payloads: list[bytes], wait_s: float) -> None:
        """:meth:`append`, waiting out a full spool for up to ``wait_s`` while the inserter drains it: for
        batch jobs (imports, quarantine replays) that would rather slow down than fail."""
        deadline = time.monotonic() + wait_s
        pause = 0.05
        while True:
            try:
                await self.append(*payloads)
                return
            except SpoolFull:
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def append(self, *payloads: bytes) -> None:
        """Return once every payload is durable on disk, as one record each, written together;
        raise :class:`SpoolError` if they are not."""
        if self._closing:
            raise SpoolError("spool is closing")
        framed = b"".join(frame(p) for p in payloads)
        if self.pending_bytes + len(framed) > self.max_bytes:
            raise SpoolFull(f"spool holds {self.pending_bytes} bytes, cap is {self.max_bytes}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.frames.append(framed)
        self._pending.futures.append(future)
        self._pending.nbytes += len(framed)
        self._wake.set()
        await future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending.frames:
                group, self._pending = self._pending, _Pending()
                data = b"".join(group.frames)
                try:
                    await loop.run_in_executor(self._io, self._write_sync, data)
                except OSError as exc:
                    self.write_error = f"{exc.strerror or exc}"
                    log.error("spool write failed, %d requests refused: %s", len(group.futures), exc)
                    for fut in group.futures:
                        if not fut.done():
                            fut.set_exception(SpoolWriteError(f"spool write failed: {self.write_error}"))
                    continue
                self.write_error = None
                self._durable += len(data)
                self._data.set()
                for fut in group.futures:
                    if not fut.done():
                        fut.set_result(None)
                if self.on_group_commit is not None:
                    self.on_group_commit(len(group.futures))
            if self._closing:
                return

    def _write_sync(self, data: bytes) -> None:
        if self._fd is None or self._segment_size >= self.segment_bytes:
            self._start_segment(self._durable)  # raises OSError (a refused write) while it cannot open one
        before = self._segment_size
        fd = self._fd
        assert fd is not None  # _start_segment opened one or raised
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "short write (disk full?)")
            os.fsync(fd)
        except OSError:
            # Leave no partial record: a torn middle would hide every later record from the reader.
            try:
                os.ftruncate(fd, before)
                os.fsync(fd)
            except OSError:
                log.exception("spool: could not truncate after a failed write; starting a new segment")
                self._start_segment(self._durable)
                before = 0
            self._segment_size = before
            raise
        self._segment_size = before + len(data)

    # -- read side (the inserter) ------------------------------------------------------------------

    @property
    def checkpoint(self) -> int:
        return self._checkpoint

    @property
    def durable_position(self) -> int:
        return self._durable

    def oldest_age_seconds(self, now_ms: int | None = None) -> float:
        """Age of the oldest record not yet in ClickHouse; 0 when everything is in."""
        if self._durable <= self._checkpoint or self._oldest_ms is None:
            return 0.0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0.0, (now_ms - self._oldest_ms) / 1000)

    async def wait_for_data(self, timeout: float | None = None) -> bool:
        if self._durable > self._checkpoint:
            return True
        self._data.clear()
        try:
            await asyncio.wait_for(self._data.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def read(self, start: int, max_bytes: int) -> tuple[list[Record], int]:
        """Records from logical ``start`` on, up to about ``max_bytes`` of payload, never past what is durable;
        and the position to read from next (past any corrupt stretch that had to be skipped)."""
        limit = self._durable
        records, next_position = await asyncio.get_running_loop().run_in_executor(
            self._read_io, self._read_sync, start, limit, max_bytes
        )
        if records and start == self._checkpoint:
            self._oldest_ms = records[0].written_at_ms
        return records, next_position

    def written_at_ms(self, position: int) -> int | None:
        """The append time in the header of the record at logical ``position`` (blocking file I/O); ``None``
        if its segment is gone (the inserter moved past it meanwhile)."""
        base = max((b for b in self._segments() if b <= position), default=None)
        if base is None:
            return None
        with open(self.directory / _segment_name(base), "rb") as fh:
            fh.seek(position - base)
            header = fh.read(_HEADER.size)
        return _HEADER.unpack(header)[2] if len(header) == _HEADER.size else None

    def _read_sync(self, start: int, limit: int, max_bytes: int) -> tuple[list[Record], int]:
        records: list[Record] = []
        total = 0
        pos = start
        segments = self._segments()
        while pos < limit and total < max_bytes:
            base = max((b for b in segments if b <= pos), default=None)
            if base is None:
                break
            # A segment ends where the next begins: segments are started at the durable position.
            nxt = min((b for b in segments if b > base), default=None)
            seg_end = min(nxt if nxt is not None else limit, limit)
            if pos >= seg_end:
                if nxt is None:
                    break
                pos = nxt
                continue
            path = self.directory / _segment_name(base)
            with open(path, "rb") as fh:
                fh.seek(pos - base)
                data = fh.read(min(seg_end - pos, max_bytes - total + _HEADER.size))
                parsed, _ = _scan(data)
                if not parsed and len(data) >= _HEADER.size:
                    # The next record is larger than the window: read exactly that one record.
                    whole = _HEADER.size + _HEADER.unpack_from(data, 0)[0]
                    if pos + whole <= seg_end:
                        fh.seek(pos - base)
                        parsed, _ = _scan(fh.read(whole))
            if not parsed:
                # Checksum failure inside fsync'd data means the disk corrupted it; nothing after it in this
                # segment can be framed, so skip to the next segment rather than stall forever.
                log.error("spool: corrupt record at offset %d in %s; skipping to %d", pos, path.name, seg_end)
                pos = seg_end
                continue
            for offset, end, ts, payload in parsed:
                records.append(Record(pos + offset, pos + end, ts, payload))
                total += len(payload)
            pos = records[-1].end
        return records, pos

    async def commit(self, position: int) -> None:
        """Everything before ``position`` is in ClickHouse: advance the checkpoint, drop spent segments."""
        if position <= self._checkpoint:
            return
        await asyncio.get_running_loop().run_in_executor(self._read_io, self._commit_sync, position)
        self._checkpoint = position
        self._oldest_ms = None

    def _commit_sync(self, position: int) -> None:
        tmp = self.directory / (_CHECKPOINT + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(str(position))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / _CHECKPOINT)
        self._drop_consumed_segments(position)

    def _drop_consumed_segments(self, checkpoint: int | None = None) -> None:
        checkpoint = self._checkpoint if checkpoint is None else checkpoint
        segments = self._segments()
        for base, nxt in zip(segments, segments[1:]):
            # A segment is spent when the next one starts at or before the checkpoint; the write segment
            # (the last) is never removed.
            if nxt <= checkpoint and base != self._segment_base:
                try:
                    (self.directory / _segment_name(base)).unlink()
                except FileNotFoundError:
                    pass
