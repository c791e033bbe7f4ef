"""Expert trajectories: a real LangGraph agent replays BFCL ground truth, recorded through @record_experience."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.bfcl.data import MULTI_TURN_CATEGORIES, load_entries
from ee_middleware.bfcl.experts import app_name, record_experts
from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.store import LocalExperienceStore
from tests.conftest import BFCL_ENTRIES


def test_expert_trajectories_follow_the_ground_truth_turn_by_turn(bfcl_expert_store_template: Path) -> None:
    store = LocalExperienceStore(bfcl_expert_store_template)
    trajectories = list(store.iter_trajectories(status="approved"))
    assert len(trajectories) == BFCL_ENTRIES
    entries = {e.id: e for e in load_entries("multi_turn_base", limit=BFCL_ENTRIES)}
    for trajectory in trajectories:
        entry = entries[trajectory.environment["entry_id"]]
        assert trajectory.app == app_name("multi_turn_base") and trajectory.status == "completed"
        assert trajectory.task == entry.turns[0][0]["content"]
        calls = [s for s in trajectory.steps if s.action.kind == "tool_call"]
        assert len(calls) == sum(len(turn) for turn in entry.ground_truth)
        assert sum(s.action.kind == "answer" for s in trajectory.steps) == len(entry.turns)
        user_turns = [m["content"] for m in trajectory.messages if m["role"] == "user"]
        assert user_turns == [turn[0]["content"] for turn in entry.turns]
        assert {t["function"]["name"] for t in trajectory.tools} >= {s.action.tool_call.name for s in calls}


def test_the_sandbox_reproduces_every_recorded_observation(bfcl_expert_store_template: Path) -> None:
    sandbox = BFCLSandbox()
    for trajectory in LocalExperienceStore(bfcl_expert_store_template).iter_trajectories():
        sandbox.reset(trajectory.environment)
        for step in trajectory.steps:
            if step.action.tool_call is not None:
                assert sandbox.execute(step.action.tool_call).content == step.observation.content


def test_recording_is_idempotent(bfcl_store_path: Path) -> None:
    report = record_experts(bfcl_store_path, "multi_turn_base", limit=BFCL_ENTRIES + 1)
    assert len(report.already) == BFCL_ENTRIES and len(report.recorded) == 1
    assert LocalExperienceStore(bfcl_store_path).trajectories().height == BFCL_ENTRIES + 1


@pytest.mark.parametrize("category", MULTI_TURN_CATEGORIES)
def test_every_multi_turn_category_records(tmp_path: Path, category: str) -> None:
    report = record_experts(tmp_path / "store", category, limit=2)
    assert not report.failed and len(report.recorded) == 2
    trajectories = list(LocalExperienceStore(tmp_path / "store").iter_trajectories(status="approved"))
    assert len(trajectories) == 2
    if category == "multi_turn_miss_func":
        entry = load_entries(category, limit=1)[0]
        trajectory = next(t for t in trajectories if t.environment["entry_id"] == entry.id)
        held_out = {name for names in entry.missed_functions.values() for name in names}
        assert held_out <= {t["function"]["name"] for t in trajectory.tools}
        assert any("updated some more functions" in m.get("content", "") for m in trajectory.messages if m["role"] == "user")
