"""The import's progress on stderr: bytes and rows done, rate and ETA."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Bytes and rows done, rate and ETA on stderr: one redrawn line on a terminal, a plain line every few
    seconds otherwise (logs, CI)."""

    def __init__(self, total_bytes: int | None, enabled: bool, stream: Any = sys.stderr):
        self.total = total_bytes
        self.enabled = enabled
        self.stream = stream
        self.tty = enabled and stream.isatty()
        self.began = time.monotonic()
        self.last_drawn = 0.0
        self.last_rows = -1
        self.interval = 0.2 if self.tty else 5.0

    def update(self, position: int, rows: int, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last_drawn < self.interval:
            return
        if final and not self.tty and rows == self.last_rows:
            return  # the last plain line already says it
        self.last_drawn, self.last_rows = now, rows
        elapsed = max(now - self.began, 1e-6)
        rate = rows / elapsed
        parts = []
        if self.total:
            fraction = min(position / self.total, 1.0)
            parts.append(f"{fraction * 100:3.0f}%")
            if self.tty:
                filled = int(fraction * 24)
                parts.append("[" + "#" * filled + "." * (24 - filled) + "]")
            parts.append(f"{_size(position)}/{_size(self.total)}")
        else:
            parts.append(_size(position))
        parts.append(f"{rows:,} rows")
        parts.append(f"{rate:,.0f} rows/s")
        if self.total and 0 < position < self.total and not final:
            parts.append(f"ETA {_duration(elapsed * (self.total - position) / position)}")
        text = " ".join(parts)
        if self.tty:
            self.stream.write("\r" + text.ljust(78) + ("\n" if final else ""))
        else:
            self.stream.write("import: " + text + "\n")
        self.stream.flush()


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
