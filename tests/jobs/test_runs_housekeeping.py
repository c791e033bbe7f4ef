"""What a runs folder leaves behind: the candidate of a run `--new-run` abandons, and old runs (`ee runs prune`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.config import Budgets, ImproveConfig
from ee_middleware.jobs.errors import JobError
from ee_middleware.jobs.improve import run_improve
from ee_middleware.jobs.runs import PRUNING_DIR, RunsDir
from tests.jobs.conftest import APP, write_config

pytestmark = pytest.mark.heavy  # several whole ee improve runs per test: make test-heavy


def _registry(folder: Path):
    from ee_middleware.adapters.registry import open_registry

    return open_registry(folder / "registry", create=False)


def test_new_run_retires_and_unloads_the_candidate_of_the_run_it_abandons_standin_server(workspace: Path, tiny_base: Path) -> None:
    """A run stopped after its candidate was registered and loaded on the [improve.serving] replica (here: the replica
    stopped answering chat requests mid-evaluation; a SIGKILL after the evaluate stage leaves the same) was marked
    abandoned by `--new-run`, but its adapter stayed 'candidate' in the registry, with no eval or gate, and loaded on
    the replica, for good: every such night added one more (a LoRA slot and memory on vLLM). Now it is retired with
    'run ID abandoned (--new-run)' and unloaded, as the promote stage retires a candidate that failed its gate."""
    from ee_middleware.testing.http import serving
    from tests.adapters.helpers import StandInVLLM

    server = StandInVLLM()
    server.fail["/v1/chat/completions"] = 503
    with serving(server) as url:
        improve = f'[improve.serving]\nbackend = "vllm"\nservers = ["{url}"]\nmax_lora_rank = 8\n'
        config = ImproveConfig.load(write_config(workspace, tiny_base, improve=improve))
        with pytest.raises(JobError, match="gave no answer"):
            run_improve(config)
        [old] = RunsDir(workspace / "runs").list()
        candidate = old.stage("register")["outputs"]["candidate"]
        assert _registry(workspace).get(candidate).status == "candidate" and candidate in server.loaded

        del server.fail["/v1/chat/completions"]
        # the new run stops before its first stage (a night's budget spent): what is checked is what --new-run did
        short_night = config.model_copy(update={"budgets": Budgets(max_minutes=0.000001)})
        new = run_improve(short_night, new_run=True)

    assert new.id != old.id and new.status == "stopped"
    old = RunsDir(workspace / "runs").get(old.id)
    assert old.status == "abandoned"
    record = _registry(workspace).get(candidate)
    assert record.status == "retired" and record.reason == f"run {old.id} abandoned (--new-run)", record
    assert candidate not in server.loaded, "unloaded from the replica"
    assert old.data["outcome"]["abandoned_candidate"] == {
        "candidates": [candidate],
        "reason": f"run {old.id} abandoned (--new-run)",
        "unload_problems": [],
    }
    assert _registry(workspace).resolve(APP) is None, "nothing was promoted meanwhile"


def test_new_run_leaves_the_registry_alone_when_the_abandoned_run_registered_nothing(workspace: Path, tiny_base: Path) -> None:
    path = write_config(workspace, tiny_base, improve="[improve.budgets]\nmax_minutes = 0.000001\n")
    stopped = run_improve(ImproveConfig.load(path))
    run_improve(ImproveConfig.load(path, schedule="iwm"), new_run=True)
    old = RunsDir(workspace / "runs").get(stopped.id)
    assert old.status == "abandoned" and "abandoned_candidate" not in old.data["outcome"]
    assert not (workspace / "registry").exists(), "no registry was made for it"


def _prune(runs: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["runs", "prune", "--runs", str(runs), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_runs_prune_removes_old_runs_and_keeps_the_watermark_the_live_adapters_run_and_unfinished_runs(
    workspace: Path, tiny_base: Path
) -> None:
    """Each night left a folder with its datasets (rebuilt from every approved trajectory, so growing with the store),
    a copy of its adapter and its evaluations, and nothing ever removed one: the runs folder grew until the shared disk
    filled. `ee runs prune --keep N` removes the old ones, never the live adapter's run, the watermark (the newest
    succeeded run, where the next run starts) or a run the next call continues."""
    path = write_config(workspace, tiny_base)
    live = run_improve(ImproveConfig.load(path))  # promoted: its adapter is live
    assert live.data["outcome"]["promoted"] is True
    nothing = run_improve(ImproveConfig.load(path))
    assert nothing.status == "nothing-new"
    # a forced night whose candidate fails its gate: succeeded, so it holds the watermark now
    path = write_config(workspace, tiny_base, gate="min_tasks = 1\nmin_improvement = 0.5", train="learning_rate = 1e-30")
    watermark = run_improve(ImproveConfig.load(path), force=True)
    assert watermark.status == "succeeded" and watermark.data["outcome"]["promoted"] is False
    path = write_config(workspace, tiny_base, improve="[improve.budgets]\nmax_minutes = 0.000001\n")
    unfinished = run_improve(ImproveConfig.load(path), force=True)
    assert unfinished.status == "stopped"
    runs = workspace / "runs"
    (runs / "base-models").mkdir(exist_ok=True)  # not a run: never touched
    before = {p.name for p in runs.iterdir()}

    planned = _prune(runs, "--keep", "0", "--dry-run")
    assert [e["id"] for e in planned["removed"]] == [nothing.id] and planned["dry_run"] is True
    assert {p.name for p in runs.iterdir()} == before, "a dry run removes nothing"
    why = {e["id"]: e["why"] for e in planned["kept"]}
    assert "is live" in why[live.id] and live.data["outcome"]["candidate"] in why[live.id]
    assert "watermark" in why[watermark.id] and "unfinished (stopped)" in why[unfinished.id]

    done = _prune(runs, "--keep", "0")
    assert [e["id"] for e in done["removed"]] == [nothing.id] and done["bytes_freed"] == planned["bytes_freed"] > 0
    assert {p.name for p in runs.iterdir()} == before - {nothing.id}
    assert [r.id for r in RunsDir(runs).list()] == [live.id, watermark.id, unfinished.id]
    # the next night continues the unfinished run from the watermark the kept runs hold ([train] may still change:
    # other weights than both earlier candidates)
    resumed = run_improve(ImproveConfig.load(write_config(workspace, tiny_base, train="learning_rate = 7e-4")))
    assert resumed.id == unfinished.id and resumed.status == "succeeded", resumed.data.get("error")
    assert resumed.stage("select")["inputs"]["watermark_from_run"] == watermark.id

    # the watermark moved on: the forced night goes; the first run stays, its adapter live or (if the resumed run's was
    # promoted) the one a rollback returns to
    text = CliRunner().invoke(app, ["runs", "prune", "--runs", str(runs), "--keep", "1"], env={"COLUMNS": "100"})
    assert text.exit_code == 0, text.output
    assert [r.id for r in RunsDir(runs).list()] == [live.id, resumed.id]
    assert f"{watermark.id}" in text.stdout and "1 run(s) removed" in text.stdout and "2 kept" in text.stdout, text.stdout


def test_runs_prune_is_refused_while_a_run_holds_the_folder_and_finishes_a_prune_cut_short(tmp_path: Path) -> None:
    runs = RunsDir(tmp_path / "runs")
    old = runs.create("improve", {"improve": {"app": "notes-bot", "store": "/data/experience"}}, "hash")
    old.update(status="nothing-new")
    runs.create("improve", {"improve": {"app": "notes-bot", "store": "/data/experience"}}, "hash").update(status="nothing-new")
    with runs.lock():  # a run is going
        refused = CliRunner().invoke(app, ["runs", "prune", "--runs", str(runs.root), "--keep", "0"])
    assert refused.exit_code == 1 and "cannot prune its runs while a run is going" in refused.stderr, refused.output
    assert len(runs.list()) == 2
    leftover = runs.root / PRUNING_DIR / "20260101-000000-0000"  # what a prune killed mid-delete leaves
    leftover.mkdir(parents=True)
    (leftover / "run.json").write_text("{}")
    assert [e["id"] for e in _prune(runs.root, "--keep", "1")["removed"]] == [old.id]
    assert not (runs.root / PRUNING_DIR).exists() and len(runs.list()) == 1
    missing = CliRunner().invoke(app, ["runs", "prune", "--runs", str(runs.root)])
    assert missing.exit_code == 2 and "--keep" in missing.output, "no default that would remove runs"


def test_keep_runs_prunes_old_runs_after_each_night_and_never_the_one_just_done(workspace: Path, tiny_base: Path) -> None:
    """`[improve] keep_runs = N` (or `ee improve --keep-runs N`) prunes after each run as `ee runs prune --keep N`: a
    nightly job no longer needs a second command for its runs folder not to fill the disk. The run just done is the
    newest and stays; the live adapter's run (the watermark) stays whatever N says."""
    path = write_config(workspace, tiny_base, improve="keep_runs = 1\n")
    live = run_improve(ImproveConfig.load(path))
    assert live.data["outcome"]["promoted"] is True
    second = run_improve(ImproveConfig.load(path))
    assert second.status == "nothing-new"
    assert [r.id for r in RunsDir(workspace / "runs").list()] == [live.id, second.id], "both needed or newest: nothing removed"
    third = CliRunner().invoke(app, ["improve", "--config", str(path), "--keep-runs", "1", "--json"])
    assert third.exit_code == 0, third.output
    done = json.loads(third.stdout)
    assert done["pruned"]["removed"] == [second.id] and done["pruned"]["bytes_freed"] > 0, done.get("pruned")
    assert [r.id for r in RunsDir(workspace / "runs").list()] == [live.id, done["id"]]
    assert RunsDir(workspace / "runs").get(done["id"]).data["pruned"] == done["pruned"]


def test_keep_runs_below_one_is_refused(workspace: Path, tiny_base: Path) -> None:
    path = write_config(workspace, tiny_base, improve="keep_runs = 0\n")
    with pytest.raises(Exception, match="keep_runs"):
        ImproveConfig.load(path)
