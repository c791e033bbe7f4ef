"""Multi-agent traces of the GenAI conventions, without LangGraph's checkpoint namespaces to tell agents apart.

A supervisor's handoff call that ran is a step, though the sub-agent after it asks the same model on the same history:
a supervisor calls ``transfer_to_researcher`` (its tool span ran the call), then a researcher agent (an ``invoke_agent``
span under the supervisor's) starts with the same question, tools and model. Without LangGraph checkpoint namespaces
to tell the two agents apart, the researcher's first call looked like the supervisor asking again after throwing its
reply away (a guardrail's retry), and the handoff was dropped from the trajectory (a sweep of other instrumentations'
traces). A reply a tool acted on was not thrown away."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import _request, _span, _write

QUESTION = {"role": "user", "parts": [{"type": "text", "content": "Find papers on OTel."}]}
TOOLS = [
    {"type": "function", "name": "transfer_to_researcher", "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
]


def _calls(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "parts": [{"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}]}


def _text(text: str) -> dict[str, Any]:
    return {"role": "assistant", "parts": [{"type": "text", "content": text}]}


def _result(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "parts": [{"type": "tool_call_response", "id": call_id, "response": text}]}


def _chat(span_id: str, parent: str, start: int, end: int, given: list[Any], reply: dict[str, Any], model: str = "m") -> dict[str, Any]:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.input.messages": json.dumps(given),
        "gen_ai.output.messages": json.dumps([reply]),
        "gen_ai.tool.definitions": json.dumps(TOOLS),
    }
    return _span(span_id, "chat m", attrs, parent=parent, start=start, end=end)


def _tool(span_id: str, parent: str, start: int, name: str, call_id: str, arguments: dict[str, Any], result: str) -> dict[str, Any]:
    attrs = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.call.arguments": json.dumps(arguments),
        "gen_ai.tool.call.result": result,
    }
    return _span(span_id, f"execute_tool {name}", attrs, parent=parent, start=start, end=start + 10)


def _agent(span_id: str, parent: str | None, start: int, end: int, name: str) -> dict[str, Any]:
    return _span(span_id, f"invoke_agent {name}", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name}, parent, start, end)


def test_a_handoff_that_ran_is_a_step_of_the_supervisors_run(tmp_path: Path) -> None:
    root, sub = "a000000000000001", "a000000000000002"
    handoff, search = _calls("h1", "transfer_to_researcher", {}), _calls("s1", "search", {"q": "otel"})
    spans = [
        _agent(root, None, 0, 2000, "supervisor"),
        _chat("a000000000000003", root, 10, 100, [QUESTION], handoff),
        _tool("a000000000000004", root, 110, "transfer_to_researcher", "h1", {}, "transferred"),
        _agent(sub, root, 130, 900, "researcher"),
        _chat("a000000000000005", sub, 140, 300, [QUESTION], search),
        _tool("a000000000000006", sub, 310, "search", "s1", {"q": "otel"}, "3 papers"),
        _chat("a000000000000007", sub, 410, 800, [QUESTION, search, _result("s1", "3 papers")], _text("Found 3 papers.")),
        _chat(
            "a000000000000008",
            root,
            1000,
            1900,
            [QUESTION, handoff, _result("h1", "transferred"), _text("Found 3 papers.")],
            _text("Here: 3 papers."),
        ),
    ]
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_write(tmp_path / "spans.json", _request(spans, "ma"))], store)
    assert report.ingested and not report.errors, report.errors
    steps = [s for t in store.iter_trajectories() for s in t.steps if s.action.tool_call is not None]
    calls = [(s.action.tool_call.name, s.observation.content if s.observation else None) for s in steps]
    assert ("transfer_to_researcher", "transferred") in calls, calls
    assert ("search", "3 papers") in calls, calls


def test_an_agent_used_as_a_tool_is_a_trajectory_of_its_own(tmp_path: Path) -> None:
    """A researcher agent run inside the supervisor's ask_researcher tool (ADK's AgentTool, agents as tools): its
    search call and answer were taken for the supervisor's steps, under the supervisor's model, and its own task lost (a
    sweep of other instrumentations' traces). As the README says of agents used as tools, it is a trajectory of its own;
    the supervisor's keeps the tool call and the result the tool returned."""
    root, tool_span, sub = "b000000000000001", "b000000000000004", "b000000000000005"
    ask = _calls("h1", "ask_researcher", {"question": "OTel papers"})
    search = _calls("s1", "search", {"q": "otel"})
    inner_question = {"role": "user", "parts": [{"type": "text", "content": "OTel papers"}]}
    spans = [
        _agent(root, None, 0, 2000, "supervisor"),
        _chat("b000000000000003", root, 10, 100, [QUESTION], ask, model="big"),
        _tool(tool_span, root, 110, "ask_researcher", "h1", {"question": "OTel papers"}, "Found 3 papers."),
        _agent(sub, tool_span, 111, 118, "researcher"),
        _chat("b000000000000006", sub, 112, 113, [inner_question], search, model="small"),
        _tool("b000000000000007", sub, 113, "search", "s1", {"q": "otel"}, "3 papers"),
        _chat(
            "b000000000000008", sub, 116, 117, [inner_question, search, _result("s1", "3 papers")], _text("Found 3 papers."), model="small"
        ),
        _chat(
            "b000000000000009", root, 1000, 1900, [QUESTION, ask, _result("h1", "Found 3 papers.")], _text("Here: 3 papers."), model="big"
        ),
    ]
    spans[2]["endTimeUnixNano"] = str(1_700_000_000_000_000_000 + 120 * 1_000_000)
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_write(tmp_path / "spans.json", _request(spans, "ma"))], store)
    assert len(report.ingested) == 2 and not report.errors, report.errors
    runs = {t.app: t for t in store.iter_trajectories()}
    outer, inner = runs["supervisor"], runs["researcher"]
    assert [(s.action.tool_call.name if s.action.tool_call else s.action.content) for s in outer.steps] == [
        "ask_researcher",
        "Here: 3 papers.",
    ]
    assert outer.steps[0].observation.content == "Found 3 papers." and outer.model == "big"
    assert (inner.task, inner.model, inner.final_answer) == ("OTel papers", "small", "Found 3 papers.")
    assert [s.action.tool_call.name for s in inner.steps if s.action.tool_call] == ["search"]
