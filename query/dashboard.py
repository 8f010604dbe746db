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

from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from journeys.assets import Asset, serve
from journeys.openapi import operation

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


def _constant(asset: Asset) -> Callable[[], Asset]:
    return lambda: asset


def add_dashboard_routes(app: web.Application) -> None:
    """``/`` and ``/static/…``. Our own files are read now (a missing file stops the start, not a page)."""
    page = _own("index.html", "text/html; charset=utf-8")
    page_headers = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
    app.router.add_get("/", serve(lambda: page, page_headers))
    for path, (name, content_type) in _OWN_ASSETS.items():
        app.router.add_get(path, serve(_constant(_own(name, content_type))))
    plotly: list[Asset] = []

    def plotly_once() -> Asset:
        if not plotly:
            plotly.append(plotly_asset())
        return plotly[0]

    app.router.add_get("/static/plotly.min.js", serve(plotly_once))


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
