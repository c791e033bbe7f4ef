"""Review r9a of the redaction rules: a hang in the "SSN after its name" rule, quadratic PIN and ``pw``/``otp`` gates,
id-word and currency context that let phones, cards and SSNs through, overlapping matches dropped whole, a UUID token
taken for an Authorization scheme, JSON keys the clean-check scan missed and JSON with a duplicate key left
unredacted. Each test failed before its fix."""

from __future__ import annotations

import time

import pytest

from ee_middleware.capture.redaction import Redactor


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(salt=b"s")


# --- finding 5: exponential backtracking after "SSN" ---------------------------------------------------------------


@pytest.mark.timeout(20)
def test_ssn_name_before_many_blank_comment_lines_does_not_hang(redactor: Redactor) -> None:
    code = "def check(record):\n    # validate the customer's SSN\n" + "    #\n" * 30 + "    return len(record) > 1234\n"
    assert redactor.redact_text(code) == code


@pytest.mark.timeout(20)
def test_ssn_name_then_many_separators_does_not_hang(redactor: Redactor) -> None:
    text = "SSN" + " :" * 60 + " x 1234"
    assert redactor.redact_text(text).endswith(" : x 1234")


SSN_SPELLINGS = [
    *("SSN 123456789", "SSN 123 45 6789", "ssn is 123456789", "Social Security Number: 123456789"),
    *("SSN # : 123456789", "SSN number is 123456789", "SSN no. is: 123456789", "ssn : = 123456789"),
]


@pytest.mark.parametrize("text", SSN_SPELLINGS)
def test_ssn_after_its_name_still_redacted(redactor: Redactor, text: str) -> None:
    assert "6789" not in redactor.redact_text(text)


# --- finding 10: PIN in prose quadratic in a run of spaces ---------------------------------------------------------


@pytest.mark.timeout(20)
def test_pin_is_then_long_run_of_spaces_is_fast(redactor: Redactor) -> None:
    text = "my pin is" + " " * 60_000 + "x 1234"
    started = time.perf_counter()
    assert redactor.redact_text(text) == text
    assert time.perf_counter() - started < 5


# --- finding 11: pw / otp name words make the secret gate quadratic -------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("run", ["pw" * 60_000, "otp" * 40_000])
def test_long_runs_of_short_secret_name_words_are_fast(redactor: Redactor, run: str) -> None:
    started = time.perf_counter()
    assert redactor.redact_text(run) == run
    assert time.perf_counter() - started < 2
