"""Escaped JSON after prose is read value by value: JSON lines (structured logs, ``jq -c``) through their last line, and
a value nested deep is parsed and walked once, not once per nesting level (review r10 #2, #3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import tool

from ee_middleware.capture import redaction
from ee_middleware.capture.redaction import Redactor
from tests.capture.redaction_capture import files_text, record, spellings

ADDRESS = "müller@bücher.de"


def _log_lines(count: int, leak_at: int) -> str:
    return "\n".join(
        json.dumps({"ts": 1700000000 + i, "ctx": {"req": i}, "msg": f"login failed for {ADDRESS}" if i == leak_at else "login ok"})
        for i in range(count)
    )


@tool
def tail_logs(n: int) -> str:
    """The service's last log lines (JSON lines, after a header)."""
    return "12 entries:\n" + _log_lines(12, leak_at=9)


def test_an_address_in_line_ten_of_json_lines_is_kept_out_of_every_store_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    record(root, [tail_logs], [("tail_logs", {"n": 12})])
    text = files_text(root)
    assert not [s for s in spellings(ADDRESS) if s in text]


@pytest.mark.parametrize("header", ["", "500 entries:\n"])
def test_json_lines_are_read_through_their_escapes_to_the_last_line(header: str) -> None:
    out = Redactor().redact_text(header + _log_lines(500, leak_at=499))
    assert "\\u00fc" not in out and out.count("[REDACTED:email]") == 1
    assert out.startswith(header + '{"ts": 1700000000, "ctx": {"req": 0}, "msg": "login ok"}')


class _CountingDecoder(json.JSONDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
        self.calls += 1
        return super().raw_decode(s, idx)


def test_a_nested_value_after_prose_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = _CountingDecoder()
    monkeypatch.setattr(redaction, "_DECODER", decoder)
    rows = [{"id": i, "name": "Müller", "city": "Санкт-Петербург"} for i in range(20)]
    body = {"response": {"result": {"page": {"data": {"items": {"list": rows}}}}}}
    text = "HTTP 200 OK: " + json.dumps(body)
    assert Redactor().redact_text(text) == text
    assert decoder.calls == 1


def test_json_cut_off_after_prose_is_read_through_its_complete_parts() -> None:
    rows = [{"id": i, "owner": ADDRESS if i == 70 else "Müller"} for i in range(80)]
    full = json.dumps({"data": {"page": {"items": rows}}})
    out = Redactor().redact_text("Output (truncated): " + full[: full.index('"id": 75')])
    assert "\\u00fcller@" not in out and out.count("[REDACTED:email]") == 1


def test_failed_parses_are_bounded_by_the_texts_length(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = _CountingDecoder()
    monkeypatch.setattr(redaction, "_DECODER", decoder)
    text = "open: " + '[{"a": "\\u00fc"}, ' * 400  # 400 arrays never closed: each reads to the end and fails
    assert Redactor().redact_text(text) == text
    assert decoder.calls < 2 * (redaction._EMBEDDED_WORK + 2)  # (a failed parse of an array, a parse of its object)


def test_a_log_of_lines_that_fail_to_parse_is_given_up_after_a_bounded_number_of_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python reprs with double quotes (True/None) fail at every line, and each failure costs up to the text's length (the
    # error's line number counts its newlines): 688 KB took 1.86 s a call, 39 ms before 4235bcf (review r11)
    decoder = _CountingDecoder()
    monkeypatch.setattr(redaction, "_DECODER", decoder)
    lines = "\n".join(f'{{"level": "info", "ok": True, "user": None, "msg": "caf\\u00e9 {i}"}}' for i in range(2000))
    text = "log:\n" + lines  # (lines alone, a text from '{' to '}', are first read as one JSON text: found clean whole)
    assert Redactor().redact_text(text) == text
    assert decoder.calls == redaction._EMBEDDED_FAILURES + 1
    assert Redactor().redact_text(lines) == lines


def test_a_quote_closing_a_string_just_before_escaped_json_does_not_hide_it() -> None:
    # '"a"[{' took the closing quote of "a" for a JSON string "[{" and went on after it, past the array (review r11)
    text = 'ids="a"[{"email": "m\\u00fcller@b\\u00fccher.de"}]'
    out = Redactor().redact_text(text)
    assert "\\u00fcller@" not in out and out.count("[REDACTED:email]") == 1, out
