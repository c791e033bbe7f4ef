"""``ee traces export`` redacts the trajectories' tool schemas with the store's current rules, as it redacts their
messages and as ``ee traces show`` shows them (r9b finding 3a): runs recorded before capture redacted tool schemas, or
before a pattern was added, kept the value in their ``tools``, which both exports wrote as stored."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ee_middleware.capture.assembler import redact_tool_schemas
from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.recorder import Recorder
from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.export import export_jsonl, export_parquet
from tests.trainers.datasets.mail_world import ACCOUNT, ACCOUNT_RULE, record_mail_runs


def test_both_exports_redact_tool_schemas_with_the_stores_current_rules(store_path: Path, tmp_path: Path) -> None:
    store = record_mail_runs(store_path)
    Recorder(CaptureConfig(store=str(store_path), redaction_patterns=ACCOUNT_RULE)).close()  # another writer adds it
    [stored, _] = [t.tools for t in store.iter_trajectories()]
    assert ACCOUNT in json.dumps(stored), "recorded before the rule: stored as it was"
    shown = redact_tool_schemas(stored, store_redactor(store, create_salt=False))  # as `ee traces show` shows them

    assert export_jsonl(store, tmp_path / "out.jsonl") == 2
    examples = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [e["tools"] for e in examples] == [shown, shown]
    assert export_parquet(store, tmp_path / "out.parquet") == 2
    assert [json.loads(t) for t in pl.read_parquet(tmp_path / "out.parquet")["tools"]] == [shown, shown]

    for text in ((tmp_path / "out.jsonl").read_text(), json.dumps(pl.read_parquet(tmp_path / "out.parquet").to_dicts())):
        assert ACCOUNT not in text and "[REDACTED:account:" in text
