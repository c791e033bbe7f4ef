"""A card number (or any value a rule catches) sent as a JSON NUMBER is redacted as its digits in text are: recorded
through a real ``create_agent`` graph into a real store whose every file is searched for it; a number no rule takes
stays a number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import tool

from ee_middleware.capture.redaction import PLACEHOLDER, Redactor
from tests.capture.redaction_capture import assert_not_stored, record

CARD = 4111111111111111  # Luhn-valid


def test_a_card_number_sent_as_a_json_number_is_redacted_in_arguments_results_and_states(tmp_path: Path) -> None:
    @tool
    def charge(card_number: int, amount: float) -> dict:
        """Charge a card."""
        return {"ok": True, "card_number": card_number, "amount": amount}

    root = tmp_path / "store"
    store = record(root, [charge], [("charge", {"card_number": CARD, "amount": 12.5})])
    assert_not_stored(store, root, [str(CARD)])
    [trajectory] = store.iter_trajectories()
    arguments = trajectory.steps[0].action.tool_call.arguments
    assert PLACEHOLDER.fullmatch(arguments["card_number"]) and arguments["card_number"].startswith("[REDACTED:credit_card:")
    assert arguments["amount"] == 12.5, "a number no rule takes stays a number"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (CARD, "credit_card"),
        (378282246310005, "credit_card"),  # 15 digits (Amex)
        ({"nested": [1, CARD]}, "credit_card"),
    ],
)
def test_numbers_a_rule_takes_become_its_placeholder(value: Any, kind: str) -> None:
    redacted = json.dumps(Redactor().redact_value(value))
    assert str(CARD) not in redacted and "378282246310005" not in redacted and f"[REDACTED:{kind}]" in redacted


@pytest.mark.parametrize("value", [4111111111111112, 20251201, 1733097600, 12.5, 0, -3, True, 10**30])
def test_numbers_no_rule_takes_stay_numbers(value: Any) -> None:
    assert Redactor().redact_value({"n": value}) == {"n": value}
    assert Redactor().redact_json({"n": value}) == json.dumps({"n": value}, separators=(",", ":"))


def test_a_user_pattern_applies_to_numbers_too() -> None:
    redactor = Redactor(extra_patterns={"customer": r"9\d{5}"})
    assert redactor.redact_value({"customer": 912345, "other": 812345}) == {"customer": "[REDACTED:customer]", "other": 812345}
