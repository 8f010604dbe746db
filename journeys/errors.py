"""The one root of the errors our code raises on purpose.

Every failure the services, the stores and the CLI raise deliberately derives from :class:`JourneysError`, so a
caller (the CLI's ``main``, a background loop, a test) can tell "ours, with a message meant for a person" from a
bug with one ``except``. Each subclass keeps the standard base it had (``ValueError`` for bad input), so code
that catches those still does. How an error becomes an HTTP answer is :func:`journeys.http.error_response`'s job.
"""

from __future__ import annotations


class JourneysError(Exception):
    """An error raised on purpose by this codebase (not a bug): its message is meant for a person."""
