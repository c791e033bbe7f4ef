"""Dataset rows' tool schemas go through the store's rules as their prompts do, and a placeholder the row's tools show
counts as seen (r9b findings 3a, 3b). The store is a real agent's (:mod:`tests.trainers.datasets.mail_world`), built by
the real dataset build."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.recorder import Recorder
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets, export_chat_jsonl
from ee_middleware.trainers.datasets.privacy import dataset_redactor, guard_rows
from ee_middleware.trainers.datasets.rows import DATASET_SCHEMA, conform
from tests.trainers.datasets.mail_world import ACCOUNT, ACCOUNT_RULE, SENDERS, record_mail_runs


def _call_rows(frame: pl.DataFrame) -> list[dict]:
    return [row for row in frame.to_dicts() if "tool_calls" in row["completion"]]


def test_dataset_rows_tools_go_through_the_stores_current_rules(store_path: Path, tmp_path: Path) -> None:
    """Runs recorded before a pattern was added (or before capture redacted tool schemas) keep the value in their
    ``tools``; before, every IL and IWM row's tools carried it while their prompts were redacted."""
    record_mail_runs(store_path)
    Recorder(CaptureConfig(store=str(store_path), redaction_patterns=ACCOUNT_RULE)).close()  # another writer adds it
    build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "data", kinds="il,iwm"))
    for kind in ("il", "iwm"):
        tools = pl.read_parquet(tmp_path / "data" / f"{kind}.parquet")["tools"].to_list()
        assert tools and all(ACCOUNT not in t and "[REDACTED:account:" in t for t in tools), (kind, tools[0])
        assert all(json.loads(t)[0]["function"]["name"] == "send_mail" for t in tools), "names and structure kept"


def test_il_teaches_a_call_whose_argument_is_an_enum_value_of_its_tools(store_path: Path, tmp_path: Path) -> None:
    """The expert sends from an address the tool's enum offers (a pseudonym in the stored schema, the same pseudonym in
    the call); the conversation never writes it. The model is served those schemas, so the value is one it was shown:
    before, every such call was dropped as 'placeholder not in prompt'."""
    record_mail_runs(store_path)
    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "data", kinds="il"))
    placeholders = summary["datasets"]["il"]["placeholders"]
    assert "dropped_placeholder_not_in_prompt" not in placeholders, placeholders
    calls = _call_rows(pl.read_parquet(tmp_path / "data" / "il.parquet"))
    assert len(calls) == 2
    for row in calls:
        arguments = json.loads(json.loads(row["completion"])[0]["tool_calls"][0]["function"]["arguments"])
        assert arguments["sender"].startswith("[REDACTED:email:") and arguments["sender"] in row["tools"]
        assert arguments["sender"] not in row["prompt"] and SENDERS[1] not in row["tools"] + row["prompt"]


def test_an_iwm_target_keeps_a_pseudonym_its_tools_show() -> None:
    """IWM rewrites pseudonyms the row does not show to plain placeholders; one its tools show stays (as one its prompt
    shows does)."""
    from ee_middleware.capture.redaction import Redactor

    redactor = Redactor(salt=b"store-salt")
    billing, other = redactor.redact_text(SENDERS[1]), redactor.redact_text("x.y@example.com")
    tools = [{"type": "function", "function": {"name": "send_mail", "parameters": {"properties": {"sender": {"enum": [billing]}}}}}]
    row = {
        "id": "r1",
        "kind": "iwm",
        "prompt": json.dumps([{"role": "user", "content": "send it"}]),
        "completion": json.dumps([{"role": "tool", "content": f"sent from {billing} to {other}"}]),
        "tools": json.dumps(tools),
    }
    frame = conform(pl.DataFrame([row], schema={k: DATASET_SCHEMA[k] for k in row}))
    guarded, counts = guard_rows("iwm", frame, redactor)
    assert json.loads(guarded["completion"][0])[0]["content"] == f"sent from {billing} to [REDACTED:email]"
    assert counts == {"rows_with_unseen_pseudonyms_rewritten": 1}


def test_a_dataset_files_chat_export_redacts_its_tools(tmp_path: Path) -> None:
    """A dataset file built before rows' tools were redacted: its chat export redacts them with the file's rules, as it
    redacts the messages."""
    tools = [{"type": "function", "function": {"name": "send_mail", "description": f"Runs as {SENDERS[0]}", "parameters": {}}}]
    row = {
        "id": "r1",
        "kind": "il",
        "prompt": json.dumps([{"role": "user", "content": "hi"}]),
        "completion": json.dumps([{"role": "assistant", "content": "ok"}]),
        "tools": json.dumps(tools),
    }
    frame = conform(pl.DataFrame([row], schema={k: DATASET_SCHEMA[k] for k in row}))
    path = tmp_path / "il.parquet"
    frame.write_parquet(path)
    export_chat_jsonl(frame, tmp_path / "il.jsonl", redactor=dataset_redactor(path))
    [example] = [json.loads(line) for line in (tmp_path / "il.jsonl").read_text().splitlines()]
    assert example["tools"][0]["function"]["description"] == "Runs as [REDACTED:email]"
