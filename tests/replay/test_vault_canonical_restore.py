"""Replay restores a value the model wrote in two spellings in one call: a real ``create_agent`` run recorded with
``record_experience(..., vault=True)`` sends an e-mail address, an IBAN and a phone number each twice, differently
written; they share a pseudonym (tags are canonical, 17f4b2e), and replay gives the tool their canonical form instead
of flagging the step unrestorable (an ambiguous tag)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.capture.vault import KEY_ENV, new_key
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.redaction_corpus import parts_left

PAYEE = {
    "email": "Jane.Doe@Gmail.com",
    "confirm_email": "jane.doe@gmail.com",
    "iban": "DE89 3704 0044 0532 0130 00",
    "note": "IBAN DE89370400440532013000, call +44 20 7946 0958 or +442079460958",
}
RESTORED = {
    "email": "jane.doe@gmail.com",
    "confirm_email": "jane.doe@gmail.com",
    "iban": "DE89370400440532013000",
    "note": "IBAN DE89370400440532013000, call +442079460958 or +442079460958",
}
RECEIVED: list[dict[str, Any]] = []


@tool
def add_payee(email: str, confirm_email: str, iban: str, note: str) -> str:
    """Add a payee."""
    RECEIVED.append({"email": email, "confirm_email": confirm_email, "iban": iban, "note": note})
    return "added"


@pytest.mark.parametrize("encrypted", [False, True])
def test_replay_restores_two_spellings_of_one_value_as_its_canonical_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    if encrypted:
        monkeypatch.setenv(KEY_ENV, new_key())
    script = [AIMessage(content="", tool_calls=[tool_call("add_payee", **PAYEE)]), AIMessage(content="done")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [add_payee]), app="bank", store=tmp_path / "store", vault=True)
    agent.invoke({"messages": [("user", "add Jane as a payee")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "store")
    [trajectory] = store.iter_trajectories()
    [call] = [step.action.tool_call for step in trajectory.steps if step.action.tool_call is not None]
    stored = json.dumps(call.arguments)
    assert not parts_left(("Jane", "jane", "DE89", "7946"), stored), stored
    assert call.arguments["email"] == call.arguments["confirm_email"], "one pseudonym for both spellings"

    restored, unrestored = ReplayPrivacy.of_store(store).restore(call)
    assert unrestored == []  # before: both tags "two values share this tag in the vault"
    assert restored.arguments == RESTORED
    sandbox = PythonSandbox(lambda environment: {}, {}, read_only_tools={"add_payee": add_payee})
    sandbox.reset({})
    RECEIVED.clear()
    assert sandbox.execute(restored).is_error is False
    assert RECEIVED == [RESTORED]
