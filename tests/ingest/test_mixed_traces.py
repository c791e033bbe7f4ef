"""Traces users send that mix what the fixtures hold one at a time.

Two instrumentations on one model call: a framework's (OpenInference's LangChain instrumentation: an LLM span per
call) over the model client's (OpenTelemetry's OpenAI v2 instrumentation: a ``chat`` span per request, under the
LLM span as it runs inside it). Both describe the same call with its messages. Built from the real fixtures: each
OpenAI v2 ``chat`` span of the shop's turn (``openai_v2_langgraph.jsonl``) placed under the OpenInference LLM span of
the same call in ``openinference_langgraph.jsonl`` (same scripted conversation), as one process tracing both writes
it. Before, every decision was stored twice (six steps for three).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from tests.ingest.test_instrumentations import FIXTURES, _steps


def _spans(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def _requests(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def _client_spans_under_framework_spans(framework: dict[str, Any], client: dict[str, Any]) -> dict[str, Any]:
    request = copy.deepcopy(framework)
    llms = sorted((s for s in _spans(request) if s["name"] == "ScriptedChatModel"), key=lambda s: int(s["startTimeUnixNano"]))
    chats = sorted((copy.deepcopy(s) for s in _spans(client) if s["name"].startswith("chat ")), key=lambda s: int(s["startTimeUnixNano"]))
    assert len(llms) == len(chats)
    for llm, chat in zip(llms, chats, strict=True):
        chat.update(traceId=llm["traceId"], parentSpanId=llm["spanId"])
        chat.update(startTimeUnixNano=str(int(llm["startTimeUnixNano"]) + 1000), endTimeUnixNano=str(int(llm["endTimeUnixNano"]) - 1000))
    request["resourceSpans"][0]["scopeSpans"].append({"scope": {"name": "opentelemetry.instrumentation.openai_v2"}, "spans": chats})
    return request


def test_a_model_call_traced_by_two_instrumentations_is_one_decision(tmp_path, store):
    mixed = [
        _client_spans_under_framework_spans(f, c)
        for f, c in zip(_requests("openinference_langgraph.jsonl"), _requests("openai_v2_langgraph.jsonl"), strict=True)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in mixed) + "\n")
    report = ingest_files([path], store)
    assert (report.problems, len(report.ingested)) == (0, 2), report.errors
    alone = type(store)(tmp_path / "alone")
    ingest_files([FIXTURES / "openinference_langgraph.jsonl"], alone)
    by_start = lambda s: sorted(s.iter_trajectories(), key=lambda t: t.started_at)  # noqa: E731
    for got, expected in zip(by_start(store), by_start(alone), strict=True):
        assert _steps(got) == _steps(expected)
        assert [s.decision_index for s in got.steps] == [s.decision_index for s in expected.steps]
        assert [s.state for s in got.steps] == [s.state for s in expected.steps]
        assert (got.tools, got.final_answer, got.status) == (expected.tools, expected.final_answer, "completed")


DOUBLE_TRACED = sorted(p.name.removesuffix(".jsonl") for p in FIXTURES.glob("double_traced_*.jsonl"))


def _expected_steps(meta: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [("answer", step[1]) if step[0] == "answer" else (step[0], step[1], step[2], False) for step in meta["steps"]]


@pytest.mark.parametrize("name", DOUBLE_TRACED)
def test_a_run_traced_by_its_framework_and_its_model_clients_instrumentation_is_one_trajectory(tmp_path, store, name):
    """Real traces (make_double_traced_fixtures.py): a LangChain instrumentation and an OpenAI one on at once, whose
    client spans are not under the framework's model spans: traces of their own, siblings of the graph's span under
    the app's, or siblings of OpenLLMetry's model span. Before, the run was stored twice (a second trajectory from the
    client's spans) or every decision twice in it (six steps for three)."""
    meta = json.loads((FIXTURES / f"{name}.meta.json").read_text())
    report = ingest_files([FIXTURES / f"{name}.jsonl"], store)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 1, 1), (report.errors, report.notes)
    [trajectory] = store.iter_trajectories()
    assert _steps(trajectory) == _expected_steps(meta)
    assert (trajectory.task, trajectory.status, trajectory.thread_id) == (meta["task"], "completed", "thread-0")
    assert sorted(t["function"]["name"] for t in trajectory.tools) == ["convert_temp", "get_weather"]
    asked = [s.action.tool_call.id for s in trajectory.steps if s.action.kind == "tool_call"]
    answered = [m["tool_call_id"] for m in trajectory.steps[-1].state if m["role"] == "tool"]
    assert all(asked) and asked == answered


def _scope_spans(request: dict[str, Any], scope: str) -> list[dict[str, Any]]:
    """The spans of ``request`` exported under instrumentation scope ``scope``."""
    return [s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] if ss["scope"]["name"] == scope for s in ss["spans"]]


def _shifted(request: dict[str, Any], scope: str, by_ns: int) -> dict[str, Any]:
    moved = copy.deepcopy(request)
    for span in _scope_spans(moved, scope):
        span["startTimeUnixNano"] = str(int(span["startTimeUnixNano"]) + by_ns)
        span["endTimeUnixNano"] = str(int(span["endTimeUnixNano"]) + by_ns)
    return moved


def test_the_same_reply_outside_the_framework_calls_time_is_a_call_of_its_own(tmp_path, store):
    """What tells a call traced twice is its time as well as its reply: the OpenAI client's calls of the fixture moved
    an hour later (the same task run again by a script using the client alone) are a run of their own, as before."""
    [request] = _requests("double_traced_openinference_langchain_openai.jsonl")
    path = tmp_path / "later.jsonl"
    path.write_text(json.dumps(_shifted(request, "openinference.instrumentation.openai", 3600 * 10**9)) + "\n")
    report = ingest_files([path], store)
    assert (report.problems, len(report.ingested)) == (0, 2), report.errors
    for trajectory in store.iter_trajectories():
        assert [step[0] for step in _steps(trajectory)] == ["get_weather", "convert_temp", "answer"]


def test_two_calls_of_one_instrumentation_alike_and_at_once_are_two_calls(tmp_path, store):
    """One instrumentation traces a call once: spans of one scope, one within the other's time with the same reply to
    the same messages (``Send`` branches asking alike at once, a model answering alike) are two calls. The fixture's
    OpenAI v2 spans put under OpenLLMetry's scope: every call is kept, as before the echo rule."""
    [request] = _requests("double_traced_openllmetry_langchain_openai_v2.jsonl")
    same_scope = copy.deepcopy(request)
    for resource_spans in same_scope["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            scope_spans["scope"] = {"name": "opentelemetry.instrumentation.langchain"}
    path = tmp_path / "one-scope.jsonl"
    path.write_text(json.dumps(same_scope) + "\n")
    report = ingest_files([path], store)
    assert report.problems == 0, report.errors
    [trajectory] = store.iter_trajectories()
    assert [step[0] for step in _steps(trajectory)] == ["get_weather", "get_weather", "convert_temp", "convert_temp", "answer", "answer"]


def _with_first_user_message(request: dict[str, Any], scope: str, text: str) -> dict[str, Any]:
    changed = copy.deepcopy(request)
    for span in _scope_spans(changed, scope):
        for attribute in span["attributes"]:
            if attribute["key"] == "llm.input_messages.0.message.content":
                attribute["value"] = {"stringValue": text}
    return changed


def test_a_call_with_the_same_reply_to_the_same_last_message_but_another_history_is_a_call_of_its_own(tmp_path, store):
    """The echo rule compares the whole history (found by review: with the reply and the last message alone, another
    user's call within the run's call, its own conversation answered alike, was dropped as an echo)."""
    [request] = _requests("double_traced_openinference_langchain_openai.jsonl")
    path = tmp_path / "other.jsonl"
    other = _with_first_user_message(request, "openinference.instrumentation.openai", "What's the weather in Rome, in Kelvin?")
    path.write_text(json.dumps(other) + "\n")
    report = ingest_files([path], store)
    assert (report.problems, len(report.ingested)) == (0, 2), report.errors
    assert sorted(t.task for t in store.iter_trajectories()) == [
        "What's the weather in Paris, in Fahrenheit?",
        "What's the weather in Rome, in Kelvin?",
    ]
    for trajectory in store.iter_trajectories():  # each conversation whole: its later calls answer alike, not echoes
        assert [step[0] for step in _steps(trajectory)] == ["get_weather", "convert_temp", "answer"], trajectory.task
