"""A run cancelled from outside (its task cancelled, its stream closed, Ctrl-C), read from another instrumentation's
spans, is stored as capture stores it: ``interrupted``, its error ``cancelled: CancelledError``, the call it cut off
without an observation (the model never saw one). Before, ingest stored it ``error`` and gave the cut-off call the
observation ``CancelledError: CancelledError()`` flagged as an error, as if the tool had answered so.

The spans are built as OpenInference's LangChain instrumentation (0.1.80) writes them for a ``create_agent`` run
cancelled during ``ainvoke`` (the shape, the attribute names and the ``CancelledError`` status and events copied from
its real spans): its root, the ``tools`` chain and the tool span all record the exception. OpenLLMetry and the GenAI
conventions say the same with ``error.type``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.capture.assembler import _CANCELLATIONS
from ee_middleware.capture.callbacks import CANCELLATIONS
from ee_middleware.ingest import ingest_files
from ee_middleware.records import Trajectory
from tests.ingest.otlp_builders import _request, _span, _write
from tests.ingest.test_instrumentations import _steps

THREAD = "cancel-7"
META = json.dumps({"ls_integration": "langchain_create_agent", "thread_id": THREAD})


def _meta(node: str, integration: str = "langchain_create_agent") -> str:
    """The ``metadata`` of a span inside graph node ``node``."""
    return json.dumps({"ls_integration": integration, "thread_id": THREAD, "langgraph_node": node, "langgraph_checkpoint_ns": f"{node}:1"})


def _failed(kind: str, message: str, *, status: str | None = None, events: bool = True, raised: str | None = None) -> dict[str, Any]:
    """A span's ``status`` and ``events`` for an exception, as OpenInference records one: the status message is the
    exception's ``repr`` then its traceback, whose last line names the type ``raised`` as Python writes it (the module
    left out for builtins and ``__main__`` only; ``kind`` where not given); the event names the type ``kind``
    (``events=False``: an exporter that dropped it)."""
    short = kind.rpartition(".")[2]
    line = f"{raised or kind}: {message}" if message else raised or kind
    text = status if status is not None else f"{short}({message!r})Traceback (most recent call last):\n\n\n{line}"
    out: dict[str, Any] = {"status": {"code": 2, "message": text}}
    if events:
        out["events"] = [
            {
                "name": "exception",
                "timeUnixNano": "1700000000050000000",
                "attributes": [
                    {"key": "exception.type", "value": {"stringValue": kind}},
                    {"key": "exception.message", "value": {"stringValue": message}},
                    {"key": "exception.escaped", "value": {"boolValue": False}},
                ],
            }
        ]
    return out


def _llm(span_id: str, parent: str, messages: list[dict[str, Any]], call: tuple[str, str, dict[str, Any]], start: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "scripted-expert",
        "llm.provider": "scriptedchatmodel",
        "session.id": THREAD,
        "metadata": _meta("model", "langchain_chat_model"),
        "llm.invocation_parameters": json.dumps({"model_name": "scripted-expert", "tools": [_schema("lookup"), _schema("slow")]}),
        "llm.tools.0.tool.json_schema": json.dumps(_schema("lookup")),
        "llm.tools.1.tool.json_schema": json.dumps(_schema("slow")),
    }
    for i, message in enumerate(messages):
        for key, value in message.items():
            attrs[f"llm.input_messages.{i}.message.{key}"] = value
    call_id, name, arguments = call
    attrs["llm.output_messages.0.message.role"] = "assistant"
    attrs["llm.output_messages.0.message.tool_calls.0.tool_call.id"] = call_id
    attrs["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"] = name
    attrs["llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments"] = json.dumps(arguments)
    chain = _span(
        f"{span_id[:-1]}0",
        "model",
        {"openinference.span.kind": "CHAIN", "session.id": THREAD, "metadata": _meta("model")},
        parent,
        start,
        start + 4,
    )
    return [chain, _span(span_id, "ScriptedChatModel", attrs, chain["spanId"], start + 1, start + 3)]


def _schema(name: str) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}
    return {"type": "function", "function": {"name": name, "description": f"{name.title()}.", "parameters": parameters}}


def _tool(span_id: str, parent: str, name: str, key: str, start: int, end: int, **outcome: Any) -> list[dict[str, Any]]:
    chain_outcome = {k: v for k, v in outcome.items() if k in ("status", "events")}
    attrs = {"openinference.span.kind": "TOOL", "tool.name": name, "tool.description": f"{name.title()}.", "input.value": key}
    attrs.update(outcome.pop("attrs", {}))
    chain = _span(
        f"{span_id[:-1]}0",
        "tools",
        {"openinference.span.kind": "CHAIN", "session.id": THREAD, "metadata": _meta("tools")},
        parent,
        start,
        end + 1,
        **chain_outcome,
    )
    return [
        chain,
        _span(span_id, name, {**attrs, "session.id": THREAD, "metadata": _meta("tools")}, chain["spanId"], start + 1, end, **outcome),
    ]


def _cancelled_run(path: Path, root_outcome: dict[str, Any], slow_outcome: dict[str, Any], *, lookup_fails: bool = True) -> Path:
    """``lookup(A-7)`` (failing with a real error, or answering), then ``slow(z)``, cut off with the run."""
    root = "c000000000000001"
    lookup = _failed("ValueError", "order A-7 is archived") if lookup_fails else {"attrs": {"output.value": "A-7: shipped"}}
    lookup_reply = "order A-7 is archived" if lookup_fails else "A-7: shipped"
    ask = {"role": "user", "content": "check A-7 slowly"}
    asked = {"role": "assistant"}
    spans = [
        _span(
            root,
            "LangGraph",
            {
                "openinference.span.kind": "CHAIN",
                "input.value": json.dumps({"messages": [["user", ask["content"]]]}),
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": ask["content"],
                "session.id": THREAD,
                "metadata": META,
            },
            start=0,
            end=100,
            **root_outcome,
        ),
        *_llm("c000000000000011", root, [ask], ("call_1", "lookup", {"key": "A-7"}), 1),
        *_tool("c000000000000021", root, "lookup", "A-7", 6, 8, **lookup),
        *_llm(
            "c000000000000031",
            root,
            [
                ask,
                {
                    **asked,
                    "tool_calls.0.tool_call.id": "call_1",
                    "tool_calls.0.tool_call.function.name": "lookup",
                    "tool_calls.0.tool_call.function.arguments": '{"key": "A-7"}',
                },
                {"role": "tool", "tool_call_id": "call_1", "content": lookup_reply},
            ],
            ("call_2", "slow", {"key": "z"}),
            10,
        ),
        *_tool("c000000000000041", root, "slow", "z", 16, 90, **slow_outcome),
    ]
    return _write(path, _request(spans, service="oi-app"))


def _one(store: Any, path: Path) -> Trajectory:
    report = ingest_files([path], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (trajectory,) = store.iter_trajectories()
    return trajectory


ASYNCIO_CANCELLED = "asyncio.exceptions.CancelledError"


@pytest.mark.parametrize("kind", ["CancelledError", ASYNCIO_CANCELLED, "GeneratorExit", "KeyboardInterrupt"])
def test_a_cancelled_openinference_run_is_interrupted_and_its_cut_off_call_unobserved(store, tmp_path, kind):
    """The run's root and the cut-off tool record the cancellation (``exception.type``, with or without its module;
    OpenInference writes a ``BaseException``'s bare, its traceback qualified): ``interrupted`` with capture's reason, the
    cut-off call without an observation, no answer. The call whose tool raised a real error before stays an error
    observation."""
    short = kind.rpartition(".")[2]
    raised = ASYNCIO_CANCELLED if short == "CancelledError" else kind
    path = _cancelled_run(tmp_path / "run.jsonl", _failed(kind, "", raised=raised), _failed(kind, "", raised=raised))
    trajectory = _one(store, path)
    assert (trajectory.status, trajectory.error) == ("interrupted", f"cancelled: {short}")
    assert (trajectory.thread_id, trajectory.task, trajectory.final_answer) == (THREAD, "check A-7 slowly", None)
    assert _steps(trajectory) == [("lookup", {"key": "A-7"}, "order A-7 is archived", True), ("slow", {"key": "z"}, None, None)]


def test_a_cancellation_told_by_error_type_or_by_the_status_alone_is_one_too(store, tmp_path):
    """OpenLLMetry and the GenAI conventions name the type in ``error.type``; an exporter that dropped the events leaves
    the status message (OpenInference's: the ``repr``, then the traceback)."""
    root = _failed("CancelledError", "", events=False, raised=ASYNCIO_CANCELLED)
    slow = {"attrs": {"error.type": "CancelledError"}, "status": {"code": 2, "message": ""}}
    trajectory = _one(store, _cancelled_run(tmp_path / "run.jsonl", root, slow, lookup_fails=False))
    assert (trajectory.status, trajectory.error) == ("interrupted", "cancelled: CancelledError")
    assert _steps(trajectory) == [("lookup", {"key": "A-7"}, "A-7: shipped", False), ("slow", {"key": "z"}, None, None)]


def test_a_run_that_failed_on_its_own_error_stays_an_error(store, tmp_path):
    """The control: a tool's own error (``TimeoutError``) that ended the run leaves it ``error``, the failed call
    observed with its error."""
    failure = _failed("TimeoutError", "upstream slow")
    trajectory = _one(store, _cancelled_run(tmp_path / "run.jsonl", failure, failure, lookup_fails=False))
    assert trajectory.status == "error"
    assert "TimeoutError" in (trajectory.error or "")
    assert _steps(trajectory)[-1] == ("slow", {"key": "z"}, "TimeoutError: upstream slow", True)


def test_the_cancellations_ingest_knows_are_the_ones_capture_stops_on():
    """The assembler names them (capture's callbacks import the assembler, not the other way round)."""
    assert {c.__name__ for c in CANCELLATIONS} == _CANCELLATIONS
