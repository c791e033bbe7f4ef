"""A graph run inside a tool of the recorded run (an agent used as a tool) is a trajectory of its own, as ``ee traces
ingest`` reads it from other instrumentations' spans (tests/ingest/test_nested_agents.py): real ``create_agent`` graphs,
the real OTel SDK, both offload modes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from ee_middleware import record_experience
from ee_middleware.export import export_jsonl
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call

OFFLOADS = ["thread", pytest.param("process", marks=pytest.mark.heavy)]
"""Capture in the agent's threads, and in a child process (a child per recorder: make test-heavy)."""


@tool
def fx_rate(cur: str) -> str:
    """The exchange rate of one euro."""
    return f"1 EUR = 1.1 {cur}"


def _sub_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
    if messages[-1].type == "human":
        return AIMessage("", tool_calls=[tool_call("fx_rate", cur="USD")])
    return AIMessage(f"sub says: {messages[-1].content}")


def _sup_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
    if messages[-1].type == "human":
        return AIMessage("", tool_calls=[tool_call("ask_fx_expert", question="EUR to USD?")])
    return AIMessage(f"Final: {messages[-1].content}")


SUB = create_agent(ScriptedChatModel(policy=_sub_policy, model_name="sub-model"), [fx_rate], system_prompt="You are the FX expert.")


@tool
def ask_fx_expert(question: str) -> str:
    """Ask the FX sub-agent (it inherits the tool's configuration: the outer run's thread)."""
    return SUB.invoke({"messages": [("user", question)]})["messages"][-1].content


@tool("ask_fx_expert")
def ask_fx_expert_on_its_thread(question: str) -> str:
    """Ask the FX sub-agent on a thread of its own."""
    return SUB.invoke({"messages": [("user", question)]}, {"configurable": {"thread_id": "inner"}})["messages"][-1].content


def _steps(trajectory: Any) -> list[tuple[str, str | None]]:
    return [
        (s.action.tool_call.name, s.observation.content) if s.action.tool_call else ("answer", s.action.content) for s in trajectory.steps
    ]


def _supervisor(tool_fn: Any) -> Any:
    model = ScriptedChatModel(policy=_sup_policy, model_name="sup-model")
    return create_agent(model, [tool_fn], system_prompt="You are the supervisor.")


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("inner_thread", [False, True], ids=["inherits_config", "own_thread"])
def test_an_agent_run_inside_a_tool_is_a_trajectory_of_its_own(tmp_path: Path, offload: str, inner_thread: bool, caplog: Any) -> None:
    """The supervisor's tool runs a sub-agent. Its model and tool calls were mixed into the supervisor's trajectory
    (steps [ask_fx_expert, fx_rate, answer, answer], tools the union, messages and the JSONL export the supervisor's
    conversation only, the sub-agent's two decisions exported nowhere, and a warning that the tools change). Now the
    supervisor keeps its tool call with the result the tool returned, and the sub-agent's run is a trajectory of its
    own: its task, model, tools, steps and answer, on the supervisor's thread when it inherited the tool's configuration
    and on none when invoked with a thread of its own (its thread is not in the callbacks; ingest reads it alike)."""
    store_path = tmp_path / "store"
    agent = record_experience(
        _supervisor(ask_fx_expert_on_its_thread if inner_thread else ask_fx_expert), app="fx", store=store_path, offload=offload
    )
    with caplog.at_level("WARNING", logger="ee_middleware.capture"):
        out = agent.invoke({"messages": [("user", "How many dollars for 100 EUR?")]}, {"configurable": {"thread_id": "outer"}})
        assert agent.flush()
    assert out["messages"][-1].content == "Final: sub says: 1 EUR = 1.1 USD"
    assert "different tools" not in caplog.text
    store = LocalExperienceStore(store_path)
    try:
        outer, inner = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
        assert (outer.task, outer.model, outer.thread_id, outer.status) == (
            "How many dollars for 100 EUR?",
            "sup-model",
            "outer",
            "completed",
        )
        assert [t["function"]["name"] for t in outer.tools] == ["ask_fx_expert"]
        assert _steps(outer) == [("ask_fx_expert", "sub says: 1 EUR = 1.1 USD"), ("answer", "Final: sub says: 1 EUR = 1.1 USD")]
        assert [m["role"] for m in outer.messages] == ["system", "user", "assistant", "tool", "assistant"]
        assert (inner.task, inner.model, inner.status, inner.app) == ("EUR to USD?", "sub-model", "completed", "fx")
        assert inner.thread_id == (None if inner_thread else "outer")
        assert [t["function"]["name"] for t in inner.tools] == ["fx_rate"]
        assert _steps(inner) == [("fx_rate", "1 EUR = 1.1 USD"), ("answer", "sub says: 1 EUR = 1.1 USD")]
        assert inner.final_answer == "sub says: 1 EUR = 1.1 USD" and inner.messages[0]["content"] == "You are the FX expert."
        assert inner.started_at >= outer.started_at and inner.id != outer.id
        assert export_jsonl(store, tmp_path / "out.jsonl", status=None) == 2
    finally:
        store.close()


def test_a_model_a_tool_calls_itself_stays_in_the_run(tmp_path: Path) -> None:
    """A tool that calls a model directly (no graph of its own: the tool's namespace) is no run of its own: its call is a
    decision of the recorded run, as before (and as ingest reads it)."""
    helper = ScriptedChatModel(script=[AIMessage("a haiku about rain")], model_name="helper-model")

    @tool
    def write_poem(topic: str) -> str:
        """Write a poem."""
        return helper.invoke(f"write about {topic}").content

    def policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        if messages[-1].type == "human":
            return AIMessage("", tool_calls=[tool_call("write_poem", topic="rain")])
        return AIMessage(f"Here: {messages[-1].content}")

    store_path = tmp_path / "store"
    agent = record_experience(create_agent(ScriptedChatModel(policy=policy), [write_poem]), app="poet", store=store_path)
    agent.invoke({"messages": [("user", "a poem please")]})
    agent.flush()
    store = LocalExperienceStore(store_path)
    try:
        [t] = list(store.iter_trajectories())
    finally:
        store.close()
    assert [s.action.tool_call.name if s.action.tool_call else s.action.content for s in t.steps] == [
        "write_poem",
        "a haiku about rain",
        "Here: a haiku about rain",
    ]


def _stored(*paths: Path) -> list[Any]:
    """The trajectories in the stores at ``paths`` (each folder once), oldest first, with the folder each is in."""
    out = []
    for path in dict.fromkeys(paths):
        store = LocalExperienceStore(path)
        try:
            out += [(t, path) for t in store.iter_trajectories()]
        finally:
            store.close()
    return sorted(out, key=lambda pair: pair[0].started_at)


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("stores", ["same_store", "own_store"])
def test_a_sub_agent_recorded_itself_is_stored_once_by_its_own_recorder(tmp_path: Path, offload: str, stores: str, caplog: Any) -> None:
    """The supervisor's tool invokes a sub-agent that is itself wrapped with ``record_experience`` (app "fx-expert", in
    the supervisor's store or one of its own). Its run was stored twice: by its own recorder, and by the supervisor's as
    a nested trajectory of app "fx" (before that, merged into the supervisor's run). Now its own recorder alone stores it
    (its app, store and options are the user's choice), and the supervisor's run keeps its tool call and the result the
    tool returned: the sub-agent's calls, made while its own recorded run is in flight, are that recorder's."""
    outer_path = tmp_path / "outer"
    inner_path = outer_path if stores == "same_store" else tmp_path / "inner"
    expert = record_experience(SUB, app="fx-expert", store=inner_path, offload=offload)

    @tool("ask_fx_expert")
    def ask_recorded_expert(question: str) -> str:
        """Ask the FX sub-agent (recorded by its own recorder)."""
        return expert.invoke({"messages": [("user", question)]})["messages"][-1].content

    agent = record_experience(_supervisor(ask_recorded_expert), app="fx", store=outer_path, offload=offload)
    try:
        with caplog.at_level("WARNING", logger="ee_middleware.capture"):
            out = agent.invoke({"messages": [("user", "How many dollars for 100 EUR?")]}, {"configurable": {"thread_id": "outer"}})
            assert agent.flush() and expert.flush()
        assert out["messages"][-1].content == "Final: sub says: 1 EUR = 1.1 USD"
        assert "different tools" not in caplog.text
        [(outer, outer_in), (inner, inner_in)] = _stored(outer_path, inner_path)
        assert (outer.app, outer.task, outer.model, outer.thread_id, outer_in) == (
            "fx",
            "How many dollars for 100 EUR?",
            "sup-model",
            "outer",
            outer_path,
        )
        assert [t["function"]["name"] for t in outer.tools] == ["ask_fx_expert"]
        assert _steps(outer) == [("ask_fx_expert", "sub says: 1 EUR = 1.1 USD"), ("answer", "Final: sub says: 1 EUR = 1.1 USD")]
        assert [m["role"] for m in outer.messages] == ["system", "user", "assistant", "tool", "assistant"]
        assert (inner.app, inner.task, inner.model, inner.status, inner_in) == (
            "fx-expert",
            "EUR to USD?",
            "sub-model",
            "completed",
            inner_path,
        )
        assert [t["function"]["name"] for t in inner.tools] == ["fx_rate"]
        assert _steps(inner) == [("fx_rate", "1 EUR = 1.1 USD"), ("answer", "sub says: 1 EUR = 1.1 USD")]
    finally:
        agent.recorder.close()
        expert.recorder.close()


def test_a_recorded_sub_agent_in_a_state_graph_tool_keeps_the_agent_inside_its_own_tool(tmp_path: Path) -> None:
    """Three levels, run with ``ainvoke``: a hand-built ``StateGraph`` (model node, ``ToolNode``) whose async tool awaits a
    desk agent wrapped with ``record_experience`` into a store of its own, whose tool in turn invokes the FX sub-agent,
    unwrapped. The outer store holds the outer run alone (its tool call and the result it returned); the desk's recorder
    stores the desk's run and, a trajectory of its own as for any agent run inside a tool, the sub-agent's: the calls
    below the desk's tool are the desk recorder's too, not the outer run's."""
    outer_path, desk_path = tmp_path / "outer", tmp_path / "desk"

    @tool
    def ask_fx_desk(question: str) -> str:
        """Ask the FX sub-agent (unwrapped)."""
        return SUB.invoke({"messages": [("user", question)]})["messages"][-1].content

    def desk_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        if messages[-1].type == "human":
            return AIMessage("", tool_calls=[tool_call("ask_fx_desk", question="EUR to USD?")])
        return AIMessage(f"desk says: {messages[-1].content}")

    desk = record_experience(
        create_agent(ScriptedChatModel(policy=desk_policy, model_name="desk-model"), [ask_fx_desk]), app="fx-desk", store=desk_path
    )

    @tool
    async def consult(question: str) -> str:
        """Consult the FX desk (recorded by its own recorder)."""
        return (await desk.ainvoke({"messages": [("user", question)]}))["messages"][-1].content

    def outer_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        if messages[-1].type == "human":
            return AIMessage("", tool_calls=[tool_call("consult", question="How is the euro?")])
        return AIMessage(f"Final: {messages[-1].content}")

    model = ScriptedChatModel(policy=outer_policy, model_name="sup-model").bind_tools([consult])

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode([consult]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    agent = record_experience(graph.compile(), app="fx", store=outer_path)
    try:
        out = asyncio.run(agent.ainvoke({"messages": [("user", "How many dollars for 100 EUR?")]}, {"configurable": {"thread_id": "t"}}))
        assert agent.flush() and desk.flush()
        assert out["messages"][-1].content == "Final: desk says: sub says: 1 EUR = 1.1 USD"
        [(outer, _)] = _stored(outer_path)
        assert (outer.app, outer.model, outer.thread_id) == ("fx", "sup-model", "t")
        assert _steps(outer) == [
            ("consult", "desk says: sub says: 1 EUR = 1.1 USD"),
            ("answer", "Final: desk says: sub says: 1 EUR = 1.1 USD"),
        ]
        [(desk_run, _), (sub_run, _)] = _stored(desk_path)
        assert (desk_run.app, desk_run.task, desk_run.model) == ("fx-desk", "How is the euro?", "desk-model")
        assert _steps(desk_run) == [("ask_fx_desk", "sub says: 1 EUR = 1.1 USD"), ("answer", "desk says: sub says: 1 EUR = 1.1 USD")]
        assert (sub_run.app, sub_run.task, sub_run.model) == ("fx-desk", "EUR to USD?", "sub-model")
        assert _steps(sub_run) == [("fx_rate", "1 EUR = 1.1 USD"), ("answer", "sub says: 1 EUR = 1.1 USD")]
    finally:
        agent.recorder.close()
        desk.recorder.close()


@tool
def desk_rate(cur: str) -> str:
    """The exchange rate of one euro, as the FX desk quotes it."""
    return f"1 EUR = 1.1 {cur} (desk D-42)"  # only the sub-agent sees the desk's name


def _desk_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
    if messages[-1].type == "human":
        return AIMessage("", tool_calls=[tool_call("desk_rate", cur="USD")])
    return AIMessage("sub says: 1.1")


DESK_SUB = create_agent(ScriptedChatModel(policy=_desk_policy, model_name="sub-model"), [desk_rate], system_prompt="You are the FX expert.")


@tool("ask_fx_expert")
def ask_desk_expert(question: str) -> str:
    """Ask the FX sub-agent."""
    return DESK_SUB.invoke({"messages": [("user", question)]})["messages"][-1].content


def fail_on_desk(text: str) -> str:
    """A user's ``redact_fn`` that raises on text only the sub-agent sees (module level: the capture process imports it)."""
    if "desk D-42" in text:
        raise RuntimeError(f"cannot scrub: {text}")
    return text


def fail_on_supervisor(text: str) -> str:
    """A user's ``redact_fn`` that raises on text only the supervisor's model calls hold (its system prompt)."""
    if "You are the supervisor" in text:
        raise RuntimeError(f"cannot scrub: {text}")
    return text


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("failing", ["sub_agent", "supervisor"])
def test_a_call_that_could_not_be_recorded_whole_costs_only_its_own_run(
    tmp_path: Path, offload: str, failing: str, monkeypatch: Any
) -> None:
    """``redact_fn`` raises on text of one of the two runs (the sub-agent's tool result and the model call that reads it,
    or the supervisor's model calls). Every run of the job was dropped (the whole job's spans were checked before they
    were split into runs: nothing stored, runs_failed 3). Now the run holding the failed calls alone is not stored and
    counts once in runs_failed (its spans in spans_failed), and the other run is stored whole."""
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    store_path = tmp_path / "store"
    redact_fn = fail_on_desk if failing == "sub_agent" else fail_on_supervisor
    agent = record_experience(_supervisor(ask_desk_expert), app="fx", store=store_path, redact_fn=redact_fn, strict=False, offload=offload)
    try:
        out = agent.invoke({"messages": [("user", "How many dollars for 100 EUR?")]}, {"configurable": {"thread_id": "outer"}})
        assert not agent.flush(), "a run was not stored: flush says so"
        stats = agent.recorder.stats
    finally:
        agent.recorder.close()
    assert out["messages"][-1].content == "Final: sub says: 1.1"
    [(stored, _)] = _stored(store_path)
    assert (stats.runs_failed, stats.spans_failed, stats.trajectories_written) == (1, 2, 1), stats
    assert "was not stored" in stats.errors[-1] and "cannot scrub" not in " ".join(stats.errors)
    if failing == "sub_agent":
        assert (stored.model, stored.thread_id, stored.status) == ("sup-model", "outer", "completed")
        assert _steps(stored) == [("ask_fx_expert", "sub says: 1.1"), ("answer", "Final: sub says: 1.1")]
    else:
        assert (stored.model, stored.task, stored.status) == ("sub-model", "EUR to USD?", "completed")
        assert _steps(stored) == [("desk_rate", "1 EUR = 1.1 USD (desk D-42)"), ("answer", "sub says: 1.1")]


def fail_on_tenant(text: str) -> str:
    """A user's ``redact_fn`` that raises on the run's environment reference only."""
    if "tenant-7" in text:
        raise RuntimeError(f"cannot scrub: {text}")
    return text


@pytest.mark.parametrize("offload", OFFLOADS)
def test_a_run_inside_a_tool_is_not_stored_without_the_environment_it_takes_from_the_outer_run(
    tmp_path: Path, offload: str, monkeypatch: Any
) -> None:
    """The outer run's root could not be recorded whole (``redact_fn`` raised on its environment reference): the outer run
    is not stored, nor the sub-agent's run, whose environment is the outer run's (it would be stored without one, and
    replayed in the wrong world). Each counts once in runs_failed."""
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    store_path = tmp_path / "store"
    agent = record_experience(
        _supervisor(ask_desk_expert), app="fx", store=store_path, redact_fn=fail_on_tenant, strict=False, offload=offload
    )
    try:
        config = {"configurable": {"thread_id": "outer", "ee_environment": {"tenant": "tenant-7"}}}
        assert (
            agent.invoke({"messages": [("user", "How many dollars for 100 EUR?")]}, config)["messages"][-1].content
            == "Final: sub says: 1.1"
        )
        assert not agent.flush(), "the runs were not stored: flush says so"
        stats = agent.recorder.stats
    finally:
        agent.recorder.close()
    assert _stored(store_path) == []
    assert (stats.runs_failed, stats.trajectories_written) == (2, 0), stats
    assert sum("was not stored: the run's input, output or environment could not be encoded" in e for e in stats.errors) == 2


def _consulting_graph(expert: Any, *, run_async: bool) -> Any:
    """A hand-built ``StateGraph``: a ``consult`` node whose code invokes ``expert`` on a question of its own and adds its
    answer to the conversation, then the outer model's node, which answers."""

    def outer_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        return AIMessage(f"Final: {messages[-1].content}")

    model = ScriptedChatModel(policy=outer_policy, model_name="sup-model")

    def consult(state: MessagesState) -> dict[str, Any]:
        answer = expert.invoke({"messages": [("user", "EUR to USD?")]})["messages"][-1].content
        return {"messages": [AIMessage(f"the desk says: {answer}", name="fx_desk")]}

    async def aconsult(state: MessagesState) -> dict[str, Any]:
        answer = (await expert.ainvoke({"messages": [("user", "EUR to USD?")]}))["messages"][-1].content
        return {"messages": [AIMessage(f"the desk says: {answer}", name="fx_desk")]}

    def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def aanswer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("consult", aconsult if run_async else consult)
    builder.add_node("answer", aanswer if run_async else answer)
    builder.add_edge(START, "consult")
    builder.add_edge("consult", "answer")
    builder.add_edge("answer", END)
    return builder.compile()


def _run(agent: Any, question: str, *, run_async: bool) -> Any:
    config = {"configurable": {"thread_id": "outer"}}
    if run_async:
        return asyncio.run(agent.ainvoke({"messages": [("user", question)]}, config))
    return agent.invoke({"messages": [("user", question)]}, config)


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("run_async", [False, True], ids=["invoke", "ainvoke"])
def test_a_recorded_agent_a_node_invokes_is_stored_once_by_its_own_recorder(
    tmp_path: Path, offload: str, run_async: bool, caplog: Any
) -> None:
    """A node of the recorded graph (not a tool) invokes a sub-agent wrapped with ``record_experience`` itself, on a
    question of its own. Its run was stored by its own recorder and also recorded as the outer run's: the outer
    trajectory held the sub-agent's steps, model and answer under the outer app and question, and not the outer model's
    own answer (and capture warned that the outer run's tools change). Now its recorder alone stores it, and the outer run
    keeps its own decision and answer."""
    outer_path, inner_path = tmp_path / "outer", tmp_path / "inner"
    expert = record_experience(SUB, app="fx-expert", store=inner_path, offload=offload)
    agent = record_experience(_consulting_graph(expert, run_async=run_async), app="fx", store=outer_path, offload=offload)
    try:
        with caplog.at_level("WARNING", logger="ee_middleware.capture"):
            out = _run(agent, "How many dollars for 100 EUR?", run_async=run_async)
            assert agent.flush() and expert.flush()
        assert "different tools" not in caplog.text
        assert out["messages"][-1].content == "Final: the desk says: sub says: 1 EUR = 1.1 USD"
        [(outer, _)] = _stored(outer_path)
        assert (outer.app, outer.task, outer.model, outer.thread_id, outer.status) == (
            "fx",
            "How many dollars for 100 EUR?",
            "sup-model",
            "outer",
            "completed",
        )
        assert _steps(outer) == [("answer", "Final: the desk says: sub says: 1 EUR = 1.1 USD")]
        assert outer.final_answer == "Final: the desk says: sub says: 1 EUR = 1.1 USD"
        assert outer.tools == []
        [(inner, _)] = _stored(inner_path)
        assert (inner.app, inner.task, inner.model, inner.status) == ("fx-expert", "EUR to USD?", "sub-model", "completed")
        assert _steps(inner) == [("fx_rate", "1 EUR = 1.1 USD"), ("answer", "sub says: 1 EUR = 1.1 USD")]
    finally:
        agent.recorder.close()
        expert.recorder.close()


@pytest.mark.parametrize("run_async", [False, True], ids=["invoke", "ainvoke"])
def test_an_unwrapped_agent_a_node_invokes_stays_part_of_the_run(tmp_path: Path, run_async: bool) -> None:
    """Control: the same node invoking the sub-agent unwrapped (a graph invoked from a node, one of LangGraph's two ways
    to use a subgraph): its calls are the recorded run's, as a subgraph's are, before its own answer."""
    store_path = tmp_path / "store"
    agent = record_experience(_consulting_graph(SUB, run_async=run_async), app="fx", store=store_path)
    try:
        _run(agent, "How many dollars for 100 EUR?", run_async=run_async)
        assert agent.flush()
        [(outer, _)] = _stored(store_path)
    finally:
        agent.recorder.close()
    assert (outer.app, outer.task, outer.status) == ("fx", "How many dollars for 100 EUR?", "completed")
    assert _steps(outer) == [
        ("fx_rate", "1 EUR = 1.1 USD"),
        ("answer", "sub says: 1 EUR = 1.1 USD"),
        ("answer", "Final: the desk says: sub says: 1 EUR = 1.1 USD"),
    ]


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("run_async", [False, True], ids=["invoke", "ainvoke"])
def test_a_recorded_graph_used_as_a_node_is_a_subgraph_of_the_run_and_stored_by_its_recorder_too(
    tmp_path: Path, offload: str, run_async: bool
) -> None:
    """A recorded graph added as a node of a recorded graph runs on the node's state, and its answer is the node's update:
    a subgraph, whose steps are the outer run's too (the outer conversation holds them), while its own recorder stores its
    run as well; as ingest reads them (tests/ingest/test_nested_agents.py, ``as_a_node``). A recorded agent that a node
    of the subgraph invokes on a question of its own is still stored by its recorder alone."""
    store_path = tmp_path / "store"
    fx = record_experience(SUB, app="fx-expert-2", store=store_path, offload=offload)
    desk = record_experience(_consulting_graph(fx, run_async=run_async), app="fx-desk", store=store_path, offload=offload)
    builder = StateGraph(MessagesState)
    builder.add_node("desk", desk)
    builder.add_edge(START, "desk")
    builder.add_edge("desk", END)
    agent = record_experience(builder.compile(), app="fx", store=store_path, offload=offload)
    try:
        out = _run(agent, "How many dollars for 100 EUR?", run_async=run_async)
        assert agent.flush() and desk.flush() and fx.flush()
        assert out["messages"][-1].content == "Final: the desk says: sub says: 1 EUR = 1.1 USD"
        runs = {t.app: t for t, _ in _stored(store_path)}
    finally:
        agent.recorder.close()
        desk.recorder.close()
        fx.recorder.close()
    assert sorted(runs) == ["fx", "fx-desk", "fx-expert-2"]
    for app in ("fx", "fx-desk"):
        assert (runs[app].task, runs[app].model, runs[app].status) == ("How many dollars for 100 EUR?", "sup-model", "completed")
        assert _steps(runs[app]) == [("answer", "Final: the desk says: sub says: 1 EUR = 1.1 USD")]
    assert (runs["fx-expert-2"].task, runs["fx-expert-2"].model) == ("EUR to USD?", "sub-model")
    assert _steps(runs["fx-expert-2"]) == [("fx_rate", "1 EUR = 1.1 USD"), ("answer", "sub says: 1 EUR = 1.1 USD")]
