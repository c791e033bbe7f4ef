"""Trace files of agent SDKs that trace themselves: each agent run is one trajectory with all its steps.

The fixtures are real: ``fixtures/make_agent_sdk_fixtures.py`` ran the shop's two turns on one thread
under AWS Strands Agents 1.62 (an OpenAI-compatible model served by a local HTTP server) with its
default telemetry, with ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``, with that plus
``gen_ai_span_attributes_only``, and with ``gen_ai_tool_definitions`` (the tools on the agent span only: before,
such runs were stored without them). Before ingest read Strands' shapes, its default files stored every
step as an answer whose text was the JSON of Converse content blocks (``[{"toolUse": ...}]``: no tool
call, no observation, the task ``[{"text": ...}]``), and its latest-conventions files (messages in
``gen_ai.client.inference.operation.details`` events) were refused: "model spans carry no messages".

``fixtures/make_vercel_ai_fixture.mjs`` ran them with the Vercel AI SDK 6 (``generateText`` with tools,
``experimental_telemetry`` on, the thread id in its metadata) in Node, encoded by OpenTelemetry JS's
OTLP JSON serializer. Before ingest read its ``ai.*`` spans, such a file was refused as spans of an
instrumentation ingest does not understand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from tests.ingest.test_instrumentations import FIRST_RUN_STEPS, FIXTURES, TURN_1, TURN_2, _steps

STRANDS = {
    "strands": "strands_shop.jsonl",
    "strands-latest": "strands_latest_shop.jsonl",
    "strands-attributes": "strands_attributes_shop.jsonl",
    "strands-tools": "strands_tools_shop.jsonl",
}
SDKS = {**STRANDS, "vercel-ai": "vercel_ai_shop.jsonl"}
MODEL_SPANS = ("chat", "ai.generateText.doGenerate")
ERROR_TEXT = "the supplier takes at most 10 apples per order, not 50"


def _ingest(store: Any, path: Path) -> tuple[Any, list[Any]]:
    report = ingest_files([path], store)
    return report, sorted(store.iter_trajectories(), key=lambda t: t.started_at)


def _second_run_without_its_last_model_call(tmp_path: Path, fixture: str, model_spans: tuple[str, ...]) -> Path:
    request = json.loads((FIXTURES / fixture).read_text().splitlines()[1])
    spans = [s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    cut = {max((s for s in spans if s["name"] in model_spans), key=lambda s: int(s["startTimeUnixNano"]))["spanId"]}
    while below := {s["spanId"] for s in spans if s.get("parentSpanId") in cut} - cut:  # and the spans under it
        cut |= below
    for rs in request["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            ss["spans"] = [s for s in ss["spans"] if s["spanId"] not in cut]
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(request) + "\n")
    return path


@pytest.mark.parametrize("telemetry", SDKS)
def test_agent_sdk_runs_are_trajectories_with_their_tool_calls_and_observations(store, telemetry):
    meta = json.loads((FIXTURES / SDKS[telemetry]).with_suffix(".meta.json").read_text())
    report, (first, second) = _ingest(store, FIXTURES / SDKS[telemetry])
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert (first.task, second.task) == (TURN_1, TURN_2)
    assert _steps(first) == FIRST_RUN_STEPS
    check, order, answer = _steps(second)
    assert check == ("check_stock", {"fruit": "apples"}, "12 apples in stock", False)
    assert order[:2] == ("order", {"fruit": "apples", "quantity": 50}) and order[3] is True and ERROR_TEXT in order[2]
    assert answer == ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order).")
    for t in (first, second):
        assert (t.status, t.thread_id, t.model) == ("completed", meta["thread"], "scripted-shop-model")
        assert t.steps[0].state[0] == {"role": "system", "content": meta["system"]}
        # Strands writes tool definitions on its agent span only, and only when asked (gen_ai_tool_definitions); the AI SDK
        # on its model spans (ai.prompt.tools)
        offered = {tool["function"]["name"]: tool["function"]["parameters"] for tool in t.tools}
        assert list(offered) == ([] if telemetry in ("strands", "strands-latest", "strands-attributes") else ["check_stock", "order"])
        if offered:
            assert (offered["order"]["required"], set(offered["order"]["properties"])) == (["fruit", "quantity"], {"fruit", "quantity"})
    assert [m["role"] for m in second.steps[0].state] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    assert second.steps[0].decision_index == second.steps[1].decision_index == 0, "two calls of one reply share a decision"


@pytest.mark.parametrize("telemetry", SDKS)
def test_agent_sdk_tool_spans_give_the_observations_no_later_model_call_shows(tmp_path, store, telemetry):
    """The second run cut before its last model call: the results are read from the tool spans (Strands'
    events, or the result's Converse blocks in ``gen_ai.tool.call.result``; the AI SDK's
    ``ai.toolCall.result``), the failed order flagged from the span's status."""
    report, (trajectory,) = _ingest(store, _second_run_without_its_last_model_call(tmp_path, SDKS[telemetry], MODEL_SPANS))
    assert report.problems == 0, report.errors
    check, order = _steps(trajectory)
    assert check == ("check_stock", {"fruit": "apples"}, "12 apples in stock", False)
    assert order[:2] == ("order", {"fruit": "apples", "quantity": 50}) and order[3] is True and ERROR_TEXT in order[2]


TOOL_SPANS = ("execute_tool ", "ai.toolCall")  # Strands' tool spans (named after the tool), the AI SDK's
AI_SDK_ERRORS: dict[str, dict[str, Any] | None] = {  # the failed order's tool-result part as each AI SDK version writes it
    "v6-error-text": None,  # as recorded: "output": {"type": "error-text", "value": <the error's message>}
    "v5-error-json": {"output": {"type": "error-json", "value": {"error": ERROR_TEXT}}},
    "v4-is-error": {"result": ERROR_TEXT, "isError": True},
}
MESSAGE_ERRORS = {"strands": ("strands_shop.jsonl", None), "strands-tools": ("strands_tools_shop.jsonl", None)} | {
    f"vercel-ai-{version}": ("vercel_ai_shop.jsonl", part) for version, part in AI_SDK_ERRORS.items()
}


def _without_tool_spans(tmp_path: Path, fixture: str, failed_part: dict[str, Any] | None) -> Path:
    """The fixture's requests with no tool spans (the model calls' messages the only record of the tools' results); where
    ``failed_part`` is given, the AI SDK prompts' result of the failed order written so instead (its ids kept)."""
    lines, rewritten = [], 0
    for line in (FIXTURES / fixture).read_text().splitlines():
        request = json.loads(line)
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                ss["spans"] = [s for s in ss["spans"] if not s["name"].startswith(TOOL_SPANS)]
                for attribute in (a for s in ss["spans"] for a in s["attributes"] if a["key"] == "ai.prompt.messages"):
                    if failed_part is not None:
                        messages = json.loads(attribute["value"]["stringValue"])
                        for message in messages:
                            for i, part in enumerate(message["content"] if isinstance(message["content"], list) else []):
                                if part.get("toolCallId") == "call_order_apples" and part["type"] == "tool-result":
                                    assert part["output"]["type"] == "error-text"
                                    ids = {k: part[k] for k in ("type", "toolCallId", "toolName")}
                                    message["content"][i] = {**ids, **failed_part}
                                    rewritten += 1
                        attribute["value"]["stringValue"] = json.dumps(messages)
        lines.append(json.dumps(request))
    assert failed_part is None or rewritten, "the fixture's prompts hold the failed order's result"
    path = tmp_path / "no_tool_spans.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("telemetry", MESSAGE_ERRORS)
def test_agent_sdk_tool_errors_in_the_messages_are_error_observations(tmp_path, store, telemetry):
    """No tool span says the order failed (the model calls traced alone): the next call's messages do, as the SDK tells
    the model. Strands sends Bedrock Converse's ``toolResult`` with ``status: "error"``; the AI SDK a ``tool-result``
    whose ``output`` is ``error-text`` (v6, as recorded) or ``error-json`` (v5), or v4's ``result`` with ``isError``.
    The step is an error with the text the model saw; the successful results stay successes. Before, the failed order
    was a success, so it was taught as a good call."""
    fixture, failed_part = MESSAGE_ERRORS[telemetry]
    report, (first, second) = _ingest(store, _without_tool_spans(tmp_path, fixture, failed_part))
    assert (report.problems, report.runs) == (0, 2), report.errors
    assert _steps(first) == FIRST_RUN_STEPS
    check, order, answer = _steps(second)
    assert check == ("check_stock", {"fruit": "apples"}, "12 apples in stock", False)
    assert order[:2] == ("order", {"fruit": "apples", "quantity": 50}) and order[3] is True and ERROR_TEXT in order[2]
    assert answer == ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order).")
    assert all("is_error" not in m for step in second.steps for m in step.state), "the mark is no part of a message"


OPENAI_AGENTS = {"responses": "openai_agents_logfire_responses.jsonl", "chat-completions": "openai_agents_logfire_chat.jsonl"}
AGENTS_SDK_TOOL_ERROR = "An error occurred while running the tool. Please try again."  # the SDK's default: the error's details redacted


@pytest.mark.parametrize("model", OPENAI_AGENTS)
def test_openai_agents_sdk_traced_by_logfire_is_one_trajectory_per_run(store, model):
    """``fixtures/make_openai_agents_fixture.py``: the OpenAI Agents SDK 0.24 with ``logfire.instrument_openai_agents()``.
    Each ``Runner.run`` (its ``Task`` span, the agent and its turns under it) is one trajectory; the
    Responses API model's messages are Logfire's ``events`` attribute (the reply its trailing assistant
    events), the Chat Completions model's its ``input`` / ``output``; ``Function`` spans are the tool
    calls; the thread is the trace's ``group_id``. Before, the Responses runs were refused ("model
    spans carry no messages") and the Chat Completions runs not read at all."""
    meta = json.loads((FIXTURES / OPENAI_AGENTS[model]).with_suffix(".meta.json").read_text())
    report, (first, second) = _ingest(store, FIXTURES / OPENAI_AGENTS[model])
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert (first.task, second.task) == (TURN_1, TURN_2)
    assert _steps(first) == FIRST_RUN_STEPS
    assert _steps(second) == [
        ("check_stock", {"fruit": "apples"}, "12 apples in stock", False),
        ("order", {"fruit": "apples", "quantity": 50}, AGENTS_SDK_TOOL_ERROR, True),
        ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order)."),
    ]
    for t in (first, second):
        assert (t.status, t.thread_id, t.model, t.app) == ("completed", meta["thread"], "scripted-shop-model", "fruit-shop")
        assert t.steps[0].state[0] == {"role": "system", "content": meta["system"]}
        # the Responses API echoes the tools it was given; a generation span (Chat Completions) carries none
        assert [tool["function"]["name"] for tool in t.tools] == (["check_stock", "order"] if model == "responses" else [])
    assert [m["role"] for m in second.steps[0].state] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    assert second.steps[0].decision_index == second.steps[1].decision_index == 0, "two calls of one reply share a decision"


@pytest.mark.parametrize("model", OPENAI_AGENTS)
def test_openai_agents_sdk_function_spans_give_the_observations_no_later_model_call_shows(tmp_path, store, model):
    model_spans = ("Responses API with {gen_ai.request.model!r}", "Chat completion with {gen_ai.request.model!r}")
    report, (trajectory,) = _ingest(store, _second_run_without_its_last_model_call(tmp_path, OPENAI_AGENTS[model], model_spans))
    assert report.problems == 0, report.errors
    assert _steps(trajectory) == [
        ("check_stock", {"fruit": "apples"}, "12 apples in stock", False),
        ("order", {"fruit": "apples", "quantity": 50}, AGENTS_SDK_TOOL_ERROR, True),
    ]


ADK = {"adk": "adk_shop.jsonl", "adk-legacy": "adk_legacy_shop.jsonl"}
ADK_STEPS = (
    [
        ("check_stock", {"fruit": "pears"}, '{"result":"0 pears in stock"}', False),  # ADK answers a function's value as {"result": ...}
        ("order", {"fruit": "pears", "quantity": 5}, '{"result":"ordered 5 pears"}', False),
        ("answer", "We had no pears, so I ordered 5."),
    ],
    [
        ("check_stock", {"fruit": "apples"}, '{"result":"12 apples in stock"}', False),
        ("order", {"fruit": "apples", "quantity": 50}, '{"error":"the supplier takes at most 10 apples per order, not 50"}', True),
        ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order)."),
    ],
)


@pytest.mark.parametrize("schema", ADK)
def test_google_adk_runs_are_trajectories(store, schema):
    """``fixtures/make_adk_fixture.py``: Google ADK 2.13's own spans. Its default schema follows the GenAI conventions
    (read as they are, with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=SPAN_ONLY``); its legacy one
    (``ADK_TELEMETRY_SCHEMA_VERSION_OPT_IN=1``, ADK 1.x's) writes each model call as a ``call_llm`` span whose
    ``gcp.vertex.agent.llm_request`` / ``llm_response`` hold google-genai ``Content`` (over a ``generate_content``
    span without content), and tool calls' ``gcp.vertex.agent.tool_call_args`` / ``tool_response``. Before, the
    legacy runs were refused: "model spans carry no messages"."""
    meta = json.loads((FIXTURES / ADK[schema]).with_suffix(".meta.json").read_text())
    report, (first, second) = _ingest(store, FIXTURES / ADK[schema])
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert (first.task, second.task) == (TURN_1, TURN_2)
    assert (_steps(first), _steps(second)) == ADK_STEPS
    for t in (first, second):
        assert (t.status, t.thread_id, t.model) == ("completed", meta["thread"], "openai/scripted-shop-model")
        assert t.steps[0].state[0]["role"] == "system" and t.steps[0].state[0]["content"].startswith(meta["system"])
        assert [tool["function"]["name"] for tool in t.tools] == ["check_stock", "order"]
        assert t.tools[1]["function"]["parameters"]["required"] == ["fruit", "quantity"]
    assert [m["role"] for m in second.steps[0].state] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    assert [[s.decision_index for s in t.steps] for t in (first, second)] == [[0, 1, 2], [0, 0, 1]]
    assert [m["role"] for m in second.messages][-2:] == ["tool", "assistant"] and len(second.messages) == 12


@pytest.mark.parametrize("schema", ADK)
def test_google_adk_tool_spans_give_the_observations_no_later_model_call_shows(tmp_path, store, schema):
    model_spans = ("call_llm",) if schema == "adk-legacy" else ("generate_content openai/scripted-shop-model",)
    report, (trajectory,) = _ingest(store, _second_run_without_its_last_model_call(tmp_path, ADK[schema], model_spans))
    assert report.problems == 0, report.errors
    # the tool span's JSON text (as json.dumps wrote it, what LiteLLM sent the model) where no model input shows it
    assert [(*s[:2], json.loads(s[2]), s[3]) for s in _steps(trajectory)] == [(*s[:2], json.loads(s[2]), s[3]) for s in ADK_STEPS[1][:2]]


LITELLM = {"request-span": "litellm_otel_request_span_shop.jsonl", "latest": "litellm_otel_latest_shop.jsonl"}


@pytest.mark.parametrize("mode", LITELLM)
def test_litellm_otel_callback_model_spans_keep_their_tool_calls(store, mode):
    """``fixtures/make_litellm_fixture.py``: LiteLLM 1.110's ``callbacks=["otel"]`` under an app span per turn, one span
    per call (``USE_OTEL_LITELLM_REQUEST_SPAN=true``; also with the latest conventions). Its messages are text
    parts with OpenAI's ``tool_calls`` / ``tool_call_id`` beside them, and a reply's tool calls are
    ``gen_ai.completion.{i}.function_call.*`` without their ids (the next call's history has them). Before, every
    tool call was lost: each run was one answer step, its history assistant messages with no calls."""
    report, (first, second) = _ingest(store, FIXTURES / LITELLM[mode])
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert (first.task, second.task) == (TURN_1, TURN_2)
    assert _steps(first) == FIRST_RUN_STEPS
    assert _steps(second) == [  # no tool span: the error is the text the app gave the model, not flagged
        ("check_stock", {"fruit": "apples"}, "12 apples in stock", False),
        ("order", {"fruit": "apples", "quantity": 50}, f"Error: {ERROR_TEXT}", False),
        ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order)."),
    ]
    for t in (first, second):
        assert (t.status, t.thread_id, t.model) == ("completed", "shop-thread-1", "scripted-shop-model")
        assert [tool["function"]["name"] for tool in t.tools] == ["check_stock", "order"]
    state = second.steps[0].state
    assert [m["role"] for m in state] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    assert [(c["id"], c["function"]["name"]) for c in state[2]["tool_calls"]] == [("call_stock_pears", "check_stock")]
    assert state[3]["tool_call_id"] == "call_stock_pears"
    assert second.steps[0].decision_index == second.steps[1].decision_index == 0, "two calls of one reply share a decision"


def test_litellm_calls_written_onto_the_apps_span_are_read_from_their_raw_request_spans(store, tmp_path):
    """LiteLLM's default with a span active: it writes each call's attributes onto the app's span (the calls overwrite
    each other, those logged after the span ended are lost) and one ``raw_gen_ai_request`` child per call, whose
    ``llm.openai.*`` attributes are the provider's request and response as Python ``repr`` text. Before, each run was
    refused (the app's span is no call's record); now each raw span is its call: the same trajectories as with one
    span per call, the app's span no decision of its own (no step twice)."""
    report, (first, second) = _ingest(store, FIXTURES / "litellm_otel_shop.jsonl")
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    other = type(store)(tmp_path / "per-call")
    _, per_call = _ingest(other, FIXTURES / LITELLM["request-span"])
    for got, expected in zip((first, second), per_call, strict=True):
        assert _steps(got) == _steps(expected)
        assert [s.decision_index for s in got.steps] == [s.decision_index for s in expected.steps]
        fields = ("task", "status", "thread_id", "model", "final_answer", "tools", "messages")
        assert [getattr(got, f) for f in fields] == [getattr(expected, f) for f in fields]
        assert [s.state for s in got.steps] == [s.state for s in expected.steps]
    # the reply's call ids are those the raw response gave the model
    assert [c["id"] for c in second.messages[-4]["tool_calls"]] == ["call_stock_apples", "call_order_apples"]


def test_litellm_request_span_runs_count_each_call_once(store):
    """With one ``litellm_request`` span per call, its ``raw_gen_ai_request`` child describes the same call: one decision
    per call, not two."""
    report, (first, second) = _ingest(store, FIXTURES / LITELLM["request-span"])
    assert report.problems == 0, report.errors
    assert [s.decision_index for s in first.steps] == [0, 1, 2] and [s.decision_index for s in second.steps] == [0, 0, 1]


def test_litellm_raw_spans_without_a_response_are_refused_naming_the_setting(store, tmp_path):
    """A raw span that cannot be read as a call (here without its response: LiteLLM writes ``llm.{provider}.*`` of the
    response only when the provider answered JSON text) leaves the app's span as the only record of the calls, which
    overwrite each other: the run is refused, naming the setting that gives each call a span of its own."""
    lines = (FIXTURES / "litellm_otel_shop.jsonl").read_text().replace('"key": "llm.openai.choices"', '"key": "llm.openai.other"')
    path = tmp_path / "no_response.jsonl"
    path.write_text(lines)
    report, trajectories = _ingest(store, path)
    assert (trajectories, report.problems) == ([], 2), report.errors
    assert all("raw_gen_ai_request" in error and "USE_OTEL_LITELLM_REQUEST_SPAN=true" in error for error in report.errors), report.errors


def test_crewai_through_openinference_keeps_its_tool_calls_and_tools(store):
    """``fixtures/make_crewai_fixture.py``: CrewAI 1.15 with OpenInference's CrewAI instrumentation (event listener, LLM
    spans on): one crew per turn. A reply that is tool calls has no ``llm.output_messages``, only ``output.value`` (the
    calls as OpenAI's JSON); the calls in later inputs name their function in quotes (``'check_stock'``); the tools are
    one ``llm.tools`` JSON list whose property schemas are Python ``repr`` text. Before, each run was one answer step
    (every tool call lost) and offered no tools."""
    report, (first, second) = _ingest(store, FIXTURES / "crewai_shop.jsonl")
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert TURN_1 in first.task and TURN_2 in second.task  # CrewAI's prompt around the task's description
    assert _steps(first) == FIRST_RUN_STEPS
    assert _steps(second) == [
        ("check_stock", {"fruit": "apples"}, "12 apples in stock", False),
        ("order", {"fruit": "apples", "quantity": 50}, f"Error executing tool: {ERROR_TEXT}", True),
        ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order)."),
    ]
    for t in (first, second):
        assert (t.status, t.model) == ("completed", "scripted-shop-model")
        offered = {tool["function"]["name"]: tool["function"]["parameters"] for tool in t.tools}
        assert list(offered) == ["check_stock", "order"]
        assert offered["order"]["required"] == ["fruit", "quantity"]
        assert offered["order"]["properties"]["quantity"] == {"title": "Quantity", "type": "integer"}
    assert second.steps[0].decision_index == second.steps[1].decision_index == 0, "two calls of one reply share a decision"


def test_an_agent_traced_without_its_model_calls_is_a_problem_naming_what_to_trace(store):
    """OpenInference's CrewAI instrumentation by default (``instrument()``) traces the crew, the agent and the tools,
    not the model calls. Before, the problem said to 'enable message capture', which changes nothing."""
    report, trajectories = _ingest(store, FIXTURES / "crewai_wrappers_shop.jsonl")
    assert (trajectories, report.problems) == ([], 2), report.errors
    for error in report.errors:
        assert "no model call" in error and "use_event_listener=True" in error and "message capture" not in error, error


def test_openai_agents_responses_spans_without_the_response_take_the_trailing_assistant_events_as_the_reply(tmp_path, store):
    """The real Responses fixture without Logfire's ``response`` attribute (scrubbed, or too large to keep): the reply is
    the trailing assistant events, and the steps are the same (the tools, which only the response echoes, are gone)."""
    lines = []
    for line in (FIXTURES / OPENAI_AGENTS["responses"]).read_text().splitlines():
        request = json.loads(line)
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    span["attributes"] = [a for a in span["attributes"] if a["key"] != "response"]
        lines.append(json.dumps(request))
    path = tmp_path / "no_response.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report, (first, second) = _ingest(store, path)
    assert report.problems == 0, report.errors
    assert _steps(first) == FIRST_RUN_STEPS and [s[0] for s in _steps(second)] == ["check_stock", "order", "answer"]
    assert first.tools == []
