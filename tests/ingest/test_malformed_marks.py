"""Which ingested calls carry capture's mark ``ToolCall.malformed`` (schema 1.6): another recorder's call is marked well
formed (``False``) only where the model's argument text was a JSON object whose only key is ``_raw``. Text that was no
JSON object (``Paris``: the tool got that text) is held as ``{"_raw": text}`` by the parser, a key the model never wrote:
such a call stays unmarked (judged by its shape: malformed), whatever tool span ran it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware import LocalExperienceStore
from ee_middleware.ingest import ingest_files
from ee_middleware.records import Trajectory
from ee_middleware.replay.malformed import malformed_call
from tests.ingest.otlp_builders import _request, _span, _write
from tests.ingest.test_malformed_call_text import AGENT, TRACE, _b64, _llm


def _openinference_run(tmp_path: Path, written: str, tool_attrs: dict[str, Any]) -> Trajectory:
    """An OpenInference trace: the model calls weather with the argument text ``written``, a tool span (with
    ``tool_attrs``) runs it without error, and the model answers."""
    call = {
        "role": "assistant",
        "tool_calls.0.tool_call.id": "t1",
        "tool_calls.0.tool_call.function.name": "weather",
        "tool_calls.0.tool_call.function.arguments": written,
    }
    user = {"role": "user", "content": "Weather in Paris?"}
    result = {"role": "tool", "tool_call_id": "t1", "content": "sunny"}
    tool = {"openinference.span.kind": "TOOL", "tool.name": "weather", "input.value": written, "output.value": "sunny", **tool_attrs}
    spans = [
        _span(AGENT, "Agent", {"openinference.span.kind": "AGENT"}, start=0, end=9, trace=TRACE),
        _llm("c000000000000002", 1, [user], call),
        _span(_b64("c000000000000003"), "weather", tool, parent=AGENT, start=3, end=4, trace=TRACE),
        _llm("c000000000000004", 5, [user, call, result], {"role": "assistant", "content": "Sunny."}),
    ]
    store = LocalExperienceStore(tmp_path / "store")
    try:
        report = ingest_files([_write(tmp_path / "t.json", _request(spans))], store)
        assert report.errors == []
        [trajectory] = list(store.iter_trajectories())
    finally:
        store.close()
    return trajectory


TOOL_SPANS = {"no call id": {}, "tool_call.id": {"tool_call.id": "t1"}, "gen_ai.tool.call.id": {"gen_ai.tool.call.id": "t1"}}


@pytest.mark.parametrize("tool_span", list(TOOL_SPANS))
@pytest.mark.parametrize("written", ["Paris", "[1, 2]", '"Paris"'])
def test_another_recorders_call_whose_text_was_no_object_stays_unmarked_whatever_tool_span_ran_it(tmp_path, written, tool_span):
    """Was: once a tool span of the call's id ran it, the call was marked well formed, and replay executed
    weather(_raw="Paris"), a keyword argument the production tool never got (it got the text), and IL taught it."""
    t = _openinference_run(tmp_path, written, TOOL_SPANS[tool_span])
    [step] = [s for s in t.steps if s.action.tool_call is not None]
    call = step.action.tool_call
    assert list(call.arguments) == ["_raw"]
    assert call.malformed is None
    assert malformed_call(t.tools, call) is True  # as replay and IL read it


@pytest.mark.parametrize("tool_span", list(TOOL_SPANS))
def test_another_recorders_call_whose_text_was_an_object_of_raw_is_well_formed(tmp_path, tool_span):
    """The model wrote {"_raw": "Paris"} itself: the key is its own, whether or not a tool span says which call it ran
    (was: unmarked without a tool span of its id, so read as a malformed call)."""
    t = _openinference_run(tmp_path, '{"_raw": "Paris"}', TOOL_SPANS[tool_span])
    [step] = [s for s in t.steps if s.action.tool_call is not None]
    assert (step.action.tool_call.arguments, step.action.tool_call.malformed) == ({"_raw": "Paris"}, False)
    assert malformed_call(t.tools, step.action.tool_call) is False


def _litellm_chat(span_id: str, start: int, history: list[dict[str, Any]], reply: dict[str, Any], call: Any = None) -> dict[str, Any]:
    """A model span of LiteLLM's ``otel`` callback: its history in ``gen_ai.input.messages`` (an assistant's calls as
    OpenAI's ``tool_calls`` beside its parts), its reply's call in ``gen_ai.completion.0.function_call.*``."""
    attrs: dict[str, Any] = {
        "litellm.call_id": f"call-{span_id}",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "scripted-shop-model",
        "gen_ai.provider.name": "openai",
        "llm.request.functions.0.name": "weather",
        "llm.request.functions.0.description": "The weather in a city.",
        "llm.request.functions.0.parameters": json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
        "gen_ai.input.messages": json.dumps(history),
        "gen_ai.output.messages": json.dumps([reply]),
    }
    if call is not None:
        attrs["gen_ai.completion.0.function_call.name"], attrs["gen_ai.completion.0.function_call.arguments"] = call
    return _span(span_id, "chat scripted-shop-model", attrs, parent="d000000000000001", start=start, end=start + 1)


@pytest.mark.parametrize("written", ["[1, 2]", '"Paris"'])
def test_a_litellm_call_whose_text_was_json_but_no_object_shows_as_written_and_stays_unmarked(tmp_path, written):
    """LiteLLM's dialect held the reply's and the history's argument text as parsed ({"_raw": [1, 2]}), which later
    read as an object the model wrote: the conversation showed {"_raw":[1,2]} where the model wrote [1, 2]. The text
    stays as written, and the call is no well-formed one of a ``_raw`` key."""
    user = {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}
    asked = {
        "role": "assistant",
        "parts": [{"type": "text", "content": ""}],
        "tool_calls": [{"function": {"arguments": written, "name": "weather"}, "id": "c1", "type": "function"}],
    }
    answered = {"role": "tool", "parts": [{"type": "text", "content": "sunny"}], "tool_call_id": "c1"}
    spans = [
        _span("d000000000000001", "shop turn", {"gen_ai.conversation.id": "shop-thread-1"}, start=0, end=9),
        _litellm_chat(
            "d000000000000002", 1, [user], {"role": "assistant", "parts": [], "finish_reason": "tool_calls"}, ("weather", written)
        ),
        _litellm_chat(
            "d000000000000003",
            5,
            [user, asked, answered],
            {"role": "assistant", "parts": [{"type": "text", "content": "Sunny."}], "finish_reason": "stop"},
        ),
    ]
    store = LocalExperienceStore(tmp_path / "store")
    try:
        report = ingest_files([_write(tmp_path / "t.json", _request(spans))], store)
        assert report.errors == []
        [t] = list(store.iter_trajectories())
    finally:
        store.close()
    [step] = [s for s in t.steps if s.action.tool_call is not None]
    assert (step.action.tool_call.arguments, step.action.tool_call.malformed) == ({"_raw": json.loads(written)}, None)
    shown = [c["function"]["arguments"] for m in t.messages for c in m.get("tool_calls") or ()]
    shown += [c["function"]["arguments"] for s in t.steps for m in s.state for c in m.get("tool_calls") or ()]
    assert shown and set(shown) == {written}
