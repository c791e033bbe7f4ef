"""``ee improve --json`` and ``ee runs prune --json`` on an exit 1 that leaves no run of the call's own: a config that
cannot load, a continuation refused because the configuration changed, a runs folder another run holds. A cron wrapper
reads stdout: it gets one JSON object with ``status`` and ``error``. The app is the ticket desk of
tests/jobs/test_replay_stage_sandbox_gaps.py (a real recorded agent in a real store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.test_replay_stage_sandbox_gaps import record, write_config


def test_json_prints_the_error_of_a_config_that_cannot_load(tmp_path: Path) -> None:
    """Was: exit 1 with an empty stdout (the message on stderr only)."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("k = 2", 'k = "two"'))
    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["status"] == "failed" and "[replay]" in data["error"] and "k" in data["error"], data
    assert data["error"] in " ".join(result.stderr.split()) or data["error"].split(":")[0] in result.stderr

    path.write_text(path.read_text().replace("[improve]\n", "[improv]\n", 1))
    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--json"])
    assert result.exit_code == 1 and "did you mean [improve]?" in json.loads(result.stdout)["error"]


def test_json_prints_a_refused_continuation(tmp_path: Path, tiny_base: Path) -> None:
    """A failed run whose [replay] sandbox then changed (fixed after select): the continuation is refused. Was: exit 1
    with nothing on stdout, although the lock's refusal prints {"status": "refused", ...}."""
    path = write_config(tmp_path, sandbox="make_sandbox_missing", base=tiny_base)
    record(tmp_path / "store", 2)
    failed = CliRunner().invoke(app, ["improve", "--config", str(path), "--json"])
    assert failed.exit_code == 1 and json.loads(failed.stdout)["status"] == "failed", failed.output
    write_config(tmp_path, base=tiny_base)
    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["status"] == "refused" and "[replay] sandbox" in data["error"] and data["runs"] == str(tmp_path / "runs"), data


def test_runs_prune_json_says_why_when_a_run_holds_the_lock(tmp_path: Path) -> None:
    runs = RunsDir(tmp_path / "runs")
    with runs.lock():
        result = CliRunner().invoke(app, ["runs", "prune", "--keep", "1", "--runs", str(runs.root), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["status"] == "refused" and "Another run holds" in data["error"] and data["runs"] == str(runs.root)


def test_a_missing_store_is_named_by_the_flag_variable_or_file_that_set_it(tmp_path: Path, tiny_base: Path) -> None:
    """Sweep E: a --store or EE_STORE naming no store was reported as "[improve] store = '<that path>' (or --store,
    EE_STORE)", as if the file (which named another, existing store) had set it."""
    path = write_config(tmp_path, base=tiny_base)
    record(tmp_path / "store", 1)
    missing = tmp_path / "no-store"
    flagged = CliRunner().invoke(app, ["improve", "--config", str(path), "--store", str(missing)])
    assert flagged.exit_code == 1, flagged.output
    error = flagged.stderr.strip().splitlines()[-1]
    assert error == f"error: No experience store at {missing}. Record a run into it first, or check the --store path.", flagged.stderr
    from_env = CliRunner().invoke(app, ["improve", "--config", str(path), "--json"], env={"EE_STORE": str(missing)})
    assert from_env.exit_code == 1, from_env.output
    assert json.loads(from_env.stdout)["error"].endswith(f"(This store was set by EE_STORE={missing}.)"), from_env.stdout
    path.write_text(path.read_text().replace(str(tmp_path / "store"), str(missing)))
    in_file = CliRunner().invoke(app, ["improve", "--config", str(path)])
    assert in_file.exit_code == 1 and f"(This store was set by store in [improve] of {path}.)" in in_file.stderr, in_file.output
    assert "[improve] store =" not in flagged.stderr + from_env.stdout + in_file.stderr


def test_an_empty_or_blank_runs_folder_or_registry_is_refused_not_taken_as_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: --runs "$RUNS_DIR" with the variable unset made the working directory the runs folder (its .lock and run
    folders there, no watermark: every stage ran again), and EE_RUNS=" " or EE_ADAPTER_REGISTRY=" " a folder named " "."""
    path = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, env, setting in (
        (["--runs", ""], {}, "--runs: Value error, ''"),
        ([], {"EE_RUNS": " "}, "EE_RUNS: Value error, ' '"),
        ([], {"EE_ADAPTER_REGISTRY": " "}, "EE_ADAPTER_REGISTRY: Value error, ' '"),
        (["--store", ""], {}, "--store: Value error, ''"),
    ):
        result = CliRunner().invoke(app, ["improve", "--config", str(path), "--json", *args], env=env)
        assert result.exit_code == 1, result.output
        error = json.loads(result.stdout)["error"]
        assert setting in error and "is empty or blank: give it a value" in error, error
    for command in (["runs", "list"], ["runs", "prune", "--keep", "0"]):  # (the working directory listed or pruned as runs)
        result = CliRunner().invoke(app, [*command, "--runs", ""])
        assert result.exit_code == 2 and "'' is empty or blank: name the runs folder" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no runs folder, registry or lock made"
    from ee_middleware.jobs.config import ImproveConfig
    from tests.jobs.test_replay_stage_sandbox_gaps import APP

    assert ImproveConfig.load(path, app=f"  {APP} ").app == APP, "the app's name as capture stores it, without blanks"
