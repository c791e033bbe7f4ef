"""``Redactor.redact_text`` on a JSON text keeps it JSON (privacy sweep s23, finding 11a): a text that parses as a JSON
object or array is redacted as capture redacts a tool result holding JSON (:meth:`Redactor.redact_value` of the
string: the data walked, written back in its layout), so an integer card becomes a quoted placeholder. Before, the
rules ran over the text and wrote ``{"amount_cents": [REDACTED:credit_card:...]}``, which is no JSON."""

from __future__ import annotations

import json

import pytest

from ee_middleware.capture.redaction import Redactor

TEXTS = [
    json.dumps({"amount_cents": 4111111111111111}),
    json.dumps({"amount_cents": 4111111111111111}, indent=2),
    json.dumps({"rows": [{"card": 5555555555554444, "n": 1}, {"card": 4111111111111111.0}]}, separators=(",", ":")),
    json.dumps([4111111111111111, "mail bob@example.com", {"password": "hunter2"}]),
    "  " + json.dumps({"note": "card 4111 1111 1111 1111", "id": 378282246310005}) + "\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_json_text_stays_json_and_is_redacted_as_capture_redacts_it(text):
    redactor = Redactor(salt=b"store")
    redacted = redactor.redact_text(text)
    data = json.loads(redacted)
    assert "4111111111111111" not in redacted and "5555555555554444" not in redacted and "378282246310005" not in redacted
    assert redacted == redactor.redact_value(text)  # one way: what capture stores for such a tool result
    assert redacted.startswith(text[: len(text) - len(text.lstrip())]) and redacted.endswith(text[len(text.rstrip()) :])
    assert json.dumps(data, indent=2) == redacted.strip() if "\n  " in text else True


def test_the_placeholder_of_an_integer_card_is_the_one_redact_value_gives_it():
    redactor = Redactor(salt=b"store")
    assert json.loads(redactor.redact_text('{"amount_cents": 4111111111111111}')) == redactor.redact_value(
        {"amount_cents": 4111111111111111}
    )


@pytest.mark.parametrize(
    "text",
    [
        "{4111111111111111}",  # looks like JSON, is none: read by the rules
        "card 4111111111111111 {x}",
        '{"a": 1} and card 4111 1111 1111 1111',
    ],
)
def test_text_that_is_no_json_is_read_by_the_rules_as_before(text):
    assert "[REDACTED:credit_card]" in Redactor().redact_text(text)


def test_clean_json_text_is_returned_as_it_is():
    text = '{"a":  1,   "b": [1, 2]}'
    assert Redactor().redact_text(text) is text or Redactor().redact_text(text) == text
