"""The ``traces:`` suite's tasks from trajectories whose history a middleware rewrote mid-run. Real ``create_agent``
runs with LangChain's SummarizationMiddleware, recorded by record_experience into a real local store; a scripted chat
model stands in for a served one."""

from __future__ import annotations

from pathlib import Path

from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware
from langchain_core.messages import AIMessage

from ee_middleware import record_experience
from ee_middleware.evals.traces.suite import run_messages, trajectory_task
from ee_middleware.testing import ScriptedChatModel
from tests.capture.test_middleware_shapes import PLAN, TASK, planned_model, shop_tools
from tests.conftest import record_once

SUMMARY = "The user asked about pears: none in stock."


def _recorded(tmp_path: Path, summarized: bool) -> object:
    summarizer = ScriptedChatModel(script=[AIMessage(content=SUMMARY)], model_name="summarizer")
    middleware = [SummarizationMiddleware(summarizer, trigger=("messages", 4), keep=("messages", 2))] if summarized else []
    graph = create_agent(planned_model(), shop_tools({"pear": 0, "apple": 3}), middleware=middleware, system_prompt="You run a fruit shop.")
    store = tmp_path / "store"
    return record_once(record_experience(graph, app="shop", store=store), store, TASK)


def test_a_summarized_runs_task_is_its_users_request_not_the_summary(tmp_path: Path) -> None:
    """After SummarizationMiddleware, the last history the model saw (``trajectory.messages``) starts with the summary
    as a user message, and the user's request is gone. Before, the suite's task was that summary: the candidate was
    asked to go on from 'Here is a summary of the conversation to date' in a fresh world, graded against every call
    the expert made, the ones before the summary included."""
    trajectory = _recorded(tmp_path, summarized=True)
    assert "summary of the conversation" in trajectory.messages[1]["content"]  # what the suite was given
    task = trajectory_task(trajectory, "traces:store", "shop")
    assert task.turns == [[{"role": "user", "content": TASK["messages"][0][1]}]]
    assert task.system == "You run a fruit shop."
    replies = task.reference[0]
    assert [[c["function"]["name"] for c in m.get("tool_calls") or []] for m in replies] == [
        ["check_stock"],
        ["check_stock"],
        ["order_item"],
        [],
    ]
    assert replies[-1]["content"] == PLAN[-1].content
    assert [c["name"] for c in task.payload["expert_calls"]] == ["check_stock", "check_stock", "order_item"]
    tool_results = [m["content"] for m in run_messages(trajectory) if m["role"] == "tool"]
    assert tool_results == ["0", "3", "ordered 5 pear; now 5"]
    assert not any("summary" in str(m.get("content")) for m in run_messages(trajectory))


def test_a_run_whose_history_was_not_rewritten_keeps_its_messages(tmp_path: Path) -> None:
    trajectory = _recorded(tmp_path, summarized=False)
    assert run_messages(trajectory) == trajectory.messages
    task = trajectory_task(trajectory, "traces:store", "shop")
    assert task.turns == [[{"role": "user", "content": TASK["messages"][0][1]}]]
    assert len(task.reference[0]) == 4
