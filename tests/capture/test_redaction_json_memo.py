"""The same tool result seen again (in a later state, a second call) is redacted as the first time: a text whose raw
scan found nothing, but whose escapes hide a secret one JSON level down, is never taken for clean JSON."""

from __future__ import annotations

import json
from pathlib import Path

from langchain_core.tools import tool

from ee_middleware.capture.redaction import Redactor
from tests.capture.redaction_capture import files_text, record, spellings

SECRETS = ("иван@пример.рф", "hunter2x")
OUTPUT = json.dumps({"exit": 0, "stdout": json.dumps({"user": {"email": SECRETS[0], "note": "password:\n  hunter2x"}})})


@tool
def run_script(name: str) -> str:
    """Run a script and return its output as JSON."""
    return OUTPUT


def test_a_tool_result_redacted_again_stays_redacted_in_every_store_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    record(root, [run_script], [("run_script", {"name": "a"}), ("run_script", {"name": "b"})])
    text = files_text(root)
    for secret in SECRETS:
        deep = json.dumps(json.dumps(json.dumps(secret)[1:-1])[1:-1])[1:-1]
        assert not [s for s in [*spellings(secret), deep] if s in text], secret


def test_redacting_the_same_value_twice_gives_the_same_result() -> None:
    redactor = Redactor()
    first = redactor.redact_value({"content": OUTPUT})
    again = [redactor.redact_value({"content": OUTPUT}), json.loads(redactor.redact_json({"messages": [{"content": OUTPUT}]}))]
    assert again == [first, {"messages": [first]}]
    assert not any(s in json.dumps(again, ensure_ascii=False) for s in SECRETS)
