"""Real traces of older instrumentation versions (fixtures ``openinference_0_1_40_*``, ``openllmetry_0_40_*``; their
``.meta.json`` says how they were made), which write less than the versions the other fixtures hold."""

from __future__ import annotations

from ee_middleware.capture.normalize import _call_ids_from_results
from ee_middleware.ingest import ingest_files
from tests.ingest.test_instrumentations import FIXTURES, _steps

WEATHER = [
    ("get_weather", {"city": "Paris"}, "20C and sunny in Paris", False),
    ("convert_temp", {"celsius": 20}, "68F", False),
    ("answer", "It is 20C (68F) and sunny in Paris."),
]


def test_openinference_0_1_40_calls_get_the_ids_their_results_answer_and_the_tools_offered(store):
    """OpenInference's LangChain instrumentation 0.1.40 writes no tool call ids, only each tool message's
    ``tool_call_id``, and lists the tools in ``llm.invocation_parameters`` only. Before, the calls were stored with id
    ``""`` beside tool messages of real ids (an export OpenAI's fine-tuning refuses), and with no tools (replay skipped
    the trajectory)."""
    report = ingest_files([FIXTURES / "openinference_0_1_40_no_call_ids.jsonl"], store)
    assert report.problems == 0, report.errors
    [t] = store.iter_trajectories()
    assert (_steps(t), t.status) == (WEATHER, "completed")
    ids = [s.action.tool_call.id for s in t.steps if s.action.kind == "tool_call"]
    assert all(ids) and ids == [m["tool_call_id"] for m in t.messages if m["role"] == "tool"]
    assert [c["id"] for m in t.messages if m["role"] == "assistant" for c in m.get("tool_calls") or []] == ids
    assert sorted(tool["function"]["name"] for tool in t.tools) == ["convert_temp", "get_weather"]


def test_openllmetry_0_40_runs_keep_their_thread(store):
    """OpenLLMetry 0.40 writes no ``traceloop.association.properties``; the thread is in each span's
    ``traceloop.entity.input`` metadata. Before, both turns were stored with no thread."""
    report = ingest_files([FIXTURES / "openllmetry_0_40_two_turns.jsonl"], store)
    assert report.problems == 0, report.errors
    turns = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert [(t.task, t.thread_id, t.status) for t in turns] == [
        ("What's the weather in Paris, in Fahrenheit?", "T1", "completed"),
        ("And the weather again, please?", "T1", "completed"),
    ]
    assert all(_steps(t) == WEATHER for t in turns)


def test_call_ids_are_taken_from_results_only_where_they_answer_the_calls_one_to_one():
    def calls(*ids: str) -> dict:
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids],
        }

    def result(call_id: str) -> dict:
        return {"role": "tool", "content": "ok", "tool_call_id": call_id}

    assert _call_ids_from_results([calls("", ""), result("a"), result("b")])[0] == calls("a", "b")
    assert _call_ids_from_results([calls("x", ""), result("x"), result("b")])[0] == calls("x", "b")
    # too few results, a result naming no call, an id another call already has: nothing is guessed
    assert _call_ids_from_results([calls("", ""), result("a")])[0] == calls("", "")
    assert _call_ids_from_results([calls(""), {"role": "tool", "content": "ok"}])[0] == calls("")
    assert _call_ids_from_results([calls("x", ""), result("a"), result("b")])[0] == calls("x", "")
