"""Signed email links -- reserved for a later issue.

Email touchpoints ("clicked the link in the renewal email") cannot call
``track()``: the click happens in a mail client, not in our code.  The plan is
for this module to build tracking links whose query string carries the user,
channel (``email``), touchpoint and target URL, signed with an HMAC derived from
the write key so the collector can record the touchpoint and redirect without
trusting the parameters.

Nothing in the SDK depends on this module yet; it exists so that feature has an
obvious home (and so ``journeys_sdk.links`` is a stable import path).
"""

from __future__ import annotations

__all__: list[str] = []
