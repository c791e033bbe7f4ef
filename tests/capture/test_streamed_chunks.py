"""A LangGraph node that streams its model (``model.stream()``) and puts the added-up chunks in the state: capture
stores the same run as for a node that calls ``model.invoke()``, in thread and in process offload. Real LangGraph
graphs, the real local store, real offload processes; the only stand-in is the chat model (a scripted model that
streams its replies in pieces, as a provider's streaming API does).

Was: LangChain gives ``on_llm_end`` the streamed ``AIMessageChunk``, whose ``type`` is "AIMessageChunk", not "ai": it
became ``{"role": "AIMessageChunk", "content": ""}`` without its tool calls, and the run was stored with 0 steps, no
error and ``runs_failed == 0``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    HumanMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.payloads import state_messages, tool_error_positions
from ee_middleware.scripted import ScriptedChatModel


@tool
def check_stock(item: str, warehouse: str = "main") -> str:
    """How many of an item are in stock."""
    return f"3 {item}s in {warehouse}"


SCRIPT = [
    AIMessage(content="Let me check.", tool_calls=[{"name": "check_stock", "args": {"item": "pear", "warehouse": "north"}, "id": "c1"}]),
    AIMessage(content="There are 3 pears in the north warehouse."),
]


class StreamingScriptedModelStandIn(ScriptedChatModel):
    """Stand-in for a provider's streaming chat model: streams its scripted reply as a provider does, the text a few
    characters at a time and each tool call's arguments split over several chunks (``tool_call_chunks``)."""

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._generate(messages, stop, None, **kwargs).generations[0].message
        text = reply.content
        for start in range(0, len(text), 7):
            yield ChatGenerationChunk(message=AIMessageChunk(content=text[start : start + 7]))
        for index, call in enumerate(reply.tool_calls):
            args = json.dumps(call["args"])
            half = len(args) // 2
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="", tool_call_chunks=[{"name": call["name"], "args": args[:half], "id": call["id"], "index": index}]
                )
            )
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", tool_call_chunks=[{"name": None, "args": args[half:], "id": None, "index": index}])
            )


class State(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]


def _graph(streams: bool) -> Any:
    model = StreamingScriptedModelStandIn(script=list(SCRIPT)).bind_tools([check_stock])

    def agent(state: State) -> dict[str, Any]:
        if not streams:
            return {"messages": [model.invoke(state["messages"])]}
        chunks = list(model.stream(state["messages"]))
        assert len(chunks) > 2  # it does stream
        reply = chunks[0]
        for chunk in chunks[1:]:
            reply += chunk  # as LangChain's own streaming helpers add them up
        return {"messages": [reply]}

    graph = StateGraph(State)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([check_stock]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", lambda s: "tools" if s["messages"][-1].tool_calls else END)
    graph.add_edge("tools", "agent")
    return graph.compile()


def _stored(path: Path) -> list[dict[str, Any]]:
    store = LocalExperienceStore(path)
    try:
        out = []
        for t in store.iter_trajectories():
            data = t.model_dump(mode="json")
            steps = [{k: v for k, v in s.items() if k not in ("trajectory_id", "latency_ms", "model_latency_ms")} for s in data["steps"]]
            out.append({"status": data["status"], "steps": steps})
        return out
    finally:
        store.close()


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_node_that_streams_its_model_stores_the_run_its_invoke_twin_stores_stand_in_model(tmp_path: Path, offload: str) -> None:
    stored = {}
    for streams in (False, True):
        path = tmp_path / f"{offload}-{streams}"
        agent = record_experience(_graph(streams), app="shop", store=path, offload=offload)
        final = agent.invoke({"messages": [HumanMessage("How many pears are in the north warehouse?")]})
        assert agent.flush()
        stats = agent.recorder.stats
        agent.recorder.close()
        assert (stats.trajectories_written, stats.runs_failed, stats.errors) == (1, 0, [])
        assert final["messages"][-1].content == "There are 3 pears in the north warehouse."
        stored[streams] = _stored(path)
    [run] = stored[True]
    kinds = [(s["action"]["kind"], (s["action"].get("tool_call") or {}).get("name")) for s in run["steps"]]
    assert kinds == [("tool_call", "check_stock"), ("answer", None)]
    assert run["steps"][0]["action"]["tool_call"]["arguments"] == {"item": "pear", "warehouse": "north"}
    assert run["status"] == "completed"
    assert stored[True] == stored[False]


def test_capture_reads_chunks_in_a_state_as_the_messages_they_are_pieces_of() -> None:
    """A state whose conversation holds chunks (a node that adds up streamed chunks) is found, its question read, and
    its failed tool results found, as for whole messages."""
    conversation = [
        HumanMessageChunk(content="How many pears?"),
        AIMessageChunk(content="", tool_call_chunks=[{"name": "check_stock", "args": '{"item": "pear"}', "id": "c1", "index": 0}]),
        ToolMessageChunk(content="warehouse offline", tool_call_id="c1", status="error"),
    ]
    state = {"notes": [HumanMessageChunk(content="a note")], "conversation": conversation}
    assert state_messages(state) is conversation
    assert tool_error_positions(conversation) == (2,)
    assert tool_error_positions([ToolMessage(content="x", tool_call_id="c1", status="error")]) == (0,)
