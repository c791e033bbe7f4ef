"""A run whose training reproduces the live adapter's weights (``--force`` on the same data, or new trajectories that all
went to the held-out split: the same data and seed train the same weights) gets the live record back from the registry.
It used to evaluate the live adapter against the base model (the evaluate stage took the candidate being live for "no
adapter live"), pass the gate, and report "promoted ...; bfcl-agent was the base model" with ``ee runs list`` saying
promoted yes, although nothing changed. Now it ends after its register stage as ``unchanged``: nothing evaluated, gated
or promoted, said in the register stage's outputs, the run's outcome, the report, the summary and ``ee runs list``.

Weights the registry holds as ``failed`` (a promote refused them) stay consistent with those a person retired or rolled
back (tests/jobs/test_promote_rolled_back.py): gated against what is live, and not promoted, the run finishing and
saying why (the promote used to fail at every call: the registry never serves a failed adapter again)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.registry import open_registry
from ee_middleware.cli.app import app
from ee_middleware.jobs import improve
from ee_middleware.jobs.improve import _run_stage, run_improve
from ee_middleware.jobs.runs import Run, RunsDir
from tests.jobs.scripted_stages import APP, script_stages, scripted_config
from tests.jobs.test_promote_live_changed import _adapter, _context, _setup
from tests.jobs.test_promote_rolled_back import _register_now


def test_weights_trained_again_as_the_live_adapters_end_the_run_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = scripted_config(tmp_path)
    script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3))
    first = run_improve(config)
    live = open_registry(config.registry).resolve(APP)
    assert first.status == "succeeded" and first.data["outcome"]["promoted"] is True and live is not None

    second = run_improve(config, force=True)  # the same data and seed: the same weights

    assert second.id != first.id and second.status == "succeeded", second.data.get("error")
    register = second.outputs("register")
    assert register["candidate"] == live and register["status"] == "live"
    assert register["unchanged"].startswith(f"the trained weights are those of the live adapter {live}"), register
    for stage in ("evaluate", "gate", "promote"):  # nothing compared with the base model as "vs live", nothing promoted
        assert second.stage(stage) is None, stage
    outcome = second.data["outcome"]
    assert outcome["unchanged"] == register["unchanged"] and outcome["promoted"] is False and outcome["live"] == live
    assert outcome["candidate"] == live and outcome["gate_passed"] is None and outcome["baseline"] is None
    assert set(first.data["outcome"]) <= set(outcome)  # the keys --json readers know are all there
    registry = open_registry(config.registry)
    assert registry.resolve(APP) == live and [r.name for r in registry.list(app=APP)] == [live]
    assert [e["action"] for e in registry.history(adapter=live)].count("promote") == 1  # promoted once, by the first run

    report = (second.folder / "report.md").read_text()
    assert f"Unchanged: {register['unchanged']}." in report
    outcome_section = report.split("## Outcome")[1].split("## Stages")[0]
    assert "Candidate vs live" not in report and "Promoted" not in report and "base model" not in outcome_section

    cli = CliRunner()
    listed = cli.invoke(app, ["runs", "list", "--runs", str(config.runs)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if line.strip().startswith(second.id))
    assert row.split()[1:] == ["succeeded", "5/8", live, "-", "unchanged", "2"], row
    as_json = json.loads(cli.invoke(app, ["runs", "list", "--runs", str(config.runs), "--json"]).output)
    assert [r["outcome"]["promoted"] for r in as_json] == [True, False] and as_json[1]["outcome"]["unchanged"]
    shown = cli.invoke(app, ["runs", "show", "latest", "--runs", str(config.runs)], env={"COLUMNS": "400"})
    assert shown.exit_code == 0 and f"unchanged: {register['unchanged']}" in " ".join(shown.output.split()), shown.output


def test_a_run_continued_after_its_register_stage_found_the_live_weights_ends_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped between its register stage and its end, the run is continued to the same outcome (not evaluated)."""
    config = scripted_config(tmp_path)
    script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3))
    run_improve(config)
    script_stages(monkeypatch, tmp_path / "trained", interrupt="evaluate")
    monkeypatch.setattr("ee_middleware.jobs.improve._finish", _stop_once(monkeypatch))
    with pytest.raises(KeyboardInterrupt):
        run_improve(config, force=True)
    stopped = RunsDir(config.runs).list()[-1]
    assert stopped.status == "stopped" and stopped.outputs("register")["unchanged"]

    continued = run_improve(config)

    assert continued.id == stopped.id and continued.status == "succeeded" and continued.data["outcome"]["unchanged"]
    assert continued.stage("evaluate") is None and continued.stage("register")["attempt"] == 1


def _stop_once(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """A stand-in for ``improve._finish`` that is stopped by SIGTERM once (then puts the real one back)."""
    real = improve._finish

    def stop(run: Run, **kwargs: Any) -> None:
        monkeypatch.setattr(improve, "_finish", real)
        raise KeyboardInterrupt("SIGTERM")

    return stop


def test_other_weights_after_an_unchanged_run_are_evaluated_against_the_live_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = scripted_config(tmp_path)
    trained = script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3))
    run_improve(config)
    live = open_registry(config.registry).resolve(APP)
    run_improve(config, force=True)
    trained["adapter"] = _adapter(tmp_path / "other", seed=4)

    third = run_improve(config, force=True)

    assert "unchanged" not in third.outputs("register") and third.outputs("evaluate")["baseline"] == live
    assert third.data["outcome"]["promoted"] is True and third.outputs("promote")["replaced"] == live


def test_weights_the_registry_holds_as_failed_are_not_promoted_and_the_run_finishes_saying_why(tmp_path: Path) -> None:
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.mark_failed(names["cand"], "AdapterLoadError: the server could not load it", by="ee improve (run an-earlier-run)")
    _register_now(run)

    _run_stage(_context(config, run), "promote")

    assert run.stage("promote")["status"] == "done"  # declined, not failed at every call
    outputs = run.outputs("promote")
    assert outputs["promoted"] is False and outputs["live"] == names["v1"] and outputs["turned_down"]["action"] == "fail"
    (reason,) = outputs["reasons"]
    assert "marked failed at " in reason and "(AdapterLoadError: the server could not load it); the registry never" in reason, reason
    assert "train new weights" in reason, reason
    assert registry.resolve(APP) == names["v1"] and registry.get(names["cand"]).status == "failed"


def test_copying_the_trained_folder_gives_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry knows weights by their content, not their folder: another run's adapter folder with the same bytes."""
    config = scripted_config(tmp_path)
    trained = script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3))
    run_improve(config)
    trained["adapter"] = Path(shutil.copytree(tmp_path / "trained", tmp_path / "another-run-adapter"))

    again = run_improve(config, force=True)

    assert again.data["outcome"]["unchanged"] and again.stage("evaluate") is None
