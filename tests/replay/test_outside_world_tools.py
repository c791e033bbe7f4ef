"""A tool that changes something outside the world (it pages on-call, sends an e-mail) is never called by replay. A
trajectory whose expert calls one before its last tool call was skipped whole, although paging mid-flow is common (found
by a sweep, S14 D4): a sandbox now declares such tools (``PythonSandbox(..., outside_world_tools=[...])``, the optional
``acts_outside_world(name)``), and the expert's calls of them are left unexecuted, their recorded results standing for
them (the world is unchanged by them), and every state is branched from. A tool the sandbox lacks and does not declare
may change the world (a sandbox that lost a world tool): its trajectory is skipped as before, the reason saying both
fixes. A world tool declared by mistake shows in the expert's later calls, as fidelity errors that name it. And the
proposals of an uncovered tool, refused and counted, are topped up to K with tools the sandbox provides (S14 D5: 64 of
76 branches at K=4).

A real ``create_agent`` graph driven by a scripted model, recorded by ``record_experience`` into a real store, replayed
by ``ee replay run``'s own job (and the CLI) in a real ``PythonSandbox``."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.errors import SandboxError
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import record_once
from tests.replay.policies_for_tests import FixedCallsPolicy

HERE = "tests.replay.test_outside_world_tools"
ENVIRONMENT = {"users": {"u101": {"password_version": 1}, "u102": {"password_version": 4}}}
TASK = "Identity is flapping: page identity on-call, then reset Grace's (u101) password by email and check her account."

# --- the world and its tools, written once: production binds its own world, the sandbox the branch's copy ----------


def _get_user(world: dict[str, Any], user_id: str) -> str:
    user = world["users"].get(user_id)
    if user is None:
        raise ValueError(f"no user {user_id}")
    return f"{user_id}: password version {user['password_version']}"


def _reset_password(world: dict[str, Any], user_id: str, channel: str) -> str:
    user = world["users"].get(user_id)
    if user is None:
        raise ValueError(f"no user {user_id}")
    user["password_version"] += 1
    return f"reset {user_id}'s password; link sent by {channel}"


def _build(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"users": {k: dict(v) for k, v in (environment or ENVIRONMENT)["users"].items()}}


def make_sandbox() -> PythonSandbox:
    """The helpdesk's sandbox as docs/sandboxes.md says: page_oncall changes something outside the world, so it is
    declared in outside_world_tools."""
    tools = {"get_user": _get_user, "reset_password": _reset_password}
    return PythonSandbox(_build, tools=tools, outside_world_tools=["page_oncall"], kind="helpdesk")


def make_undeclared_sandbox() -> PythonSandbox:
    """page_oncall neither provided nor declared (the sandbox cannot tell it from a world tool it lost)."""
    return PythonSandbox(_build, tools={"get_user": _get_user, "reset_password": _reset_password}, kind="helpdesk")


def make_sandbox_without_reset() -> PythonSandbox:
    """A sandbox that lost reset_password, a world tool (neither provided nor declared)."""
    return PythonSandbox(_build, tools={"get_user": _get_user}, outside_world_tools=["page_oncall"], kind="helpdesk")


def make_sandbox_declaring_reset() -> PythonSandbox:
    """A sandbox that declares reset_password outside the world by mistake: it changes the world the sandbox rebuilds."""
    return PythonSandbox(_build, tools={"get_user": _get_user}, outside_world_tools=["page_oncall", "reset_password"], kind="helpdesk")


def make_sandbox_with_page_stub() -> PythonSandbox:
    """page_oncall as a world tool that changes nothing and answers as production did (so that it is covered)."""
    tools = {"get_user": _get_user, "reset_password": _reset_password, "page_oncall": lambda world, team, message: f"paged {team}"}
    return PythonSandbox(_build, tools=tools, kind="helpdesk")


class PageAndRead(FixedCallsPolicy):
    """A policy (a served model's stand-in) proposing a page and a read at every state."""

    name = "page-and-read"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [
        ("page_oncall", {"team": "network", "message": "check"}),
        ("get_user", {"user_id": "u102"}),
    ]


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, list[str]]:
    """One approved run: page on-call, reset the password, read the account, answer; and what production paged."""
    return _record(tmp_path)


def _record(tmp_path: Path, *, page_last: bool = False) -> tuple[Path, list[str]]:
    """:func:`recorded`'s run (``page_last``: reset, read, then page, as a run that pages when it is done)."""
    world = _build(ENVIRONMENT)
    pager: list[str] = []

    @tool
    def get_user(user_id: str) -> str:
        """Read a user's account."""
        return _get_user(world, user_id)

    @tool
    def reset_password(user_id: str, channel: str) -> str:
        """Reset a user's password and send them a link."""
        return _reset_password(world, user_id, channel)

    @tool
    def page_oncall(team: str, message: str) -> str:
        """Page a team's on-call engineer."""
        pager.append(f"{team}: {message}")
        return f"paged {team}"

    page = AIMessage("", tool_calls=[tool_call("page_oncall", team="identity", message="identity flapping")])
    script = [
        AIMessage("", tool_calls=[tool_call("reset_password", user_id="u101", channel="email")]),
        AIMessage("", tool_calls=[tool_call("get_user", user_id="u101")]),
        AIMessage("Paged identity and reset Grace's password."),
    ]
    script.insert(2 if page_last else 0, page)
    graph = create_agent(ScriptedChatModel(script=script), [get_user, reset_password, page_oncall])
    store = tmp_path / "experience"
    agent = record_experience(graph, app="helpdesk", store=store, environment=lambda inputs, config: ENVIRONMENT)
    trajectory = record_once(agent, store, {"messages": [("user", TASK)]})
    order = ["reset_password", "get_user", "page_oncall"] if page_last else ["page_oncall", "reset_password", "get_user"]
    assert [s.action.tool_call.name for s in trajectory.steps if s.action.tool_call] == order
    opened = LocalExperienceStore(store)
    opened.approve([trajectory.id], by="test")
    opened.close()
    return store, pager


def test_a_declared_tool_at_the_last_tool_call_is_counted_as_declared_not_as_one_the_sandbox_lacks(tmp_path: Path) -> None:
    """Was: listed in final_calls_not_replayed, the summary saying "the sandbox does not provide the tool" as for an
    undeclared one, so nothing showed that the declaration took effect (a sweep)."""
    store, pager = _record(tmp_path, page_last=True)
    declared = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:make_sandbox", k=2, seed=7))
    assert declared.done == 1 and declared.states == 3 and declared.fidelity_mismatches == 0, declared.to_dict()
    assert declared.uncovered_calls_not_executed == {"page_oncall": 1} and declared.final_calls_not_replayed == {}
    undeclared = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:make_undeclared_sandbox", k=2, seed=7))
    assert undeclared.done == 1 and undeclared.final_calls_not_replayed == {"page_oncall": 1}
    assert undeclared.uncovered_calls_not_executed == {}
    assert pager == ["identity: identity flapping"], "replay paged someone"


def _rollouts(store: Path, replay_id: str) -> list[dict[str, Any]]:
    opened = LocalExperienceStore(store)
    try:
        rows = opened.rollouts(replay_id=replay_id).sort(["step_index", "branch_index"])
        columns = ("id", "step_index", "branch_index", "tool_call_id", "tool_name", "arguments_json", "proposer_json", "observation")
        return [{k: rows[k][i] for k in columns} for i in range(rows.height)]
    finally:
        opened.close()


@pytest.mark.parametrize("isolation", ["none", "subprocess"])  # the subprocess sandbox forwards acts_outside_world
def test_an_expert_call_of_a_tool_declared_outside_the_world_is_not_executed_and_every_state_is_branched_from(
    recorded: tuple[Path, list[str]], isolation: str
) -> None:
    store, pager = recorded
    summary = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:make_sandbox", k=4, seed=7, isolation=isolation))
    assert summary.skipped == {} and summary.failed == {} and summary.done == 1, summary.to_dict()
    assert summary.states == 3 and summary.fidelity_mismatches == 0  # the world was unchanged by the page: as recorded
    assert summary.uncovered_calls_not_executed == {"page_oncall": 1} and summary.final_calls_not_replayed == {}
    assert pager == ["identity: identity flapping"], "replay paged someone"
    rollouts = _rollouts(store, summary.replay_id)
    assert sorted({r["step_index"] for r in rollouts}) == [0, 1, 2]  # the state before the page, and those after it
    assert all(r["tool_name"] != "page_oncall" for r in rollouts)


def test_the_ee_replay_run_record_lists_the_call_not_executed(recorded: tuple[Path, list[str]]) -> None:
    store, _ = recorded
    summary = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:make_sandbox", k=2))
    opened = LocalExperienceStore(store)
    try:
        [details] = opened.replays(replay_id=summary.replay_id)["details_json"].to_list()
    finally:
        opened.close()
    assert json.loads(details)["uncovered_calls_not_executed"] == [{"step": 0, "tool": "page_oncall"}]


@pytest.mark.parametrize("sandbox", ["make_sandbox_without_reset", "make_undeclared_sandbox"])
def test_an_expert_call_of_an_undeclared_tool_the_sandbox_lacks_skips_the_trajectory_as_before(
    recorded: tuple[Path, list[str]], sandbox: str
) -> None:
    """A world tool the sandbox lost (reset_password) would leave every later branch a world without its effect; the
    sandbox cannot tell it from an outside-world tool it was not told of (page_oncall): both skip, saying both fixes."""
    store, pager = recorded
    summary = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:{sandbox}", k=2))
    assert summary.done == 0 and summary.branches == 0 and summary.uncovered_calls_not_executed == {}, summary.to_dict()
    [reason] = summary.skipped.values()
    tool = "reset_password" if sandbox == "make_sandbox_without_reset" else "page_oncall"
    assert reason.startswith(f"the expert calls {tool}, which sandbox 'helpdesk' does not provide"), reason
    assert "Add these tools to the sandbox with a world they act on" in reason and "outside_world_tools=[...]" in reason, reason
    assert pager == ["identity: identity flapping"]


def test_a_world_tool_declared_outside_the_world_by_mistake_shows_as_fidelity_errors_naming_it(recorded: tuple[Path, list[str]]) -> None:
    store, _ = recorded
    args = ["replay", "run", "--store", str(store), "--sandbox", f"{HERE}:make_sandbox_declaring_reset", "--k", "2", "--no-progress"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "fidelity error" in output and "password version 1" in output, output  # get_user saw the reset missing
    cause = "The expert called page_oncall (step 0), reset_password (step 1) before this step, which sandbox 'helpdesk' does not provide"
    assert f"{cause}: replay did not execute them and took their recorded result" in output, output
    assert "If one of them changes the world the sandbox rebuilds, this is its effect missing: add it to the sandbox's tools" in output
    assert re.search(r"^skipped \w+:", result.output, re.MULTILINE) is None, result.output


def test_a_tool_both_called_and_declared_outside_the_world_is_refused() -> None:
    with pytest.raises(SandboxError, match=r"\['get_user'\] are listed in outside_world_tools"):
        PythonSandbox(_build, tools={"get_user": _get_user}, outside_world_tools=["get_user"])


def test_refused_proposals_are_topped_up_to_k_with_tools_the_sandbox_provides(recorded: tuple[Path, list[str]]) -> None:
    store, _ = recorded
    summary = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:make_sandbox", k=4, seed=7))
    assert summary.refused_tools.get("page_oncall", 0) > 0, "mutate proposed no page: the test shows nothing"
    per_state = Counter(r["step_index"] for r in _rollouts(store, summary.replay_id))
    assert per_state == {0: 4, 1: 4, 2: 4} and summary.branches == 12, per_state


def test_states_where_nothing_was_refused_keep_their_proposals_draw_for_draw(recorded: tuple[Path, list[str]]) -> None:
    """The same proposals as with a sandbox that covers every tool, except where a proposal was refused: there, the
    kept ones keep their branch and id, and the refill's come after them."""
    store, _ = recorded
    lacking = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:make_sandbox", k=4, seed=7))
    covering = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:make_sandbox_with_page_stub", k=4, seed=7))
    assert covering.refused_tools == {} and covering.uncovered_calls_not_executed == {}
    strip = lambda rows: [{k: v for k, v in r.items() if k != "id"} for r in rows]  # noqa: E731 - ids hold the replay id
    got, full = _rollouts(store, lacking.replay_id), _rollouts(store, covering.replay_id)
    for step in (0, 1, 2):
        mine = strip([r for r in got if r["step_index"] == step])
        theirs = strip([r for r in full if r["step_index"] == step])
        kept = [r for r in theirs if r["tool_name"] != "page_oncall"]
        if len(kept) == len(theirs):
            assert mine == theirs, step
        else:
            assert mine[: len(kept)] == kept and len(mine) == 4, step
            assert all(r["branch_index"] >= 4 for r in mine[len(kept) :]), step


def test_a_policys_proposal_of_a_tool_declared_outside_the_world_is_refused_counted_and_topped_up(recorded: tuple[Path, list[str]]) -> None:
    store, pager = recorded
    summary = run_replay(ReplayConfig.load(store=store, sandbox=f"{HERE}:make_sandbox", policy=f"{HERE}:PageAndRead", k=2))
    assert summary.done == 1 and summary.refused_tools == {"page_oncall": 3}, summary.to_dict()
    assert pager == ["identity: identity flapping"]
    rollouts = _rollouts(store, summary.replay_id)
    assert Counter(r["step_index"] for r in rollouts) == {0: 2, 1: 2, 2: 2}
    assert all(r["tool_name"] != "page_oncall" for r in rollouts)
    refills = [json.loads(r["proposer_json"])["settings"].get("refill_for") for r in rollouts]
    assert refills.count("page-and-read") == 3, refills


def test_ee_replay_run_prints_the_calls_not_executed_and_the_declared_tools_own_refusal(recorded: tuple[Path, list[str]]) -> None:
    """Review R1: the count was stored but ee replay run printed nothing of it, and a proposal of a declared tool was
    refused with the advice to declare it."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    store, pager = recorded
    result = CliRunner().invoke(
        app,
        ["replay", "run", "--store", str(store), "--sandbox", f"{HERE}:make_sandbox", "--k", "4", "--seed", "7"],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "not executed (declared outside the world): page_oncall=1: the sandbox declares the tool" in text, text
    assert pager == ["identity: identity flapping"]
    sandbox = make_sandbox()
    try:
        assert sandbox.refusal_hint("page_oncall") == (
            "page_oncall is declared in outside_world_tools: it acts only outside the world, so replay never calls it"
        )
        assert sandbox.refusal_hint("get_user") is None
    finally:
        sandbox.close()
