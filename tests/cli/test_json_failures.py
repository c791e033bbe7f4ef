"""A failed ``ee ... --json`` prints one JSON object on stdout, ``{"error": {"type", "message", "exit_code"}}``, besides
its ``error:`` line on stderr. Before, stdout was empty (0 bytes) for every command but ``traces ingest`` and
``improve``, so that ``ee traces list --json | jq`` failed on the empty input rather than reading why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir
from ee_middleware.store import LocalExperienceStore
from tests.cli.json_failure import json_failure
from tests.conftest import USER_TASK

runner = CliRunner()


def ee(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def recorded(react_graph: Any, store_path: Path, inventory: Any) -> Path:
    agent = record_experience(react_graph, app="shop", store=store_path)
    inventory.stock["pear"] = 0
    agent.invoke(USER_TASK, {"configurable": {"thread_id": "t0"}})
    agent.recorder.close()
    return store_path


def test_a_failed_json_command_prints_its_error_as_json(recorded: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    cases = {
        ("traces", "list", "-s", missing, "--json"): "StoreError",
        ("traces", "show", "zzzz", "-s", recorded, "--json"): "TrajectoryNotFoundError",
        ("store", "info", "-s", missing, "--json"): "StoreError",
        ("adapters", "list", "-r", missing, "--json"): None,
        ("runs", "list", "--runs", missing, "--json"): "ConfigError",
        ("datasets", "show", missing, "--json"): None,
    }
    for args, kind in cases.items():
        result = ee(*args)
        assert result.exit_code == 1, (args, result.output)
        error = json_failure(result, kind)
        assert result.stderr.startswith(f"error: {error['message']}"), (args, result.stderr)  # the human line as it was


def test_a_usage_error_with_json_is_json_too_and_keeps_exit_2(recorded: Path) -> None:
    result = ee("traces", "list", "-s", recorded, "--limit", "0", "--json")
    assert result.exit_code == 2, result.output
    error = json_failure(result, "BadParameter")
    assert "--limit" in error["message"] and "Usage:" in result.stderr
    before_json = ee("traces", "list", "--json", "--status", "maybe", "-s", recorded)  # --json before the bad value
    assert before_json.exit_code == 2 and "maybe" in json_failure(before_json)["message"]
    without = ee("traces", "list", "-s", recorded, "--limit", "0")
    assert without.exit_code == 2 and without.stdout == "", "no --json: stdout stays empty"


def test_a_command_that_says_its_own_error_and_exits_1_gets_a_json_error() -> None:
    import typer

    from ee_middleware.cli.app import _json_failure

    # a command that wrote its error lines itself and exits 1 without its JSON answer (ee train did, and now ends
    # through the root's error line, which names the error's type: tests/cli/test_train_json_failure_type.py)
    kind, message, exit_code = _json_failure(typer.Exit(1))
    assert (kind, exit_code) == ("CommandFailed", 1) and "stderr" in message


def test_an_interrupted_json_command_says_so_as_json(monkeypatch: pytest.MonkeyPatch, recorded: Path) -> None:
    from ee_middleware.cli import traces

    def interrupted(spec: Any) -> Any:
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(traces, "open_existing_store", interrupted)
    result = ee("traces", "list", "-s", recorded, "--json")
    assert result.exit_code == 130, result.output
    error = json.loads(result.stdout)["error"]
    # the text of the stderr line, "interrupted: stopped by SIGTERM before it finished." (was "interrupted (SIGTERM)")
    assert error == {"type": "KeyboardInterrupt", "message": "stopped by SIGTERM before it finished.", "exit_code": 130}
    assert "interrupted: stopped by SIGTERM before it finished." in result.stderr


def test_a_bare_interrupt_names_the_signal_not_an_empty_pair_of_parentheses(monkeypatch: pytest.MonkeyPatch, recorded: Path) -> None:
    from ee_middleware.cli import traces

    def interrupted(spec: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C: no text (was "interrupted ()")

    monkeypatch.setattr(traces, "open_existing_store", interrupted)
    result = ee("traces", "list", "-s", recorded, "--json")
    assert json.loads(result.stdout)["error"]["message"] == "stopped by SIGINT before it finished."


def test_an_interrupted_replay_says_what_it_kept_in_its_json_error(monkeypatch: pytest.MonkeyPatch, recorded: Path) -> None:
    """The error's message is the text of the stderr line that says what was stored (was: "interrupted ()")."""
    from ee_middleware.replay import job as replay_job

    def interrupted(cfg: Any, on_start: Any = None, on_outcome: Any = None) -> Any:
        on_start(3)
        raise KeyboardInterrupt

    monkeypatch.setattr(replay_job, "run_replay", interrupted)  # (the command imports it when it runs)
    LocalExperienceStore(recorded).approve([t.id for t in LocalExperienceStore(recorded).iter_trajectories()], by="alice")
    result = ee("replay", "run", "-s", recorded, "--json")
    assert result.exit_code == 130, result.output
    error = json.loads(result.stdout)["error"]
    line = next(line for line in result.stderr.splitlines() if line.startswith("interrupted: "))
    assert error["message"] == line.removeprefix("interrupted: ")
    assert error["message"].startswith("the replay stopped (SIGINT") and "0 of 3 trajectories replayed and stored" in error["message"]


def test_a_replay_interrupted_after_storing_some_prints_its_summary_of_them_with_the_error(
    monkeypatch: pytest.MonkeyPatch, bfcl_store_path: Path
) -> None:
    """Was: the error object alone, while the job had stored trajectories: a script reading `ee replay run --json` could
    not tell what the stopped run kept. Now the summary of what was stored, with the same error object."""
    import ee_middleware.replay.executors as executors

    real = executors.write_outcome
    written: list[str] = []

    def stopped_after_the_first(store: Any, outcome: Any, **kwargs: Any) -> Any:
        if written:
            raise KeyboardInterrupt
        written.append(outcome.record.trajectory_id)
        return real(store, outcome, **kwargs)

    monkeypatch.setattr(executors, "write_outcome", stopped_after_the_first)
    monkeypatch.setattr("ee_middleware.replay.job.write_outcome", stopped_after_the_first)
    total = len(LocalExperienceStore(bfcl_store_path).trajectories(status="approved"))
    result = ee("replay", "run", "-s", bfcl_store_path, "--k", "2", "--json")
    assert result.exit_code == 130, result.output
    answer = json.loads(result.stdout)
    assert answer["error"]["type"] == "KeyboardInterrupt" and answer["error"]["exit_code"] == 130
    message = answer["error"]["message"]
    assert message.startswith("the replay stopped (SIGINT") and f"1 of {total} trajectories" in message, message
    assert answer["done"] == 1 and answer["branches"] > 0, answer
    assert len(LocalExperienceStore(bfcl_store_path).rollouts()) == answer["branches"]


def test_a_replay_interrupted_while_its_workers_close_prints_its_whole_summary(
    monkeypatch: pytest.MonkeyPatch, bfcl_store_path: Path
) -> None:
    """A signal while the workers closed their sandboxes, every trajectory stored (the executor's close raises it): the
    --json answer was the error object alone (a review)."""
    from ee_middleware.replay import job as replay_job

    real = replay_job.build_executor

    def closing_interrupted(*args: Any, **kwargs: Any) -> Any:
        executor = real(*args, **kwargs)
        close = executor.close

        def interrupted_close() -> None:
            close()
            raise KeyboardInterrupt

        executor.close = interrupted_close
        return executor

    monkeypatch.setattr(replay_job, "build_executor", closing_interrupted)
    total = len(LocalExperienceStore(bfcl_store_path).trajectories(status="approved"))
    result = ee("replay", "run", "-s", bfcl_store_path, "--k", "1", "--json")
    assert result.exit_code == 130, result.output
    answer = json.loads(result.stdout)
    assert answer["done"] == total and answer["error"]["type"] == "KeyboardInterrupt", answer


def test_success_output_and_the_commands_own_failure_json_are_kept(recorded: Path, tmp_path: Path) -> None:
    listing = ee("traces", "list", "-s", recorded, "--json")
    assert listing.exit_code == 0 and isinstance(json.loads(listing.stdout), list), "an answer as it was"
    # ingest prints its report, with its errors, as its failure: that one object alone
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    ingest = ee("traces", "ingest", garbage, "-s", tmp_path / "s2", "--json")
    assert ingest.exit_code == 1 and json.loads(ingest.stdout)["errors"], ingest.output
    # a refused prune prints its own {"status": "refused", ...}: that one object alone
    runs = RunsDir(tmp_path / "runs")
    with runs.lock():
        prune = ee("runs", "prune", "--keep", "1", "--runs", runs.root, "--json")
    assert prune.exit_code == 1 and json.loads(prune.stdout)["status"] == "refused", prune.output


@pytest.mark.parametrize("as_json", [False, True])
def test_a_command_that_says_nothing_when_interrupted_gets_the_interrupted_line(
    monkeypatch: pytest.MonkeyPatch, recorded: Path, as_json: bool
) -> None:
    """Sweep Z: ee bfcl record-experts, datasets build, experience eval and store compact stopped by Ctrl-C or SIGTERM
    exited 130 with stderr empty (with --json, the error object on stdout alone)."""
    from ee_middleware.cli import traces

    def interrupted(spec: Any) -> Any:
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(traces, "open_existing_store", interrupted)
    result = ee("traces", "list", "-s", recorded, *(["--json"] if as_json else []))
    assert result.exit_code == 130, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("interrupted: ")] == [
        "interrupted: stopped by SIGTERM before it finished."
    ]


def test_a_command_that_said_what_it_kept_is_not_said_interrupted_twice(monkeypatch: pytest.MonkeyPatch, recorded: Path) -> None:
    from ee_middleware.replay import job as replay_job

    def interrupted(cfg: Any, on_start: Any = None, on_outcome: Any = None) -> Any:
        on_start(3)
        raise KeyboardInterrupt

    monkeypatch.setattr(replay_job, "run_replay", interrupted)
    LocalExperienceStore(recorded).approve([t.id for t in LocalExperienceStore(recorded).iter_trajectories()], by="alice")
    result = ee("replay", "run", "-s", recorded)
    assert result.exit_code == 130, result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("interrupted: ")]
    assert line.startswith("interrupted: the replay stopped (SIGINT")
