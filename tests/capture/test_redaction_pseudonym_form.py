"""The pseudonym form is an option of the redactor: canonical tags (the default since 17f4b2e), or the tags of each value
as written, byte for byte those every ee-middleware made before (``canonical_pseudonyms=False``), which a store recorded
before canonical pseudonyms keeps (tests/capture/test_store_redaction_pseudonym_form.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ee_middleware.capture.redaction import PLACEHOLDER, RedactionRules, Redactor, canonical_form

SALT = bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")

BEFORE = [
    # text, what the redactor of 17f4b2e^ (git show 17f4b2e^:ee_middleware/capture/redaction.py, this salt) made of it
    ("Mail Jane.Doe@Gmail.com now", "Mail [REDACTED:email:2711943f] now"),
    ("card 4111 1111 1111 1111 exp 04/29", "card [REDACTED:credit_card:891aa9bd] exp 04/29"),
    ("pay 4111-1111-1111-1111", "pay [REDACTED:credit_card:89b5b57b]"),
    ("SSN 123-45-6789", "SSN [REDACTED:us_ssn:cee204e8]"),
    ("call +44 20 7946 0958", "call [REDACTED:phone:996a7989]"),
    ("call (415) 555-0134", "call [REDACTED:phone:eca81987]"),
    ("IBAN de89 3704 0044 0532 0130 00", "IBAN [REDACTED:iban:e1bcf62a]"),
    ("IBAN DE89 3704 0044 0532 0130 00", "IBAN [REDACTED:iban:54baae4c]"),
]


def tag_as_written(value: str) -> str:
    """A pseudonym's tag as every ee-middleware made it before 17f4b2e: HMAC-SHA256(salt, the value as written), 8 hex."""
    return hmac.new(SALT, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:8]


@pytest.mark.parametrize(("text", "before"), BEFORE)
def test_as_written_tags_are_the_ones_made_before_canonical_pseudonyms_byte_for_byte(text: str, before: str) -> None:
    assert Redactor(salt=SALT, canonical_pseudonyms=False).redact_text(text) == before
    assert Redactor(RedactionRules(canonical_pseudonyms=False), salt=SALT).redact_text(text) == before
    assert Redactor(salt=SALT).redact_text(text) != before, "the canonical form of these values is not as they are written"


@pytest.mark.parametrize(
    ("kind", "value", "written"),
    [
        ("email", "Jane.Doe@Gmail.com", "Jane.Doe@Gmail.com"),
        ("email", "jane.doe%40Gmail.com", "jane.doe%40Gmail.com"),
        ("credit_card", "4111 1111 1111 1111", "4111 1111 1111 1111"),
        ("credit_card", 4111111111111111, "4111111111111111"),
        ("credit_card", 4111111111111111.0, "4111111111111111.0"),  # (its text: 1f341cd3 before, as now)
        ("phone", "+44 20 7946 0958", "+44 20 7946 0958"),
        ("iban", "de89 3704 0044 0532 0130 00", "de89 3704 0044 0532 0130 00"),
        ("us_ssn", "123-45-6789", "123-45-6789"),
    ],
)
def test_an_as_written_tag_is_the_keyed_hash_of_the_value_as_written(kind: str, value: object, written: str) -> None:
    seen: list[tuple[str, object]] = []
    redactor = Redactor(salt=SALT, canonical_pseudonyms=False, on_replace=lambda p, v: seen.append((p, v)))
    placeholder = redactor.placeholder(kind, value)  # type: ignore[arg-type]
    assert placeholder == f"[REDACTED:{kind}:{tag_as_written(written)}]"
    assert seen == [(placeholder, value)], "the vault is told the value as written, in either form"
    canonical = Redactor(salt=SALT).placeholder(kind, value)  # type: ignore[arg-type]
    assert canonical == f"[REDACTED:{kind}:{tag_as_written(canonical_form(kind, value))}]"  # type: ignore[arg-type]


def test_the_form_is_part_of_the_rules_so_every_redactor_made_of_them_has_it() -> None:
    legacy = RedactionRules(kinds={"ip_address": True}, canonical_pseudonyms=False)
    assert RedactionRules.from_dict(legacy.to_dict()) == legacy, "rules sent as JSON (replay workers) keep the form"
    assert RedactionRules.from_dict(RedactionRules().to_dict()).canonical_pseudonyms
    assert "canonical_pseudonyms" not in RedactionRules().to_dict(), "canonical rules are written as before"
    assert Redactor().canonical_pseudonyms and Redactor(salt=SALT).rules.canonical_pseudonyms
    redactor = Redactor(legacy, salt=SALT, defaults=False)
    assert not redactor.canonical_pseudonyms and not redactor.rules.defaults, "defaults= keeps the form"
    assert Redactor(legacy, canonical_pseudonyms=True).rules.canonical_pseudonyms, "the keyword wins over the rules"
    tags = {Redactor(legacy, salt=SALT).redact_text(t) for t in ("Jane.Doe@Gmail.com", "jane.doe@gmail.com")}
    assert len(tags) == 2 and all(PLACEHOLDER.fullmatch(t) for t in tags)
