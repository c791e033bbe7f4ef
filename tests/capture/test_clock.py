"""A run's steps keep the order they ran in when the wall clock steps backwards during the run (an NTP step, a virtual
machine resumed): sweep S4 found them stored in the order of their start times, the final answer as step 1, in 5 of 5
runs with a 0.5 s step. Real agents (``create_agent``, ``ScriptedChatModel``), the real store, capture in this process
and in its capture process; the wall clock is stepped by replacing ``time.time_ns`` (what capture read it with)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.clock import RunClock
from ee_middleware.testing import ScriptedChatModel, tool_call

STEP_BACK_NS = 3_000_000_000


@pytest.fixture
def stepped_clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``time.time_ns`` (and ``time.time``) minus the returned list's one value, which a tool raises to step back."""
    real = time.time_ns
    offset = [0]
    monkeypatch.setattr(time, "time_ns", lambda: real() - offset[0])
    monkeypatch.setattr(time, "time", lambda: (real() - offset[0]) / 1e9)
    return offset


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_run_keeps_its_steps_in_order_when_the_wall_clock_steps_back(tmp_path: Path, stepped_clock: list[int], offload: str) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @tool
    def resync(server: str) -> str:
        """Synchronise the clock (the wall clock steps back 3 s while it runs)."""
        stepped_clock[0] += STEP_BACK_NS
        return f"synced with {server}"

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    def script() -> list[Any]:
        return [
            AIMessage("", tool_calls=[tool_call("add", a=1, b=2)]),
            AIMessage("", tool_calls=[tool_call("resync", server="ntp")]),
            AIMessage("", tool_calls=[tool_call("lookup", key="k")]),
            AIMessage("done"),
        ]

    store_path = tmp_path / "store"
    agent = record_experience(
        create_agent(ScriptedChatModel(script=script()), [add, resync, lookup]),
        app="clock",
        store=store_path,
        offload=offload,
    )
    for _ in range(2):  # the second run starts after the step: its steps in order too
        agent.invoke({"messages": [("user", "go")]})
    assert agent.flush()
    agent.recorder.close()

    trajectories = list(LocalExperienceStore(store_path).iter_trajectories())
    assert len(trajectories) == 2
    for trajectory in trajectories:
        calls = [s.action.tool_call.name if s.action.tool_call else s.action.content for s in trajectory.steps]
        assert calls == ["add", "resync", "lookup", "done"], calls


def test_the_clock_reads_the_wall_clock_again_only_when_no_run_is_in_flight(stepped_clock: list[int]) -> None:
    clock = RunClock()
    clock.run_started()
    before = clock.now_ns()
    stepped_clock[0] += STEP_BACK_NS
    clock.run_started()  # another run starts while the first is in flight: the same anchor
    during = clock.now_ns()
    assert during >= before
    clock.run_ended()
    clock.run_ended()
    clock.run_started()  # none in flight: the wall clock (stepped back) is read again
    after = clock.now_ns()
    assert after < during and abs(after - time.time_ns()) < 1_000_000_000
    clock.run_ended()
    clock.run_ended()  # (more ends than starts never counts below none)
    clock.run_started()
    assert abs(clock.now_ns() - time.time_ns()) < 1_000_000_000


def test_a_forward_step_is_followed_at_the_next_run_start_even_with_runs_in_flight(stepped_clock: list[int]) -> None:
    """Review: a service that always has a run in flight never read the wall clock again, so a forward step (or a
    suspend the monotonic clock did not count) left every later span behind the real time."""
    clock = RunClock()
    clock.run_started()
    stepped_clock[0] -= 5 * STEP_BACK_NS  # the wall clock jumps 15 s ahead
    clock.run_started()  # the first run is still in flight
    assert abs(clock.now_ns() - time.time_ns()) < 1_000_000_000
    clock.run_ended()
    clock.run_ended()
