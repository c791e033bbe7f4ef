"""Replaying one trajectory: determinism, branch isolation, fidelity checks and the safety rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.records import Observation, ProposerInfo, ToolCall, Trajectory
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore

SETTINGS = ReplaySettings(replay_id="test", policy="mutate", k=4, seed=7)


def _trajectories(path: Path) -> list[Trajectory]:
    return list(LocalExperienceStore(path).iter_trajectories(status="approved"))


def _comparable(rollouts: list[Any]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json", exclude={"created_at", "duration_ms"}) for r in rollouts]


def test_same_seed_gives_identical_rollouts_and_the_expert_path_is_reproduced(bfcl_store_path: Path) -> None:
    trajectory = _trajectories(bfcl_store_path)[0]
    first = replay_trajectory(trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=4), SETTINGS)
    second = replay_trajectory(trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=4), SETTINGS)
    assert first.record.status == "done"
    assert first.record.fidelity_mismatches == 0
    tool_steps = [s for s in trajectory.steps if s.action.kind == "tool_call"]
    assert first.record.states == len(tool_steps)
    assert first.record.branches == len(first.rollouts) == 4 * len(tool_steps)
    assert _comparable(first.rollouts) == _comparable(second.rollouts)
    other_seed = replay_trajectory(
        trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=4), ReplaySettings("test", "mutate", k=4, seed=8)
    )
    assert _comparable(other_seed.rollouts) != _comparable(first.rollouts)
    for rollout in first.rollouts:
        step = trajectory.steps[rollout.step_index]
        assert rollout.action.tool_call != step.action.tool_call or rollout.action.tool_call.arguments != step.action.tool_call.arguments
        assert rollout.sandbox == "bfcl" and not rollout.synthetic and rollout.proposer.policy == "mutate"


class _ScriptedPolicy:
    """Proposes fixed calls at every state (to drive mutating calls into the sandbox)."""

    name = "scripted"

    def __init__(self, calls: list[ToolCall]) -> None:
        self.calls = calls

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        return Proposals([Candidate(call=c, proposer=ProposerInfo(policy=self.name)) for c in self.calls])

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def test_mutating_branches_never_leak_into_other_branches_or_the_expert_path(bfcl_store_path: Path) -> None:
    trajectory = next(t for t in _trajectories(bfcl_store_path) if t.environment["entry_id"] == "multi_turn_base_0")
    # Each branch creates a directory, then the next branch lists the folder: if anything leaked,
    # `ls` would show the directory, and the expert's own steps would see a different world.
    policy = _ScriptedPolicy(
        [
            ToolCall(id="a", name="mkdir", arguments={"dir_name": "leaked"}),
            ToolCall(id="b", name="ls", arguments={}),
            ToolCall(id="c", name="touch", arguments={"file_name": "leaked.txt"}),
            ToolCall(id="d", name="ls", arguments={"a": True}),
        ]
    )
    outcome = replay_trajectory(trajectory, BFCLSandbox(), Proposer(policy, k=4, refill=None), SETTINGS)
    assert outcome.record.fidelity_mismatches == 0, outcome.record.details
    listings = [r for r in outcome.rollouts if r.action.tool_call.name == "ls"]
    assert listings and all("leaked" not in r.observation.content for r in listings)
    made = [r for r in outcome.rollouts if r.action.tool_call.name == "mkdir"]
    assert made and all(not r.is_error for r in made[:1])


def test_a_sandbox_that_diverges_is_reported_as_a_fidelity_error(bfcl_store_path: Path) -> None:
    trajectory = _trajectories(bfcl_store_path)[0]
    step = next(s for s in trajectory.steps if s.observation is not None)
    step.observation = Observation(content="something the sandbox will not return")
    outcome = replay_trajectory(trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=1), SETTINGS)
    assert outcome.record.fidelity_mismatches == 1
    (mismatch,) = outcome.record.details["fidelity_mismatches"]
    assert mismatch["step"] == step.index and mismatch["recorded"] == "something the sandbox will not return"
    assert mismatch["position"] == 0 and mismatch["recorded_chars"] == len("something the sandbox will not return")
    assert mismatch["diff"].startswith("--- recorded\n+++ sandbox\n@@") and "-something the sandbox will not return" in mismatch["diff"]
    assert "redacted_arguments" not in mismatch


def test_an_expert_argument_replay_cannot_restore_is_flagged_not_counted_as_a_fidelity_error() -> None:
    """The expert's argument was stored as a plain redaction placeholder (no pseudonym, no vault): the
    sandbox can only be given the placeholder, so its answer says nothing about the sandbox's fidelity."""
    trajectory = _shop_trajectory()
    step = trajectory.steps[0]
    step.action.tool_call.arguments = {"item": "[REDACTED:email]"}
    step.observation = Observation(content='{"ordered": "apple", "left": 2, "note": "' + "x" * 120 + '"}')

    def order_item(world: dict[str, Any], item: str) -> dict[str, Any]:
        return {"ordered": item, "left": world["stock"].get(item, 0), "note": "x" * 120}

    sandbox = PythonSandbox(lambda env: {"stock": dict(env["stock"])}, tools={"order_item": order_item})
    outcome = replay_trajectory(trajectory, sandbox, Proposer(_ScriptedPolicy([]), k=1, refill=None), SETTINGS)
    assert outcome.record.fidelity_mismatches == 0 and "fidelity_mismatches" not in outcome.record.details
    assert outcome.record.unrestorable == 1
    (flag,) = outcome.record.details["unrestorable_steps"]
    assert flag["step"] == step.index and flag["tool"] == "order_item" and flag["arguments"] == ["item"]
    assert flag["placeholders"] == ["[REDACTED:email]"] and flag["observation_matched"] is False
    assert flag["reasons"] == ["a placeholder without a pseudonym tag names no value (record with redaction_pseudonyms=True)"]


def test_an_environment_the_sandbox_cannot_rebuild_is_skipped_with_the_reason(bfcl_store_path: Path) -> None:
    trajectory = _trajectories(bfcl_store_path)[0]
    trajectory.environment = {"kind": "bfcl", "involved_classes": ["NoSuchAPI"]}
    outcome = replay_trajectory(trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=2), SETTINGS)
    assert outcome.record.status == "skipped" and "NoSuchAPI" in outcome.record.reason and not outcome.rollouts


# --- the safety rule, on an app's own tools ----------------------------------------------------

SHOP_TOOLS = [
    {"type": "function", "function": {"name": n, "description": d, "parameters": p}}
    for n, d, p in [
        ("check_stock", "Stock of an item.", {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}),
        ("order_item", "Order an item.", {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}),
        ("send_email", "E-mail a customer.", {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]}),
    ]
]


def _shop_trajectory(*, then_check: bool = False) -> Trajectory:
    """The expert orders an apple (``then_check``: and then checks the stock)."""
    import datetime as dt

    call = {"id": "c1", "type": "function", "function": {"name": "order_item", "arguments": json.dumps({"item": "apple"})}}
    state = [{"role": "user", "content": "order an apple for bob@example.com"}]
    messages = [*state, {"role": "assistant", "content": "", "tool_calls": [call]}]
    steps = [
        {
            "trajectory_id": "shop-1",
            "index": 0,
            "decision_index": 0,
            "state": state,
            "action": {"kind": "tool_call", "tool_call": {"id": "c1", "name": "order_item", "arguments": {"item": "apple"}}},
            "observation": {"content": "ordered apple, 2 left"},
        }
    ]
    if then_check:
        check = {"id": "c2", "type": "function", "function": {"name": "check_stock", "arguments": json.dumps({"item": "apple"})}}
        messages += [{"role": "tool", "tool_call_id": "c1", "content": "ordered apple, 2 left"}]
        steps.append(
            {
                "trajectory_id": "shop-1",
                "index": 1,
                "decision_index": 1,
                "state": list(messages),
                "action": {"kind": "tool_call", "tool_call": {"id": "c2", "name": "check_stock", "arguments": {"item": "apple"}}},
                "observation": {"content": "ok"},
            }
        )
        messages += [{"role": "assistant", "content": "", "tool_calls": [check]}]
    return Trajectory.parse(
        {
            "id": "shop-1",
            "app": "shop",
            "tools": SHOP_TOOLS,
            "started_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "ended_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "environment": {"stock": {"apple": 3}},
            "messages": messages,
            "steps": steps,
        }
    )


def test_a_side_effecting_tool_without_a_sandbox_is_never_called() -> None:
    emails_sent: list[str] = []

    def order_item(world: dict[str, Any], item: str) -> str:
        world["stock"][item] -= 1
        return f"ordered {item}, {world['stock'][item]} left"

    sandbox = PythonSandbox(
        lambda env: {"stock": dict(env["stock"])},
        tools={"order_item": order_item},
        read_only_tools={"check_stock": lambda item: f"{item}: in stock"},
    )
    # send_email exists in the app but has no sandbox: a real call would e-mail a customer.
    assert not sandbox.covers("send_email")
    policy = _ScriptedPolicy(
        [
            ToolCall(id="x", name="send_email", arguments={"to": "bob@example.com"}),
            ToolCall(id="y", name="check_stock", arguments={"item": "apple"}),
            ToolCall(id="z", name="order_item", arguments={"item": "pear"}),
        ]
    )
    outcome = replay_trajectory(_shop_trajectory(), sandbox, Proposer(policy, k=3, refill=None), SETTINGS)
    assert emails_sent == []
    assert outcome.record.refused == 1 and outcome.record.details["refused_tools"] == {"send_email": 1}
    assert {r.action.tool_call.name for r in outcome.rollouts} == {"check_stock", "order_item"}
    pear = next(r for r in outcome.rollouts if r.action.tool_call.name == "order_item")
    assert pear.is_error and "KeyError" in pear.observation.content
    assert outcome.record.fidelity_mismatches == 0


def test_a_sandbox_answering_no_observation_fails_the_trajectory_naming_it() -> None:
    # Was: AttributeError: 'dict' object has no attribute 'content', naming neither the sandbox nor its execute().
    from ee_middleware.errors import SandboxError

    class DictAnswers:
        def covers(self, name: str) -> bool:
            return name == "order_item"

        def reset(self, environment: Any) -> None:
            pass

        def execute(self, call: ToolCall) -> Any:
            return {"content": "ordered"}

        def snapshot(self) -> Any:
            return None

        def restore(self, snapshot: Any) -> None:
            pass

        def close(self) -> None:
            pass

    with pytest.raises(SandboxError, match=r"DictAnswers returned dict from execute\(\) for tool 'order_item', not an Observation"):
        replay_trajectory(_shop_trajectory(), DictAnswers(), Proposer(MutationPolicy(), k=1), SETTINGS)


def test_an_expert_path_through_an_unsandboxed_tool_is_skipped_with_the_fix() -> None:
    sandbox = PythonSandbox(lambda env: {}, tools={"check_stock": lambda world, item: "ok"})
    outcome = replay_trajectory(_shop_trajectory(then_check=True), sandbox, Proposer(MutationPolicy(), k=2), SETTINGS)
    assert outcome.record.status == "skipped" and not outcome.rollouts
    assert "order_item" in outcome.record.reason and "Add these tools to the sandbox" in outcome.record.reason


def test_an_unsandboxed_tool_at_the_last_step_is_left_unexecuted_and_its_state_still_branches() -> None:
    """Nothing follows the last call, so the path is followed to its state without it: the alternatives there run,
    the expert's order is never placed, and the replay says which call it did not execute."""
    checked: list[str] = []

    def check_stock(world: dict[str, Any], item: str) -> str:
        checked.append(item)
        return f"{item}: {world['stock'].get(item, 0)}"

    sandbox = PythonSandbox(lambda env: {"stock": dict(env["stock"])}, tools={"check_stock": check_stock})
    outcome = replay_trajectory(_shop_trajectory(), sandbox, Proposer(MutationPolicy(), k=3), SETTINGS)
    record = outcome.record
    assert record.status == "done" and record.states == 1 and record.fidelity_mismatches == 0
    assert record.details["final_calls_not_replayed"] == [{"step": 0, "tool": "order_item"}]
    assert outcome.rollouts and {r.action.tool_call.name for r in outcome.rollouts} == {"check_stock"}
    assert len(checked) == len(outcome.rollouts)  # only the alternatives ran; the expert's order_item never did


def test_a_structured_answer_given_as_a_tool_call_leaves_the_rest_of_the_trajectory_replayable(tmp_path: Path) -> None:
    """LangChain's create_agent(response_format=ToolStrategy(Schema)) ends a run with a call of a tool named after the
    schema, which no sandbox provides: recorded by @record_experience, the trajectory is replayed up to that call (it
    was skipped whole before), with the alternatives at its state."""
    from langchain.agents import create_agent
    from langchain.agents.structured_output import ToolStrategy
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from pydantic import BaseModel

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call
    from tests.conftest import record_once

    class Restock(BaseModel):
        item: str
        ordered: int

    stock = {"pear": 0}

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        return str(stock.get(item, 0))

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        stock[item] = stock.get(item, 0) + quantity
        return f"ordered {quantity} {item}; now {stock[item]}"

    script = [
        AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]),
        AIMessage(content="", tool_calls=[tool_call("order_item", item="pear", quantity=5)]),
        AIMessage(content="", tool_calls=[tool_call("Restock", item="pear", ordered=5)]),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [check_stock, order_item], response_format=ToolStrategy(Restock))
    agent = record_experience(graph, app="shop", store=tmp_path / "store", environment=lambda inputs, config: {"stock": {"pear": 0}})
    trajectory = record_once(agent, tmp_path / "store", {"messages": [("user", "Do we have pears? If not, order 5.")]})
    assert [s.action.tool_call.name for s in trajectory.steps if s.action.tool_call] == ["check_stock", "order_item", "Restock"]

    def order(world: dict[str, Any], item: str, quantity: int) -> str:
        world["stock"][item] = world["stock"].get(item, 0) + quantity
        return f"ordered {quantity} {item}; now {world['stock'][item]}"

    sandbox = PythonSandbox(
        lambda env: {"stock": dict(env["stock"])},
        tools={"order_item": order, "check_stock": lambda world, item: str(world["stock"].get(item, 0))},
    )
    outcome = replay_trajectory(trajectory, sandbox, Proposer(MutationPolicy(), k=3), SETTINGS)
    record = outcome.record
    assert (record.status, record.states, record.fidelity_mismatches) == ("done", 3, 0)
    assert record.details["final_calls_not_replayed"] == [{"step": 2, "tool": "Restock"}]
    at_the_answer = [r for r in outcome.rollouts if r.step_index == 2]
    assert at_the_answer and all(r.action.tool_call.name in ("check_stock", "order_item") for r in at_the_answer)
    checks = [r for r in at_the_answer if r.action.tool_call.name == "check_stock" and r.action.tool_call.arguments == {"item": "pear"}]
    assert all(r.observation.content == "5" for r in checks)  # the world after the expert's order, as recorded


@pytest.mark.parametrize("garbage", ["", "not json at all", '{"name": "order_item", "arguments": {"item": 5}}'])
def test_malformed_policy_output_is_counted_and_refilled(garbage: str) -> None:
    from ee_middleware.models.parsing import parse_tool_calls

    class GarbagePolicy(_ScriptedPolicy):
        def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
            candidates = []
            for parsed in parse_tool_calls(garbage) or [None]:
                call = parsed if isinstance(parsed, ToolCall) else None
                candidates.append(
                    Candidate(call=call, proposer=ProposerInfo(policy="garbage"), raw=garbage, problem=None if call else "unparsable")
                )
            return Proposals(candidates)

    sandbox = PythonSandbox(
        lambda env: {"stock": dict(env["stock"])},
        tools={"order_item": lambda w, item: f"ordered {item}", "check_stock": lambda w, item: "ok", "send_email": lambda w, to: "sent"},
    )
    outcome = replay_trajectory(_shop_trajectory(), sandbox, Proposer(GarbagePolicy([]), k=3), SETTINGS)
    assert outcome.record.rejected >= 1
    assert outcome.record.branches == 3 and all(r.proposer.policy == "mutate" for r in outcome.rollouts)


def test_a_curriculum_trajectorys_lineage_is_not_handed_to_the_sandbox_as_its_world(bfcl_store_path: Path) -> None:
    # A curriculum trajectory records its parent under environment['curriculum_parent']: replay passed it to
    # sandbox.reset with the world, which a sandbox that checks its environment's keys refuses.
    from ee_middleware.replay.curriculum import PARENT_KEY

    class StrictBFCLSandbox(BFCLSandbox):
        def reset(self, environment: Any) -> None:
            assert PARENT_KEY not in (environment or {}), environment
            super().reset(environment)

    trajectory = _trajectories(bfcl_store_path)[0]
    variant = trajectory.model_copy(update={"environment": {**trajectory.environment, PARENT_KEY: {"trajectory_id": trajectory.id}}})
    outcome = replay_trajectory(variant, StrictBFCLSandbox(), Proposer(MutationPolicy(), k=2), SETTINGS)
    assert outcome.record.status == "done", outcome.record
    assert outcome.rollouts


def test_tool_text_with_lone_surrogates_is_compared_stored_and_reported_as_capture_stores_it(tmp_path: Path) -> None:
    """A tool listing files whose names are not UTF-8 (os.listdir gives 'caf\\udce9.txt') or giving a string a JavaScript
    backend cut inside an emoji ('Great day \\ud83d'): capture stored U+FFFD, and replay compared the sandbox's raw text
    with it, so a faithful sandbox was a fidelity mismatch at every such call (its rollouts then left out of the
    datasets) and the rollouts kept text no UTF-8 writer takes. Replay now replaces them as capture does."""
    from tests.replay import surrogate_world

    trajectory = surrogate_world.record_files(tmp_path / "store")
    assert [s.observation.content for s in trajectory.steps if s.observation] == [surrogate_world.LISTED, surrogate_world.PREVIEWED]

    policy = _ScriptedPolicy(
        [ToolCall(id="a", name="list_dir", arguments={"folder": "docs"}), ToolCall(id="b", name="preview", arguments={"post": 8})]
    )
    outcome = replay_trajectory(trajectory, surrogate_world.make_sandbox(), Proposer(policy, k=2), SETTINGS)
    record = outcome.record
    assert (record.status, record.states, record.fidelity_mismatches) == ("done", 2, 0), record.details
    texts = {r.action.tool_call.name: r.observation.content for r in outcome.rollouts}
    assert texts == {"list_dir": surrogate_world.LISTED, "preview": surrogate_world.PREVIEWED}
    json.dumps([r.model_dump(mode="json") for r in outcome.rollouts], ensure_ascii=False).encode("utf-8")  # raised before


def test_a_malformed_call_the_graph_answered_is_not_executed_and_its_state_still_branches(tmp_path: Path) -> None:
    """A model's call with malformed arguments (LangChain's invalid_tool_calls, stored as {"_raw": text}) is answered by
    create_agent itself ('... could not be executed - arguments were malformed or truncated.'), never by the tool. Replay
    executed it as search(_raw=...): the tool's validation error was a fidelity mismatch at every such call (no sandbox
    could match), and one to a tool the sandbox does not provide (never run in production either) skipped the whole
    trajectory. Now such a call is neither executed nor checked, the world stays as the graph left it, and the
    alternatives at its state are replayed as usual."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call
    from tests.conftest import record_once

    def searched(world: dict[str, Any], query: str) -> str:
        world["searches"] += 1
        return f"found {query} (search #{world['searches']})"

    production = {"searches": 0}

    @tool
    def search(query: str) -> str:
        """Search the web."""
        return searched(production, query)

    @tool
    def notify(text: str) -> str:
        """Notify the user's phone."""
        return "sent"

    def malformed(name: str, text: str, call_id: str) -> dict[str, Any]:
        return {"name": name, "args": text, "id": call_id, "error": "bad json", "type": "invalid_tool_call"}

    script = [
        AIMessage("", tool_calls=[tool_call("search", query="a")], invalid_tool_calls=[malformed("search", '{"query": "caf', "c2")]),
        AIMessage("", tool_calls=[tool_call("search", query="b")], invalid_tool_calls=[malformed("notify", '{"text": "on my w', "c4")]),
        AIMessage("", tool_calls=[tool_call("search", query="c")]),
        AIMessage("done"),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [search, notify]), app="web", store=tmp_path / "store")
    trajectory = record_once(agent, tmp_path / "store", {"messages": [("user", "find cafes, and tell me on my phone")]})
    calls = [s.action.tool_call for s in trajectory.steps if s.action.tool_call]
    assert [(c.name, list(c.arguments)) for c in calls] == [
        ("search", ["query"]), ("search", ["_raw"]), ("search", ["query"]), ("notify", ["_raw"]), ("search", ["query"])
    ]  # fmt: skip
    assert "could not be executed" in trajectory.steps[1].observation.content

    received: list[dict[str, Any]] = []

    def sandboxed_search(world: dict[str, Any], **arguments: Any) -> str:
        received.append(arguments)
        return searched(world, arguments["query"]) if "query" in arguments else "Error: query is required"

    sandbox = PythonSandbox(lambda env: {"searches": 0}, tools={"search": sandboxed_search})
    policy = _ScriptedPolicy([ToolCall(id="alt", name="search", arguments={"query": "alt"})])
    outcome = replay_trajectory(trajectory, sandbox, Proposer(policy, k=1), SETTINGS)
    record = outcome.record
    assert (record.status, record.states, record.fidelity_mismatches) == ("done", 5, 0), (record.reason, record.details)
    assert record.details["malformed_calls_not_executed"] == [{"step": 1, "tool": "search"}, {"step": 3, "tool": "notify"}]
    assert all("_raw" not in arguments for arguments in received), received
    # each state's alternative sees the world the recorded calls left: the malformed ones changed nothing
    seen = {r.step_index: r.observation.content for r in outcome.rollouts}
    assert seen == {
        0: "found alt (search #1)",
        1: "found alt (search #2)",
        2: "found alt (search #2)",
        3: "found alt (search #3)",
        4: "found alt (search #3)",
    }


class _TagsTheCall(PythonSandbox):
    """A plug-in sandbox that marks the arguments it is given (a bug the conformance kit names, checked here at run time)."""

    def execute(self, call: ToolCall) -> Observation:
        observation = super().execute(call)
        call.arguments["_sandbox_seen"] = True
        return observation


def test_a_sandbox_that_changes_the_call_it_is_given_changes_no_stored_call() -> None:
    """Sweep (plug-ins) 1: the rollouts (and the IWM rows built from them) showed an argument no policy proposed."""
    trajectory = _shop_trajectory(then_check=True)
    expert_calls = [step.action.tool_call.model_dump() for step in trajectory.steps]

    def order_item(world: dict[str, Any], item: str) -> str:
        world["stock"][item] -= 1
        return f"ordered {item}, {world['stock'][item]} left"

    sandbox = _TagsTheCall(
        lambda env: {"stock": dict(env["stock"])}, tools={"order_item": order_item, "check_stock": lambda world, item: "ok"}
    )
    proposed = ToolCall(id="p", name="check_stock", arguments={"item": "pear"})
    outcome = replay_trajectory(trajectory, sandbox, Proposer(_ScriptedPolicy([proposed]), k=1, refill=None), SETTINGS)

    assert outcome.rollouts and all(r.action.tool_call.arguments == {"item": "pear"} for r in outcome.rollouts)
    assert proposed.arguments == {"item": "pear"}
    assert [step.action.tool_call.model_dump() for step in trajectory.steps] == expert_calls
    assert outcome.record.fidelity_mismatches == 0
