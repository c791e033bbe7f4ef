"""``ee improve`` end to end on real parts: BFCL expert trajectories recorded by a real LangGraph agent,
real replay in the BFCL sandbox, real Parquet datasets, a real peft LoRA on a tiny random Llama (TEST
model), real evaluation on the held-out ``traces:`` suite and likelihood, the real gate and registry.
Evaluated in-process here (no server); examples/end_to_end.py --quick (tests/examples) goes through a
real local server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.errors import RunConfigChangedError, RunLockedError
from ee_middleware.jobs.improve import STAGES, run_improve
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.conftest import APP, stage_times, write_config

pytestmark = pytest.mark.heavy  # whole ee improve runs (every stage, tiny models, a real local server): make test-heavy


def _registry(workspace: Path):
    from ee_middleware.adapters.registry import open_registry

    return open_registry(workspace / "registry")


def test_every_stage_runs_and_leaves_manifests_a_report_and_a_promoted_adapter(workspace: Path, tiny_base: Path) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    path = write_config(workspace, tiny_base, schedule="iwm", k=2, tasks=2)
    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "held-out evaluation" in result.output and "Report:" in result.output
    [run] = RunsDir(workspace / "runs").list()

    assert run.status == "succeeded", run.data.get("error")
    manifests = {m["stage"]: m for m in run.stages()}
    assert list(manifests) == list(STAGES)
    for name, manifest in manifests.items():
        assert manifest["status"] == "done", name
        assert manifest["seconds"] >= 0 and manifest["peak_rss_mb"]["self"] > 0
        assert manifest["outputs"], name
    select, data = manifests["select"]["outputs"], manifests["datasets"]["outputs"]
    assert select["new"] == 8 and select["to_replay"] == 8 and select["by_app"] == {APP: 8}
    assert select["by_approval_source"] == {"auto:approve_if": 8} and sum(select["by_tool"].values()) > 8
    assert manifests["replay"]["outputs"]["branches"] == 2 * manifests["replay"]["outputs"]["states"] > 0
    # the replay's spool segments were folded into Parquet, so later reads (and the next night's) do not re-parse them
    assert manifests["replay"]["outputs"]["compacted_segments"] >= 1
    assert data["heldout_trajectories"] >= 1 and data["train_trajectories"] >= 1 and set(data["rows"]) == {"il", "iwm"}
    assert data["files"]["il"]["sha256"] == manifests["train"]["inputs"]["datasets"]["il"]
    train = manifests["train"]["outputs"]
    assert train["steps"] == 4 and [s["name"] for s in train["stages"]] == ["iwm", "il"] and Path(train["loss_png"]).is_file()

    # candidate vs the base (nothing was live), on the held-out traces suite and the likelihood
    evaluation = manifests["evaluate"]["outputs"]
    assert evaluation["baseline"] == "base"
    assert [s["tasks"] for s in evaluation["runs"]["candidate"]["suites"]] == [2]
    assert evaluation["likelihood"]["states"] == 4 and {m["model"] for m in evaluation["likelihood"]["models"]} == {"base", "candidate"}
    gate = manifests["gate"]["outputs"]
    assert gate["passed"] and any("NLL" in line for line in gate["moved"]) and any("task success" in line for line in gate["moved"])

    candidate = manifests["register"]["outputs"]["candidate"]
    registry = _registry(workspace)
    assert registry.resolve(APP) == candidate
    assert registry.get(candidate).evals[0]["run"] == run.id
    assert run.data["outcome"]["promoted"] is True and run.data["watermark"]["after"]

    report = (run.folder / "report.md").read_text()
    held_out = data["heldout_ids_sample"][0]
    for text in (
        "How big this run was",
        "Lineage",
        f"ee traces show {held_out}",
        f"ee adapters show {candidate}",
        "NLL",
        "adapter/loss.png",
        "held out (rule: 3 listed ids)",  # the rule in words (was a Python dict: {'share': 0.0, ..., 'ids': 3, ...})
        "baseline evaluated as `local:",
    ):
        assert text in report
    assert "{'" not in report, "a Python dict printed into the report"
    assert "<table>" in (run.folder / "report.html").read_text() and (run.folder / "eval.png").is_file()

    # ee runs list / show
    cli = CliRunner()
    listed = json.loads(cli.invoke(app, ["runs", "list", "--config", str(path), "--json"]).output)
    assert [r["status"] for r in listed] == ["succeeded"]
    shown = json.loads(cli.invoke(app, ["runs", "show", run.id[:10], "--runs", str(workspace / "runs"), "--json"]).output)
    assert [s["stage"] for s in shown["stages"]] == list(STAGES)
    narrow = cli.invoke(app, ["runs", "list", "--runs", str(workspace / "runs")], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and run.id in narrow.output, narrow.output  # the id `runs show` takes, whole (was: "202611…")
    wide = cli.invoke(app, ["runs", "list", "--runs", str(workspace / "runs")], env={"COLUMNS": "200"})
    assert run.app == APP and APP in wide.output, "runs of several apps share a runs folder: the table says whose each is"
    table = cli.invoke(app, ["runs", "show", "latest", "--runs", str(workspace / "runs")])
    assert table.exit_code == 0 and "select" in table.output and "promote" in table.output
    missing = cli.invoke(app, ["runs", "show", "nope", "--runs", str(workspace / "runs")])
    assert missing.exit_code == 1 and "no run matches" in missing.output


def test_a_run_with_nothing_new_stops_after_select_and_new_approvals_move_the_watermark(workspace: Path, tiny_base: Path) -> None:
    from ee_middleware.bfcl.experts import record_experts

    config = ImproveConfig.load(write_config(workspace, tiny_base))
    first = run_improve(config)
    second = run_improve(config)
    assert second.id != first.id and second.status == "nothing-new"
    assert [m["stage"] for m in second.stages()] == ["select"]
    assert second.stage("select")["inputs"]["watermark"] == first.data["watermark"]["after"]

    record_experts(workspace / "experience", "multi_turn_base", limit=10)  # two more entries, approved now
    third = run_improve(config)
    assert third.status == "succeeded", third.data.get("error")
    assert third.stage("select")["outputs"]["new"] == 2 and third.stage("replay")["outputs"]["trajectories"] == 2
    assert third.stage("evaluate")["outputs"]["baseline"] == first.data["outcome"]["candidate"]  # the live adapter
    assert third.stage("datasets")["outputs"]["trajectories"] == 10  # datasets are cumulative
    # the report's likelihood table compares the candidate with the live adapter, as the gate does (it showed only
    # each model against the base)
    report = (third.folder / "report.md").read_text()
    assert "| vs live (± s.e.) |" in report and f"the candidate against the live adapter {first.data['outcome']['candidate']}" in report
    [row] = [line for line in report.splitlines() if line.startswith("| candidate (")]
    assert "% improved |" in row, row


def test_a_small_likelihood_difference_is_shown_with_the_digits_that_tell_the_models_apart() -> None:
    """Two nights' adapters differ little on a small run: at 3 decimals the report read '5.898 -> 5.898 (-0.000 ± 0.000
    s.e., ...; beyond 2 s.e.)', a difference the gate measured shown as none."""
    from ee_middleware.jobs.deploy import compare_likelihood, metrics_moved

    live = [5.8981, 5.8979, 5.8984, 5.8977]
    candidate = [v - d for v, d in zip(live, (0.0003, 0.0002, 0.0004, 0.0003), strict=True)]
    likelihood = compare_likelihood(
        {"per_state_nll": {"live": live, "candidate": candidate}, "names": {"live": "a-v1", "candidate": "a-v2"}, "baseline": "live"}
    )
    [line] = metrics_moved({}, likelihood)
    assert "5.898025 -> 5.897725 (-0.000300 ± 0.000041 s.e., 100% of 4 states improved; beyond 2 s.e.)" in line, line
    [same] = metrics_moved(
        {},
        compare_likelihood(
            {"per_state_nll": {"base": live, "candidate": live}, "names": {"base": "base", "candidate": "a-v2"}, "baseline": "base"}
        ),
    )
    assert "did not move: 5.898 -> 5.898 (+0.000 ± 0.000 s.e." in same, same

    # the refusal of gate_on_likelihood read "not lower than the baseline's (+0.000)" (a report sweep): a tie, to a reader
    from ee_middleware.jobs.deploy import likelihood_reasons

    worse = compare_likelihood(
        {"per_state_nll": {"live": candidate, "candidate": live}, "names": {"live": "a-v1", "candidate": "a-v2"}, "baseline": "live"}
    )
    [reason] = likelihood_reasons({}, worse, required=True)
    assert reason.endswith("not lower than the baseline's (+0.000300)"), reason


def test_a_failed_gate_does_not_promote_and_says_why(workspace: Path, tiny_base: Path) -> None:
    """min_improvement cannot be met, and with gate_on_likelihood a candidate trained with a learning rate of
    1e-30 (its held-out NLL equal to the base's) is refused too."""
    path = write_config(
        workspace,
        tiny_base,
        improve="gate_on_likelihood = true\n",
        gate="min_tasks = 1\nmin_improvement = 0.5",
        train="learning_rate = 1e-30",
    )
    run = run_improve(ImproveConfig.load(path))
    assert run.status == "succeeded"
    gate = run.stage("gate")["outputs"]
    assert not gate["passed"]
    assert any("below the required improvement" in r for r in gate["reasons"]) and any(r.startswith("likelihood:") for r in gate["reasons"])
    promote = run.stage("promote")["outputs"]
    assert promote["promoted"] is False and promote["live"] is None and run.data["outcome"]["promoted"] is False
    registry = _registry(workspace)
    candidate = run.stage("register")["outputs"]["candidate"]
    assert registry.resolve(APP) is None
    assert registry.get(candidate).status == "retired" and "did not pass the gate" in registry.get(candidate).reason
    assert "Gate FAILED" in (run.folder / "report.md").read_text()
    # the terminal summary gives every reason in full (the table cuts its result column at 90 characters)
    import io

    from rich.console import Console

    from ee_middleware.cli.improve_cmds import print_summary

    out = io.StringIO()
    print_summary(Console(file=out, width=100), run)
    text = " ".join(out.getvalue().split())
    assert all(" ".join(reason.split()) in text for reason in gate["reasons"]), text


def test_a_failed_run_prints_its_json_with_the_error_and_exits_1(workspace: Path, tiny_base: Path) -> None:
    """A run that fails in a stage (here: its held-out rule matches no trajectory) is still described on stdout with
    --json: its id, folder, status, error and the failed stage's manifest, so a scheduler reading stdout knows which
    run to look at. The error is also the one line on stderr."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    path = write_config(workspace, tiny_base)
    (workspace / "heldout-ids.txt").write_text("no-such-trajectory\n")
    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    [run] = RunsDir(workspace / "runs").list()
    assert data["id"] == run.id and data["status"] == "failed" and data["folder"] == str(run.folder)
    assert "'no-such-trajectory' matches no trajectory" in data["error"] and "heldout_ids" in data["error"]
    assert {m["stage"]: m["status"] for m in data["stages"]}["datasets"] == "failed"
    assert "heldout_ids" in result.stderr and Path(data["report"]["markdown"]).is_file()


# as in the ee process, store damage is a warning (this project's pytest settings make it an error)
@pytest.mark.filterwarnings("default::ee_middleware.errors.StoreCorruptionWarning")
def test_a_damaged_store_part_fails_the_run_which_keeps_its_watermark_and_learns_from_everything_once_repaired(
    workspace: Path, tiny_base: Path
) -> None:
    """Before: the run read around an unreadable steps part (Python warnings on stderr), trained on the rest, exited 0 and
    moved its watermark past the trajectories it could not read: they were never selected again, even once the store was
    repaired. Real BFCL experts in a real store whose second steps part is damaged as the docs sweep did."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.store import LocalExperienceStore
    from tests.cli.test_cli_conventions import damage_a_steps_part

    path = write_config(workspace, tiny_base)  # holds out the store's first three
    opened = LocalExperienceStore(workspace / "experience")
    ids = opened.trajectories()["id"].to_list()
    opened.close()
    part, backup = damage_a_steps_part(workspace / "experience", ids[-3:])  # the steps of 3 of the 8, none held out
    runner = CliRunner()

    failed = runner.invoke(app, ["improve", "--config", str(path), "--no-progress"])
    assert failed.exit_code == 1, failed.output
    [run] = RunsDir(workspace / "runs").list()
    assert run.status == "failed" and "watermark" not in run.data
    assert run.stage("select")["status"] == "failed" and str(part) in run.stage("select")["error"]
    error = " ".join(failed.stderr.split())
    assert f"Skipped unreadable Parquet part {part}" in error and "--allow-partial" in error and "keeps its watermark" in error
    assert "Traceback" not in failed.output and "IncompleteReadWarning" not in failed.stderr

    partial = runner.invoke(app, ["improve", "--config", str(path), "--no-progress", "--allow-partial"])
    assert partial.exit_code == 0, partial.output
    [run] = RunsDir(workspace / "runs").list()  # the same run, continued: allow_partial is no change to its configuration
    assert run.status == "succeeded" and run.data["attempts"] == 2, run.data.get("error")
    assert f"warning: Skipped unreadable Parquet part {part}" in partial.stderr and "IncompleteReadWarning" not in partial.stderr
    assert any(str(part) in text for text in run.stage("select")["incomplete_reads"])
    assert run.data["watermark"]["after"] is None and run.data["watermark"]["held"], "was: past all 8 trajectories"
    assert "watermark kept" in partial.stdout

    part.write_bytes(backup)  # the part restored from a backup
    repaired = runner.invoke(app, ["improve", "--config", str(path), "--no-progress"])
    assert repaired.exit_code == 0, repaired.output
    latest = RunsDir(workspace / "runs").list()[-1]
    assert latest.id != run.id and latest.status == "succeeded", latest.data.get("error")
    assert latest.stage("select")["outputs"]["new"] == 8, "the trajectories the damage hid are selected again"
    assert latest.data["watermark"]["after"] and "held" not in latest.data["watermark"]
    learned, before = latest.stage("datasets")["outputs"]["rows"]["il"], run.stage("datasets")["outputs"]["rows"]["il"]
    assert learned > before, (learned, before)


def test_a_promote_stopped_after_the_alias_switched_still_names_what_it_replaced(workspace: Path, tiny_base: Path) -> None:
    """A kill between the registry's alias switch and the promote manifest (simulated: the manifests are set back to
    what such a kill leaves) is continued: the promote is not redone, and the run still says it replaced the base
    model (it said the candidate had replaced itself)."""
    config = ImproveConfig.load(write_config(workspace, tiny_base))
    run = run_improve(config)
    candidate = run.data["outcome"]["candidate"]
    manifest = run.stage("promote")
    run.write_stage(
        "promote", {k: v for k, v in manifest.items() if k in ("stage", "attempt", "started_at", "pid")} | {"status": "running"}
    )
    run.update(status="running", outcome={})
    resumed = run_improve(config)
    assert resumed.id == run.id and resumed.status == "succeeded"
    promote = resumed.stage("promote")
    assert promote["attempt"] == 2 and promote["outputs"]["live"] == candidate
    assert promote["outputs"]["replaced"] is None, promote["outputs"]
    assert f"{APP} was the base model" in promote["decisions"][0]
    assert f"Promoted `{candidate}` (it replaced the base model)" in (resumed.folder / "report.md").read_text()


def test_an_evaluation_the_server_did_not_answer_fails_the_run_which_continues_once_it_answers_standin_server(
    workspace: Path, tiny_base: Path
) -> None:
    """A replica that stops answering during the evaluation (stand-in for vLLM's API: it lists and loads adapters, and
    answers chat requests with 503) leaves trials with no answer. Before, the evaluate stage was 'done' with every such
    trial a failure, the gate failed on them, the candidate was retired and the watermark moved: a night's training
    thrown away for an outage. Now the stage fails naming the server and how many trials it did not answer, nothing is
    retired or promoted, and the next call continues the evaluation (the unanswered trials run again)."""
    from ee_middleware.jobs.errors import JobError
    from ee_middleware.testing.http import serving
    from tests.adapters.helpers import StandInVLLM

    server = StandInVLLM()
    server.fail["/v1/chat/completions"] = 503
    with serving(server) as url:
        improve = f'[improve.serving]\nbackend = "vllm"\nservers = ["{url}"]\nmax_lora_rank = 8\n'
        config = ImproveConfig.load(write_config(workspace, tiny_base, improve=improve, tasks=2))
        with pytest.raises(
            JobError, match=rf"{url}.* gave no answer on 2 task trial\(s\) of the baseline.*raise \[improve.serving\] timeout_s"
        ):
            run_improve(config)
        [run] = RunsDir(workspace / "runs").list()
        assert run.status == "failed" and run.stage("evaluate")["status"] == "failed" and run.stage("gate") is None
        candidate = run.stage("register")["outputs"]["candidate"]
        assert _registry(workspace).get(candidate).status == "candidate" and not run.data.get("watermark")

        del server.fail["/v1/chat/completions"]
        resumed = run_improve(config)
    assert resumed.id == run.id and resumed.status == "succeeded", resumed.data.get("error")
    evaluation = resumed.stage("evaluate")
    assert evaluation["attempt"] == 2
    assert all(s.get("no_answer", 0) == 0 for side in evaluation["outputs"]["runs"].values() for s in side["suites"])
    assert resumed.data["outcome"]["promoted"] is True
    # the stand-in recorded no chat template: the report says the adapter's rendering was not checked against it
    assert any(f"Not checked whether {url}" in d for d in resumed.stage("promote")["decisions"])


def test_a_live_model_that_never_answers_fails_the_evaluation_instead_of_failing_the_candidate_standin_server(
    workspace: Path, tiny_base: Path
) -> None:
    """A replica that refuses every chat request (stand-in for vLLM's API answering 404, as for a served-model name it
    does not know or an adapter it cannot load) gives a baseline that never answered: gated against it, the candidate
    was refused and retired for the live model's fault. Now the evaluate stage fails naming the baseline and the
    reason; nothing is retired, and the next call continues once the server answers."""
    from ee_middleware.jobs.errors import JobError
    from ee_middleware.testing.http import serving
    from tests.adapters.helpers import StandInVLLM

    server = StandInVLLM()
    server.fail["/v1/chat/completions"] = 404
    with serving(server) as url:
        improve = f'[improve.serving]\nbackend = "vllm"\nservers = ["{url}"]\nmax_lora_rank = 8\n'
        config = ImproveConfig.load(write_config(workspace, tiny_base, improve=improve, tasks=2))
        with pytest.raises(JobError, match=r"The baseline \(.*\) never answered on traces.*HTTP 404"):
            run_improve(config)
        [run] = RunsDir(workspace / "runs").list()
        assert run.status == "failed" and run.stage("evaluate")["status"] == "failed" and run.stage("gate") is None
        candidate = run.stage("register")["outputs"]["candidate"]
        assert _registry(workspace).get(candidate).status == "candidate"

        del server.fail["/v1/chat/completions"]
        resumed = run_improve(config)
    assert resumed.id == run.id and resumed.status == "succeeded", resumed.data.get("error")
    assert resumed.data["outcome"]["promoted"] is True


def _down_url() -> str:
    """The API root of a port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_a_model_server_that_does_not_answer_stops_the_job_at_start_and_before_training_standin_server(
    workspace: Path, tiny_base: Path
) -> None:
    """Evaluation goes through the configured servers. One that is down (a wrong port in the file) was found only before
    training, after the whole replay and dataset build (hours at scale), leaving a failed run. It is asked when the job
    starts now: nothing is started, and the error names the setting and the server. One that goes down after the start
    (a replica restarted mid-night) still stops the run before training, and the run continues once it answers."""
    from ee_middleware.jobs.errors import JobError
    from ee_middleware.testing.http import serving
    from tests.adapters.helpers import StandInVLLM

    down = _down_url()
    server = StandInVLLM()
    with serving(server) as up:
        improve = f'[improve.serving]\nbackend = "vllm"\nservers = ["{up}", "{down}"]\nmax_lora_rank = 8\n'
        path = write_config(workspace, tiny_base, improve=improve)
        with pytest.raises(
            JobError, match=rf"before a run starts: 1 of 2 model server\(s\) in \[improve.serving\] servers did not answer.*{down}"
        ):
            run_improve(ImproveConfig.load(path))
        assert RunsDir(workspace / "runs").list() == []

        path.write_text(path.read_text().replace(f', "{down}"', ""))  # the fleet fixed: one replica (not in the config hash)

        def replica_goes_down(run: object) -> None:
            server.fail["/v1/models"] = 503

        with pytest.raises(JobError, match=rf"1 of 1 model server\(s\) .* did not answer, so the run stops before training.*{up}"):
            run_improve(ImproveConfig.load(path), on_start=replica_goes_down)
        [run] = RunsDir(workspace / "runs").list()
        assert run.status == "failed" and run.stage("datasets")["status"] == "done" and run.stage("train") is None
        server.fail.clear()
        resumed = run_improve(ImproveConfig.load(path))
    assert resumed.id == run.id and resumed.status == "succeeded", resumed.data.get("error")
    assert resumed.stage("datasets")["attempt"] == 1 and resumed.stage("train")["attempt"] == 1


@pytest.mark.parametrize(
    ("setting", "table", "line"),
    [
        ("[replay] policy", "[replay]\n", 'policy = "openai:{url}#base"\n'),
        ("[datasets] teacher", "[datasets]\n", 'kinds = ["il", "sr"]\nteacher = "openai:{url}#teacher"\n'),
    ],
)
def test_a_policy_or_teacher_server_that_is_down_stops_the_job_before_a_run_starts(
    workspace: Path, tiny_base: Path, setting: str, table: str, line: str
) -> None:
    """Was: a run was started, its select stage done, and the replay (or datasets) stage failed on the first request
    with the URL alone ('No usable answer from http://.../chat/completions'), leaving a failed run; a wrong port in the
    file is now named with its setting before anything starts."""
    from ee_middleware.jobs.errors import JobError

    down = _down_url()
    path = write_config(workspace, tiny_base, schedule="sr" if "teacher" in setting else "il")
    path.write_text(path.read_text().replace(table, table + line.format(url=down), 1))
    with pytest.raises(JobError, match=rf"before a run starts: {re.escape(setting)} = 'openai:{down}#.*did not answer"):
        run_improve(ImproveConfig.load(path))
    assert RunsDir(workspace / "runs").list() == []
    # a URL with its credentials in it: never printed (found by review: 'openai:http://bob:Hunter2Secret@...' was)
    with_password = down.replace("http://", "http://bob:Hunter2Secret@")
    path.write_text(path.read_text().replace(down, with_password))
    with pytest.raises(JobError, match=r"http://\*\*\*@") as refused:
        run_improve(ImproveConfig.load(path))
    assert "Hunter2Secret" not in str(refused.value)


def test_a_run_continued_past_its_replay_does_not_ask_the_replay_policys_server(workspace: Path, tiny_base: Path) -> None:
    """The start-up check asked every server the file names on every call, so a run continued past its replay (or
    datasets) failed at start when the policy's (or teacher's) server, no longer needed, was stopped (found by review).
    It asks only the servers of the stages still to run."""
    from ee_middleware.jobs.deploy import check_servers
    from ee_middleware.jobs.errors import JobError
    from ee_middleware.jobs.improve import STAGES

    down = _down_url()
    path = write_config(workspace, tiny_base, schedule="sr")
    path.write_text(path.read_text().replace("[replay]\n", f'[replay]\npolicy = "openai:{down}#base"\n', 1))
    config = ImproveConfig.load(path)
    with pytest.raises(JobError, match=r"\[replay\] policy"):
        check_servers(config, STAGES)
    check_servers(config, STAGES[STAGES.index("datasets") :])  # replay done: its server is not asked


def test_a_server_rendering_prompts_unlike_the_training_rows_stops_the_run_before_evaluating_standin_server(
    workspace: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica recorded as serving the base's own template (``ee serve vllm --chat-template own``) on a base whose template
    ignores tools: the candidate, trained with the schemas in the system message and calls as <tool_call> text, would
    be evaluated (and then promoted) on prompts unlike its rows. Before, nothing said so; now the run stops before
    loading it, naming the adapter, the parts and the fix, and continues once the server serves the derived template."""
    from ee_middleware.adapters.errors import ChatTemplateMismatchError
    from ee_middleware.adapters.serving.rendering import record_server
    from ee_middleware.adapters.templates import AS_IS, ServedTemplate
    from ee_middleware.testing.http import serving
    from tests.adapters.helpers import StandInVLLM

    monkeypatch.setenv("EE_CACHE_DIR", str(workspace / "cache"))
    server = StandInVLLM()
    with serving(server) as url:
        own = ServedTemplate("own", None, dict(AS_IS))
        record_server(url, pid=os.getpid(), base=str(tiny_base), served_model_name="tiny", template=own)
        improve = f'[improve.serving]\nbackend = "vllm"\nservers = ["{url}"]\nmax_lora_rank = 8\n'
        config = ImproveConfig.load(write_config(workspace, tiny_base, improve=improve, tasks=2))
        with pytest.raises(
            ChatTemplateMismatchError, match=r"would see prompts unlike its training rows.*tools: trained with the fallback"
        ):
            run_improve(config)
        [run] = RunsDir(workspace / "runs").list()
        assert run.stage("evaluate")["status"] == "failed" and not server.loaded
        trained = run.stage("train")["outputs"]
        rendering = json.loads((Path(trained["adapter_dir"]) / "manifest.json").read_text())["rendering"]
        record_server(
            url, pid=os.getpid(), base=str(tiny_base), served_model_name="tiny", template=ServedTemplate("derived", "/t", rendering)
        )
        resumed = run_improve(config)
    assert resumed.id == run.id and resumed.status == "succeeded", resumed.data.get("error")
    assert resumed.data["outcome"]["promoted"] is True
    assert [c["status"] for c in resumed.stage("promote")["outputs"]["rendering"]] == ["same"]


def test_budgets_cut_replay_and_training_and_the_run_says_so(workspace: Path, tiny_base: Path) -> None:
    improve = "[improve.budgets]\nmax_trajectories = 3\nmax_train_steps = 2\n"
    config = ImproveConfig.load(write_config(workspace, tiny_base, improve=improve))
    run = run_improve(config)
    cuts = {c["budget"]: c for c in run.data["budget_cuts"]}
    assert "5 of 8 trajectories to replay wait for the next run" in cuts["max_trajectories"]["cut"]
    assert "2 of 4 planned steps" in cuts["max_train_steps"]["cut"]
    assert run.stage("replay")["outputs"]["trajectories"] == 3 and run.stage("train")["outputs"]["steps"] == 2
    assert "max_trajectories" in (run.folder / "report.md").read_text()
    # nothing new was approved, but 5 trajectories still wait for replay: the next run takes 3 more
    following = run_improve(config)
    assert following.status == "succeeded" and following.stage("select")["outputs"]["new"] == 0
    assert following.stage("replay")["outputs"]["trajectories"] == 3


def test_max_minutes_stops_a_run_that_the_next_call_continues(workspace: Path, tiny_base: Path) -> None:
    path = write_config(workspace, tiny_base, improve="[improve.budgets]\nmax_minutes = 0.000001\n")
    stopped = run_improve(ImproveConfig.load(path))
    assert stopped.status == "stopped" and stopped.data["budget_cuts"][0]["budget"] == "max_minutes"
    assert stopped.stages() == []
    with pytest.raises(RunConfigChangedError, match="--new-run"):  # another config cannot continue it
        run_improve(ImproveConfig.load(path, schedule="iwm"))
    path.write_text(path.read_text().replace("max_minutes = 0.000001", "max_minutes = 60"))
    resumed = run_improve(ImproveConfig.load(path))  # budgets are not part of the config hash: the same run goes on
    assert resumed.id == stopped.id and resumed.status == "succeeded" and resumed.data["attempts"] == 2


def test_new_run_abandons_an_unfinished_run(workspace: Path, tiny_base: Path) -> None:
    path = write_config(workspace, tiny_base, improve="[improve.budgets]\nmax_minutes = 0.000001\n")
    stopped = run_improve(ImproveConfig.load(path))
    other = run_improve(ImproveConfig.load(path, schedule="iwm"), new_run=True)
    assert other.id != stopped.id and other.status == "stopped"
    assert RunsDir(workspace / "runs").get(stopped.id).status == "abandoned"


def test_a_second_run_cannot_start_while_one_holds_the_lock(workspace: Path, tiny_base: Path) -> None:
    config = ImproveConfig.load(write_config(workspace, tiny_base))
    with RunsDir(config.runs).lock(), pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        run_improve(config)
    assert RunsDir(config.runs).list() == []


def _ee(*args: str | Path, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "ee_middleware.cli", *map(str, args)]
    kwargs.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def _wait_until_training(process: subprocess.Popen, runs: RunsDir) -> None:
    """Until the run of ``process`` (an ``ee improve`` with 400 training steps) is in its train stage; it must still run."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        run = runs.list()[0] if runs.list() else None
        if run is not None and (run.stage("train") or {}).get("status") == "running":
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stdout.read() if process.stdout else ""


def test_a_run_killed_in_training_continues_from_training(workspace: Path, tiny_base: Path) -> None:
    """SIGKILL the real `ee improve` process while it trains; the next call redoes training only."""
    path = write_config(workspace, tiny_base, schedule="iwm")
    path.write_text(path.read_text().replace("max_steps = 4", "max_steps = 400"))  # long enough to be caught in training
    runs = RunsDir(workspace / "runs")
    process = _ee("improve", "--config", path, "--no-progress")
    try:
        _wait_until_training(process, runs)
        with pytest.raises(RunLockedError):  # the running process holds the lock
            run_improve(ImproveConfig.load(path))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()
    assert not psutil.pid_exists(process.pid) or psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE
    killed = runs.list()[0]
    assert killed.status == "running" and killed.stage("train")["status"] == "running"
    before = stage_times(killed)

    listed = subprocess.run(
        [sys.executable, "-m", "ee_middleware.cli", "runs", "list", "--runs", str(runs.root), "--json"], capture_output=True, text=True
    )
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["status"] == "running"

    path.write_text(path.read_text().replace("k = 1", "k = 2"))
    # k was read by the select stage, which finished: the killed run is not continued with another k ([train] settings
    # could change: the train stage has not finished)
    with pytest.raises(RunConfigChangedError, match=r"\[replay\] k: 1 -> 2 \(fixed: its select stage has finished\)"):
        run_improve(ImproveConfig.load(path))
    path.write_text(path.read_text().replace("k = 2", "k = 1"))
    config = ImproveConfig.load(path, budgets={"max_train_steps": 3})  # a budget may change between attempts
    resumed = run_improve(config)
    assert resumed.id == killed.id and resumed.status == "succeeded", resumed.data.get("error")
    after = stage_times(resumed)
    for name in ("select", "replay", "datasets"):
        assert after[name] == before[name], f"{name} was redone"
    assert resumed.stage("train")["attempt"] == 2 and resumed.stage("train")["outputs"]["steps"] == 3
    assert resumed.data["attempts"] == 2
    # the report's time is the stages' own, not the gap between the attempts (which may be a night)
    report = (resumed.folder / "report.md").read_text()
    assert "min in stages (" in report
    # the killed attempt recorded no time: the report says its time is not counted (was: the stage's time read as whole)
    train = resumed.stage("train")
    assert train["untimed_attempts"] == 1 and "seconds_earlier_attempts" not in train
    assert f"| train | done | {train['seconds']:.1f} ({train['seconds']:.1f} in 2 attempts; 1 killed outright, not timed) |" in report


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_a_run_that_says_so_writes_its_report_and_is_continued(workspace: Path, tiny_base: Path, sent: int) -> None:
    """SIGTERM (a Kubernetes CronJob past its deadline, a pod evicted, `kill`) ends `ee improve` the way Ctrl-C does: the
    stage and the run say they were stopped by SIGTERM, the report is written, the exit status is 130, no child is left,
    and the next call continues the run. Before, the process died at once: run.json and the stage stayed 'running' and
    no report said what happened. Ctrl-C (SIGINT) is named too (was 'KeyboardInterrupt: ' and nothing on stderr)."""
    name = signal.Signals(sent).name
    path = write_config(workspace, tiny_base)
    path.write_text(path.read_text().replace("max_steps = 4", "max_steps = 400"))  # long enough to be caught in training
    runs = RunsDir(workspace / "runs")
    # --json: a scheduler reads which run stopped, and where, from stdout (the error line goes to stderr)
    process = _ee("improve", "--config", path, "--no-progress", "--json", stderr=subprocess.PIPE)
    try:
        _wait_until_training(process, runs)
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(sent)
        output, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == 130, output
    said = json.loads(output)
    assert said["status"] == "stopped" and name in said["error"] and said["id"] == runs.list()[0].id, said
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    stopped = runs.list()[0]
    assert stopped.status == "stopped" and name in stopped.data["error"], stopped.data  # stopped, not failed
    assert stopped.stage("train")["status"] == "stopped" and name in stopped.stage("train")["error"]
    first = stopped.stage("train")["seconds"]  # the stopped attempt's own time
    assert name in (stopped.folder / "report.md").read_text()
    said_on_stderr = " ".join(errors.split())
    assert f"interrupted: run {stopped.id} stopped in its train stage (KeyboardInterrupt: {name}" in said_on_stderr, errors[-2000:]
    assert "continues it" in said_on_stderr

    resumed = run_improve(ImproveConfig.load(path, budgets={"max_train_steps": 2}))  # a budget may change between attempts
    assert resumed.id == stopped.id and resumed.status == "succeeded", resumed.data.get("error")
    assert resumed.stage("train")["attempt"] == 2 and resumed.stage("select")["attempt"] == 1
    # the stopped attempt's training time is counted (was: only the last attempt's, so a stage stopped after an hour and
    # finished in a minute read as a minute in the report)
    train = resumed.stage("train")
    assert first > 0 and train["seconds_earlier_attempts"] == first
    total = first + train["seconds"]
    assert f"| train | done | {train['seconds']:.1f} ({total:.1f} in 2 attempts) | 2 |" in (resumed.folder / "report.md").read_text()


def test_a_full_disk_names_the_places_the_stage_writes_and_the_run_continues_once_there_is_space_standin_full_disk(
    workspace: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write to an open file on a full disk raises ENOSPC with no file name (a journal's flush): the user saw
    'error: a path: No space left on device' and not which disk. Now the error names the stage, the run and the
    places it writes with their free space, and says the next call continues. (Stand-in: the evaluation raises the
    OSError a full disk gives; a real full disk needs a mount.)"""
    import errno

    from typer.testing import CliRunner

    import ee_middleware.evals.runner as runner
    from ee_middleware.cli.app import app

    path = write_config(workspace, tiny_base)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(runner, "run_eval", full_disk)
        result = CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress"])
    assert result.exit_code == 1
    [run] = RunsDir(workspace / "runs").list()
    message = " ".join(result.stderr.split())
    assert "a path" not in message, message
    assert f"The evaluate stage of run {run.id} could not write: No space left on device" in message, message
    for where in (
        f"the runs folder {workspace / 'runs'} (",
        f"the store {workspace / 'experience'} (",
        f"the registry {workspace / 'registry'} (",
    ):
        assert where in message and "free)" in message, message
    assert "continues from this stage" in message
    assert run.status == "failed" and (run.folder / "report.md").is_file()
    assert _registry(workspace).resolve(APP) is None  # nothing was promoted

    resumed = run_improve(ImproveConfig.load(path))
    assert resumed.id == run.id and resumed.status == "succeeded", resumed.data.get("error")


def _task_gate(candidate_only: int, baseline_only: int, both: int = 0, neither: int = 4) -> dict:
    """The task gate's result (evals.gate.GateResult.to_dict) over one suite with these paired outcomes."""
    from evals.gate import GatePolicy, GateResult, SuiteComparison

    tasks = candidate_only + baseline_only + both + neither
    overall = SuiteComparison(
        suite="overall",
        tasks=tasks,
        candidate_rate=(both + candidate_only) / tasks,
        baseline_rate=(both + baseline_only) / tasks,
        delta=(candidate_only - baseline_only) / tasks,
        ci_low=-0.5,
        ci_high=0.5,
        p_value=1.0,
        both=both,
        candidate_only=candidate_only,
        baseline_only=baseline_only,
        neither=neither,
        only_in_candidate=0,
        only_in_baseline=0,
    )
    return GateResult(passed=True, reasons=[], suites=[overall], overall=overall, policy=GatePolicy().model_dump()).to_dict()


def test_a_tie_on_tasks_is_broken_by_a_likelihood_that_says_the_candidate_is_worse() -> None:
    """With gate_on_likelihood = false (the default) and 0% vs 0% task success, a candidate whose held-out action NLL had
    risen beyond 2 s.e. was promoted: a tie passed although the one measurement that told the models apart said it was
    worse. Such a tie now fails; a better or indistinguishable likelihood, or any task that changed outcome, leaves the
    task gate's decision alone; gate_on_likelihood still requires a lower NLL every time."""
    from ee_middleware.jobs.deploy import compare_likelihood, likelihood_reasons

    def likelihood(shift: float, noise: tuple[float, ...] = (0.0001, -0.0001, 0.0002, -0.0002)) -> dict:
        live = [2.0, 2.1, 2.2, 2.3]
        candidate = [v + shift + n for v, n in zip(live, noise, strict=True)]
        return compare_likelihood(
            {"per_state_nll": {"live": live, "candidate": candidate}, "names": {"live": "a-v1", "candidate": "a-v2"}, "baseline": "live"}
        )

    worse, better, same = likelihood(0.05), likelihood(-0.05), likelihood(0.0)
    [reason] = likelihood_reasons(_task_gate(0, 0), worse, required=False)
    assert reason.startswith("likelihood: no task changed outcome") and "beyond 2 s.e." in reason and "0.050000" in reason
    assert likelihood_reasons(_task_gate(0, 0), better, required=False) == []
    assert likelihood_reasons(_task_gate(0, 0), same, required=False) == []  # within the noise: the tie stands
    assert likelihood_reasons(_task_gate(1, 0), worse, required=False) == []  # a task moved: the task gate decides
    assert likelihood_reasons(_task_gate(0, 0), None, required=False) == []  # not scored
    assert likelihood_reasons(_task_gate(1, 0), worse, required=True)[0].startswith(
        "likelihood: the candidate's held-out action NLL is not lower"
    )
    assert likelihood_reasons(_task_gate(0, 0), better, required=True) == []
