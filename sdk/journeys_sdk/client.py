"""The public ``Client``: validate cheaply, stamp, enqueue, never block.

Recording calls run on the application's request path, often on an asyncio
event loop, so they do the minimum: type checks, a ``messageId`` and a
timestamp, an estimate of the size, and a bounded append under a lock held for
well under a microsecond.  Encoding, batching, compression, HTTP and retries
happen on the consumer thread (``consumer.py``).  Problems are *returned*
(``EnqueueResult``), counted (``client.stats``) and, for delivery, reported to
``on_error``; they are never raised into the caller, whose business logic must
not fail because analytics did.

The method signatures and positional order match Segment's analytics-python,
so switching is a one-line change.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as _dt
import itertools
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeAlias

from .buffer import EventBuffer
from .consumer import Consumer
from .encode import (
    ENVELOPE_BYTES,
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    Entry,
    Fields,
    body_overhead,
    build_event,
    encode_event,
    estimate_size,
)
from .errors import ConfigurationError, EventTooLargeError, InvalidEventError, RetryBudgetExceeded, SerializationError
from .journey import check_channel, check_sentiment
from .overflow import OverflowStore, OverflowUnavailable
from .request import Transport
from .result import DropReason, EnqueueResult, FlushResult, Status
from .retry import RetryPolicy
from .stats import Stats, StatsCounter
from .uploader import Batch, OnError, Outcome, Uploader

__all__ = ["Client", "DEFAULT_HOST", "new_message_id"]

log = logging.getLogger("journeys_sdk")

DEFAULT_HOST = "http://127.0.0.1:8080"

Properties: TypeAlias = Mapping[str, Any]
Timestamp: TypeAlias = "_dt.datetime | str | float | int"
Id: TypeAlias = "str | int | uuid.UUID"

_getpid = os.getpid
_chain = itertools.chain.from_iterable
_now = time.time
_QUEUED = Status.QUEUED
_MAX_EVENT = MAX_EVENT_BYTES

# Message ids need uniqueness, not secrecy, so they come from a per-process
# Mersenne Twister seeded from os.urandom instead of calling os.urandom (as
# uuid.uuid4() does) per event.  That call releases the GIL, and when the
# consumer thread grabs it to encode a batch, the caller of track() can wait a
# whole GIL switch interval (5 ms) to get it back.
_rng = random.Random()
_getrandbits = _rng.getrandbits
os.register_at_fork(after_in_child=_rng.seed)  # a child must not replay the parent's ids
_V4_CLEAR = ~((0xF << 76) | (0xC << 60)) & ((1 << 128) - 1)
_V4_SET = (0x4 << 76) | (0x8 << 60)


def new_message_id() -> str:
    """A random RFC 4122 version-4 UUID string, ~4x faster than ``str(uuid.uuid4())``."""
    h = "%032x" % (_getrandbits(128) & _V4_CLEAR | _V4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _coerce_id(value: object) -> str | None:
    """Ids may be numbers or UUIDs (as in Segment); they travel as strings."""
    if isinstance(value, str):
        return str.__str__(value) or None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, uuid.UUID)):
        return str(value)
    return None


def _inline(key: str, mapping: dict[str, Any]) -> tuple[Any, ...]:
    """Freeze a mapping-valued field as ``(key, n, k1, v1, ..., kn, vn)``.

    A snapshot (callers reuse dicts, and encoding happens later on another
    thread), taken in one C-level pass so no other thread runs halfway
    through it, and laid out inline in the entry so the entry stays one flat
    tuple (see ``encode.Entry``).
    """
    flat = (*_chain(mapping.items()),)
    return (key, len(flat) >> 1) + flat


def _check_timestamp_text(value: object) -> str | None:
    """Accept an ISO-8601 string; one without an offset is taken as UTC (as Segment and
    our collector read it) and sent with the offset spelled out, as the wire contract wants."""
    if not isinstance(value, str):
        return None
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=_dt.timezone.utc).isoformat(timespec="milliseconds")
    return str.__str__(value)


def _as_dict(value: object) -> dict[str, Any] | None:
    """A plain dict copy of any mapping; None (an invalid event) for anything else.

    Catches everything because a third-party mapping can fail in any way,
    and a recording call must not raise.
    """
    if isinstance(value, Mapping):
        try:
            return dict(value)
        except Exception:
            return None
    return None


# A lock that is fresh in every process: a forked child must never wait on a
# lock some parent thread held at the moment of the fork.
_fork_lock = threading.Lock()


def _reset_fork_lock() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_fork_lock)


class Client:
    """Records customer-journey events and delivers them to the collector.

    Create one per process (it owns a background thread) and share it across
    threads and coroutines.  Every recording method returns an
    ``EnqueueResult`` and never raises or blocks.

    :param write_key: sent as the HTTP Basic username; identifies the source.
    :param host: collector base URL; events go to ``{host}/v1/batch``.
    :param on_error: ``on_error(exc, events)``, called on the consumer thread
        for events that were refused, quarantined, given up, or dropped after
        queuing.  Keep it quick; exceptions from it are logged and swallowed.
    :param upload_size: events per request, at most.
    :param upload_interval: seconds an event may wait for its batch to fill.
    :param max_queue_size: events held in memory before recording calls drop.
    :param max_queue_bytes: estimated serialized bytes held in memory before
        recording calls drop.  A count bound alone would let large events
        exhaust memory during an outage.
    :param timeout: socket timeout per request, in seconds.
    :param retry_budget: seconds a batch may spend being retried before it is
        given up (or, with ``overflow_dir``, parked on disk).
    :param max_retries: optional cap on retries per batch, on top of the budget.
    :param backoff_base: ceiling of the first backoff (doubles per retry, full jitter).
    :param max_backoff: largest computed backoff.
    :param max_retry_after: largest ``Retry-After`` honoured.
    :param overflow_dir: directory for spilling events to disk during long
        outages; replayed in order when the collector is back, also by the
        next process that uses the same directory.
    :param max_overflow_bytes: disk space ``overflow_dir`` may use.
    :param send: False validates and stamps events, then discards them (tests).
    :param sync_mode: True delivers each event inside the recording call (tests).
    :param atexit_timeout: seconds the exit hook waits for delivery.
    :param gzip_level: zlib level for request bodies.
    :param debug: log at DEBUG level to stderr.
    """

    def __init__(
        self,
        write_key: str,
        host: str = DEFAULT_HOST,
        *,
        on_error: OnError | None = None,
        upload_size: int = 250,
        upload_interval: float = 0.5,
        max_queue_size: int = 100_000,
        max_queue_bytes: int = 32 * 1024 * 1024,
        timeout: float = 10.0,
        retry_budget: float = 60.0,
        max_retries: int | None = None,
        backoff_base: float = 0.1,
        max_backoff: float = 10.0,
        max_retry_after: float = 30.0,
        overflow_dir: str | os.PathLike[str] | None = None,
        max_overflow_bytes: int = 1024 * 1024 * 1024,
        send: bool = True,
        sync_mode: bool = False,
        atexit_timeout: float = 5.0,
        gzip_level: int = 6,
        debug: bool = False,
    ) -> None:
        if not isinstance(write_key, str) or not write_key:
            raise ConfigurationError("write_key must be a non-empty string")
        for name, value in (
            ("upload_size", upload_size),
            ("max_queue_size", max_queue_size),
            ("max_queue_bytes", max_queue_bytes),
            ("max_overflow_bytes", max_overflow_bytes),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer")
        for name, fvalue in (
            ("upload_interval", upload_interval),
            ("timeout", timeout),
            ("retry_budget", retry_budget),
            ("backoff_base", backoff_base),
            ("max_backoff", max_backoff),
            ("max_retry_after", max_retry_after),
            ("atexit_timeout", atexit_timeout),
        ):
            if not isinstance(fvalue, (int, float)) or fvalue < 0:
                raise ConfigurationError(f"{name} must be a non-negative number")
        if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
            raise ConfigurationError("max_retries must be None or a non-negative integer")
        if not 0 <= gzip_level <= 9:
            raise ConfigurationError("gzip_level must be 0..9")
        if on_error is not None and not callable(on_error):
            raise ConfigurationError("on_error must be callable")

        self.write_key = write_key
        self.host = host
        self.on_error = on_error
        self.send = send
        self.sync_mode = sync_mode
        self.overflow_dir = overflow_dir
        self._upload_size = upload_size
        self._upload_interval = float(upload_interval)
        self._max_queue_size = max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._timeout = float(timeout)
        self._max_overflow_bytes = max_overflow_bytes
        self._atexit_timeout = float(atexit_timeout)
        self._gzip_level = gzip_level
        self._policy = RetryPolicy(
            budget=float(retry_budget),
            base=float(backoff_base),
            cap=float(max_backoff),
            retry_after_cap=float(max_retry_after),
            max_retries=max_retries,
        )
        self._max_body = MAX_BODY_BYTES - body_overhead()
        Transport(host, write_key, self._timeout)  # validates host now, not on the consumer thread

        if debug:
            log.setLevel(logging.DEBUG)
            if not log.handlers:
                log.addHandler(logging.StreamHandler())

        self._closed = False
        self._overflow: OverflowStore | None = None
        self._setup()
        atexit.register(self._atexit)

    # -- per-process state ------------------------------------------------------

    def _setup(self) -> None:
        """(Re)create everything that must not be shared across a fork."""
        self._pid = _getpid()
        self._stats = StatsCounter()
        self._buffer = EventBuffer(
            self._max_queue_size,
            self._max_queue_bytes,
            wake_count=self._upload_size,
            wake_bytes=min(self._max_body, self._max_queue_bytes),
        )
        if self._closed:
            self._buffer.closed = True
        self._consumer: Consumer | None = None
        self._sync_lock = threading.Lock()
        self._sync_uploader: Uploader | None = None
        if not self.send or self._closed:
            return
        if self.sync_mode:
            self._sync_uploader = self._make_uploader()
            return
        if self.overflow_dir is not None:
            try:
                self._overflow = OverflowStore(self.overflow_dir, self._max_overflow_bytes)
            except OverflowUnavailable as exc:
                log.warning("journeys-sdk: %s; running without on-disk overflow", exc)
                self._overflow = None
            else:
                if self._overflow.events:
                    log.info("journeys-sdk: replaying %d events from %s", self._overflow.events, self.overflow_dir)
                    self._buffer.add_recovered(self._overflow.events)
                    self._stats.recovered = self._overflow.events
        self._consumer = Consumer(
            self._buffer,
            self._make_uploader(),
            self._stats,
            upload_size=self._upload_size,
            upload_interval=self._upload_interval,
            max_body_bytes=self._max_body,
            overflow=self._overflow,
        )
        try:
            self._consumer.start()
        except RuntimeError:
            # Out of threads (possible in a forked child, where this runs inside
            # a recording call that must not raise).  Events then queue up to the
            # bounds and are dropped there; flush() returns False.
            log.exception("journeys-sdk: cannot start the consumer thread; events will not be delivered")

    def _make_uploader(self) -> Uploader:
        return Uploader(
            Transport(self.host, self.write_key, self._timeout),
            self._policy,
            self._stats,
            self.on_error,
            self._gzip_level,
        )

    def _after_fork(self) -> None:
        # The parent's queue, thread, sockets and overflow lock stay the
        # parent's.  Events queued before the fork are the parent's to send;
        # the child starts empty (sending them twice would only cost dedup).
        with _fork_lock:
            if self._pid == _getpid():
                return
            if self._overflow is not None:
                self._overflow.detach_after_fork()
                self._overflow = None
            self._setup()

    # -- recording (hot path) -----------------------------------------------------

    def track(
        self,
        user_id: Id | None = None,
        event: str | None = None,
        properties: Properties | None = None,
        context: Properties | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: Id | None = None,
        integrations: Properties | None = None,
        message_id: str | None = None,
    ) -> EnqueueResult:
        """Record that ``user_id`` (or ``anonymous_id``) did ``event``."""
        if type(event) is not str or not event:
            return self._invalid("track() needs `event`, a non-empty string")
        size = ENVELOPE_BYTES + len(event)
        if properties is None:
            fields: Fields = ("event", event)
        else:
            if type(properties) is not dict:
                properties = _as_dict(properties)
                if properties is None:
                    return self._invalid("properties must be a mapping")
            size += estimate_size(properties)
            flat = (*_chain(properties.items()),)
            fields = ("event", event, "properties", len(flat) >> 1) + flat
        return self._enqueue("track", fields, size, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def touchpoint(
        self,
        user_id: Id | None = None,
        anonymous_id: Id | None = None,
        channel: str | None = None,
        action: str | None = None,
        sentiment: str | None = None,
        properties: Properties | None = None,
        context: Properties | None = None,
        timestamp: Timestamp | None = None,
        integrations: Properties | None = None,
        message_id: str | None = None,
    ) -> EnqueueResult:
        """Record a journey touchpoint: a track event with first-class journey fields.

        Sends ``type=track``, ``event=action`` and top-level ``channel``,
        ``touchpoint`` (= ``action``) and, if given, ``sentiment``, so journeys
        can be built without digging through ``properties``.

        :param channel: a lowercase slug such as ``web``, ``email``, ``store``,
            ``app``, ``ads``, ``social``, ``call_centre`` (see ``Channel``).
        :param action: what happened at the touchpoint, e.g. ``"opened_renewal_email"``.
        :param sentiment: ``positive``, ``neutral`` or ``negative`` (see ``Sentiment``).
        """
        ch = check_channel(channel)
        if ch is None:
            return self._invalid("touchpoint() needs `channel`, a lowercase slug such as 'web' or 'call_centre'")
        if type(action) is not str or not action:
            return self._invalid("touchpoint() needs `action`, a non-empty string")
        fields: Fields = ("event", action, "touchpoint", action, "channel", ch)
        size = ENVELOPE_BYTES + 2 * len(action) + len(ch) + 30
        if sentiment is not None:
            s = check_sentiment(sentiment)
            if s is None:
                return self._invalid("sentiment must be 'positive', 'neutral' or 'negative'")
            fields += ("sentiment", s)
            size += len(s) + 14
        if properties is not None:
            if type(properties) is not dict:
                properties = _as_dict(properties)
                if properties is None:
                    return self._invalid("properties must be a mapping")
            size += estimate_size(properties)
            fields += _inline("properties", properties)
        return self._enqueue("track", fields, size, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def identify(
        self,
        user_id: Id | None = None,
        traits: Properties | None = None,
        context: Properties | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: Id | None = None,
        integrations: Properties | None = None,
        message_id: str | None = None,
    ) -> EnqueueResult:
        """Attach ``traits`` to a user."""
        fields: Fields = ()
        size = ENVELOPE_BYTES
        if traits is not None:
            t = _as_dict(traits)
            if t is None:
                return self._invalid("traits must be a mapping")
            size += estimate_size(t)
            fields = _inline("traits", t)
        return self._enqueue(
            "identify", fields, size, user_id, anonymous_id, context, timestamp, integrations, message_id
        )

    def group(
        self,
        user_id: Id | None = None,
        group_id: Id | None = None,
        traits: Properties | None = None,
        context: Properties | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: Id | None = None,
        integrations: Properties | None = None,
        message_id: str | None = None,
    ) -> EnqueueResult:
        """Associate a user with a group (account, household, ...)."""
        gid = _coerce_id(group_id)
        if gid is None:
            return self._invalid("group() needs `group_id`")
        fields: Fields = ("groupId", gid)
        size = ENVELOPE_BYTES + len(gid)
        if traits is not None:
            t = _as_dict(traits)
            if t is None:
                return self._invalid("traits must be a mapping")
            size += estimate_size(t)
            fields += _inline("traits", t)
        return self._enqueue("group", fields, size, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def page(
        self,
        user_id: Id | None = None,
        category: str | None = None,
        name: str | None = None,
        properties: Properties | None = None,
        context: Properties | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: Id | None = None,
        integrations: Properties | None = None,
        message_id: str | None = None,
    ) -> EnqueueResult:
        """Record a web page view."""
        return self._view(
            "page", user_id, category, name, properties, context, timestamp, anonymous_id, integrations, message_id
        )

    def screen(
        self,
        user_id: Id | None = None,
        category: str | None = None,
        name: str | None = None,
        properties: Properties | None = None,
        context: Properties | None = None,
        timestamp: Timestamp | None = None,
        anonymous_id: Id | None = None,
        integrations: Properties | None = None,
        message_id: str | None = None,
    ) -> EnqueueResult:
        """Record an app screen view."""
        return self._view(
            "screen", user_id, category, name, properties, context, timestamp, anonymous_id, integrations, message_id
        )

    def alias(
        self,
        previous_id: Id | None = None,
        user_id: Id | None = None,
        context: Properties | None = None,
        timestamp: Timestamp | None = None,
        integrations: Properties | None = None,
        message_id: str | None = None,
    ) -> EnqueueResult:
        """Declare that ``previous_id`` and ``user_id`` are the same person."""
        prev = _coerce_id(previous_id)
        uid = _coerce_id(user_id)
        if prev is None or uid is None:
            return self._invalid("alias() needs both `previous_id` and `user_id`")
        fields: Fields = ("previousId", prev)
        return self._enqueue(
            "alias", fields, ENVELOPE_BYTES + len(prev), uid, None, context, timestamp, integrations, message_id
        )

    def _view(
        self,
        kind: str,
        user_id: Id | None,
        category: str | None,
        name: str | None,
        properties: Properties | None,
        context: Properties | None,
        timestamp: Timestamp | None,
        anonymous_id: Id | None,
        integrations: Properties | None,
        message_id: str | None,
    ) -> EnqueueResult:
        fields: Fields = ()
        size = ENVELOPE_BYTES
        if name is not None:
            if not isinstance(name, str):
                return self._invalid(f"{kind}() `name` must be a string")
            fields += ("name", str.__str__(name))
            size += len(name)
        if category is not None:
            if not isinstance(category, str):
                return self._invalid(f"{kind}() `category` must be a string")
            fields += ("category", str.__str__(category))
            size += len(category)
        if properties is not None:
            p = _as_dict(properties)
            if p is None:
                return self._invalid("properties must be a mapping")
            size += estimate_size(p)
            fields += _inline("properties", p)
        return self._enqueue(kind, fields, size, user_id, anonymous_id, context, timestamp, integrations, message_id)

    def _enqueue(
        self,
        kind: str,
        fields: Fields,
        size: int,
        user_id: object,
        anonymous_id: object,
        context: object,
        timestamp: object,
        integrations: object,
        message_id: object,
    ) -> EnqueueResult:
        uid = user_id if type(user_id) is str else (None if user_id is None else _coerce_id(user_id))
        aid = (
            anonymous_id if type(anonymous_id) is str else (None if anonymous_id is None else _coerce_id(anonymous_id))
        )
        if not uid:
            uid = None
            if not aid:
                return self._invalid(f"{kind} events need `user_id` or `anonymous_id`")
        else:
            size += len(uid)
        if aid:
            size += len(aid)
        else:
            aid = None
        extra: Fields = ()
        if context is not None:
            c = context if type(context) is dict else _as_dict(context)
            if c is None:
                return self._invalid("context must be a mapping")
            size += estimate_size(c)
            extra = _inline("context", c)
        if integrations is not None:
            i = integrations if type(integrations) is dict else _as_dict(integrations)
            if i is None:
                return self._invalid("integrations must be a mapping")
            size += estimate_size(i)
            extra += _inline("integrations", i)
        if timestamp is None:
            # The instant is fixed now; turning it into text is the consumer's job.
            timestamp = _now()
        elif not (
            isinstance(timestamp, _dt.datetime)
            or (isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool))
        ):
            timestamp = _check_timestamp_text(timestamp)
            if timestamp is None:
                return self._invalid("timestamp must be a datetime, epoch seconds, or an ISO-8601 string")
        if message_id is None:
            message_id = new_message_id()
        elif type(message_id) is not str:
            message_id = _coerce_id(message_id)
            if message_id is None:
                return self._invalid("message_id must be a string")
        if size > _MAX_EVENT:
            return self._drop(
                DropReason.TOO_LARGE,
                message_id,
                EventTooLargeError(size, _MAX_EVENT, estimated=True),
            )
        entry = (kind, message_id, timestamp, uid, aid) + fields
        if extra:
            entry += extra
        if self._pid != _getpid():
            self._after_fork()
        if self._consumer is None:
            return self._not_queued(entry)
        reason = self._buffer.put(entry, size)
        if reason is None:
            return EnqueueResult(_QUEUED, message_id)
        return self._drop(reason, message_id)

    # -- rare paths -----------------------------------------------------------------

    def _invalid(self, why: str) -> EnqueueResult:
        return self._drop(DropReason.INVALID, None, InvalidEventError(why))

    def _drop(self, reason: DropReason, message_id: str | None, error: Exception | None = None) -> EnqueueResult:
        if self._pid != _getpid():
            self._after_fork()
        if self._stats.drop(reason, at_call=True):
            log.warning("journeys-sdk: %s; %s", _DROP_MESSAGES[reason](self, error), _FURTHER)
        return EnqueueResult(Status.DROPPED, message_id, reason, error)

    def _not_queued(self, entry: Entry) -> EnqueueResult:
        """``send=False``, ``sync_mode``, or after ``shutdown()``."""
        message_id = entry[1]
        if self._closed:
            return self._drop(DropReason.SHUTDOWN, message_id)
        if not self.send:
            return EnqueueResult(Status.DISCARDED, message_id)
        uploader = self._sync_uploader
        assert uploader is not None
        try:
            msg = build_event(entry)
            raw = encode_event(msg)
        except (ValueError, TypeError, RecursionError) as exc:
            return self._drop(DropReason.UNSERIALIZABLE, message_id, SerializationError(str(exc)))
        if len(raw) > MAX_EVENT_BYTES:
            return self._drop(DropReason.TOO_LARGE, message_id, EventTooLargeError(len(raw), MAX_EVENT_BYTES))
        batch = Batch()
        batch.add(raw)
        with self._sync_lock:
            outcome, err, backoff = uploader.deliver(batch, _sleep_always)
            if outcome is Outcome.GAVE_UP:
                assert err is not None
                err = RetryBudgetExceeded(err, backoff.retries + 1, backoff.elapsed)
                uploader.report_failed(batch, err)
            # Counted for flush() like a queued event that finished at once.
            self._buffer.record_inline(
                delivered=outcome is Outcome.DELIVERED, quarantined=batch.quarantined, error=batch.error
            )
        if outcome is Outcome.DELIVERED:
            return EnqueueResult(Status.DELIVERED, message_id)
        return EnqueueResult(Status.FAILED, message_id, error=err)

    # -- flushing and lifecycle --------------------------------------------------------

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Deliver everything recorded so far; block until done or ``timeout`` seconds.

        Returns a ``FlushResult``, truthy only when every event it covers was
        delivered: acknowledged by the collector, none quarantined, none still
        pending, and no recording call dropped one since the previous flush.
        So after a 401 (wrong write key) or a collector that stayed down past
        the retry budget it is falsy, with ``failed`` counting those events and
        ``last_error`` saying why (the events also went to ``on_error``).

        It covers the events recorded since the previous flush returned, plus
        any that were still pending then; ``delivered``, ``quarantined``,
        ``failed``, ``pending`` and ``dropped`` count them.  It returns with
        events ``pending`` on timeout or, with ``overflow_dir``, when the
        collector has been down past the retry budget: the events are then
        parked on disk, and the flush costs one immediate probe request rather
        than waiting for the outage to end.  ``result.settled`` is the old
        ``True``: nothing pending.  Do not call it from an event loop thread;
        use ``await aflush()`` there.
        """
        if self._pid != _getpid():
            self._after_fork()
        consumer = self._consumer
        buf = self._buffer
        ticket = buf.begin_flush(self._stats.call_dropped)
        if consumer is None:
            return buf.end_flush(ticket)  # nothing to wait for (send=False, sync_mode, shut down)
        if threading.current_thread() is consumer:
            # Called from on_error: waiting for ourselves would deadlock.  What is
            # pending stays for a flush from another thread to report.
            return buf.end_flush(ticket, consumer.last_error, report=False)
        try:
            buf.wait_settled(ticket.target, ticket.epoch, timeout, time.monotonic, consumer.is_alive)
        except BaseException:
            buf.end_flush(ticket, report=False)
            raise
        return buf.end_flush(ticket, consumer.last_error)

    async def aflush(self, timeout: float | None = None) -> FlushResult:
        """``flush()`` for asyncio code: waits without blocking the event loop or using a thread."""
        if self._pid != _getpid():
            self._after_fork()
        consumer = self._consumer
        buf = self._buffer
        ticket = buf.begin_flush(self._stats.call_dropped)
        if consumer is None:
            return buf.end_flush(ticket)
        try:
            if consumer.is_alive():
                loop = asyncio.get_running_loop()
                fut: asyncio.Future[bool] = loop.create_future()
                buf.add_async_waiter(ticket.target, ticket.epoch, loop, fut)
                try:
                    if timeout is None:
                        await fut
                    else:
                        await asyncio.wait_for(fut, timeout)
                except TimeoutError:
                    pass
                finally:
                    buf.remove_async_waiter(fut)
        except BaseException:  # cancelled: nobody gets this result
            buf.end_flush(ticket, report=False)
            raise
        return buf.end_flush(ticket, consumer.last_error)

    def shutdown(self, timeout: float | None = 10.0) -> FlushResult:
        """Flush (up to ``timeout`` seconds), then stop the consumer thread.

        Later recording calls return ``DROPPED``/``shutdown``.  What could not be
        delivered in time is written to ``overflow_dir`` if configured, otherwise
        reported to ``on_error`` as ``ShutdownError``.  Idempotent.  Returns the
        flush's ``FlushResult``: truthy when everything was delivered (a second
        call has nothing left to report and returns an empty, truthy one).
        """
        if self._pid != _getpid():
            self._after_fork()
        if self._closed:
            return FlushResult()
        self._closed = True
        with self._buffer.put_lock:
            self._buffer.closed = True
        result = self.flush(timeout)
        consumer = self._consumer
        if consumer is not None:
            consumer.stop(abort=not result.settled)
            # Bounded: an aborted consumer exits at its next check, or when its
            # current request times out.  It is a daemon, so it cannot hold up
            # interpreter exit either way.
            if threading.current_thread() is not consumer:
                consumer.join(max(2.0, min(self._timeout, 5.0)))
        elif self._sync_uploader is not None:
            with self._sync_lock:
                self._sync_uploader.transport.close()
        try:
            atexit.unregister(self._atexit)
        except Exception:
            pass
        return result

    def join(self) -> None:
        """Segment-compatible alias of ``shutdown()``."""
        self.shutdown()

    def _atexit(self) -> None:
        # A forked child that never used the client inherits this hook; the
        # parent's events are not the child's to flush.
        if self._pid != _getpid() or self._closed:
            return
        self.shutdown(self._atexit_timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def stats(self) -> Stats:
        """A snapshot of this process's counters (see ``Stats``)."""
        if self._pid != _getpid():
            self._after_fork()
        buf = self._buffer
        overflow = self._overflow
        return self._stats.snapshot(
            queued=buf.enqueued - self._stats.recovered,
            pending=len(buf.items),
            pending_bytes=buf.bytes,
            overflow_pending=overflow.events if overflow is not None else 0,
        )

    def __repr__(self) -> str:
        mode = "sync" if self.sync_mode else ("discard" if not self.send else "queued")
        return f"<journeys_sdk.Client host={self.host!r} mode={mode} closed={self._closed}>"


def _sleep_always(seconds: float) -> bool:
    time.sleep(seconds)
    return True


_FURTHER = "further drops for this reason are counted in client.stats.dropped, not logged"

_DROP_MESSAGES: dict[DropReason, Any] = {
    DropReason.INVALID: lambda c, e: f"dropping invalid event ({e})",
    DropReason.TOO_LARGE: lambda c, e: f"dropping oversized event ({e})",
    DropReason.UNSERIALIZABLE: lambda c, e: f"dropping event that cannot be encoded ({e})",
    DropReason.QUEUE_FULL: lambda c, e: (
        f"queue full ({c._max_queue_size} events waiting; collector slow or unreachable), dropping events"
    ),
    DropReason.QUEUE_BYTES: lambda c, e: (
        f"queue full ({c._max_queue_bytes} bytes waiting; collector slow or unreachable), dropping events"
    ),
    DropReason.SHUTDOWN: lambda c, e: "client is shut down, dropping events",
}
