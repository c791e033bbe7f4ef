"""``ee experience eval``'s held-out split (and ``build_em``'s, which trains on the rest) draws a curriculum trajectory
with the trajectory its task is a variant of, as ``ee datasets build`` splits them. Was (a sweep): each id was drawn
alone, so a held-out trajectory was predicted with its own variant (the same call, the same real observation) as a
retrieved example, and em.parquet trained on variants of held-out trajectories: fidelity, which gates the experience
model, scored too well. A store without curriculum trajectories is split as before, id by id. Real local store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ee_middleware.records import Action, Observation, Step, ToolCall, Trajectory
from ee_middleware.replay.curriculum import CURRICULUM_SOURCE, PARENT_KEY
from ee_middleware.replay.experience_eval import is_held_out, split_store
from ee_middleware.store import LocalExperienceStore


def _trajectory(trajectory_id: str, order: str, *, parent: str | None = None, minute: int = 0) -> Trajectory:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minute)
    task = {"role": "user", "content": f"Where is order {order}?" + (" (a variant)" if parent else "")}
    call = ToolCall(id=f"call_{trajectory_id}", name="get_order", arguments={"order": order})
    after = [
        task,
        {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
        {"role": "tool", "tool_call_id": call.id, "content": f"{order}: shipped"},
    ]
    return Trajectory(
        id=trajectory_id,
        app="shop",
        task=task["content"],
        source=CURRICULUM_SOURCE if parent else "record_experience",
        environment={PARENT_KEY: {"trajectory_id": parent, "task_id": parent, "suite": "traces"}} if parent else None,
        messages=[*after, {"role": "assistant", "content": "Shipped."}],
        final_answer="Shipped.",
        started_at=start,
        ended_at=start + dt.timedelta(seconds=1),
        steps=[
            Step(trajectory_id=trajectory_id, index=0, decision_index=0, state=[task], action=Action(kind="tool_call", tool_call=call), observation=Observation(content=f"{order}: shipped")),
            Step(trajectory_id=trajectory_id, index=1, decision_index=1, state=after, action=Action(kind="answer", content="Shipped.")),
        ],
    )  # fmt: skip


def test_a_curriculum_variant_is_held_out_with_its_parent_and_never_retrieved_for_it(tmp_path: Path) -> None:
    parents = [_trajectory(f"order-{i:02d}", f"A-{1000 + i}", minute=i) for i in range(12)]
    variants = [
        _trajectory(f"curriculum-{p.id}-{v}", f"A-{1000 + i}", parent=p.id if v == 0 else f"curriculum-{p.id}-0", minute=20 + i)
        for i, p in enumerate(parents)
        for v in range(2)  # a variant, and a variant of that variant
    ]
    store = LocalExperienceStore(tmp_path / "store")
    store.write([*parents, *variants])
    store.approve([t.id for t in [*parents, *variants]], by="test")
    split = split_store(store, share=0.4, seed=3)
    store.close()

    held_parents = {p.id for p in parents if p.id in split.held_out_ids}
    assert held_parents == {p.id for p in parents if is_held_out(p.id, 0.4, 3)}, "a trajectory without a parent: drawn by its id, as before"
    assert 0 < len(held_parents) < len(parents)
    for parent in parents:
        family = {parent.id, f"curriculum-{parent.id}-0", f"curriculum-{parent.id}-1"}
        sides = {tid in split.held_out_ids for tid in family}
        assert len(sides) == 1, (family, split.held_out_ids)
    indexed = {t.trajectory_id for t in split.index.transitions}
    assert not indexed & split.held_out_ids, "nothing of a held-out family is retrieved"
    assert {t.id for t, _ in split.held_out} == split.held_out_ids
