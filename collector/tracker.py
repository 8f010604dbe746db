"""``GET /t.js``: the browser tracker (collector/static/tracker.js), minified once at start.

The source is written readable, with comments; what browsers get is that source with its comments,
indentation and most line breaks removed, and gzip'd when the browser accepts it. The minifier is small on
purpose and therefore only ever does what cannot change the program:

* it drops whole-line comments (``// …`` and ``/* … */`` blocks that start a line) and blank lines;
* it strips each line's leading and trailing white space (never inside a string: the source has no
  multi-line strings — template literals and ``\\``-continued lines are refused);
* it joins a line to the next only after ``{``, ``;`` or ``,``, where a line break is never significant
  to JavaScript (automatic semicolon insertion only acts at breaks these tokens do not end).

A comment after code on the same line cannot be told apart from ``//`` inside a string without parsing,
so the minifier refuses the source instead (an edit that breaks the rules fails at start and in the tests,
not in visitors' browsers). tests/test_tracker.py runs the same browser scenarios on both forms.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from aiohttp import web

from collector.appkeys import TRACKER_SCRIPT
from journeys.assets import Asset, serve
from journeys.errors import JourneysError
from journeys.openapi import operation

SOURCE_PATH = ("static", "tracker.js")
_TRAILING_COMMENT = re.compile(r"\s//")
_JOINABLE = ("{", ";", ",")
CACHE_SECONDS = 3600


class MinifyError(JourneysError, ValueError):
    """The tracker source breaks a rule the minifier relies on; the message names the line."""


def tracker_source() -> str:
    return resources.files("collector").joinpath(*SOURCE_PATH).read_text(encoding="utf-8")


def minify(source: str) -> str:
    """``source`` without comments and needless white space; see the module docstring for the rules."""
    out: list[str] = []
    in_block = False
    for number, raw in enumerate(source.splitlines(), 1):
        line = raw.strip()
        if in_block:
            if "*/" in line:
                if not line.endswith("*/"):
                    raise MinifyError(f"line {number}: code after the end of a block comment")
                in_block = False
            continue
        if line.startswith("/*"):
            end = line.find("*/", 2)
            if end == -1:
                in_block = True
            elif end != len(line) - 2:
                raise MinifyError(f"line {number}: code after the end of a block comment")
            continue
        if not line or line.startswith("//"):
            continue
        if "`" in line:
            raise MinifyError(f"line {number}: template literals are not supported (they may span lines)")
        if line.endswith("\\"):
            raise MinifyError(f"line {number}: a line continued with \\ (a multi-line string)")
        if _TRAILING_COMMENT.search(line) or "/*" in line:
            raise MinifyError(f"line {number}: comments must stand on their own line")
        if out and out[-1].endswith(_JOINABLE):
            out[-1] += line
        else:
            out.append(line)
    if in_block:
        raise MinifyError("unterminated block comment")
    return "\n".join(out) + "\n"


def build_script(source: str | None = None) -> Asset:
    body = minify(tracker_source() if source is None else source).encode("utf-8")
    # An hour: a new tracker reaches pages within that; the ETag makes revalidation cheap.
    return Asset(body, "application/javascript; charset=utf-8", f"public, max-age={CACHE_SECONDS}")


routes = web.RouteTableDef()


@routes.get("/t.js")
async def tracker_script(request: web.Request) -> web.Response:
    """Serve ``app[TRACKER_SCRIPT]``: :func:`build_script`'s, run by create_app, so a source the minifier
    refuses stops the start."""
    script = request.app[TRACKER_SCRIPT]
    response: web.Response = await serve(lambda: script)(request)
    return response


def tracker_openapi_paths() -> dict[str, Any]:
    return {
        "/t.js": {
            "get": operation(
                "The browser tracker (JavaScript)",
                tags=["ingest"],
                secured=False,
                description='Include with <script async src="…/t.js" data-key="jp_…"></script>; see '
                "docs/tracker.md. Cached for an hour, with an ETag; gzip'd when accepted.",
                responses={
                    200: {
                        "description": "The tracker, minified.",
                        "content": {"application/javascript": {"schema": {"type": "string"}}},
                    },
                    304: {"description": "Not modified (If-None-Match matched the ETag)."},
                },
            )
        }
    }
