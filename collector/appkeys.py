"""Every ``web.AppKey`` the collector's app holds, typed, in one place.

:func:`collector.app.create_app` sets them (the cleanup contexts set the spool and the inserter once they
are open); handlers read what they need from ``request.app[KEY]``, so no route module closes over a store,
the metrics or the spool, and a test reaches the same objects through the same keys.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from collector.email_keys import SigningKeyResolver
from collector.inserter import Inserter
from collector.origins import OriginTable
from collector.ratelimit import RateLimiter
from collector.spool import Spool
from journeys.assets import Asset
from journeys.keys import KeyResolver
from journeys.metrics import Metrics
from journeys.stores import Stores

STORES = web.AppKey("stores", Stores)
METRICS = web.AppKey("metrics", Metrics)
#: Opened by collector.app's cleanup context (absent before the app starts and after it stops).
SPOOL = web.AppKey("spool", Spool)
INSERTER = web.AppKey("inserter", Inserter)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)

# The per-project caches, each trusted for JOURNEYS_KEY_CACHE_TTL_S (a revoked key, a removed origin, a
# retired email key stop working within it), all set together by create_app.
API_KEYS = web.AppKey("api_keys", KeyResolver)
ORIGINS = web.AppKey("origins", OriginTable)
EMAIL_KEYS = web.AppKey("email_keys", SigningKeyResolver)

#: ``GET /t.js``, minified by create_app: a source the minifier refuses stops the start (collector/tracker.py).
TRACKER_SCRIPT = web.AppKey("tracker_script", Asset)
#: One quarantine replay at a time per collector (collector/quarantine.py).
REPLAY_LOCK = web.AppKey("replay_lock", asyncio.Lock)
