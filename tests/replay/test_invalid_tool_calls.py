"""Replay leaves every entry of LangChain's ``invalid_tool_calls`` to the graph that answered it, whatever its arguments
parse to and whether or not it has a name (sweep s16, findings 1 and 2).

``create_agent`` answers such a call itself ("... could not be executed - arguments were malformed or truncated."); no
tool runs. Replay executed one whose arguments were a JSON object (adjust_stock changed the replayed world: 19 -> 20,
and every later read was a fidelity mismatch blaming a correct sandbox), one whose arguments were a list or ``null``
(a validation error no sandbox can match), and skipped the whole trajectory for one that lost its name ("the expert
calls unknown_tool ... Add these tools to the sandbox")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.records import ProposerInfo, ToolCall, Trajectory
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_invalid_tool_calls import invalid
from tests.conftest import record_once

SETTINGS = ReplaySettings(replay_id="test", policy="scripted", k=1, seed=7)


class _ReadPolicy:
    """Proposes listing the stock at every state: what it sees tells the world replay left there."""

    name = "scripted"

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        call = ToolCall(id="alt", name="list_items", arguments={})
        return Proposals([Candidate(call=call, proposer=ProposerInfo(policy=self.name))])

    def describe(self) -> dict[str, Any]:
        return {}


def get_stock(world: dict[str, int], sku: str) -> str:
    return f"{sku}: stock {world[sku]}"


def listing(world: dict[str, int]) -> str:
    return ", ".join(f"{sku}={stock}" for sku, stock in world.items())


def adjust(world: dict[str, int], sku: str, delta: int) -> str:
    world[sku] += delta
    return f"{sku}: stock now {world[sku]}"


def production_tools(production: dict[str, int]) -> list[Any]:
    """The app's three tools over ``production``, as ``create_agent`` is given them: get_item, adjust_stock, list_items."""

    @tool
    def get_item(sku: str) -> str:
        """Read an item's stock."""
        return get_stock(production, sku)

    @tool
    def adjust_stock(sku: str, delta: int) -> str:
        """Change an item's stock."""
        return adjust(production, sku, delta)

    @tool
    def list_items() -> str:
        """List every item's stock."""
        return listing(production)

    return [get_item, adjust_stock, list_items]


def _recorded(tmp_path: Path) -> Trajectory:
    production = {"A1": 19}
    get_item, adjust_stock, list_items = production_tools(production)

    replies = [
        AIMessage(
            content="",
            tool_calls=[tool_call("get_item", sku="A1")],
            invalid_tool_calls=[
                invalid("adjust_stock", '{"sku": "A1", "delta": 1}', "v1"),  # an object a schema check refused
                invalid("get_item", '["A1"]', "v2"),
                invalid("adjust_stock", "null", "v3"),
                invalid(None, None, "v4"),  # lost its name
            ],
        ),
        AIMessage(content="", tool_calls=[tool_call("get_item", sku="A1")]),
        AIMessage(content="A1 has 19."),
    ]
    graph = create_agent(ScriptedChatModel(script=replies), [get_item, adjust_stock, list_items])
    agent = record_experience(graph, app="shop", store=tmp_path / "store")
    trajectory = record_once(agent, tmp_path / "store", {"messages": [("user", "How many A1?")]})
    assert production == {"A1": 19}  # the graph ran none of the invalid calls
    return trajectory


def _sandbox(received: list[tuple[str, dict[str, Any]]]) -> PythonSandbox:
    def sandboxed(name: str, function: Any) -> Any:
        def run(world: dict[str, int], **arguments: Any) -> str:
            received.append((name, arguments))
            return function(world, **arguments)

        return run

    return PythonSandbox(
        lambda env: {"A1": 19},
        tools={
            "get_item": sandboxed("get_item", get_stock),
            "adjust_stock": sandboxed("adjust_stock", adjust),
            "list_items": sandboxed("list_items", listing),
        },
    )


def with_arguments(step: Any, arguments: dict[str, Any]) -> Any:
    """``step`` with its call's arguments replaced and capture's mark left out (as a store recorded before schema 1.6, or
    another recorder, holds them)."""
    call = ToolCall(id=step.action.tool_call.id, name=step.action.tool_call.name, arguments=arguments)
    return step.model_copy(update={"action": step.action.model_copy(update={"tool_call": call})})


def test_invalid_calls_are_never_executed_whatever_their_arguments_and_name(tmp_path: Path) -> None:
    trajectory = _recorded(tmp_path)
    received: list[tuple[str, dict[str, Any]]] = []
    outcome = replay_trajectory(trajectory, _sandbox(received), Proposer(_ReadPolicy(), k=1), SETTINGS)
    record = outcome.record
    assert (record.status, record.fidelity_mismatches) == ("done", 0), (record.reason, record.details)
    assert [step["step"] for step in record.details["malformed_calls_not_executed"]] == [1, 2, 3, 4]
    expert = [call for call in received if call[0] != "list_items"]
    assert expert == [("get_item", {"sku": "A1"})] * 2, "only the expert's two valid reads reached the sandbox"
    # every state's alternative saw the world production had: the refused adjust_stock changed nothing
    assert [r.observation.content for r in outcome.rollouts] == ["A1=19"] * 6


def test_a_malformed_call_stored_with_arguments_that_are_no_text_is_not_executed_as_il_leaves_it_out(tmp_path: Path) -> None:
    """Stores recorded before hold an invalid call's list or null arguments as {"_raw": ["A1"]} and {"_raw": None}:
    IL counted them malformed and left them out, while replay executed them (get_item(_raw=["A1"]), a validation error
    and a fidelity mismatch). Replay now leaves any call whose only argument is ``_raw`` to the graph, as IL does."""
    trajectory = _recorded(tmp_path)
    old = {1: {"_raw": '{"sku":"A1","delta":1}'}, 2: {"_raw": ["A1"]}, 3: {"_raw": None}, 4: {"_raw": {"x": 1}}}
    steps = [with_arguments(s, old[s.index]) if s.index in old else s for s in trajectory.steps]
    received: list[tuple[str, dict[str, Any]]] = []
    outcome = replay_trajectory(trajectory.model_copy(update={"steps": steps}), _sandbox(received), Proposer(_ReadPolicy(), k=1), SETTINGS)
    record = outcome.record
    assert (record.status, record.fidelity_mismatches) == ("done", 0), (record.reason, record.details)
    assert [step["step"] for step in record.details["malformed_calls_not_executed"]] == [1, 2, 3, 4]
    assert [call for call in received if call[0] != "list_items"] == [("get_item", {"sku": "A1"})] * 2


def test_an_invalid_call_a_middleware_repaired_and_ran_is_executed_as_production_did(tmp_path: Path) -> None:
    """A ``wrap_model_call`` middleware repaired the model's invalid adjust_stock (its text a JSON object the model's
    parser refused) and the graph ran it: production's A1 went 19 -> 20. Capture recorded it as malformed, so replay
    left it unexecuted: the replayed world stayed at 19 and the expert's next read (20) was a fidelity mismatch blaming
    a correct sandbox. Replay now executes it as production did."""
    import json

    from langchain.agents.middleware import ModelResponse, wrap_model_call

    production = {"A1": 19}
    get_item, adjust_stock, list_items = production_tools(production)

    @wrap_model_call
    def repair(request: Any, handler: Any) -> Any:
        """Runs the invalid calls whose text is a JSON object."""
        response = handler(request)
        result = []
        for m in response.result:
            if isinstance(m, AIMessage) and m.invalid_tool_calls:
                fixed = [
                    {"name": c["name"], "args": json.loads(c["args"]), "id": c["id"], "type": "tool_call"} for c in m.invalid_tool_calls
                ]
                m = AIMessage(content=m.content, tool_calls=[*m.tool_calls, *fixed], id=m.id)
            result.append(m)
        return ModelResponse(result=result, structured_response=response.structured_response)

    replies = [
        AIMessage(content="", invalid_tool_calls=[invalid("adjust_stock", '{"sku": "A1", "delta": 1}', "v1")]),
        AIMessage(content="", tool_calls=[tool_call("get_item", sku="A1")]),
        AIMessage(content="A1 has 20."),
    ]
    graph = create_agent(ScriptedChatModel(script=replies), [get_item, adjust_stock, list_items], middleware=[repair])
    agent = record_experience(graph, app="shop", store=tmp_path / "store")
    trajectory = record_once(agent, tmp_path / "store", {"messages": [("user", "Add one A1")]})
    assert production == {"A1": 20}  # the graph ran the repaired call
    received: list[tuple[str, dict[str, Any]]] = []
    outcome = replay_trajectory(trajectory, _sandbox(received), Proposer(_ReadPolicy(), k=1), SETTINGS)
    record = outcome.record
    assert (record.status, record.fidelity_mismatches) == ("done", 0), (record.reason, record.details)
    assert "malformed_calls_not_executed" not in record.details
    assert [call for call in received if call[0] != "list_items"] == [
        ("adjust_stock", {"sku": "A1", "delta": 1}),
        ("get_item", {"sku": "A1"}),
    ]
    assert [r.observation.content for r in outcome.rollouts] == ["A1=19", "A1=20"]  # each state saw the world production had


def test_capture_s_mark_decides_where_the_arguments_could_be_read_either_way(tmp_path: Path) -> None:
    """store_raw's schema declares ``_raw``; free's does not (it takes any argument). The model's invalid store_raw call
    was refused by the graph, yet stored as {"_raw": text} alone it read as an ordinary call of store_raw: replay
    executed it (a world production never had, and a fidelity mismatch). And free(_raw="hi"), which production ran,
    read as a malformed call's text: replay left it unexecuted. Capture's mark (``ToolCall.malformed``) now decides."""
    from langchain_core.tools import StructuredTool

    production: list[str] = []

    def _store(**arguments: Any) -> str:
        production.append(arguments["_raw"])
        return f"stored {arguments['_raw']}"

    def _free(**arguments: Any) -> str:
        return f"free {sorted(arguments)}"

    raw = {"type": "object", "properties": {"_raw": {"type": "string"}}, "required": ["_raw"]}
    anything = {"type": "object", "properties": {"note": {"type": "string"}}, "additionalProperties": True}
    tools = [
        StructuredTool.from_function(func=_store, name="store_raw", description="Store raw text.", args_schema=raw),
        StructuredTool.from_function(func=_free, name="free", description="Takes anything.", args_schema=anything),
    ]
    replies = [
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
    agent = record_experience(create_agent(ScriptedChatModel(script=replies), tools), app="shop", store=tmp_path / "store")
    trajectory = record_once(agent, tmp_path / "store", {"messages": [("user", "store hello")]})
    assert production == ["hello"]

    received: list[tuple[str, dict[str, Any]]] = []

    def sandboxed(name: str) -> Any:
        def run(world: list[str], **arguments: Any) -> str:
            received.append((name, arguments))
            if name == "store_raw":
                world.append(arguments["_raw"])
                return f"stored {arguments['_raw']}"
            return f"free {sorted(arguments)}"

        return run

    class _Store:
        name = "scripted"

        def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
            call = ToolCall(id="alt", name="store_raw", arguments={"_raw": "alt"})
            return Proposals([Candidate(call=call, proposer=ProposerInfo(policy=self.name))])

        def describe(self) -> dict[str, Any]:
            return {}

    sandbox = PythonSandbox(lambda env: [], tools={"store_raw": sandboxed("store_raw"), "free": sandboxed("free")})
    outcome = replay_trajectory(trajectory, sandbox, Proposer(_Store(), k=1), SETTINGS)
    record = outcome.record
    assert (record.status, record.fidelity_mismatches) == ("done", 0), (record.reason, record.details)
    assert record.details["malformed_calls_not_executed"] == [{"step": 2, "tool": "store_raw"}]
    expert = [call for call in received if call[1].get("_raw") != "alt"]
    assert expert == [("store_raw", {"_raw": "hello"}), ("free", {"_raw": "hi"})], "the refused call never reached the sandbox"


def test_the_shared_rule_reads_capture_s_mark_and_guesses_only_without_one() -> None:
    """:mod:`ee_middleware.replay.malformed`, which replay and IL read: the mark decides; without one (records older than
    schema 1.6) the arguments do, as before (only ``_raw``, unless the tool declares it)."""
    from ee_middleware.replay.malformed import malformed_arguments_json, malformed_by_the_model, malformed_call

    declares = [{"type": "function", "function": {"name": "store_raw", "parameters": {"properties": {"_raw": {"type": "string"}}}}}]
    assert malformed_by_the_model(declares, "store_raw", {"_raw": "x"}) is False  # unmarked: the schema says
    assert malformed_by_the_model(declares, "store_raw", {"_raw": "x"}, True) is True
    assert malformed_by_the_model([], "free", {"_raw": "x"}) is True
    assert malformed_by_the_model([], "free", {"_raw": "x"}, False) is False
    assert malformed_call(declares, ToolCall(id="i", name="store_raw", arguments={"_raw": "{"}, malformed=True)) is True
    assert malformed_call([], ToolCall(id="v", name="free", arguments={"_raw": "hi"}, malformed=False)) is False
    assert malformed_call([], ToolCall(id="v", name="free", arguments={"_raw": "hi"})) is True
    tools_json = '[{"type":"function","function":{"name":"store_raw","parameters":{"properties":{"_raw":{}}}}}]'
    assert malformed_arguments_json(tools_json, "store_raw", '{"_raw":"{"}') is False
    assert malformed_arguments_json(tools_json, "store_raw", '{"_raw":"{"}', True) is True
    assert malformed_arguments_json(None, "free", '{"_raw":"hi"}') is True
    assert malformed_arguments_json(None, "free", '{"_raw":"hi"}', False) is False


def test_a_raw_call_whose_tool_raised_and_a_call_repaired_into_raw_are_executed_as_production_sent_them(tmp_path: Path) -> None:
    """free_fail(_raw="boom") was a call LangChain parsed; its tool ran and raised. Capture left it unmarked, so replay
    read it as a malformed call's text and never executed or checked it. And a ``wrap_model_call`` middleware repaired
    an invalid call into free(_raw="fixed"), which production ran with {"_raw": "fixed"}: capture recorded the model's
    broken text ('{"_raw": '), which replay then executed. Replay now executes both, with what production sent."""
    from langchain.agents.middleware import ModelResponse, wrap_model_call
    from langchain_core.tools import StructuredTool, ToolException

    production: list[tuple[str, dict[str, Any]]] = []

    def _free(**arguments: Any) -> str:
        production.append(("free", arguments))
        return f"free {sorted(arguments)}"

    def _fail(**arguments: Any) -> str:
        production.append(("free_fail", arguments))
        raise ToolException(f"free_fail failed on {sorted(arguments)}")

    anything = {"type": "object", "properties": {"note": {"type": "string"}}, "additionalProperties": True}
    tools = [
        StructuredTool.from_function(func=_free, name="free", description="Takes anything.", args_schema=anything),
        StructuredTool.from_function(
            func=_fail, name="free_fail", description="Takes anything, fails.", args_schema=anything, handle_tool_error=True
        ),
    ]

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
        AIMessage(content="", tool_calls=[{"name": "free_fail", "args": {"_raw": "boom"}, "id": "e1", "type": "tool_call"}]),
        AIMessage(content="", invalid_tool_calls=[invalid("free", '{"_raw": ', "r1")]),
        AIMessage(content="done"),
    ]
    agent = record_experience(
        create_agent(ScriptedChatModel(script=replies), tools, middleware=[repair]), app="shop", store=tmp_path / "store"
    )
    trajectory = record_once(agent, tmp_path / "store", {"messages": [("user", "free boom")]})
    assert production == [("free_fail", {"_raw": "boom"}), ("free", {"_raw": "fixed"})]

    received: list[tuple[str, dict[str, Any]]] = []

    def sandboxed(name: str) -> Any:
        def run(world: list[str], **arguments: Any) -> str:
            received.append((name, arguments))
            return f"{'free_fail failed on' if name == 'free_fail' else 'free'} {sorted(arguments)}"  # as production answered

        return run

    class _Free:
        name = "scripted"

        def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
            call = ToolCall(id="alt", name="free", arguments={"note": "alt"})
            return Proposals([Candidate(call=call, proposer=ProposerInfo(policy=self.name))])

        def describe(self) -> dict[str, Any]:
            return {}

    sandbox = PythonSandbox(lambda env: [], tools={"free": sandboxed("free"), "free_fail": sandboxed("free_fail")})
    outcome = replay_trajectory(trajectory, sandbox, Proposer(_Free(), k=1), SETTINGS)
    record = outcome.record
    assert (record.status, record.fidelity_mismatches) == ("done", 0), (record.reason, record.details)
    assert "malformed_calls_not_executed" not in record.details, record.details
    assert [call for call in received if call[1] != {"note": "alt"}] == [("free_fail", {"_raw": "boom"}), ("free", {"_raw": "fixed"})]


def test_a_call_of_a_tool_never_offered_is_left_to_the_graph_by_replay_and_il(tmp_path: Path) -> None:
    """The model called ``delete_everything``, a tool it was never offered (an MCP sweep): ``create_agent`` answered that
    it is no valid tool and ran nothing, yet replay skipped the whole trajectory ("the expert calls delete_everything,
    which sandbox 'python' does not provide", advising outside_world_tools for a made-up name) and IL taught the call."""
    import json

    import polars as pl

    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

    production = {"A1": 19}
    get_item, adjust_stock, list_items = production_tools(production)
    replies = [
        AIMessage(content="", tool_calls=[tool_call("get_item", sku="A1")]),
        AIMessage(content="", tool_calls=[tool_call("delete_everything", confirm=True)]),
        AIMessage(content="", tool_calls=[tool_call("adjust_stock", sku="A1", delta=1)]),
        AIMessage(content="", tool_calls=[tool_call("get_item", sku="A1")]),
        AIMessage(content="A1 has 20."),
    ]
    graph = create_agent(ScriptedChatModel(script=replies), [get_item, adjust_stock, list_items])
    store_path = tmp_path / "store"
    trajectory = record_once(record_experience(graph, app="shop", store=store_path), store_path, {"messages": [("user", "Add one A1.")]})
    [made_up] = [s for s in trajectory.steps if s.action.tool_call and s.action.tool_call.name == "delete_everything"]
    assert made_up.observation is not None and made_up.observation.is_error and "not a valid tool" in made_up.observation.content

    received: list[tuple[str, dict[str, Any]]] = []
    outcome = replay_trajectory(trajectory, _sandbox(received), Proposer(_ReadPolicy(), k=1), SETTINGS)
    record = outcome.record
    assert (record.status, record.fidelity_mismatches) == ("done", 0), (record.reason, record.details)
    assert record.details["unoffered_calls_not_executed"] == [{"step": made_up.index, "tool": "delete_everything"}]
    assert [name for name, _ in received if name != "list_items"] == ["get_item", "adjust_stock", "get_item"]
    assert [r.observation.content for r in outcome.rollouts] == ["A1=19", "A1=19", "A1=19", "A1=20"]

    store = LocalExperienceStore(store_path)
    store.approve([trajectory.id], by="test")
    store.close()
    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "ds", kinds="il", heldout_share=0))
    assert summary["datasets"]["il"]["unoffered_calls_left_out"] == 1
    assert summary["datasets"]["il"]["malformed_calls_left_out"] == 0
    taught = {
        call["function"]["name"]
        for completion in pl.read_parquet(tmp_path / "ds" / "il.parquet")["completion"]
        for call in json.loads(completion)[0].get("tool_calls") or ()
    }
    assert taught == {"get_item", "adjust_stock"}, taught


def test_an_unoffered_call_needs_the_graph_to_have_answered_it() -> None:
    """Only a call no tool ran (no tool latency) and whose answer was an error is the graph's own refusal of a made-up
    name: a call of a tool named otherwise in its schema that ran and raised, or one without an observation, may have
    changed the world (a review of the rule)."""
    from ee_middleware.replay.malformed import unoffered_by_the_graph

    schemas = [{"type": "function", "function": {"name": "get_item", "parameters": {}}}]
    assert unoffered_by_the_graph(schemas, "delete_everything", True)
    assert not unoffered_by_the_graph(schemas, "delete_everything", True, ran=True)
    assert not unoffered_by_the_graph(schemas, "delete_everything", None)
    assert not unoffered_by_the_graph(schemas, "delete_everything", False)
    assert not unoffered_by_the_graph(schemas, "get_item", True)
    assert not unoffered_by_the_graph([], "delete_everything", True), "a trajectory that records no schemas tells nothing"


def test_a_turn_whose_first_call_is_not_taught_keeps_the_text_written_beside_its_calls(tmp_path: Path) -> None:
    """Capture keeps what the model wrote beside its calls with the turn's first call; IL took a turn's text from its
    first taught step, so a turn whose first call was left out (a made-up tool, a malformed call) lost its text (a
    review)."""
    import json

    import polars as pl

    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

    get_item, adjust_stock, list_items = production_tools({"A1": 19})
    turn = AIMessage(content="Let me tidy up and look.", tool_calls=[tool_call("delete_everything"), tool_call("get_item", sku="A1")])
    graph = create_agent(ScriptedChatModel(script=[turn, AIMessage(content="A1 has 19.")]), [get_item, adjust_stock, list_items])
    store_path = tmp_path / "store"
    trajectory = record_once(record_experience(graph, app="shop", store=store_path), store_path, {"messages": [("user", "How many A1?")]})
    store = LocalExperienceStore(store_path)
    store.approve([trajectory.id], by="test")
    store.close()
    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "ds", kinds="il", heldout_share=0))
    assert summary["datasets"]["il"]["unoffered_calls_left_out"] == 1
    [target] = [json.loads(c)[0] for c in pl.read_parquet(tmp_path / "ds" / "il.parquet")["completion"] if "tool_calls" in json.loads(c)[0]]
    assert [c["function"]["name"] for c in target["tool_calls"]] == ["get_item"]
    assert target["content"] == "Let me tidy up and look.", target
