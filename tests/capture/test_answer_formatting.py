"""A model call that only writes the run's answer in the form asked for is no step: ``langgraph.prebuilt``'s
``create_react_agent(model, tools, response_format=Schema)`` asks the model once more, in its
``generate_structured_response`` node after the model's last reply, for that reply as ``Schema``
(``with_structured_output``). Before, that call was a step after the answer step (a ``Verdict`` tool call without an
observation, ``step.tools=['Verdict']``), ``Verdict`` was one of the run's tools, the run's messages ended on it, and
capture warned that the model was offered different tools from one call to the next.

Structured calls that decide something stay steps: a grader's or a judge's (their reply is not the answer), a node
answering with a structured reply's text, ``create_agent``'s ``ToolStrategy`` call (tests/capture/test_run_endings.py,
test_create_agent.py, test_paused_sub_agent.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import PydanticOutputParser
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import create_react_agent
from pydantic import BaseModel

from ee_middleware import record_experience
from ee_middleware.capture.assembler import AssemblyOptions, assemble
from ee_middleware.capture.spandata import from_readable_span
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import record_once

TASK = {"messages": [("user", "review d1")]}
ANSWER = '{"verdict":"ok","score":7}'


@tool
def fetch(doc: str) -> str:
    """Fetch a document."""
    return f"text of {doc}"


class Verdict(BaseModel):
    verdict: str
    score: int


def _reviewer(messages: list[BaseMessage], tools: Any) -> AIMessage:
    """Reads d1 and says so; asked for a ``Verdict`` (the only tool of the structured-output call), gives it."""
    if [t["function"]["name"] for t in tools or []] == ["Verdict"]:
        return AIMessage(content="", tool_calls=[tool_call("Verdict", verdict="ok", score=7)])
    if not any(m.type == "ai" for m in messages):
        return AIMessage(content="", tool_calls=[tool_call("fetch", doc="d1")])
    return AIMessage(content="done with d1")


def _json_reviewer(messages: list[BaseMessage], tools: Any) -> AIMessage:
    """The same reviewer, whose structured reply is JSON text (a provider's JSON mode: no tool is offered)."""
    if messages[-1].type == "ai":  # asked again after its reply: the structured-output call
        return AIMessage(content='{"verdict": "ok", "score": 7}')
    return _reviewer(messages, tools)


class JsonModeModelStandIn(ScriptedChatModel):
    """``with_structured_output`` the way ``ChatOpenAI``'s default ``method="json_schema"`` does it: the schema goes as
    ``response_format`` (no tools), LangChain's ``ls_structured_output_format`` marks the call, and the reply's JSON
    text is parsed. (No provider can be reached here: the scripted model stands in for one.)"""

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        bound = self.bind(
            response_format={"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()}},
            ls_structured_output_format={"kwargs": {"method": "json_schema"}, "schema": schema},
        )
        return bound | PydanticOutputParser(pydantic_object=schema)


MODELS = {
    "tool calling": lambda: ScriptedChatModel(policy=_reviewer, model_name="scripted-expert"),
    "json mode (stand-in)": lambda: JsonModeModelStandIn(policy=_json_reviewer, model_name="scripted-expert"),
}


def _shape(trajectory: Any) -> list[tuple[str, str | None, list[str] | None]]:
    return [(s.action.kind, s.action.tool_call.name if s.action.tool_call else s.action.content, s.tools) for s in trajectory.steps]


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("model", list(MODELS))
def test_create_react_agents_structured_output_call_is_no_step(
    model: str, offload: str, tmp_path: Path, tracer_provider: Any, span_exporter: Any, caplog: Any
) -> None:
    store = tmp_path / "s"
    graph = create_react_agent(MODELS[model](), [fetch], response_format=Verdict)
    own = {"tracer_provider": tracer_provider} if offload == "thread" else {"offload": offload}
    agent = record_experience(graph, app="react", store=store, **own)
    with caplog.at_level(logging.WARNING, logger="ee_middleware.capture"):
        trajectory = record_once(agent, store, TASK, {"configurable": {"thread_id": "r1"}})
    assert "different tools" not in caplog.text
    assert (trajectory.status, trajectory.error, trajectory.final_answer) == ("completed", None, ANSWER)
    assert _shape(trajectory) == [("tool_call", "fetch", None), ("answer", "done with d1", None)]
    assert [t["function"]["name"] for t in trajectory.tools] == ["fetch"]
    assert trajectory.messages[-1] == {"role": "assistant", "content": "done with d1"}  # the conversation the graph returned
    if offload == "process":
        return
    read_back = assemble([from_readable_span(s) for s in span_exporter.get_finished_spans()], AssemblyOptions(app="react"))
    assert _shape(read_back) == _shape(trajectory) and read_back.final_answer == ANSWER


def test_a_grader_whose_structured_reply_is_not_the_answer_stays_a_step(tmp_path: Path) -> None:
    """A node after the model's reply that grades it with ``with_structured_output`` and keeps the grade in the state: the
    grade is a decision (its reply is not the run's answer), so it stays a step, whatever the state's other fields."""
    drafter = ScriptedChatModel(script=[AIMessage(content="done with d1")])
    grader = ScriptedChatModel(
        model_name="grader", policy=lambda m, t: AIMessage(content="", tool_calls=[tool_call("Verdict", verdict="ok", score=3)])
    )

    class State(MessagesState):
        verdict: Verdict

    builder = StateGraph(State)
    builder.add_node("draft", lambda state: {"messages": [drafter.invoke(state["messages"])]})
    builder.add_node("grade", lambda state: {"verdict": grader.with_structured_output(Verdict).invoke(state["messages"])})
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "grade")
    builder.add_edge("grade", END)
    store = tmp_path / "s"
    trajectory = record_once(record_experience(builder.compile(), app="graded", store=store), store, TASK)
    assert (trajectory.status, trajectory.final_answer) == ("completed", "done with d1")
    assert [(kind, name) for kind, name, _ in _shape(trajectory)] == [("answer", "done with d1"), ("tool_call", "Verdict")]
