"""A vault an older ee created (a version 1 header, strings only) keeps getting strings when newer capture records into
its store: an older ee replaying the store still reads every entry (review r10 #5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.capture.vault import KEY_ENV, Vault, _cipher, new_key
from ee_middleware.records import ToolCall
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call

CHARGE = {"card_number": 4111111111111111, "pin": 4821, "note": "paid with 5555555555554444 today"}


@tool
def charge(card_number: int, pin: int, note: str) -> str:
    """Charge a card."""
    return "charged"


def _old_vault(path: Path, key: str | None) -> None:
    """The file an older ee creates: its header, version 1 (and one string entry it recorded)."""
    header: dict[str, object] = {"format": "ee-redaction-vault", "version": 1, "encryption": None}
    entry: dict[str, str] = {"p": "[REDACTED:email:0a1b2c3d]", "v": "ann@example.com"}
    if key:
        header.update(encryption="fernet", key_check=_cipher(key).encrypt(b"ee-redaction-vault").decode())
        entry = {"p": entry["p"], "c": _cipher(key).encrypt(entry["v"].encode()).decode()}
    path.write_text(json.dumps(header) + "\n" + json.dumps(entry) + "\n")
    path.chmod(0o600)


@pytest.mark.parametrize("encrypted", [False, True])
def test_numbers_go_into_a_version_1_vault_as_their_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> None:
    key = new_key() if encrypted else None
    if key:
        monkeypatch.setenv(KEY_ENV, key)
    root = tmp_path / "store"
    vault_path = tmp_path / "store.vault"
    _old_vault(vault_path, key)
    script = [AIMessage(content="", tool_calls=[tool_call("charge", **CHARGE)]), AIMessage(content="done")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [charge]), app="bank", store=root, vault=True)
    agent.invoke({"messages": [("user", "pay")]})
    agent.flush()
    agent.recorder.close()

    lines = [json.loads(line) for line in vault_path.read_text().splitlines()]
    assert lines[0]["version"] == 1 and len(lines) > 2
    values = [Vault(vault_path).lookup(line["p"]) for line in lines[1:]]
    assert all(isinstance(value, str) for value in values), values
    assert all(set(line) == ({"p", "c"} if encrypted else {"p", "v"}) for line in lines[1:]), "no typed entry (n, or v as a number)"

    [trajectory] = LocalExperienceStore(root).iter_trajectories()
    [call] = [step.action.tool_call for step in trajectory.steps if step.action.tool_call is not None]
    restored, unrestored = ReplayPrivacy.of_store(LocalExperienceStore(root)).restore(call)
    assert unrestored == []
    assert restored.arguments == {"card_number": "4111111111111111", "pin": "4821", "note": CHARGE["note"]}


def test_a_version_2_vault_keeps_numbers_typed(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v.vault", create=True)
    vault.add("[REDACTED:secret:0a1b2c3d]", 4821)
    assert Vault(tmp_path / "v.vault").lookup("[REDACTED:secret:0a1b2c3d]") == 4821
    restored, _ = ReplayPrivacy(None, None, str(tmp_path / "v.vault")).restore(
        ToolCall(id="c", name="t", arguments={"pin": "[REDACTED:secret:0a1b2c3d]"})
    )
    assert restored.arguments == {"pin": 4821}
