"""A call that ran in a paused turn (a lookup beside a tool that called ``interrupt()``) is taught exactly once: from the
resumed run where that run is in the source, else from the paused run, its only copy (a run never resumed, or whose
resumed run was not approved). The ``em`` dataset follows the same rule as IWM. Real ``create_agent`` graphs on a real
checkpointer, recorded into a real local store, built by ``ee datasets build``'s own code (one pass and chunked)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.em import build_em
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.replay.test_paused_runs import _agent_tools, _approve_all, _trajectories
from tests.trainers.datasets.test_paused_iwm import _build, confirm_pay

pytestmark = pytest.mark.usefixtures("no_child_left")

TOKYO = '[{"role":"assistant","content":"tokyo: sunny"}]'


def _record_pay(store: Path, *, resume: bool, lookup_first: bool = True) -> list[Trajectory]:
    """One response calling ``lookup('tokyo')`` and ``confirm_pay(42)`` (which calls ``interrupt()``), in that order or the
    other; resumed with ``yes`` or left paused. Every trajectory approved; returned in the order they started."""
    calls = [tool_call("lookup", city="tokyo"), tool_call("confirm_pay", amount=42)]
    script = [AIMessage(content="", tool_calls=calls if lookup_first else calls[::-1]), AIMessage("Paid.")]
    graph = create_agent(ScriptedChatModel(script=script), [*_agent_tools(), confirm_pay], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="pay", store=store)
    config = {"configurable": {"thread_id": "pay-1"}}
    agent.invoke({"messages": [("user", "Pay 42 and look Tokyo up")]}, config)
    if resume:
        agent.invoke(Command(resume="yes"), config)
    agent.flush()
    agent.recorder.close()
    _approve_all(store)
    return _trajectories(store)


def _reject(store: Path, trajectory_id: str) -> None:
    opened = LocalExperienceStore(store)
    try:
        opened.reject([trajectory_id], by="alice", reason="wrong amount")
    finally:
        opened.close()


def _tokyo_rows(iwm: pl.DataFrame) -> list[tuple[str, int]]:
    return iwm.filter(pl.col("completion") == TOKYO).select("trajectory_id", "step_index").rows()


@pytest.mark.parametrize("chunk_mb", [None, 0.0005], ids=["one-pass", "a-trajectory-per-chunk"])
def test_a_paused_run_never_resumed_teaches_the_call_that_ran_beside_the_pause(tmp_path: Path, chunk_mb: float | None) -> None:
    """Was: the lookup's only copy was left out, counted as ``paused_turn_repeats_left_out`` (a repeat of nothing)."""
    store = tmp_path / "store"
    [paused] = _record_pay(store, resume=False)
    assert [s.observation is not None for s in paused.steps] == [True, False]

    iwm, info = _build(store, tmp_path / "out", **({"chunk_mb": chunk_mb} if chunk_mb else {}))

    assert _tokyo_rows(iwm) == [(paused.id, 0)]
    assert "paused_turn_repeats_left_out" not in info and "expert_steps_after_unanswered_call_left_out" not in info


def test_a_paused_run_whose_resumed_run_was_rejected_teaches_the_call_that_ran(tmp_path: Path) -> None:
    """The resumed run is in the store but not used (rejected): the paused run's copy is the one taught."""
    store = tmp_path / "store"
    paused, resumed = _record_pay(store, resume=True)
    _reject(store, resumed.id)

    iwm, info = _build(store, tmp_path / "out")

    assert _tokyo_rows(iwm) == [(paused.id, 0)]
    assert "paused_turn_repeats_left_out" not in info


@pytest.mark.parametrize("chunk_mb", [None, 0.0005], ids=["one-pass", "a-trajectory-per-chunk"])
def test_a_resumed_run_in_the_source_teaches_the_call_once_in_any_chunking(tmp_path: Path, chunk_mb: float | None) -> None:
    """The resumed run holds the call too: its copy is the one kept, also where the two runs are built in other chunks."""
    store = tmp_path / "store"
    _paused, resumed = _record_pay(store, resume=True)

    iwm, info = _build(store, tmp_path / "out", **({"chunk_mb": chunk_mb} if chunk_mb else {}))

    assert _tokyo_rows(iwm) == [(resumed.id, 0)]
    assert info["paused_turn_repeats_left_out"] == 1


def test_a_call_after_the_pause_is_never_taught_from_the_paused_run(tmp_path: Path) -> None:
    """``confirm_pay`` first: the lookup's state in the paused run shows the pay call without a result. Never resumed,
    it is left out and counted as what it is (after an unanswered call), not as a repeat."""
    store = tmp_path / "store"
    [paused] = _record_pay(store, resume=False, lookup_first=False)
    assert [s.observation is not None for s in paused.steps] == [False, True]

    iwm, info = _build(store, tmp_path / "out")

    assert _tokyo_rows(iwm) == []
    assert info["expert_steps_after_unanswered_call_left_out"] == 1 and "paused_turn_repeats_left_out" not in info


# --- the em dataset (ee experience dataset) ------------------------------------------------------------------------


def _seed_holding_out(trajectory_ids: list[str], wanted: str) -> int:
    """A seed for which ``split_store`` at share 0 holds out ``wanted`` among ``trajectory_ids`` (its fallback: the
    least hash)."""
    for seed in range(200):
        if min(trajectory_ids, key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode()).hexdigest()) == wanted:
            return seed
    raise AssertionError("no seed found")


def _em(store: Path, seed: int) -> pl.DataFrame:
    opened = LocalExperienceStore(store)
    try:
        return build_em(opened, held_out=0.0, seed=seed)
    finally:
        opened.close()


def _em_rows(em: pl.DataFrame) -> list[tuple[str, int, str]]:
    return [
        (row["trajectory_id"], row["step_index"], json.loads(json.loads(row["completion"])[0]["content"])["observation"])
        for row in em.iter_rows(named=True)
    ]


@pytest.mark.parametrize("lookup_first", [True, False], ids=["lookup-before-the-pause", "lookup-after-the-pause"])
def test_em_never_trains_a_paused_runs_copy_of_a_call_its_resumed_run_holds(tmp_path: Path, lookup_first: bool) -> None:
    """Was: ``build_em`` trained the paused run's lookup as well (after the pause, on a state showing the pay call with
    no result). The seed holds the resumed run out, as the split did before, so the old rule kept the paused copy."""
    store = tmp_path / "store"
    paused, resumed = _record_pay(store, resume=True, lookup_first=lookup_first)

    em = _em(store, _seed_holding_out([paused.id, resumed.id], resumed.id))

    assert [row for row in _em_rows(em) if row[0] == paused.id] == []
    assert {(row[0], row[2]) for row in _em_rows(em)} <= {(resumed.id, "tokyo: sunny"), (resumed.id, "paid 42")}


def test_em_trains_the_only_copy_of_a_call_a_run_never_resumed_ran(tmp_path: Path) -> None:
    from ee_middleware.replay.experience_eval import split_store

    store = tmp_path / "store"
    _record_pay(store, resume=False)
    paused, other = _record_pay(store, resume=False)  # two such runs: one is always held out (for ee experience eval)
    opened = LocalExperienceStore(store)
    try:
        seed = next(s for s in range(64) if split_store(opened, share=0.0, seed=s).held_out_ids == {other.id})
    finally:
        opened.close()

    assert _em_rows(_em(store, seed)) == [(paused.id, 0, "tokyo: sunny")]
