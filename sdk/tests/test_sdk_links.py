"""journeys_sdk.links: the token format of docs/email.md, byte for byte, and what cannot be signed.

The collector side of the same tokens (real HTTP, real keys) is tests/test_email.py; that the collector's
signer and verifier agree with this one is tests/test_email_links_sdk.py (it needs the server's code)."""

from __future__ import annotations

import base64
import json

import pytest

from journeys_sdk import ConfigurationError
from journeys_sdk.links import EmailLinks, InvalidLinkError

# The test vector printed in docs/email.md; any implementation of the format must reproduce it.
VECTOR_KEY = "je_test-vector-key-not-secret"
VECTOR_PROJECT = "p_0123456789ab"
VECTOR_OPEN = "p_0123456789ab.eyJ2IjoxLCJrIjoibyIsInUiOiJjLTQyIiwiYyI6InNwcmluZy0yNiJ9.zLfRY7ZyJgPEJtHDBwTlBg"
VECTOR_CLICK = (
    "p_0123456789ab.eyJ2IjoxLCJrIjoiYyIsInUiOiJjLTQyIiwiYyI6InNwcmluZy0yNiIsInVybCI6Imh0dHBzOi8vc2hvcC5leGFtcGxlLmNv"
    "bS9zYWxlP3V0bV9zb3VyY2U9ZW1haWwiLCJ4Ijp7InZhcmlhbnQiOiJCIn19.6Du9Cq3-r1bBfo1AsD87Lg"
)


@pytest.fixture
def links() -> EmailLinks:
    return EmailLinks(VECTOR_PROJECT, VECTOR_KEY, "https://collector.example.com/")


def _payload(token: str) -> dict:  # type: ignore[type-arg]
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_tokens_match_the_documented_test_vector(links: EmailLinks) -> None:
    assert links.open_token("c-42", "spring-26") == VECTOR_OPEN
    assert (
        links.click_token("c-42", "spring-26", "https://shop.example.com/sale?utm_source=email", {"variant": "B"})
        == VECTOR_CLICK
    )


def test_urls_point_at_the_collector_routes(links: EmailLinks) -> None:
    assert links.open_pixel("c-42", "spring-26") == f"https://collector.example.com/v1/email/open/{VECTOR_OPEN}"
    click = links.click("c-42", "spring-26", "https://shop.example.com/")
    assert click.startswith("https://collector.example.com/v1/email/click/p_0123456789ab.")
    behind_proxy = EmailLinks(VECTOR_PROJECT, VECTOR_KEY, "https://example.com/journeys")
    assert behind_proxy.open_pixel("c-42", "spring-26").startswith("https://example.com/journeys/v1/email/open/")


def test_payload_carries_exactly_the_documented_fields(links: EmailLinks) -> None:
    assert _payload(links.open_token("c-1", "c")) == {"v": 1, "k": "o", "u": "c-1", "c": "c"}
    assert _payload(links.click_token("c-1", "c", "http://a.example/", {"p": 1})) == {
        "v": 1,
        "k": "c",
        "u": "c-1",
        "c": "c",
        "url": "http://a.example/",
        "x": {"p": 1},
    }


def test_pixel_tag_is_escaped_html(links: EmailLinks) -> None:
    tag = links.pixel_tag("c-42", "spring-26")
    assert (
        tag.startswith('<img src="https://collector.example.com/v1/email/open/')
        and 'width="1" height="1" alt=""' in tag
    )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda links: links.click("u", "c", "javascript:alert(1)"), "only http and https"),
        (lambda links: links.click("u", "c", "mailto:a@example.com"), "only http and https"),
        (lambda links: links.click("u", "c", "https://example.com/" + "a" * 2100), "2048"),
        (lambda links: links.click("u", "c", 'https://example.com/"onmouseover="x'), "percent-encode"),
        (lambda links: links.open_pixel("", "c"), "user_id"),
        (lambda links: links.open_pixel("u" * 256, "c"), "user_id"),
        (lambda links: links.open_pixel("u", ""), "campaign"),
        (lambda links: links.open_pixel(True, "c"), "user_id"),
        (lambda links: links.open_pixel("u", "c", {"campaign": "other"}), "set by the collector"),
        (lambda links: links.open_pixel("u", "c", {"bot": "none"}), "set by the collector"),
        (lambda links: links.open_pixel("u", "c", {"nested": {"a": 1}}), "values must be"),
        (lambda links: links.open_pixel("u", "c", {"x": float("nan")}), "finite"),
        (lambda links: links.open_pixel("u", "c", {f"k{i}": i for i in range(17)}), "at most 16"),
        (lambda links: links.open_pixel("u", "c", {"long": "v" * 256}), "255"),
    ],
)
def test_what_cannot_be_signed_raises_invalid_link_error(links: EmailLinks, call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidLinkError, match=match):
        call(links)


@pytest.mark.parametrize(
    "project_id,key,base_url",
    [
        ("p.1", VECTOR_KEY, "https://c.example"),  # a dot would split the token wrongly
        ("", VECTOR_KEY, "https://c.example"),
        (VECTOR_PROJECT, "", "https://c.example"),
        (VECTOR_PROJECT, VECTOR_KEY, "c.example"),
        (VECTOR_PROJECT, VECTOR_KEY, "javascript:x"),
        (VECTOR_PROJECT, VECTOR_KEY, "https://c.example/?q=1"),
    ],
)
def test_bad_configuration_is_refused_up_front(project_id: str, key: str, base_url: str) -> None:
    with pytest.raises(ConfigurationError):
        EmailLinks(project_id, key, base_url)
