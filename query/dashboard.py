"""The marketer dashboard: ``GET /`` (one page) and its assets under ``/static/``, from the query service.

The page is plain JavaScript (query/static/) that calls the same read API as everyone else, with the
project's read key as a Bearer token; nothing here reads data or knows about keys, so the dashboard can
never see more than the key in the browser's session storage allows. The assets need no build step.

Charts are plotly.js, taken from the ``plotly`` Python package (``package_data/plotly.min.js``) so the
dashboard works without a CDN and the version is pinned by the same lock as the service. It is ~4.8 MB;
it is gzip'd once, on first request, off the event loop, and cached by browsers for a week (the ETag is
the plotly version, so an upgrade is picked up at the next revalidation).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from journeys.assets import Asset, serve
from journeys.openapi import operation
from query.appkeys import DASHBOARD

STATIC = "static"
# Our own assets are small and change with the code: browsers revalidate on every load (cheap with ETag).
OWN_CACHE = "no-cache"
PLOTLY_CACHE = "public, max-age=604800"
# The page loads only its own scripts and styles; plotly injects <style> elements and draws with data:
# URIs, hence 'unsafe-inline' for styles and data:/blob: for images. No inline script, no eval.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_OWN_ASSETS = {
    "/static/dashboard.js": ("dashboard.js", "application/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def _own(name: str, content_type: str) -> Asset:
    body = resources.files("query").joinpath(STATIC, name).read_bytes()
    return Asset(body, content_type, OWN_CACHE)


def plotly_asset() -> Asset:
    """plotly.js as shipped inside the plotly Python package."""
    import plotly

    body = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    return Asset(body, "application/javascript; charset=utf-8", PLOTLY_CACHE, f'"plotly-{plotly.__version__}"')


@dataclass
class Dashboard:
    """The page and our own assets, read when the app is made (a missing file stops the start, not a page);
    plotly.js is read at its first request (~4.8 MB nobody may ask for)."""

    page: Asset
    own: dict[str, Asset]
    _plotly: Asset | None = None

    @classmethod
    def load(cls) -> Dashboard:
        page = _own("index.html", "text/html; charset=utf-8")
        return cls(page, {path: _own(name, content_type) for path, (name, content_type) in _OWN_ASSETS.items()})

    def plotly(self) -> Asset:
        if self._plotly is None:
            self._plotly = plotly_asset()
        return self._plotly


PAGE_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}

routes = web.RouteTableDef()


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    page = request.app[DASHBOARD].page
    return await serve(lambda: page, PAGE_HEADERS)(request)


async def own_asset(request: web.Request) -> web.Response:
    asset = request.app[DASHBOARD].own[request.path]
    return await serve(lambda: asset)(request)


for _path in _OWN_ASSETS:
    routes.get(_path)(own_asset)


@routes.get("/static/plotly.min.js")
async def plotly(request: web.Request) -> web.Response:
    return await serve(request.app[DASHBOARD].plotly)(request)


def dashboard_openapi_paths() -> dict[str, Any]:
    def page(summary: str, content_type: str, description: str) -> dict[str, Any]:
        return {
            "get": operation(
                summary,
                tags=["dashboard"],
                secured=False,
                description=description,
                responses={
                    200: {"description": "The file.", "content": {content_type: {"schema": {"type": "string"}}}},
                    304: {"description": "Not modified (If-None-Match matched the ETag)."},
                },
            )
        }

    return {
        "/": page(
            "The marketer dashboard (HTML)", "text/html", "Sign in with the project's read key; see docs/dashboard.md."
        ),
        "/static/dashboard.js": page(
            "The dashboard's script", "application/javascript", "Revalidated on every load (ETag)."
        ),
        "/static/dashboard.css": page("The dashboard's styles", "text/css", "Revalidated on every load (ETag)."),
        "/static/plotly.min.js": page(
            "plotly.js, from the plotly Python package",
            "application/javascript",
            "Cached for a week; gzip'd when accepted.",
        ),
    }
