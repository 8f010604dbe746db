"""journeys-sdk: record customer-journey events from Python.

    from journeys_sdk import Client

    client = Client("WRITE_KEY", host="https://collector.example.com")
    client.track("user-1", "Order Completed", {"total": 42})
    client.touchpoint("user-1", channel="email", action="opened_renewal_email", sentiment="positive")
    client.flush()          # or: await client.aflush()

Module map (one job each): ``client`` (public API, hot path), ``buffer``
(bounded in-memory queue), ``consumer`` (background batching thread),
``uploader`` (one batch: attempt, retry, report), ``request`` (HTTP),
``retry`` (backoff and budget), ``encode`` (wire format, size limits),
``overflow`` (on-disk spill), ``journey`` (touchpoint vocabulary), ``result``,
``stats``, ``errors``, and ``links`` (signed email links; reserved).
"""

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
from .result import DropReason, EnqueueResult, Status
from .stats import Stats
from .version import VERSION

__version__ = VERSION

__all__ = [
    "Client",
    "DEFAULT_HOST",
    "new_message_id",
    "EnqueueResult",
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
]
