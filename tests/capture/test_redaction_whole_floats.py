"""A card number held as a whole-number float (``4111111111111111.0``: pandas makes a card column float64 once one row is
missing) is redacted as the integer would be; every other float is kept (review r10 #4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from langchain_core.tools import tool

from ee_middleware.capture.redaction import RedactionRules, Redactor
from tests.capture.redaction_capture import files_text, record

CARD = 4111111111111111


@tool
def customers(n: int) -> str:
    """Customer rows as a data frame's to_json(orient='records') gives them (card column float64: one is missing)."""
    return json.dumps([{"name": "A", "card": float(CARD)}, {"name": "B", "card": None}])


def test_a_float_card_column_is_kept_out_of_every_store_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    record(root, [customers], [("customers", {"n": 2})])
    assert str(CARD) not in files_text(root)


def test_a_whole_float_card_becomes_its_placeholder_in_data_json_text_and_strings_holding_json() -> None:
    redactor = Redactor()
    rows = {"rows": [{"card": float(CARD)}, {"card": 378282246310005.0}]}
    expected = {"rows": [{"card": "[REDACTED:credit_card]"}, {"card": "[REDACTED:credit_card]"}]}
    assert redactor.redact_value(rows) == expected
    assert json.loads(redactor.redact_json(rows)) == expected
    assert json.loads(redactor.redact_value(json.dumps(rows))) == expected
    assert Redactor(RedactionRules(kinds={"credit_card": False})).redact_value(rows) == rows


def test_the_vault_gets_the_float_itself() -> None:
    seen: list[tuple[str, object]] = []
    redactor = Redactor(salt=b"s" * 32, on_replace=lambda placeholder, value: seen.append((placeholder, value)))
    placeholder = redactor.redact_value(float(CARD))
    assert seen == [(placeholder, float(CARD))] and type(seen[0][1]) is float


def test_other_floats_are_kept() -> None:
    floats = [4111111111111112.0, 4111111111111111.5, 411111111111.0, 1e16, 1e300, -4111111111111111.0, float("inf")]
    assert Redactor().redact_value(floats) == floats
    assert math.isnan(Redactor().redact_value(float("nan")))
