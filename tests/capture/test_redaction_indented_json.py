"""Pretty-printed escaped JSON after prose (``"API error 422:\\n" + json.dumps(body, indent=2)``), and a JSON string in
prose holding such JSON, are read through their escapes as compact JSON is (review r10 #1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.tools import tool

from ee_middleware.capture.redaction import Redactor
from tests.capture.redaction_capture import files_text, record, spellings

ADDRESS = "müller@bücher.de"
BODY = {"detail": [{"loc": ["body", "email"], "msg": "already registered", "input": ADDRESS}]}


@tool
def register(n: int) -> str:
    """Register a user (the API's error body, pretty-printed)."""
    return "API error 422:\n" + json.dumps(BODY, indent=2)


@tool
def register_or_raise(n: int) -> str:
    """Register a user (raises with the API's pretty-printed error body)."""
    raise ValueError("API error 422:\n" + json.dumps(BODY, indent=2))


@pytest.mark.parametrize("registers", [register, register_or_raise], ids=["result", "raised"])
def test_a_pretty_printed_error_body_is_kept_out_of_every_store_file(tmp_path: Path, registers: object) -> None:
    root = tmp_path / "store"
    record(root, [registers], [(registers.name, {"n": 1})])  # type: ignore[attr-defined]
    text = files_text(root)
    assert not [s for s in spellings(ADDRESS) if s in text]


@pytest.mark.parametrize("indent", [2, 4])
def test_indented_json_after_prose_keeps_its_layout(indent: int) -> None:
    text = "API error 422:\n" + json.dumps(BODY, indent=indent) + "\nretry later"
    out = Redactor().redact_text(text)
    expected = json.loads(json.dumps(BODY))
    expected["detail"][0]["input"] = "[REDACTED:email]"
    assert out == "API error 422:\n" + json.dumps(expected, indent=indent) + "\nretry later"


def test_a_list_pretty_printed_after_prose_is_read() -> None:
    out = Redactor().redact_text("rows:\n" + json.dumps([{"owner": ADDRESS}], indent=2))
    assert "[REDACTED:email]" in out and "\\u00fc" not in out


def test_a_json_string_in_prose_holding_indented_json_is_read() -> None:
    inner = json.dumps(BODY, indent=2)
    text = "upstream said " + json.dumps(inner) + " (HTTP 422)"  # "{\n  \"detail\": ... \"m\u00fcller@...\"}"
    out = Redactor().redact_text(text)
    assert "\\u00fc" not in out and "[REDACTED:email]" in out
    assert out.startswith('upstream said "{\\n  \\"detail\\"') and out.endswith('" (HTTP 422)')


def test_prose_with_brackets_and_escapes_but_no_secret_is_kept_as_it_is() -> None:
    redactor = Redactor()
    for text in ['he said "{x}" \\u00e9', 'a "{\\n  \\"k\\": \\"caf\\u00e9\\"}" b', "rows:\n" + json.dumps({"a": "é"}, indent=2)]:
        assert redactor.redact_text(text) == text
