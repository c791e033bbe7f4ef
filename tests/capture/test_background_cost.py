"""Capture's background work per run (issue 11.5: what competes with the agent under sustained load) is done once where
it repeats: the store writer is not woken at every run's end, spans already in GenAI form are not copied by
``normalize``, an agent's tool schemas are normalised once for all its runs, and each message is converted without
LangChain's ``convert_to_messages`` where it is a message object already, its calls' arguments decoded once. Each stays exact: the same stored
trajectories (tests/capture/test_golden.py holds the stored rows and exported spans of real graphs)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import langchain_core.messages as lc_messages
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks.capture_overhead import TASK, build_graph
from ee_middleware import LocalExperienceStore, messages, record_experience
from ee_middleware.capture import assembler
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import AssemblyOptions, assemble
from ee_middleware.capture.normalize import normalize
from ee_middleware.capture.processor import ExperienceSpanProcessor
from ee_middleware.capture.spandata import SpanData, from_readable_span


def _recorded_runs(tmp_path: Path, runs: int) -> list[list[SpanData]]:
    """The spans of ``runs`` real runs of the capture benchmark's ReAct graph (benchmarks/capture_overhead.py: an
    instant model calling trivial tools) recorded by capture, per run (read from the user's exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = record_experience(build_graph(), app="bench", store=tmp_path / "store", tracer_provider=provider)
    for _ in range(runs):
        agent.invoke(TASK)
    agent.flush()
    agent.recorder.close()
    by_run: dict[str, list[SpanData]] = {}
    for span in exporter.get_finished_spans():
        data = from_readable_span(span)
        by_run.setdefault(str(data.attributes[sc.EE_TRAJECTORY_ID]), []).append(data)
    provider.shutdown()
    return list(by_run.values())


class _CountingCondition(threading.Condition):
    """The processor's own condition, counting the times its writer woke from a wait."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.wakes = 0

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        self.wakes += 1
        return woke


def test_the_store_writer_is_not_woken_at_every_runs_end(tmp_path):
    options = AssemblyOptions(source="record_experience", model_calls_required=False)  # runs that called no model are stored
    processor = ExperienceSpanProcessor(
        LocalExperienceStore(tmp_path / "written"), recorder_id="bench", options=options, min_write_interval_s=0.6
    )
    processor._wake = _CountingCondition(processor._lock)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    try:
        processor.force_flush()
        for i in range(40):  # 40 runs ending while the writer waits out its interval (one write for all of them)
            attributes = {sc.OPERATION_NAME: sc.OP_INVOKE_AGENT, sc.EE_TRAJECTORY_ID: f"r{i}", sc.EE_RECORDER: "bench"}
            root = tracer.start_span("invoke_agent bench", attributes=attributes)
            root.end()
            time.sleep(0.005)
        wakes = processor._wake.wakes
        assert processor.force_flush()
        assert LocalExperienceStore(tmp_path / "written").trajectories().height == 40
    finally:
        provider.shutdown()
    # its first wait (an empty queue) ends with the first run; then it waits out min_write_interval_s once (a few more
    # wake-ups where the machine is slow), not once per run
    assert wakes <= 5, f"the writer woke {wakes} times for 40 runs"


def test_spans_already_in_genai_form_are_not_copied_by_normalize(tmp_path):
    [run] = _recorded_runs(tmp_path, 1)
    assert {s.attributes[sc.OPERATION_NAME] for s in run} == {sc.OP_INVOKE_AGENT, sc.OP_CHAT, sc.OP_EXECUTE_TOOL}
    for span in run:
        assert normalize(span) is span, span.name
    # a span of another dialect still gets its GenAI attributes
    openinference = SpanData("t" * 32, "1" * 16, None, "ChatOpenAI", 1, 2, {"openinference.span.kind": "LLM", "llm.model_name": "gpt"})
    filled = normalize(openinference)
    assert filled is not openinference
    assert filled.attributes[sc.OPERATION_NAME] == sc.OP_CHAT and filled.attributes[sc.REQUEST_MODEL] == "gpt"
    assert openinference.attributes == {"openinference.span.kind": "LLM", "llm.model_name": "gpt"}


def test_an_agents_tool_schemas_are_normalised_twice_for_all_its_runs(tmp_path, monkeypatch):
    runs = _recorded_runs(tmp_path, 4)
    options = AssemblyOptions(source="record_experience", model_calls_required=False)
    expected = [assemble(run, options) for run in runs]  # (the schemas of these tool definitions may be known already)
    calls = []
    normalise = assembler.openai_tool_schemas
    monkeypatch.setattr(assembler, "openai_tool_schemas", lambda tools: calls.append(1) or normalise(tools))
    monkeypatch.setattr(assembler, "_TOOL_SCHEMAS", assembler._ToolSchemaCache())  # none known yet
    again = [assemble(run, options) for run in runs]
    # kept the second time they are seen (tools that change at every run are not kept: see the test below)
    assert len(calls) == 2, "each run normalised the same tool schemas again"
    assert [t.model_dump_json() for t in again] == [t.model_dump_json() for t in expected]
    assert [t["function"]["name"] for t in again[0].tools] == ["add", "echo"]
    # each run has its own schemas: a change to one trajectory's is not in the next run's
    again[0].tools[0]["function"]["description"] = "changed"
    assert assemble(runs[1], options).tools == json.loads(expected[1].model_dump_json())["tools"]


def _definitions(session: int, tools: int = 20, description: str = "") -> str:
    """The ``gen_ai.tool.definitions`` text of a tool set that is new in each session (an enum of the user's files)."""
    return json.dumps(
        [
            {
                "type": "function",
                "function": {
                    "name": f"t{k}",
                    "description": f"tool {k} for session {session}. {description}",
                    "parameters": {
                        "type": "object",
                        "properties": {"x": {"type": "string", "enum": [f"s{session}-{j}" for j in range(8)]}},
                    },
                },
            }
            for k in range(tools)
        ]
    )


def _tool_schemas(definitions: str) -> list:
    return assembler._RunMemo().tool_schemas(SpanData("t" * 32, "1" * 16, None, "chat m", 1, 2, {sc.TOOL_DEFINITIONS: definitions}))


def test_a_tool_set_new_in_each_run_costs_what_it_cost_without_the_cache(monkeypatch):
    """Tools that change at every run (a description with the date, per-session enums, dynamic MCP tools) are normalised
    once per run and nothing more: not encoded and decoded again to be kept. Was: each such run paid two more encodings,
    a decoding and a deep compare to keep a set never seen again (tool schemas 1.96x slower per run: 201 -> 394 us)."""
    monkeypatch.setattr(assembler, "_TOOL_SCHEMAS", assembler._ToolSchemaCache(), raising=False)
    encoded = []
    encode = assembler.dumps
    monkeypatch.setattr(assembler, "dumps", lambda value: encoded.append(1) or encode(value))
    for session in range(100):
        definitions = _definitions(session)
        assert _tool_schemas(definitions) == messages.openai_tool_schemas(json.loads(definitions))
    assert encoded == []
    cache = assembler._TOOL_SCHEMAS
    assert len(cache.entries) == 0 and len(cache.seen) <= cache.max_seen
    # a set seen again is kept, and its runs after decode it
    again = _definitions(99)
    assert _tool_schemas(again) == _tool_schemas(again) == messages.openai_tool_schemas(json.loads(again))
    assert list(cache.entries) == [again]


def test_the_kept_tool_schemas_are_bounded_by_their_size_and_the_one_in_use_stays(monkeypatch):
    """MCP-sized tool sets (100 tools each) seen twice each are kept up to the byte budget, not 64 of them (20 MiB for
    the life of the process); the least recently used go first, so an agent's set in use all along is still kept."""
    monkeypatch.setattr(assembler, "_TOOL_SCHEMAS", assembler._ToolSchemaCache(), raising=False)
    cache = assembler._TOOL_SCHEMAS
    in_use = _definitions(-1, tools=100, description="Lists, filters and returns the items of a repository. " * 8)
    for session in range(80):
        _tool_schemas(in_use)
        definitions = _definitions(session, tools=100, description="Lists, filters and returns the items of a repository. " * 8)
        _tool_schemas(definitions)
        _tool_schemas(definitions)
        assert cache.chars == sum(len(k) + len(v) for k, v in cache.entries.items()) <= cache.max_chars
    assert in_use in cache.entries
    assert 1 < len(cache.entries) < cache.max_entries
    # a set over a quarter of the budget is not kept; a small budget holds what fits
    small = assembler._ToolSchemaCache(max_chars=4 * len(in_use))
    schemas = messages.openai_tool_schemas(json.loads(in_use))
    small.put(in_use, schemas)
    assert small.entries == {}
    roomy = assembler._ToolSchemaCache(max_chars=8 * len(in_use))
    for session in range(6):
        definitions = _definitions(session, tools=100, description="Lists, filters and returns the items of a repository. " * 8)
        roomy.put(definitions, messages.openai_tool_schemas(json.loads(definitions)))
    assert 0 < len(roomy.entries) < 6 and roomy.chars <= roomy.max_chars


T0 = 1_700_000_000 * 10**9  # span times (a time of 0 is read as "not recorded": now)


def test_tool_schemas_json_holds_only_as_text_give_the_same_trajectory_every_run():
    # a NaN in a schema (JSON has none) is normalised to the text "nan": the schemas kept for the next run hold that text
    parameters = {"type": "object", "properties": {"n": {"type": "number", "maximum": float("nan")}}}
    definitions = json.dumps([{"type": "function", "name": "f", "parameters": parameters}])
    chat = SpanData(
        "t" * 32,
        "1" * 16,
        "0" * 16,
        "chat m",
        T0 + 1,
        T0 + 2,
        {
            sc.OPERATION_NAME: sc.OP_CHAT,
            sc.REQUEST_MODEL: "m",
            sc.INPUT_MESSAGES: json.dumps([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]),
            sc.OUTPUT_MESSAGES: json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "hello"}]}]),
            sc.TOOL_DEFINITIONS: definitions,
        },
    )
    root = SpanData("t" * 32, "0" * 16, None, "invoke_agent a", T0, T0 + 3, {sc.OPERATION_NAME: sc.OP_INVOKE_AGENT})
    first = assemble([root, chat])
    assert assemble([root, chat]).model_dump_json() == first.model_dump_json()
    assert first.tools[0]["function"]["parameters"]["properties"]["n"]["maximum"] == "nan"


def test_message_objects_are_converted_without_langchains_convert_to_messages(monkeypatch):
    calls = []
    convert = lc_messages.convert_to_messages
    monkeypatch.setattr(lc_messages, "convert_to_messages", lambda items: calls.append(list(items)) or convert(items))
    imported = getattr(messages, "_langchain_messages", None)  # (LangChain's names, imported once)
    try:
        if imported is not None:
            imported.cache_clear()
        history = [
            HumanMessage("add 1 and 2"),
            AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
            ToolMessage("3", tool_call_id="c1"),
        ]
        assert messages.langchain_to_openai(history) == [
            {"role": "user", "content": "add 1 and 2"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":1,"b":2}'}}],
            },
            {"role": "tool", "content": "3", "tool_call_id": "c1"},
        ]
        assert calls == []
        # what is not a message object yet is converted by LangChain, as before
        assert messages.langchain_to_openai([history[0], ("user", "and 3")]) == [
            {"role": "user", "content": "add 1 and 2"},
            {"role": "user", "content": "and 3"},
        ]
        assert len(calls) == 1
    finally:
        if imported is not None:
            imported.cache_clear()  # (not to keep the stand-in)


def test_a_tool_calls_arguments_are_decoded_once(monkeypatch):
    decoded = []

    def loads(text, **kwargs):
        decoded.append(text)
        return json.loads(text, **kwargs)

    monkeypatch.setattr(messages, "json", SimpleNamespace(loads=loads, dumps=json.dumps, JSONDecodeError=json.JSONDecodeError))
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    [genai] = messages.openai_to_genai([{"role": "assistant", "content": "", "tool_calls": [call]}])
    assert genai["parts"] == [{"type": "tool_call", "id": "c1", "name": "add", "arguments": {"a": 1, "b": 2}}]
    assert decoded == ['{"a": 1, "b": 2}']
    # text that is no JSON object is kept as written, as before
    call["function"]["arguments"] = "[1, 2]"
    assert messages.openai_to_genai([{"role": "assistant", "content": "", "tool_calls": [call]}])[0]["parts"][0]["arguments"] == "[1, 2]"
