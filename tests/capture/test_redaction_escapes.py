"""JSON text whose ``\\uXXXX``, ``\\/`` or ``\\n`` escapes hide an address, a credential or a password (``json.dumps``'s
default ``ensure_ascii``, PHP's escaped slashes) is redacted: recorded through a real ``create_agent`` graph into a
real store whose every file is searched for it; clean JSON text with escapes is kept as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.tools import tool

from ee_middleware.capture.redaction import PLACEHOLDER, Redactor
from tests.capture.redaction_capture import assert_not_stored, record

ADDRESSES = ["иван@пример.рф", "müller@bücher.de"]


def test_json_text_whose_escapes_hide_an_address_or_a_credential_is_redacted(tmp_path: Path) -> None:
    @tool
    def get_profile(user_id: str) -> str:
        """Look a user up (json.dumps: non-ASCII written as \\uXXXX)."""
        return json.dumps({"user_id": user_id, "emails": ADDRESSES, "note": "password:\n  hunter2x"})

    @tool
    def get_config(name: str) -> str:
        """A PHP-style JSON answer, slashes escaped."""
        return '{"url": "postgres:\\/\\/admin:s3cr3tPW@db:5432\\/x"}'

    root = tmp_path / "store"
    store = record(root, [get_profile, get_config], [("get_profile", {"user_id": "u1"}), ("get_config", {"name": "db"})])
    assert_not_stored(store, root, [*ADDRESSES, "s3cr3tPW", "hunter2x"])
    [trajectory] = store.iter_trajectories()
    profile = json.loads(trajectory.steps[0].observation.content)
    assert profile["user_id"] == "u1" and all(PLACEHOLDER.fullmatch(e) for e in profile["emails"])
    assert json.loads(trajectory.steps[1].observation.content)["url"].startswith("postgres://[REDACTED:url_credentials:")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('{"e": "\\u0438\\u0432\\u0430\\u043d@\\u043f\\u0440\\u0438\\u043c\\u0435\\u0440.\\u0440\\u0444"}', "иван"),
        ('{"e": "m\\u00fcller@b\\u00fccher.de"}', "ller@b"),
        ('{"e": "\\ud83d\\ude00 zoe@\\u043f\\u0440\\u0438\\u043c\\u0435\\u0440.\\u0440\\u0444"}', "zoe"),
        ('{"url": "postgres:\\/\\/admin:s3cr3tPW@db:5432\\/x"}', "s3cr3tPW"),
        ('{"note": "my password is\\nhunter2x"}', "hunter2x"),
        ('{"note": "password:\\n  hunter2x"}', "hunter2x"),
        ('{"note": "Authorization: Bearer\\nabcdef123456789"}', "abcdef123456789"),
        ('{"note": "call (415)\\n555-0134"}', "555-0134"),
        ('{"note": "pwd\\t=\\thunter2x"}', "hunter2x"),
        ('{"p": "C:\\\\temp", "e": "m\\u00fcller@b\\u00fccher.de"}', "ller@b"),  # an escaped backslash before them
    ],
)
def test_escapes_in_json_text_hide_nothing(text: str, secret: str) -> None:
    redactor = Redactor()
    assert secret not in json.dumps(json.loads(redactor.redact_value(text)), ensure_ascii=False)
    # the same JSON text one string deeper (a tool result inside the state), as capture encodes it
    assert secret not in json.dumps(json.loads(json.loads(redactor.redact_json({"content": text}))["content"]), ensure_ascii=False)


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Zo\\u00eb M\\u00fcller", "city": "M\\u00fcnchen"}',
        '{"url": "https:\\/\\/track.example.com\\/p\\/12345", "note": "line one\\nline two"}',
        '{"path": "C:\\\\new\\\\table", "n": 12}',
    ],
)
def test_clean_json_text_with_escapes_is_kept_as_it_was(text: str) -> None:
    redactor = Redactor()
    assert redactor.redact_value(text) == text
    assert redactor.redact_json({"content": text}) == json.dumps({"content": text}, separators=(",", ":"))
