"""A run's ``final_answer`` is what the graph returned, also where its output holds no conversation: a Functional API
``@entrypoint``'s string, a state's field named as the answer (a map-reduce's ``answer`` that a reduce node wrote). An
output that says no answer gives none, never the reply of whichever parallel ``Send`` branch ended last (was: the last
model reply's text, in span order). Real LangGraph graphs, the real OTel SDK, the real local store; each in thread mode
and with capture in a child process."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.func import entrypoint
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Send
from pydantic import BaseModel

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # process: make test-heavy
pytestmark = pytest.mark.usefixtures("no_child_left")

CITIES = ["Paris", "Rome", "Oslo"]


def _recorded(agent: Any, store_path: Any) -> list[Trajectory]:
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    try:
        return sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        store.close()


def _notes_model() -> ScriptedChatModel:
    return ScriptedChatModel(policy=lambda messages, tools: AIMessage(content=f"notes on {messages[-1].content}"))


def _map_reduce(reduce_writes: str = "answer") -> Any:
    """``Send`` fans out to a branch per city, each calling the model; ``reduce`` joins their notes into
    ``reduce_writes``."""
    model = _notes_model()

    class State(TypedDict):
        question: str
        results: Annotated[list, operator.add]
        answer: str
        digest: str

    def research(state: dict[str, Any]) -> dict[str, Any]:
        return {"results": [model.invoke([HumanMessage(state["topic"])]).content]}

    def reduce(state: dict[str, Any]) -> dict[str, Any]:
        return {reduce_writes: " | ".join(sorted(state["results"]))}

    builder = StateGraph(State)
    builder.add_node("research", research)
    builder.add_node("reduce", reduce)
    builder.add_conditional_edges(START, lambda state: [Send("research", {"topic": c}) for c in CITIES], ["research"])
    builder.add_edge("research", "reduce")
    builder.add_edge("reduce", END)
    return builder.compile()


@OFFLOADS
def test_a_map_reduce_answer_is_the_field_its_reduce_node_wrote(offload, store_path):
    agent = record_experience(_map_reduce(), app="research", store=store_path, offload=offload)
    out = agent.invoke({"question": "compare cities", "results": []})
    [t] = _recorded(agent, store_path)
    assert out["answer"] == "notes on Oslo | notes on Paris | notes on Rome"
    assert (t.status, t.task, t.final_answer) == ("completed", "compare cities", out["answer"])
    assert sorted(s.action.content for s in t.steps) == [f"notes on {c}" for c in sorted(CITIES)]  # every branch's decision


@OFFLOADS
def test_an_output_that_names_no_answer_gives_none_not_a_branch_reply(offload, store_path):
    """The reduce node writes ``digest``, no name an answer has: the run has no answer rather than one branch's."""
    agent = record_experience(_map_reduce("digest"), app="research", store=store_path, offload=offload)
    agent.invoke({"question": "compare cities", "results": []})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", None)
    assert len([s for s in t.steps if s.action.kind == "answer"]) == 3


@OFFLOADS
def test_an_entrypoint_answer_is_the_string_it_returned(offload, store_path):
    model = _notes_model()

    @entrypoint()
    def summarize(question: str) -> str:
        reply = model.invoke([HumanMessage(question)])
        return f"Summary: {reply.content.upper()}"

    agent = record_experience(summarize, app="summaries", store=store_path, offload=offload)
    out = agent.invoke("what about pears?")
    [t] = _recorded(agent, store_path)
    assert out == "Summary: NOTES ON WHAT ABOUT PEARS?"
    assert (t.status, t.task, t.final_answer) == ("completed", "what about pears?", out)
    assert [s.action.content for s in t.steps] == ["notes on what about pears?"]  # the model's decision as it made it


@OFFLOADS
def test_an_entrypoint_returning_a_dict_gives_its_answer_field(offload, store_path):
    model = _notes_model()

    @entrypoint()
    def report(question: str) -> dict[str, Any]:
        return {"sources": 2, "report": model.invoke([HumanMessage(question)]).content + "!"}

    agent = record_experience(report, app="reports", store=store_path, offload=offload)
    agent.invoke("how are pears grown?")
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", "notes on how are pears grown?!")


class _Score(BaseModel):
    score: int
    why: str


def test_output_text_reads_the_answer_as_input_text_reads_the_task():
    from ee_middleware.capture.payloads import output_text

    assert output_text("It rains.") == "It rains."
    assert output_text({"question": "Weather?", "answer": "It rains."}) == "It rains."
    assert output_text({"summary": "short", "answer": "long"}) == "long"  # the most telling name first
    assert output_text({"question": "Weather?", "answer": "", "result": "It rains."}) == "It rains."  # an empty one says none
    assert output_text({"answer": AIMessage(content="It rains.")}) == "It rains."
    assert output_text({"result": _Score(score=8, why="clear")}) == '{"score":8,"why":"clear"}'
    assert output_text({"answer": {"city": "Oslo", "rain": True}}) == '{"city":"Oslo","rain":true}'
    # no field named as the answer: none (its only text field may be the question, a note or a parameter)
    for output in ({"question": "Weather?"}, {"notes": ["a", "b"]}, {"city": "Oslo", "digest": "rain"}, "  ", None, 42, {"answer": None}):
        assert output_text(output) is None


@OFFLOADS
def test_a_conversation_holding_only_the_question_gives_the_answer_field(offload, store_path):
    """A graph whose state has ``messages`` (the user's question) and an ``answer`` its node writes from the reply it
    post-processed: the conversation says no answer, the field does."""
    model = _notes_model()

    class State(MessagesState):
        answer: str

    def answer(state: dict[str, Any]) -> dict[str, Any]:
        return {"answer": model.invoke(state["messages"]).content.capitalize() + "."}

    builder = StateGraph(State)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    agent = record_experience(builder.compile(), app="notes", store=store_path, offload=offload)
    out = agent.invoke({"messages": [("user", "pears")]})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.task, t.final_answer) == ("completed", "pears", out["answer"]) and out["answer"] == "Notes on pears."
