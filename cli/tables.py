"""Plain-text tables and times for people, as ``project list`` and ``key list`` print them."""

from __future__ import annotations

from datetime import datetime


def when(at: datetime | None, none: str = "-") -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at is not None else none


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])
