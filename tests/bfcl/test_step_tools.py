"""BFCL ``multi_turn_miss_func``: a function held out until a later turn is offered from that turn on. The expert
graph binds each turn's tools; capture records them per step (``Step.tools``). Before, the trajectory kept only the
run's union: IL rows offered the held-out function from the first turn, and replay proposed calls of it before it
existed, and the traces eval suite offered it at every user turn."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ee_middleware.bfcl.data import load_entries
from ee_middleware.bfcl.experts import record_experts
from ee_middleware.evals.traces.suite import trajectory_task
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

CATEGORY = "multi_turn_miss_func"


def test_a_function_added_at_a_later_turn_is_offered_from_that_turn_only(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    report = record_experts(store_path, CATEGORY, limit=3)
    assert not report.failed and len(report.recorded) == 3
    entries = {e.id: e for e in load_entries(CATEGORY, limit=3)}
    store = LocalExperienceStore(store_path)
    trajectories = list(store.iter_trajectories(status="approved"))
    early: dict[tuple[str, int], set[str]] = {}  # (trajectory, step) -> the held-out functions not yet offered there
    for trajectory in trajectories:
        entry = entries[trajectory.environment["entry_id"]]
        assert entry.missed_functions
        for step in trajectory.steps:
            turn = sum(1 for m in step.state if m.get("role") == "user") - 1  # the user turn the step decides in
            offered = [t["function"]["name"] for t in trajectory.step_tools(step)]
            assert offered == [t["function"]["name"] for t in entry.tools_at_turn(turn)]  # what the expert was offered
            later = {name for at, names in entry.missed_functions.items() if at > turn for name in names}
            assert not later & set(offered)
            if later:
                early[(trajectory.id, step.index)] = later
    assert early  # every entry holds out a function until a later turn
    for trajectory in trajectories:  # the traces eval suite offers each user turn its own tools, as recorded
        entry = entries[trajectory.environment["entry_id"]]
        task = trajectory_task(trajectory, "traces", "bfcl")
        expected = [[t["function"]["name"] for t in entry.tools_at_turn(k)] for k in range(len(entry.turns))]
        assert [[t["function"]["name"] for t in tools] for tools in task.tools] == expected
    store.approve([t.id for t in trajectories], by="test")
    store.close()

    build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet")
    checked = 0
    for trajectory_id, step_index, tools in rows.select("trajectory_id", "step_index", "tools").iter_rows():
        held = early.get((trajectory_id, step_index))
        if held:
            checked += 1
            assert not held & {t["function"]["name"] for t in json.loads(tools)}  # before: every row offered them
    assert checked

    config = ReplayConfig.load(store=store_path, k=4, sandbox="bfcl", policy_settings={"same_tool_share": 0.0})
    assert run_replay(config).done == 3
    store = LocalExperienceStore(store_path)
    rollouts = store.rollouts([t.id for t in trajectories])
    store.close()
    proposed_early = [
        (name, early[(tid, index)])
        for tid, index, name in rollouts.select("trajectory_id", "step_index", "tool_name").iter_rows()
        if (tid, index) in early
    ]
    assert proposed_early  # the mutation policy proposed other tools at those steps
    assert all(name not in held for name, held in proposed_early)
