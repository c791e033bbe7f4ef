"""The ``em`` dataset (:mod:`ee_middleware.trainers.datasets.em`) on the real BFCL expert store: which trajectories it
trains on, and what its prompts show of the state. (Its targets, teachers and training: tests/trainers/training/
test_experience_model.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from ee_middleware.records import Approval, Trajectory
from ee_middleware.replay.experience_eval import is_held_out
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.trainers.datasets.em import build_em

MARK = "PENDINGMARK"
COPY = "unreviewed-copy"
"""An id the split at 0.34, seed 0 does not hold out (checked below)."""


def _entry(store: LocalExperienceStore, entry_id: str) -> Trajectory:
    return next(t for t in store.iter_trajectories() if (t.environment or {}).get("entry_id") == entry_id)


def _unreviewed_copy(trajectory: Trajectory, new_id: str) -> Trajectory:
    """``trajectory`` under ``new_id``, pending review, every observation marked (as a curriculum rollout awaiting approval)."""
    steps = [
        s.model_copy(
            update={
                "trajectory_id": new_id,
                "observation": s.observation.model_copy(update={"content": f'{{"unreviewed": "{MARK}"}}'}) if s.observation else None,
            }
        )
        for s in trajectory.steps
    ]
    # a run of its own, in its own trace (two trajectories of one trace holding one decision teach it once)
    return trajectory.model_copy(update={"id": new_id, "steps": steps, "approval": Approval(status="pending"), "trace_id": "c0" * 16})


def test_em_trains_on_approved_trajectories_only(bfcl_store_path: Path) -> None:
    """ee experience dataset left out only rejected trajectories: one still pending approval (a curriculum rollout that
    `ee traces approve` had not passed yet) became em rows, and its answers were retrieved into other rows' prompts;
    IL, IWM and SR read approved trajectories only."""
    assert not is_held_out(COPY, 0.34, 0)
    store = LocalExperienceStore(bfcl_store_path)
    try:
        store.write([_unreviewed_copy(_entry(store, "multi_turn_base_0"), COPY)])
        before = build_em(store, held_out=0.34, seed=0)
        assert COPY not in set(before["trajectory_id"]), "a pending trajectory is not trained on"
        assert not before.filter(before["prompt"].str.contains(MARK)).height, "nor retrieved into a prompt"
        assert not before.filter(before["completion"].str.contains(MARK)).height

        store.approve([COPY], by="reviewer")
        after = build_em(store, held_out=0.34, seed=0)
        assert set(after["trajectory_id"]) == set(before["trajectory_id"]) | {COPY}, "once approved, it is"
        assert after.filter(after["trajectory_id"] != COPY)["prompt"].str.contains(MARK).any(), "and retrieved"
    finally:
        store.close()


def test_em_prompts_show_the_calls_made_before_with_their_results(bfcl_store_path: Path) -> None:
    """The em prompt's 'Interaction so far' held tool results with no call ('tool: None'): the model was trained to
    predict an observation from a state that never said what had been called."""
    store = LocalExperienceStore(bfcl_store_path)
    try:
        trajectory = _entry(store, "multi_turn_base_0")
        frame = build_em(store, held_out=0.0, seed=0, top_k=0)
    finally:
        store.close()
    rows = frame.filter(frame["trajectory_id"] == trajectory.id).sort("step_index")
    assert rows.height > 3, "entry 0 is trained on (not the one trajectory held out)"
    tool_steps = [s for s in trajectory.steps if s.action.tool_call is not None and s.observation is not None]
    for row in rows.iter_rows(named=True):
        question = json.loads(row["prompt"])[-1]["content"]
        earlier = [s for s in tool_steps if s.index < row["step_index"]][-1:]
        for s in earlier:
            call = s.action.tool_call
            assert call is not None and s.observation is not None
            shown_call = f"assistant calls {call.name} {json.dumps(call.arguments, ensure_ascii=False)}"
            shown_result = f"tool {call.name}: {' '.join(s.observation.content.split())[:199]}"
            assert shown_call in question and shown_result in question, f"{shown_call!r} / {shown_result!r} not in:\n{question}"
            assert question.index(shown_call) < question.index(shown_result)


def test_em_reports_its_progress_over_the_transitions_it_builds(bfcl_store_path: Path) -> None:
    """``ee experience dataset`` ran for minutes on a large store (a teacher model asked once per transition) with no
    sign of life: build_em told no one how far it was. Now ``on_progress(done, total)`` is called with 0 once the
    transitions are known, then after each row, ``done`` rising one at a time to ``total``, the rows built."""
    calls: list[tuple[int, int]] = []
    store = LocalExperienceStore(bfcl_store_path)
    try:
        frame = build_em(store, held_out=0.34, seed=0, on_progress=lambda done, total: calls.append((done, total)))
    finally:
        store.close()
    total = frame.height
    assert total > 3
    assert calls == [(done, total) for done in range(total + 1)], calls


def test_em_rows_say_how_much_of_their_target_observation_was_cut_when_recorded(bfcl_store_path: Path) -> None:
    """Was (sweep S2): observation_truncated_chars null on every em row, also where the store recorded the target
    observation cut (Observation.truncated_chars), so nothing told which targets are the start of a longer answer."""
    copy_id = "cut-copy"
    assert not is_held_out(copy_id, 0.34, 0)
    store = LocalExperienceStore(bfcl_store_path)
    try:
        source = _entry(store, "multi_turn_base_0")
        cut_at = next(s.index for s in source.steps if s.observation is not None and s.action.tool_call is not None)
        steps = [
            s.model_copy(
                update={
                    "trajectory_id": copy_id,
                    "observation": s.observation.model_copy(update={"truncated_chars": 1234})
                    if s.index == cut_at and s.observation
                    else s.observation,
                }
            )
            for s in source.steps
        ]
        approved = Approval(status="approved", by="r")
        store.write([source.model_copy(update={"id": copy_id, "steps": steps, "approval": approved, "trace_id": "c1" * 16})])
        em = build_em(store, held_out=0.34, seed=0)
    finally:
        store.close()
    cut = {row["step_index"]: row["observation_truncated_chars"] for row in em.filter(em["trajectory_id"] == copy_id).iter_rows(named=True)}
    assert cut[cut_at] == 1234 and all(n == 0 for index, n in cut.items() if index != cut_at), cut
