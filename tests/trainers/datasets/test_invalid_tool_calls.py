"""IL leaves out every entry of LangChain's ``invalid_tool_calls`` as the malformed call it is, whatever its arguments
parse to and whether or not it has a name, and counts it as replay lists it (sweep s16, findings 1 and 2).

``create_agent`` refused each of them ("... could not be executed"): the very next message the model saw said so. IL
taught the one whose arguments were a JSON object as a good call beside the valid one, and the nameless one as a call
of ``unknown_tool``, a tool never offered (``malformed_calls_left_out`` counted only the list arguments)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.capture.test_invalid_tool_calls import invalid
from tests.conftest import record_once
from tests.replay.test_invalid_tool_calls import with_arguments


@tool
def get_item(sku: str) -> str:
    """Read an item's stock."""
    return f"{sku}: stock 19"


@tool
def adjust_stock(sku: str, delta: int) -> str:
    """Change an item's stock."""
    return f"{sku}: stock now {19 + delta}"


def test_il_leaves_out_every_invalid_call_and_counts_it(tmp_path: Path) -> None:
    replies = [
        AIMessage(
            content="",
            tool_calls=[tool_call("get_item", sku="A1")],
            invalid_tool_calls=[
                invalid("adjust_stock", '{"sku": "A1", "delta": 1}', "v1"),
                invalid("get_item", '["A1"]', "v2"),
                invalid("adjust_stock", "null", "v3"),
                invalid(None, None, "v4"),
                invalid("get_item", "{", None),
            ],
        ),
        AIMessage(content="", tool_calls=[tool_call("get_item", sku="A1")]),
        AIMessage(content="A1 has 19."),
    ]
    store_path = tmp_path / "store"
    agent = record_experience(create_agent(ScriptedChatModel(script=replies), [get_item, adjust_stock]), app="shop", store=store_path)
    trajectory = record_once(agent, store_path, {"messages": [("user", "How many A1?")]})
    store = LocalExperienceStore(store_path)
    store.approve([trajectory.id], by="test")
    store.close()

    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "ds", kinds="il", heldout_share=0))
    assert summary["datasets"]["il"]["malformed_calls_left_out"] == 5
    rows = pl.read_parquet(tmp_path / "ds" / "il.parquet")
    targets = [json.loads(completion) for completion in rows["completion"]]
    first = [call["function"] for call in targets[0][0]["tool_calls"]]
    assert first == [{"name": "get_item", "arguments": '{"sku":"A1"}'}], "the turn as taught: only the call the graph ran"
    assert rows.height == 3  # the two reads and the answer
    names = {call["function"]["name"] for target in targets for call in target[0].get("tool_calls") or ()}
    assert names == {"get_item"}, names


def test_il_and_replay_count_the_same_calls_malformed(tmp_path: Path) -> None:
    """IL counted any call whose arguments' JSON began with {"_raw": malformed, replay only one whose _raw value was
    text: a list or null under _raw (an invalid call recorded before) was left out of IL and executed by replay, and a
    call with _raw beside other arguments the other way round. Both now read one rule
    (:func:`ee_middleware.replay.malformed.malformed_by_the_model`)."""
    from ee_middleware.replay.malformed import malformed_by_the_model

    store_path = tmp_path / "store"
    replies = [AIMessage(content="", tool_calls=[tool_call("get_item", sku="A1")] * 6), AIMessage(content="done")]
    agent = record_experience(create_agent(ScriptedChatModel(script=replies), [get_item, adjust_stock]), app="shop", store=store_path)
    trajectory = record_once(agent, store_path, {"messages": [("user", "How many A1?")]})
    shapes = [{"_raw": "{"}, {"_raw": ["A1"]}, {"_raw": None}, {"_raw": '{"sku":"A1"}'}, {"_raw": "x", "sku": "A1"}, {"sku": "A1"}]
    steps = [with_arguments(s, shapes[s.index]) if s.index < len(shapes) else s for s in trajectory.steps]
    edited = trajectory.model_copy(update={"steps": steps})
    replay_says = [malformed_by_the_model(edited.tools, s.action.tool_call.name, s.action.tool_call.arguments) for s in steps[:6]]
    assert replay_says == [True, True, True, True, False, False]
    other = tmp_path / "other"
    store = LocalExperienceStore(other)
    store.write([edited])
    store.approve([edited.id], by="test")
    store.close()
    summary = build_datasets(DatasetConfig.load(store=other, out=tmp_path / "ds", kinds="il", heldout_share=0))
    assert summary["datasets"]["il"]["malformed_calls_left_out"] == sum(replay_says)
    rows = pl.read_parquet(tmp_path / "ds" / "il.parquet")
    taught = [call["function"]["arguments"] for call in json.loads(rows["completion"][0])[0]["tool_calls"]]
    assert taught == ['{"_raw":"x","sku":"A1"}', '{"sku":"A1"}']


def test_il_reads_capture_s_mark_where_the_arguments_could_be_read_either_way(tmp_path: Path) -> None:
    """store_raw's schema declares ``_raw``, free's does not. IL taught the invalid store_raw call the graph refused
    (stored as {"_raw": text} alone, which reads as store_raw's own argument) and left out free(_raw="hi"), which
    production ran. Capture's mark (the steps' ``tool_call_malformed``) now decides, as it does for replay."""
    from langchain_core.tools import StructuredTool

    raw = {"type": "object", "properties": {"_raw": {"type": "string"}}, "required": ["_raw"]}
    anything = {"type": "object", "properties": {"note": {"type": "string"}}, "additionalProperties": True}
    tools = [
        StructuredTool.from_function(
            func=lambda **a: f"stored {a['_raw']}", name="store_raw", description="Store raw text.", args_schema=raw
        ),
        StructuredTool.from_function(
            func=lambda **a: f"free {sorted(a)}", name="free", description="Takes anything.", args_schema=anything
        ),
    ]
    replies = [
        AIMessage(
            content="",
            tool_calls=[
                {"name": "store_raw", "args": {"_raw": "hello"}, "id": "v0", "type": "tool_call"},
                {"name": "free", "args": {"_raw": "hi"}, "id": "v1", "type": "tool_call"},
            ],
            invalid_tool_calls=[invalid("store_raw", '{"_raw": 5', "i0")],
        ),
        AIMessage(content="done"),
    ]
    store_path = tmp_path / "store"
    agent = record_experience(create_agent(ScriptedChatModel(script=replies), tools), app="shop", store=store_path)
    trajectory = record_once(agent, store_path, {"messages": [("user", "store hello")]})
    store = LocalExperienceStore(store_path)
    store.approve([trajectory.id], by="test")
    store.close()
    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "ds", kinds="il", heldout_share=0))
    assert summary["datasets"]["il"]["malformed_calls_left_out"] == 1
    rows = pl.read_parquet(tmp_path / "ds" / "il.parquet")
    taught = [(c["function"]["name"], c["function"]["arguments"]) for c in json.loads(rows["completion"][0])[0]["tool_calls"]]
    assert taught == [("store_raw", '{"_raw":"hello"}'), ("free", '{"_raw":"hi"}')]
