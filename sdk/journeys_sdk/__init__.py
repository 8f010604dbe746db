"""journeys-sdk: record customer-journey events from Python.

    from journeys_sdk import Client

    client = Client("WRITE_KEY", host="https://collector.example.com")
    client.track("user-1", "Order Completed", {"total": 42})
    client.touchpoint("user-1", channel="email", action="opened_renewal_email", sentiment="positive")
    if not client.flush():  # or: await client.aflush()
        ...                 # a FlushResult: counts and last_error say what was not delivered

Or, like ``import segment.analytics as analytics``, the module-level API::

    import journeys_sdk as analytics
    analytics.write_key = "WRITE_KEY"
    analytics.track("user-1", "Order Completed")

Module map (one job each): ``client`` (public API, hot path), ``buffer``
(bounded in-memory queue), ``consumer`` (background batching thread),
``uploader`` (one batch: attempt, retry, report), ``request`` (HTTP),
``retry`` (backoff and budget), ``encode`` (wire format, size limits),
``overflow`` (on-disk spill), ``journey`` (touchpoint vocabulary), ``result``,
``stats``, ``errors``, and ``links`` (signed email open pixels and click links:
``from journeys_sdk.links import EmailLinks``).
"""

import logging as _logging
import threading as _threading
from typing import Any as _Any

from .client import DEFAULT_HOST, Client, new_message_id
from .encode import MAX_BODY_BYTES, MAX_EVENT_BYTES
from .errors import (
    APIError,
    ConfigurationError,
    DeliveryError,
    EventTooLargeError,
    InvalidEventError,
    JourneysError,
    NetworkError,
    QuarantinedError,
    RetryBudgetExceeded,
    SerializationError,
    ShutdownError,
)
from .journey import Channel, Sentiment
from .result import DropReason, EnqueueResult, FlushResult, Status
from .stats import Stats
from .version import VERSION

__version__ = VERSION

__all__ = [
    "Client",
    "DEFAULT_HOST",
    "new_message_id",
    "EnqueueResult",
    "FlushResult",
    "Status",
    "DropReason",
    "Stats",
    "Channel",
    "Sentiment",
    "MAX_EVENT_BYTES",
    "MAX_BODY_BYTES",
    "JourneysError",
    "ConfigurationError",
    "InvalidEventError",
    "EventTooLargeError",
    "SerializationError",
    "DeliveryError",
    "NetworkError",
    "APIError",
    "RetryBudgetExceeded",
    "ShutdownError",
    "QuarantinedError",
    "VERSION",
    "__version__",
    # module-level API
    "write_key",
    "host",
    "on_error",
    "debug",
    "send",
    "sync_mode",
    "default_client",
    "track",
    "touchpoint",
    "identify",
    "group",
    "page",
    "screen",
    "alias",
    "flush",
    "shutdown",
    "join",
]

# -- module-level API ------------------------------------------------------------------
# Segment's analytics-python is mostly used through module globals
# (``analytics.write_key = ...; analytics.track(...)``); offering the same
# means switching really is one line.  The default Client is built from these
# settings on first use.

write_key: str | None = None
host: str = DEFAULT_HOST
on_error: _Any = None
debug: bool = False
send: bool = True
sync_mode: bool = False
default_client: Client | None = None

_default_lock = _threading.Lock()
_not_configured_logged = False


def _default() -> Client | None:
    global default_client, _not_configured_logged
    if default_client is None:
        with _default_lock:
            if default_client is None:
                if not write_key:
                    if not _not_configured_logged:
                        _not_configured_logged = True
                        _logging.getLogger("journeys_sdk").warning(
                            "journeys-sdk: set journeys_sdk.write_key before recording events; dropping them"
                        )
                    return None
                default_client = Client(write_key, host, on_error=on_error, debug=debug, send=send, sync_mode=sync_mode)
    return default_client


def _not_configured() -> EnqueueResult:
    return EnqueueResult(
        Status.DROPPED,
        None,
        DropReason.NOT_CONFIGURED,
        ConfigurationError("journeys_sdk.write_key is not set"),
    )


def track(*args: _Any, **kwargs: _Any) -> EnqueueResult:
    """``Client.track`` on the default client."""
    c = _default()
    return c.track(*args, **kwargs) if c is not None else _not_configured()


def touchpoint(*args: _Any, **kwargs: _Any) -> EnqueueResult:
    """``Client.touchpoint`` on the default client."""
    c = _default()
    return c.touchpoint(*args, **kwargs) if c is not None else _not_configured()


def identify(*args: _Any, **kwargs: _Any) -> EnqueueResult:
    """``Client.identify`` on the default client."""
    c = _default()
    return c.identify(*args, **kwargs) if c is not None else _not_configured()


def group(*args: _Any, **kwargs: _Any) -> EnqueueResult:
    """``Client.group`` on the default client."""
    c = _default()
    return c.group(*args, **kwargs) if c is not None else _not_configured()


def page(*args: _Any, **kwargs: _Any) -> EnqueueResult:
    """``Client.page`` on the default client."""
    c = _default()
    return c.page(*args, **kwargs) if c is not None else _not_configured()


def screen(*args: _Any, **kwargs: _Any) -> EnqueueResult:
    """``Client.screen`` on the default client."""
    c = _default()
    return c.screen(*args, **kwargs) if c is not None else _not_configured()


def alias(*args: _Any, **kwargs: _Any) -> EnqueueResult:
    """``Client.alias`` on the default client."""
    c = _default()
    return c.alias(*args, **kwargs) if c is not None else _not_configured()


def flush(timeout: float | None = None) -> FlushResult:
    """``Client.flush`` on the default client (an empty, truthy result if there is none yet)."""
    c = default_client
    return c.flush(timeout) if c is not None else FlushResult()


def shutdown(timeout: float | None = 10.0) -> FlushResult:
    """``Client.shutdown`` on the default client; a later call creates a fresh one."""
    global default_client
    with _default_lock:
        c, default_client = default_client, None
    return c.shutdown(timeout) if c is not None else FlushResult()


def join() -> None:
    """Segment-compatible alias of ``shutdown()``."""
    shutdown()
