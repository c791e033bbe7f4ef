"""IWM rows at parallel tool calls show the calls of the turn the world had already run.

Replay runs a turn's calls one after another and branches each in its place, so an alternative at the
second call acts on the world after the first. Its IWM row must show that first call and its result, or
the world model learns an outcome the prompt gives no reason for. A real create_agent run recorded into a
real store, replayed by the replay job with a PythonSandbox, built by ee datasets build's code."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import polars as pl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets


def _order(world: dict[str, Any], item: str, quantity: int) -> str:
    world["stock"][item] = world["stock"].get(item, 0) + quantity
    return f"ordered {quantity} {item}; now {world['stock'][item]}"


def make_sandbox() -> PythonSandbox:
    """The shop's tools on a copy of the recorded stock."""
    return PythonSandbox(
        lambda env: {"stock": dict(env["stock"])},
        tools={"order_item": _order, "check_stock": lambda world, item: str(world["stock"].get(item, 0))},
    )


def _record(store: Path, text: str = "") -> None:
    stock = {"pear": 0}
    ordered = threading.Event()

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        stock[item] = stock.get(item, 0) + quantity
        ordered.set()
        return f"ordered {quantity} {item}; now {stock[item]}"

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        # LangGraph's ToolNode runs a turn's calls on threads at once: without this the check could run first and record
        # '0', which replay (the calls one after another, in order) would not reproduce (a fidelity mismatch, seen in CI)
        ordered.wait(timeout=30)
        return str(stock.get(item, 0))

    script = [
        AIMessage(content=text, tool_calls=[tool_call("order_item", item="pear", quantity=2), tool_call("check_stock", item="pear")]),
        AIMessage(content="Ordered 2 pears; 2 in stock."),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [order_item, check_stock])
    agent = record_experience(graph, app="shop", store=store, environment=lambda inputs, config: {"stock": {"pear": 0}})
    agent.invoke({"messages": [("user", "Order 2 pears and tell me the pear stock.")]})
    agent.flush()
    agent.recorder.close()


def test_iwm_rows_at_the_second_of_two_parallel_calls_show_the_first_call_and_its_result(tmp_path: Path) -> None:
    """Before, the row of the expert's check_stock(pear) said '2' after a prompt with no order in it, and an
    alternative order_item(pear, 3) there said 'now 5' (the expert's 2 already ordered) after the same prompt."""
    _record(tmp_path / "store")
    store = LocalExperienceStore(tmp_path / "store")
    store.approve(store.trajectories()["id"].to_list(), by="test")
    store.close()
    summary = run_replay(ReplayConfig.load(store=tmp_path / "store", k=4, sandbox=f"{__name__}:make_sandbox"))
    assert summary.done == 1 and summary.fidelity_mismatches == 0
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="iwm"))
    rows = pl.read_parquet(tmp_path / "data" / "iwm.parquet")
    assert set(rows["step_index"].to_list()) == {0, 1}
    for row in rows.iter_rows(named=True):
        prompt = json.loads(row["prompt"])
        calls = [c["function"] for m in prompt if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        results = [m["content"] for m in prompt if m["role"] == "tool"]
        action = calls[-1]
        if row["step_index"] == 0:  # the first call: the world as recorded before the turn
            assert len(calls) == 1 and not results
            continue
        assert calls[0] == {"name": "order_item", "arguments": json.dumps({"item": "pear", "quantity": 2}, separators=(",", ":"))}
        assert results == ["ordered 2 pear; now 2"], prompt
        assert prompt[-1]["role"] == "user" and prompt[-2]["tool_calls"][0]["function"] == action
        if row["proposer"] == "expert":
            assert action["name"] == "check_stock" and json.loads(row["completion"])[0]["content"] == "2"


def test_the_first_calls_of_a_turn_shown_in_an_iwm_prompt_keep_the_text_the_model_wrote_beside_them(tmp_path: Path) -> None:
    """The assistant message rebuilt for the calls a turn had run had empty content where the model wrote "Let me order
    and check." beside its calls (a sweep of unusual data: 20 parallel calls): the IWM prompt was not what the model saw."""
    _record(tmp_path / "store", text="Let me order and check.")
    store = LocalExperienceStore(tmp_path / "store")
    store.approve(store.trajectories()["id"].to_list(), by="test")
    store.close()
    assert run_replay(ReplayConfig.load(store=tmp_path / "store", k=2, sandbox=f"{__name__}:make_sandbox")).fidelity_mismatches == 0
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="iwm"))
    rows = pl.read_parquet(tmp_path / "data" / "iwm.parquet").filter(pl.col("step_index") == 1)
    assert rows.height
    for prompt in rows["prompt"]:
        turn = next(  # the calls the turn had run before this one (an alternative order_item comes after it)
            m
            for m in json.loads(prompt)
            if m["role"] == "assistant" and any(c["function"]["name"] == "order_item" for c in m.get("tool_calls") or ())
        )
        assert turn["content"] == "Let me order and check.", turn
