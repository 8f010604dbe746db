"""Signed email links: open pixels and tracked clicks for mail you send.

Email touchpoints cannot call ``track()``: the open and the click happen in a mail client. Instead every
message carries URLs on the collector whose token says who, which campaign and (for a click) where to
go, signed with the project's email signing key (``journeys email key --project NAME`` prints it). The
collector checks the signature, records "Email Opened" / "Email Clicked" and serves the pixel or
redirects::

    from journeys_sdk.links import EmailLinks

    links = EmailLinks("p_1a2b3c4d5e6f", "je_…", "https://collector.example.com")
    html = f'''<a href="{links.click("c-42", "spring-sale", "https://shop.example.com/sale")}">Shop</a>
               {links.pixel_tag("c-42", "spring-sale")}'''

Signing is local (stdlib ``hmac``/``hashlib``/``base64``), so links for a whole send are made without
any request. The token format is specified in docs/email.md; the collector's own signer
(``collector.email_tokens``) produces byte-identical tokens from the same inputs.

Use an opaque customer id, not an email address: the token is signed, not encrypted, and anyone holding
the message can decode it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError, JourneysError

__all__ = ["EmailLinks", "InvalidLinkError"]

TOKEN_VERSION = 1
SIGNATURE_BYTES = 16
MAX_TOKEN_CHARS = 4096
MAX_URL_CHARS = 2048
MAX_ID_CHARS = 255
MAX_PROPS = 16
MAX_PROP_KEY_CHARS = 64
MAX_PROP_TEXT_CHARS = 255
RESERVED_PROPS = frozenset({"campaign", "url", "bot"})

_PROJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Printable ASCII except space, quotes, angle brackets, backslash and backtick (as the collector checks).
_URL_CHARS = re.compile(r"[!#-;=?-\[\]-_a-~]+")


class InvalidLinkError(JourneysError, ValueError):
    """A link cannot be signed: a non-http(s) target, an id too long, unsupported properties…"""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise InvalidLinkError("url: a target URL is required")
    if len(url) > MAX_URL_CHARS:
        raise InvalidLinkError(f"url: over {MAX_URL_CHARS} characters")
    if _URL_CHARS.fullmatch(url) is None:
        raise InvalidLinkError(
            "url: has spaces, quotes, backslashes, control or non-ASCII characters; percent-encode them "
            "(and write international domain names in punycode)"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidLinkError(f"url: not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidLinkError("url: only http and https URLs may be tracked")
    if not parts.hostname:
        raise InvalidLinkError("url: needs a host (absolute http(s)://host/… form)")
    return url


def _check_text(value: Any, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise InvalidLinkError(f"{what}: must be text of 1-{MAX_ID_CHARS} characters")
    return value


def _check_props(props: Mapping[str, Any] | None) -> dict[str, Any]:
    if props is None:
        return {}
    if not isinstance(props, Mapping):
        raise InvalidLinkError("properties: must be a mapping")
    if len(props) > MAX_PROPS:
        raise InvalidLinkError(f"properties: at most {MAX_PROPS}")
    checked: dict[str, Any] = {}
    for key, value in props.items():
        if not isinstance(key, str) or not key or len(key) > MAX_PROP_KEY_CHARS:
            raise InvalidLinkError(f"properties: names are text of 1-{MAX_PROP_KEY_CHARS} characters")
        if key in RESERVED_PROPS:
            raise InvalidLinkError(f"properties.{key}: set by the collector itself")
        if isinstance(value, str):
            if len(value) > MAX_PROP_TEXT_CHARS:
                raise InvalidLinkError(f"properties.{key}: text over {MAX_PROP_TEXT_CHARS} characters")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidLinkError(f"properties.{key}: numbers must be finite")
        elif not isinstance(value, (bool, int)) and value is not None:
            raise InvalidLinkError(f"properties.{key}: values must be str, int, float, bool or None")
        checked[key] = value
    return checked


class EmailLinks:
    """Builds signed open-pixel and click-tracking URLs for one project.

    ``base_url`` is where recipients reach the collector (``https://collector.example.com``, or with a
    path prefix if a proxy mounts it under one). Thread-safe: it holds no mutable state.
    """

    def __init__(self, project_id: str, signing_key: str, base_url: str) -> None:
        if not isinstance(project_id, str) or _PROJECT_ID.fullmatch(project_id) is None:
            raise ConfigurationError("project_id: the project's id (p_…), 1-64 letters, digits, '_' or '-'")
        if not isinstance(signing_key, str) or not signing_key:
            raise ConfigurationError("signing_key: required (journeys email key --project NAME prints it)")
        try:
            _check_url(base_url)
        except InvalidLinkError as exc:
            raise ConfigurationError(f"base_url: {str(exc).partition(': ')[2]}") from None
        if urlsplit(base_url).query or urlsplit(base_url).fragment:
            raise ConfigurationError("base_url: no query or fragment; the collector's root URL")
        self.project_id = project_id
        self.base_url = base_url.rstrip("/")
        self._key = signing_key.encode("utf-8")

    def _token(
        self, code: str, user_id: str | int, campaign: str, url: str | None, props: Mapping[str, Any] | None
    ) -> str:
        payload: dict[str, Any] = {
            "v": TOKEN_VERSION,
            "k": code,
            "u": _check_text(user_id, "user_id"),
            "c": _check_text(campaign, "campaign"),
        }
        if code == "c":
            payload["url"] = _check_url(url)
        extra = _check_props(props)
        if extra:
            payload["x"] = extra
        encoded = _b64url(
            json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        )
        signed = f"{self.project_id}.{encoded}".encode("ascii")
        sig = _b64url(hmac.new(self._key, signed, hashlib.sha256).digest()[:SIGNATURE_BYTES])
        token = f"{self.project_id}.{encoded}.{sig}"
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidLinkError(
                f"token would be {len(token)} characters, over {MAX_TOKEN_CHARS}: shorten the URL or properties"
            )
        return token

    def open_token(self, user_id: str | int, campaign: str, properties: Mapping[str, Any] | None = None) -> str:
        return self._token("o", user_id, campaign, None, properties)

    def click_token(
        self, user_id: str | int, campaign: str, url: str, properties: Mapping[str, Any] | None = None
    ) -> str:
        return self._token("c", user_id, campaign, url, properties)

    def open_pixel(self, user_id: str | int, campaign: str, properties: Mapping[str, Any] | None = None) -> str:
        """The URL of the 1×1 pixel that records "Email Opened" for ``user_id``."""
        return f"{self.base_url}/v1/email/open/{self.open_token(user_id, campaign, properties)}"

    def click(self, user_id: str | int, campaign: str, url: str, properties: Mapping[str, Any] | None = None) -> str:
        """A URL that records "Email Clicked" and redirects to ``url`` (http or https only)."""
        return f"{self.base_url}/v1/email/click/{self.click_token(user_id, campaign, url, properties)}"

    def pixel_tag(self, user_id: str | int, campaign: str, properties: Mapping[str, Any] | None = None) -> str:
        """An ``<img>`` for the pixel, sized and styled so no mail client shows a gap or a border."""
        src = html.escape(self.open_pixel(user_id, campaign, properties), quote=True)
        return f'<img src="{src}" width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">'
