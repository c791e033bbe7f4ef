"""LangChain's ``invalid_tool_calls`` are recorded as the malformed calls they are, whatever their arguments parse to,
and a run ended by a ``return_direct`` tool keeps its closing tool message (sweep s16, findings 1-3).

``create_agent`` never runs an entry of ``invalid_tool_calls``: it answers each one that has an id itself ("Tool call
... could not be executed - arguments were malformed or truncated.", status error). A chat model or a parser puts a call
there for reasons other than JSON that does not parse: arguments that are JSON but no object (``null``, a list, a
streamed call's), or an object a schema check refused. Each is the step's action with the text the model wrote under
``arguments["_raw"]`` (the form replay leaves unexecuted and IL leaves out), never an ordinary call of the tool, and a
call that lost its name gets none that looks like a tool's."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])
pytestmark = pytest.mark.usefixtures("no_child_left")

REFUSED = "could not be executed - arguments were malformed or truncated."


@tool
def refund(order_id: str) -> str:
    """Refund an order."""
    return f"refunded {order_id}"


@tool(return_direct=True)
def close_ticket(ticket: str) -> str:
    """Close a ticket; its result goes straight to the user."""
    return f"FINAL: ticket {ticket} closed ✅"


def invalid(name: str | None, args: str | None, call_id: str | None, error: str | None = "refused") -> dict[str, Any]:
    """An ``invalid_tool_calls`` entry, as a chat model or parser writes one."""
    return {"type": "invalid_tool_call", "id": call_id, "name": name, "args": args, "error": error}


def _recorded(agent: Any, store_path: Any) -> Trajectory:
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    try:
        [trajectory] = list(store.iter_trajectories())
    finally:
        store.close()
    return trajectory


@OFFLOADS
def test_an_invalid_call_whose_arguments_are_json_is_recorded_as_malformed(offload, store_path):
    """An object a schema check refused, a list and ``null`` were recorded as refund({"order_id": "B-2"}),
    refund({"_raw": ["B-2"]}) and refund({"_raw": None}): the first an ordinary call (replay executed it, IL taught it),
    the others not text. Each is now the text the model wrote under ``_raw``, observed by the graph's refusal."""
    replies = [
        AIMessage(
            content="",
            tool_calls=[tool_call("refund", order_id="A-1")],
            invalid_tool_calls=[
                invalid("refund", '{"order_id": "B-2"}', "v1"),
                invalid("refund", '["B-2"]', "v2"),
                invalid("refund", "null", "v3"),
            ],
        ),
        AIMessage(content="Refunded A-1."),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=replies), [refund]), app="shop", store=store_path, offload=offload)
    returned = agent.invoke({"messages": [("user", "refund A-1 and B-2")]})["messages"]
    assert sum(m.type == "tool" and REFUSED in m.content for m in returned) == 3  # create_agent refused all three itself
    t = _recorded(agent, store_path)
    calls = [(s.action.tool_call.model_dump(), s.observation.content) for s in t.steps if s.action.tool_call is not None]
    assert [call for call, _ in calls] == [
        {"id": calls[0][0]["id"], "name": "refund", "arguments": {"order_id": "A-1"}},
        {"id": "v1", "name": "refund", "arguments": {"_raw": '{"order_id":"B-2"}'}, "malformed": True},
        {"id": "v2", "name": "refund", "arguments": {"_raw": '["B-2"]'}, "malformed": True},
        {"id": "v3", "name": "refund", "arguments": {"_raw": "null"}, "malformed": True},
    ]
    assert calls[0][1] == "refunded A-1"
    assert all(REFUSED in observation for _, observation in calls[1:])
    assert t.final_answer == "Refunded A-1."
    # the conversation still shows each call as the model wrote it (the text it saw in its history)
    [turn] = [m for m in t.messages if m.get("tool_calls")]
    assert [c["function"]["arguments"] for c in turn["tool_calls"]] == ['{"order_id":"A-1"}', '{"order_id":"B-2"}', '["B-2"]', "null"]


@OFFLOADS
def test_a_nameless_invalid_call_is_recorded_as_malformed_under_no_tools_name(offload, store_path):
    """An invalid call without a name (and without arguments) was recorded as the well-formed call unknown_tool({}): IL
    taught a tool never offered, and replay skipped the trajectory advising to add unknown_tool to the sandbox. It is
    now a malformed call ({"_raw": ...}) under a name no tool can have; one without an id (which create_agent never
    answers) is malformed too."""
    replies = [
        AIMessage(
            content="",
            tool_calls=[tool_call("refund", order_id="A-1")],
            invalid_tool_calls=[invalid(None, None, "e12", "no name"), invalid("refund", "{", None, "no id")],
        ),
        AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-2")]),
        AIMessage(content="done"),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=replies), [refund]), app="shop", store=store_path, offload=offload)
    agent.invoke({"messages": [("user", "refund A-1 then A-2")]})
    t = _recorded(agent, store_path)
    calls = [s.action.tool_call for s in t.steps if s.action.tool_call is not None]
    nameless = calls[1].name
    assert [(c.name, c.arguments) for c in calls] == [
        ("refund", {"order_id": "A-1"}),
        (nameless, {"_raw": "{}"}),
        ("refund", {"_raw": "{"}),
        ("refund", {"order_id": "A-2"}),
    ]
    assert not re.fullmatch(r"[A-Za-z0-9_.-]+", nameless), f"{nameless!r} looks like a tool's name"  # (was unknown_tool)
    assert calls[1].id == "e12" and REFUSED in t.steps[1].observation.content
    assert calls[2].id == "" and t.steps[2].observation is None  # no id: create_agent never answered it


@OFFLOADS
def test_a_run_ended_by_a_return_direct_tool_keeps_its_closing_tool_message(offload, store_path):
    """The graph returned [human, ai(call), tool, ai("Finishing", call close_ticket), tool("FINAL: ...")], but the stored
    conversation (and the JSONL export) ended on the call to close_ticket with no reply. It now holds the tool message,
    as a resumed run's already did."""
    replies = [
        AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1")]),
        AIMessage(content="Finishing", tool_calls=[tool_call("close_ticket", ticket="T-9")]),
    ]
    graph = create_agent(ScriptedChatModel(script=replies), [refund, close_ticket])
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    returned = agent.invoke({"messages": [("user", "refund A-1, then close T-9")]})["messages"]
    assert [m.type for m in returned] == ["human", "ai", "tool", "ai", "tool"]
    t = _recorded(agent, store_path)
    assert [m["role"] for m in t.messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert t.messages[-1] == {"role": "tool", "tool_call_id": returned[-1].tool_call_id, "content": "FINAL: ticket T-9 closed ✅"}
    assert t.final_answer == t.steps[-1].observation.content == "FINAL: ticket T-9 closed ✅"


@OFFLOADS
def test_an_invalid_call_a_middleware_repaired_and_the_tool_ran_is_recorded_as_the_call_that_ran(offload, store_path):
    """A ``wrap_model_call`` middleware that repairs an invalid call whose text is a JSON object (the json-repair pattern
    for local models) makes the graph run it: adjust_stock really changed production. It was recorded as the malformed
    adjust_stock({"_raw": ...}) because the model's own reply held it in ``invalid_tool_calls``: replay left it
    unexecuted (the replayed world drifted from production: false fidelity mismatches) and IL left out a call that
    succeeded. A call a tool span of its id ran is the call the tool received."""
    from langchain.agents.middleware import ModelResponse, wrap_model_call

    ran: list[tuple[str, int]] = []

    @tool
    def adjust_stock(sku: str, delta: int) -> str:
        """Change an item's stock."""
        ran.append((sku, delta))
        return f"{sku}: adjusted by {delta}"

    replies = [
        AIMessage(
            content="",
            tool_calls=[tool_call("refund", order_id="A-1")],
            invalid_tool_calls=[
                invalid("adjust_stock", '{"sku": "A1", "delta": 1}', "i0"),  # an object the model's parser refused
                invalid("refund", "{", "i1"),
                invalid("adjust_stock", '{"sku": "B2", "delta": 2', "i2"),  # cut off: the middleware closes it
            ],
        ),
        AIMessage(content="done"),
    ]

    @wrap_model_call
    def repair(request: Any, handler: Any) -> Any:
        """Runs the invalid calls of adjust_stock (as ``tool_calls``, their JSON closed where it was cut off); the
        others stay invalid."""
        response = handler(request)
        result = []
        for m in response.result:
            if isinstance(m, AIMessage) and m.invalid_tool_calls:
                parsed, left = [], []
                for c in m.invalid_tool_calls:
                    if c["name"] != "adjust_stock":
                        left.append(c)
                        continue
                    text = c["args"] if c["args"].endswith("}") else c["args"] + "}"
                    parsed.append({"name": c["name"], "args": json.loads(text), "id": c["id"], "type": "tool_call"})
                m = AIMessage(content=m.content, tool_calls=[*m.tool_calls, *parsed], invalid_tool_calls=left, id=m.id)
            result.append(m)
        return ModelResponse(result=result, structured_response=response.structured_response)

    graph = create_agent(ScriptedChatModel(script=replies), [refund, adjust_stock], middleware=[repair])
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    agent.invoke({"messages": [("user", "refund A-1, add one A1")]})
    assert sorted(ran) == [("A1", 1), ("B2", 2)]  # production ran the repaired calls (its tools run concurrently: any order)
    t = _recorded(agent, store_path)
    calls = [(s.action.tool_call, s.observation) for s in t.steps if s.action.tool_call is not None]
    assert [(c.id, c.name, c.arguments) for c, _ in calls] == [
        (calls[0][0].id, "refund", {"order_id": "A-1"}),
        ("i0", "adjust_stock", {"sku": "A1", "delta": 1}),  # the call the tool ran, not {"_raw": ...}
        ("i1", "refund", {"_raw": "{"}),  # still invalid: create_agent refused it, no tool ran
        ("i2", "adjust_stock", {"sku": "B2", "delta": 2}),  # what the tool received, not the text the model cut off
    ]
    assert [(o.content, o.is_error) for _, o in calls[1:]] == [
        ("A1: adjusted by 1", False),
        (calls[2][1].content, True),
        ("B2: adjusted by 2", False),
    ]
    assert REFUSED in calls[2][1].content


@OFFLOADS
def test_a_return_direct_run_keeps_its_closing_tool_message_when_the_model_reuses_call_ids(offload, store_path):
    """Servers that number calls per reply give every turn's call the id call_0. The closing tool message (of
    close_ticket, return_direct) was dropped from the stored conversation: an earlier tool message of the state already
    had its id, so it was taken as held. The stored messages are what the graph returned."""
    replies = [
        AIMessage(content="", tool_calls=[{"name": "refund", "args": {"order_id": "A-1"}, "id": "call_0", "type": "tool_call"}]),
        AIMessage(content="", tool_calls=[{"name": "close_ticket", "args": {"ticket": "T-9"}, "id": "call_0", "type": "tool_call"}]),
    ]
    graph = create_agent(ScriptedChatModel(script=replies), [refund, close_ticket])
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    returned = agent.invoke({"messages": [("user", "refund A-1, then close T-9")]})["messages"]
    assert [(m.type, getattr(m, "tool_call_id", None)) for m in returned] == [
        ("human", None),
        ("ai", None),
        ("tool", "call_0"),
        ("ai", None),
        ("tool", "call_0"),
    ]
    t = _recorded(agent, store_path)
    assert [(m["role"], m.get("tool_call_id")) for m in t.messages] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_0"),
        ("assistant", None),
        ("tool", "call_0"),
    ]
    assert [m["content"] for m in t.messages if m["role"] == "tool"] == ["refunded A-1", "FINAL: ticket T-9 closed ✅"]
    assert t.final_answer == t.steps[-1].observation.content == "FINAL: ticket T-9 closed ✅"


def _raw_tools(seen: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """store_raw, whose schema declares a ``_raw`` parameter, and free, whose schema does not but takes any argument."""
    from langchain_core.tools import StructuredTool

    def _store(**arguments: Any) -> str:
        seen.append(("store_raw", arguments))
        return f"stored {arguments['_raw']}"

    def _free(**arguments: Any) -> str:
        seen.append(("free", arguments))
        return f"free {sorted(arguments)}"

    raw = {"type": "object", "properties": {"_raw": {"type": "string"}}, "required": ["_raw"]}
    free = {"type": "object", "properties": {"note": {"type": "string"}}, "additionalProperties": True}
    return [
        StructuredTool.from_function(func=_store, name="store_raw", description="Store raw text.", args_schema=raw),
        StructuredTool.from_function(func=_free, name="free", description="Takes anything.", args_schema=free),
    ]


RAW_REPLIES = [
    AIMessage(
        content="",
        tool_calls=[
            {"name": "store_raw", "args": {"_raw": "hello"}, "id": "v0", "type": "tool_call"},
            {"name": "free", "args": {"_raw": "hi"}, "id": "v1", "type": "tool_call"},
        ],
        invalid_tool_calls=[invalid("store_raw", '{"_raw": 5', "i0")],
    ),
    AIMessage(content="done"),
]


@OFFLOADS
def test_whether_a_call_is_malformed_is_recorded_where_its_arguments_could_be_read_either_way(offload, store_path):
    """A call capture knew was invalid was stored as {"_raw": text} alone, which a tool whose schema declares ``_raw``
    is called with too: replay executed the refused store_raw call and IL taught it. And a valid free(_raw="hi") that
    production ran looked like a malformed call's text to both. Capture now says which is which
    (``ToolCall.malformed``), and the mark is kept by the store (its spool and its Parquet parts)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    agent = record_experience(
        create_agent(ScriptedChatModel(script=RAW_REPLIES), _raw_tools(seen)), app="shop", store=store_path, offload=offload
    )
    agent.invoke({"messages": [("user", "store hello")]})
    # the graph refused the invalid call (its tools run concurrently: in any order)
    assert sorted(seen, key=lambda call: call[0]) == [("free", {"_raw": "hi"}), ("store_raw", {"_raw": "hello"})]
    t = _recorded(agent, store_path)
    marked = [(s.action.tool_call.id, s.action.tool_call.arguments, s.action.tool_call.malformed) for s in t.steps if s.action.tool_call]
    assert marked == [
        ("v0", {"_raw": "hello"}, False),
        ("v1", {"_raw": "hi"}, False),
        ("i0", {"_raw": '{"_raw": 5'}, True),
    ]
    store = LocalExperienceStore(store_path)
    try:
        store.compact()
        [again] = list(store.iter_trajectories())
        assert [s.action.tool_call.malformed for s in again.steps if s.action.tool_call] == [False, False, True]
        assert store.steps()["tool_call_malformed"].to_list() == [False, False, True, None]
    finally:
        store.close()


def test_an_ordinary_call_is_not_marked(store_path):
    """Only calls whose arguments could be read either way carry a mark: every other call's record is as before."""
    agent = record_experience(
        create_agent(
            ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1")]), AIMessage(content="ok")]),
            [refund],
        ),
        app="shop",
        store=store_path,
    )
    agent.invoke({"messages": [("user", "refund A-1")]})
    t = _recorded(agent, store_path)
    assert t.steps[0].action.tool_call.malformed is None
    assert "malformed" not in t.steps[0].action.tool_call.model_dump()


def _failing_tool() -> Any:
    """free_fail: takes any argument (its schema does not declare ``_raw``) and raises, as the graph reports it."""
    from langchain_core.tools import StructuredTool, ToolException

    def _fail(**arguments: Any) -> str:
        raise ToolException(f"free_fail failed on {sorted(arguments)}")

    anything = {"type": "object", "properties": {"note": {"type": "string"}}, "additionalProperties": True}
    return StructuredTool.from_function(
        func=_fail, name="free_fail", description="Takes anything, fails.", args_schema=anything, handle_tool_error=True
    )


@OFFLOADS
def test_a_raw_call_langchain_parsed_is_well_formed_though_its_tool_raised_or_does_not_exist(offload, store_path):
    """free_fail(_raw="boom") and nosuch(_raw="x") were calls LangChain parsed (``tool_calls``, not
    ``invalid_tool_calls``): the graph ran the first (its tool raised) and answered the second (no such tool). Both were
    left unmarked, so their arguments alone read as a malformed call's text: replay never executed or checked them, IL
    left them out. Capture knows every invalid call of its own runs (their positions): any other call is well formed."""
    seen: list[tuple[str, dict[str, Any]]] = []
    replies = [
        AIMessage(
            content="",
            tool_calls=[
                {"name": "free_fail", "args": {"_raw": "boom"}, "id": "e1", "type": "tool_call"},
                {"name": "nosuch", "args": {"_raw": "x"}, "id": "u1", "type": "tool_call"},
                {"name": "free", "args": {"_raw": "hi"}, "id": "v1", "type": "tool_call"},
            ],
        ),
        AIMessage(content="done"),
    ]
    graph = create_agent(ScriptedChatModel(script=replies), [*_raw_tools(seen), _failing_tool()])
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    agent.invoke({"messages": [("user", "free boom")]})
    t = _recorded(agent, store_path)
    calls = [(s.action.tool_call, s.observation) for s in t.steps if s.action.tool_call is not None]
    assert [(c.id, c.name, c.arguments, c.malformed, o.is_error) for c, o in calls] == [
        ("e1", "free_fail", {"_raw": "boom"}, False, True),
        ("u1", "nosuch", {"_raw": "x"}, False, True),
        ("v1", "free", {"_raw": "hi"}, False, False),
    ]


@OFFLOADS
def test_an_invalid_call_repaired_into_raw_is_recorded_with_the_arguments_its_tool_received(offload, store_path):
    """A ``wrap_model_call`` middleware repairs the model's invalid calls into free(_raw="fixed") and
    free_fail(_raw="fixed"), and the graph runs them with {"_raw": "fixed"}. Capture took a tool span whose arguments
    hold ``_raw`` for one whose arguments were no object, so it recorded the model's broken text instead
    ({"_raw": '{"_raw": '}), which replay then executed: arguments production never sent. The call is the one its tool
    received, well formed whether the tool succeeded or raised."""
    from langchain.agents.middleware import ModelResponse, wrap_model_call

    seen: list[tuple[str, dict[str, Any]]] = []

    @wrap_model_call
    def repair(request: Any, handler: Any) -> Any:
        response = handler(request)
        result = []
        for m in response.result:
            if isinstance(m, AIMessage) and m.invalid_tool_calls:
                fixed = [{"name": c["name"], "args": {"_raw": "fixed"}, "id": c["id"], "type": "tool_call"} for c in m.invalid_tool_calls]
                m = AIMessage(content=m.content, tool_calls=[*m.tool_calls, *fixed], invalid_tool_calls=[], id=m.id)
            result.append(m)
        return ModelResponse(result=result, structured_response=response.structured_response)

    replies = [
        AIMessage(content="", invalid_tool_calls=[invalid("free", '{"_raw": ', "r1"), invalid("free_fail", '{"_raw": ', "r2")]),
        AIMessage(content="done"),
    ]
    graph = create_agent(ScriptedChatModel(script=replies), [*_raw_tools(seen), _failing_tool()], middleware=[repair])
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    agent.invoke({"messages": [("user", "repair")]})
    assert seen == [("free", {"_raw": "fixed"})]
    t = _recorded(agent, store_path)
    calls = [(s.action.tool_call, s.observation) for s in t.steps if s.action.tool_call is not None]
    assert [(c.id, c.name, c.arguments, c.malformed, o.is_error) for c, o in calls] == [
        ("r1", "free", {"_raw": "fixed"}, False, False),
        ("r2", "free_fail", {"_raw": "fixed"}, False, True),
    ]


@OFFLOADS
def test_a_raw_call_shows_in_messages_states_and_the_jsonl_export_as_the_json_the_model_wrote(offload, store_path, tmp_path):
    """store_raw(_raw="hello") and free(_raw="hi") were stored in the conversation, the step states and the JSONL
    export with the bare text hello and hi as their arguments: JSON the model never wrote (an export taught invalid
    argument JSON). LangChain held them in ``tool_calls``: they show as their JSON. The invalid call keeps the text the
    model wrote."""
    import json

    from ee_middleware.export import export_jsonl

    seen: list[tuple[str, dict[str, Any]]] = []
    agent = record_experience(
        create_agent(ScriptedChatModel(script=RAW_REPLIES), _raw_tools(seen)), app="shop", store=store_path, offload=offload
    )
    agent.invoke({"messages": [("user", "store hello")]})
    t = _recorded(agent, store_path)
    written = ['{"_raw":"hello"}', '{"_raw":"hi"}', '{"_raw": 5']
    [turn] = [m for m in t.messages if m.get("tool_calls")]
    assert [c["function"]["arguments"] for c in turn["tool_calls"]] == written
    [later] = [m for m in t.steps[-1].state if m.get("tool_calls")]  # the state of the answer that followed
    assert [c["function"]["arguments"] for c in later["tool_calls"]] == written
    store = LocalExperienceStore(store_path)
    try:
        assert export_jsonl(store, tmp_path / "out.jsonl", status=None) == 1
    finally:
        store.close()
    [example] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    [exported] = [m for m in example["messages"] if m.get("tool_calls")]
    assert [c["function"]["arguments"] for c in exported["tool_calls"]] == written
