"""Fixtures that build real objects: compiled LangGraph graphs, real tools, the OTel SDK, stores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("EE_CAPTURE_STRICT", "1")  # capture failures raise under the test suite

from langchain_core.messages import AIMessage
from langchain_core.tools import ToolException, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, create_react_agent, tools_condition
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call


class Inventory:
    """A small stateful world for the tools: stock levels that tools read and change."""

    def __init__(self) -> None:
        self.stock = {"apple": 3, "pear": 0}


@pytest.fixture
def inventory() -> Inventory:
    return Inventory()


@pytest.fixture
def tools(inventory: Inventory) -> list[Any]:
    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        if item not in inventory.stock:
            raise ToolException(f"unknown item {item!r}")
        return str(inventory.stock[item])

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        inventory.stock[item] = inventory.stock.get(item, 0) + quantity
        return f"ordered {quantity} {item}; now {inventory.stock[item]}"

    return [check_stock, order_item]


EXPERT_SCRIPT = [
    AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]),
    AIMessage(content="", tool_calls=[tool_call("order_item", item="pear", quantity=5)]),
    AIMessage(content="Pears were out of stock; I ordered 5, so there are 5 now."),
]


@pytest.fixture
def expert_model() -> ScriptedChatModel:
    return ScriptedChatModel(script=EXPERT_SCRIPT, model_name="scripted-expert")


@pytest.fixture
def react_graph(expert_model: ScriptedChatModel, tools: list[Any]) -> Any:
    """A ReAct agent from langgraph's prebuilt ``create_react_agent``."""
    return create_react_agent(expert_model, tools)


def build_multi_node_graph(model: Any, tools: list[Any]) -> Any:
    """A hand-built graph with several nodes: a router that adds a system hint, the model, tools."""
    bound = model.bind_tools(tools)

    def router(state: MessagesState) -> dict[str, Any]:
        return {"messages": []}

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke([("system", "You manage a fruit shop."), *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("router", router)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "router")
    graph.add_edge("router", "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


@pytest.fixture
def multi_node_graph(expert_model: ScriptedChatModel, tools: list[Any]) -> Any:
    return build_multi_node_graph(expert_model, tools)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "experience"


@pytest.fixture
def store(store_path: Path) -> LocalExperienceStore:
    return LocalExperienceStore(store_path)


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


USER_TASK = {"messages": [("user", "Do we have pears? If not, order 5.")]}


# --- BFCL: real backends, expert trajectories recorded through a real LangGraph agent -------------

BFCL_ENTRIES = 6


@pytest.fixture(scope="session")
def bfcl_expert_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the first BFCL_ENTRIES multi_turn_base expert trajectories (recorded once per session)."""
    from ee_middleware.bfcl.experts import record_experts

    root = tmp_path_factory.mktemp("bfcl") / "experience"
    report = record_experts(root, "multi_turn_base", limit=BFCL_ENTRIES)
    assert not report.failed, report.failed
    LocalExperienceStore(root).close()
    return root


@pytest.fixture
def bfcl_store_path(bfcl_expert_store_template: Path, tmp_path: Path) -> Path:
    """A private copy of the BFCL expert store (tests may write rollouts into it)."""
    import shutil

    target = tmp_path / "bfcl-experience"
    shutil.copytree(bfcl_expert_store_template, target)
    return target
