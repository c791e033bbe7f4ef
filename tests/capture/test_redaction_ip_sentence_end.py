"""An IPv4 address at the end of a sentence is one ("from 10.20.30.40." stayed plain: the pattern refused any period
after the last octet), while four numbers followed by ``.5`` (a version, an OID) are still no address."""

from __future__ import annotations

import pytest

from ee_middleware.capture.redaction import RedactionRules, Redactor

REDACTOR = Redactor(RedactionRules(kinds={"ip_address": True}))


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("The login came from 10.20.30.40.", "The login came from [REDACTED:ip_address]."),
        ("From 10.20.30.40. Then 192.168.1.7.", "From [REDACTED:ip_address]. Then [REDACTED:ip_address]."),
        ("Was it 10.20.30.40.\nYes.", "Was it [REDACTED:ip_address].\nYes."),
        ("host 10.20.30.40...", "host [REDACTED:ip_address]..."),
        ("host 10.20.30.40, port 22", "host [REDACTED:ip_address], port 22"),
    ],
)
def test_an_address_before_a_period_is_redacted(text: str, redacted: str) -> None:
    assert REDACTOR.redact_text(text) == redacted


@pytest.mark.parametrize("text", ["version 10.20.30.40.5", "oid 1.3.6.1.4.1", "10.20.30.40.5.", "10.20.30.400", "1.10.20.30.40"])
def test_more_numbers_after_a_period_are_no_address(text: str) -> None:
    assert REDACTOR.redact_text(text) == text
