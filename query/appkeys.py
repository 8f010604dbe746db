"""Every key of the query service's ``web.Application``: what :func:`query.app.create_app` puts in the app and
handlers read back (``request.app[STORES]``), in one place.

The background components' modules are named for the type checker only: a route module imports these keys,
and must not load the stage-state updater to get them (the HTTP layer reads the facts through
:mod:`query.facts.builds` and :mod:`query.facts.locks`, never through the loop that writes them).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from journeys.metrics import Metrics
from journeys.stores import Stores
from query.kpi_cache import KpiCache

if TYPE_CHECKING:
    from query.alert_delivery import AlertDeliverer
    from query.alerts import AlertEvaluator
    from query.dashboard import Dashboard
    from query.facts.updater import StageStateUpdater

STORES = web.AppKey("stores", Stores)
METRICS = web.AppKey("metrics", Metrics)
STATE_UPDATER: web.AppKey[StageStateUpdater] = web.AppKey("state_updater")
ALERT_EVALUATOR: web.AppKey[AlertEvaluator] = web.AppKey("alert_evaluator")
ALERT_DELIVERER: web.AppKey[AlertDeliverer] = web.AppKey("alert_deliverer")
DASHBOARD: web.AppKey[Dashboard] = web.AppKey("dashboard")  # the page and assets, read at start
KPI_CACHE = web.AppKey("kpi_cache", KpiCache)
# One preview at a time per app: a preview takes every core ClickHouse has, as a rebuild does (query/kpi_preview.py).
KPI_PREVIEWS = web.AppKey("kpi_previews", asyncio.Lock)
