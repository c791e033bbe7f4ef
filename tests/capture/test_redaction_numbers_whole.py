"""JSON numbers and the built-in kinds: only an integer a kind takes whole (a card number) is redacted (and its
whole-number float, tests/capture/test_redaction_whole_floats.py); other floats and
other integers stay numbers, cost no regex scan and fill no memo; user patterns still see any number's text."""

from __future__ import annotations

import json
import random
import re

import pytest

from ee_middleware.capture.redaction import BUILTIN_RULES, KINDS, RedactionRules, Redactor


def _floats(count: int) -> list[float]:
    rng = random.Random(7)
    return [rng.random() for _ in range(count)] + [round(rng.uniform(-90, 90), 14) for _ in range(count)]


def test_no_float_becomes_a_card_in_data_in_json_text_or_in_a_string_holding_json() -> None:
    floats = _floats(5000)
    redactor = Redactor(salt=b"s" * 32)
    assert redactor.redact_value({"xs": floats}) == {"xs": floats}
    assert json.loads(redactor.redact_json({"xs": floats})) == {"xs": floats}
    text = json.dumps({"xs": floats})
    assert redactor.redact_value(text) == text
    assert redactor.redact_text("lat 11.40614763335627, lon 79.5") == "lat 11.40614763335627, lon 79.5"


def test_an_integer_card_is_taken_whole_and_other_integers_are_kept() -> None:
    redactor = Redactor()
    data = {"card": 4111111111111111, "amex": 378282246310005, "id": 4111111111111112, "ts": 1733011200123, "neg": -4111111111111111}
    assert redactor.redact_value(data) == {**data, "card": "[REDACTED:credit_card]", "amex": "[REDACTED:credit_card]"}
    assert Redactor(RedactionRules(kinds={"credit_card": False})).redact_value(data) == data


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "credit_card"])
def test_no_built_in_kind_but_cards_matches_an_integers_text(kind: str) -> None:
    """What the plain-Python pre-check of integers (_INT_KINDS) rests on."""
    rule = next(r for r in BUILTIN_RULES if r.kind == kind)
    rng = random.Random(kind)
    for length in range(1, 41):
        for _ in range(50):
            text = ("-" if rng.random() < 0.2 else "") + str(rng.randint(10 ** (length - 1), 10**length - 1))
            found = [m for m in (rule.finder(text) if rule.finder else rule.pattern.finditer(text))]
            spans = [(m.start, m.end) if hasattr(m, "quote") else m.span() for m in found]
            assert not [s for s in spans if rule.check is None or rule.check(text[s[0] : s[1]])], (kind, text)


def test_numbers_cost_no_rule_scan_and_fill_no_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    redactor = Redactor()
    scans: list[str] = []
    real = Redactor._matches
    monkeypatch.setattr(Redactor, "_matches", lambda self, text, *rules: (scans.append(text), real(self, text, *rules))[1])
    rng = random.Random(1)
    embedding = [rng.uniform(-1, 1) for _ in range(1536)]
    ids = [rng.randint(10**6, 10**12) for _ in range(250)] + [rng.randint(10**18, 2 * 10**18) for _ in range(250)]  # (no card)
    assert redactor.redact_value({"embedding": embedding, "ids": ids}) == {"embedding": embedding, "ids": ids}
    assert scans == [] and redactor._clean_texts == {}


def test_user_patterns_still_see_a_numbers_text_floats_included() -> None:
    redactor = Redactor(RedactionRules(patterns={"account": r"99\d{4}", "geo": r"(?P<value>\.\d{3})\d+"}))
    assert redactor.redact_value({"n": 991234, "lat": 11.40614763335627, "x": 12.5}) == {
        "n": "[REDACTED:account]",
        "lat": "11[REDACTED:geo]14763335627",
        "x": 12.5,
    }
    assert re.fullmatch(r"\[REDACTED:credit_card\]", redactor.redact_value(4111111111111111))
