"""A reasoning model's runs (Qwen3, DeepSeek-R1, gpt-oss on vLLM), in each shape LangChain hands them over, recorded by
``@record_experience`` from a real ``create_agent`` graph into a real store and built into datasets by the real build:
the trajectory keeps each reply's reasoning as ``reasoning_content`` (the shape vLLM's reasoning parsers return), never
in the text, and the rows' prompts carry it for the base's chat template to render as it does when serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.conftest import record_once

FIRST = "The user asks about pears; check the stock first."
SECOND = "Stock is 0, so there are none left."
ANSWER = "No pears left."


def _reply(shape: str, reasoning: str, text: str = "", calls: list[dict[str, Any]] | None = None) -> AIMessage:
    calls = calls or []
    if shape == "reasoning_content":  # vLLM --reasoning-parser, through ChatDeepSeek / Ollama / a ChatOpenAI subclass
        return AIMessage(content=text, additional_kwargs={"reasoning_content": reasoning}, tool_calls=calls)
    if shape == "blocks":  # LangChain's standard content blocks
        text_blocks = [{"type": "text", "text": text}] if text else []
        return AIMessage(content=[{"type": "reasoning", "reasoning": reasoning}, *text_blocks], tool_calls=calls)
    return AIMessage(content=f"<think>\n{reasoning}\n</think>\n\n{text}", tool_calls=calls)  # no reasoning parser: inline


SHAPES = ("reasoning_content", "blocks", "inline")


@tool
def check_stock(item: str) -> str:
    """How many of an item are in stock."""
    return "0"


def _record_one(script: list[Any], tools: list[Any], folder: Path, *, approve: bool = True) -> Trajectory:
    """One run of a create_agent on ``script`` and ``tools`` recorded into ``folder`` (tests.conftest.record_once),
    approved unless ``approve`` is false."""
    agent = record_experience(create_agent(ScriptedChatModel(script=script), tools), app="shop", store=folder)
    trajectory = record_once(agent, folder, {"messages": [("user", "Pears?")]})
    if approve:
        store = LocalExperienceStore(folder)
        store.approve([trajectory.id], by="alice")
        store.close()
    return trajectory


def _record(shape: str, folder: Path, turns: int = 1) -> list[Trajectory]:
    script = [_reply(shape, FIRST, calls=[tool_call("check_stock", item="pear")]), _reply(shape, SECOND, ANSWER)]
    graph = create_agent(ScriptedChatModel(script=script), [check_stock], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="shop", store=folder)
    config = {"configurable": {"thread_id": "t1"}}
    for request in ["Do we have pears?", "And now?"][:turns]:
        agent.invoke({"messages": [("user", request)]}, config)
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(folder)
    try:
        recorded = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
        store.approve([t.id for t in recorded], by="alice")
    finally:
        store.close()
    return recorded


def _without_ids(messages: list[dict[str, Any]]) -> str:
    text = json.dumps(messages)
    for message in messages:
        for call in message.get("tool_calls") or []:
            text = text.replace(call["id"], "ID")
        if message.get("tool_call_id"):
            text = text.replace(message["tool_call_id"], "ID")
    return text


@pytest.mark.parametrize("shape", SHAPES)
def test_each_reply_keeps_its_reasoning_apart_from_its_text(shape: str, tmp_path: Path) -> None:
    """Was: the reasoning was dropped (reasoning_content, blocks), or kept inline, so the final answer, the answer
    step's text and every later state held '<think>...</think>'. Each step's action carries the reasoning its reply
    began with (``Action.reasoning``, schema 1.4)."""
    [t] = _record(shape, tmp_path / "store")
    assert t.final_answer == ANSWER
    assert [(s.action.kind, s.action.content, s.action.reasoning) for s in t.steps] == [
        ("tool_call", None, FIRST),
        ("answer", ANSWER, SECOND),
    ]
    replies = [m for m in t.messages if m["role"] == "assistant"]
    assert [(m["content"], m.get("reasoning_content")) for m in replies] == [("", FIRST), (ANSWER, SECOND)]
    assert t.steps[1].state[1]["reasoning_content"] == FIRST  # the history the next decision was given
    assert "<think>" not in json.dumps([t.messages, [s.state for s in t.steps], t.final_answer])


def test_every_shape_records_the_same_trajectory(tmp_path: Path) -> None:
    recorded = {shape: _record(shape, tmp_path / shape)[0] for shape in SHAPES}
    assert len({_without_ids(t.messages) for t in recorded.values()}) == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_rows_carry_the_reasoning_for_the_chat_template(shape: str, tmp_path: Path) -> None:
    """IL and IWM prompts hold each earlier reply's ``reasoning_content``, as vLLM is given it back, and an IL target
    its own reply's; no row holds a ``<think>`` block in a message's text (the template writes those where it renders
    reasoning)."""
    _record(shape, tmp_path / "store")
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="il,iwm"))
    il = pl.read_parquet(tmp_path / "data" / "il.parquet").sort("step_index").to_dicts()
    iwm = pl.read_parquet(tmp_path / "data" / "iwm.parquet").to_dicts()
    prompt = json.loads(il[1]["prompt"])
    assert [(m["role"], m.get("reasoning_content")) for m in prompt] == [("user", None), ("assistant", FIRST), ("tool", None)]
    [call] = json.loads(il[0]["completion"])
    assert list(call) == ["role", "content", "reasoning_content", "tool_calls"]  # the key order of recorded states
    assert (call["content"], call["reasoning_content"], call["tool_calls"][0]["function"]["name"]) == ("", FIRST, "check_stock")
    assert json.loads(il[1]["completion"]) == [{"role": "assistant", "content": ANSWER, "reasoning_content": SECOND}]
    assert all("<think>" not in row["prompt"] + row["completion"] for row in il + iwm)


def test_qwen3s_template_renders_the_recorded_reasoning_as_it_does_when_serving(tmp_path: Path) -> None:
    """Qwen3's own template (tests/models/family_templates.py) shows the reasoning of the replies after the last user
    request inside <think> and drops that of earlier requests': an IL row's prompt of the first request's second
    decision shows the first decision's reasoning; one of the next request shows none."""
    pytest.importorskip("transformers")
    from ee_middleware.models.chat_template import probe_template, render_pair
    from ee_middleware.testing.tiny_models import build_test_tokenizer
    from tests.models.family_templates import QWEN_3

    _record("reasoning_content", tmp_path / "store", turns=2)
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet").to_dicts()
    tokenizer = build_test_tokenizer([QWEN_3, FIRST, SECOND], chat_template=QWEN_3)
    support = probe_template(tokenizer)
    rendered = {}
    for row in rows:
        prompt = json.loads(row["prompt"])
        prompt_text, _, fallback = render_pair(tokenizer, prompt, json.loads(row["completion"]), json.loads(row["tools"]), support)
        assert not fallback
        rendered[(sum(m["role"] == "user" for m in prompt), row["step_index"])] = prompt_text
    assert f"<|im_start|>assistant\n<think>\n{FIRST}\n</think>\n\n<tool_call>" in rendered[(1, 1)]
    second_request = rendered[(2, 0)]
    assert "<think>" not in second_request and FIRST not in second_request and f"<|im_start|>assistant\n{ANSWER}" in second_request


def test_reasoning_is_redacted_as_text_is(tmp_path: Path) -> None:
    """The store's redaction rules apply to the reasoning too (a model thinks about the user's e-mail address)."""
    script = [
        AIMessage(
            content="",
            additional_kwargs={"reasoning_content": "Mail alice@example.com?"},
            tool_calls=[tool_call("check_stock", item="pear")],
        ),
        AIMessage(content="<think>\nShe is alice@example.com.\n</think>\n\nNone left."),
    ]
    t = _record_one(script, [check_stock], tmp_path / "store", approve=False)
    reasoning = [m["reasoning_content"] for m in t.messages if m["role"] == "assistant"]
    assert all("[REDACTED:email:" in r and "alice@" not in r for r in reasoning), reasoning
    assert t.final_answer == "None left."


def test_qwen3s_template_renders_an_il_targets_own_reasoning_inside_think(tmp_path: Path) -> None:
    """The IL target is the step's whole reply: Qwen3's template writes its reasoning inside <think> before the call or
    the answer, as the model wrote it when serving. Was: the target carried none and rendered an empty
    <think></think>, teaching a reasoning model to skip reasoning."""
    pytest.importorskip("transformers")
    from ee_middleware.models.chat_template import probe_template, render_pair
    from ee_middleware.testing.tiny_models import build_test_tokenizer
    from tests.models.family_templates import QWEN_3

    _record("reasoning_content", tmp_path / "store")
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet").sort("step_index").to_dicts()
    tokenizer = build_test_tokenizer([QWEN_3, FIRST, SECOND], chat_template=QWEN_3)
    support = probe_template(tokenizer)
    targets = []
    for row in rows:
        _, completion, fallback = render_pair(
            tokenizer, json.loads(row["prompt"]), json.loads(row["completion"]), json.loads(row["tools"]), support
        )
        assert not fallback
        targets.append(completion)
    assert targets[0].startswith(f"<think>\n{FIRST}\n</think>\n\n<tool_call>"), targets[0]
    assert targets[1].startswith(f"<think>\n{SECOND}\n</think>\n\n{ANSWER}"), targets[1]
    assert all("<think>\n\n</think>" not in t for t in targets)


@tool
def check_price(item: str) -> str:
    """The price of an item."""
    return "2 EUR"


def test_parallel_calls_share_their_replys_reasoning_and_are_taught_it_once(tmp_path: Path) -> None:
    """A reply making two calls at once: both steps carry its reasoning, and the IL row of that turn (both calls, in
    order) gives it once."""
    calls = [tool_call("check_stock", item="pear"), tool_call("check_price", item="pear")]
    script = [_reply("reasoning_content", FIRST, calls=calls), _reply("reasoning_content", SECOND, ANSWER)]
    t = _record_one(script, [check_stock, check_price], tmp_path / "store")
    assert [(s.decision_index, s.action.reasoning) for s in t.steps] == [(0, FIRST), (0, FIRST), (1, SECOND)]
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="il"))
    turn, answer = pl.read_parquet(tmp_path / "data" / "il.parquet").sort("step_index")["completion"].to_list()
    [message] = json.loads(turn)
    assert message["reasoning_content"] == FIRST
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["check_stock", "check_price"]
    assert json.loads(answer)[0]["reasoning_content"] == SECOND


def test_a_model_without_reasoning_gives_targets_without_the_key(tmp_path: Path) -> None:
    """Only a reply with reasoning gives its target ``reasoning_content``: a run of a model that writes none (and
    a reasoning model's reply without any) builds the rows it built before (no null key)."""
    script = [AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]), _reply("reasoning_content", SECOND, ANSWER)]
    t = _record_one(script, [check_stock], tmp_path / "store")
    assert [s.action.reasoning for s in t.steps] == [None, SECOND]
    assert "reasoning" not in t.steps[0].action.model_dump()  # left out of dumps while None, as before schema 1.4
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="il"))
    call, answer = pl.read_parquet(tmp_path / "data" / "il.parquet").sort("step_index")["completion"].to_list()
    assert "reasoning_content" not in call and json.loads(answer)[0]["reasoning_content"] == SECOND
