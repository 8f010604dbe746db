"""Signed email-tracking tokens: what an open pixel or a tracked link carries, and its proof.

A mail client cannot call ``track()``: the open and the click happen far from our code, as plain GETs of
URLs we put into the message. Those URLs therefore carry the event's facts (project, customer, campaign,
target URL), and an HMAC-SHA256 signature with the project's email signing key so nobody can record opens
for others or turn the collector into an open redirect by editing the link.

The format (written down once, for every implementation, in docs/email.md; the SDK's
``journeys_sdk.links`` signs the same bytes)::

    token     = project_id "." payload "." signature
    payload   = base64url(JSON), no padding; JSON keys: v (1), k ("o" open | "c" click), u (user id),
                c (campaign), url (click only), x (optional flat object of small extra properties)
    signature = base64url(HMAC-SHA256(key, ASCII(project_id "." payload))[:16]), no padding
    key       = the UTF-8 bytes of the signing key text (``je_…``)

The project id travels in clear so the collector knows whose key to check with before trusting anything
else. The signature covers the *text* of the first two parts and is compared as text, so there is exactly
one valid spelling of a token (no base64 padding-bit variants). 128 bits of HMAC output is the truncation
RFC 4868 uses for HMAC-SHA256; it keeps links short. Tokens do not expire: mail is read months later.
Retiring a key (``journeys email key --rotate``) is how old links stop working.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from journeys.errors import JourneysError
from journeys.events import MAX_ID_CHARS  # the collector's limit on ids and names

TOKEN_VERSION = 1
SIGNATURE_BYTES = 16
MAX_TOKEN_CHARS = 4096
MAX_URL_CHARS = 2048
MAX_PROPS = 16
MAX_PROP_KEY_CHARS = 64
MAX_PROP_TEXT_CHARS = 255
#: Properties the collector sets itself; a token may not carry its own values for them.
RESERVED_PROPS = frozenset({"campaign", "url", "bot"})

Kind = Literal["open", "click"]
_KIND_CODE: dict[str, str] = {"open": "o", "click": "c"}
_CODE_KIND: dict[str, Kind] = {"o": "open", "c": "click"}
_PROJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
# Printable ASCII without space, quotes, angle brackets, backslash or backtick: what a URL may contain
# unescaped and still be pasted into HTML and an HTTP Location header as is.
_URL_CHARS = re.compile(r"^[!#-;=?-\[\]-_a-~]+$")


class TokenError(JourneysError, ValueError):
    """A token (or what was asked to be signed) is not acceptable; ``reason`` says why, for people."""

    def __init__(self, reason: str, field: str = "token", code: str = "malformed"):
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.code = code  # metric label: malformed | signature | kind


@dataclass(frozen=True)
class Claims:
    """What a verified token says."""

    project_id: str
    kind: Kind
    user_id: str
    campaign: str
    url: str | None = None
    props: dict[str, Any] = field(default_factory=dict)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise TokenError("not base64url text")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise TokenError("not base64url text") from None


def signature(key: str, project_id: str, payload: str) -> str:
    mac = hmac.new(key.encode("utf-8"), f"{project_id}.{payload}".encode("ascii"), hashlib.sha256)
    return b64url(mac.digest()[:SIGNATURE_BYTES])


def check_url(url: Any, field_name: str = "url") -> str:
    """An absolute http(s) URL, ASCII, at most 2048 characters: the only kind of target we sign or
    redirect to. ``javascript:``, ``data:``, relative and protocol-relative URLs are refused."""
    if not isinstance(url, str) or not url:
        raise TokenError("a target URL is required", field_name)
    if len(url) > MAX_URL_CHARS:
        raise TokenError(f"URL over {MAX_URL_CHARS} characters", field_name)
    if not _URL_CHARS.match(url):
        raise TokenError(
            "URL has spaces, quotes, backslashes, control or non-ASCII characters; percent-encode them "
            "(and write international domain names in punycode)",
            field_name,
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise TokenError(f"not a URL: {exc}", field_name) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise TokenError("only http and https URLs may be tracked", field_name)
    if not parts.hostname:
        raise TokenError("URL needs a host (absolute http(s)://host/… form)", field_name)
    return url


def _check_text(value: Any, field_name: str, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric customer ids, as the collector accepts them
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise TokenError(f"{what} must be text of 1-{MAX_ID_CHARS} characters", field_name)
    return value


def check_props(props: Any, field_name: str = "properties") -> dict[str, Any]:
    """Extra properties: a flat object of at most 16 small scalars (they ride in every link)."""
    if props is None:
        return {}
    if not isinstance(props, Mapping):
        raise TokenError("must be an object of extra properties", field_name)
    if len(props) > MAX_PROPS:
        raise TokenError(f"at most {MAX_PROPS} extra properties", field_name)
    checked: dict[str, Any] = {}
    for key, value in props.items():
        where = f"{field_name}.{key}"
        if not isinstance(key, str) or not key or len(key) > MAX_PROP_KEY_CHARS:
            raise TokenError(f"property names are text of 1-{MAX_PROP_KEY_CHARS} characters", field_name)
        if key in RESERVED_PROPS:
            raise TokenError(f"{key!r} is set by the collector itself", where)
        if isinstance(value, str):
            if len(value) > MAX_PROP_TEXT_CHARS:
                raise TokenError(f"text over {MAX_PROP_TEXT_CHARS} characters", where)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise TokenError("numbers must be finite", where)
        elif not isinstance(value, (bool, int)) and value is not None:
            raise TokenError("values must be text, numbers, true/false or null", where)
        checked[key] = value
    return checked


def sign(
    key: str,
    project_id: str,
    kind: Kind,
    user_id: str | int,
    campaign: str,
    url: str | None = None,
    props: Mapping[str, Any] | None = None,
) -> str:
    """A token for an open pixel (``kind="open"``, no URL) or a tracked link (``kind="click"``)."""
    if not isinstance(project_id, str) or not _PROJECT_ID.match(project_id):
        raise TokenError("project id must be 1-64 letters, digits, '_' or '-'", "project")
    if kind not in _KIND_CODE:
        raise TokenError("kind must be open or click", "kind")
    payload: dict[str, Any] = {
        "v": TOKEN_VERSION,
        "k": _KIND_CODE[kind],
        "u": _check_text(user_id, "user_id", "user id"),
        "c": _check_text(campaign, "campaign", "campaign"),
    }
    if kind == "click":
        payload["url"] = check_url(url)
    elif url is not None:
        raise TokenError("an open pixel has no target URL", "url")
    extra = check_props(props)
    if extra:
        payload["x"] = extra
    # Same serialization as the SDK (stdlib json, compact, UTF-8): identical inputs give identical tokens.
    encoded = b64url(json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8"))
    token = f"{project_id}.{encoded}.{signature(key, project_id, encoded)}"
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(
            f"token would be {len(token)} characters, over {MAX_TOKEN_CHARS}: shorten the URL or properties"
        )
    return token


@dataclass(frozen=True)
class Parsed:
    """A token split into its parts, nothing trusted yet."""

    project_id: str
    payload: str
    signature: str


def split(token: str) -> Parsed:
    """Check the token's shape and return its parts; the signature is not checked here."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"a token is 1-{MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("a token has three parts: project.payload.signature")
    project_id, payload, sig = parts
    if not _PROJECT_ID.match(project_id):
        raise TokenError("the project part is not a project id")
    if not payload or not _B64URL.match(payload) or not sig or not _B64URL.match(sig):
        raise TokenError("payload and signature must be base64url text")
    return Parsed(project_id, payload, sig)


def signed_by(parsed: Parsed, keys: Iterable[str]) -> bool:
    """Whether any of ``keys`` made this signature (constant-time comparison for each)."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(signature(key, parsed.project_id, parsed.payload), parsed.signature)
    return ok


def claims_of(parsed: Parsed) -> Claims:
    """Decode and validate a payload whose signature has been verified.

    Validated again even though we signed it: the signing side may be an older or another-language SDK,
    and a redirect target is only ever one :func:`check_url` accepts."""
    try:
        document = orjson.loads(_unb64url(parsed.payload))
    except orjson.JSONDecodeError:
        raise TokenError("payload is not JSON") from None
    if not isinstance(document, dict) or document.get("v") != TOKEN_VERSION:
        raise TokenError(f"unsupported token version (this collector reads version {TOKEN_VERSION})")
    kind = _CODE_KIND.get(document.get("k"))  # type: ignore[arg-type]
    if kind is None:
        raise TokenError("payload kind must be o or c")
    url = document.get("url")
    if kind == "click":
        url = check_url(url, "token")
    elif url is not None:
        raise TokenError("an open token has no url")
    return Claims(
        project_id=parsed.project_id,
        kind=kind,
        user_id=_check_text(document.get("u"), "token", "user id"),
        campaign=_check_text(document.get("c"), "token", "campaign"),
        url=url,
        props=check_props(document.get("x"), "token"),
    )


def verify(token: str, keys: Iterable[str]) -> Claims:
    """Split, check the signature against the project's keys, then decode: the one-call form for code
    that already holds the keys (the collector looks them up between :func:`split` and the rest)."""
    parsed = split(token)
    if not signed_by(parsed, keys):
        raise TokenError(
            "the link's signature does not verify (edited, truncated, or for another project)", code="signature"
        )
    return claims_of(parsed)
