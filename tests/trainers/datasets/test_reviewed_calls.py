"""A tool call a human reviewed (LangChain's ``HumanInTheLoopMiddleware``) is taught as the human decided it: a rejected
call never, an edited call as the reviewer's call, an approved call once. Real ``create_agent`` graphs paused and resumed
on a real checkpointer, recorded with the real OTel SDK (in thread mode and with capture in a child process) into a real
local store, every trajectory approved, datasets built by ``ee datasets build``'s own code (Parquet)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from ee_middleware import record_experience
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.il import build_il
from ee_middleware.trainers.datasets.source import load_source
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_child_left")

DECISIONS = {
    "approve": {"type": "approve"},
    "edit": {"type": "edit", "edited_action": {"name": "order_item", "args": {"item": "pear", "quantity": 5}}},
    "reject": {"type": "reject", "message": "500 pears is far too many"},
}


def _calls(completion: str) -> list[tuple[str, dict[str, Any]]]:
    [message] = json.loads(completion)
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or ()]


def _record_reviewed_run(store_path: Path, decision: str, *, offload: str = "thread", mode: str = "batched") -> list[Any]:
    """The model checks the stock, then orders 500 pears; a reviewer decides on the order; the resumed run answers.
    Every trajectory is approved (as ``ee traces approve`` would); returns the orders the tools placed."""
    placed: list[tuple[str, int]] = []

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        return "0"

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        placed.append((item, quantity))
        return f"ordered {quantity} {item}"

    model = ScriptedChatModel(
        script=[
            AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]),
            AIMessage(content="", tool_calls=[tool_call("order_item", item="pear", quantity=500)]),
            AIMessage(content="Done."),
        ]
    )
    graph = create_agent(
        model,
        [check_stock, order_item],
        system_prompt="You run a fruit shop.",
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"order_item": True}, interrupt_mode=mode)],
        checkpointer=InMemorySaver(),
    )
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    config = {"configurable": {"thread_id": f"review-{decision}"}}
    paused = agent.invoke({"messages": [("user", "Do we have pears? If not, order some.")]}, config)
    [pause] = paused["__interrupt__"]
    answer = DECISIONS[decision]
    agent.invoke(Command(resume={"decisions": [answer]} if mode == "batched" else {pause.id: answer}), config)
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    try:
        store.approve(store.trajectories()["id"].to_list(), by="alice", reason="looks right")
    finally:
        store.close()
    return placed


def _taught_orders(store_path: Path, out: Path) -> list[dict[str, Any]]:
    """The ``order_item`` calls IL teaches, from ``ee datasets build``'s il.parquet (checked against the builder's
    one-pass API: the same rows)."""
    build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il"))
    built = pl.read_parquet(out / "il.parquet")
    store = LocalExperienceStore(store_path)
    try:
        direct = build_il(load_source(store))
    finally:
        store.close()
    assert built["completion"].to_list() == direct["completion"].to_list()
    return [args for completion in built["completion"] for name, args in _calls(completion) if name == "order_item"]


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("decision", ["approve", "edit", "reject"])
def test_il_teaches_a_reviewed_call_as_the_reviewer_decided_it(tmp_path: Path, decision: str, offload: str) -> None:
    """Was: the paused trajectory ended on the model's proposed call and IL taught it whatever the reviewer decided: the
    call the reviewer rejected, and for an edit the model's call instead of the reviewer's."""
    placed = _record_reviewed_run(tmp_path / "store", decision, offload=offload)
    taught = _taught_orders(tmp_path / "store", tmp_path / "out")
    expected = {"approve": [{"item": "pear", "quantity": 500}], "edit": [{"item": "pear", "quantity": 5}], "reject": []}[decision]
    assert taught == expected
    assert placed == [(a["item"], a["quantity"]) for a in expected]  # what IL teaches is what ran


@pytest.mark.parametrize("decision", ["approve", "edit", "reject"])
def test_per_call_reviews_are_taught_as_decided(tmp_path: Path, decision: str) -> None:
    """``interrupt_mode="per_call"`` pauses inside the tool node instead of after the model: the same outcome."""
    _record_reviewed_run(tmp_path / "store", decision, mode="per_call")
    taught = _taught_orders(tmp_path / "store", tmp_path / "out")
    assert taught == {"approve": [{"item": "pear", "quantity": 500}], "edit": [{"item": "pear", "quantity": 5}], "reject": []}[decision]
