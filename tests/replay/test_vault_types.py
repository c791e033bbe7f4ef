"""The redaction vault keeps a redacted value's JSON type: a real ``create_agent`` run recorded with
``record_experience(..., vault=True)`` (numbers under secret names, a card number sent as a JSON number), then what
replay gives the sandbox (:meth:`ReplayPrivacy.restore`) is exactly the recorded call, numbers as numbers; but for a
card sent in one call both as a number and as spaced text (one pseudonym since tags are canonical): the vault keeps its
digits, which the tool still receives as an ``int`` where its parameter is one (LangChain's argument schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.capture.redaction import Redactor
from ee_middleware.capture.vault import KEY_ENV, Vault, new_key
from ee_middleware.records import ToolCall
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.redaction_corpus import parts_left

UNLOCK = {"account": "A-7", "pin": 4821, "otp_secret": 0.5, "access_token": {"ttl": 3600, "scopes": ["read", 2]}}
CHARGE = {"card_number": 4111111111111111, "amount": 12.5, "card_text": "4111 1111 1111 1111", "note": "paid with 5555555555554444 today"}
CHARGE_RESTORED = {**CHARGE, "card_number": "4111111111111111", "card_text": "4111111111111111"}
"""What replay gives back for CHARGE: the card's two spellings share a pseudonym (its canonical form, 17f4b2e), and the
vault keeps one value for it, the one that works for both: its digits as text (a number and its digits as text keep
the string, as before numbers were typed). Before 17f4b2e each spelling had a tag of its own and came back as sent."""
RECEIVED: list[dict[str, Any]] = []
"""The arguments the tools' functions were called with, as given (types included)."""


@tool
def unlock(account: str, pin: int, otp_secret: float, access_token: dict) -> str:
    """Unlock an account."""
    RECEIVED.append({"account": account, "pin": pin, "otp_secret": otp_secret, "access_token": access_token})
    return "ok"


@tool
def charge(card_number: int, amount: float, card_text: str, note: str) -> str:
    """Charge a card."""
    RECEIVED.append({"card_number": card_number, "amount": amount, "card_text": card_text, "note": note})
    return "charged"


def _record(tmp_path: Path) -> LocalExperienceStore:
    script = [
        AIMessage(content="", tool_calls=[tool_call("unlock", **UNLOCK)]),
        AIMessage(content="", tool_calls=[tool_call("charge", **CHARGE)]),
        AIMessage(content="done"),
    ]
    store = tmp_path / "store"
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [unlock, charge]), app="bank", store=store, vault=True)
    agent.invoke({"messages": [("user", "unlock A-7 and pay")]})
    assert agent.flush(timeout=120), f"the run was not stored: {agent.recorder.stats}"
    agent.recorder.close()
    return LocalExperienceStore(store)


def _calls(store: LocalExperienceStore) -> list[ToolCall]:
    [trajectory] = store.iter_trajectories()
    return [step.action.tool_call for step in trajectory.steps if step.action.tool_call is not None]


@pytest.mark.parametrize("encrypted", [False, True])
def test_replay_restores_redacted_numbers_as_the_numbers_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> None:
    if encrypted:
        monkeypatch.setenv(KEY_ENV, new_key())
    store = _record(tmp_path)
    unlock_call, charge_call = _calls(store)
    stored = json.dumps([unlock_call.arguments, charge_call.arguments])
    assert not parts_left(("4821", "4111", "3600"), stored), "the store keeps placeholders"
    privacy = ReplayPrivacy.of_store(store)
    sandbox = PythonSandbox(lambda environment: {}, {}, read_only_tools={"unlock": unlock, "charge": charge})
    sandbox.reset({})
    RECEIVED.clear()
    for call, original in ((unlock_call, UNLOCK), (charge_call, CHARGE_RESTORED)):
        restored, unrestored = privacy.restore(call)
        assert unrestored == []
        assert restored.arguments == original
        assert json.dumps(restored.arguments) == json.dumps(original), "same JSON types (4821, not '4821'; 0.5, not '0.5')"
        assert sandbox.execute(restored).is_error is False  # as the replay runner executes it (_Run.execute)
    # what the tools' functions received: the recorded call's values and types; the card's digits an int where the
    # parameter is one (LangChain's argument schema converts the text), the spaced text as its digits
    assert RECEIVED == [UNLOCK, {**CHARGE, "card_text": "4111111111111111"}]
    assert type(RECEIVED[0]["pin"]) is int and type(RECEIVED[1]["card_number"]) is int and type(RECEIVED[1]["card_text"]) is str


def test_a_number_and_the_same_digits_in_text_share_a_pseudonym_and_replay_gives_the_string_as_before(tmp_path: Path) -> None:
    """A number's pseudonym is that of its digits as text (what stores recorded before numbers were typed hold); a
    pseudonym the vault saw both as a string and as a number is restored as the string, a number-only one as the
    number."""
    vault = Vault(tmp_path / "v.vault", create=True)
    redactor = Redactor(salt=b"s" * 32, on_replace=vault.add)
    redacted = redactor.redact_value({"pin": 4821, "said": "pin=4821", "code_pin": 7301, "card": 4111111111111111})
    assert redacted["pin"] == redactor.placeholder("secret", "4821") and redacted["said"] == f"pin={redacted['pin']}"
    privacy = ReplayPrivacy(None, None, str(tmp_path / "v.vault"))
    restored, unrestored = privacy.restore(ToolCall(id="c", name="t", arguments=redacted))
    assert unrestored == []
    assert restored.arguments == {"pin": "4821", "said": "pin=4821", "code_pin": 7301, "card": 4111111111111111}
    # the same in the other order, and read back from the file
    vault2 = Vault(tmp_path / "w.vault", create=True)
    vault2.add(redacted["code_pin"], 7301)
    vault2.add(redacted["code_pin"], "7301")
    assert vault2.lookup(redacted["code_pin"]) == "7301" and Vault(tmp_path / "w.vault").lookup(redacted["code_pin"]) == "7301"
    # a number's placeholder inside a longer text is restored as its digits
    quoted, _ = privacy.restore(ToolCall(id="c", name="t", arguments={"q": f"code {redacted['code_pin']}!"}))
    assert quoted.arguments == {"q": "code 7301!"}


def test_an_older_vault_with_string_values_still_restores_them(tmp_path: Path) -> None:
    path = tmp_path / "old.vault"
    lines = [{"format": "ee-redaction-vault", "version": 1, "encryption": None}, {"p": "[REDACTED:secret:0a1b2c3d]", "v": "4821"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    path.chmod(0o600)
    restored, unrestored = ReplayPrivacy(None, None, str(path)).restore(
        ToolCall(id="c", name="t", arguments={"pin": "[REDACTED:secret:0a1b2c3d]"})
    )
    assert (restored.arguments, unrestored) == ({"pin": "4821"}, [])


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
def test_the_vault_refuses_a_value_that_is_no_string_or_number(tmp_path: Path, value: Any) -> None:
    vault = Vault(tmp_path / "v.vault", create=True)
    with pytest.raises(TypeError, match="string or a number"):
        vault.add("[REDACTED:secret:0a1b2c3d]", value)
