"""Rollout.synthetic_source (schema 1.2): the experience model's lineage in its own typed field and Parquet columns,
read back from stores written before it (lineage under ``proposer.settings["experience"]``), shown by ``ee replay show``."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import RecordError
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, SyntheticSource, ToolCall
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.store.tables import ROLLOUT_SCHEMA
from ee_middleware.testing.store_conformance import sample_trajectory

LINEAGE = {
    "model": "openai:http://127.0.0.1:1/v1#em",
    "retrieved": ["step:t:0", "rollout:r9"],
    "reasoning": "ls lists the folder",
    "reward": None,
}


def _rollout(rid: str, **fields: object) -> Rollout:
    data = {
        "id": rid, "replay_id": "dream", "trajectory_id": "traj-0a", "step_index": 0, "branch_index": int(rid[-1]),
        "action": Action(kind="tool_call", tool_call=ToolCall(id="c", name="lookup", arguments={"i": 9})),
        "proposer": ProposerInfo(policy="mutate"), "observation": Observation(content="predicted"), "sandbox": "experience",
        "duration_ms": 1.0, **fields,
    }  # fmt: skip
    return Rollout(**data)


def _store_with_rollouts(root: Path, rollouts: list[Rollout]) -> LocalExperienceStore:
    store = LocalExperienceStore(root)
    store.write([sample_trajectory("traj-0a")])
    store.write_replay(
        ReplayRecord(replay_id="dream", trajectory_id="traj-0a", status="done", policy="mutate", sandbox="experience", k=2, seed=0),
        rollouts,
    )
    return store


def test_synthetic_source_round_trips_through_the_spool_and_parquet_columns(tmp_path: Path) -> None:
    synthetic = _rollout("b0", synthetic=True, synthetic_source=SyntheticSource(**LINEAGE))
    real = _rollout("b1", sandbox="bfcl", observation=Observation(content="real"))
    store = _store_with_rollouts(tmp_path / "s", [synthetic, real])
    from_spool = {r.id: r for r in store.iter_rollouts()}
    assert from_spool["b0"].synthetic_source == SyntheticSource(**LINEAGE) and from_spool["b1"].synthetic_source is None
    store.close()
    store.compact()
    frame = pl.concat([pl.read_parquet(p) for p in (tmp_path / "s" / "rollouts").glob("*.parquet")])
    row = frame.filter(pl.col("id") == "b0").row(0, named=True)
    assert row["synthetic_model"] == LINEAGE["model"] and json.loads(row["synthetic_source_json"])["retrieved"] == LINEAGE["retrieved"]
    assert frame.filter(pl.col("id") == "b1")["synthetic_model"].to_list() == [None]
    reread = {r.id: r for r in LocalExperienceStore(tmp_path / "s").iter_rollouts()}
    assert reread["b0"].synthetic_source == SyntheticSource(**LINEAGE) and reread["b1"].synthetic_source is None


def test_a_store_written_before_the_column_reads_its_lineage_from_the_proposer_settings(tmp_path: Path) -> None:
    """A 1.1 part: no synthetic_* columns, the lineage under proposer.settings['experience'] (as the 1.1 runner wrote it)."""
    old = _rollout("b0", synthetic=True, proposer=ProposerInfo(policy="mutate", settings={"experience": LINEAGE, "refill_for": "x"}))
    assert old.synthetic_source == SyntheticSource(**LINEAGE) and old.proposer.settings == {"refill_for": "x"}, "lifted on validation"
    store = _store_with_rollouts(tmp_path / "s", [_rollout("b1", synthetic=False)])
    store.close()
    store.compact()
    part = next((tmp_path / "s" / "rollouts").glob("*.parquet"))
    frame = pl.read_parquet(part).drop("synthetic_model", "synthetic_source_json")
    old_row = {**frame.row(0, named=True), "id": "b0", "branch_index": 0, "synthetic": True}
    old_row["proposer_json"] = json.dumps({"policy": "mutate", "settings": {"experience": LINEAGE}})
    frame = pl.concat([frame, pl.DataFrame([old_row], schema={k: v for k, v in ROLLOUT_SCHEMA.items() if k in frame.columns})])
    frame.write_parquet(part)
    rollouts = {r.id: r for r in LocalExperienceStore(tmp_path / "s").iter_rollouts()}
    assert rollouts["b0"].synthetic_source == SyntheticSource(**LINEAGE) and rollouts["b0"].proposer.settings == {}
    assert rollouts["b1"].synthetic_source is None


def test_a_source_on_a_real_rollout_is_refused() -> None:
    with pytest.raises(ValueError, match="not synthetic"):
        _rollout("b0", synthetic_source=SyntheticSource(**LINEAGE))
    with pytest.raises(RecordError, match=r"synthetic_source\.model"):
        Rollout.parse({**_rollout("b0").model_dump(mode="json"), "synthetic": True, "synthetic_source": {"model": ""}})


def test_ee_replay_show_names_the_model_the_retrieved_transitions_and_the_reasoning(tmp_path: Path) -> None:
    store = _store_with_rollouts(tmp_path / "s", [_rollout("b0", synthetic=True, synthetic_source=SyntheticSource(**LINEAGE))])
    store.close()
    args = ["replay", "show", "traj-0a", "--store", str(tmp_path / "s")]
    shown = CliRunner().invoke(app, args, env={"COLUMNS": "240"})
    assert shown.exit_code == 0, shown.output
    assert "synthetic" in shown.stdout and LINEAGE["model"] in shown.stdout and "rollout:r9" in shown.stdout
    assert "reasoning: ls lists the folder" in shown.stdout
    as_json = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert as_json[0]["synthetic_source"] == LINEAGE
