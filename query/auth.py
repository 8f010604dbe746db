"""Who is asking: the one check every query handler calls before it reads or changes anything."""

from __future__ import annotations

from aiohttp import web

from journeys.http import authorized
from journeys.keys import Principal
from query.appkeys import STORES


async def principal_of(request: web.Request, kinds: tuple[str, ...] = ("read",)) -> Principal:
    """The project a key belongs to; 401 without a valid key, 403 for a key of another kind."""
    cannot = "change this" if kinds == ("admin",) else "read"
    return await authorized(request, request.app[STORES].keys, kinds, needed="read key", cannot=cannot)
