"""A paused run's call is held by the run that resumed it only: the next run of its thread, holding the same call (id,
tool name and arguments). Many providers number calls per reply (``call_0``, TGI's ``"0"``) and many apps run every
turn on one thread, so a later, unrelated call often has the same id: it holds nothing, and the rule stays linear in
the number of runs of a thread. Real ``create_agent`` graphs recorded into a real local store, built by
``ee datasets build``'s own code; the scale test uses index frames as the build makes them (10k runs do not record here
in a test's time)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from ee_middleware import record_experience
from ee_middleware.replay.paused_turns import RUNS_SCHEMA, paused_turn_steps, steps_schema
from ee_middleware.replay.retrieval import expert_transitions, paused_steps_left_out
from ee_middleware.testing import ScriptedChatModel
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.replay.test_paused_runs import _agent_tools, _approve_all, _trajectories
from tests.trainers.datasets.test_paused_copies import _tokyo_rows
from tests.trainers.datasets.test_paused_iwm import _build, confirm_pay

pytestmark = pytest.mark.usefixtures("no_child_left")


def _call(name: str, call_id: str, **arguments: Any) -> dict[str, Any]:
    """A tool call with the id a provider that numbers calls per reply gives it."""
    return {"name": name, "args": arguments, "id": call_id, "type": "tool_call"}


def _run(store: Path, script: list[AIMessage], inputs: list[Any], thread: str = "1") -> None:
    """``inputs`` on ``thread`` of a fresh ``create_agent`` graph (its own checkpointer: an app restarted between turns
    that keeps one thread id for everything), recorded into ``store``."""
    graph = create_agent(ScriptedChatModel(script=script), [*_agent_tools(), confirm_pay], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="pay", store=store)
    config = {"configurable": {"thread_id": thread}}
    for given in inputs:
        agent.invoke(given, config)
    agent.flush()
    agent.recorder.close()


PAY = AIMessage(content="", tool_calls=[_call("lookup", "call_0", city="tokyo"), _call("confirm_pay", "call_1", amount=42)])


@pytest.mark.parametrize(
    "later_call",
    [_call("note", "call_0", text="hello"), _call("lookup", "call_0", city="paris")],
    ids=["another-tool", "same-tool-other-arguments"],
)
def test_a_later_call_reusing_the_id_does_not_hold_a_never_resumed_runs_call(tmp_path: Path, later_call: dict[str, Any]) -> None:
    """Was: the later turn's ``call_0`` "held" the paused run's lookup, so its only copy was left out (0 rows,
    ``paused_turn_repeats_left_out=1``), in IWM, the replay buffer and the eval split alike."""
    store = tmp_path / "store"
    _run(store, [PAY, AIMessage("Paid.")], [{"messages": [("user", "Pay 42 and look Tokyo up")]}])
    _run(store, [AIMessage(content="", tool_calls=[later_call]), AIMessage("Done.")], [{"messages": [("user", "Next")]}])
    _approve_all(store)
    paused, later = _trajectories(store)
    assert paused.status == "interrupted" and later.thread_id == paused.thread_id
    assert [s.action.tool_call.id for s in later.steps if s.action.tool_call] == ["call_0"]

    iwm, info = _build(store, tmp_path / "out")

    assert _tokyo_rows(iwm) == [(paused.id, 0)]
    assert "paused_turn_repeats_left_out" not in info
    assert [t.step_index for t in expert_transitions([paused, later])[paused.id]] == [0]


def test_each_resumed_run_holds_its_own_paused_runs_calls_when_ids_repeat(tmp_path: Path) -> None:
    """Two paused turns on one thread, each resumed, every reply numbering its calls from ``call_0``: each resumed run
    holds the copy of its own paused run, and the lookup is taught once per run that ran it."""
    store = tmp_path / "store"
    ask = {"messages": [("user", "Pay 42 and look Tokyo up")]}
    _run(store, [PAY, AIMessage("Paid.")], [ask, Command(resume="yes"), ask, Command(resume="yes")])
    _approve_all(store)
    runs = _trajectories(store)
    assert [t.status for t in runs][::2] == ["interrupted", "interrupted"]

    iwm, info = _build(store, tmp_path / "out")

    assert _tokyo_rows(iwm) == [(runs[1].id, 0), (runs[3].id, 0)]
    assert info["paused_turn_repeats_left_out"] == 2
    held = paused_steps_left_out(runs).filter(pl.col("held_later"))
    assert sorted(held.select("trajectory_id", "step_index").rows()) == sorted(
        [(runs[0].id, 0), (runs[0].id, 1), (runs[2].id, 0), (runs[2].id, 1)]
    )


def test_ten_thousand_runs_on_one_thread_with_reused_ids_stand_in_index_frames() -> None:
    """10k runs on one thread, all numbering calls ``call_0``/``call_1`` (index frames as the build makes them; stand-ins
    for 10k recorded runs). Each even paused run is resumed by the next run; each odd one is never resumed and is
    followed by an unrelated turn calling ``note`` under ``call_0``. Was: every odd run's lookup was held too (and the
    join paired every call_0 of the thread with every other: 85 s here, against 0.06 s before 21d6da9)."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    runs: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    lookup, pay = ("lookup", '{"city":"tokyo"}'), ("confirm_pay", '{"amount":42}')
    for i in range(5_000):
        paused, nxt = f"p{i}", f"n{i}"
        runs += [
            (paused, "interrupted", "1", t0 + dt.timedelta(seconds=2 * i), t0 + dt.timedelta(seconds=2 * i + 0.5), f"trace-{paused}"),
            (nxt, "success", "1", t0 + dt.timedelta(seconds=2 * i + 1), t0 + dt.timedelta(seconds=2 * i + 1.5), f"trace-{nxt}"),
        ]
        steps += [(paused, 0, "tool_call", 0, "call_0", *lookup, True), (paused, 1, "tool_call", 0, "call_1", *pay, False)]
        if i % 2 == 0:  # the resumed run
            steps += [(nxt, 0, "tool_call", 0, "call_0", *lookup, True), (nxt, 1, "tool_call", 0, "call_1", *pay, True)]
        else:  # an unrelated later turn
            steps += [(nxt, 0, "tool_call", 0, "call_0", "note", '{"text":"hello"}', True)]
        steps += [(nxt, 2, "final_answer", 1, None, None, None, False)]
    trajectories = pl.DataFrame(runs, schema=RUNS_SCHEMA, orient="row")
    frame = pl.DataFrame(steps, schema=steps_schema("has_observation"), orient="row")

    out = paused_turn_steps(trajectories, frame, pl.col("has_observation"))

    held = set(out.filter(pl.col("held_later")).select("trajectory_id", "step_index").iter_rows())
    assert held == {(f"p{i}", s) for i in range(0, 5_000, 2) for s in (0, 1)}
    assert not out.filter(pl.col("after")).height


def test_steps_without_the_call_columns_are_refused_naming_them() -> None:
    """Matching a resumed run's copy needs the call's tool name and arguments: a frame without them is an error that
    says what to select, not a silent "nothing is held"."""
    trajectories = pl.DataFrame(
        {"id": ["p"], "status": ["interrupted"], "thread_id": ["1"], "started_at": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]}
    )
    steps = pl.DataFrame(
        {"trajectory_id": ["p", "p"], "index": [0, 1], "action_kind": ["tool_call"] * 2, "decision_index": [0, 0]}
        | {"tool_call_id": ["call_0", "call_1"], "has_observation": [True, False]}
    )
    with pytest.raises(ValueError, match="tool_name and arguments_json"):
        paused_turn_steps(trajectories, steps, pl.col("has_observation"))
