"""Touchpoint vocabulary: channels and sentiment.

Journeys are built from touchpoints, so the collector stores ``channel``,
``touchpoint`` and ``sentiment`` as top-level columns rather than digging them
out of ``properties``.  This module holds the small amount of validation that
keeps those columns clean; ``Client.touchpoint()`` calls it on the hot path, so
everything here is memoised or a set lookup.
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = ["Channel", "Sentiment", "check_channel", "check_sentiment"]


class Channel(StrEnum):
    """Well-known channels.  Any lowercase slug is accepted; these are the common ones."""

    WEB = "web"
    EMAIL = "email"
    STORE = "store"
    APP = "app"
    ADS = "ads"
    SOCIAL = "social"
    CALL_CENTRE = "call_centre"
    SMS = "sms"
    PUSH = "push"
    CHAT = "chat"


class Sentiment(StrEnum):
    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"


# What the collector stores as a channel: short, lowercase, letters/digits/_.
_SLUG = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")
_SENTIMENTS = frozenset(s.value for s in Sentiment)
# Channels are few and repeat constantly; remembering the ones already checked
# (raw input -> slug) turns validation into one dict lookup.  Bounded so a
# caller passing free text cannot grow it without limit.
_known_channels: dict[str, str] = {c.value: c.value for c in Channel}
_KNOWN_CHANNELS_MAX = 1024


def check_channel(channel: object) -> str | None:
    """Return the channel as a slug (``"Call-Centre"`` -> ``"call_centre"``), or None if it cannot be one."""
    if not isinstance(channel, str):
        return None
    known = _known_channels.get(channel)
    if known is not None:
        return known
    slug = channel.strip().lower().replace("-", "_").replace(" ", "_")
    if _SLUG.fullmatch(slug) is None:
        return None
    if len(_known_channels) < _KNOWN_CHANNELS_MAX:
        _known_channels[str.__str__(channel)] = slug
    return slug


def check_sentiment(sentiment: object) -> str | None:
    """Return the sentiment as a plain ``str``, or None if it is not one of the three."""
    if isinstance(sentiment, str) and sentiment in _SENTIMENTS:
        return str.__str__(sentiment)
    return None
