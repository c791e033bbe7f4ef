"""A secret value that ends in (or holds) a line break, below a secret name in JSON (a password read from a file or a
form, ``"Tr0ub4dor&3\\n"``): the scan of the JSON text read its escapes decoded, where the line break ended the quoted
value the rules look for, called the text clean, and capture stored the password (review of the dataset guard). A real
``create_agent`` run recorded into the real local store."""

from __future__ import annotations

import json
from pathlib import Path

from langchain_core.tools import tool

from ee_middleware.capture.redaction import Redactor
from tests.capture.redaction_capture import assert_not_stored, record


def test_a_secret_with_a_line_break_is_redacted_in_json() -> None:
    redactor = Redactor()
    assert redactor.redact_json({"password": "Tr0ub4dor&3\n"}) == '{"password":"[REDACTED:secret]"}'
    assert redactor.redact_json({"creds": {"api_key": "abc\r\ndef"}}) == '{"creds":{"api_key":"[REDACTED:secret]"}}'
    assert redactor.redact_text('{"password": "Tr0ub4dor&3\\n"}') == '{"password": "[REDACTED:secret]"}'
    note = {"note": "line one\nline two", "count": 2}  # ordinary text with line breaks: left as it is
    assert redactor.redact_json(note) == json.dumps(note, separators=(",", ":"))


def test_a_recorded_call_with_such_a_password_stores_none_of_it(tmp_path: Path) -> None:
    @tool
    def login(user: str, password: str) -> str:
        """Log in."""
        return "logged in"

    store = record(tmp_path / "s", [login], [("login", {"user": "dana", "password": "Tr0ub4dor&3\n"})])
    [trajectory] = list(store.iter_trajectories())
    assert "Tr0ub4dor" not in trajectory.model_dump_json()
    assert trajectory.steps[0].action.tool_call.arguments["password"].startswith("[REDACTED:secret")
    assert_not_stored(store, tmp_path / "s", ["Tr0ub4dor"])  # in no file of the store, spool or Parquet, in any spelling
    store.close()
