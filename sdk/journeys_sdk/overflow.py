"""Optional on-disk overflow for outages longer than memory can absorb.

Layout: one directory, one file per *batch* ("segment"), named
``{sequence:016d}-{count}.jsonl`` and holding the batch's encoded events one per
line.  Writing whole batches keeps the design simple: replay sends a segment as
one request and deletes it only after the collector acknowledged it, so a crash
at any point re-sends at most that batch, and the collector drops the
duplicates by ``messageId``.  Files are written to a temporary name and renamed,
so a crash never leaves a half-written segment behind.

Ordering is the consumer's job (see ``consumer.py``): it always drains this
store before memory, and spills memory here oldest-first.

Only one process may own a directory (two readers would send the same segments
twice as fast and race on deletes), so ownership is an exclusive ``flock``.  A
process that cannot get it, such as a forked child while the parent lives, runs
memory-only and says so once in the log.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["OverflowStore", "OverflowUnavailable", "Segment"]

log = logging.getLogger("journeys_sdk")

_NAME = re.compile(r"^(\d{16})-(\d+)\.jsonl$")


class OverflowUnavailable(Exception):
    """The directory cannot be used (not writable, or owned by another process)."""


@dataclass(frozen=True, slots=True)
class Segment:
    seq: int
    count: int
    size: int
    path: str

    def read(self) -> list[bytes]:
        with open(self.path, "rb") as f:
            return [line for line in f.read().split(b"\n") if line]


class OverflowStore:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._lock_fd: int | None = os.open(os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OverflowUnavailable(f"cannot use overflow_dir {self.directory!r}: {exc}") from exc
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise OverflowUnavailable(
                    f"overflow_dir {self.directory!r} is in use by another client or process"
                ) from exc
        self._segments: deque[Segment] = deque()
        self.bytes = 0
        self.events = 0
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            self.close()
            raise OverflowUnavailable(f"cannot read overflow_dir {self.directory!r}: {exc}") from exc
        for name in names:
            m = _NAME.match(name)
            path = os.path.join(self.directory, name)
            if m is None:
                if name.endswith(".tmp"):
                    # A spill interrupted by a crash; its events were still in
                    # memory then, so nothing on disk depends on it.
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                continue
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            seg = Segment(int(m.group(1)), int(m.group(2)), size, path)
            self._segments.append(seg)
            self.bytes += size
            self.events += seg.count
        self._next_seq = self._segments[-1].seq + 1 if self._segments else 1

    def __len__(self) -> int:
        return len(self._segments)

    def head(self) -> Segment | None:
        return self._segments[0] if self._segments else None

    def append(self, events: Sequence[bytes], count: int | None = None) -> Segment | None:
        """Persist one batch as the newest segment; None if the byte bound is reached.

        ``count`` is how many queued events the segment accounts for, which can
        exceed ``len(events)`` when the consumer dropped some while encoding.
        """
        count = len(events) if count is None else count
        data = b"".join(e + b"\n" for e in events)
        if self.bytes + len(data) > self.max_bytes:
            return None
        seq = self._next_seq
        name = f"{seq:016d}-{count}.jsonl"
        path = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".{name}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("journeys-sdk: could not write overflow segment %s: %s", path, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return None
        self._next_seq = seq + 1
        seg = Segment(seq, count, len(data), path)
        self._segments.append(seg)
        self.bytes += seg.size
        self.events += seg.count
        return seg

    def remove(self, seg: Segment) -> None:
        """Forget a delivered (or permanently refused) segment; only the head is ever removed."""
        if self._segments and self._segments[0] is seg:
            self._segments.popleft()
            self.bytes -= seg.size
            self.events -= seg.count
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock

    def detach_after_fork(self) -> None:
        """In a forked child: drop our copy of the lock descriptor without unlocking.

        flock belongs to the open file description shared with the parent, so an
        explicit unlock here would release the parent's ownership, and keeping
        the copy open would keep the directory locked after the parent exits.
        """
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
