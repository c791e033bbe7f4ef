"""``ee improve --force`` on the same data trains the live adapter's weights again (the same data and seed, the real
trainer on a tiny random Llama): the second run ends ``unchanged`` after its register stage. It used to evaluate the
live adapter against the base model, pass the gate and say "promoted ...; the alias was the base model", with ``ee runs
list`` saying promoted yes (tests/jobs/test_improve_unchanged.py has the fast variants)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.registry import open_registry
from ee_middleware.cli.app import app
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.improve import run_improve
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.conftest import APP, write_config

pytestmark = pytest.mark.heavy  # two whole ee improve runs (tiny models): make test-heavy


def test_the_same_data_trained_again_leaves_the_live_adapter_unchanged(workspace: Path, tiny_base: Path) -> None:
    path = write_config(workspace, tiny_base)
    first = run_improve(ImproveConfig.load(path))
    live = first.data["outcome"]["candidate"]
    assert first.data["outcome"]["promoted"] is True and open_registry(workspace / "registry").resolve(APP) == live

    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress", "--force"], env={"COLUMNS": "400"})

    assert result.exit_code == 0, result.output
    second = RunsDir(workspace / "runs").list()[-1]
    assert second.id != first.id and second.status == "succeeded"
    register = second.outputs("register")
    assert register["candidate"] == live and register["unchanged"], register
    assert second.stage("evaluate") is None and second.stage("gate") is None and second.stage("promote") is None
    outcome = second.data["outcome"]
    assert outcome["promoted"] is False and outcome["unchanged"] == register["unchanged"] and outcome["live"] == live
    assert f"unchanged: {register['unchanged']}" in " ".join(result.output.split())
    assert "held-out evaluation" not in result.output  # no table of the live adapter "vs" the base model
    registry = open_registry(workspace / "registry")
    assert registry.resolve(APP) == live and not registry.get(live).evals[1:]  # no PASS recorded against the base model
    listed = CliRunner().invoke(app, ["runs", "list", "--config", str(path)], env={"COLUMNS": "200"})
    row = next(line for line in listed.output.splitlines() if line.strip().startswith(second.id))
    assert row.split()[1:5] == ["succeeded", "5/8", live, "-"] and row.split()[5] == "unchanged", listed.output
