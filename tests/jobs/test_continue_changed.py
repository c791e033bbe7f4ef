"""A run that failed at a stage is continued after the fix of that stage's settings; a change to settings a finished
stage used is refused, naming each one. Through the real ``ee improve`` on real BFCL expert trajectories and a tiny
random Llama (TEST model) as the base."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.conftest import stage_times, write_config


def improve(path: Path):
    return CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress", "--json"])


def test_a_run_failed_at_its_datasets_stage_goes_on_after_the_datasets_settings_are_fixed(workspace: Path, tiny_base: Path) -> None:
    # Was: 'Run ... was started with another configuration ... pass --new-run', so fixing the held-out rule threw the
    # finished select and replay stages away. Settings of stages a run has not finished may now change between attempts.
    path = write_config(workspace, tiny_base)
    good = path.read_text()
    heldout = next(line for line in good.splitlines() if line.startswith("heldout_ids"))
    path.write_text(good.replace(heldout, 'heldout_app = "no-such-app"'))  # an app no trajectory is of: the stage fails
    failed = improve(path)
    assert failed.exit_code == 1, failed.output
    runs = RunsDir(workspace / "runs")
    [run] = runs.list()
    assert run.status == "failed" and run.stage("datasets")["status"] == "failed" and run.stage_done("replay")
    before = stage_times(run)

    # a setting a finished stage used cannot change: each differing setting is named, with what fixed it
    path.write_text(good.replace("k = 1", "k = 2"))
    refused = improve(path)
    assert refused.exit_code == 1, refused.output
    error = " ".join(refused.stderr.split())
    assert "[replay] k: 1 -> 2 (fixed: its select stage has finished)" in error, error
    assert "[datasets] heldout_app: no-such-app -> (not set) (may change)" in error and "--new-run" in error

    path.write_text(good, encoding="utf-16")  # as PowerShell 5 writes it: read as the first attempt's file was
    resumed = improve(path)
    assert resumed.exit_code == 0, resumed.output
    run = runs.get(run.id)
    assert json.loads(resumed.stdout)["id"] == run.id and run.status == "succeeded" and len(runs.list()) == 1
    after = stage_times(run)
    assert after["select"] == before["select"] and after["replay"] == before["replay"], "finished stages are not redone"
    assert run.stage("datasets")["attempt"] == 2
    [change] = run.data["config_changes"]
    assert change["attempt"] == 2 and any(s.startswith("[datasets] heldout_app: no-such-app -> (not set)") for s in change["settings"])
    assert "heldout_app" in (run.folder / change["config_file_before"]).read_text()
    assert "heldout_app" not in (run.folder / "config.toml").read_text(encoding="utf-8")  # the stages read it as UTF-8
    assert run.data["config"]["datasets"] == {"heldout_ids": heldout.split('"')[1]}


def _failed_run(path: Path, done: tuple[str, ...], failed: str):
    """A run of the file at ``path`` as ``run_improve`` starts one, its stage manifests as a run that failed at
    ``failed`` leaves them (a train stage out of GPU memory cannot run here)."""
    from ee_middleware._files import atomic_write_text
    from ee_middleware._toml import read_config_text
    from ee_middleware.jobs.config import ImproveConfig
    from ee_middleware.jobs.improve import CONFIG_COPY, JOB, STAGES

    config = ImproveConfig.load(path)
    config.check()
    run = RunsDir(config.runs).create(JOB, config.describe(), config.config_hash())
    atomic_write_text(run.folder / CONFIG_COPY, read_config_text(path))
    run.update(stage_order=list(STAGES), force=False)
    for name in done:
        run.write_stage(name, {"stage": name, "status": "done", "attempt": 1, "outputs": {}})
    run.write_stage(failed, {"stage": failed, "status": "failed", "attempt": 1, "error": "OutOfMemoryError"})
    run.update(status="failed", error="OutOfMemoryError")
    return run


def test_a_toml_date_a_finished_stage_used_does_not_read_as_changed_stage_manifests_written_as_a_failed_train_leaves_them(
    workspace: Path, tiny_base: Path
) -> None:
    # Was: run.json holds the date as the text it wrote ("2026-01-31"), the file reads a date: "[datasets]
    # heldout_started_after: 2026-01-31 -> 2026-01-31 (fixed: its datasets stage has finished)", the fix refused.
    path = write_config(workspace, tiny_base)
    text = path.read_text()
    heldout = next(line for line in text.splitlines() if line.startswith("heldout_ids"))
    path.write_text(text.replace(heldout, "heldout_started_after = 2026-01-31"))
    run = _failed_run(path, ("select", "replay", "datasets"), "train")
    assert json.loads((run.folder / "run.json").read_text())["config"]["datasets"] == {"heldout_started_after": "2026-01-31"}
    path.write_text(path.read_text().replace("batch_size = 2", "batch_size = 1"))  # the fix of the train stage
    result = improve(path)
    assert "another configuration" not in result.stderr, result.stderr
    run = RunsDir(workspace / "runs").get(run.id)
    assert run.data["attempts"] == 2 and run.data["config_changes"][-1]["settings"] == ["[train] batch_size: 2 -> 1"]


class _Models(BaseHTTPRequestHandler):
    """An OpenAI-compatible server as far as ``ee improve``'s start asks (``/models``)."""

    def do_GET(self) -> None:
        body = b'{"object": "list", "data": [{"id": "m", "object": "model"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_changed_policy_settings_table_is_told_key_by_key_and_its_api_key_never_shown_stage_manifests_written(
    workspace: Path, tiny_base: Path
) -> None:
    # Was: "[replay] policy_settings: {'api_key': 'sk-proj-...', 'temperature': 0.7} -> {...}" in the refusal, the
    # progress line and run.json's config_changes.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = write_config(workspace, tiny_base)
        policy = f'policy = "openai:http://127.0.0.1:{server.server_address[1]}/v1#m"\n'
        settings = '[replay.policy_settings]\napi_key = "sk-proj-LEAKME1234567890"\ntemperature = {t}\n[datasets]'
        good = path.read_text().replace("[replay]\n", "[replay]\n" + policy, 1)
        path.write_text(good.replace("[datasets]", settings.format(t=0.7), 1))
        run = _failed_run(path, (), "select")  # [replay] is read first by the select stage
        path.write_text(good.replace("[datasets]", settings.format(t=0.9), 1))
        taken = improve(path)
        assert "LEAKME" not in taken.stderr, taken.stderr
        run = RunsDir(workspace / "runs").get(run.id)
        assert run.data["config_changes"][-1]["settings"] == ["[replay] policy_settings.temperature: 0.7 -> 0.9"]
        assert "LEAKME" not in (run.folder / "run.json").read_text().split('"config_changes"')[1]

        run.write_stage("select", {"stage": "select", "status": "done", "attempt": 2, "outputs": {}})
        run.write_stage("replay", {"stage": "replay", "status": "failed", "attempt": 1})
        run.update(status="failed")
        path.write_text(good.replace("[datasets]", settings.format(t=0.5).replace("LEAKME", "LEAKTOO"), 1))
        refused = improve(path)
        assert refused.exit_code == 1 and "LEAK" not in refused.stderr, refused.output
        assert "[replay] policy_settings" in refused.stderr and "0.9" in refused.stderr, refused.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_killed_run_continued_with_a_longer_budget_records_it_and_when_the_attempt_ended(workspace: Path, tiny_base: Path) -> None:
    """Sweep: a run continued with another budget (a longer night) ran with it, but run.json kept the first attempt's
    budget, no ``config_changes`` said so, and the first attempt's config.toml was written over; and a killed attempt's
    ``ended_at`` was the time this call wrote run.json, not the last time the killed process did."""
    import time

    path = write_config(workspace, tiny_base, improve="[improve.budgets]\nmax_minutes = 20\n")
    run = _failed_run(path, (), "select")
    run.update(status="running", error=None)  # killed (SIGKILL) in its select stage: no process holds the runs folder
    last_written = RunsDir(workspace / "runs").get(run.id).data["updated_at"]
    time.sleep(1.1)
    path.write_text(path.read_text().replace("max_minutes = 20", "max_minutes = 30"))
    result = improve(path)
    assert result.exit_code == 0, result.output
    run = RunsDir(workspace / "runs").get(run.id)
    assert run.status == "succeeded" and run.data["config"]["improve"]["budgets"]["max_minutes"] == 30
    [change] = run.data["config_changes"]
    assert change["settings"] == ["[improve] budgets.max_minutes: 20.0 -> 30.0"], change
    assert "max_minutes = 20" in (run.folder / change["config_file_before"]).read_text()
    assert "max_minutes = 30" in (run.folder / "config.toml").read_text()
    [killed] = run.data["earlier_attempts"]
    assert (killed["ended"], killed["ended_at"]) == ("killed", last_written), killed
