"""A graph's ``messages`` channel in the shapes LangGraph allows besides a list of messages: one message (a channel
without a reducer keeps the last one; ``add_messages`` takes one and makes it a list), a value that is no conversation
(a counter, notices beside the conversation under another key). Capture reads the conversation they hold and never
raises into the agent (sweep C, findings 1, 2 and 7)."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.func import entrypoint
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.testing import ScriptedChatModel

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital."


def _stored(store: Path) -> list[Any]:
    return list(LocalExperienceStore(store).iter_trajectories())


def _without_ids(output: dict[str, Any]) -> dict[str, Any]:
    """``output`` with its messages as (type, content): their ids are new at every run."""
    return {key: (value.type, value.content) if isinstance(value, AIMessage) else value for key, value in output.items()}


class _OneMessage(TypedDict):
    question: str
    messages: AnyMessage  # no reducer: the last message only


class _Counter(TypedDict):
    question: str
    answer: str
    messages: int  # a count, not a conversation


def _one_message_graph(model: Any) -> Any:
    graph = StateGraph(_OneMessage)
    graph.add_node("answer", lambda state: {"messages": model.invoke([HumanMessage(state["question"])])})
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile()


def _counter_graph(model: Any) -> Any:
    def answer(state: _Counter) -> dict[str, Any]:
        return {"answer": model.invoke([HumanMessage(state["question"])]).content, "messages": state.get("messages", 0) + 2}

    graph = StateGraph(_Counter)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile()


def _entrypoint_graph(model: Any) -> Any:
    @entrypoint()
    def functional(question: str) -> dict[str, Any]:
        return {"messages": model.invoke([HumanMessage(question)])}

    return functional


@pytest.mark.parametrize(
    ("build", "given"),
    [
        (_one_message_graph, {"question": QUESTION}),
        (_entrypoint_graph, QUESTION),
        (_counter_graph, {"question": QUESTION, "messages": 0}),
    ],
    ids=["messages: AnyMessage", "@entrypoint returning one message", "messages: int"],
)
def test_an_output_whose_messages_is_no_list_is_returned_and_stored(tmp_path: Path, build: Any, given: Any) -> None:
    """Was: the recorded graph raised ``TypeError: 'AIMessage' object is not reversible`` (``'int' object ...``) from
    invoke, stream and batch, where the graph itself returned, and stored nothing."""
    plain = build(ScriptedChatModel(script=[AIMessage(content=ANSWER)])).invoke(given)
    agent = record_experience(build(ScriptedChatModel(script=[AIMessage(content=ANSWER)])), app="shapes", store=tmp_path / "s")
    assert _without_ids(agent.invoke(given)) == _without_ids(plain)
    assert agent.flush() and agent.recorder.stats.runs_failed == 0
    [run] = _stored(tmp_path / "s")
    assert (run.status, run.final_answer) == ("completed", ANSWER)


@pytest.mark.parametrize(
    "messages",
    [QUESTION, HumanMessage(QUESTION), {"role": "user", "content": QUESTION}, ("user", QUESTION)],
    ids=["text", "HumanMessage", "role dict", "pair"],
)
def test_an_input_of_one_message_is_the_run_s_task(tmp_path: Path, messages: Any) -> None:
    """``add_messages`` takes one message as the list of it. Was: a text gave the task ``'W'`` (its first letter), a dict
    ``'role'``, a pair ``'user'``, and a ``HumanMessage`` lost the run (``Unexpected message type: 'content'``)."""
    agent = record_experience(create_agent(ScriptedChatModel(script=[AIMessage(content="Paris.")]), []), app="one", store=tmp_path / "s")
    assert [m.content for m in agent.invoke({"messages": messages})["messages"]] == [QUESTION, "Paris."]
    assert agent.flush() and agent.recorder.stats.runs_failed == 0
    [run] = _stored(tmp_path / "s")
    assert run.task == QUESTION and run.steps[0].state == [{"role": "user", "content": QUESTION}]


class _Notices(TypedDict):
    chat: Annotated[list, add_messages]
    messages: Annotated[list[str], operator.add]  # status notices, not the conversation


def test_notices_under_messages_leave_the_conversation_to_its_own_key(tmp_path: Path) -> None:
    model = ScriptedChatModel(script=[AIMessage(content="Berlin is the capital.")])
    graph = StateGraph(_Notices)
    graph.add_node("call", lambda state: {"chat": [model.invoke(state["chat"])], "messages": ["model called"]})
    graph.add_edge(START, "call")
    graph.add_edge("call", END)
    agent = record_experience(graph.compile(), app="notices", store=tmp_path / "s")
    agent.invoke({"chat": [("user", "What is the capital of Germany?")], "messages": ["session started"]})
    assert agent.flush()
    [run] = _stored(tmp_path / "s")
    assert (run.task, run.final_answer) == ("What is the capital of Germany?", "Berlin is the capital.")
