"""record_experience on real compiled LangGraph graphs, with the real OpenTelemetry SDK."""

from __future__ import annotations

import asyncio
import datetime
import enum
import inspect
import json
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.prebuilt import create_react_agent

from ee_middleware import LocalExperienceStore, RecordedGraph, record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.errors import CaptureError, ConfigError
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import USER_TASK, build_multi_node_graph


def _messages(result: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [
        (m.type, m.content, getattr(m, "tool_calls", None) and [(c["name"], c["args"]) for c in m.tool_calls]) for m in result["messages"]
    ]


def test_invoke_returns_the_same_result_and_records_one_trajectory(react_graph, tools, store, store_path, inventory):
    plain = _messages(react_graph.invoke(USER_TASK))
    inventory.stock["pear"] = 0
    agent = record_experience(react_graph, app="shop", store=store_path)
    recorded = _messages(agent.invoke(USER_TASK, {"configurable": {"thread_id": "t-42"}}))
    agent.flush()
    assert recorded == plain
    frame = store.trajectories()
    assert frame.height == 1
    t = store.get(frame["id"][0])
    assert (t.app, t.thread_id, t.status, t.model, t.approval.status) == ("shop", "t-42", "completed", "scripted-expert", "pending")
    assert t.task == "Do we have pears? If not, order 5."
    assert [tool["function"]["name"] for tool in t.tools] == ["check_stock", "order_item"]
    assert t.tools[1]["function"]["parameters"]["properties"]["quantity"]["type"] == "integer"
    assert [s.action.kind for s in t.steps] == ["tool_call", "tool_call", "answer"]
    first, second, answer = t.steps
    assert (first.action.tool_call.name, first.action.tool_call.arguments) == ("check_stock", {"item": "pear"})
    assert first.action.tool_call.id.startswith("call_")
    assert first.observation.content == "0" and not first.observation.is_error
    assert second.observation.content == "ordered 5 pear; now 5"
    assert first.latency_ms is not None and first.latency_ms >= 0 and first.model_latency_ms is not None
    assert first.state == [{"role": "user", "content": "Do we have pears? If not, order 5."}]
    assert [m["role"] for m in second.state] == ["user", "assistant", "tool"]
    assert second.state[1]["tool_calls"][0]["function"]["name"] == "check_stock"
    assert answer.action.content == t.final_answer == "Pears were out of stock; I ordered 5, so there are 5 now."
    assert t.messages[-1] == {"role": "assistant", "content": t.final_answer}
    assert t.environment is None


async def test_ainvoke_records_like_invoke(react_graph, store, store_path):
    agent = record_experience(react_graph, app="shop", store=store_path)
    result = await agent.ainvoke(USER_TASK)
    agent.flush()
    assert result["messages"][-1].content.startswith("Pears were out of stock")
    [t] = list(store.iter_trajectories())
    assert [s.action.kind for s in t.steps] == ["tool_call", "tool_call", "answer"]


@pytest.mark.parametrize("mode", ["updates", "values", "messages"])
def test_stream_yields_the_same_chunks_and_records(react_graph, store, store_path, inventory, mode):
    def shape(chunks: list[Any]) -> list[str]:
        return [type(c).__name__ if mode == "messages" else ",".join(sorted(c)) for c in chunks]

    plain = shape(list(react_graph.stream(USER_TASK, stream_mode=mode)))
    inventory.stock["pear"] = 0
    agent = record_experience(react_graph, app="shop", store=store_path)
    assert shape(list(agent.stream(USER_TASK, stream_mode=mode))) == plain
    agent.flush()
    [t] = list(store.iter_trajectories())
    assert t.num_steps == 3 and t.final_answer.startswith("Pears")


async def test_astream_records(react_graph, store, store_path):
    agent = record_experience(react_graph, app="shop", store=store_path)
    chunks = [c async for c in agent.astream(USER_TASK, stream_mode="updates")]
    assert len(chunks) == 5
    agent.flush()
    assert store.trajectories()["num_steps"].to_list() == [3]


def test_stream_stopped_early_is_recorded_as_interrupted(react_graph, store, store_path):
    agent = record_experience(react_graph, app="shop", store=store_path)
    stream = agent.stream(USER_TASK, stream_mode="updates")
    next(stream)
    stream.close()
    agent.flush()
    assert store.trajectories()["status"].to_list() == ["interrupted"]


def test_exceptions_propagate_unchanged_and_the_run_is_recorded_as_error(tools, store, store_path):
    class Boom(RuntimeError):
        pass

    def explode(messages: Any, tools: Any) -> AIMessage:
        raise Boom("model server went away")

    graph = create_react_agent(ScriptedChatModel(policy=explode), tools)
    agent = record_experience(graph, app="shop", store=store_path)
    with pytest.raises(Boom, match="model server went away"):
        agent.invoke(USER_TASK)
    agent.flush()
    row = store.trajectories().row(0, named=True)
    assert row["status"] == "error" and "model server went away" in row["error"]


def test_a_multi_node_graph_records_system_prompt_and_steps(multi_node_graph, store, store_path):
    agent = record_experience(multi_node_graph, app="shop", store=store_path)
    agent.invoke(USER_TASK)
    agent.flush()
    [t] = list(store.iter_trajectories())
    assert t.steps[0].state[0] == {"role": "system", "content": "You manage a fruit shop."}
    assert [s.action.kind for s in t.steps] == ["tool_call", "tool_call", "answer"]


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_first_calls_of_a_decorated_factory_from_many_threads_build_one_recorder(react_graph, store_path, offload, monkeypatch):
    """(thread-safety sweep) 8 threads calling a decorated factory for the first time at once each built a recorder (with
    offload="process", each its own capture process, 7 of them never closed: only the first was used and closed)."""
    from concurrent.futures import ThreadPoolExecutor

    from ee_middleware.capture import recorder as recorder_module

    built: list[int] = []
    real_init = recorder_module.Recorder.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(recorder_module.Recorder, "__init__", counted)
    start = threading.Barrier(8)

    @record_experience(app="shop", store=store_path, offload=offload)
    def build() -> Any:
        start.wait(timeout=30)
        return react_graph

    before = {t.ident for t in threading.enumerate()}
    with ThreadPoolExecutor(8) as pool:
        agents = list(pool.map(lambda _: build(), range(8)))
    assert len({id(agent.recorder) for agent in agents}) == 1 and len(built) == 1, len(built)
    agents[0].invoke(USER_TASK)
    agents[0].recorder.close()
    time.sleep(0.2)
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("ee-")]
    assert left == [], left  # every thread the one recorder started ended with it (none of a second recorder's is left)
    assert LocalExperienceStore(store_path).trajectories().height == 1


def test_decorator_on_a_graph_factory(react_graph, store, store_path):
    @record_experience(app="shop", store=store_path)
    def build() -> Any:
        return react_graph

    first, second = build(), build()
    assert isinstance(first, RecordedGraph) and first.recorder is second.recorder
    first.invoke(USER_TASK)
    first.flush()
    assert store.trajectories().height == 1
    assert first.unwrap() is react_graph
    assert record_experience(first, app="shop") is first, "wrapping twice must not record twice"
    with pytest.raises(ConfigError, match=r"already recorded \(app 'shop'.*the app given here differ"):
        record_experience(first, app="other")  # never ignored silently


def test_bare_decorator_uses_the_function_name_as_app(react_graph, store_path, monkeypatch):
    monkeypatch.setenv("EE_STORE", str(store_path))

    @record_experience
    def support_bot() -> Any:
        return react_graph

    agent = support_bot()
    agent.invoke(USER_TASK)
    agent.flush()
    assert LocalExperienceStore(store_path).trajectories()["app"].to_list() == ["support_bot"]


def test_the_decorated_functions_name_is_the_app_only_where_nothing_else_names_it(react_graph, tmp_path, monkeypatch):
    """The container's EE_APP and the file's app were overridden by the decorated function's name (runs stored as app
    build_agent), while record_experience(graph) in the same environment gave EE_APP: the name was applied as if it were
    the app= keyword, above the file and the environment. It is now only the last default."""
    monkeypatch.delenv("EE_APP", raising=False)
    (tmp_path / "capture.toml").write_text('[capture]\napp = "support-bot"\n')

    def build_agent() -> Any:
        return react_graph

    def apps(**options: Any) -> str:
        return record_experience(store=tmp_path / "experience", **options)(build_agent)().recorder.config.app

    assert apps() == "build_agent"
    assert apps(config=str(tmp_path / "capture.toml")) == "support-bot"
    monkeypatch.setenv("EE_APP", "support-bot-prod")
    assert apps() == "support-bot-prod"
    assert apps(config=str(tmp_path / "capture.toml")) == "support-bot-prod", "EE_* over the file, as for every setting"
    assert apps(app="explicit") == "explicit"
    from ee_middleware.capture.config import CaptureConfig

    monkeypatch.delenv("EE_APP")
    assert apps(config=CaptureConfig(app="from-config", store=str(tmp_path / "experience"))) == "from-config"
    assert apps(config=CaptureConfig(store=str(tmp_path / "experience"))) == "build_agent"


async def test_decorator_on_an_async_factory_records_the_graph_it_builds(store, store_path):
    """The usual shape with langchain-mcp-adapters (tools = await client.get_tools(); return create_agent(...)): the
    decorated function stays async, and awaiting it gives a recorded graph (it used to give the bare graph: nothing
    recorded)."""

    @tool
    def ping() -> str:
        """Ping."""
        return "pong"

    @record_experience(store=store_path)
    async def mcp_bot() -> Any:
        """Build the agent."""
        await asyncio.sleep(0)  # tools = await MultiServerMCPClient(...).get_tools()
        return create_agent(ScriptedChatModel(script=[AIMessage("", tool_calls=[tool_call("ping")]), AIMessage("done")]), [ping])

    assert inspect.iscoroutinefunction(mcp_bot) and (mcp_bot.__name__, mcp_bot.__doc__) == ("mcp_bot", "Build the agent.")
    agent, again = await mcp_bot(), await mcp_bot()
    assert isinstance(agent, RecordedGraph) and agent.recorder is again.recorder
    assert (await agent.ainvoke({"messages": [("user", "ping please")]}))["messages"][-1].content == "done"
    assert agent.flush()
    [t] = list(store.iter_trajectories())
    assert (t.app, t.status, t.final_answer, [s.action.kind for s in t.steps]) == ("mcp_bot", "completed", "done", ["tool_call", "answer"])

    # a plain function handing back the coroutine that builds it (a partial, a lambda) is awaited and wrapped too
    later = record_experience(app="later", store=store_path)(lambda: mcp_bot.__wrapped__())
    assert isinstance(await later(), RecordedGraph)


def test_spans_follow_the_genai_conventions_and_reach_the_users_provider(react_graph, store_path, tracer_provider, span_exporter):
    agent = record_experience(react_graph, app="shop", store=store_path, tracer_provider=tracer_provider)
    agent.invoke(USER_TASK, {"configurable": {"thread_id": "th-1"}})
    agent.flush()
    spans = span_exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count("chat scripted-expert") == 3
    assert {"execute_tool check_stock", "execute_tool order_item", "invoke_agent shop"} <= set(names)
    root = next(s for s in spans if s.name == "invoke_agent shop")
    assert root.attributes[sc.OPERATION_NAME] == "invoke_agent"
    assert root.attributes[sc.AGENT_NAME] == "shop" and root.attributes[sc.CONVERSATION_ID] == "th-1"
    children = [s for s in spans if s is not root]
    assert all(s.parent.span_id == root.context.span_id and s.context.trace_id == root.context.trace_id for s in children)
    tool_span = next(s for s in spans if s.name == "execute_tool check_stock")
    assert tool_span.attributes[sc.OPERATION_NAME] == "execute_tool"
    assert tool_span.attributes[sc.TOOL_NAME] == "check_stock"
    assert tool_span.attributes[sc.TOOL_CALL_ID].startswith("call_")
    assert json.loads(tool_span.attributes[sc.TOOL_CALL_ARGUMENTS]) == {"item": "pear"}
    assert tool_span.attributes[sc.TOOL_CALL_RESULT] == "0"
    chat = next(s for s in spans if s.name.startswith("chat"))
    assert chat.attributes[sc.OPERATION_NAME] == "chat" and chat.attributes[sc.REQUEST_MODEL] == "scripted-expert"
    inputs = json.loads(chat.attributes[sc.INPUT_MESSAGES])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": "Do we have pears? If not, order 5."}]}]
    outputs = json.loads(chat.attributes[sc.OUTPUT_MESSAGES])
    assert outputs[0]["parts"][0]["type"] == "tool_call" and outputs[0]["parts"][0]["arguments"] == {"item": "pear"}
    assert outputs[0]["finish_reason"] == "tool_call"
    assert [d["name"] for d in json.loads(chat.attributes[sc.TOOL_DEFINITIONS])] == ["check_stock", "order_item"]


def test_user_spans_inside_tools_nest_under_the_agent_span(expert_model, store_path, tracer_provider, span_exporter):
    tracer = tracer_provider.get_tracer("user-code")

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        with tracer.start_as_current_span("db.query"):
            return "0"

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        return "ok"

    agent = record_experience(
        create_react_agent(expert_model, [check_stock, order_item]), app="shop", store=store_path, tracer_provider=tracer_provider
    )
    agent.invoke(USER_TASK)
    agent.flush()
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert spans["db.query"].context.trace_id == spans["invoke_agent shop"].context.trace_id


def test_approve_if_approves_automatically_and_a_failing_predicate_leaves_pending(react_graph, store, store_path, monkeypatch):
    agent = record_experience(react_graph, app="shop", store=store_path, approve_if=lambda t: t.num_steps == 3)
    agent.invoke(USER_TASK)
    agent.flush()
    row = store.trajectories().row(0, named=True)
    assert (row["approval"], row["approval_by"]) == ("approved", "auto:approve_if")
    assert agent.recorder.stats.trajectories_auto_approved == 1

    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")

    def broken(t: Any) -> bool:
        raise KeyError("no such field")

    lenient = record_experience(react_graph, app="shop2", store=store_path, approve_if=broken, strict=False)
    lenient.invoke(USER_TASK)
    assert lenient.flush() is True  # stored (pending): nothing lost
    assert store.trajectories(app="shop2")["approval"].to_list() == ["pending"]
    assert (lenient.recorder.stats.runs_failed, lenient.recorder.stats.approve_if_failed) == (0, 1)


def test_approve_if_approves_on_true_alone_and_leaves_a_run_pending_on_anything_else(react_graph, store, store_path, monkeypatch, caplog):
    """Was: taken by its truth, so ``lambda t: t.status`` (the text "error" too) or a rule returning "no" approved every
    run for training, with the reason "approve_if returned True". A NumPy bool (a comparison of array values) is a bool."""
    import numpy as np

    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    for app, rule, approval in (
        ("texts", lambda t: t.status, "pending"),
        ("no", lambda t: "no", "pending"),
        ("one", lambda t: 1, "pending"),
        ("none", lambda t: None, "pending"),
        ("numpy", lambda t: np.int64(t.num_steps) == 3, "approved"),
        ("false", lambda t: False, "pending"),
    ):
        agent = record_experience(react_graph, app=app, store=store_path, approve_if=rule, strict=False)
        agent.invoke(USER_TASK)
        assert agent.flush() is True, app  # stored: nothing lost
        assert store.trajectories(app=app)["approval"].to_list() == [approval], app
        failed = 0 if app in ("numpy", "false") else 1
        assert agent.recorder.stats.approve_if_failed == failed, app
    said = [r.getMessage() for r in caplog.records if "not True or False" in r.getMessage()]
    assert len(said) == 4 and "approve_if returned str 'completed', not True or False" in said[0], said
    assert "stays pending" in said[0]


def test_environment_reference_from_a_hook_and_from_the_run_config(react_graph, store, store_path):
    seen: list[Any] = []

    def environment(graph_input: Any, config: Any) -> dict[str, Any]:
        seen.append(config.get("configurable", {}).get("thread_id"))
        return {"inventory": {"pear": 0}, "seed": 7}

    agent = record_experience(react_graph, app="shop", store=store_path, environment=environment)
    agent.invoke(USER_TASK, {"configurable": {"thread_id": "x"}})
    agent.invoke(USER_TASK, {"configurable": {"ee_environment": {"scenario": "given"}}})
    agent.flush()
    environments = [t.environment for t in store.iter_trajectories()]
    assert environments == [{"inventory": {"pear": 0}, "seed": 7}, {"scenario": "given"}]
    assert seen == ["x"]


def test_an_environment_reference_that_is_not_a_dict_is_refused_before_the_run(react_graph, tools, store, store_path, inventory):
    """A bare value (a snapshot's name, a list of fixtures) cannot be a trajectory's environment (a JSON object a
    sandbox reads): it used to lose the whole run at assembly, a log line the only trace and flush() True. It is refused
    on the agent's thread, before the graph runs, naming where it was given."""
    agent = record_experience(react_graph, app="shop", store=store_path)
    with pytest.raises(ConfigError, match=r"\['ee_environment'\] must be a dict .*got str"):
        agent.invoke(USER_TASK, {"configurable": {"ee_environment": "db-snapshot-2026-11-22"}})
    hooked = record_experience(react_graph, app="shop", store=store_path, environment=lambda graph_input, config: ["fixture.sql"])
    with pytest.raises(ConfigError, match=r"environment= hook .*<lambda>\(\) returned a value that must be a dict .*got list"):
        hooked.invoke(USER_TASK)
    assert inventory.stock["pear"] == 0, "the graph must not have run"
    assert agent.flush() and hooked.flush()
    assert agent.recorder.stats.runs_failed == hooked.recorder.stats.runs_failed == 0
    assert store.trajectories().height == 0


def test_a_live_object_in_an_environment_is_refused_before_the_run_naming_where_it_is(react_graph, store, store_path, inventory, tmp_path):
    """A sqlite3 connection in the environment (the world itself instead of what rebuilds it) was stored as its repr
    with no error or warning, flush() True: every replay then skipped the trajectory. It is refused on the agent's
    thread, before the graph runs, naming the key, the type and what to store instead (a user-journey sweep)."""
    import sqlite3

    connection = sqlite3.connect(":memory:")
    try:
        hooked = record_experience(
            react_graph, app="shop", store=store_path, environment=lambda graph_input, config: {"db": {"conn": connection}}
        )
        with pytest.raises(
            ConfigError,
            match=r"hook .*<lambda>\(\) returned a value that holds a sqlite3\.Connection at environment\['db'\]\['conn'\].*iterdump",
        ):
            hooked.invoke(USER_TASK)
        agent = record_experience(react_graph, app="shop", store=store_path)
        with (
            open(tmp_path / "fixture.sql", "w") as handle,
            pytest.raises(
                ConfigError,
                match=r"\['ee_environment'\] must hold JSON data, but holds a _io\.TextIOWrapper at environment\['fixtures'\]\[1\]",
            ),
        ):
            agent.invoke(USER_TASK, {"configurable": {"ee_environment": {"fixtures": ["a.sql", handle]}}})
    finally:
        connection.close()
    assert inventory.stock["pear"] == 0, "the graph must not have run"
    assert hooked.flush() and agent.flush() and store.trajectories().height == 0


def test_an_environment_from_a_data_frame_is_stored_and_a_dataclass_holding_a_connection_refused(react_graph, store, store_path):
    """A review of the refusal above: pandas' missing value (pd.NA, a nullable column's) and a Series were refused as
    live objects, and a dataclass holding a connection raised a TypeError from copying it (a vague capture failure)."""
    import dataclasses
    import sqlite3

    pd = pytest.importorskip("pandas")
    agent = record_experience(react_graph, app="shop", store=store_path)
    agent.invoke(USER_TASK, {"configurable": {"ee_environment": {"quota": pd.NA, "skus": pd.Series(["A1", "B2"])}}})
    agent.flush()
    assert [t.environment for t in store.iter_trajectories()] == [{"quota": None, "skus": ["A1", "B2"]}]

    @dataclasses.dataclass
    class World:
        conn: Any

    connection = sqlite3.connect(":memory:")
    try:
        with pytest.raises(ConfigError, match=r"must hold JSON data, but holds a .*World at environment\['world'\]"):
            agent.invoke(USER_TASK, {"configurable": {"ee_environment": {"world": World(connection)}}})
    finally:
        connection.close()


def test_a_failing_environment_hook_is_named_where_the_run_is_not_recorded(react_graph, store, store_path, monkeypatch):
    """The log said 'could not start recording: OperationalError('database is locked')', which reads as the store's own
    lock; it names the hook now. The app's run goes on, unrecorded (strict capture raises it)."""
    import sqlite3

    def clinic_world(graph_input: Any, config: Any) -> dict[str, Any]:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    agent = record_experience(react_graph, app="shop", store=store_path, environment=clinic_world, strict=False)
    assert agent.invoke(USER_TASK)["messages"][-1].content.startswith("Pears")
    assert not agent.flush()
    expected = "could not start recording: the environment= hook test_a_failing_environment_hook_is_named_where_the_run_is_not_recorded.<locals>.clinic_world() raised OperationalError('database is locked')"
    assert agent.recorder.stats.errors == [expected]
    strict = record_experience(react_graph, app="shop", store=store_path, environment=clinic_world, strict=True)
    with pytest.raises(CaptureError, match=r"environment= hook .*clinic_world\(\) raised OperationalError"):
        strict.invoke(USER_TASK)
    assert store.trajectories().height == 0


class _Tier(enum.Enum):
    gold = "gold"


def test_paths_and_decimals_in_an_environment_are_stored_as_text_and_numbers(react_graph, store, store_path):
    """Values a sandbox reads back: paths and UUIDs as their text, numbers as numbers, an enum member as its value,
    dates, times and durations as ISO 8601 text (as pydantic's JSON mode writes them; a UUID, an enum and a duration
    were their Python repr, "UUID('...')", which no sandbox could parse)."""
    environment = {
        "data": Path("/data/x"),
        "prices": [Decimal("1.10"), Decimal("3"), Decimal("0.1000000000000000000001")],
        "when": datetime.date(2026, 11, 22),
        "customer": uuid.UUID(int=5),
        "tier": _Tier.gold,
        "sla": datetime.timedelta(hours=4),
        "opens": datetime.time(9, 30),
    }
    agent = record_experience(react_graph, app="shop", store=store_path, environment=lambda graph_input, config: environment)
    agent.invoke(USER_TASK)
    agent.flush()
    [t] = list(store.iter_trajectories())
    assert t.environment == {
        "data": "/data/x",
        "prices": [1.1, 3, "0.1000000000000000000001"],
        "when": "2026-11-22",
        "customer": "00000000-0000-0000-0000-000000000005",
        "tier": "gold",
        "sla": "PT4H",
        "opens": "09:30:00",
    }
    assert uuid.UUID(t.environment["customer"]) == environment["customer"]
    assert environment["data"] == Path("/data/x"), "the caller's data is not changed"


def test_eight_threads_recording_at_once_lose_nothing(expert_model, tools, store, store_path):
    graph = create_react_agent(expert_model, tools)
    agent = record_experience(graph, app="shop", store=store_path)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                agent.invoke(USER_TASK, {"configurable": {"thread_id": f"w{n}-{i}"}})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    agent.flush()
    assert not errors
    frame = store.trajectories()
    assert frame.height == 40 and frame["id"].n_unique() == 40
    assert sorted(frame["thread_id"].to_list()) == sorted(f"w{n}-{i}" for n in range(8) for i in range(5))
    assert set(frame["num_steps"].to_list()) == {3}, "steps of concurrent runs must not mix"


def test_batch_records_each_input(react_graph, store, store_path):
    agent = record_experience(react_graph, app="shop", store=store_path)
    results = agent.batch([USER_TASK, USER_TASK, USER_TASK])
    agent.flush()
    assert len(results) == 3 and store.trajectories().height == 3


@pytest.mark.parametrize("shape", ["with_config", "with_config_with_retry"])
def test_a_thread_id_and_environment_bound_on_the_graph_before_wrapping_are_recorded(store, store_path, shape):
    """graph.with_config({"configurable": {"thread_id": ...}}) then record_experience: the graph runs on that thread, so
    its trajectories are on it (they had no thread id); the call's own thread id still wins, as it does for the graph."""

    def policy(messages: Any, tools: Any) -> AIMessage:
        return AIMessage(f"turn {sum(m.type == 'human' for m in messages)}")

    graph = create_agent(ScriptedChatModel(policy=policy), [], checkpointer=InMemorySaver())
    bound = graph.with_config({"configurable": {"thread_id": "session-42", "ee_environment": {"db": "snap"}}})
    agent = record_experience(bound.with_retry() if shape == "with_config_with_retry" else bound, app="bound", store=store_path)
    agent.invoke({"messages": [("user", "hello")]})
    assert agent.invoke({"messages": [("user", "again")]})["messages"][-1].content == "turn 2"
    agent.invoke({"messages": [("user", "elsewhere")]}, {"configurable": {"thread_id": "other"}})
    agent.flush()
    stored = sorted((t.started_at, t.task, t.thread_id, t.environment) for t in store.iter_trajectories())
    assert [row[1:] for row in stored] == [
        ("hello", "session-42", {"db": "snap"}),
        ("again", "session-42", {"db": "snap"}),
        ("elsewhere", "other", {"db": "snap"}),
    ]


def test_batch_raises_the_failure_of_the_lowest_index_as_the_graphs_own_batch(store, store_path):
    """Input 0 fails after input 1 has failed: the graph's batch raises input 0's failure (executor.map's order), and so
    does the recorded agent's (it raised the first failure to end); every run ends and is recorded either way."""

    class SlowFail(Exception):
        pass

    class FastFail(Exception):
        pass

    fast_failed = threading.Event()

    @tool
    def work(kind: str) -> str:
        """Work."""
        if kind == "slow":
            fast_failed.wait(10)
            time.sleep(0.3)  # only orders the failures (input 1's run ends first); nothing is timed
            raise SlowFail("input 0 failed")
        if kind == "fast":
            fast_failed.set()
            raise FastFail("input 1 failed")
        return "ok"

    def policy(messages: Any, tools: Any) -> AIMessage:
        if messages[-1].type == "human":
            return AIMessage("", tool_calls=[tool_call("work", kind=messages[-1].content)])
        return AIMessage("done")

    graph = create_agent(ScriptedChatModel(policy=policy), [work])
    inputs = [{"messages": [("user", kind)]} for kind in ("slow", "fast", "fine")]
    agent = record_experience(graph, app="batch", store=store_path)
    for runnable in (graph, agent):
        fast_failed.clear()
        with pytest.raises(SlowFail):
            runnable.batch(inputs)
    fast_failed.clear()
    slow, fast, fine = agent.batch(inputs, return_exceptions=True)
    assert (type(slow), type(fast), fine["messages"][-1].content) == (SlowFail, FastFail, "done")
    agent.flush()
    assert sorted(store.trajectories()["status"].to_list()) == sorted(["error", "error", "completed"] * 2)


def test_odd_tool_outputs_unicode_and_huge_observations(store, store_path):
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque thing>"

    @tool(response_format="content_and_artifact")
    def fetch(kind: str) -> tuple[str, Any]:
        """Fetch something."""
        if kind == "huge":
            return "x" * 50_000, None
        if kind == "unicode":
            return "naïve café ✓ 日本語 \ud800 🚀", Opaque()
        return json.dumps({"set": "ok"}), {1, 2}

    script = [
        AIMessage(content="", tool_calls=[tool_call("fetch", kind="unicode")]),
        AIMessage(content="", tool_calls=[tool_call("fetch", kind="huge")]),
        AIMessage(content="", tool_calls=[tool_call("fetch", kind="set")]),
        AIMessage(content="done ✓"),
    ]
    graph = create_react_agent(ScriptedChatModel(script=script), [fetch])
    agent = record_experience(graph, app="odd", store=store_path, max_observation_chars=1000)
    agent.invoke({"messages": [("user", "fetch odd things 🚀")]})
    agent.flush()
    store.compact()
    [t] = list(LocalExperienceStore(store_path).iter_trajectories())
    unicode_step, huge_step, set_step, _ = t.steps
    assert unicode_step.observation.content == "naïve café ✓ 日本語 \ufffd 🚀"
    assert len(huge_step.observation.content) == 1000 and huge_step.observation.truncated_chars == 49_000
    assert all(len(m["content"]) <= 1000 for m in t.messages if m["role"] == "tool")
    assert set_step.observation.content == '{"set": "ok"}'
    assert t.task == "fetch odd things 🚀"


def test_tool_errors_are_recorded_as_error_observations(tools, store, store_path):
    script = [AIMessage(content="", tool_calls=[tool_call("check_stock", item="kiwi")]), AIMessage(content="No kiwis known.")]
    graph = build_multi_node_graph(ScriptedChatModel(script=script), tools)
    agent = record_experience(graph, app="shop", store=store_path)
    agent.invoke({"messages": [("user", "kiwis?")]})
    agent.flush()
    [t] = list(store.iter_trajectories())
    assert t.steps[0].observation.is_error
    assert "unknown item 'kiwi'" in t.steps[0].observation.content


class FailingStore(LocalExperienceStore):
    """A real local store whose writes fail, as a full disk would make them."""

    def write(self, trajectories: Any) -> int:
        raise OSError(28, "No space left on device")


def test_recording_failures_never_break_the_agent(react_graph, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    agent = record_experience(react_graph, app="shop", store=FailingStore(tmp_path / "s"), strict=False)
    result = agent.invoke(USER_TASK)
    assert result["messages"][-1].content.startswith("Pears")
    assert not agent.flush(), "flush says that a run failed to be stored since the last flush"
    assert agent.flush(), "once"
    stats = agent.recorder.stats
    assert stats.runs_failed == 1 and "No space left on device" in stats.errors[0]


def test_recording_failures_raise_in_strict_mode(react_graph, tmp_path: Path):
    agent = record_experience(react_graph, app="shop", store=FailingStore(tmp_path / "s"), strict=True)
    agent.invoke(USER_TASK)
    with pytest.raises(CaptureError, match="No space left on device"):
        agent.flush()


def test_bad_arguments_are_rejected_with_a_clear_message(react_graph, store_path):
    with pytest.raises(ConfigError, match="compiled LangGraph graph"):
        record_experience(42, app="x")
    with pytest.raises(ConfigError, match="max_observation_chars"):
        record_experience(react_graph, app="x", store=store_path, max_observation_chars=0)
    with pytest.raises(ConfigError, match="Unknown capture setting"):
        record_experience(react_graph, app="x", store=store_path, colour="blue")
    with pytest.raises(ConfigError, match="TracerProvider"):
        record_experience(react_graph, app="x", store=store_path, tracer_provider=object())


@pytest.mark.parametrize("failing", ["chat_attributes", "tool_result"])
def test_a_span_whose_payload_cannot_be_encoded_is_still_exported_and_the_failure_counted(
    failing, react_graph, store_path, tracer_provider, span_exporter, monkeypatch
):
    """Fault injected into the real encoder: the span goes out with what was encoded before the failure."""
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    agent = record_experience(react_graph, app="shop", store=store_path, tracer_provider=tracer_provider, strict=False)

    def broken(*args, **kwargs):
        raise RuntimeError("cannot encode")

    monkeypatch.setattr(agent.recorder.encoder, failing, broken)
    result = agent.invoke(USER_TASK)
    assert result["messages"][-1].content.startswith("Pears")
    agent.flush()
    spans = span_exporter.get_finished_spans()
    kind = "chat" if failing == "chat_attributes" else "execute_tool"
    made = [s for s in spans if s.name.startswith(kind)]
    assert len(made) == (3 if kind == "chat" else 2)
    for span in made:
        assert span.attributes[sc.OPERATION_NAME] == kind and span.end_time >= span.start_time
        assert sc.INPUT_MESSAGES not in span.attributes and sc.TOOL_CALL_RESULT not in span.attributes
    if kind == "execute_tool":
        assert all(json.loads(s.attributes[sc.TOOL_CALL_ARGUMENTS]) for s in made)
    stats = agent.recorder.stats
    assert (stats.runs_failed, stats.spans_failed) == (1, len(made)), "each span failed, and its run is not stored"
    assert "cannot encode" in stats.errors[0]


def test_a_failure_message_that_quotes_run_data_is_redacted_before_it_is_logged_or_kept(
    react_graph, store, store_path, monkeypatch, caplog
):
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")

    def quoting(t: Any) -> bool:
        raise ValueError("customer alice.smith@example.com has no order")

    agent = record_experience(react_graph, app="shop", store=store_path, approve_if=quoting, strict=False)
    agent.invoke(USER_TASK)
    agent.flush()
    [message] = agent.recorder.stats.errors
    assert "approve_if raised" in message and "[REDACTED:email:" in message and "has no order" in message
    assert "alice.smith@example.com" not in message and "alice.smith@example.com" not in caplog.text


def _order_agent() -> Any:
    """A real create_agent graph that looks the order of each question up and answers with what the tool said."""

    @tool
    def lookup(order_id: str) -> str:
        """Look an order up by its id."""
        return f"order {order_id} is shipped"

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        last = messages[-1]
        if last.type == "human":
            return AIMessage(content="", tool_calls=[tool_call("lookup", order_id=last.content.split()[-1])])
        return AIMessage(content=f"Answer: {last.content}")

    return create_agent(ScriptedChatModel(policy=policy), [lookup])


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_flush_returns_false_when_runs_could_not_be_written_to_a_full_disk(offload: str, tmp_path: Path, monkeypatch) -> None:
    """On a full disk the runs were lost (logged, counted in runs_failed), yet flush() returned True in thread mode,
    while process mode returned False for runs lost with a dead child. flush() now returns False in either mode when a
    run failed to be stored since the last flush (once), and True again once runs are written. A real full tmpfs, filled
    to its last byte (filled 64 KiB at a time, a run written alone could still fit in what was left)."""
    import os

    from tests.store.mounts import fill_up, tiny_tmpfs

    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    with tiny_tmpfs(tmp_path, "512k") as disk:
        agent = record_experience(_order_agent(), app="shop", store=disk / "experience", offload=offload, strict=False)
        try:
            agent.invoke({"messages": [("user", "where is A-1")]})
            assert agent.flush(30)
            filler = disk / "filler"
            fill_up(filler)
            for order in ("B-1", "B-2"):
                agent.invoke({"messages": [("user", f"where is {order}")]})
            assert not agent.flush(30), "runs were lost to the full disk"
            assert agent.flush(30), "said once"
            os.unlink(filler)
            agent.invoke({"messages": [("user", "where is C-1")]})
            assert agent.flush(30)
            stats = agent.recorder.stats
            # both B runs lost, or in process mode B-1 written alone before B-2 came (it fits in the room the spool
            # segment's last page has left; the two together do not): each run counted once, written or failed
            assert stats.runs_failed >= 1 and stats.runs_failed + stats.trajectories_written == 4, stats
            assert offload == "process" or stats.runs_failed == 2
        finally:
            agent.recorder.close()
        tasks = sorted(LocalExperienceStore(disk / "experience").trajectories()["task"].to_list())
        assert len(tasks) == stats.trajectories_written and {"where is A-1", "where is C-1"} <= set(tasks)


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_runs_recorded_after_the_store_folder_was_removed_are_stored_in_it_again(offload: str, store_path: Path) -> None:
    """The store folder removed while the service ran: later runs were written into the deleted segment, counted as
    written, and flush() returned True; the folder never came back. They are now stored in the folder made again."""
    import shutil

    agent = record_experience(_order_agent(), app="shop", store=store_path, offload=offload)
    try:
        agent.invoke({"messages": [("user", "where is A-1")]})
        assert agent.flush(30)
        shutil.rmtree(store_path)
        agent.invoke({"messages": [("user", "where is B-1")]})
        assert agent.flush(30)
    finally:
        agent.recorder.close()
    assert LocalExperienceStore(store_path, create=False).trajectories()["task"].to_list() == ["where is B-1"]


def test_a_decorated_function_that_returns_no_graph_is_refused_with_what_to_return(react_graph: Any, store_path: Path) -> None:
    """A builder returning (graph, checkpointer), or a decorated function that runs the agent, gave its result back
    unwrapped: no run was recorded, and nothing said so (the store folder was never created)."""

    @record_experience(app="shop", store=store_path)
    def build_agent() -> Any:
        saver = InMemorySaver()
        return react_graph, saver

    with pytest.raises(ConfigError) as caught:
        build_agent()
    message = str(caught.value)
    assert "build_agent()" in message and "tuple (CompiledStateGraph, InMemorySaver)" in message
    assert "Its item 0 is the graph: return the graph alone" in message and "record_experience(graph" in message

    @record_experience(app="shop", store=store_path)
    def answer(question: str) -> Any:
        return react_graph.invoke({"messages": [("user", question)]})

    with pytest.raises(
        ConfigError, match=r"answer\(\): the function returned a dict with keys 'messages'.*Decorate the function that builds"
    ):
        answer("Do we have pears?")

    @record_experience(app="shop", store=store_path)
    async def abuild() -> Any:
        return {"agent": react_graph}

    with pytest.raises(ConfigError, match=r"Its value 'agent' is the graph"):
        asyncio.run(abuild())
    assert not store_path.exists(), "nothing was recorded, nor a store created"


def test_a_decorated_builder_of_an_uncompiled_graph_or_a_context_manager_is_told_its_own_fix(store_path: Path) -> None:
    """A builder returning its StateGraph uncompiled, and an @asynccontextmanager factory (LangGraph Platform's form, the
    usual one with AsyncPostgresSaver.from_conn_string), were told to "decorate the function that builds and returns the
    graph", which they are: the fix is to compile it, and to wrap the graph where the factory yields it."""
    import contextlib

    from langgraph.graph import END, START, MessagesState, StateGraph

    def builder() -> Any:
        graph = StateGraph(MessagesState)
        graph.add_node("answer", lambda state: {})
        graph.add_edge(START, "answer")
        graph.add_edge("answer", END)
        return graph

    @record_experience(app="shop", store=store_path)
    def build_agent() -> Any:
        return builder()  # .compile() forgotten

    with pytest.raises(ConfigError) as caught:
        build_agent()
    message = str(caught.value)
    assert "build_agent(): the function returned a StateGraph, not a compiled LangGraph graph" in message
    assert "not compiled: return builder.compile() from " in message and "Decorate the function" not in message

    @record_experience(app="shop", store=store_path)
    @contextlib.asynccontextmanager
    async def make_graph() -> Any:
        yield builder().compile()

    with pytest.raises(ConfigError) as caught:
        make_graph()
    message = str(caught.value)
    assert "make_graph(): the function returned a _AsyncGeneratorContextManager" in message
    assert "take @record_experience off " in message and "yield record_experience(graph, app=..., store=...)" in message
    assert "Decorate the function" not in message
    assert not store_path.exists(), "nothing was recorded, nor a store created"


def test_a_run_the_store_refused_is_not_counted_as_auto_approved_injected(react_graph, store_path, monkeypatch):
    """Sweep W: ``trajectories_auto_approved`` counted runs approve_if approved before the store refused them (12 against
    5 written on a full disk). Injected (no full disk here): the store's write raises ENOSPC for the second run."""
    import errno
    import os

    from ee_middleware.store import LocalExperienceStore

    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    agent = record_experience(react_graph, app="shop", store=store_path, approve_if=lambda t: True, strict=False)
    agent.invoke(USER_TASK)
    assert agent.flush()
    real_write = LocalExperienceStore.write

    def full(self, trajectories):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LocalExperienceStore, "write", full)
    agent.invoke(USER_TASK)
    assert not agent.flush()
    monkeypatch.setattr(LocalExperienceStore, "write", real_write)
    stats = agent.recorder.stats
    assert (stats.trajectories_written, stats.trajectories_auto_approved, stats.runs_failed) == (1, 1, 1), stats


def test_the_factory_build_lock_is_new_in_a_forked_child():
    """(review) A fork while another thread held the build lock left the child a lock no thread of its own releases: its
    first call of the decorated factory waited forever."""
    import os
    import signal

    from ee_middleware.capture.recorder import _ForkSafeLock

    lock = _ForkSafeLock()
    holding, release = threading.Event(), threading.Event()

    def build_in_progress() -> None:
        with lock.held():
            holding.set()
            release.wait(30)

    builder = threading.Thread(target=build_in_progress)
    builder.start()
    try:
        assert holding.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: the parent's build is not its own
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(10)
            with lock.held():
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        release.set()
        builder.join(30)
