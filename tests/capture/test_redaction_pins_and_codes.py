"""Common secret forms no built-in kind caught (privacy sweep s23, finding 5): a PIN in prose (``my PIN is 4821``),
``pw=``, one-time and security codes and security answers under their JSON keys, lowercase IBANs (valid by checksum,
of a country's IBAN length) and a 9-digit SSN written without dashes after ``SSN`` or ``social security``. Before, each
was stored in plain text; ordinary values next to the same words stay as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.tools import tool

from ee_middleware.capture.redaction import Redactor, _secret_name_strength, is_secret_name
from tests.capture.redaction_capture import assert_not_stored, record

CAUGHT = [
    ("my PIN is 4821", "my PIN is [REDACTED:password]"),
    ("PIN 4821", "PIN [REDACTED:password]"),
    ("pin code is 4821.", "pin code is [REDACTED:password]."),
    ("PIN-Code: 482193", "PIN-Code: [REDACTED:password]"),
    ("my new pin was now 12345678, thanks", "my new pin was now [REDACTED:password], thanks"),
    ("the PIN for my debit card is 4821", "the PIN for my debit card is [REDACTED:password]"),
    ("passcode 4821", "passcode [REDACTED:password]"),
    ("PIN number: 4821", "PIN number: [REDACTED:password]"),
    ("login: jane / pw=Hunter2xyz", "login: jane / pw=[REDACTED:secret]"),
    ("pw: Hunter2xyz", "pw: [REDACTED:secret]"),
    ("new_pw=Hunter2xyz", "new_pw=[REDACTED:secret]"),
    ("SSN 123456789", "SSN [REDACTED:us_ssn]"),
    ("my social security number is 123 45 6789", "my social security number is [REDACTED:us_ssn]"),
    ("Social Security No. 123456789", "Social Security No. [REDACTED:us_ssn]"),
    ("ssn#123456789", "ssn#[REDACTED:us_ssn]"),
    ("iban de89370400440532013000", "iban [REDACTED:iban]"),
    ("wire to de89 3704 0044 0532 0130 00 today", "wire to [REDACTED:iban] today"),
    ("gb29nwbk60161331926819", "[REDACTED:iban]"),
    ("De89370400440532013000", "[REDACTED:iban]"),
]


@pytest.mark.parametrize(("text", "expected"), CAUGHT)
def test_these_forms_are_redacted(text, expected):
    assert Redactor().redact_text(text) == expected


CODE_KEYS = ["otp", "one_time_code", "oneTimeCode", "security_code", "securityAnswer", "security_answer", "verification_code", "totp"]


@pytest.mark.parametrize("key", CODE_KEYS)
def test_one_time_and_security_codes_are_secret_names(key):
    assert is_secret_name(key)
    redactor = Redactor()
    for value in ("839201", 839201, "Fluffy"):
        data = {"user": "ann", key: value}
        assert redactor.redact_value(data) == {"user": "ann", key: "[REDACTED:secret]"}
        assert json.loads(redactor.redact_text(json.dumps(data))) == {"user": "ann", key: "[REDACTED:secret]"}
        assert json.loads(redactor.redact_json(data)) == {"user": "ann", key: "[REDACTED:secret]"}
        assert redactor.redact_value({"content": json.dumps(data)}) == {"content": json.dumps({"user": "ann", key: "[REDACTED:secret]"})}


SPELLINGS = [
    *("otp", "OTP", "totp", "otp_code", "smsOtp", "one_time_code", "oneTimeCode", "one-time-code", "ONE_TIME_CODE"),
    *("security_code", "securityCode", "security-code", "security_answer", "SecurityAnswers", "verification_code"),
    *("verificationCode", "pw", "user_pw", "newPW", "db-pw"),
]


@pytest.mark.parametrize("key", SPELLINGS)
def test_every_spelling_of_these_names_is_found_in_json_text_as_in_data(key):
    """JSON text is scanned for the words secret names are made of before it is walked (a clean text is not): each
    spelling of the new names must hold one, or redact_json and a tool result holding JSON would keep its value."""
    redactor = Redactor()
    data = {"user": "ann", key: "x1y2z3"}
    assert redactor.redact_value(data)[key] == "[REDACTED:secret]"
    assert json.loads(redactor.redact_json(data))[key] == "[REDACTED:secret]"
    assert json.loads(redactor.redact_value(json.dumps(data)))[key] == "[REDACTED:secret]"


def test_a_security_answer_object_is_secret_whole_and_an_otp_object_is_ordinary_data():
    """``security_answer`` and ``security_code`` are strong names (an object below them is secret whole); ``otp`` is weak,
    as ``pin`` and ``token`` are (an otp settings object is ordinary data, a single value below it is secret)."""
    assert _secret_name_strength("security_answer") == _secret_name_strength("security_code") == 2
    assert _secret_name_strength("otp") == 1
    redactor = Redactor()
    assert redactor.redact_value({"security_answer": {"question": "pet", "answer": "Fluffy"}}) == {
        "security_answer": {"question": "[REDACTED:secret]", "answer": "[REDACTED:secret]"}
    }
    settings = {"otp": {"digits": 6, "period": 30, "issuer": "Northwind"}}
    assert redactor.redact_value(settings) == settings


def test_a_pin_in_prose_gets_the_pseudonym_of_the_pin_under_its_key():
    redactor = Redactor(salt=b"store")
    tag = redactor.redact_value({"pin": 4821})["pin"].split(":")[-1]
    assert redactor.redact_text("my PIN is 4821") == f"my PIN is [REDACTED:password:{tag}"


ORDINARY = [
    "pin 12 of the connector",
    "map pin at 48.8584, 2.2945",
    "PIN pad model 4821",
    "the pin is in the drawer",
    "shipping 4821 units, spinning 1234 rpm",
    "PIN 2026-11-25",
    "PIN 12.50 EUR",
    "order 123456789 shipped",
    "ssn field is required",
    "SSN 000123456 is not valid",
    "tracking 123456789012",
    "session ab12cdef34567890abcdef12",
    "oid de12a4c9e0b1f2a3b4c5d6e7",
    "otp is enabled for this account",
    "security: high, verification: done",
    "upward 1234 5678",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_near_these_words_is_left_alone(text):
    assert Redactor().redact_text(text) == text


@tool
def verify_identity(customer: str) -> str:
    """Verify a customer's identity."""
    return json.dumps({"customer": customer, "otp": "839201", "security_answer": "Fluffy", "iban": "de89370400440532013000"})


def test_a_recording_stores_none_of_them(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = record(root, [verify_identity], [("verify_identity", {"customer": "my PIN is 73059148, SSN 123456789, pw=Hunter2xyz"})])
    [trajectory] = list(store.iter_trajectories())
    assert trajectory.steps[0].action.tool_call.arguments["customer"].startswith("my PIN is [REDACTED:password:")
    assert_not_stored(store, root, ["73059148", "123456789", "Hunter2xyz", "839201", "Fluffy", "de89370400440532013000"])
