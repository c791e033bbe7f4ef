"""Export to fine-tuning formats on a user's own messages: what was stored is what comes out."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.errors import OutputError
from ee_middleware.export import export_jsonl, export_parquet
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory


def _own_messages(store_path: Path) -> LocalExperienceStore:
    """A trajectory whose messages come from a user's own agent rather than from capture: an assistant
    message with ``content: null`` (as OpenAI sends it next to tool calls), multimodal user content, and
    tool-call arguments given as a JSON object (as Ollama's native API and hand-built records give them)."""
    t = sample_trajectory("own")
    messages = [dict(m) for m in t.messages]
    messages[1]["content"] = None
    messages[1]["tool_calls"] = [
        {"id": "c0", "type": "function", "function": {"name": "shop.check-stock", "arguments": {"item": {"name": "pêche", "n": [1, 2]}}}}
    ]
    messages.insert(1, {"role": "user", "content": [{"type": "text", "text": "voilà 日本"}]})
    store = LocalExperienceStore(store_path)
    store.write([t.model_copy(update={"messages": messages})])
    store.approve(["own"], by="alice")
    return store


def test_parquet_export_keeps_null_content_and_object_arguments(store_path: Path, tmp_path: Path):
    store = _own_messages(store_path)
    assert export_parquet(store, tmp_path / "out.parquet") == 1
    messages = pl.read_parquet(tmp_path / "out.parquet")["messages"][0].to_list()
    assert messages[0]["content"] == "task own ✓ 日本"
    assert json.loads(messages[1]["content"]) == [{"type": "text", "text": "voilà 日本"}]
    assert "voilà 日本" in messages[1]["content"], "non-ASCII text stays readable"
    assert messages[2]["content"] is None, "a null content is null, not the string 'null'"
    arguments = messages[2]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"item": {"name": "pêche", "n": [1, 2]}}


def test_jsonl_export_writes_tool_call_arguments_as_json_text(store_path: Path, tmp_path: Path):
    store = _own_messages(store_path)
    assert export_jsonl(store, tmp_path / "out.jsonl") == 1
    (line,) = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    messages = json.loads(line)["messages"]
    assert messages[2]["content"] is None
    call = messages[2]["tool_calls"][0]["function"]
    assert isinstance(call["arguments"], str), "OpenAI's fine-tuning format takes arguments as a JSON string"
    assert json.loads(call["arguments"]) == {"item": {"name": "pêche", "n": [1, 2]}}
    assert messages[3]["tool_call_id"] == "call-0" and messages[1]["content"] == [{"type": "text", "text": "voilà 日本"}]


def test_an_output_path_inside_a_file_says_so(store_path: Path, tmp_path: Path):
    store = _own_messages(store_path)
    (tmp_path / "notes").write_text("mine")
    for export, out in ((export_jsonl, tmp_path / "notes" / "train.jsonl"), (export_parquet, tmp_path / "notes" / "sub" / "train.parquet")):
        with pytest.raises(OutputError, match=r"notes is a file, not a folder"):
            export(store, out)
    assert (tmp_path / "notes").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["experience", "notes"]
