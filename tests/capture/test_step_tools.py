"""The tools offered at each decision (``Step.tools``, schema 1.4), where a run's model calls are not all offered the
same tools: a middleware choosing them per call (a ``wrap_model_call`` setting ``request.tools``,
``LLMToolSelectorMiddleware``) or a tool added at a later turn (BFCL ``multi_turn_miss_func``). Before, a trajectory
kept only the union of the run's tools: every IL row offered all of them (tools the model never saw at that step) and
replay proposed calls to tools the agent could not call there. Real ``create_agent`` graphs recorded with
``record_experience`` (on the capture thread and in the capture process), replayed with the mutation policy and built
into datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import LLMToolSelectorMiddleware, wrap_model_call
from langchain_core.messages import AIMessage

from ee_middleware import record_experience
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.capture.test_middleware_shapes import TASK, planned_model, shop_tools
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.conftest import record_once

WANTED = {0: "check_stock", 1: "check_stock", 2: "order_item"}
"""The tool offered at the k-th decision (by the tool results the model has seen); none at the last."""


@wrap_model_call
def one_tool_per_turn(request: Any, handler: Any) -> Any:
    done = sum(1 for m in request.messages if m.type == "tool")
    return handler(request.override(tools=[t for t in request.tools if t.name == WANTED.get(done)]))


def _names(schemas: list[dict[str, Any]] | str) -> list[str]:
    return [t["function"]["name"] for t in (json.loads(schemas) if isinstance(schemas, str) else schemas)]


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_tools_chosen_per_call_are_each_steps_and_il_rows_offer_only_those(tmp_path: Path, offload: str) -> None:
    model = planned_model()
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[one_tool_per_turn])
    store = tmp_path / "s"
    trajectory = record_once(record_experience(graph, app="shop", store=store, offload=offload), store, TASK)

    offered = [tools for _, tools in model.seen]
    assert offered == [["check_stock"], ["check_stock"], ["order_item"], []]
    assert [s.tools for s in trajectory.steps] == offered  # each step: what its model call was offered
    assert _names(trajectory.tools) == ["check_stock", "order_item"]  # the run's, as before
    assert [_names(trajectory.step_tools(s)) for s in trajectory.steps] == offered

    opened = LocalExperienceStore(store)
    opened.approve([trajectory.id], by="test")
    opened.close()
    build_datasets(DatasetConfig.load(store=store, out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet").sort("step_index")
    assert [_names(t) for t in rows["tools"]] == offered  # before: both tools on every row, none at the answer
    assert json.loads(rows["tools"][0]) == trajectory.tools[:1]  # the schema itself, as recorded


def test_tools_that_never_change_are_no_step_tools(tmp_path: Path) -> None:
    """A run whose model is offered the same tools at every call stores no ``tools`` on its steps (``None``: all of the
    trajectory's), so it serializes as it did before schema 1.4."""
    store = tmp_path / "s"
    trajectory = record_once(
        record_experience(create_agent(planned_model(), shop_tools({"pear": 0})), app="shop", store=store), store, TASK
    )
    assert [s.tools for s in trajectory.steps] == [None] * 4
    assert all("tools" not in s.model_dump(mode="json") for s in trajectory.steps)


def test_llm_tool_selector_choices_are_recorded_per_step(tmp_path: Path) -> None:
    """LLMToolSelectorMiddleware offers at each call the tools its selection model chose (its own call is no step)."""
    chosen = [["check_stock"], ["check_stock"], ["order_item"], ["check_stock"]]
    picks: list[int] = []

    def select(messages: Any, tools: Any) -> AIMessage:
        picks.append(1)
        return AIMessage(content="", tool_calls=[tool_call("ToolSelectionResponse", tools=chosen[len(picks) - 1])])

    model = planned_model()
    selector = LLMToolSelectorMiddleware(model=ScriptedChatModel(policy=select, model_name="selector"), max_tools=1)
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[selector])
    store = tmp_path / "s"
    trajectory = record_once(record_experience(graph, app="shop", store=store), store, TASK)
    assert [tools for _, tools in model.seen] == chosen
    assert [s.tools for s in trajectory.steps] == chosen
    assert _names(trajectory.tools) == ["check_stock", "order_item"]


def shop_sandbox() -> Any:
    from tests.capture.test_middleware_shapes import shop_sandbox as sandbox

    return sandbox()


def test_replay_proposes_only_the_tools_offered_at_each_step(tmp_path: Path) -> None:
    """The mutation policy proposes calls of other tools too (``same_tool_share=0``): at a step offered one tool, only
    that one. Before, the check_stock steps got order_item proposals (and the order_item step check_stock ones). The
    IL, IWM and SR rows built from them offer their step's tool only (before: both)."""
    model = planned_model()
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[one_tool_per_turn])
    store = tmp_path / "s"
    environment = {"stock": {"pear": 0, "apple": 3}}
    trajectory = record_once(record_experience(graph, app="shop", store=store, environment=environment), store, TASK)
    opened = LocalExperienceStore(store)
    opened.approve([trajectory.id], by="test")
    opened.close()
    config = ReplayConfig.load(store=store, k=6, sandbox=f"{__name__}:shop_sandbox", policy_settings={"same_tool_share": 0.0})
    summary = run_replay(config)
    assert summary.done == 1
    opened = LocalExperienceStore(store)
    rollouts = opened.rollouts([trajectory.id])
    opened.close()
    assert rollouts.height > 0
    by_step = {s.index: s.tools for s in trajectory.steps}
    for step_index, name in rollouts.select("step_index", "tool_name").iter_rows():
        assert name in by_step[step_index], (step_index, name)

    # every kind of row offers its step's tools: IL's expert turn, IWM's rollouts and expert steps, SR's turn
    build_datasets(DatasetConfig.load(store=store, out=tmp_path / "data", iwm_max_error_share=1.0))
    for kind in ("il", "iwm", "sr"):
        rows = pl.read_parquet(tmp_path / "data" / f"{kind}.parquet")
        assert rows.height > 0, kind
        for step_index, tools in rows.select("step_index", "tools").iter_rows():
            assert _names(tools) == by_step[step_index], (kind, step_index)


REVIEWS = {
    "approve": {"type": "approve"},
    "edit": {"type": "edit", "edited_action": {"name": "order_item", "args": {"item": "pear", "quantity": 2}}},
}


def _reviewed_graph(model: Any) -> Any:
    """The shop agent offering one tool per call (``one_tool_per_turn``: order_item alone at the order) with a human
    review of every order, on a real checkpointer."""
    from langchain.agents.middleware import HumanInTheLoopMiddleware
    from langgraph.checkpoint.memory import InMemorySaver

    middleware = [one_tool_per_turn, HumanInTheLoopMiddleware(interrupt_on={"order_item": True})]
    return create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=middleware, checkpointer=InMemorySaver())


def _resume(agent: Any, decision: dict[str, Any]) -> None:
    from langgraph.types import Command

    agent.invoke(Command(resume={"decisions": [decision]}), {"configurable": {"thread_id": "t1"}})
    agent.flush()
    agent.recorder.close()


def _paused_and_resumed(store_path: Path) -> tuple[Any, Any]:
    store = LocalExperienceStore(store_path)
    try:
        paused, resumed = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
        store.approve([paused.id, resumed.id], by="me")
    finally:
        store.close()
    assert paused.status == "interrupted"
    return paused, resumed


def _il_rows(store_path: Path, out: Path) -> list[tuple[list[tuple[str, dict[str, Any]]], list[str]]]:
    """Each IL row's target calls and offered tool names, as ``ee datasets build`` writes them (il.parquet); every row
    offers the tools its target calls."""
    build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il"))
    rows = []
    for row in pl.read_parquet(out / "il.parquet").iter_rows(named=True):
        [target] = json.loads(row["completion"])
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in target.get("tool_calls") or ()]
        assert {name for name, _ in calls} <= set(_names(row["tools"])), (calls, row["tools"])
        rows.append((calls, _names(row["tools"])))
    return rows


def _check_reviewed_turn_taught_with_its_decisions_tools(store_path: Path, out: Path, review: str) -> None:
    """The resumed run's first step is the reviewed order as it ran, offered what the paused decision was (order_item
    alone, as the paused trajectory's own step says: none of the resumed run's model calls was offered it), and IL
    teaches it once, so, with the reviewer's arguments."""
    paused, resumed = _paused_and_resumed(store_path)
    [awaiting] = [s for s in paused.steps if s.observation is None]
    assert _names(paused.step_tools(awaiting)) == ["order_item"]
    quantity = {"approve": 5, "edit": 2}[review]
    first = resumed.steps[0]
    assert first.action.tool_call is not None
    assert (first.action.tool_call.name, first.action.tool_call.arguments) == ("order_item", {"item": "pear", "quantity": quantity})
    assert first.observation is not None and first.observation.content == f"ordered {quantity} pear; now {quantity}"
    assert resumed.step_tools(first) == paused.step_tools(awaiting)  # the schema itself, as the paused run recorded it
    assert [_names(resumed.step_tools(s)) for s in resumed.steps] == [["order_item"], []]  # the answer was offered none
    orders = [(calls, tools) for calls, tools in _il_rows(store_path, out) if any(name == "order_item" for name, _ in calls)]
    assert orders == [([("order_item", {"item": "pear", "quantity": quantity})], ["order_item"])]


@pytest.mark.usefixtures("no_child_left")
@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("review", ["approve", "edit"])
def test_a_reviewed_call_is_taught_with_the_tools_its_paused_decision_was_offered(tmp_path: Path, review: str, offload: str) -> None:
    """Tools chosen per call and a human review: the paused decision was offered order_item alone, the resumed run's own
    model call none. The resumed run's reviewed step got the resumed run's tools, which lacked order_item (IL offered []
    and targeted order_item), then (7ab00e1) was taught nowhere: the approved or edited order was lost to training. The
    recorder now carries the paused decision's tools over to the run that resumes its thread."""
    graph = _reviewed_graph(planned_model())
    agent = record_experience(graph, app="shop", store=tmp_path / "s", offload=offload)
    agent.invoke(TASK, {"configurable": {"thread_id": "t1"}})
    _resume(agent, REVIEWS[review])
    _check_reviewed_turn_taught_with_its_decisions_tools(tmp_path / "s", tmp_path / "data", review)


@pytest.mark.usefixtures("no_child_left")
@pytest.mark.parametrize(("offload", "compacted"), [("thread", False), ("thread", True), ("process", False)])
def test_a_resume_recorded_by_a_fresh_recorder_reads_the_paused_decisions_tools_from_the_store(
    tmp_path: Path, offload: str, compacted: bool
) -> None:
    """The review is answered after the app restarted (or in another worker process): a new ``record_experience`` over
    the same store and checkpointer records the resumed run, knowing nothing of the paused one but what the store holds
    (its spool, or its Parquet parts once compacted)."""
    graph = _reviewed_graph(planned_model())
    first = record_experience(graph, app="shop", store=tmp_path / "s", offload=offload)
    first.invoke(TASK, {"configurable": {"thread_id": "t1"}})
    first.flush()
    first.recorder.close()
    if compacted:
        store = LocalExperienceStore(tmp_path / "s")
        assert store.compact() > 0
        store.close()
    _resume(record_experience(graph, app="shop", store=tmp_path / "s", offload=offload), REVIEWS["edit"])
    _check_reviewed_turn_taught_with_its_decisions_tools(tmp_path / "s", tmp_path / "data", "edit")


def test_a_reviewed_call_whose_paused_decision_is_unknown_is_not_taught_with_other_tools(tmp_path: Path) -> None:
    """The paused run was not recorded (the app recorded only from its restart on): which tools the paused decision had
    is not known, and the resumed run's own model call was never offered order_item, so the reviewed order is not taught
    (a row offering this run's tools would teach a call of a tool it does not list; found by review: IL offered [] and
    targeted order_item). Every IL row offers the tools its target calls."""
    graph = _reviewed_graph(planned_model())
    graph.invoke(TASK, {"configurable": {"thread_id": "t1"}})
    _resume(record_experience(graph, app="shop", store=tmp_path / "s"), REVIEWS["approve"])
    store = LocalExperienceStore(tmp_path / "s")
    [resumed] = list(store.iter_trajectories())
    store.approve([resumed.id], by="me")
    store.close()
    assert [s.action.kind for s in resumed.steps] == ["answer"]
    assert [calls for calls, _ in _il_rows(tmp_path / "s", tmp_path / "data")] == [[]]


def test_a_call_the_reviewer_changed_to_a_tool_its_decision_was_not_offered_is_not_taught(tmp_path: Path) -> None:
    """A reviewer's edit calling another tool than the paused decision was offered (check_stock, where only order_item
    was) is no decision of the model's with those tools: it is not taught (an IL row would offer order_item and target
    check_stock), and nothing else of the run changes."""
    graph = _reviewed_graph(planned_model())
    agent = record_experience(graph, app="shop", store=tmp_path / "s")
    agent.invoke(TASK, {"configurable": {"thread_id": "t1"}})
    _resume(agent, {"type": "edit", "edited_action": {"name": "check_stock", "args": {"item": "kiwi"}}})
    _, resumed = _paused_and_resumed(tmp_path / "s")
    assert [s.action.kind for s in resumed.steps] == ["answer"]
    assert not [calls for calls, _ in _il_rows(tmp_path / "s", tmp_path / "data") if ("check_stock", {"item": "kiwi"}) in calls]


def test_a_reviewed_turn_of_a_run_whose_tools_never_change_records_no_step_tools(tmp_path: Path) -> None:
    """Every model call offered both tools: the reviewed step, like every other, stores no ``tools`` (the records are
    those of before schema 1.4)."""
    from langchain.agents.middleware import HumanInTheLoopMiddleware
    from langgraph.checkpoint.memory import InMemorySaver

    middleware = [HumanInTheLoopMiddleware(interrupt_on={"order_item": True})]
    graph = create_agent(planned_model(), shop_tools({"pear": 0}), middleware=middleware, checkpointer=InMemorySaver())
    agent = record_experience(graph, app="shop", store=tmp_path / "s")
    agent.invoke(TASK, {"configurable": {"thread_id": "t1"}})
    _resume(agent, REVIEWS["approve"])
    paused, resumed = _paused_and_resumed(tmp_path / "s")
    assert [s.action.kind for s in resumed.steps] == ["tool_call", "answer"]
    assert _names(resumed.tools) == _names(paused.tools) == ["check_stock", "order_item"]
    assert all("tools" not in s.model_dump(mode="json") for t in (paused, resumed) for s in t.steps)


@wrap_model_call
def both_then_order_only(request: Any, handler: Any) -> Any:
    """A tool selector offering both tools until the order is reviewed, then order_item alone (found by review: a fresh
    recorder, seeing no sign of per-call choice in the resumed run, gave the reviewed order the resumed run's tools)."""
    resumed = any(m.type == "tool" and m.name == "order_item" for m in request.messages)
    return handler(request.override(tools=[t for t in request.tools if t.name == "order_item"]) if resumed else request)


@pytest.mark.parametrize("selector", ["one_tool_per_turn", "both_then_order_only", "fixed"])
def test_a_resume_is_recorded_alike_by_the_pausing_recorder_and_a_fresh_one_without_reading_the_stores_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, selector: str
) -> None:
    """A HITL resume recorded by another process than its pause (a web app's workers, a restart) read the whole store
    (its spool and every Parquet part, twice) to find the paused decision's tools; then, gated on signs of per-call tool
    choice in the resumed run, a fresh recorder could record the reviewed turn with other tools than the pausing one.
    The pause is now noted in a small file per paused thread in the store (removed once the resume is recorded), so the
    records are the same whichever process records the resume, and no table is read."""
    from langchain.agents.middleware import HumanInTheLoopMiddleware
    from langgraph.checkpoint.memory import InMemorySaver

    from ee_middleware.capture import paused as paused_module

    reads: list[str] = []
    real = paused_module.paused_decision_tools
    monkeypatch.setattr(
        paused_module, "paused_decision_tools", lambda store, thread_id, *a: reads.append(thread_id) or real(store, thread_id, *a)
    )
    chosen = {"one_tool_per_turn": [one_tool_per_turn], "both_then_order_only": [both_then_order_only], "fixed": []}[selector]

    def graph() -> Any:
        middleware = [*chosen, HumanInTheLoopMiddleware(interrupt_on={"order_item": True})]
        return create_agent(planned_model(), shop_tools({"pear": 0}), middleware=middleware, checkpointer=InMemorySaver())

    recorded = []
    for fresh in (False, True):
        store = tmp_path / f"fresh-{fresh}"
        app = graph()
        first = record_experience(app, app="shop", store=store, offload="thread")
        first.invoke(TASK, {"configurable": {"thread_id": "t1"}})
        if fresh:
            first.flush()
            first.recorder.close()
            assert len(list((store / "paused").iterdir())) == 1  # the pause, noted for any process
            _resume(record_experience(app, app="shop", store=store, offload="thread"), REVIEWS["edit"])
        else:
            _resume(first, REVIEWS["edit"])
        assert not (store / "paused").exists() or not list((store / "paused").iterdir()), "the answered review's note is removed"
        _, resumed = _paused_and_resumed(store)
        recorded.append([(s.action.kind, _names(resumed.step_tools(s))) for s in resumed.steps])
    assert reads == []
    assert recorded[0] == recorded[1], recorded
    assert recorded[0][0] == ("tool_call", ["order_item"] if selector == "one_tool_per_turn" else ["check_stock", "order_item"])


def test_a_pause_assembled_just_before_its_resume_is_known_without_the_store(tmp_path: Path) -> None:
    """A pause and its resume ending close together (an app under load, a reviewer answering at once) are assembled in
    one batch, before the store holds the paused trajectory: the span processor remembers what each interrupted run it
    assembled was offered (``PausedDecisions``, no store here) and the resume's reviewed order gets it. The two runs'
    real spans (the app's own tracer provider), assembled as the processor does."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ee_middleware.capture.assembler import AssemblyOptions, assemble, split_runs
    from ee_middleware.capture.paused import PausedDecisions
    from ee_middleware.capture.spandata import from_readable_span

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = record_experience(_reviewed_graph(planned_model()), app="shop", store=tmp_path / "s", tracer_provider=provider)
    agent.invoke(TASK, {"configurable": {"thread_id": "t1"}})
    _resume(agent, REVIEWS["approve"])
    pause, resume = sorted(
        split_runs([from_readable_span(s) for s in exporter.get_finished_spans()]), key=lambda r: min(s.start_ns for s in r)
    )
    provider.shutdown()

    def resumed_steps(paused: PausedDecisions) -> list[tuple[str, list[str]]]:
        options = AssemblyOptions(source="record_experience", model_calls_required=False, paused_tools=paused.tools)
        paused.remember(assemble(pause, options))
        trajectory = assemble(resume, options)
        return [
            (s.action.tool_call.name if s.action.tool_call else s.action.kind, _names(trajectory.step_tools(s))) for s in trajectory.steps
        ]

    assert resumed_steps(PausedDecisions(None)) == [("order_item", ["order_item"]), ("answer", [])]
    forgetful = PausedDecisions(None)
    forgetful.max_threads = 0  # remembers nothing: not known, so not taught (as without a recorded pause)
    assert resumed_steps(forgetful) == [("answer", [])]


# --- a tool rewritten per call (schema 1.7) ----------------------------------------------------------------------------


@wrap_model_call
def stock_count_in_description(request: Any, handler: Any) -> Any:
    """Rewrites check_stock's description at every model call, as a middleware that puts live facts in a tool's
    description (the rows checked so far, an allowed-values list) does: same name, another schema."""
    done = sum(1 for m in request.messages if m.type == "tool")
    tools = [
        t.model_copy(update={"description": f"How many of an item are in stock ({done} checked so far)."}) if t.name == "check_stock" else t
        for t in request.tools
    ]
    return handler(request.override(tools=tools))


def _descriptions(schemas: list[dict[str, Any]] | str) -> dict[str, str]:
    listed = json.loads(schemas) if isinstance(schemas, str) else schemas
    names = [t["function"]["name"] for t in listed]
    assert len(names) == len(set(names)), names  # never one name twice in what a model is offered
    return {t["function"]["name"]: t["function"]["description"] for t in listed}


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_tool_rewritten_per_call_keeps_each_steps_schema_in_records_rows_and_exports(tmp_path: Path, offload: str) -> None:
    """Before, a tool offered under one name with another schema at a later call kept its first schema: every later step,
    its IL, IWM and SR rows, replay's proposals and the JSONL export showed the model a description (or parameters) it
    was not given at that step."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.export import export_jsonl

    model = planned_model()
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[stock_count_in_description])
    store = tmp_path / "s"
    environment = {"stock": {"pear": 0, "apple": 3}}
    trajectory = record_once(record_experience(graph, app="shop", store=store, offload=offload, environment=environment), store, TASK)

    said = [f"How many of an item are in stock ({k} checked so far)." for k in range(4)]
    assert [s.tools for s in trajectory.steps] == [
        ["check_stock", "order_item"],
        ["check_stock#1", "order_item"],
        ["check_stock#2", "order_item"],
        ["check_stock#3", "order_item"],
    ]
    assert [_descriptions(trajectory.step_tools(s))["check_stock"] for s in trajectory.steps] == said
    assert [_descriptions([t])["check_stock"] for t in trajectory.tools if t["function"]["name"] == "check_stock"] == said
    assert _descriptions(trajectory.to_openai_chat()["tools"])["check_stock"] == said[0]  # one schema per name

    shown = CliRunner().invoke(app, ["traces", "show", trajectory.id, "--store", str(store)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "offered: check_stock#1, order_item" in shown.output

    opened = LocalExperienceStore(store)
    opened.approve([trajectory.id], by="test")
    assert export_jsonl(opened, tmp_path / "out.jsonl") == 4  # one example per decision: each was offered its own schema
    opened.close()
    examples = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [_descriptions(e["tools"])["check_stock"] for e in examples] == said

    if offload == "process":
        return
    config = ReplayConfig.load(store=store, k=4, sandbox=f"{__name__}:shop_sandbox")
    assert run_replay(config).done == 1
    build_datasets(DatasetConfig.load(store=store, out=tmp_path / "data", iwm_max_error_share=1.0))
    for kind in ("il", "iwm", "sr"):
        rows = pl.read_parquet(tmp_path / "data" / f"{kind}.parquet")
        assert rows.height > 0, kind
        for step_index, tools in rows.select("step_index", "tools").iter_rows():
            assert _descriptions(tools)["check_stock"] == said[step_index], (kind, step_index)


def test_offered_tools_resolves_a_tools_other_schemas_and_a_name_that_only_looks_like_one() -> None:
    from ee_middleware.records import ToolCatalog, offered_tools

    def schema(name: str, description: str) -> dict[str, Any]:
        return {"type": "function", "function": {"name": name, "description": description}}

    first, second, third = schema("lookup", "v1"), schema("lookup", "v2"), schema("lookup", "v3")
    other, odd = schema("order", "o"), schema("sku#1", "a tool of that name")
    catalog = ToolCatalog()
    assert catalog.refs([first, other, odd]) == ["lookup", "order", "sku#1"]
    assert catalog.step_tools(["order", "lookup", "sku#1"]) == ["order", "lookup", "sku#1"]  # not the run's order
    assert catalog.step_tools(catalog.default_refs()) is None  # no tool varies yet: as before schema 1.7
    assert catalog.refs([third, dict(first), second]) == ["lookup#1", "lookup", "lookup#2"]  # told apart by value
    assert catalog.varies and catalog.tools == [first, other, odd, third, second]
    assert catalog.step_tools(catalog.default_refs()) == ["lookup", "order", "sku#1"]  # every step says its tools now
    assert offered_tools(catalog.tools, None) == [first, other, odd]
    assert offered_tools(catalog.tools, ["lookup#2", "sku#1", "lookup#1"]) == [second, odd, third]
    assert offered_tools(catalog.tools, ["lookup#3", "order#1"]) == []  # a name without a schema is left out
