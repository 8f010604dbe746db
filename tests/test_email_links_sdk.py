"""The SDK's email links (journeys_sdk.links) and the collector's signer and verifier
(collector.email_tokens) make and accept the same tokens. Here, not in sdk/tests, which run with the SDK alone."""

from __future__ import annotations

from collector.email_tokens import sign, verify
from journeys_sdk.links import EmailLinks

# The test vector of docs/email.md (sdk/tests/test_sdk_links.py checks the SDK reproduces it).
VECTOR_KEY = "je_test-vector-key-not-secret"
VECTOR_PROJECT = "p_0123456789ab"


def test_the_collector_signer_and_verifier_agree_with_the_sdk() -> None:
    links = EmailLinks(VECTOR_PROJECT, VECTOR_KEY, "https://collector.example.com/")
    props = {"variant": "Ü", "n": 3, "ratio": 0.25, "vip": True, "none": None}
    token = links.click_token(42, "spring-26", "https://shop.example.com/x?a=1&b=%20", props)
    assert token == sign(
        VECTOR_KEY, VECTOR_PROJECT, "click", 42, "spring-26", "https://shop.example.com/x?a=1&b=%20", props
    )
    claims = verify(token, ["je_some-other-key", VECTOR_KEY])
    assert (claims.kind, claims.user_id, claims.campaign, claims.props) == ("click", "42", "spring-26", props)
