"""Sending chunks to the collector's ``POST /v1/import`` (collector/imports.py), with retry.

A collector that is restarting or whose spool is full is waited for and the chunk resent from its last
durable line; re-sending is safe because every event has a deterministic id (its messageId, or one the
collector derives from its content). The collector's per-line errors are mapped back to the file's lines
through the chunk's line table.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
from dataclasses import dataclass, field
from typing import Any

from cli.importer.reading import Chunk, ImportFailed

#: Answers that mean "not now": spool full (with the line to resume from), rate limited, a proxy's hiccup.
RETRYABLE = frozenset({429, 502, 503, 504})
FIRST_LINE_HEADER = "X-Import-First-Line"


@dataclass
class Sent:
    """What the collector did with one chunk (the CLI's own refusals not included)."""

    accepted: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # with file line numbers
    unlisted: int = 0  # errors the collector counted but did not list (over its cap)


class Sender:
    """Posts chunks to ``/v1/import``, resending from the last durable line while the collector is busy
    or away, for up to ``retry_for`` seconds per chunk."""

    def __init__(self, session: Any, url: str, key: str, *, compress: bool, retry_for: float):
        self.session = session
        self.url = url.rstrip("/") + "/v1/import"
        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        self.compress = compress
        self.retry_for = retry_for

    async def send(self, chunk: Chunk) -> Sent:
        import aiohttp

        sent = Sent()
        offset = 0 if chunk.file_lines is not None else chunk.first_line - 1  # body line i ↔ offset + i
        start = 0  # body lines before this index are done
        deadline = time.monotonic() + self.retry_for
        pause = 0.5
        while start < len(chunk.lines) and any(line.strip() for line in chunk.lines[start:]):
            body = b"\n".join(chunk.lines[start:]) + b"\n"
            headers = {
                "Authorization": self.auth,
                "Content-Type": "application/x-ndjson",
                FIRST_LINE_HEADER: str(offset + start + 1),
            }
            if self.compress:
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            try:
                async with self.session.post(self.url, data=body, headers=headers) as resp:
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                    try:
                        answer = await resp.json(content_type=None)
                    except ValueError:
                        answer = {"errors": [{"field": "body", "reason": (await resp.text())[:300]}]}
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                # The collector is restarting or unreachable: resend the rest of the chunk (already stored
                # events keep their ids, so nothing is counted twice).
                if time.monotonic() + pause > deadline:
                    raise ImportFailed(f"cannot reach {self.url}: {exc}") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            if not isinstance(answer, dict):
                answer = {"errors": [{"field": "body", "reason": str(answer)[:300]}]}
            if "last_durable_line" in answer:
                # The counts cover exactly the lines through last_durable_line: add them, resend the rest.
                self._account(chunk, answer, sent)
                start = max(start, int(answer["last_durable_line"]) - offset)
            if status in RETRYABLE and time.monotonic() < deadline:
                await asyncio.sleep(_seconds(retry_after, pause))
                pause = min(pause * 2, 10.0)
                continue
            problems = [e for e in answer.get("errors", []) if isinstance(e, dict) and "line" not in e]
            if status in (200, 400) and "last_durable_line" in answer and not problems:
                return sent
            reasons = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in (problems or answer.get("errors", [])))
            raise ImportFailed(f"the collector answered {status}: {reasons or answer}")
        return sent

    @staticmethod
    def _account(chunk: Chunk, answer: dict[str, Any], sent: Sent) -> None:
        sent.accepted += int(answer.get("accepted", 0))
        sent.rejected += int(answer.get("rejected", 0))
        lines = chunk.file_lines
        listed = 0
        for error in answer.get("errors", []):
            if "line" not in error:
                continue
            n = int(error["line"])
            sent.errors.append({**error, "line": lines[n - 1] if lines is not None else n})
            listed += 1
        sent.unlisted += max(int(answer.get("errors_total", 0)) - listed, 0)


def _seconds(retry_after: str | None, default: float) -> float:
    try:
        return min(max(float(retry_after or ""), 0.1), 30.0)
    except ValueError:
        return default
