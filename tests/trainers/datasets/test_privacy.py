"""Dataset rows go through the store's redaction, and never train on a placeholder as if it were a value."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ee_middleware.capture.redaction import RedactionRules, Redactor
from ee_middleware.trainers.datasets.build import export_chat_jsonl
from ee_middleware.trainers.datasets.privacy import dataset_redactor, guard_rows, redaction_metadata
from ee_middleware.trainers.datasets.rows import DATASET_SCHEMA, conform

REDACTOR = Redactor(salt=b"store-salt")
ANN = REDACTOR.redact_text("ann@example.com")
BOB = REDACTOR.redact_text("bob@example.com")


def _row(prompt: str, completion: dict) -> dict:
    return {
        "id": prompt[:8],
        "kind": "il",
        "prompt": json.dumps([{"role": "user", "content": prompt}]),
        "completion": json.dumps([completion]),
        "tools": "[]",
    }


def _call(**arguments: str) -> dict:
    call = {"id": "c", "type": "function", "function": {"name": "find_user", "arguments": json.dumps(arguments)}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def _frame(*rows: dict) -> pl.DataFrame:
    return conform(pl.DataFrame(list(rows), schema={k: DATASET_SCHEMA[k] for k in rows[0]}))


def test_il_keeps_a_pseudonym_the_prompt_shows_and_drops_one_it_does_not() -> None:
    frame = _frame(
        _row(f"I'm {ANN}", _call(email=ANN)),  # copies what the user said: kept
        _row("find bob", _call(email=BOB)),  # a pseudonym out of nothing: dropped
        _row("find someone", _call(email="[REDACTED:email]")),  # a plain placeholder names no value: dropped
        _row("I'm bob@example.com", _call(email="bob@example.com")),  # plain values: redacted alike, then kept
        _row("hello", {"role": "assistant", "content": "Hi!"}),
    )
    kept, counts = guard_rows("il", frame, REDACTOR)
    assert counts == {"rows_with_placeholders_seen_in_prompt": 2, "dropped_placeholder_not_in_prompt": 2}
    assert kept["id"].to_list() == [f"I'm {ANN}"[:8], "I'm bob@example.com"[:8], "hello"]
    assert "bob@example.com" not in kept.write_ndjson() and BOB in kept.write_ndjson()


def test_iwm_rewrites_pseudonyms_the_prompt_does_not_show() -> None:
    observation = {"role": "assistant", "content": json.dumps({"email": BOB, "friend": ANN})}
    frame = _frame(_row(f"profile of the user I know as {ANN}", observation))
    rewritten, counts = guard_rows("iwm", frame, REDACTOR)
    completion = json.loads(rewritten["completion"][0])[0]["content"]
    assert json.loads(completion) == {"email": "[REDACTED:email]", "friend": ANN}
    assert counts == {"rows_with_unseen_pseudonyms_rewritten": 1}


def test_a_dataset_file_keeps_its_rules_for_its_exports(tmp_path: Path) -> None:
    plain = Redactor(RedactionRules(defaults=False))
    frame = _frame(_row("my card is 4111 1111 1111 1111", {"role": "assistant", "content": "ok"}))
    path = tmp_path / "il.parquet"
    frame.write_parquet(path, metadata=redaction_metadata(plain))
    assert not dataset_redactor(path).enabled, "built without redaction (benchmark data): exported as it is"
    export_chat_jsonl(frame, tmp_path / "out" / "il.jsonl", redactor=dataset_redactor(path))
    assert "4111 1111 1111 1111" in (tmp_path / "out" / "il.jsonl").read_text()
    frame.write_parquet(path)  # a file without the metadata: the default kinds
    export_chat_jsonl(frame, tmp_path / "il2.jsonl", redactor=dataset_redactor(path))
    assert "4111" not in (tmp_path / "il2.jsonl").read_text() and "[REDACTED:credit_card]" in (tmp_path / "il2.jsonl").read_text()


def test_a_value_shown_under_another_kind_is_kept_and_written_as_the_prompt_shows_it() -> None:
    """One value is one tag whichever rule named its kind: "my password is X" in prose (``password``) and
    ``{"password": X}`` as a key's value (``secret``). Before, the row teaching the login call was dropped as a
    placeholder out of nothing, and an exported target renamed the value's kind (found by a reviewer)."""
    user = REDACTOR.redact_text("Log me in as bob, my password is Sup3rS3cret!x")
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "login", "arguments": REDACTOR.redact_json({"user": "bob", "password": "Sup3rS3cret!x"})},
    }
    [shown] = [p for p in user.split() if p.startswith("[REDACTED:")]
    assert shown.startswith("[REDACTED:password:") and shown not in call["function"]["arguments"], "the two rules name two kinds"
    row = {
        "id": "login",
        "kind": "il",
        "prompt": json.dumps([{"role": "user", "content": user}]),
        "completion": json.dumps([{"role": "assistant", "content": "", "tool_calls": [call]}]),
        "tools": "[]",
    }
    kept, counts = guard_rows("il", _frame(row), REDACTOR)
    assert kept["id"].to_list() == ["login"]
    arguments = json.loads(json.loads(kept["completion"][0])[0]["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"user": "bob", "password": shown}
    assert counts == {"placeholders_written_as_the_prompt_shows": 1, "rows_with_placeholders_seen_in_prompt": 1}
