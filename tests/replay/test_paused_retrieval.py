"""The experience model's replay buffer (``TransitionIndex``) and ``ee experience eval``'s split use what IWM uses of a
run paused for a review: no rollout at a state after the call awaiting review (a world production never had), no copy
of a call the resumed run holds too. Real ``create_agent`` runs paused by ``HumanInTheLoopMiddleware`` or
``interrupt()``, replayed by ``ee replay run``'s own job, in a real local store."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.experience_eval import split_store
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.retrieval import Transition, TransitionIndex
from ee_middleware.store import LocalExperienceStore
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.replay.test_paused_runs import POLICY, SANDBOX, _trajectories, record_rejected_review
from tests.trainers.datasets.test_paused_copies import _record_pay, _reject
from tests.trainers.datasets.test_paused_iwm import _store_older_replay

pytestmark = pytest.mark.usefixtures("no_child_left")


def _refreshed(store: Path) -> TransitionIndex:
    opened = LocalExperienceStore(store)
    try:
        index = TransitionIndex.of()
        index.refresh(opened)
        return index
    finally:
        opened.close()


def _found(index: TransitionIndex, tool: str, arguments: dict[str, str]) -> list[Transition]:
    return index.search(tool, arguments, "", k=100)


def test_the_buffer_never_returns_a_rollout_at_a_state_after_a_call_awaiting_review(tmp_path: Path) -> None:
    """Was: the older replay's ``noted 2`` (it ran the note the reviewer rejected, then branched) came back as a real
    example, though ``ee datasets build`` leaves it out."""
    store = tmp_path / "store"
    record_rejected_review(store)
    paused, _ = _trajectories(store)
    run_replay(ReplayConfig.load(store=store, k=1, sandbox=SANDBOX, policy=POLICY))
    _store_older_replay(store, paused.id)

    found = _found(_refreshed(store), "note", {"text": "x"})

    assert ("older-replay", 0) in {(t.replay_id, t.step_index) for t in found if t.trajectory_id == paused.id}
    assert not [t for t in found if t.trajectory_id == paused.id and t.step_index == 1], found
    assert "noted 2" not in {t.observation for t in found}


def test_the_buffer_holds_a_call_that_ran_beside_a_pause_once(tmp_path: Path) -> None:
    """Was: the paused run's copy of the lookup was indexed beside the resumed run's."""
    store = tmp_path / "store"
    _paused, resumed = _record_pay(store, resume=True)

    found = _found(_refreshed(store), "lookup", {"city": "tokyo"})

    assert [(t.trajectory_id, t.observation) for t in found if t.tool == "lookup"] == [(resumed.id, "tokyo: sunny")]


def test_the_paused_copy_comes_back_once_the_resumed_run_is_rejected(tmp_path: Path) -> None:
    store = tmp_path / "store"
    paused, resumed = _record_pay(store, resume=True)
    index = _refreshed(store)
    _reject(store, resumed.id)

    opened = LocalExperienceStore(store)
    try:
        index.refresh(opened)
    finally:
        opened.close()

    assert [(t.trajectory_id, t.observation) for t in _found(index, "lookup", {"city": "tokyo"})] == [(paused.id, "tokyo: sunny")]


def test_the_eval_split_holds_out_no_copy_of_a_call_the_resumed_run_holds(tmp_path: Path) -> None:
    """Was: with the resumed run in the buffer, the paused run's copy of the same lookup was a held-out transition."""
    store = tmp_path / "store"
    _paused, resumed = _record_pay(store, resume=True)
    opened = LocalExperienceStore(store)
    try:
        split = split_store(opened, share=1.0, seed=0)
    finally:
        opened.close()

    held = [(transition.trajectory_id, transition.tool) for _, transition in split.held_out]
    assert sorted(held) == [(resumed.id, "confirm_pay"), (resumed.id, "lookup")]
