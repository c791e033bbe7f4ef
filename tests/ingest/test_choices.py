"""A model call that returned several choices (alternative replies to one request, ``n`` > 1) is one decision: the
choice the run went on with, never its choices one after the other (sweep s17, F2).

The GenAI conventions make each entry of ``gen_ai.output.messages`` one choice (as ``gen_ai.choice`` events with their
``index``, OpenLLMetry's ``gen_ai.completion.{i}``, OpenInference's ``llm.output_messages.{i}``). Read as consecutive
messages, an unused choice became a step (a ``book_flight`` that never ran, observation None) or the final answer. The
run tells which one it went on with: the next call's history, the tool spans that ran its calls, the answer the run
returned; where nothing does, the first is kept (OpenAI's convention) and the ingest report counts it in a note.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from ee_middleware.records import Trajectory
from tests.ingest.otlp_builders import _request, _span, _write

USER = {"role": "user", "parts": [{"type": "text", "content": "Which is warmer, Oslo or Rome? Book the warmer one."}]}
SEARCH = {
    "role": "assistant",
    "parts": [
        {"type": "text", "content": "Checking both."},
        {"type": "tool_call", "id": "tc_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
        {"type": "tool_call", "id": "tc_2", "name": "get_weather", "arguments": {"city": "Rome"}},
    ],
    "finish_reason": "tool_call",
}
UNUSED = {
    "role": "assistant",
    "parts": [{"type": "tool_call", "id": "tc_x", "name": "book_flight", "arguments": {"to": "Oslo"}}],
    "finish_reason": "tool_call",
}
RESULTS = [
    {"role": "tool", "parts": [{"type": "tool_call_response", "id": "tc_1", "response": "-3C"}]},
    {"role": "tool", "parts": [{"type": "tool_call_response", "id": "tc_2", "response": "18C"}]},
]
ANSWER = {"role": "assistant", "parts": [{"type": "text", "content": "Rome is warmer."}], "finish_reason": "stop"}
OTHER_ANSWER = {"role": "assistant", "parts": [{"type": "text", "content": "ALTERNATIVE CHOICE"}], "finish_reason": "stop"}
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-x"}


def _tool(span_id: str, call_id: str, city: str, start: int, result: str) -> dict[str, Any]:
    return _span(
        span_id,
        "execute_tool get_weather",
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.call.arguments": json.dumps({"city": city}),
            "gen_ai.tool.call.result": result,
        },
        parent="c000000000000001",
        start=start,
        end=start + 1,
    )


def _run(
    first: list[dict[str, Any]], last: list[dict[str, Any]], *, continued: dict[str, Any] = SEARCH, agent: dict[str, Any] | None = None
):
    root = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "travel", **(agent or {})}
    return [
        _span("c000000000000001", "invoke_agent travel", root, start=0, end=20),
        _span(
            "c000000000000002",
            "chat gpt-x",
            {**CHAT, "gen_ai.input.messages": json.dumps([USER]), "gen_ai.output.messages": json.dumps(first)},
            parent="c000000000000001",
            start=1,
            end=2,
        ),
        _tool("c000000000000003", "tc_1", "Oslo", 3, "-3C"),
        _tool("c000000000000004", "tc_2", "Rome", 5, "18C"),
        _span(
            "c000000000000005",
            "chat gpt-x",
            {**CHAT, "gen_ai.input.messages": json.dumps([USER, continued, *RESULTS]), "gen_ai.output.messages": json.dumps(last)},
            parent="c000000000000001",
            start=8,
            end=9,
        ),
    ]


def _ingest(tmp_path, store, spans) -> tuple[Any, Trajectory]:
    report = ingest_files([_write(tmp_path / "run.jsonl", _request(spans))], store)
    assert report.problems == 0 and len(report.ingested) == 1, report.errors
    (trajectory,) = store.iter_trajectories()
    return report, trajectory


def _decisions(t: Trajectory) -> list[Any]:
    return [
        (s.action.tool_call.name, s.action.tool_call.arguments) if s.action.tool_call else ("answer", s.action.content) for s in t.steps
    ]


WHOLE = [("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"}), ("answer", "Rome is warmer.")]


def test_an_unused_choice_of_a_call_the_run_went_on_from_is_no_step(tmp_path, store):
    report, t = _ingest(tmp_path, store, _run([SEARCH, UNUSED], [ANSWER]))
    assert _decisions(t) == WHOLE and t.final_answer == "Rome is warmer." and t.status == "completed"
    assert all(s.observation is not None for s in t.steps if s.action.tool_call)
    assert [m.get("content") for m in t.messages if m["role"] == "assistant"] == ["Checking both.", "Rome is warmer."]
    assert (report.several_choices, report.first_choice_kept) == (1, 0)
    assert any("1 model call(s) returned several choices" in n and "1 kept the one the run went on with" in n for n in report.notes)


def test_the_choice_the_next_call_holds_is_kept_even_when_it_is_not_the_first(tmp_path, store):
    _, t = _ingest(tmp_path, store, _run([UNUSED, SEARCH], [ANSWER]))
    assert _decisions(t) == WHOLE


def test_the_tools_that_ran_tell_the_choice_when_no_later_call_shows_it(tmp_path, store):
    spans = _run([UNUSED, SEARCH], [ANSWER])
    later = spans.pop()  # the run ends on the tools (no later model call: nothing holds the reply in a history)
    assert later["name"] == "chat gpt-x"
    report, t = _ingest(tmp_path, store, spans)
    assert _decisions(t)[:2] == WHOLE[:2] and len(t.steps) == 2
    assert (report.several_choices, report.first_choice_kept) == (1, 0)


def test_the_last_call_keeps_the_first_choice_where_nothing_tells_and_the_report_counts_it(tmp_path, store):
    report, t = _ingest(tmp_path, store, _run([SEARCH], [ANSWER, OTHER_ANSWER]))
    assert _decisions(t) == WHOLE and t.final_answer == "Rome is warmer."
    assert (report.several_choices, report.first_choice_kept) == (1, 1)
    assert any("for 1 nothing in the run tells which one it went on with" in n and "the first choice was kept" in n for n in report.notes)


def test_the_last_call_keeps_the_choice_the_agent_returned(tmp_path, store):
    returned = {"gen_ai.output.messages": json.dumps([OTHER_ANSWER])}
    report, t = _ingest(tmp_path, store, _run([SEARCH], [ANSWER, OTHER_ANSWER], agent=returned))
    assert _decisions(t)[-1] == ("answer", "ALTERNATIVE CHOICE") and t.final_answer == "ALTERNATIVE CHOICE" and len(t.steps) == 3
    assert (report.several_choices, report.first_choice_kept) == (1, 0)


def _openllmetry(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last call's two answers as OpenLLMetry's indexed completions (and its history as indexed prompts)."""
    last = spans[-1]
    last["attributes"] = [
        a for a in last["attributes"] if a["key"] not in ("gen_ai.output.messages", "gen_ai.input.messages", "gen_ai.operation.name")
    ]
    flat = {
        "llm.request.type": "chat",
        "gen_ai.prompt.0.role": "user",
        "gen_ai.prompt.0.content": USER["parts"][0]["content"],
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "Rome is warmer.",
        "gen_ai.completion.0.finish_reason": "stop",
        "gen_ai.completion.1.role": "assistant",
        "gen_ai.completion.1.content": "ALTERNATIVE CHOICE",
        "gen_ai.completion.1.finish_reason": "stop",
    }
    last["attributes"] += [{"key": k, "value": {"stringValue": v}} for k, v in flat.items()]
    return spans


def _openinference(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last call's two answers as OpenInference's indexed output messages."""
    last = spans[-1]
    last["attributes"] = [a for a in last["attributes"] if a["key"] not in ("gen_ai.output.messages", "gen_ai.operation.name")]
    flat = {
        "openinference.span.kind": "LLM",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": "Rome is warmer.",
        "llm.output_messages.1.message.role": "assistant",
        "llm.output_messages.1.message.content": "ALTERNATIVE CHOICE",
    }
    last["attributes"] += [{"key": k, "value": {"stringValue": v}} for k, v in flat.items()]
    return spans


def _choice_events(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last call's two answers as ``gen_ai.choice`` events (semconv 1.27-1.36), index 0 and 1."""
    last = spans[-1]
    last["attributes"] = [a for a in last["attributes"] if a["key"] != "gen_ai.output.messages"]
    last["events"] = [
        {
            "name": "gen_ai.choice",
            "timeUnixNano": last["endTimeUnixNano"],
            "attributes": [
                {"key": "gen_ai.event.content", "value": {"stringValue": json.dumps({"index": i, "message": {"content": text}})}}
            ],
        }
        for i, text in enumerate(["Rome is warmer.", "ALTERNATIVE CHOICE"])
    ]
    return spans


@pytest.mark.parametrize("dialect", [_openllmetry, _openinference, _choice_events], ids=["openllmetry", "openinference", "events"])
def test_the_dialects_choices_are_alternatives_too(tmp_path, store, dialect):
    report, t = _ingest(tmp_path, store, dialect(_run([SEARCH], [ANSWER, OTHER_ANSWER])))
    assert _decisions(t)[-1] == ("answer", "Rome is warmer.") and t.final_answer == "Rome is warmer."
    assert [s.action.content for s in t.steps if s.action.kind == "answer"] == ["Rome is warmer."]
    assert (report.several_choices, report.first_choice_kept) == (1, 1)


def test_one_choice_is_no_note(tmp_path, store):
    report, t = _ingest(tmp_path, store, _run([SEARCH], [ANSWER]))
    assert _decisions(t) == WHOLE and report.several_choices == 0 and not any("choices" in n for n in report.notes)
    assert "several_choices" in report.as_dict()
