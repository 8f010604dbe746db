"""One HTTP request to the collector: ``POST {host}/v1/batch``.

Standard library only (``http.client``), so the SDK adds no dependencies to the
host application.  The connection is kept alive between batches, since a burst
of 20 000 events is dozens of requests and a handshake each would dominate.
A kept-alive socket the server has since closed is detected *before* reuse, so
that is never mistaken for (and counted as) a failed attempt.

This module does no retrying; it turns every outcome into either an
``Acknowledgement`` or a ``DeliveryError`` whose ``retryable`` flag tells the
caller what to do.
"""

from __future__ import annotations

import base64
import http.client
import json
import select
import ssl
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, ConfigurationError, NetworkError
from .retry import parse_retry_after
from .version import VERSION

__all__ = ["Acknowledgement", "Transport", "gzip_body", "parse_response"]


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """A 2xx answer.  ``quarantined`` pairs batch indexes with the collector's reasons."""

    status: int
    accepted: int | None = None
    quarantined: list[tuple[int, list[Any]]] = field(default_factory=list)


def gzip_body(body: bytes, level: int) -> bytes:
    # wbits=31 makes zlib write a gzip container in one C call; zlib releases the
    # GIL while compressing, so callers' threads keep running.
    return zlib.compress(body, level, wbits=31)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None


def parse_response(status: int, headers: http.client.HTTPMessage | None, body: bytes) -> Acknowledgement:
    """Classify an answer; raise ``APIError`` for anything but 2xx."""
    data = _json_or_none(body)
    if 200 <= status < 300:
        accepted = None
        quarantined: list[tuple[int, list[Any]]] = []
        if isinstance(data, dict):
            if isinstance(data.get("accepted"), int):
                accepted = data["accepted"]
            for q in data.get("quarantined") or ():
                if isinstance(q, dict) and isinstance(q.get("index"), int):
                    errs = q.get("errors")
                    quarantined.append((q["index"], list(errs) if isinstance(errs, list) else [errs]))
        return Acknowledgement(status, accepted, quarantined)
    errors: list[Any] = []
    if isinstance(data, dict) and isinstance(data.get("errors"), list):
        errors = data["errors"]
    retry_after = parse_retry_after(headers.get("Retry-After") if headers is not None else None)
    text = body[:1000].decode("utf-8", "replace") if not errors else ""
    raise APIError(status, errors, retry_after=retry_after, body=text)


class Transport:
    """A kept-alive connection to one collector, used by one thread at a time."""

    def __init__(self, host: str, write_key: str, timeout: float) -> None:
        url = urllib.parse.urlsplit(host)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigurationError(f"host must be an http(s) URL, got {host!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        try:
            self._port = url.port
        except ValueError as exc:
            raise ConfigurationError(f"invalid port in host {host!r}") from exc
        self.path = url.path.rstrip("/") + "/v1/batch"
        self.url = f"{url.scheme}://{url.netloc}{self.path}"
        self._timeout = timeout
        token = base64.b64encode(f"{write_key}:".encode()).decode("ascii")
        self._headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
            "Authorization": f"Basic {token}",
            "User-Agent": f"journeys-sdk-python/{VERSION}",
        }
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and conn.sock is not None:
            # An idle kept-alive socket that is readable has been closed (or
            # poisoned) by the server; reusing it would fail for a reason that
            # says nothing about the collector's health.
            try:
                readable, _, _ = select.select([conn.sock], [], [], 0)
            except (OSError, ValueError):
                readable = [conn.sock]
            if readable:
                conn.close()
                conn = None
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._conn = conn
        return conn

    def post(self, gzipped_body: bytes) -> Acknowledgement:
        """Send one compressed batch body; return the acknowledgement or raise ``DeliveryError``."""
        conn = self._connection()
        try:
            conn.request("POST", self.path, body=gzipped_body, headers=self._headers)
            resp = conn.getresponse()
            # read() without a size, because only that raises IncompleteRead
            # when the connection drops mid-body: a truncated answer is a
            # network failure (retry), not an acknowledgement.
            body = resp.read()
            if resp.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise NetworkError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        return parse_response(resp.status, resp.headers, body)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
