"""``redaction_keys``: key names whose values are always redacted as secrets wherever they are a key of JSON or of a dict
(``dob``, ``national_id``), given in code or in a ``[capture]`` file, recorded in the store's redaction.json and applied
by every later recorder and writer (real LangGraph agents, the real local store, ``ee traces export``).

Privacy sweep s23, finding 5: a pattern sees each value alone, so ``"dob": "1985-07-14"`` in a tool's arguments or JSON
result could only be caught by a pattern that also redacted every other date; ``redact_fn`` sees strings only.

The redactor takes the key names through ``RedactionRules.keys`` (ee_middleware/capture/redaction.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.capture.store_redaction import REDACTION_FILE, StoreRedaction, read_store_redaction, store_redactor
from ee_middleware.errors import ConfigError
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.redaction_capture import files_text

DOB = "1985-07-14"
NINO = "QQ 12 34 56 C"
TAX_ID = "86095742719"
SINCE = "2026-03-01"
"""An ordinary date beside the date of birth: no key name of the list, so it stays."""
SECRET_VALUES = (DOB, NINO, TAX_ID)
KEYS = ["dob", "national_id", "tax_id"]


@tool
def update_customer(customer_id: str, profile: dict) -> str:
    """Update a customer's profile."""
    return json.dumps({"customer_id": customer_id, "nationalId": NINO, "taxId": TAX_ID, "since": SINCE, "ok": True})


def _agent(store: Path, **settings: Any) -> Any:
    """A real ReAct agent recorded into ``store``: the date of birth in nested arguments, the ids in a JSON result."""
    profile = {"name": "J. Doe", "dob": DOB, "documents": [{"national_id": NINO}], "member_since": SINCE}
    script = [
        AIMessage(content="", tool_calls=[tool_call("update_customer", customer_id="CU-1001", profile=profile)]),
        AIMessage(content=f"Updated CU-1001, a customer since {SINCE}."),
    ]
    graph = create_react_agent(ScriptedChatModel(script=script, model_name="scripted-expert"), [update_customer])
    environment = {"customers": {"CU-1001": {"DOB": DOB, "tax-id": TAX_ID, "since": SINCE}}}
    return record_experience(graph, app="bank", store=store, environment=environment, **settings)


def _record(store: Path, **settings: Any) -> None:
    agent = _agent(store, **settings)
    agent.invoke({"messages": [("user", f"Update CU-1001, customer since {SINCE}.")]})
    assert agent.flush()
    agent.recorder.close()


def _plain(text: str) -> list[str]:
    return [value for value in SECRET_VALUES if value in text]


def test_values_under_the_redaction_keys_are_redacted_at_capture_and_the_keys_kept_with_the_store(store_path: Path) -> None:
    _record(store_path, redaction_keys=KEYS)
    text = files_text(store_path)
    assert _plain(text) == [], "arguments, the JSON result and the environment hold no value under those keys"
    assert SINCE in text, "other dates stay"
    [trajectory] = LocalExperienceStore(store_path).iter_trajectories()
    step = trajectory.steps[0]
    assert step.action.tool_call.arguments["profile"]["dob"].startswith("[REDACTED:secret:")
    assert step.action.tool_call.arguments["profile"]["member_since"] == SINCE
    assert trajectory.environment["customers"]["CU-1001"]["DOB"].startswith("[REDACTED:secret:")
    saved = json.loads((store_path / REDACTION_FILE).read_text())
    assert saved["rules"]["keys"] == sorted(KEYS) and saved["version"] == 4  # (a new store: canonical pseudonyms, 4)


def test_later_recorders_and_writers_apply_the_store_s_redaction_keys(store_path: Path) -> None:
    _record(store_path, redaction_keys=KEYS)
    _record(store_path)  # a second service without the setting
    assert _plain(files_text(store_path)) == [], "the second recorder applied the keys the store recorded"
    store = LocalExperienceStore(store_path)
    redactor = store_redactor(store, create_salt=False)
    assert redactor.redact_value({"tax_id": TAX_ID, "since": SINCE})["tax_id"].startswith("[REDACTED:secret:")
    assert read_store_redaction(store).to_dict()["rules"]["keys"] == sorted(KEYS)
    store.close()


def test_ee_traces_export_applies_redaction_keys_recorded_after_the_runs(store_path: Path, tmp_path: Path) -> None:
    """Runs recorded before the keys were set hold the values; the keys recorded later by another recorder reach the
    export, which applies the store's rules as it reads."""
    from ee_middleware.cli.app import app

    _record(store_path)  # before the keys existed: the values are in the store
    assert DOB in files_text(store_path)
    _record(store_path, redaction_keys=KEYS)
    out = tmp_path / "export.jsonl"
    result = CliRunner().invoke(app, ["traces", "export", "--store", str(store_path), "-f", "jsonl", "-o", str(out), "--status", "all"])
    assert result.exit_code == 0, result.output
    exported = out.read_text()
    assert exported and _plain(exported) == []


def test_redaction_keys_are_read_from_a_capture_file_and_given_in_code(tmp_path: Path) -> None:
    toml = tmp_path / "capture.toml"
    toml.write_text('[capture]\nredaction_keys = ["dob", "national_id"]\n')
    assert CaptureConfig.load(toml).redaction_keys == ("dob", "national_id")
    assert set(CaptureConfig.load(toml).redaction_rules().keys) == {"dob", "national_id"}
    assert CaptureConfig(redaction_keys={"tax_id"}).redaction_keys == ("tax_id",)
    toml.write_text('[capture]\nredaction_keys = "dob"\n')
    with pytest.raises(ConfigError, match=r"redaction_keys: Input should be a valid list"):
        CaptureConfig.load(toml)
    with pytest.raises(ConfigError, match=r"redaction_keys"):
        CaptureConfig(redaction_keys=["dob", ""])


def test_settings_with_key_names_union_and_are_written_as_version_3() -> None:
    """(In a store whose pseudonyms are as written, recorded before canonical ones: a canonical store is version 4.)"""
    one = StoreRedaction(rules=RedactionRules(keys=frozenset({"dob"}), canonical_pseudonyms=False))
    both = one.union(StoreRedaction(rules=RedactionRules(patterns={"t": "TCK-1"}, keys=frozenset({"tax_id"}))))
    assert set(both.rules.keys) == {"dob", "tax_id"} and both.rules.patterns == {"t": "TCK-1"}
    assert both.to_dict()["version"] == 3 and StoreRedaction(rules=RedactionRules(canonical_pseudonyms=False)).to_dict()["version"] == 1
    assert StoreRedaction.from_dict(both.to_dict()) == both
    assert StoreRedaction(rules=RedactionRules(keys=frozenset({"dob"}))).to_dict()["version"] == 4
