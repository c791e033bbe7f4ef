"""Replay of stores made by ``ee traces ingest`` from other stacks' real traces (tests/ingest/fixtures), in a real
PythonSandbox of the fixtures' fruit shop."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app

FIXTURES = Path(__file__).parents[1] / "ingest" / "fixtures"
SHOP = "tests.replay.sandboxes_for_tests:fruit_shop"
runner = CliRunner()


def replayed(tmp_path: Path, fixture: str, exit_code: int = 0) -> dict:
    store = tmp_path / "experience"
    ingest = runner.invoke(app, ["traces", "ingest", str(FIXTURES / fixture), "--store", str(store), "--approve-by", "alice"])
    assert ingest.exit_code == 0, ingest.output
    result = runner.invoke(app, ["replay", "run", "--store", str(store), "--sandbox", SHOP, "--k", "4", "--json", "--no-progress"])
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


def test_trajectories_without_tool_schemas_are_skipped_with_the_reason_and_the_fix(tmp_path: Path) -> None:
    """Strands spans record no tool definitions. Before, replay said the 2 trajectories were done, with 4 states and 0
    branches, 0 rejected: nothing said why no alternative was tried."""
    summary = replayed(tmp_path, "strands_shop.jsonl", exit_code=1)  # (it skipped every one: nothing was replayed)
    assert summary["done"] == 0 and summary["branches"] == 0
    assert len(summary["skipped"]) == 2
    for reason in summary["skipped"].values():
        assert "records no tool schemas" in reason and "@record_experience" in reason


def test_trajectories_with_tool_schemas_branch_in_the_sandbox(tmp_path: Path) -> None:
    summary = replayed(tmp_path, "openinference_langgraph.jsonl")
    assert summary["done"] == 2 and not summary["skipped"] and summary["branches"] == 16
