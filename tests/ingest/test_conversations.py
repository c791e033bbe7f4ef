"""One trace holding several conversations made of model spans only.

Model clients traced without an agent span around their calls (LiteLLM's ``otel`` callback, OpenTelemetry's OpenAI v2
instrumentation, OpenLLMetry's OpenAI instrumentation) leave a trace of model spans under the app's own span (a web
request's). When that request runs two tool loops (``asyncio.gather`` of two conversations, or one after the other),
the trace holds the calls of both. Before, they were one run: the steps of both conversations interleaved, each
decision's state and index wrong. Now the calls are grouped by their message history (a call continues the call whose
history and reply its own history starts with; tool call ids tie them too), and each conversation is a trajectory of
its own. The one that started first keeps the name the whole run had (its root, or the root it lacks), the others are
named after their trace and first model span, so reading the same spans again finds them stored.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import run_trajectory_id
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.otlp_json import spans_to_otlp_json
from ee_middleware.messages import dumps, openai_to_genai
from tests.ingest.test_agent_sdks import LITELLM
from tests.ingest.test_instrumentations import FIRST_RUN_STEPS, FIXTURES, TURN_1, _steps

MODEL = "scripted-shop-model"
SYSTEM = "You run a fruit shop. Use the tools."


def _spans(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def _exported(exporter: Any, provider: Any, path: Path) -> tuple[Path, list[Any]]:
    """The spans finished so far, written to ``path`` as OTLP JSON (as an exporter's file holds them) once ``provider``
    is shut down; returns ``path`` and the spans."""
    finished = list(exporter.get_finished_spans())
    provider.shutdown()
    path.write_text(json.dumps(spans_to_otlp_json(finished)) + "\n")
    return path, finished


def _ingest(store: Any, *paths: Path) -> tuple[Any, list[Any]]:
    report = ingest_files(list(paths), store)
    return report, sorted(store.iter_trajectories(), key=lambda t: t.started_at)


def _two_litellm_loops_in_one_request(shift_ns: int) -> tuple[dict[str, Any], str, str]:
    """The real LiteLLM file's first turn (one ``litellm_request`` span per call, each with its ``raw_gen_ai_request``
    child, under the app's ``shop turn`` span) with a second tool loop for the same question run in the same request,
    ``shift_ns`` later (``asyncio.gather`` of two agents): a copy of the turn's call spans with span ids of their own.
    Returns the request, the app span's id and the second loop's first call's span id."""
    request = json.loads((FIXTURES / LITELLM["request-span"]).read_text().splitlines()[0])
    (turn,) = [s for s in _spans(request) if s["name"] == "shop turn"]
    ids: dict[str, str] = {}
    for rs in request["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            copies = []
            for span in ss["spans"]:
                if span is turn:
                    continue
                twin = copy.deepcopy(span)
                ids[span["spanId"]] = twin["spanId"] = f"{int(span['spanId'], 16) ^ 0xFFFF:016x}"
                for key in ("startTimeUnixNano", "endTimeUnixNano"):
                    twin[key] = str(int(span[key]) + shift_ns)
                copies.append(twin)
            for twin in copies:
                twin["parentSpanId"] = ids.get(twin["parentSpanId"], twin["parentSpanId"])
            ss["spans"].extend(copies)
    turn["endTimeUnixNano"] = str(int(turn["endTimeUnixNano"]) + shift_ns)
    first = min((s for s in _spans(request) if s["name"] == "litellm_request"), key=lambda s: int(s["startTimeUnixNano"]))
    return request, turn["spanId"], ids[first["spanId"]]


def _write(tmp_path: Path, name: str, *requests: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def test_two_litellm_tool_loops_in_one_request_are_two_trajectories(tmp_path, store):
    """Both loops run at once (each call of the second starts 10 ms after the same call of the first, before it ended):
    before, one run of six decisions (check_stock, check_stock, order, order, answer, answer)."""
    request, turn, second_first = _two_litellm_loops_in_one_request(shift_ns=10_000_000)
    report, trajectories = _ingest(store, _write(tmp_path, "two_loops.jsonl", request))
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    alone = type(store)(tmp_path / "alone")
    ingest_files([_write(tmp_path, "one_loop.jsonl", json.loads((FIXTURES / LITELLM["request-span"]).read_text().splitlines()[0]))], alone)
    (expected,) = alone.iter_trajectories()
    for got in trajectories:
        assert _steps(got) == FIRST_RUN_STEPS
        assert [s.decision_index for s in got.steps] == [0, 1, 2]
        assert [s.state for s in got.steps] == [s.state for s in expected.steps]
        fields = ("task", "status", "thread_id", "model", "final_answer", "tools", "messages")
        assert [getattr(got, f) for f in fields] == [getattr(expected, f) for f in fields]
    trace = _spans(request)[0]["traceId"]
    first, second = trajectories
    assert first.id == expected.id == run_trajectory_id(trace, turn), "the loop that started first keeps the run's name"
    assert second.id == run_trajectory_id(trace, second_first)
    assert [s.trajectory_id for s in second.steps] == [second.id] * 3


def test_ingesting_the_same_conversations_again_stores_nothing_new(tmp_path, store):
    request, _, _ = _two_litellm_loops_in_one_request(shift_ns=10_000_000)
    path = _write(tmp_path, "two_loops.jsonl", request)
    first, stored = _ingest(store, path)
    again = ingest_files([path], store)
    assert (len(again.ingested), sorted(again.already_stored)) == (0, sorted(first.ingested)), again.errors
    assert len(list(store.iter_trajectories())) == len(stored) == 2


def test_conversations_of_a_request_that_never_ended_are_found_stored_once_it_has(tmp_path, store):
    """The app's span missing (the request still running when the file was written): each conversation is stored as
    interrupted under its own name (the first under the root it lacks, as the whole run was before); the whole file
    read later stores each whole, replacing its own partial version (rejected as superseded), and again adds nothing."""
    request, turn, _ = _two_litellm_loops_in_one_request(shift_ns=10_000_000)
    early = copy.deepcopy(request)
    for rs in early["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            ss["spans"] = [s for s in ss["spans"] if s["spanId"] != turn]
    report, (first, second) = _ingest(store, _write(tmp_path, "early.jsonl", early))
    assert (first.status, second.status, len(report.unfinished)) == ("interrupted", "interrupted", 2), report.errors
    assert first.id != second.id and _steps(first) == _steps(second) == FIRST_RUN_STEPS
    whole = _write(tmp_path, "whole.jsonl", request)
    later = ingest_files([whole], store)
    assert (len(later.ingested), sorted(later.replaced)) == (2, sorted([first.id, second.id])), later.errors
    current = sorted((t for t in store.iter_trajectories() if t.approval.status == "pending"), key=lambda t: t.started_at)
    assert [(t.status, _steps(t)) for t in current] == [("completed", FIRST_RUN_STEPS)] * 2
    for partial, complete in zip((first, second), current, strict=True):
        assert complete.id in (store.get(partial.id).approval.reason or ""), "each replaced by its own conversation"
    again = ingest_files([whole], store)
    assert (len(again.ingested), sorted(again.already_stored)) == (0, sorted(t.id for t in current)), again.errors


def _chat(history: list[dict[str, Any]], reply: dict[str, Any]) -> dict[str, Any]:
    """What OpenTelemetry's OpenAI v2 instrumentation writes on a chat span (message content captured on spans)."""
    return {
        sc.OPERATION_NAME: "chat",
        sc.PROVIDER_NAME: "openai",
        sc.REQUEST_MODEL: MODEL,
        sc.RESPONSE_MODEL: MODEL,
        sc.SYSTEM_INSTRUCTIONS: dumps([{"type": "text", "content": SYSTEM}]),
        sc.INPUT_MESSAGES: dumps(openai_to_genai(history)),
        sc.OUTPUT_MESSAGES: dumps(openai_to_genai([reply])),
    }


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


STOCK = {"pears": 0, "apples": 12}


def _tool_span(call: dict[str, Any], result: str) -> dict[str, Any]:
    """The GenAI attributes of the ``execute_tool`` span of ``call`` (an OpenAI tool call) that answered ``result``."""
    return {
        sc.OPERATION_NAME: "execute_tool",
        sc.TOOL_NAME: call["function"]["name"],
        sc.TOOL_CALL_ID: call["id"],
        sc.TOOL_CALL_ARGUMENTS: call["function"]["arguments"],
        sc.TOOL_CALL_RESULT: result,
    }


def _tool(name: str, arguments: dict[str, Any]) -> str:
    if name == "check_stock":
        return f"{STOCK[arguments['fruit']]} {arguments['fruit']} in stock"
    return f"ordered {arguments['quantity']} {arguments['fruit']}"


async def _conversation(tracer: Any, user: str, replies: list[dict[str, Any]], window: int | None = None) -> None:
    """One tool loop of the app: a chat span per model call (the model's reply scripted), an ``execute_tool`` span
    per tool call (as the app traces its tools). Each await lets the other conversation of the request go on.
    ``window``: the app sends the model only its last messages (a sliding window over the history)."""
    history: list[dict[str, Any]] = [{"role": "user", "content": user}]
    for reply in replies:
        with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT) as span:
            await asyncio.sleep(0.002)
            span.set_attributes(_chat(history[-window:] if window else history, reply))
        history.append(reply)
        for call in reply.get("tool_calls") or []:
            name, arguments = call["function"]["name"], json.loads(call["function"]["arguments"])
            with tracer.start_as_current_span(f"execute_tool {name}") as span:
                await asyncio.sleep(0.002)
                result = _tool(name, arguments)
                span.set_attributes(_tool_span(call, result))
            history.append({"role": "tool", "tool_call_id": call["id"], "content": result})


PEARS = [
    {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "check_stock", {"fruit": "pears"})]},
    {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "order", {"fruit": "pears", "quantity": 5})]},
    {"role": "assistant", "content": "We had no pears, so I ordered 5."},
]
APPLES = [  # the same question answered another way: the model looked up apples first (a sampled reply)
    {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "check_stock", {"fruit": "apples"})]},
    {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "check_stock", {"fruit": "pears"})]},
    {"role": "assistant", "content": "We have 12 apples and no pears."},
]
PEARS_STEPS = [
    ("check_stock", {"fruit": "pears"}, "0 pears in stock", False),
    ("order", {"fruit": "pears", "quantity": 5}, "ordered 5 pears", False),
    ("answer", "We had no pears, so I ordered 5."),
]
APPLES_STEPS = [
    ("check_stock", {"fruit": "apples"}, "12 apples in stock", False),
    ("check_stock", {"fruit": "pears"}, "0 pears in stock", False),
    ("answer", "We have 12 apples and no pears."),
]


def _request_file(
    tmp_path: Path, *conversations: tuple[str, list[dict[str, Any]]], concurrent: bool = True, window: int | None = None
) -> tuple[Path, list[Any]]:
    """The real OpenTelemetry SDK: a web request's span (``POST /shop``) over the conversations the handler runs, all at
    once (``asyncio.gather``) or one after the other; the spans written as the SDK's OTLP encoder does."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop")

    async def handle() -> None:
        with tracer.start_as_current_span("POST /shop", kind=SpanKind.SERVER) as span:
            span.set_attribute(sc.CONVERSATION_ID, "shop-thread-1")
            if concurrent:
                await asyncio.gather(*(_conversation(tracer, user, replies, window) for user, replies in conversations))
            else:
                for user, replies in conversations:
                    await _conversation(tracer, user, replies, window)

    asyncio.run(handle())
    path, finished = _exported(exporter, provider, tmp_path / "request.jsonl")
    return path, finished


def test_concurrent_conversations_with_the_same_first_messages_are_told_apart_by_their_replies(tmp_path, store):
    """Same system prompt and user message, calls interleaved, every reply's call id ``call_1`` (servers that number
    calls per reply): only the replies each next call's history goes on with tell the conversations apart. Before,
    one run of six decisions, each state from whichever conversation's call came next."""
    path, finished = _request_file(tmp_path, (TURN_1, PEARS), (TURN_1, APPLES))
    chats = sorted((s for s in finished if s.name.startswith("chat ")), key=lambda s: s.start_time)
    assert chats[0].start_time < chats[1].start_time < chats[0].end_time, "the two conversations' calls overlap"
    report, trajectories = _ingest(store, path)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    pears, apples = trajectories
    assert (_steps(pears), _steps(apples)) == (PEARS_STEPS, APPLES_STEPS)
    for t, replies in ((pears, PEARS), (apples, APPLES)):
        assert (t.task, t.status, t.thread_id, t.model) == (TURN_1, "completed", "shop-thread-1", MODEL)
        assert [s.decision_index for s in t.steps] == [0, 1, 2]
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for m in t.messages for c in m.get("tool_calls") or []]
        assert calls == [
            (c["function"]["name"], json.loads(c["function"]["arguments"])) for r in replies for c in r.get("tool_calls") or []
        ]
    # each tool span is the observation of the call that asked for it (its timing), in its own conversation
    tools = sorted((s for s in finished if s.name.startswith("execute_tool ")), key=lambda s: s.start_time)
    ran = [((s.end_time - s.start_time) / 1e6, s.attributes[sc.TOOL_CALL_ARGUMENTS]) for s in tools]
    taught = [(s.latency_ms, json.dumps(s.action.tool_call.arguments)) for t in trajectories for s in t.steps if s.action.tool_call]
    assert sorted(taught, key=repr) == sorted(ran, key=repr)
    trace = format(chats[0].context.trace_id, "032x")
    request_span = next(s for s in finished if s.name == "POST /shop")
    second_first = next(s for s in chats if s.start_time > chats[0].start_time)
    assert pears.id == run_trajectory_id(trace, format(request_span.context.span_id, "016x"))
    assert apples.id == run_trajectory_id(trace, format(second_first.context.span_id, "016x"))


def test_conversations_run_one_after_the_other_in_one_request_are_two_trajectories(tmp_path, store):
    """Two tool loops of one request for two questions, the second after the first: two trajectories (before, one run
    whose second task's calls followed the first's answer)."""
    other = "Do we have apples?"
    apples = [
        {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "check_stock", {"fruit": "apples"})]},
        {"role": "assistant", "content": "We have 12 apples."},
    ]
    path, _ = _request_file(tmp_path, (TURN_1, PEARS), (other, apples), concurrent=False)
    report, (first, second) = _ingest(store, path)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert (first.task, _steps(first)) == (TURN_1, PEARS_STEPS)
    assert (second.task, _steps(second)) == (
        other,
        [("check_stock", {"fruit": "apples"}, "12 apples in stock", False), ("answer", "We have 12 apples.")],
    )
    assert [s.decision_index for s in second.steps] == [0, 1]


def test_one_conversation_of_model_spans_only_is_one_trajectory(tmp_path, store):
    """Sequential calls of one conversation stay one run (the guard beside the split)."""
    path, _ = _request_file(tmp_path, (TURN_1, PEARS))
    report, (only,) = _ingest(store, path)
    assert (report.problems, _steps(only), [s.decision_index for s in only.steps]) == (0, PEARS_STEPS, [0, 1, 2]), report.errors


def test_a_conversation_whose_history_is_cut_is_tied_by_its_tool_call_ids(tmp_path, store):
    """An app that sends the model only its last three messages: the third call's history no longer starts with the
    second's, but it answers the tool call the second call's reply made (``call_order_pears``), so it goes on with it.
    Without the ids each such call would start a conversation of its own."""
    pears = [
        {"role": "assistant", "content": "", "tool_calls": [_call("call_stock_pears", "check_stock", {"fruit": "pears"})]},
        {"role": "assistant", "content": "", "tool_calls": [_call("call_order_pears", "order", {"fruit": "pears", "quantity": 5})]},
        PEARS[2],
    ]
    apples = [
        {"role": "assistant", "content": "", "tool_calls": [_call("call_stock_apples", "check_stock", {"fruit": "apples"})]},
        {"role": "assistant", "content": "", "tool_calls": [_call("call_stock_pears_2", "check_stock", {"fruit": "pears"})]},
        APPLES[2],
    ]
    path, _ = _request_file(tmp_path, (TURN_1, pears), (TURN_1, apples), window=3)
    report, (first, second) = _ingest(store, path)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert (_steps(first), _steps(second)) == (PEARS_STEPS, APPLES_STEPS)
    assert [m["role"] for m in first.steps[-1].state] == ["system", "tool", "assistant", "tool"], "the third call was given the last three"
