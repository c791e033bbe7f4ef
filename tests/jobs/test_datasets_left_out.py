"""The rows a datasets build leaves out, per kind and reason with the fix, and the tools IL lost every example of, in
the datasets stage's outputs, the run report and the summary (rimprove finding 6: 12 of 166 expert steps, every
create_ticket call among them, were dropped for placeholders their prompt never showed, and the report said only
'il 146 rows')."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from rich.console import Console

from ee_middleware.cli.improve_cmds import print_summary
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.improve import JOB, STAGES
from ee_middleware.jobs.report import build_blocks, to_markdown
from ee_middleware.jobs.runs import RunsDir
from ee_middleware.jobs.stages import QuietProgress, StageContext, _tools_without_examples, datasets, left_out_rows
from tests.jobs.conftest import write_config

# what datasets.json recorded in the report's run (runs4): IL rows dropped for placeholders, 26 rollouts not restored
RECORDED = {
    "sandbox_failures_left_out": {"total": 0, "timeout": 0},
    "rollouts_left_out": {"synthetic": 0, "other_replays": 0, "synthetic_grounded_on_held_out": 0},
    "fidelity_mismatches_left_out": {"rollouts": 0},
    "redaction": {"unrestored_rollouts_left_out": 26},
    "datasets": {
        "il": {
            "rows": 146,
            "malformed_calls_left_out": 0,
            "placeholders": {"dropped_placeholder_not_in_prompt": 10, "rows_with_placeholders_seen_in_prompt": 4},
        },
        "iwm": {"rows": 6691, "errors_left_out": 0, "repeats_left_out": 0, "placeholders": {"rows_with_unseen_pseudonyms_rewritten": 121}},
    },
    "split": {"datasets": {"il": {"rows": 8, "placeholders": {"dropped_placeholder_not_in_prompt": 2}}}},
}


def test_left_out_rows_are_counted_per_kind_split_and_reason_with_the_fix() -> None:
    entries = {(e["kind"], e["split"], e["reason"]): e for e in left_out_rows(RECORDED)}
    assert set(entries) == {
        ("il", "train", "dropped_placeholder_not_in_prompt"),
        ("il", "held-out", "dropped_placeholder_not_in_prompt"),
        ("rollouts", "all", "unrestored"),
    }
    il = entries["il", "train", "dropped_placeholder_not_in_prompt"]
    assert il["count"] == 10 and "never show" in il["why"] and "redaction_kinds" in il["fix"]
    assert entries["il", "held-out", "dropped_placeholder_not_in_prompt"]["count"] == 2
    assert entries["rollouts", "all", "unrestored"]["count"] == 26 and "vault=True" in entries["rollouts", "all", "unrestored"]["fix"]


def test_the_stage_the_report_and_the_summary_say_what_was_left_out_and_which_tool_lost_every_example(
    workspace: Path, tiny_base: Path
) -> None:
    config = ImproveConfig.load(write_config(workspace, tiny_base))
    runs = RunsDir(config.runs)
    run = runs.create(JOB, config.describe(), config.config_hash())
    run.update(stage_order=list(STAGES))
    ctx = StageContext(config, run, runs, QuietProgress())
    result = datasets(ctx)  # a real build of the expert trajectories: nothing left out
    assert result.outputs["left_out"] == [] and result.outputs["tools_without_examples"] == []
    assert "left out" not in result.summary

    # the IL file as the privacy guard leaves it when every call of one tool wrote a placeholder its prompt never showed
    il = Path(result.outputs["files"]["il"]["path"])
    frame = pl.read_parquet(il)
    tool = frame.filter(pl.col("completion").str.contains('"tool_calls"'))["completion"].str.extract(r'"name":\s*"([^"]+)"').drop_nulls()[0]
    frame.filter(
        ~pl.col("completion").str.contains(f'"name":"{tool}"') & ~pl.col("completion").str.contains(f'"name": "{tool}"')
    ).write_parquet(il)
    built = json.loads(Path(result.outputs["datasets_json"]["path"]).read_text())
    summary = {**RECORDED, "split": {**RECORDED["split"], "train_trajectories": built["split"]["train_trajectories"]}}
    tools = _tools_without_examples(ctx, summary, result.outputs["files"])
    [lost] = tools["lost"]
    assert lost["tool"] == tool and lost["expert_calls"] > 0 and tools["by_tool"][tool]["taught"] == 0

    outputs = {
        **result.outputs,
        "left_out": left_out_rows(RECORDED),
        "il_by_tool": tools["by_tool"],
        "tools_without_examples": tools["lost"],
    }
    run.write_stage("datasets", {"stage": "datasets", "status": "done", "attempt": 1, "outputs": outputs, "summary": result.summary})
    run.update(status="failed", error="stopped for the test")
    report = to_markdown(build_blocks(runs.get(run.id)))
    assert "| il | train | 10 |" in report and "| il | held-out | 2 |" in report and "| rollouts | all | 26 |" in report
    assert "redaction_kinds" in report and "vault=True" in report
    assert f"WARNING: tool {tool}: all {lost['expert_calls']} expert call(s) in the training trajectories were left out of IL" in report

    console = Console(record=True, width=300)
    print_summary(console, runs.get(run.id))
    text = console.export_text()
    assert "left out of the datasets: il 10 dropped_placeholder_not_in_prompt, 2 held-out dropped_placeholder_not_in_prompt" in text
    assert f"WARNING: tool {tool}: all {lost['expert_calls']}" in text
