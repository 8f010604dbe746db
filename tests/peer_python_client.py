"""Drive an official Python analytics client, unmodified, with its clock shifted.

Run as a script (its own process, so the shifted clock touches nothing else):
``python tests/peer_python_client.py segment|rudderstack HOST WRITE_KEY SHIFT_SECONDS RUN``.
It makes every kind of call for one anonymous visitor who then identifies, flushes synchronously, and
prints one JSON line: the message ids it sent, by call. The clock shift stands in for a device whose clock
is hours off: only the collector's sentAt correction can place these events near the real time.
"""

from __future__ import annotations

import datetime as _datetime
import json
import sys

_REAL = _datetime.datetime


class _ShiftedDateTime(_REAL):
    """``datetime`` whose ``now``/``utcnow`` run ``SHIFT`` seconds off; the clients import the class at load."""

    shift = _datetime.timedelta(0)

    @classmethod
    def _shifted_utc(cls) -> "_ShiftedDateTime":
        real = _REAL.now(_datetime.timezone.utc) + cls.shift
        # An instance of this class, so that tz libraries checking isinstance(dt, datetime) accept it.
        return cls(*real.timetuple()[:6], real.microsecond, tzinfo=_datetime.timezone.utc)

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def]
        utc = cls._shifted_utc()
        return utc.astimezone(tz) if tz is not None else utc.astimezone().replace(tzinfo=None)

    @classmethod
    def utcnow(cls):  # type: ignore[no-untyped-def]
        return cls._shifted_utc().replace(tzinfo=None)


def main() -> int:
    which, host, key, shift_s, run = sys.argv[1:6]
    _ShiftedDateTime.shift = _datetime.timedelta(seconds=float(shift_s))
    _datetime.datetime = _ShiftedDateTime  # type: ignore[misc]  # before the client imports it

    if which == "segment":
        from segment.analytics import Client

        client = Client(key, host=host, sync_mode=True, max_retries=1)
    else:
        from rudderstack.analytics import Client

        client = Client(key, host=host, sync_mode=True, max_retries=1)
    errors: list[str] = []

    anon, user = f"anon-{run}", f"user-{run}"
    sent: dict[str, str] = {}

    def call(label: str, method: str, **kwargs: object) -> None:
        message_id = f"{run}-{label}"
        try:  # sync_mode: each call is one request, and a refused one raises
            getattr(client, method)(message_id=message_id, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            errors.append(f"{label}: {exc!r}")
        sent[label] = message_id

    # Before identify: only the anonymous id (the clients send "userId": null).
    call(
        "page",
        "page",
        anonymous_id=anon,
        category="Docs",
        name="Pricing",
        properties={"url": f"https://shop.example/pricing?utm_source=news&utm_campaign=spring-{run}"},
    )
    call("track_anon", "track", anonymous_id=anon, event="Viewed Product", properties={"sku": "S1"})
    call("identify", "identify", user_id=user, anonymous_id=anon, traits={"plan": "pro", "country": "DE"})
    # After: only the user id (the clients send "anonymousId": null).
    call("track_email", "track", user_id=user, event="Email Clicked", properties={"channel": "email"})
    call("screen", "screen", user_id=user, name="Cart")
    call("group", "group", user_id=user, group_id=f"acme-{run}", traits={"size": 50})
    call("alias", "alias", previous_id=f"crm-{run}", user_id=user)
    client.flush()
    print(json.dumps({"sent": sent, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
