"""Replaying a configuration again once its sandbox is fixed (``ee replay run --again``).

A replay configuration (``replay_id``: sandbox spec, policy, K, seed, settings) is replayed once: a re-run continues it
and does nothing new once it is done. A user whose sandbox answered the expert's own calls unlike production (a
misnamed parameter: fidelity mismatches) fixes the sandbox's code, not its spec, and was told to "replay again", which
did nothing. ``--again`` replays the configuration's trajectories as a new attempt (a new replay id; a plain re-run
then continues the newest attempt), and dataset builds use the newest attempt of a configuration that replayed a
trajectory, not the earlier ones it supersedes.

Real parts: trajectories recorded from a real LangGraph agent, the real replay job and ``PythonSandbox``, a real local
store, ``ee datasets build`` and ``ee replay run`` as a user runs them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.trainers.datasets import booking_world

pytestmark = pytest.mark.timeout(240)

SANDBOX = "tests.replay.test_again:make_sandbox"
POLICY = "tests.trainers.datasets.booking_world:BookingPolicy"
FIXED = {"value": False}
"""Whether the sandbox's code has been fixed (a module's code edited between two runs, as a user does)."""


class _CrashingSandbox(PythonSandbox):
    """A sandbox whose every call crashes (a backend it needs is down): the job records the trajectory as failed."""

    def execute(self, call: Any) -> Any:
        raise RuntimeError("the bookings backend is down")


def make_sandbox(**options: Any) -> PythonSandbox:
    """The app's sandbox: until fixed, its cancel_booking parameter is misnamed (every cancel answers 'Field required');
    FIXED "crash": every call crashes."""
    cancel = booking_world.cancel_booking if FIXED["value"] else booking_world.cancel_booking_misnamed
    tools = {"list_bookings": booking_world.list_bookings, "book_room": booking_world.book_room, "cancel_booking": cancel}
    return (_CrashingSandbox if FIXED["value"] == "crash" else PythonSandbox)(booking_world.build_world, tools=tools)


def _recorded(root: Path) -> None:
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import tool_call

    booking_world.record_trajectory(root, *booking_world.cancels_b1())
    booking_world.record_trajectory(
        root,
        [AIMessage(content="", tool_calls=[tool_call("list_bookings")]), AIMessage(content="You have two bookings.")],
        "What are my bookings?",
    )


def _iwm(store: Path, out: Path) -> pl.DataFrame:
    build_datasets(DatasetConfig.load(store=store, out=out, kinds="iwm"))
    return pl.read_parquet(out / "iwm.parquet").sort("trajectory_id", "step_index", "branch_index")


def test_a_fixed_sandbox_is_replayed_again_and_datasets_use_the_newest_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FIXED, "value", False)
    store = tmp_path / "experience"
    _recorded(store)
    reference = tmp_path / "reference"  # the same recordings, replayed once with the fixed sandbox: what a build should use
    shutil.copytree(store, reference)

    first = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2))
    assert first.done == 2 and first.fidelity_mismatches == 1

    FIXED["value"] = True  # the user fixes the sandbox's code; the spec stays the same
    same = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2))
    assert (same.replay_id, same.done, same.already_done) == (first.replay_id, 0, 2)  # a re-run continues: nothing new

    again = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2, again=True))
    assert again.replay_id != first.replay_id and again.attempt == 2
    assert (again.done, again.already_done, again.fidelity_mismatches) == (2, 0, 0)
    later = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2))  # a plain re-run: the newest attempt
    assert (later.replay_id, later.attempt, later.done, later.already_done) == (again.replay_id, 2, 0, 2)

    rows = _iwm(store, tmp_path / "data")
    summary = json.loads((tmp_path / "data" / "datasets.json").read_text())
    assert set(rows["replay_id"].drop_nulls()) == {again.replay_id}, "the superseded attempt's rollouts are not used (null: expert rows)"
    left_out = summary["fidelity_mismatches_left_out"]
    assert (left_out["rollouts"], left_out["replays"]) == (0, []), "the superseded attempt's mismatches are not held against the build"
    assert not any("Field required" in text for text in rows["completion"].to_list())

    fixed_once = run_replay(ReplayConfig.load(store=reference, sandbox=SANDBOX, policy=POLICY, k=2))
    expected = _iwm(reference, tmp_path / "reference-data")
    assert rows.drop("id", "replay_id", "source_hash").equals(expected.drop("id", "replay_id", "source_hash")), (
        "the same rows as one replay with the fixed sandbox"
    )
    assert fixed_once.replay_id == first.replay_id  # attempt 1 of the configuration keeps the id it always had

    for chosen in (first.replay_id, again.replay_id):  # --replay-id names the configuration by any of its attempts
        assert set(_iwm_of(store, tmp_path / f"chosen-{chosen}", chosen)["replay_id"].drop_nulls()) == {again.replay_id}


def _iwm_of(store: Path, out: Path, replay_id: str) -> pl.DataFrame:
    build_datasets(DatasetConfig.load(store=store, out=out, kinds="iwm", replay_id=replay_id))
    return pl.read_parquet(out / "iwm.parquet")


def test_trajectories_an_attempt_has_not_replayed_yet_keep_the_earlier_attempts_rollouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt cut short (--limit, a killed run, ee improve's budgets) or that failed or skipped a trajectory (its
    snapshot gone for now) supersedes only the trajectories it finished: the others keep the earlier attempt's rollouts,
    in a build of every replay and in one of the configuration (--replay-id, as ee improve builds)."""
    monkeypatch.setitem(FIXED, "value", True)
    store = tmp_path / "experience"
    _recorded(store)
    first = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2))
    again = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2, again=True, limit=1))
    assert again.done == 1
    for replay_id in (None, first.replay_id, again.replay_id):
        out = tmp_path / f"data-{replay_id}"
        rows = _iwm(store, out) if replay_id is None else _iwm_of(store, out, replay_id)
        by_trajectory = dict(
            rows.filter(pl.col("replay_id").is_not_null()).group_by("trajectory_id").agg(pl.col("replay_id").unique()).iter_rows()
        )
        assert sorted(map(tuple, by_trajectory.values())) == sorted([(first.replay_id,), (again.replay_id,)]), (replay_id, by_trajectory)

    from ee_middleware.records import ReplayRecord
    from ee_middleware.store.local import LocalExperienceStore

    opened = LocalExperienceStore(store)  # a third attempt that failed on the trajectory the second one finished
    [finished] = [r for r in opened.replays(replay_id=again.replay_id).iter_rows(named=True) if r["status"] == "done"]
    details = {"attempt_of": first.replay_id, "attempt": 3}
    opened.write_replay(
        ReplayRecord(
            replay_id="third",
            trajectory_id=finished["trajectory_id"],
            status="failed",
            reason="boom",
            policy="p",
            sandbox="s",
            k=2,
            seed=0,
            details=details,
        )
    )
    opened.close()
    rows = _iwm(store, tmp_path / "after-failure")
    assert again.replay_id in set(rows["replay_id"].drop_nulls()), "a failed attempt supersedes nothing"


def test_again_is_no_setting_of_a_file(tmp_path: Path) -> None:
    """In a TOML file, again (or attempt) would make every run, ee improve's nightly one too, start a new attempt."""
    from ee_middleware.errors import ConfigError

    toml = tmp_path / "replay.toml"
    toml.write_text("[replay]\nagain = true\n")
    with pytest.raises(ConfigError, match="again in \\[replay\\] is not a setting"):
        ReplayConfig.load(toml, store=tmp_path)


def test_the_cli_replays_again_and_says_which_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FIXED, "value", True)
    store = tmp_path / "experience"
    _recorded(store)
    common = ["replay", "run", "--store", str(store), "--sandbox", SANDBOX, "--policy", POLICY, "-k", "2", "--no-progress", "--json"]
    runner = CliRunner()
    once = runner.invoke(app, common)
    assert once.exit_code == 0, once.output
    again = runner.invoke(app, [*common, "--again"])
    assert again.exit_code == 0, again.output
    first, second = json.loads(once.stdout), json.loads(again.stdout)
    assert (first["attempt"], second["attempt"]) == (1, 2) and first["replay_id"] != second["replay_id"]
    assert second["done"] == 2 and second["already_done"] == 0
    listed = runner.invoke(app, ["replay", "list", "--store", str(store), "--json"])
    assert listed.exit_code == 0, listed.output


def test_the_improve_job_replays_and_builds_from_the_newest_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ee improve`'s replay stage continues, and its datasets use, the attempt `ee replay run --again` started: not the
    first one, superseded, whose id its config alone gives."""
    from ee_middleware.jobs.config import ImproveConfig

    monkeypatch.setitem(FIXED, "value", True)
    store = tmp_path / "experience"
    _recorded(store)
    first = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2))
    again = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2, again=True))
    toml = tmp_path / "improve.toml"
    toml.write_text(f'[replay]\nsandbox = "{SANDBOX}"\npolicy = "{POLICY}"\nk = 2\n')
    common = {"app": "rooms", "registry": str(tmp_path / "registry"), "runs": tmp_path / "runs", "base_model": str(tmp_path / "base")}
    config = ImproveConfig.load(toml, store=str(store), **common).replay_config()
    assert (config.replay_id, config.attempt) == (again.replay_id, 2) and config.configuration_id == first.replay_id
    assert ImproveConfig.load(toml, store=str(tmp_path / "none"), **common).replay_config().attempt == 1  # no store yet


def test_the_replay_buffer_serves_the_newest_attempt_not_the_broken_sandbox_it_superseded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experience model's replay buffer (an experience sandbox's index, refreshed as it runs, and the held-out eval's)
    reads rollouts as dataset builds select them: before the fix, the broken attempt's rollouts but those its fidelity
    mismatch leaves out (every 'Field required' answer); once replayed again, only the newest attempt's."""
    from ee_middleware.replay.retrieval import TransitionIndex
    from tests.replay.test_retrieval_selection import buffers_like_builds, built_rollouts, refreshed, served, served_rollouts

    monkeypatch.setitem(FIXED, "value", False)
    store = tmp_path / "experience"
    _recorded(store)
    first = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2))
    assert first.fidelity_mismatches == 1
    running = refreshed(TransitionIndex.of(), store)  # a long-running experience sandbox's buffer, before and after the fix
    assert served_rollouts(running) == built_rollouts(store)
    before = served(running)
    assert {t.replay_id for t in before if t.replay_id} == {first.replay_id}, "its answers before the mismatch are in use"
    assert not [t for t in before if "Field required" in t.observation], "the mismatching tool's answers are not"

    FIXED["value"] = True
    again = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2, again=True))
    assert (again.done, again.fidelity_mismatches) == (2, 0)
    for name, (index, _) in buffers_like_builds(store, running).items():
        transitions = served(index)
        assert {t.replay_id for t in transitions if t.replay_id} == {again.replay_id}, name
        assert any(t.tool == "cancel_booking" and t.replay_id for t in transitions), name


def test_an_attempt_that_failed_every_trajectory_keeps_the_earlier_attempts_rollouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ee replay run --again with a sandbox that still crashes fails every trajectory; a build of the configuration by
    that attempt's id (as ee improve builds) kept none of the earlier attempt's good rollouts: the failed records did not
    name their configuration (found by review)."""
    monkeypatch.setitem(FIXED, "value", True)
    store = tmp_path / "experience"
    _recorded(store)
    first = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2))
    FIXED["value"] = "crash"
    again = run_replay(ReplayConfig.load(store=store, sandbox=SANDBOX, policy=POLICY, k=2, again=True))
    assert again.attempt == 2 and len(again.failed) == 2 and again.done == 0
    for replay_id in (first.replay_id, again.replay_id, None):
        out = tmp_path / f"data-{replay_id}"
        rows = _iwm(store, out) if replay_id is None else _iwm_of(store, out, replay_id)
        assert set(rows["replay_id"].drop_nulls()) == {first.replay_id}, replay_id
