"""A thread's later run as a ``traces:`` task: its conversation holds the earlier runs' turns, which the candidate is
given and makes again, so the expert's world makes their calls too (sweep B, finding 1: the oracle failed such a run
with a state mismatch, the earlier refund counted as a call the expert did not make; an earlier call of a tool the
sandbox lacks failed it as ``uncovered_call_extra``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.evals.clients import NoopClient, OracleClient
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.suites import SuiteSettings, load_suite
from ee_middleware.evals.traces.suite import earlier_runs_calls
from ee_middleware.replay import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call


@tool
def refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount} on {order_id}"


@tool
def page_oncall(message: str) -> str:
    """Page the on-call engineer."""
    return "paged"


def _world_refund(world: dict[str, Any], order_id: str, amount: float) -> str:
    world["refunds"].append([order_id, amount])
    return f"refunded {amount} on {order_id}"


def make_sandbox() -> PythonSandbox:
    """The refunds' world; ``page_oncall`` acts outside it and is no tool of it."""
    return PythonSandbox(lambda environment: {"refunds": []}, tools={"refund": _world_refund})


def _support(messages: list[Any], tools: Any) -> AIMessage:
    asked = [m for m in messages if m.type == "human"][-1].content
    if messages[-1].type == "tool":
        return AIMessage(content=f"Done: {messages[-1].content}.")
    for order, amount in (("A-1", 5.0), ("A-2", 7.0)):
        if order in asked:
            return AIMessage(content="", tool_calls=[tool_call("refund", order_id=order, amount=amount)])
    if "page" in asked:
        return AIMessage(content="", tool_calls=[tool_call("page_oncall", message="database down")])
    return AIMessage(content="The status is green.")


def test_a_thread_s_later_run_is_passed_by_the_expert_s_own_answers(tmp_path: Path) -> None:
    graph = create_agent(ScriptedChatModel(policy=_support), [refund, page_oncall], system_prompt="Support.", checkpointer=InMemorySaver())
    agent = record_experience(graph, app="support", store=tmp_path / "store", approve_if=lambda t: t.status == "completed")
    for thread, asks in (
        ("refunds", ["Refund order A-1 please", "Now refund order A-2 too"]),
        ("page", ["Please page on-call", "Status?"]),
    ):
        for asked in asks:
            agent.invoke({"messages": [("user", asked)]}, {"configurable": {"thread_id": thread}})
    assert agent.flush()
    agent.recorder.close()
    runs = {t.task: t for t in LocalExperienceStore(tmp_path / "store").iter_trajectories()}
    later = runs["Now refund order A-2 too"]
    assert [(c.name, c.arguments) for c in earlier_runs_calls(later)] == [("refund", {"order_id": "A-1", "amount": 5.0})]
    assert earlier_runs_calls(runs["Refund order A-1 please"]) == []
    (tmp_path / "heldout.txt").write_text("\n".join(runs[t].id for t in ("Now refund order A-2 too", "Status?")))
    store, data = str(tmp_path / "store"), str(tmp_path / "data")
    held_out = str(tmp_path / "heldout.txt")
    built = CliRunner().invoke(
        app, ["datasets", "build", "--store", store, "--out", data, "--kinds", "il", "--heldout-ids", held_out, "--no-progress"]
    )
    assert built.exit_code == 0, built.output
    settings = SuiteSettings(split=str(tmp_path / "data"), sandbox=f"{__name__}:make_sandbox")
    suite = load_suite(f"traces:{tmp_path / 'store'}:support", settings)
    tasks = {task.payload["final_answer"]: task for task in suite.tasks()}
    assert set(tasks) == {"Done: refunded 7.0 on A-2.", "The status is green."}, "the later runs held out"
    for task in tasks.values():
        result = suite.run(OracleClient(), task, 0, LoopConfig())
        assert result.success, (result.error_type, result.reason)
    assert not suite.run(NoopClient(), tasks["Done: refunded 7.0 on A-2."], 0, LoopConfig()).success
