"""Recorded runs of real LangGraph graphs, reduced to what is stable between runs: the golden for
capture's "no behaviour change" test (tests/capture/test_golden.py).

The stored trajectories (steps, states, actions, observations, messages, redaction placeholders)
and the spans that reach the user's own exporter are kept; ids, times and latencies are dropped,
and the random tool-call ids are numbered in order of appearance. The store's pseudonym salt is
fixed, so redaction placeholders are the same on every run.

``record_all(root, offload="process")`` records the same scenarios with capture's work in its
child process (ee_middleware/capture/offload.py): there the recorder has no tracer provider of the
user's, and the child's spans reach the test through :func:`span_file_tap` (a span processor on an
SDK provider the child makes for it, named by ``EE_CAPTURE_OFFLOAD_SPAN_PROCESSOR``). ``offload="thread-direct"`` and
``"process-direct"`` record as users without a tracer provider of their own do: the recorder's spans
are made directly as plain data (ee_middleware/capture/direct_spans.py), seen by no exporter, so
only the stored trajectories are compared (``"spans"`` is None).

Regenerate (only when a behaviour change is intended, and say so in the commit):

    .venv/bin/python -m tests.capture.golden_capture --write
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.tools import ToolException, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, create_react_agent, tools_condition
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.offload import SPAN_PROCESSOR_ENV
from ee_middleware.capture.redaction import SALT_FILE
from ee_middleware.testing import ScriptedChatModel, tool_call

GOLDEN = Path(__file__).with_name("golden") / "trajectories.json"
SALT_HEX = "5e" * 32

_DROP_TRAJECTORY = {"id", "started_at", "ended_at", "trace_id"}
_DROP_APPROVAL = {"at"}
_DROP_STEP = {"trajectory_id", "latency_ms", "model_latency_ms"}
_DROP_SPAN_ATTRS = {sc.EE_TRAJECTORY_ID, sc.EE_RECORDER}
_CALL_ID = re.compile(r"call_[0-9a-f]{12}")
_TASK_ID = re.compile(r":[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --- tools and graphs -------------------------------------------------------------------------


def _tools() -> list[Any]:
    stock = {"apple": 3, "pear": 0}

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        if item not in stock:
            raise ToolException(f"unknown item {item!r}; ask ops@fruit.example or call +1 415 555 0134")
        return str(stock[item])

    @tool
    def order_item(item: str, quantity: int, note: str = "") -> str:
        """Order more of an item."""
        return f"ordered {quantity} {item}; now {stock.get(item, 0) + quantity}"

    @tool
    def supplier(company: str) -> str:
        """Supplier record as JSON text (holds secrets)."""
        return json.dumps(
            {
                "name": company,
                "contact": "sales@orchard.example",
                "api": {"password": "hunter2", "token_count": 3},
                "notes": "naïve café ✓",
            },
            indent=2,
        )

    @tool
    def catalogue(page: int) -> dict[str, Any]:
        """A catalogue page (a dict: encoded as JSON)."""
        return {"page": page, "items": ["apple", "pear"] * 3, "auth_token": "abc123secretvalue", "ok": True}

    @tool
    def report(kind: str) -> str:
        """A long report."""
        return f"{kind}: " + "line of the report with nothing secret in it. " * 40

    @tool(return_direct=True)
    def close_ticket(ticket: str) -> str:
        """Close a ticket; its result ends the run."""
        return f"ticket {ticket} closed; receipt sent to carol@example.org"

    return [check_stock, order_item, supplier, catalogue, report, close_ticket]


def _react(script: list[AIMessage]) -> Any:
    return create_react_agent(ScriptedChatModel(script=script, model_name="scripted-expert"), _tools())


def _multi_node(script: list[AIMessage], system: str) -> Any:
    tools = _tools()
    bound = ScriptedChatModel(script=script, model_name="scripted-multi").bind_tools(tools)

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke([("system", system), *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


SHOP_SCRIPT = [
    AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]),
    AIMessage(
        content="Ordering now.",
        tool_calls=[tool_call("order_item", item="pear", quantity=5, note="bill card 4111 1111 1111 1111, key sk-abcdefghijklmnop1234")],
    ),
    AIMessage(content="Pears were out; I ordered 5. I wrote to bob@example.com."),
]

LONG_SCRIPT = [
    AIMessage(content="", tool_calls=[tool_call("check_stock", item="kiwi")]),
    AIMessage(content="", tool_calls=[tool_call("supplier", company="Orchard Ltd")]),
    AIMessage(
        content=[{"type": "text", "text": "Checking the catalogue "}, {"type": "text", "text": "and the report."}],
        tool_calls=[tool_call("catalogue", page=2), tool_call("report", kind="daily")],
    ),
    AIMessage(content="", tool_calls=[tool_call("check_stock", item="apple")]),
    AIMessage(content="Done: 3 apples, supplier password is hunter2 (do not share). 日本語 🚀"),
]

DIRECT_SCRIPT = [AIMessage(content="", tool_calls=[tool_call("close_ticket", ticket="T-7 for dave@example.net")])]


class _Boom(Exception):
    pass


def _failing_graph() -> Any:
    def node(state: MessagesState) -> dict[str, Any]:
        raise _Boom("db down: postgres://admin:s3cr3tpw@db.internal/shop")

    model = ScriptedChatModel(script=SHOP_SCRIPT[:1], model_name="scripted-expert").bind_tools(_tools()[:2])

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", node)
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "tools")
    return graph.compile()


def _model_error_graph() -> Any:
    def policy(messages: Any, tools: Any) -> AIMessage:
        raise RuntimeError("model unavailable; Authorization: Bearer abcdef0123456789xyz")

    return create_react_agent(ScriptedChatModel(policy=policy, model_name="scripted-down"), _tools()[:2])


# --- recording ------------------------------------------------------------------------------


def _recorded(root: Path, name: str, graph: Any, provider: TracerProvider | None, **settings: Any) -> Any:
    path = root / name
    LocalExperienceStore(path).close()
    (path / SALT_FILE).write_text(SALT_HEX + "\n")
    return record_experience(graph, app=name, store=path, tracer_provider=provider, **settings), path


def hide_apples(text: str) -> str:
    """The "custom" scenario's redact_fn (module level, so that the capture process can use it)."""
    return text.replace("apple", "a***e")


SPANS_FILE_ENV = "EE_GOLDEN_SPANS_FILE"


class _SpanFile(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Any) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(_span(s), ensure_ascii=False) + "\n" for s in spans)
        return SpanExportResult.SUCCESS


def span_file_tap() -> SimpleSpanProcessor:
    """In the capture process: write each span's stable parts to ``$EE_GOLDEN_SPANS_FILE``."""
    return SimpleSpanProcessor(_SpanFile(os.environ[SPANS_FILE_ENV]))


def _scenarios() -> list[tuple[str, Callable[[], Any], dict[str, Any], Callable[[Any], None]]]:
    task = {"messages": [("user", "Do we have pears? If not, order 5. I am alice@example.com, +44 20 7946 0958.")]}
    thread = {"configurable": {"thread_id": "alice@example.com"}}

    def twice(agent: Any) -> None:
        agent.invoke(task, thread)
        agent.invoke({"messages": [("user", "And apples?")]}, {"configurable": {"thread_id": "t-2"}})

    def long_run(agent: Any) -> None:
        agent.invoke({"messages": [("user", "Full check please; my api key is sk-proj-ABCDEFGHIJKLMNOPqrstuv")]})

    def fails(agent: Any) -> None:
        try:
            agent.invoke(task)
        except _Boom:
            pass
        else:
            raise AssertionError("the failing graph did not fail")

    def model_fails(agent: Any) -> None:
        try:
            agent.invoke(task)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the failing model did not fail")

    def streamed(agent: Any) -> None:
        for _ in agent.stream(task, stream_mode="updates"):
            break

    def batched(agent: Any) -> None:
        agent.batch([task, {"messages": [("user", "pears for eve@example.com?")]}])

    def direct(agent: Any) -> None:
        agent.invoke({"messages": [("user", "close T-7")]})

    env = {"db_password": "hunter2", "dsn": "postgres://u:pw@host/db", "region": "eu"}
    return [
        ("shop", lambda: _react(SHOP_SCRIPT), {"environment": env}, twice),
        (
            "long",
            lambda: _multi_node(LONG_SCRIPT, "You run a fruit shop. Escalate to ops@fruit.example."),
            {"max_observation_chars": 300},
            long_run,
        ),
        ("plain", lambda: _react(SHOP_SCRIPT), {"redact": False}, twice),
        ("custom", lambda: _multi_node(LONG_SCRIPT, "Be brief."), {"redact_fn": hide_apples}, long_run),
        ("fails", _failing_graph, {}, fails),
        ("model-fails", _model_error_graph, {}, model_fails),
        ("streamed", lambda: _react(SHOP_SCRIPT), {}, streamed),
        ("batched", lambda: _react(SHOP_SCRIPT), {}, batched),
        ("direct", lambda: _react(DIRECT_SCRIPT), {}, direct),
    ]


def record_all(root: Path, offload: str = "thread") -> dict[str, Any]:
    """Run every scenario; the stable parts of what was stored and exported, by scenario.

    ``offload="process"``: capture's work in its child process, whose spans are read back through
    :func:`span_file_tap` (the environment variables it needs are set for the call and restored)."""
    out: dict[str, Any] = {}
    saved = {k: os.environ.get(k) for k in (SPAN_PROCESSOR_ENV, SPANS_FILE_ENV)}
    try:
        for name, make, settings, drive in _scenarios():
            out[name] = _record_one(root, name, make, settings, drive, offload)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return out


def _record_one(root: Path, name: str, make: Any, settings: dict[str, Any], drive: Any, offload: str) -> dict[str, Any]:
    exporter = InMemorySpanExporter()
    provider: TracerProvider | None = None
    spans_file = root / f"{name}.spans.jsonl"
    where, _, direct = offload.partition("-")
    if direct:  # the recorder's own spans, made directly (no exporter sees them)
        os.environ.pop(SPAN_PROCESSOR_ENV, None)
    elif where == "thread":
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        os.environ[SPAN_PROCESSOR_ENV] = f"{__name__}:span_file_tap"
        os.environ[SPANS_FILE_ENV] = str(spans_file)
    agent, path = _recorded(root, name, make(), provider, offload=where, **settings)
    if where == "process":
        assert agent.recorder.offload is not None, "the recorder did not start its capture process"
    drive(agent)
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(path)
    # call ids are numbered within each trajectory (runs of a batch end in any order); in spans they are blanked
    trajectories = sorted(_renumber_calls(_stable(t.model_dump(mode="json"))) for t in store.iter_trajectories())
    store.close()
    if direct:
        return {"trajectories": [json.loads(t) for t in trajectories], "spans": None}
    if provider is not None:
        exported = [_span(s) for s in exporter.get_finished_spans()]
        provider.shutdown()
    else:
        exported = [json.loads(line) for line in spans_file.read_text(encoding="utf-8").splitlines()] if spans_file.exists() else []
    spans = sorted(_CALL_ID.sub("call_?", json.dumps(s, sort_keys=True, ensure_ascii=False)) for s in exported)
    return {"trajectories": [json.loads(t) for t in trajectories], "spans": [json.loads(s) for s in spans]}


def _span(span: Any) -> dict[str, Any]:
    attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (span.attributes or {}).items() if k not in _DROP_SPAN_ATTRS}
    for key in (sc.EE_LANGGRAPH_CHECKPOINT_NS, sc.EE_LAST_REPLY_TASK):  # node:task-id: the task ids differ on every run
        if key in attrs:
            attrs[key] = _TASK_ID.sub(":?", attrs[key])
    events = [
        {"name": e.name, "attributes": {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"}} for e in span.events
    ]
    return {
        "name": span.name,
        "kind": span.kind.name,
        "status": [span.status.status_code.name, span.status.description],
        "attributes": attrs,
        "events": events,
    }


def _stable(trajectory: dict[str, Any]) -> str:
    """The trajectory's JSON without ids, times and latencies (they differ on every run)."""
    kept = {k: v for k, v in trajectory.items() if k not in _DROP_TRAJECTORY}
    kept["approval"] = {k: v for k, v in kept["approval"].items() if k not in _DROP_APPROVAL}
    kept["steps"] = [{k: v for k, v in step.items() if k not in _DROP_STEP} for step in kept["steps"]]
    return json.dumps(kept, sort_keys=True, ensure_ascii=False)


def _renumber_calls(text: str) -> str:
    numbers: dict[str, str] = {}
    return _CALL_ID.sub(lambda m: numbers.setdefault(m.group(0), f"call_{len(numbers):04d}"), text)


def main(argv: list[str]) -> int:
    import tempfile

    if argv != ["--write"]:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        result = record_all(Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(result, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {sum(len(v['trajectories']) for v in result.values())} trajectories")
    return 0


if __name__ == "__main__":
    # run from the importable module, not this __main__ copy: the recorder refuses a redact_fn defined in __main__
    from tests.capture.golden_capture import main as imported_main

    sys.exit(imported_main(sys.argv[1:]))
