"""`ee datasets export`'s OpenAI chat JSONL is valid for OpenAI-style fine-tuning, for every kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets, chat_examples, read_dataset


def _problems(messages: list[dict[str, Any]]) -> list[str]:
    """Where ``messages`` break OpenAI's chat format: an assistant message's tool calls (but the last message's, the
    target) each answered by one tool message of its id before any other role; no tool message without its call."""
    problems, waiting = [], set[str]()
    for n, message in enumerate(messages):
        role = message["role"]
        if role == "tool":
            if message.get("tool_call_id") not in waiting:
                problems.append(f"tool message {n} answers no call waiting for it")
            waiting.discard(message.get("tool_call_id"))
            continue
        if waiting:
            problems.append(f"{role} at {n} while calls {sorted(waiting)} are unanswered")
            waiting = set()
        if role == "assistant" and message.get("tool_calls") and n < len(messages) - 1:
            waiting = {c["id"] for c in message["tool_calls"]}
    return problems


@pytest.mark.parametrize("kind", ["il", "iwm"])
def test_every_exported_example_answers_each_call_it_shows(bfcl_store_path: Path, tmp_path: Path, kind: str) -> None:
    """Before, every IWM example showed its proposed call as an assistant tool call followed by the instruction to
    predict its result, a call nothing answers: OpenAI's fine-tuning refuses such a conversation (found by a reviewer).
    The call is now said in the assistant message's text."""
    out = tmp_path / "ds"
    build_datasets(DatasetConfig.load(store=bfcl_store_path, out=out, kinds=kind))
    examples = chat_examples(read_dataset(out / f"{kind}.parquet"))
    assert examples
    assert [(n, p) for n, e in enumerate(examples) for p in _problems(e["messages"])] == []
    if kind == "iwm":
        for example in examples:
            asked = example["messages"][-3]
            assert asked["role"] == "assistant" and asked["content"].splitlines()[-1].startswith("Calling ")
            assert "tool_calls" not in asked and json.loads(asked["content"].split("(", 1)[1].rsplit(")", 1)[0]) is not None


def test_calls_a_later_message_leaves_unanswered_are_said_in_text_and_answered_ones_kept() -> None:
    """Review R12: parallel calls one of which is answered kept the other unanswered; list content crashed."""
    from ee_middleware.trainers.datasets.build import _calls_answered

    def call(i: str) -> dict[str, Any]:
        return {"id": i, "type": "function", "function": {"name": "look", "arguments": json.dumps({"q": i})}}

    messages = [
        {"role": "user", "content": "look a and b"},
        {"role": "assistant", "content": [{"type": "text", "text": "Both."}], "tool_calls": [call("a"), call("b")]},
        {"role": "tool", "tool_call_id": "a", "content": "found a"},
        {"role": "user", "content": "Predict what look(b) returns."},
        {"role": "assistant", "content": "", "tool_calls": [call("c")]},  # the last message: the target, left as it is
    ]
    fixed = _calls_answered(messages)
    assert fixed[1] == {"role": "assistant", "content": 'Both.\nCalling look({"q": "b"})', "tool_calls": [call("a")]}
    assert fixed[4] == messages[4] and _problems(fixed) == []
