"""A scriptable stand-in for the collector, faithful to the wire contract.

Runs an aiohttp app on 127.0.0.1 (random port) in a background thread so that
synchronous tests can use it too.  It checks everything the real collector
checks (Basic auth, gzip, 500 KiB body limit, batch shape, per-event rules),
quarantines invalid events, and records every request, so tests can assert on
exactly what went over the wire.  Each request consumes the next scripted
``Reply`` (or ``default``), which can be an error status (with Retry-After), a
delay, or a dropped connection before or in the middle of the response.

Named ``sdk_fake_collector`` (not ``fake_collector``) so it cannot collide with
helpers of the server's test-suite in pytest's rootdir-based imports.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import re
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

MAX_BODY = 500 * 1024
MAX_EVENT = 32 * 1024
TYPES = {"track", "identify", "page", "screen", "group", "alias"}
SENTIMENTS = {"positive", "neutral", "negative"}
SLUG = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")

logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: str | None = None  # "before": close without answering; "mid": cut the body short
    quarantine: tuple[int, ...] = ()  # batch indexes to quarantine on top of the real rules

    @classmethod
    def error(cls, status: int, retry_after: float | str | None = None) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls(status=status, headers=headers)


@dataclass
class Recorded:
    at: float
    headers: dict[str, str]
    raw_size: int
    body_size: int = 0
    payload: dict[str, Any] | None = None
    status: int = 0
    stored: bool = False
    reply: Reply | None = None

    @property
    def batch(self) -> list[dict[str, Any]]:
        return (self.payload or {}).get("batch", [])

    @property
    def ids(self) -> list[str]:
        return [e.get("messageId") for e in self.batch]


def _err(field: str, reason: str) -> dict[str, str]:
    return {"field": field, "reason": reason}


def validate_event(ev: Any) -> list[dict[str, str]]:
    """The collector's per-event rules; a non-empty result quarantines the event.

    Errors have the real collector's shape: ``{"field", "reason"}``.
    """
    if not isinstance(ev, dict):
        return [_err("", "event must be an object")]
    errors = []
    if ev.get("type") not in TYPES:
        errors.append(_err("type", "must be one of " + ", ".join(sorted(TYPES))))
    if not isinstance(ev.get("messageId"), str) or not ev["messageId"]:
        errors.append(_err("messageId", "required"))
    ts = ev.get("timestamp")
    try:
        if not isinstance(ts, str) or datetime.fromisoformat(ts).tzinfo is None:
            errors.append(_err("timestamp", "must be ISO-8601 with a UTC offset"))
    except ValueError:
        errors.append(_err("timestamp", "must be ISO-8601 with a UTC offset"))
    if ev.get("type") == "alias":
        if not ev.get("previousId") or not ev.get("userId"):
            errors.append(_err("previousId", "alias needs previousId and userId"))
    elif not ev.get("userId") and not ev.get("anonymousId"):
        errors.append(_err("userId", "userId or anonymousId required"))
    if ev.get("type") == "track" and not ev.get("event"):
        errors.append(_err("event", "required"))
    if ev.get("type") == "group" and not ev.get("groupId"):
        errors.append(_err("groupId", "required"))
    if "channel" in ev and not (isinstance(ev["channel"], str) and SLUG.fullmatch(ev["channel"])):
        errors.append(_err("channel", "must be a short name of letters, digits and _"))
    if "sentiment" in ev and ev["sentiment"] not in SENTIMENTS:
        errors.append(_err("sentiment", "must be one of positive, neutral, negative"))
    if len(json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_EVENT:
        errors.append(_err("", "event larger than 32 KiB"))
    return errors


class FakeCollector:
    def __init__(self, write_key: str = "test-write-key") -> None:
        self.write_key = write_key
        self.default = Reply()
        self.requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- control ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def set_default(self, reply: Reply) -> None:
        with self._lock:
            self.default = reply

    def stored_events(self) -> list[dict[str, Any]]:
        """Every event the collector stored (not quarantined), duplicates included, in arrival order."""
        with self._lock:
            requests = [r for r in self.requests if r.stored]
        out = []
        for r in requests:
            quarantined = set(r.reply.quarantine) if r.reply else set()
            out += [ev for i, ev in enumerate(r.batch) if i not in quarantined and not validate_event(ev)]
        return out

    def stored_ids(self) -> list[str]:
        """messageIds of ``stored_events()``."""
        return [ev.get("messageId") for ev in self.stored_events()]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[str]:
        """Wait until ``n`` distinct messageIds are stored; return the stored list."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self.stored_ids()
            if len(set(ids)) >= n:
                return ids
            time.sleep(0.005)
        return self.stored_ids()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeCollector:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=16 * MAX_BODY)
            app.router.add_post("/v1/batch", self._handle)
            # auto_decompress=False: check the bytes really on the wire are gzip.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2, auto_decompress=False)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-collector", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fake collector did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    # -- the endpoint ---------------------------------------------------------------

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        reply = self._next_reply()
        raw = await request.read()
        rec = Recorded(at=time.monotonic(), headers=dict(request.headers), raw_size=len(raw), reply=reply)
        with self._lock:
            self.requests.append(rec)

        def answer(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
            rec.status = status
            return web.json_response(payload, status=status, headers=headers)

        expected = "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return answer(401, {"errors": [_err("Authorization", "unknown or revoked key")]})
        if request.headers.get("Content-Encoding") != "gzip":
            return answer(400, {"errors": [_err("Content-Encoding", "body must be gzip-compressed")]})
        try:
            body = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            return answer(400, {"errors": [_err("body", "invalid gzip")]})
        rec.body_size = len(body)
        if len(body) > MAX_BODY:
            return answer(413, {"errors": [_err("body", "larger than 500 KiB")]})
        try:
            payload = json.loads(body)
        except ValueError:
            return answer(400, {"errors": [_err("body", "invalid JSON")]})
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("batch"), list)
            or not isinstance(payload.get("sentAt"), str)
        ):
            return answer(400, {"errors": [_err("body", "expected {batch: [...], sentAt}")]})
        rec.payload = payload

        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.drop == "before":
            rec.status = -1
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if reply.status != 200:
            return answer(reply.status, {"errors": [_err("server", f"scripted {reply.status}")]}, reply.headers)

        quarantined = []
        for i, ev in enumerate(payload["batch"]):
            errs = validate_event(ev) or ([_err("", "scripted quarantine")] if i in reply.quarantine else [])
            if errs:
                quarantined.append({"index": i, "errors": errs})
        if payload["batch"] and len(quarantined) == len(payload["batch"]):
            # Like the real collector: nothing valid refuses the request as a
            # whole (400, nothing stored), listing what is wrong with each event.
            errors = [{"index": q["index"], **e} for q in quarantined for e in q["errors"]]
            return answer(400, {"errors": errors})
        rec.stored = True
        accepted = len(payload["batch"]) - len(quarantined)
        if reply.drop == "mid":
            # Stored, but the client never learns it: it must retry, and the
            # duplicates it sends must carry the same messageIds.
            rec.status = -2
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Content-Length": "200"})
            await resp.prepare(request)
            await resp.write(b'{"accepted": ')
            assert request.transport is not None
            request.transport.close()
            return resp
        return answer(200, {"accepted": accepted, "quarantined": quarantined})
