"""An ``ee improve`` run stopped by a signal (SIGTERM from a CronJob past its deadline or ``kill``, SIGHUP, Ctrl-C: a
KeyboardInterrupt under ``termination_as_interrupt``) is ``stopped``, as one stopped by ``max_minutes`` is, not
``failed``: ``ee runs list`` showed "failed" for it, with an empty candidate column although its register stage had
finished. The next call continues it as before."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.improve import run_improve
from ee_middleware.jobs.runs import RESUMABLE, STOPPED, RunsDir
from tests.jobs.scripted_stages import script_stages, scripted_config
from tests.jobs.test_promote_live_changed import _adapter


def test_a_run_stopped_by_sigterm_is_stopped_shows_its_candidate_and_is_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = scripted_config(tmp_path)
    script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3), interrupt="evaluate")

    with pytest.raises(KeyboardInterrupt):
        run_improve(config)

    [run] = RunsDir(config.runs).list()
    assert run.status == STOPPED and STOPPED in RESUMABLE
    assert run.data["error"] == "KeyboardInterrupt: SIGTERM" and run.data["stopped_at"] and "failed_at" not in run.data
    assert run.stage("evaluate")["status"] == "stopped" and run.stage_done("register")
    candidate = run.outputs("register")["candidate"]
    assert "The run was interrupted by SIGTERM in its evaluate stage" in (run.folder / "report.md").read_text()

    cli = CliRunner()
    listed = cli.invoke(app, ["runs", "list", "--runs", str(config.runs)], env={"COLUMNS": "200"})
    row = next(line for line in listed.output.splitlines() if line.strip().startswith(run.id))
    assert row.split()[1:] == ["stopped", "5/8", candidate, "-", "no", "2"], listed.output
    as_json = json.loads(cli.invoke(app, ["runs", "list", "--runs", str(config.runs), "--json"]).output)
    assert [r["status"] for r in as_json] == ["stopped"]
    shown = cli.invoke(app, ["runs", "show", "latest", "--runs", str(config.runs)], env={"COLUMNS": "200"})
    assert "stopped: KeyboardInterrupt: SIGTERM" in shown.output and "failed" not in shown.output, shown.output

    script_stages(monkeypatch, tmp_path / "trained")
    continued = run_improve(config)

    assert continued.id == run.id and continued.status == "succeeded", continued.data.get("error")
    assert continued.stage("register")["attempt"] == 1 and continued.stage("evaluate")["attempt"] == 2
    [earlier] = continued.data["earlier_attempts"]
    assert earlier["ended"] == "stopped" and earlier["error"] == "KeyboardInterrupt: SIGTERM" and earlier["stage"] == "evaluate"
    assert continued.data["outcome"]["candidate"] == candidate and continued.data["outcome"]["promoted"] is True


def test_ee_improve_json_says_stopped_for_a_run_a_signal_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = scripted_config(tmp_path)
    path = tmp_path / "improve.toml"
    path.write_text(
        f'[improve]\nstore = "{config.store}"\napp = "{config.app}"\nregistry = "{config.registry}"\nruns = "{config.runs}"\n'
        f'base_model = "{config.base_model}"\n'
    )
    script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3), interrupt="train")

    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress", "--json"])

    assert isinstance(result.exception, KeyboardInterrupt) or result.exit_code != 0
    said = json.loads(result.stdout)
    assert said["status"] == "stopped" and said["error"] == "KeyboardInterrupt: SIGTERM", said


def test_a_signal_after_the_run_finished_leaves_it_succeeded_with_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signal that came once every stage was done (a CronJob's deadline at the last moment) marked the finished run
    stopped (`ee runs list`: stopped 8/8, promoted), and one that came while its report was written left it with none,
    which no later call wrote; `ee improve` said the run stopped and that the next call continues it (a sweep)."""
    import os
    import signal
    import time

    from ee_middleware.jobs import improve, report

    config = scripted_config(tmp_path)
    script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3))
    finish = improve._finish

    def finished_then_signalled(run: object, **kwargs: object) -> None:
        finish(run, **kwargs)
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(improve, "_finish", finished_then_signalled)
    with pytest.raises(KeyboardInterrupt):
        run_improve(config)
    [run] = RunsDir(config.runs).list()
    assert run.status == "succeeded" and run.data["outcome"]["promoted"] is True and "stopped_at" not in run.data
    assert (run.folder / "report.md").is_file() and run.data["report"]["markdown"]
    from ee_middleware.cli.improve_cmds import _say_interrupted

    _say_interrupted(run)  # the line `ee improve` prints
    said = " ".join(capsys.readouterr().err.split())
    assert f"run {run.id} had finished (succeeded) when the signal came" in said and "continues it" not in said, said

    monkeypatch.setattr(improve, "_finish", finish)
    write = report.write_report

    def signalled_while_written(written_run: object) -> object:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the report
        time.sleep(0.2)
        return write(written_run)

    monkeypatch.setattr(report, "write_report", signalled_while_written)
    with pytest.raises(KeyboardInterrupt):
        run_improve(config, force=True)
    [latest] = [r for r in RunsDir(config.runs).list() if r.id != run.id]
    assert latest.status in ("succeeded", "nothing-new"), latest.status
    assert latest.data.get("report") and (latest.folder / "report.md").is_file(), latest.data.get("report_error")


def test_an_unfinished_run_whose_run_json_is_damaged_is_said_when_a_new_run_starts_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped after registering its candidate, its run.json then cut short: the next call started a new run and
    retrained without a word, the candidate left registered (an improve sweep)."""
    config = scripted_config(tmp_path)
    script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3), interrupt="evaluate")
    with pytest.raises(KeyboardInterrupt):
        run_improve(config)
    [stopped] = RunsDir(config.runs).list()
    text = (stopped.folder / "run.json").read_text()
    (stopped.folder / "run.json").write_text(text[:300])

    monkeypatch.undo()  # (script_stages wraps the stage functions it finds)
    script_stages(monkeypatch, tmp_path / "trained")
    with pytest.warns(
        UserWarning,
        match=rf"run {stopped.id}'s run.json cannot be read .*: whether it finished is not known, and neither is what it "
        r"selected. This call starts a new run, which selects the approved trajectories after the start \(no run of this "
        rf"job succeeded\): those run {stopped.id} learnt from again, if it finished",
    ):
        new = run_improve(config)
    assert new.id != stopped.id and new.status == "succeeded", new.data.get("error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a later call, the damaged run now older than the last readable one: said no more
        run_improve(config, force=True)


def test_the_damaged_run_warning_names_the_watermark_the_select_stage_reads(tmp_path: Path) -> None:
    """Review: the warning named the newest readable run's watermark (a failed run's here), where the select stage reads
    the last run that succeeded."""
    from ee_middleware.jobs.improve import JOB, _say_damaged_runs
    from ee_middleware.jobs.runs import RunsDir

    config = scripted_config(tmp_path)
    runs = RunsDir(config.runs)
    made = []
    for status in ("succeeded", "failed", "succeeded"):
        run = runs.create(JOB, config.describe(), config.config_hash())
        run.update(status=status, stage_order=[])
        made.append(run)
    (made[2].folder / "run.json").write_text("{cut")
    said: list[str] = []

    class Say:
        def info(self, text: str) -> None:
            said.append(text)

    with pytest.warns(UserWarning, match=rf"after the watermark of run {made[0].id}, the last that succeeded"):
        _say_damaged_runs(runs, config, Say())  # type: ignore[arg-type]
    assert len(said) == 1 and made[1].id not in said[0]


def test_a_stage_to_run_again_under_later_finished_stages_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was (a sweep): train's manifest removed, as a damaged manifest's error advised, had the continued run train
    again and then skip register, evaluate's finished parts and promote as done: the adapter gated and promoted was the
    earlier one, while the run and its report described the new training."""
    from ee_middleware.jobs.errors import JobError

    config = scripted_config(tmp_path)
    script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3), interrupt="evaluate")
    with pytest.raises(KeyboardInterrupt):
        run_improve(config)
    [run] = RunsDir(config.runs).list()
    run.stage_path("train").unlink()
    script_stages(monkeypatch, _adapter(tmp_path / "trained-again", seed=4))
    with pytest.raises(JobError, match=r"stage train has not finished .* while the stage\(s\) after it, register, finished") as refused:
        run_improve(config)
    assert "ee improve --new-run" in str(refused.value)
    assert RunsDir(config.runs).get(run.id).stage("train") is None, "nothing was trained again"
