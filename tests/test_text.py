"""Text files a user gives: JSON Lines split where their writers end lines, encodings read or refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware._text import json_lines, read_user_text
from ee_middleware.errors import ConfigError

SEPARATORS = ["\u2028", "\u2029", "\x85"]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_a_line_separator_inside_a_json_string_does_not_end_the_line(separator: str) -> None:
    """``json.dumps(ensure_ascii=False)`` leaves U+2028, U+2029 and U+0085 unescaped; ``str.splitlines`` ends a line at
    each (was: a tasks file holding one could not be read back: "Unterminated string")."""
    rows = [{"instruction": f"first{separator}second"}, {"instruction": "plain"}]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    assert len(text.splitlines()) == 3, "the separator is there, unescaped"
    assert [(number, json.loads(line)) for number, line in json_lines(text)] == [(1, rows[0]), (2, rows[1])]


def test_blank_lines_are_passed_over_numbered_and_a_crlf_line_end_is_one_end() -> None:
    assert list(json_lines('{"a": 1}\r\n\n  \n{"b": 2}')) == [(1, '{"a": 1}'), (4, '{"b": 2}')]


def test_utf16_with_a_byte_order_mark_is_read_and_other_bytes_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_bytes('{"id": "café"}\n'.encode("utf-16"))  # PowerShell 5's `> file`
    assert read_user_text(path, "The tasks file", "the tasks.jsonl", "Tasks files are UTF-8.") == '{"id": "café"}\n'
    path.write_bytes('{"id": "café"}\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"The tasks file .*tasks.jsonl is not UTF-8 text \(byte 0xe9 at offset 11 is not\): Tasks files"):
        read_user_text(path, "The tasks file", "the tasks.jsonl", "Tasks files are UTF-8.")
    with pytest.raises(ConfigError, match=r"is a folder: give the path of the tasks.jsonl"):
        read_user_text(tmp_path, "The tasks file", "the tasks.jsonl", "Tasks files are UTF-8.")
