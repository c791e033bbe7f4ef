"""The replay job with a user's own parts (plug-in sweep defects 2, 3, 4 and 6): a policy factory without parameters, a
policy whose backend is down, a user's chat client as the policy, a store that subclasses the local one under
``--workers 2``. Each trajectory is recorded through a real ``create_agent`` graph (``ScriptedChatModel``) by
``record_experience`` and replayed in a real :class:`PythonSandbox` (``tests.replay.kv_world``); the parts are in
``tests.replay.plugin_parts``, named by spec as a user names theirs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import PolicyError
from ee_middleware.records import Rollout
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay, select_trajectories
from ee_middleware.store import LocalExperienceStore
from tests.replay.kv_world import record_kv
from tests.replay.plugin_parts import DOWN

SANDBOX = "tests.replay.kv_world:make_sandbox"
PARTS = "tests.replay.plugin_parts"
CALLS: list[tuple[str, dict[str, Any]]] = [("kv_set", {"key": "a", "value": "1"}), ("kv_get", {"key": "a"}), ("kv_get", {"key": "b"})]


@pytest.fixture(scope="module")
def kv_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kv") / "store"
    record_kv(root, CALLS, runs=4)
    return root


@pytest.fixture
def kv_store(kv_template: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "store"
    shutil.copytree(kv_template, target)
    return target


def _rollouts(root: Path) -> list[Rollout]:
    store = LocalExperienceStore(root, create=False)
    try:
        return list(store.iter_rollouts())
    finally:
        store.close()


def _proposers(root: Path) -> set[str]:
    return {r.proposer.policy for r in _rollouts(root)}


# --- defect 3: a policy factory gets only what the user set, or what it takes ---------------------------------------


def test_a_policy_factory_without_parameters_replays_and_one_naming_temperature_gets_it(kv_store: Path) -> None:
    """README: a policy is `package.module:factory`. `def make_policy(): ...` was refused for temperature, top_p and
    max_new_tokens, settings the user never set (the job passed the sampling defaults to every policy but mutate)."""
    summary = run_replay(ReplayConfig(store=kv_store, sandbox=SANDBOX, policy=f"{PARTS}:make_policy", k=2))
    assert (summary.done, summary.failed, summary.branches) == (4, {}, 4 * 3 * 2)
    assert _proposers(kv_store) == {"lookups"}

    other = kv_store.parent / "other"
    import shutil

    shutil.copytree(kv_store, other)
    run_replay(ReplayConfig(store=other, sandbox=SANDBOX, policy=f"{PARTS}:make_policy_with_temperature", k=2))
    assert "lookups-t1.0" in _proposers(other), "a factory naming a sampling option gets its value, as before"


def test_a_sampling_option_the_user_set_is_still_refused_by_a_policy_that_takes_none(kv_store: Path) -> None:
    """Told by the build (a factory returning a chat client takes it, its wrapper samples with it), in the worker: the
    job's process does not call a user's factory."""
    config = ReplayConfig(store=kv_store, sandbox=SANDBOX, policy=f"{PARTS}:make_policy", k=2, temperature=0.5)
    with pytest.raises(PolicyError, match=r"takes no option temperature\. Add a keyword parameter"):
        run_replay(config)
    assert _rollouts(kv_store) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_the_job_does_not_build_a_users_policy_in_its_own_process(
    kv_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Was (dd19bc3): the job built the user's policy once more in its own process to check its options (and closed
    it), so a factory that loads a model paid for the load once more before the workers built theirs (--workers 1:
    twice in one process), and on a GPU the job's process kept the first load's memory. Its factory is called once
    per worker, and in the job's process only when the job replays there (--workers 1)."""
    builds = tmp_path / "builds.log"
    monkeypatch.setenv("EE_TEST_POLICY_BUILDS", str(builds))
    config = ReplayConfig(store=kv_store, sandbox=SANDBOX, policy=f"{PARTS}:make_loaded_policy", k=2, workers=workers)
    summary = run_replay(config)
    assert (summary.done, summary.failed) == (4, {})
    pids = [int(pid) for pid in builds.read_text().split()]
    assert len(pids) == len(set(pids)) == workers, pids
    assert (os.getpid() in pids) is (workers == 1)


def test_a_policy_option_its_factory_does_not_take_is_refused_before_the_progress_without_building_it(
    kv_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = tmp_path / "builds.log"
    monkeypatch.setenv("EE_TEST_POLICY_BUILDS", str(builds))
    started: list[int] = []
    config = ReplayConfig(
        store=kv_store, sandbox=SANDBOX, policy=f"{PARTS}:make_loaded_policy", k=2, workers=2, policy_settings={"cache_dri": "/m"}
    )
    with pytest.raises(PolicyError, match=r"takes no option cache_dri \(did you mean cache_dir\?\)"):
        run_replay(config, on_start=started.append)
    assert started == [] and not builds.exists()


def test_a_policy_that_cannot_be_built_fails_before_the_progress_starts(kv_store: Path) -> None:
    started: list[int] = []
    config = ReplayConfig(store=kv_store, sandbox=SANDBOX, policy=f"{PARTS}:no_such_factory", k=2, workers=2)
    with pytest.raises(PolicyError, match="has no attribute 'no_such_factory'") as info:
        run_replay(config, on_start=started.append)
    assert started == [] and "re-run the same command" not in str(info.value)


# --- defect 2: a policy that raises at every state ---------------------------------------------------------------------


def test_a_policy_raising_at_every_state_fails_its_trajectories_with_the_error_and_a_later_run_replays_them(kv_store: Path) -> None:
    """A plug-in policy whose backend is down: the run exited 0, stored mutate's refill under the policy's replay id,
    showed the exception nowhere and marked every trajectory done, so that after fixing it nothing was replayed."""
    config = ReplayConfig(store=kv_store, sandbox=SANDBOX, policy=f"{PARTS}:make_down_policy", k=2)
    summary = run_replay(config)
    assert summary.done == 0 and len(summary.failed) == 4 and summary.branches == 0
    assert all(DOWN in reason and "raised at every state (3)" in reason for reason in summary.failed.values())
    assert summary.rejected_by_reason == {"policy_error": 12}
    assert summary.policy_error_examples and DOWN in summary.policy_error_examples[0]["error"]
    assert _rollouts(kv_store) == [], "mutate's refill is not stored as the policy's alternatives"
    store = LocalExperienceStore(kv_store, create=False)
    try:
        records = store.replays(replay_id=summary.replay_id).to_dicts()
        assert {r["status"] for r in records} == {"failed"}
        details = [json.loads(r["details_json"]) for r in records]
        assert all(DOWN in d["policy_error_examples"][0]["error"] for d in details)
        todo, done = select_trajectories(store, config)
    finally:
        store.close()
    assert (len(todo), done) == (4, 0), "the next run (the policy fixed) replays them again"


def test_a_policy_raising_at_some_states_is_done_with_the_errors_kept(kv_store: Path) -> None:
    summary = run_replay(ReplayConfig(store=kv_store, sandbox=SANDBOX, policy=f"{PARTS}:make_policy_down_at_first", k=2))
    assert (summary.done, summary.failed) == (4, {})
    assert summary.rejected_by_reason == {"policy_error": 4}
    assert [e["step"] for e in summary.policy_error_examples] == [summary.policy_error_examples[0]["step"]] * 4
    assert all(DOWN in e["error"] for e in summary.policy_error_examples)
    assert "lookups" not in _proposers(kv_store) and "down" in _proposers(kv_store)


def test_the_cli_shows_the_policy_errors_and_its_note_names_the_policy(kv_store: Path) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    args = ["replay", "run", "--store", str(kv_store), "--sandbox", SANDBOX, "--k", "2", "--no-progress"]
    first = CliRunner().invoke(app, [*args, "--policy", f"{PARTS}:make_policy_down_at_first"])
    assert first.exit_code == 0, first.output
    assert "policy error" in first.output and "refused the connection" in " ".join(first.output.split())
    again = CliRunner().invoke(app, [*args, "--policy", f"{PARTS}:make_policy_down_at_first"])
    assert "the policy's code" in " ".join(again.output.split())
    down = CliRunner().invoke(app, [*args, "--policy", f"{PARTS}:make_down_policy"])
    assert down.exit_code == 1 and "raised at every state" in " ".join(down.output.split())


def test_a_served_policy_that_is_down_still_stops_the_job(kv_store: Path) -> None:
    """README: an `openai:` policy whose server is down stops the job at once (a ModelError, not a counted policy error)."""
    from ee_middleware.errors import ModelServerError

    config = ReplayConfig(store=kv_store, sandbox=SANDBOX, policy="openai:http://127.0.0.1:9/v1#m", k=2, policy_settings={"retries": 0})
    with pytest.raises(ModelServerError, match=r"127\.0\.0\.1:9"):
        run_replay(config)


# --- defect 6: a user's chat client as the policy -----------------------------------------------------------------------


def test_a_chat_client_factory_is_asked_as_a_model_is(kv_store: Path) -> None:
    summary = run_replay(ReplayConfig(store=kv_store, sandbox=SANDBOX, policy=f"{PARTS}:make_client", k=2, temperature=0.4))
    assert (summary.done, summary.failed) == (4, {})
    mine = [r.proposer for r in _rollouts(kv_store) if r.proposer.policy == f"{PARTS}:make_client"]
    assert mine and {(p.model, p.temperature) for p in mine} == {("kv-gateway", 0.4)}


# --- defect 4: workers write through a store that subclasses the local one ----------------------------------------------


def test_workers_write_through_a_store_that_subclasses_the_local_one(
    kv_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --workers 2, workers opened local:ROOT for any store with a root and wrote through the spool: the subclass's
    write_replay (an audit log, here) never saw their batches."""
    log = tmp_path / "audit.log"
    monkeypatch.setenv("EE_TEST_AUDITED_STORE", str(kv_store))
    monkeypatch.setenv("EE_TEST_AUDIT_LOG", str(log))
    summary = run_replay(
        ReplayConfig(store=f"{PARTS}:audited_store", sandbox=SANDBOX, policy="tests.replay.kv_world:Lookups", k=2, workers=2)
    )
    assert summary.done == 4
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(line["trajectory"] for line in lines) == sorted(summary_ids(kv_store))
    assert any(line["pid"] != os.getpid() for line in lines), "the workers wrote, through the user's store"
    assert len(_rollouts(kv_store)) == summary.branches > 0


def summary_ids(root: Path) -> list[str]:
    store = LocalExperienceStore(root, create=False)
    try:
        return store.trajectories()["id"].to_list()
    finally:
        store.close()
