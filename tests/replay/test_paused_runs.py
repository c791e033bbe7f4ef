"""Replay never runs a call a paused or cancelled run ended on: a call awaiting a human review (which the reviewer may
reject) or one a cancellation cut off. The alternatives at its state are replayed (the world there is production's), and
no later state is branched from (the world past the call is none production had), each counted in the record and the
job's summary. Real ``create_agent`` graphs paused on a real checkpointer and resumed, or cancelled with real asyncio
cancellation, recorded into a real local store, replayed by ``ee replay run``'s own job in a real ``PythonSandbox``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.records import Trajectory
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.replay.policies_for_tests import FixedCallsPolicy

pytestmark = pytest.mark.usefixtures("no_child_left")

SANDBOX = "tests.replay.test_paused_runs:make_sandbox"
POLICY = "tests.replay.test_paused_runs:NoteProbe"
PAUSED_TURN = "a call of a turn paused for a review"


def _note(world: dict[str, Any], text: str) -> str:
    world["notes"].append(text)
    return f"noted {len(world['notes'])}"


def _lookup(world: dict[str, Any], city: str) -> str:
    return f"{city}: sunny"


def _slow(world: dict[str, Any], q: str) -> str:
    return f"slow {q}"


def make_sandbox(**options: Any) -> PythonSandbox:
    """The notes world as a replay sandbox: a note's answer says how many notes the world holds."""
    return PythonSandbox(lambda environment: {"notes": []}, tools={"note": _note, "lookup": _lookup, "slow": _slow}, kind="notes")


class NoteProbe(FixedCallsPolicy):
    """Proposes ``note(text="probe")`` at every state: its answer (``noted N``) shows how many notes the world holds."""

    name = "note-probe"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [("note", {"text": "probe"})]


def _agent_tools() -> list[Any]:
    notes: list[str] = []

    @tool
    def note(text: str) -> str:
        """Write a note."""
        return _note({"notes": notes}, text)

    @tool
    def lookup(city: str) -> str:
        """Look a city's weather up."""
        return _lookup({}, city)

    return [note, lookup]


def record_rejected_review(store: Path, *, lookup_first: bool = False) -> None:
    """The model writes a note and looks Paris up in one response (the lookup first with ``lookup_first``);
    ``HumanInTheLoopMiddleware`` pauses on the note alone, the reviewer rejects it and the run resumes. Every trajectory
    approved."""
    calls = [tool_call("note", text="DELETE EVERYTHING"), tool_call("lookup", city="paris")]
    script = [
        AIMessage(content="", tool_calls=calls[::-1] if lookup_first else calls),
        AIMessage(content="Paris is sunny; the note was rejected."),
    ]
    graph = create_agent(
        ScriptedChatModel(script=script),
        _agent_tools(),
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"note": True})],
        checkpointer=InMemorySaver(),
    )
    agent = record_experience(graph, app="notes", store=store)
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [("user", "Write a note and look Paris up")]}, config)
    agent.invoke(Command(resume={"decisions": [{"type": "reject", "message": "no"}]}), config)
    agent.flush()
    agent.recorder.close()
    _approve_all(store)


def _approve_all(store: Path) -> None:
    opened = LocalExperienceStore(store)
    try:
        opened.approve(opened.trajectories()["id"].to_list(), by="alice", reason="looks right")
    finally:
        opened.close()


def _trajectories(store: Path) -> list[Trajectory]:
    opened = LocalExperienceStore(store)
    try:
        return sorted(opened.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        opened.close()


def _replayed(store: Path, trajectory_id: str) -> tuple[dict[str, Any], pl.DataFrame]:
    """The replay record (its counts and details) and the rollouts of ``trajectory_id``."""
    opened = LocalExperienceStore(store)
    try:
        [record] = opened.replays().filter(pl.col("trajectory_id") == trajectory_id).to_dicts()
        rollouts = opened.rollouts([trajectory_id])
    finally:
        opened.close()
    return {**record, "details": json.loads(record["details_json"] or "{}")}, rollouts


def test_a_call_awaiting_review_is_never_run_and_no_state_after_it_is_branched(tmp_path: Path) -> None:
    """Was: replay ran the call the reviewer rejected (``note("DELETE EVERYTHING")``) to reach the turn's second call's
    state and branched there in a world production never had: the probe answered ``noted 2`` (production's world held no
    note)."""
    store = tmp_path / "store"
    record_rejected_review(store)
    paused, resumed = _trajectories(store)
    assert paused.status == "interrupted" and [s.observation for s in paused.steps] == [None, None]

    summary = run_replay(ReplayConfig.load(store=store, k=1, sandbox=SANDBOX, policy=POLICY))

    record, rollouts = _replayed(store, paused.id)
    assert rollouts.select("step_index", "observation").rows() == [(0, "noted 1")]  # production's world there: no note yet
    assert record["status"] == "done"
    assert record["details"]["unanswered_calls_not_executed"] == [{"step": 0, "tool": "note", "why": PAUSED_TURN}]
    assert record["details"]["states_not_reached"] == [1]
    assert record["states"] == 1  # the state the review paused at, alone
    # the resumed run (the lookup, as the reviewer's decision left it) replays as any run does
    resumed_record, resumed_rollouts = _replayed(store, resumed.id)
    assert resumed_record["states"] == 1 and "unanswered_calls_not_executed" not in resumed_record["details"]
    assert resumed_rollouts["observation"].to_list() == ["noted 1"]
    assert (summary.unanswered_calls_not_executed, summary.states_not_reached, summary.states) == ({"note": 1}, 1, 2)
    assert summary.fidelity_mismatches == 0


def test_a_call_beside_the_one_under_review_is_reported_as_a_call_of_the_paused_turn(tmp_path: Path) -> None:
    """A turn ``[lookup, note]`` paused on the note alone: the lookup, the first call replay stops at, is under no
    review; it never ran because its turn waits for the note's. Was: reported ``"why": "awaiting review"``."""
    store = tmp_path / "store"
    record_rejected_review(store, lookup_first=True)
    paused, _ = _trajectories(store)
    assert [s.action.tool_call.name for s in paused.steps if s.action.tool_call] == ["lookup", "note"]

    run_replay(ReplayConfig.load(store=store, k=1, sandbox=SANDBOX, policy=POLICY))

    record, _ = _replayed(store, paused.id)
    assert record["details"]["unanswered_calls_not_executed"] == [{"step": 0, "tool": "lookup", "why": PAUSED_TURN}]
    assert record["details"]["states_not_reached"] == [1]


def test_the_replay_cli_reports_the_calls_not_run_and_the_states_not_reached(tmp_path: Path) -> None:
    store = tmp_path / "store"
    record_rejected_review(store)
    args = ["replay", "run", "--store", str(store), "--sandbox", SANDBOX, "--policy", POLICY, "--k", "1", "--no-progress"]
    shown = CliRunner().invoke(app, [*args, "--json"])
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.output)
    assert (summary["unanswered_calls_not_executed"], summary["states_not_reached"]) == ({"note": 1}, 1)
    assert {"states", "branches", "final_calls_not_replayed", "skipped", "failed"} <= set(summary)  # the keys it had
    again = CliRunner().invoke(app, [*args, "--again"], env={"COLUMNS": "400"})
    assert again.exit_code == 0, again.output
    assert "not executed: note=1: calls a paused or cancelled run ended on" in again.output
    assert "the 1 state(s) after them were not branched from" in again.output


def record_cancelled_parallel_calls(store: Path) -> Trajectory:
    """A request cancelled while a slow search ran beside a note (parallel calls, the search first): the note ran and was
    recorded, the search was cut off (no observation). Approved; returns its trajectory."""
    started = threading.Event()

    @tool
    async def slow(q: str) -> str:
        """A slow search."""
        started.set()
        await asyncio.sleep(30)
        return "never seen"

    script = [AIMessage(content="", tool_calls=[tool_call("slow", q="x"), tool_call("note", text="seen")]), AIMessage(content="Done.")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [slow, *_agent_tools()]), app="notes", store=store)

    async def request() -> None:  # what a web server does when its client goes away: the request's task is cancelled
        task = asyncio.create_task(agent.ainvoke({"messages": [("user", "Search and note")]}, {"configurable": {"thread_id": "req"}}))
        await asyncio.to_thread(started.wait, 30)
        await asyncio.sleep(0.2)  # the note (no wait in it) has answered
        task.cancel("client disconnected")
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(request())
    agent.recorder.close()
    _approve_all(store)
    [cancelled] = _trajectories(store)
    assert (cancelled.status, cancelled.error) == ("interrupted", "cancelled: CancelledError")
    assert [(s.action.tool_call.name, s.observation and s.observation.content) for s in cancelled.steps] == [  # type: ignore[union-attr]
        ("slow", None),
        ("note", "noted 1"),
    ]
    return cancelled


def test_a_call_cut_off_by_cancellation_is_never_run_and_no_state_after_it_is_branched(tmp_path: Path) -> None:
    """Was: replay ran the call the cancellation cut off to reach the next call's state, and branched there."""
    store = tmp_path / "store"
    cancelled = record_cancelled_parallel_calls(store)

    summary = run_replay(ReplayConfig.load(store=store, k=1, sandbox=SANDBOX, policy=POLICY))

    record, rollouts = _replayed(store, cancelled.id)
    assert rollouts.select("step_index", "observation").rows() == [(0, "noted 1")]
    why = "cut off (cancelled: CancelledError)"
    assert record["details"]["unanswered_calls_not_executed"] == [{"step": 0, "tool": "slow", "why": why}]
    assert record["details"]["states_not_reached"] == [1]
    assert (summary.unanswered_calls_not_executed, summary.states_not_reached) == ({"slow": 1}, 1)
