"""``Name: Scheme credential`` header lines (privacy sweep s23, finding 2): the credential after any auth scheme word
(``Token``, ``Digest``, ``Negotiate``, ``ApiKey``, ``AWS4-HMAC-SHA256``, an unknown one under ``Authorization``) is
redacted whole, its parameters too, and the scheme word stays readable, as it does for ``Bearer``. Before, the
``secret`` rule took the scheme word for the value (``Authorization: [REDACTED:secret:...] 9f8e7d6c5b4a39281706``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.tools import tool

from ee_middleware.capture.redaction import Redactor
from tests.capture.redaction_capture import assert_not_stored, record

HEADERS = [
    ("Authorization: Token 9f8e7d6c5b4a39281706", "Authorization: Token [REDACTED:secret]", ["9f8e7d6c5b4a39281706"]),
    ("authorization: token 9f8e7d6c5b4a39281706\nHost: api", "authorization: token [REDACTED:secret]\nHost: api", ["9f8e7d6c"]),
    ("Proxy-Authorization: Negotiate YIIC2wYGKwYBBQUC", "Proxy-Authorization: Negotiate [REDACTED:secret]", ["YIIC2wYG"]),
    ("Authorization: ApiKey k_7Hq2LmZ0pX", "Authorization: ApiKey [REDACTED:secret]", ["k_7Hq2LmZ0pX"]),
    ("Authorization: NTLM TlRMTVNTUAABAAAAB4IIAAAAAAAAAAAAAAAAAAAAAAA=", "Authorization: NTLM [REDACTED:secret]", ["TlRMTVNT"]),
    # an unknown scheme under an Authorization header: the word kept, the credential replaced
    ("Authorization: Acme-Signed zq81Vb0c77", "Authorization: Acme-Signed [REDACTED:secret]", ["zq81Vb0c77"]),
    # a known scheme after a header name that is no secret name (but holds auth, key, token...), a credential that looks like one
    ("X-Custom-Auth: Token 9f8e7d6c5b4a39281706", "X-Custom-Auth: Token [REDACTED:secret]", ["9f8e7d6c5b4a39281706"]),
    ("X-Api-Key: ApiKey k_7Hq2LmZ0pX", "X-Api-Key: ApiKey [REDACTED:secret]", ["k_7Hq2LmZ0pX"]),
    # Bearer and Basic credentials the bearer_token and basic_auth rules do not take (no digit, no user:password)
    ("Authorization: Bearer abcdefghij", "Authorization: Bearer [REDACTED:secret]", ["abcdefghij"]),
    ("Authorization: Basic YWJjZGVmZ2g=", "Authorization: Basic [REDACTED:secret]", ["YWJjZGVmZ2g"]),
    # in a quoted header (curl) the closing quote and what follows stay
    (
        "curl -H 'Authorization: Token 9f8e7d6c5b4a39281706' https://api.example.com",
        "curl -H 'Authorization: Token [REDACTED:secret]' https://api.example.com",
        ["9f8e7d6c"],
    ),
]

PARAMETERS = [
    (
        'Authorization: Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1"',
        "Authorization: Digest [REDACTED:secret]",
        ["Mufasa", "dcd98b7102dd", "0a4f113b", "6629fae4"],
    ),
    (
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7\n"
        "X-Amz-Date: 20150830T123600Z",
        "Authorization: AWS4-HMAC-SHA256 [REDACTED:secret]\nX-Amz-Date: 20150830T123600Z",
        ["AKIDEXAMPLE", "5d672d79c15b", "SignedHeaders"],
    ),
    (
        'Authorization: OAuth oauth_consumer_key="xvz1evFS4wEEPTGEFPHBog",oauth_signature="tnnArxj06cWHq44gCs1OSKk%2FjY%3D"',
        "Authorization: OAuth [REDACTED:secret]",
        ["xvz1evFS4w", "tnnArxj06c"],
    ),
]


@pytest.mark.parametrize(("text", "expected", "leaks"), HEADERS + PARAMETERS)
def test_the_credential_after_an_auth_scheme_is_redacted_whole_and_the_scheme_stays(text, expected, leaks):
    redacted = Redactor().redact_text(text)
    assert redacted == expected
    assert not [leak for leak in leaks if leak in redacted]


def test_the_credential_gets_one_pseudonym_and_bearer_and_basic_keep_their_kinds():
    redactor = Redactor(salt=b"store")
    header = redactor.redact_text("Authorization: Token 9f8e7d6c5b4a39281706")
    assert header == "Authorization: Token " + redactor.redact_text("token=9f8e7d6c5b4a39281706").removeprefix("token=")
    assert redactor.redact_text("Authorization: Bearer abcdefghij0123456789klmnop").startswith(
        "Authorization: Bearer [REDACTED:bearer_token:"
    )
    assert redactor.redact_text("Authorization: Basic YW5uOlBhNTUtd29yZA==").startswith("Authorization: Basic [REDACTED:basic_auth:")


def test_an_escaped_digest_header_in_json_text_stays_valid_json():
    data = {"request": 'Authorization: Digest username="Mufasa", response="6629fae49393a05397450978507c4ef1"\nHost: x'}
    redacted = Redactor().redact_text(json.dumps(data))
    assert json.loads(redacted) == {"request": "Authorization: Digest [REDACTED:secret]\nHost: x"}


ORDINARY = [
    "Status: Token expired, please log in again",
    "Note: token refresh happens hourly",
    "Authorization: required",
    "Type: Digest of the week",
    'WWW-Authenticate: Digest realm="api", qop="auth"',  # a challenge, no credential: kept
]


@pytest.mark.parametrize("text", ORDINARY)
def test_scheme_words_in_ordinary_lines_are_left_alone(text):
    redacted = Redactor().redact_text(text)
    if text == "Authorization: required":  # (as before: a single word after a secret name is taken for the value)
        assert redacted == "Authorization: [REDACTED:secret]"
    else:
        assert redacted == text


@tool
def fetch_card_log(customer: str) -> str:
    """Fetch the card API log."""
    return "GET /v1/cards?customer=CU-1001 HTTP/1.1\nAuthorization: Token 9f8e7d6c5b4a39281706\nAccept: */*\n"


def test_a_token_header_in_a_tool_result_reaches_no_store_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = record(root, [fetch_card_log], [("fetch_card_log", {"customer": "CU-1001"})])
    [trajectory] = list(store.iter_trajectories())
    assert "Authorization: Token [REDACTED:secret:" in trajectory.steps[0].observation.content
    assert_not_stored(store, root, ["9f8e7d6c5b4a39281706"])
