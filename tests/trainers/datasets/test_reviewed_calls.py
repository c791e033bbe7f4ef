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
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.sandboxes.python import PythonSandbox
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


def make_sandbox(**options: Any) -> PythonSandbox:
    """The shop's tools as a replay sandbox (importable by name for the replay job)."""

    def check_stock(world: dict[str, Any], item: str) -> str:
        return str(world["stock"].get(item, 0))

    def order_item(world: dict[str, Any], item: str, quantity: int) -> str:
        world["stock"][item] = world["stock"].get(item, 0) + quantity
        return f"ordered {quantity} {item}"

    return PythonSandbox(lambda environment: {"stock": {}}, tools={"check_stock": check_stock, "order_item": order_item}, kind="shop")


def _record_reviewed_run(
    store_path: Path,
    decision: str,
    *,
    offload: str = "thread",
    mode: str = "batched",
    parallel: bool = False,
    request: str = "Do we have pears? If not, order some.",
) -> list[Any]:
    """The model checks the stock, then orders 500 pears (with ``parallel``, both in one response); a reviewer decides
    on the order; the resumed run answers. Every trajectory is approved (as ``ee traces approve`` would); returns the
    orders the tools placed. ``request``: the user's (another one makes a run of another task, for a held-out split)."""
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

    check, order = tool_call("check_stock", item="pear"), tool_call("order_item", item="pear", quantity=500)
    turns = [[check, order]] if parallel else [[check], [order]]
    model = ScriptedChatModel(script=[*(AIMessage(content="", tool_calls=calls) for calls in turns), AIMessage(content="Done.")])
    graph = create_agent(
        model,
        [check_stock, order_item],
        system_prompt="You run a fruit shop.",
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"order_item": True}, interrupt_mode=mode)],
        checkpointer=InMemorySaver(),
    )
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    config = {"configurable": {"thread_id": f"review-{decision}"}}
    paused = agent.invoke({"messages": [("user", request)]}, config)
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
    one-pass API: the same rows); the build counts the paused turn it leaves out."""
    summary = build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il"))
    assert summary["datasets"]["il"]["calls_awaiting_review_left_out"] == 1
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


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_parallel_calls_of_a_reviewed_turn_are_taught_once_as_one_turn(tmp_path: Path, decision: str) -> None:
    """Per-call reviews of a turn of parallel calls: the ungated call runs before the pause, the gated one after. The
    paused trajectory's turn (one call observed, one awaiting review) teaches nothing; the resumed one teaches the whole
    turn once when the reviewer approved, and nothing when they rejected (the calls' other half alone was never a turn
    the model made)."""
    _record_reviewed_run(tmp_path / "store", decision, mode="per_call", parallel=True)
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "out", kinds="il"))
    turns = [_calls(c) for c in pl.read_parquet(tmp_path / "out" / "il.parquet")["completion"] if _calls(c)]
    both = [("check_stock", {"item": "pear"}), ("order_item", {"item": "pear", "quantity": 500})]
    assert turns == ([both] if decision == "approve" else [])


def test_sr_never_teaches_a_rejected_call(tmp_path: Path) -> None:
    """SR's target is a rationale followed by the expert's action: replay branched the paused state too, and SR taught
    the rejected call there as the better action (was)."""
    store = tmp_path / "store"
    _record_reviewed_run(store, "reject")
    sandbox = "tests.trainers.datasets.test_reviewed_calls:make_sandbox"
    assert run_replay(ReplayConfig.load(store=store, k=3, sandbox=sandbox)).branches > 0
    summary = build_datasets(DatasetConfig.load(store=store, out=tmp_path / "out", kinds="sr", teacher="template"))
    targets = [_calls(c) for c in pl.read_parquet(tmp_path / "out" / "sr.parquet")["completion"]]
    assert summary["datasets"]["sr"]["rows"] >= 1 and [("check_stock", {"item": "pear"})] in targets
    assert not [calls for calls in targets if any(name == "order_item" for name, _ in calls)]
