"""Static files served from memory by both services (the tracker script, the dashboard): one handler with
an ETag (304 on a match), gzip when the browser accepts it, and the cache policy the caller chooses."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Asset:
    """A file served from memory, gzip'd lazily (once) when a browser accepts gzip."""

    body: bytes
    content_type: str
    cache_control: str
    etag: str = ""
    _gzipped: bytes | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if not self.etag:
            self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    async def gzipped(self) -> bytes:
        async with self._lock:
            if self._gzipped is None:
                # Compressing a large file (plotly: ~5 MB) takes a few hundred ms: keep it off the event loop.
                self._gzipped = await asyncio.to_thread(gzip.compress, self.body, 9, mtime=0)
            return self._gzipped


def serve(asset_of: Callable[[], Asset], extra: dict[str, str] | None = None) -> Any:
    """A handler for one asset; ``asset_of()`` gives it (so a large one can be read at first request)."""

    async def handler(request: web.Request) -> web.Response:
        asset = asset_of()
        headers = {
            "Content-Type": asset.content_type,
            "Cache-Control": asset.cache_control,
            "ETag": asset.etag,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
            **(extra or {}),
        }
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            return web.Response(body=await asset.gzipped(), headers={**headers, "Content-Encoding": "gzip"})
        return web.Response(body=asset.body, headers=headers)

    return handler
