"""``ee experience eval``'s split (and ``build_em``, whose retrieved examples come from it) indexes what IWM teaches and
the live replay buffer holds, also of a paused run none of whose expert steps is taught (its resumed run holds the
call that ran; the call under review has no result): its rollouts at states before the pause stay in use. Real
``create_agent`` runs paused by ``interrupt()``, replayed by ``ee replay run``'s own job, built by ``ee datasets
build``'s own code, in a real local store."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.experience_eval import split_store
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.retrieval import Transition, TransitionIndex
from ee_middleware.store import LocalExperienceStore
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.replay.test_paused_runs import POLICY, SANDBOX
from tests.trainers.datasets.test_paused_copies import _record_pay
from tests.trainers.datasets.test_paused_iwm import _build

pytestmark = pytest.mark.usefixtures("no_child_left")


def _keys(transitions: list[Transition]) -> set[tuple[str, int, str | None]]:
    return {(t.trajectory_id, t.step_index, t.replay_id) for t in transitions}


def test_the_eval_split_indexes_a_paused_runs_rollouts_before_its_pause_as_iwm_and_the_live_buffer(tmp_path: Path) -> None:
    """Was: the paused run had no taught expert step, so the split left it out whole, with its rollouts at steps 0 and
    1 (before and at its call awaiting review), which IWM teaches and ``TransitionIndex.refresh`` indexes."""
    store = tmp_path / "store"
    paused, resumed = _record_pay(store, resume=True)
    run_replay(ReplayConfig.load(store=store, k=1, sandbox=SANDBOX, policy=POLICY))
    iwm, _ = _build(store, tmp_path / "out")
    taught_by_iwm = {
        (t, i, None if p == "expert" else r) for t, i, r, p in iwm.select("trajectory_id", "step_index", "replay_id", "proposer").rows()
    }
    assert {(t, i) for t, i, r in taught_by_iwm if r is not None and t == paused.id} == {(paused.id, 0), (paused.id, 1)}

    opened = LocalExperienceStore(store)
    try:
        split = split_store(opened, share=0.0, seed=0)  # one trajectory has a step to predict: it is held out (one always is)
        live = TransitionIndex.of()
        live.refresh(opened)
    finally:
        opened.close()

    assert split.held_out_ids == {resumed.id}
    assert _keys(split.index.transitions) == {key for key in taught_by_iwm if key[0] != resumed.id}
    assert _keys([t for t in live.transitions if t.id not in live._out_of_use]) == taught_by_iwm
    assert resumed.id in {t for t, _, _ in taught_by_iwm}
