"""Synthetic (experience-model) rollouts stay out of datasets unless --include-synthetic, which datasets.json records."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall
from ee_middleware.store.local import LocalExperienceStore


def _add_rollouts(store_path: Path) -> None:
    store = LocalExperienceStore(store_path)
    trajectory = next(iter(store.iter_trajectories(status="approved")))
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)
    rollouts = [
        Rollout(
            id=f"r-{synthetic}",
            replay_id="r",
            trajectory_id=trajectory.id,
            step_index=step.index,
            branch_index=int(synthetic),
            action=Action(kind="tool_call", tool_call=ToolCall(id="x", name="ls", arguments={"a": synthetic})),
            proposer=ProposerInfo(policy="test", settings={"experience": {"model": "m"}} if synthetic else {}),
            observation=Observation(content="guessed" if synthetic else "real"),
            synthetic=synthetic,
            sandbox="experience" if synthetic else "bfcl",
            duration_ms=1.0,
        )
        for synthetic in (False, True)
    ]
    store.write_replay(
        ReplayRecord(replay_id="r", trajectory_id=trajectory.id, status="done", policy="t", sandbox="bfcl", k=2, seed=0), rollouts
    )
    store.close()


def test_synthetic_rollouts_need_include_synthetic(bfcl_store_path: Path, tmp_path: Path) -> None:
    _add_rollouts(bfcl_store_path)
    counts = {}
    for flag in ([], ["--include-synthetic"]):
        out = tmp_path / ("with" if flag else "without")
        args = [
            "datasets",
            "build",
            "--store",
            str(bfcl_store_path),
            "--out",
            str(out),
            "--kinds",
            "iwm",
            "--replay-id",
            "r",
            *flag,
            "--json",
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "datasets.json").read_text())
        assert manifest["config"]["include_synthetic"] is bool(flag)
        counts[bool(flag)] = manifest["rollouts"]
    assert counts == {False: 1, True: 2}
