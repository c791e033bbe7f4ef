"""Pseudonyms are canonical (privacy sweep s23, finding 8): the tag of an e-mail address is that of the lower-cased
address (a URL-encoded ``@`` read as ``@``), of a card or an SSN that of its digits, of an IBAN that of its compact
upper-case form, of a phone number that of its digits (``+`` kept). Before, ``Jane.Doe@Gmail.com`` in the user's
message and ``jane.doe@gmail.com`` in the model's call, or ``4111 1111 1111 1111`` and ``4111111111111111``, got two
tags, so IL dropped the call as "placeholder not in prompt". The placeholder keeps its form; a value already written
in its canonical form keeps the tag it had; ``on_replace`` (the vault) still gets the value as it was written."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.redaction import PLACEHOLDER, RedactionRules, Redactor, canonical_form
from ee_middleware.testing import ScriptedChatModel, tool_call

SALT = b"store-salt"

SPELLINGS = [
    ("email", ["Jane.Doe@Gmail.com", "jane.doe@gmail.com", "JANE.DOE@GMAIL.COM", "jane.doe%40gmail.com", "jane.doe%2540Gmail.com"]),
    ("credit_card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", 4111111111111111, 4111111111111111.0]),
    ("iban", ["DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "de89 3704 0044 0532 0130 00", "de89370400440532013000"]),
    ("phone", ["+44 20 7946 0958", "+442079460958", "+44-20-7946-0958", "+44 (20) 7946 0958"]),
    ("phone", ["(415) 555-0134", "415-555-0134", "415.555.0134"]),
    ("us_ssn", ["123-45-6789", "123456789", "123 45 6789"]),
]


@pytest.mark.parametrize(("kind", "values"), SPELLINGS)
def test_every_spelling_of_a_value_gets_one_pseudonym(kind, values):
    redactor = Redactor(salt=SALT)
    placeholders = {redactor.placeholder(kind, value) for value in values}
    assert len(placeholders) == 1
    [placeholder] = placeholders
    assert PLACEHOLDER.fullmatch(placeholder) and placeholder.startswith(f"[REDACTED:{kind}:")


@pytest.mark.parametrize(
    ("text", "other"),
    [
        ("mail Jane.Doe@Gmail.com", '{"email": "jane.doe@gmail.com"}'),
        ("see https://x.io/?to=Jane.Doe%40Gmail.com&a=1", "jane.doe@gmail.com"),
        ("card 4111 1111 1111 1111 exp 04/29", '{"card_number": 4111111111111111}'),
        ("IBAN de89 3704 0044 0532 0130 00", "DE89370400440532013000"),
        ("call +44 20 7946 0958", '{"phone": "+442079460958"}'),
        ("SSN 123-45-6789", "my SSN is 123456789"),
    ],
)
def test_redacted_text_holds_the_same_placeholder_for_both_spellings(text, other):
    redactor = Redactor(salt=SALT)
    first = set(PLACEHOLDER.findall(redactor.redact_text(text)))
    second = set(PLACEHOLDER.findall(redactor.redact_text(other)))
    assert len(first) == 1 and first == second


def test_distinct_values_keep_distinct_pseudonyms():
    redactor = Redactor(salt=SALT)
    assert redactor.placeholder("email", "jane.doe@gmail.com") != redactor.placeholder("email", "jane.doe@gmail.co")
    assert redactor.placeholder("phone", "+1 415 555 0134") != redactor.placeholder("phone", "(415) 555-0134")
    assert redactor.placeholder("secret", "Hunter2") != redactor.placeholder("secret", "hunter2")  # secrets: as written


def test_a_value_written_in_its_canonical_form_keeps_its_old_tag():
    """Stores recorded before keep matching these: a lower-case address, a card's digits (an integer card), a compact
    IBAN, and every value of the other kinds."""

    def old_tag(text: str) -> str:
        return hmac.new(SALT, text.encode(), hashlib.sha256).hexdigest()[:8]

    redactor = Redactor(salt=SALT)
    for kind, value in [
        ("email", "jane.doe@gmail.com"),
        ("credit_card", "4111111111111111"),
        ("credit_card", 4111111111111111),
        ("iban", "DE89370400440532013000"),
        ("secret", "Hunter2"),
        ("secret", 4821),
        ("api_key", "sk_live_abcdefghij12"),
    ]:
        assert redactor.placeholder(kind, value) == f"[REDACTED:{kind}:{old_tag(str(value))}]"


def test_the_vault_is_told_the_value_as_it_was_written():
    seen: list[tuple[str, object]] = []
    redactor = Redactor(salt=SALT, on_replace=lambda placeholder, value: seen.append((placeholder, value)))
    redactor.redact_text("mail Jane.Doe@Gmail.com or jane.doe@gmail.com")
    assert [value for _, value in seen] == ["Jane.Doe@Gmail.com", "jane.doe@gmail.com"]
    assert seen[0][0] == seen[1][0]


def test_canonical_forms_are_working_values_and_user_patterns_are_left_as_written():
    assert canonical_form("email", "Jane.Doe%40Gmail.com") == "jane.doe@gmail.com"
    assert canonical_form("credit_card", 4111111111111111.0) == "4111111111111111"
    assert canonical_form("iban", "de89 3704 0044 0532 0130 00") == "DE89370400440532013000"
    assert canonical_form("phone", "+44 (20) 7946-0958") == "+442079460958"
    assert canonical_form("phone", "(415) 555-0134") == "4155550134"
    # a user pattern named like a built-in kind whose value is no such number is taken as written
    assert canonical_form("credit_card", "CARD-AB12") == "CARD-AB12"
    redactor = Redactor(RedactionRules(patterns={"phone": r"EXT-[A-Z]\d+"}), salt=SALT)
    assert redactor.redact_text("EXT-A1") != redactor.redact_text("EXT-B1")


@tool
def find_customer(email: str) -> str:
    """Find a customer by e-mail."""
    return "CU-1001" if email.lower() == "jane.doe@gmail.com" else "not found"


@tool
def block_card(card_number: int) -> str:
    """Block a card."""
    return "blocked"


def test_a_call_with_the_value_the_model_normalised_holds_the_placeholder_the_prompt_showed(tmp_path: Path) -> None:
    """What IL needs to keep the call (trainers leave out a call whose placeholder the prompt did not show)."""
    store_path = tmp_path / "store"
    cases = [
        ("Please find me, I'm Jane.Doe@Gmail.com", tool_call("find_customer", email="jane.doe@gmail.com")),
        ("Block my card 4111 1111 1111 1111 now", tool_call("block_card", card_number=4111111111111111)),
    ]
    for task, call in cases:
        model = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[call]), AIMessage(content="Done.")])
        agent = record_experience(create_agent(model, [find_customer, block_card]), app="norm", store=store_path)
        agent.invoke({"messages": [("user", task)]})
        agent.flush()
        agent.recorder.close()
    trajectories = list(LocalExperienceStore(store_path).iter_trajectories())
    assert len(trajectories) == 2
    for trajectory in trajectories:
        [argument] = trajectory.steps[0].action.tool_call.arguments.values()
        assert PLACEHOLDER.fullmatch(argument)
        assert argument in trajectory.task
