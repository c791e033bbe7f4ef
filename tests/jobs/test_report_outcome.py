"""The run report's outcome paragraph, from a real runs folder's manifests."""

from __future__ import annotations

from pathlib import Path

from ee_middleware.jobs.report import _learned_from, build_blocks, to_markdown
from ee_middleware.jobs.runs import RunsDir


def _report(tmp_path: Path, promote: dict[str, object]) -> str:
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "booking-bot"}}, "hash")
    run.write_stage("gate", {"stage": "gate", "status": "done", "outputs": {"passed": False, "reasons": ["too few tasks"]}})
    run.write_stage("promote", {"stage": "promote", "status": "done", "outputs": promote})
    run.update(status="succeeded", stage_order=["gate", "promote"])
    return to_markdown(build_blocks(run))


def test_not_promoted_names_the_live_adapter_as_code_and_the_base_model_as_words(tmp_path: Path) -> None:
    """With no adapter live, the report read 'the live model stays `the base model`': a phrase set as code, as if it
    were a name to copy."""
    assert "Not promoted; the live model stays the base model." in _report(tmp_path / "a", {"promoted": False, "live": None})
    live = _report(tmp_path / "b", {"promoted": False, "live": "booking-bot-v1-4e336746"})
    assert "Not promoted; the live model stays `booking-bot-v1-4e336746`." in live


def _ended(tmp_path: Path, status: str, error: str, stage: str, stage_status: str) -> str:
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "booking-bot"}}, "hash")
    run.write_stage("select", {"stage": "select", "status": "done", "seconds": 0.1, "outputs": {}})
    run.write_stage(stage, {"stage": stage, "status": stage_status, "seconds": 2.0, "error": error})
    run.update(status=status, error=error, stage_order=["select", stage])
    return to_markdown(build_blocks(run))


def test_the_outcome_says_how_and_where_a_run_ended_in_one_sentence(tmp_path: Path) -> None:
    """The outcome read 'The run is failed: KeyboardInterrupt: SIGTERM.' for a run a CronJob stopped, named no stage,
    and glued its own advice to errors that give it already: 'The run is stopped: max_minutes = 5 was spent ...; the
    next `ee improve` with the same config continues it.. `ee improve` with the same config continues it.'"""
    interrupted = _ended(tmp_path / "a", "failed", "KeyboardInterrupt: SIGTERM", "train", "stopped")
    assert "The run was interrupted by SIGTERM in its train stage; `ee improve` with the same config continues it." in interrupted
    assert "The run is failed" not in interrupted

    budget = "max_minutes = 5 was spent before stage train; the run stops here and the next `ee improve` with the same config continues it."
    stopped = _ended(tmp_path / "b", "stopped", budget, "replay", "stopped")
    assert f"The run stopped in its replay stage: {budget}" in stopped
    [said] = [line for line in stopped.splitlines() if line.startswith("The run ")]
    assert said.count("continues it") == 1 and ".." not in said

    error = "ModelServerError: No usable answer (0 trajectories replayed before this are saved; re-run the same command to continue.)"
    failed = _ended(tmp_path / "c", "failed", error, "replay", "failed")
    assert f"The run failed in its replay stage: {error} `ee improve` with the same config continues it." in failed
    assert ".)." not in failed


def test_what_was_learned_from_counts_the_trajectories_trained_on_not_only_the_new_ones(tmp_path: Path) -> None:
    """The section 'What was learned from' said only '0 trajectories approved since the watermark; recorded tool calls in
    them:' above three empty tables for a run (--force, or a new replay configuration) that trained on 30 of the app's
    approved trajectories: datasets are built from every approved trajectory, not only the new ones."""
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "inventory-bot"}}, "hash")
    run.write_stage("select", {"stage": "select", "status": "done", "outputs": {"new": 0, "by_app": {}, "by_tool": {}}})
    run.write_stage(
        "datasets",
        {"stage": "datasets", "status": "done", "outputs": {"trajectories": 38, "train_trajectories": 30, "heldout_trajectories": 8}},
    )
    run.update(status="succeeded", stage_order=["select", "datasets"])
    done = {m["stage"]: m["outputs"] for m in run.stages()}
    section = to_markdown(_learned_from(run, done))
    assert "built from 38 approved trajectories of inventory-bot (30 trained on, 8 held out for evaluation)" in section
    assert "None of them was approved since the last successful run" in section
    assert "| app | count |" not in section  # no empty tables
    new = RunsDir(tmp_path / "runs2").create("improve", {"improve": {"app": "inventory-bot"}}, "hash")
    new.write_stage(
        "select",
        {"stage": "select", "status": "done", "outputs": {"new": 2, "by_app": {"inventory-bot": 2}, "by_tool": {"order_item": 3}}},
    )
    new.update(status="succeeded", stage_order=["select"])
    section = to_markdown(build_blocks(new)).split("## What was learned from", 1)[1]  # no datasets yet (a stopped run)
    assert (
        "2 trajectories were approved since the last successful run; by app, approval source, and the tool calls recorded in them:"
        in section
    )
    assert "| order_item | 3 |" in section


def test_the_held_out_rule_and_the_evaluated_models_read_as_words_not_python_dicts(tmp_path: Path) -> None:
    """The report printed Python reprs: 'held out (rule: {'share': 0.3, 'seed': 0, 'ids': 0, 'app': None, 'started_after':
    None, 'started_before': None, 'unit': 'trajectory'})' and 'vs baseline `base` ({'baseline': 'local:/m', 'candidate':
    'local:/m@/a'})'. Now only the parts of the rule in force, and each model's spec as code."""
    from ee_middleware.jobs.report import _describe_models, _describe_rule

    rule = {"share": 0.3, "seed": 0, "ids": 0, "app": None, "started_after": None, "started_before": None, "unit": "trajectory"}
    assert _describe_rule(rule) == "a seeded share of 0.3 of the trajectories (seed 0)"
    both = {**rule, "share": 0.0, "ids": 12, "app": "shop-eval", "started_after": "2026-01-01T00:00:00+00:00"}
    assert _describe_rule(both) == "12 listed ids, the app shop-eval, started after 2026-01-01T00:00:00+00:00"
    assert _describe_rule(None) == "-"
    models = {"baseline": "local:/m", "candidate": "local:/m@/a"}
    assert _describe_models(models) == "baseline evaluated as `local:/m`, candidate as `local:/m@/a`"
