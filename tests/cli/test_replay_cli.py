"""``ee bfcl record-experts`` and ``ee replay run|list|show``: --json contracts, tables, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()

ROLLOUT_FIELDS = {
    "schema_version", "id", "replay_id", "trajectory_id", "step_index", "branch_index", "action", "proposer",
    "observation", "is_error", "synthetic", "sandbox", "duration_ms", "created_at",
}  # fmt: skip


def ee(*args: str) -> object:
    return runner.invoke(app, list(args))


def test_record_experts_then_replay_then_inspect(tmp_path: Path) -> None:
    store = str(tmp_path / "experience")
    result = ee("bfcl", "record-experts", "--store", store, "--category", "multi_turn_base", "--limit", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["category"] == "multi_turn_base" and len(report["recorded"]) == 3 and report["failed"] == {}

    result = ee("replay", "run", "--store", store, "--sandbox", "bfcl", "--policy", "mutate", "--k", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 3 and summary["branches"] == 2 * summary["states"] and summary["fidelity_mismatches"] == 0

    result = ee("replay", "run", "--store", store, "--k", "2")
    assert result.exit_code == 0, result.output
    assert "already replayed earlier" in result.stdout and "branches stored" in result.stdout

    result = ee("replay", "list", "--store", store, "--json")
    assert result.exit_code == 0, result.output
    rollouts = json.loads(result.stdout)
    assert isinstance(rollouts, list) and len(rollouts) == summary["branches"]
    assert set(rollouts[0]) == ROLLOUT_FIELDS
    assert rollouts[0]["synthetic"] is False and rollouts[0]["sandbox"] == "bfcl" and rollouts[0]["proposer"]["policy"] == "mutate"

    trajectory_id = rollouts[0]["trajectory_id"]
    result = ee("replay", "show", trajectory_id[:10], "--store", store, "--json")
    shown = json.loads(result.stdout)
    assert result.exit_code == 0 and shown and {r["trajectory_id"] for r in shown} == {trajectory_id}

    result = ee("replay", "show", rollouts[0]["id"], "--store", store, "--json")
    assert result.exit_code == 0 and [r["id"] for r in json.loads(result.stdout)] == [rollouts[0]["id"]]

    result = ee("replay", "show", trajectory_id, "--store", store)
    assert result.exit_code == 0 and "expert" in result.stdout and "step 0" in result.stdout

    result = ee("replay", "list", "--store", store, "--limit", "3")
    assert result.exit_code == 0 and "3 rollouts" in result.stdout


def test_errors_are_one_red_line_and_exit_1(tmp_path: Path) -> None:
    missing = ee("replay", "run", "--store", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and "No experience store" in missing.output
    ee("bfcl", "record-experts", "--store", str(tmp_path / "s"), "--limit", "1", "--no-progress")
    bad_sandbox = ee("replay", "run", "--store", str(tmp_path / "s"), "--sandbox", "nope")
    assert bad_sandbox.exit_code == 1 and "Unknown sandbox 'nope'" in bad_sandbox.output
    bad_policy = ee("replay", "run", "--store", str(tmp_path / "s"), "--policy", "telepathy")
    assert bad_policy.exit_code == 1 and "telepathy" in bad_policy.output
    down = ee("replay", "run", "--store", str(tmp_path / "s"), "--policy", "openai:http://127.0.0.1:9/v1#m")
    assert down.exit_code == 1 and "127.0.0.1:9" in down.output
    unknown = ee("replay", "show", "zzz", "--store", str(tmp_path / "s"))
    assert unknown.exit_code == 1 and "No trajectory or rollout 'zzz'" in unknown.output
    bad_category = ee("bfcl", "record-experts", "--store", str(tmp_path / "s"), "--category", "simple")
    assert bad_category.exit_code == 1 and "multi_turn_base" in bad_category.output
