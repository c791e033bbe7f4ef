"""Escapes hide nothing outside a whole JSON object or array either: a tool returning ``json.dumps("<a string>")``,
and text holding escaped JSON after some prose (an error ``API error 422: {...}``)."""

from __future__ import annotations

import json
from pathlib import Path

from langchain_core.tools import tool

from ee_middleware.capture.redaction import Redactor
from tests.capture.redaction_capture import files_text, record, spellings

ADDRESS = "иван@пример.рф"


@tool
def whoami(name: str) -> str:
    """Who the user is, as a JSON string."""
    return json.dumps(f"Contact: {ADDRESS}")


def test_a_tool_returning_a_json_string_is_redacted_in_every_store_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    record(root, [whoami], [("whoami", {"name": "a"})])
    text = files_text(root)
    assert not [s for s in [*spellings(ADDRESS), json.dumps(json.dumps(ADDRESS))[1:-1]] if s in text]


def test_a_json_string_scalar_keeps_its_layout() -> None:
    redactor = Redactor()
    assert redactor.redact_value(json.dumps("Contact: müller@bücher.de")) == '"Contact: [REDACTED:email]"'
    assert redactor.redact_value(json.dumps("plain")) == '"plain"'


def test_escaped_json_after_prose_is_read_through_its_escapes() -> None:
    redactor = Redactor()
    error = 'API error 422: {"detail": {"email": "m\\u00fcller@b\\u00fccher.de"}} (retry later)'
    assert redactor.redact_text(error) == 'API error 422: {"detail": {"email": "[REDACTED:email]"}} (retry later)'
    note = 'log: {"note": "password:\\n  hunter2x"}'
    assert "hunter2x" not in redactor.redact_text(note)
    prose = 'see {"a": "b\\u00e9"} and [1, 2]'
    assert redactor.redact_text(prose) == prose
