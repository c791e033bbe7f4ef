"""Rows built from experience-model (synthetic) rollouts are marked, counted, and never grounded on held-out trajectories.

``ee datasets build --include-synthetic`` wrote the rows of predicted observations with nothing to tell them from real
ones (no column, ``quality_flags`` null, the proposer of the alternative, the replay id shared with the replay's real
branches), and ``datasets.json`` did not count them: finding them meant joining every row to ``ee replay list``. And a
synthetic rollout whose experience model was shown real transitions of a trajectory the build then held out became a
training row: the held-out trajectory's observations could reach training through the prediction.

The store holds real BFCL expert trajectories; the experience model is a scripted stand-in behind a real local HTTP
server (it answers with the best retrieved example's observation), driven by ``ee replay run`` as a user runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store.local import LocalExperienceStore
from tests.replay import conftest as replay_fixtures
from tests.replay.test_experience import copy_first_example

serve = replay_fixtures.serve  # scripted experience models behind real local HTTP servers

ROLLOUT_KEY = ["replay_id", "trajectory_id", "step_index", "branch_index"]


def _dream(store: Path, tmp_path: Path, serve: Any, settings: str = "") -> None:
    """Replay every approved trajectory of ``store`` through the scripted experience model (K=2; ``settings``: the
    sandbox's, TOML lines)."""
    model = serve(copy_first_example)
    config = tmp_path / "dream.toml"
    config.write_text(f'[replay]\nstore = "{store}"\nsandbox = "experience:{model.spec}"\nk = 2\n\n[replay.sandbox_settings]\n{settings}\n')
    result = CliRunner().invoke(app, ["replay", "run", "--config", str(config), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["synthetic_branches"] > 0


def _build(store: Path, out: Path, *flags: str) -> dict[str, Any]:
    args = ["datasets", "build", "--store", str(store), "--out", str(out), "--kinds", "il,iwm,sr", "--no-progress", "--json", *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _rollouts(store_path: Path) -> list[Any]:
    store = LocalExperienceStore(store_path, create=False)
    try:
        return list(store.iter_rollouts())
    finally:
        store.close()


def test_rows_of_synthetic_rollouts_are_marked_and_counted_per_kind(bfcl_store_path: Path, tmp_path: Path, serve: Any) -> None:
    _dream(bfcl_store_path, tmp_path, serve)
    synthetic = {(r.replay_id, r.trajectory_id, r.step_index, r.branch_index) for r in _rollouts(bfcl_store_path) if r.synthetic}
    assert synthetic

    summary = _build(bfcl_store_path, tmp_path / "with", "--include-synthetic")
    il, iwm, sr = (pl.read_parquet(tmp_path / "with" / f"{kind}.parquet") for kind in ("il", "iwm", "sr"))
    for frame in (il, iwm, sr):
        assert frame.schema["synthetic"] == pl.Boolean and frame["synthetic"].null_count() == 0
    marked = {tuple(row) for row in iwm.filter(pl.col("synthetic")).select(ROLLOUT_KEY).iter_rows()}
    rollout_rows = iwm.filter(pl.col("replay_id").is_not_null())
    assert marked == {tuple(row) for row in rollout_rows.select(ROLLOUT_KEY).iter_rows()}, "every rollout row, and no other"
    assert marked and marked <= synthetic
    assert not iwm.filter(pl.col("replay_id").is_null())["synthetic"].any(), "expert steps' rows are real"
    assert not il["synthetic"].any()
    # the store's only rollouts are predicted: every SR rationale was written from synthetic alternatives
    assert sr.height > 0 and sr["synthetic"].all()
    counts = {kind: info["synthetic_rows"] for kind, info in summary["datasets"].items()}
    assert counts == {"il": 0, "iwm": len(marked), "sr": sr.height}
    assert json.loads((tmp_path / "with" / "datasets.json").read_text())["datasets"]["iwm"]["synthetic_rows"] == len(marked)

    # ee datasets show counts them per file; ee datasets export and ee train's reader take the column in their stride
    shown = CliRunner().invoke(app, ["datasets", "show", str(tmp_path / "with"), "--json", "--no-progress", "-n", "0"])
    assert shown.exit_code == 0, shown.output
    described = json.loads(shown.stdout)
    assert {name: d["counts"]["synthetic"] for name, d in described.items()} == counts
    for fmt, target in (("jsonl", tmp_path / "iwm.jsonl"), ("hf", tmp_path / "iwm-hf")):
        exported = CliRunner().invoke(
            app, ["datasets", "export", str(tmp_path / "with" / "iwm.parquet"), "--out", str(target), "--format", fmt]
        )
        assert exported.exit_code == 0, exported.output
    assert len((tmp_path / "iwm.jsonl").read_text().splitlines()) == iwm.height
    from ee_middleware.trainers.training.data import load_dataset

    assert len(load_dataset(tmp_path / "with", "iwm").rows) == iwm.height

    # without --include-synthetic: the column is there, false on every row, and the counts are zero
    summary = _build(bfcl_store_path, tmp_path / "without")
    assert {kind: info["synthetic_rows"] for kind, info in summary["datasets"].items()} == {"il": 0, "iwm": 0, "sr": 0}
    assert not pl.read_parquet(tmp_path / "without" / "iwm.parquet")["synthetic"].any()


def _grounding(rollouts: list[Any]) -> dict[str, set[str]]:
    """Each synthetic rollout's id -> the trajectories of the real transitions its experience model was shown."""
    owner = {r.id: r.trajectory_id for r in rollouts}
    grounding = {}
    for r in rollouts:
        if r.synthetic:
            trajectories = set()
            for shown in r.synthetic_source.retrieved:
                kind, _, rest = shown.partition(":")
                trajectories.add(rest.rsplit(":", 1)[0] if kind == "step" else owner[rest])
            grounding[r.id] = trajectories
    return grounding


def test_synthetic_rollouts_grounded_on_held_out_trajectories_are_left_out_of_training(
    replayed_store: Path, tmp_path: Path, serve: Any
) -> None:
    # beside real rollouts, which the experience model retrieves too; one example a prediction, so that some predictions
    # of training trajectories were shown a held-out one and others were not
    _dream(replayed_store, tmp_path, serve, "top_k = 1")
    rollouts = _rollouts(replayed_store)
    grounding = _grounding(rollouts)
    assert any(shown.startswith("rollout:") for r in rollouts if r.synthetic for shown in r.synthetic_source.retrieved)

    listed = tmp_path / "heldout.txt"
    listed.write_text("bfcl-multi_turn_base_5\n")
    summary = _build(replayed_store, tmp_path / "out", "--include-synthetic", "--heldout-ids", str(listed))
    held = set(summary["split"]["heldout_trajectories"])
    train = set(summary["split"]["train_trajectories"])
    grounded = {r.id for r in rollouts if r.synthetic and r.trajectory_id in train and grounding[r.id] & held}
    kept = {r.id for r in rollouts if r.synthetic and r.trajectory_id in train} - grounded
    assert grounded and kept, "the store has synthetic training rollouts on both sides of the rule"
    assert summary["rollouts_left_out"]["synthetic_grounded_on_held_out"] == len(grounded)

    by_key = {(r.replay_id, r.trajectory_id, r.step_index, r.branch_index): r.id for r in rollouts}
    iwm = pl.read_parquet(tmp_path / "out" / "iwm.parquet").filter(pl.col("replay_id").is_not_null())
    used = {by_key[tuple(row)] for row in iwm.select(ROLLOUT_KEY).iter_rows()}
    assert not used & grounded, "no training row comes from a prediction shown a held-out trajectory"
    used_synthetic = used & set(grounding)
    assert used_synthetic and used_synthetic <= kept, "the other synthetic rollouts are used"
    assert int(iwm["synthetic"].sum()) == len(used_synthetic) == summary["datasets"]["iwm"]["synthetic_rows"]

    # the held-out side keeps its own synthetic rollouts; a build without a held-out rule leaves none out
    assert pl.read_parquet(tmp_path / "out" / "heldout" / "iwm.parquet")["synthetic"].any()
    whole = _build(replayed_store, tmp_path / "whole", "--include-synthetic")
    assert whole["rollouts_left_out"]["synthetic_grounded_on_held_out"] == 0
    assert whole["rollouts"] == summary["rollouts"] + len(grounded), "left out of what the build counts as used"

    # the table says what was left out and why
    args = ["datasets", "build", "--store", str(replayed_store), "--out", str(tmp_path / "table"), "--kinds", "iwm"]
    table = CliRunner().invoke(app, [*args, "--include-synthetic", "--heldout-ids", str(listed), "--no-progress"], env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    text = " ".join(table.output.split())
    assert f"left out {len(grounded)} synthetic rollout(s) of training trajectories" in text, text


def test_a_real_rollout_is_kept_over_an_identical_synthetic_one() -> None:
    """Two replays of one state made the same call with the same observation, one in a sandbox and one predicted by an
    experience model: the real one stays and the synthetic one is the repeat left out, whatever their branch indices and
    replay ids (review r6: the synthetic copy with branch 0 was kept, the row marked synthetic and counted so)."""
    from ee_middleware.trainers.datasets.iwm import repeated_rollouts

    def rollout(rollout_id: str, replay_id: str, branch: int, synthetic: bool) -> dict[str, object]:
        return {
            "id": rollout_id,
            "trajectory_id": "t",
            "step_index": 5,
            "branch_index": branch,
            "replay_id": replay_id,
            "tool_name": "ls",
            "arguments_json": '{"a": 1}',
            "observation": "x.txt",
            "is_error": False,
            "synthetic": synthetic,
        }

    for real_branch, synthetic_branch in ((2, 0), (0, 2)):
        for real_replay, synthetic_replay in (("b-real", "a-predicted"), ("a-real", "b-predicted")):
            frame = pl.DataFrame(
                [rollout("predicted", synthetic_replay, synthetic_branch, True), rollout("real", real_replay, real_branch, False)]
            )
            assert repeated_rollouts(frame)["id"].to_list() == ["predicted"], (real_branch, real_replay)
