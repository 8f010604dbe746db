"""Webhook delivery of alert notifications from the outbox (``alert_deliveries``, queued by query/alerts.py).

**At least once.** A notification stays in the outbox until a receiver answers 2xx. Each attempt is leased
(``next_attempt_at`` moves past the attempt's timeout before it starts), so several query services share the
outbox without sending one notification twice at the same time, and one that dies mid-attempt leaves it due
again once the lease ends. A failed attempt (no answer, or any status but 2xx; redirects are not followed)
is retried after 1, 2, 4 … s, ±20 %, up to ``alert_retry_max_s``; after ``alert_give_up_after_s`` it is
given up and shown so. Every attempt is recorded (``GET /v1/alerts``).

**Signed.** Every request carries ``X-Journeys-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is
HMAC-SHA256 with the project's signing secret over ``"<t>." + body``: the receiver recomputes it and refuses
a ``t`` too far from its clock (a replayed request), and ``X-Journeys-Delivery`` (also the body's ``id``) is
the idempotency key, the same on every attempt. docs/alerts.md shows a receiver.

Webhook URLs carry secrets (Slack's path is its token), so logs and attempts show :func:`redact`'s form only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import yarl

from query.alert_rules import redact
from journeys.metrics import Metrics
from journeys.stores import Stores
from query.background import Background

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Journeys-Signature"
DELIVERY_HEADER = "X-Journeys-Delivery"
EVENT_HEADER = "X-Journeys-Event"
ATTEMPT_TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 300

CLAIM_SQL = """
UPDATE alert_deliveries d SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
FROM alert_events e
WHERE e.id = d.event_id AND d.id IN (
    SELECT id FROM alert_deliveries
    WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
    ORDER BY next_attempt_at, event_id LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING d.id, d.project_id, d.url, d.body, d.attempts, d.created_at, e.kind
"""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Journeys-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def signing_secret(pg: Any, project_id: str, *, rotate: bool = False) -> str:
    """The project's signing secret, made on first use; ``rotate`` replaces it (receivers need the new one)."""
    fresh = "whsec_" + secrets.token_urlsafe(32)
    if rotate:
        return await pg.fetchval(
            "INSERT INTO alert_signing_secrets (project_id, secret) VALUES ($1, $2) ON CONFLICT (project_id) "
            "DO UPDATE SET secret = EXCLUDED.secret, created_at = now() RETURNING secret",
            project_id,
            fresh,
        )
    await pg.execute(
        "INSERT INTO alert_signing_secrets (project_id, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        project_id,
        fresh,
    )
    return await pg.fetchval("SELECT secret FROM alert_signing_secrets WHERE project_id = $1", project_id)


def _retry_in(attempts: int, longest_s: float) -> float:
    """1, 2, 4 … s after the first, second, third … attempt, at most ``longest_s`` (jitter ±20 % below that)."""
    return min(longest_s, 2.0 ** min(max(attempts - 1, 0), 30) * random.uniform(0.8, 1.2))


class AlertDeliverer(Background):
    """Sends what the outbox holds; runs in every query service (the lease keeps them apart)."""

    name = "alert-deliverer"

    def __init__(
        self,
        stores: Stores,
        metrics: Metrics,
        *,
        poll_s: float = 1.0,
        batch: int = 20,
        timeout_s: float = ATTEMPT_TIMEOUT_S,
    ):
        super().__init__()
        self.stores = stores
        self.metrics = metrics
        self.poll_s = poll_s
        self.batch = batch
        self.timeout_s = timeout_s
        self.retry_max_s = stores.settings.alert_retry_max_s
        self.give_up_after = timedelta(seconds=stores.settings.alert_give_up_after_s)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "journeys-alerts/1"}) as session:
            while not self._stop.is_set():
                try:
                    sent = await self.deliver_due(session)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - never dies; the outbox keeps what was not sent
                    log.exception("alert delivery failed; retrying")
                    sent = 0
                if sent:
                    continue  # more may be due
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except asyncio.TimeoutError:
                    pass

    async def deliver_due(self, session: aiohttp.ClientSession) -> int:
        """Attempt every notification due now (a batch at a time); how many were attempted."""
        pg = self.stores.pg
        due = await pg.fetch(CLAIM_SQL, self.batch, self.timeout_s + 5.0)
        if due:
            # The secrets first, in one read: each attempt then starts at once, well inside its lease.
            secrets_of = {p: await signing_secret(pg, p) for p in {row["project_id"] for row in due}}
            await asyncio.gather(*(self._attempt(session, row, secrets_of[row["project_id"]]) for row in due))
        self.metrics.alert_outbox.set(
            await pg.fetchval("SELECT count(*) FROM alert_deliveries WHERE delivered_at IS NULL AND gave_up_at IS NULL")
        )
        return len(due)

    async def _attempt(self, session: aiohttp.ClientSession, row: Any, secret: str) -> None:
        body = bytes(row["body"])
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: str(row["id"]),
            EVENT_HEADER: f"alert.{row['kind']}",
            "X-Journeys-Attempt": str(row["attempts"]),
            SIGNATURE_HEADER: sign(secret, int(time.time()), body),
        }
        status: int | None = None
        error: str | None = None
        began = time.monotonic()
        try:
            async with session.post(row["url"], data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
                await response.content.read(64 * 1024)  # a receiver's answer is not ours to keep
        except Exception as exc:  # noqa: BLE001 - any failure is an attempt to retry (and can reach give-up)
            error = _error_text(exc, row["url"], self.timeout_s)
        took_ms = int((time.monotonic() - began) * 1000)
        delivered = status is not None and 200 <= status < 300
        if error is None and not delivered:
            error = f"answered {status}"
        give_up = not delivered and datetime.now(timezone.utc) - row["created_at"] >= self.give_up_after
        retry_in = _retry_in(row["attempts"], self.retry_max_s)
        async with self.stores.pg.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO alert_attempts (delivery_id, at, status, error, duration_ms) "
                    "VALUES ($1, now(), $2, $3, $4)",
                    row["id"],
                    status,
                    error,
                    took_ms,
                )
                # Fenced on the attempt number: a replica that took the notification over after this attempt's
                # lease ran out owns it now (this one was late), and nothing here may undo what it records.
                await conn.execute(
                    "UPDATE alert_deliveries SET "
                    "delivered_at = CASE WHEN $3 THEN now() ELSE delivered_at END, "
                    "gave_up_at = CASE WHEN $4 THEN now() ELSE gave_up_at END, "
                    "next_attempt_at = CASE WHEN $3 OR $4 THEN next_attempt_at "
                    "ELSE now() + make_interval(secs => $5) END "
                    "WHERE id = $1 AND attempts = $2",
                    row["id"],
                    row["attempts"],
                    delivered,
                    give_up,
                    retry_in,
                )
        result = "delivered" if delivered else "gave_up" if give_up else "failed"
        self.metrics.alert_deliveries.labels(result).inc()
        if not delivered:
            log.warning(
                "alert notification %s to %s: attempt %d %s (%s)",
                row["id"],
                redact(row["url"]),
                row["attempts"],
                "given up" if give_up else "failed, will retry",
                error,
            )


def _error_text(exc: BaseException, url: str, timeout_s: float = ATTEMPT_TIMEOUT_S) -> str:
    """What went wrong, without the URL's secrets (aiohttp puts the URL in some messages). Never raises."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        text = f"no answer within {timeout_s:g} s"
    forms = {url}
    try:
        forms |= {str(yarl.URL(url)), str(yarl.URL(url, encoded=True))}
    except Exception:  # noqa: BLE001 - a URL yarl refuses: its message may hold the URL, say only what failed
        return f"{type(exc).__name__} (the URL could not be used)"
    try:
        shown = redact(url)
    except ValueError:
        shown = "the webhook URL"
    for form in forms:
        text = text.replace(form, shown)
    return _USERINFO.sub("//", text)[:MAX_ERROR_CHARS]


_USERINFO = re.compile(r"//[^/\s@]+@")  # user:password@ of any URL left in a message
