"""The replay job over a real store: resumable, idempotent, the same on 1 or 2 workers and on Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pytest

from ee_middleware.errors import ConfigError, SandboxError
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from tests.conftest import BFCL_ENTRIES

A_CALL = '<tool_call>{"name": "pwd", "arguments": {}}</tool_call>'
"""A served policy's answer: a usable call (a model that answers none fails the trajectory, see test_unusable_policy)."""
LOOKUP_CALL = '<tool_call>{"name": "lookup", "arguments": {"key": "b"}}</tool_call>'
"""The same in :func:`lookup_sandbox`'s world."""

SLOW = "tests.replay.sandboxes_for_tests:SlowBFCLSandbox"


def _rollouts(path: Path) -> pl.DataFrame:
    return LocalExperienceStore(path).rollouts().drop("created_at", "duration_ms").sort("id")


def test_a_run_replays_every_approved_trajectory_and_a_rerun_does_nothing_new(bfcl_store_path: Path) -> None:
    config = ReplayConfig.load(store=bfcl_store_path, k=3)
    summary = run_replay(config)
    assert summary.selected == summary.done == BFCL_ENTRIES and not summary.failed and not summary.skipped
    assert summary.fidelity_mismatches == 0 and summary.branches == 3 * summary.states
    store = LocalExperienceStore(bfcl_store_path)
    assert store.rollouts().height == summary.branches
    assert set(store.replays()["status"].to_list()) == {"done"}

    again = run_replay(config)
    assert again.selected == 0 and again.already_done == BFCL_ENTRIES
    assert store.rollouts().height == summary.branches

    other_k = run_replay(ReplayConfig.load(store=bfcl_store_path, k=2))
    assert other_k.selected == BFCL_ENTRIES and other_k.replay_id != summary.replay_id
    assert store.rollouts(replay_id=other_k.replay_id).height == other_k.branches


def test_a_second_job_of_the_same_configuration_is_refused_while_one_runs(bfcl_store_path: Path) -> None:
    # Sweep D: two overlapping runs (a cron job and a manual one) both replayed every trajectory: every tool call made
    # twice, every rollout stored twice. The lock is held as a running job holds it (another open file, as in another
    # process); another configuration runs beside it.
    from ee_middleware.replay.job import ReplayRunningError, replaying_alone, with_attempt

    store = LocalExperienceStore(bfcl_store_path)
    config = with_attempt(store, ReplayConfig.load(store=bfcl_store_path, k=2))
    with replaying_alone(store, config.replay_id):
        with pytest.raises(ReplayRunningError, match=rf"Another replay of this configuration \(replay id {config.replay_id}\) is running"):
            run_replay(ReplayConfig.load(store=bfcl_store_path, k=2))
        assert store.replays().height == 0
        other = run_replay(ReplayConfig.load(store=bfcl_store_path, k=3))
        assert other.done == BFCL_ENTRIES
    assert run_replay(ReplayConfig.load(store=bfcl_store_path, k=2)).done == BFCL_ENTRIES  # released
    assert not list(bfcl_store_path.glob("replay-*.lock"))  # nothing left in the store's folder


def test_two_worker_processes_store_the_same_rollouts_as_one(bfcl_store_path: Path, tmp_path: Path) -> None:
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(bfcl_store_path, twin)
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=4, workers=1))
    summary = run_replay(ReplayConfig.load(store=twin, k=4, workers=2))
    assert summary.done == BFCL_ENTRIES
    assert _rollouts(twin).equals(_rollouts(bfcl_store_path))


def test_a_two_worker_job_leaves_no_worker_or_fork_server_behind(bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from ee_middleware.replay import job

    monkeypatch.setattr(job, "light_in_process", lambda config: False)  # the first outcome comes from a worker

    def own_processes() -> set[int]:
        # multiprocessing's resource tracker serves the whole process (every pool, every job) and ends with it
        return {c.pid for c in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())}

    before = own_processes()
    seen: list[set[int]] = []
    summary = run_replay(
        ReplayConfig.load(store=bfcl_store_path, k=2, workers=2), on_outcome=lambda o, n, total: seen.append(own_processes())
    )
    assert summary.done == BFCL_ENTRIES
    assert len(seen[0] - before) >= 3  # while it runs: the fork server and the two workers it forked
    assert own_processes() == before


def test_a_killed_run_continues_where_it_stopped(bfcl_store_path: Path, tmp_path: Path) -> None:
    import shutil

    reference = tmp_path / "reference"
    shutil.copytree(bfcl_store_path, reference)
    run_replay(ReplayConfig.load(store=reference, k=3, sandbox=SLOW))

    env = {**os.environ, "EE_TEST_RESET_DELAY": "0.5", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "ee_middleware.cli",
        "replay",
        "run",
        "--store",
        str(bfcl_store_path),
        "--k",
        "3",
        "--sandbox",
        SLOW,
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    store = LocalExperienceStore(bfcl_store_path)
    deadline = time.monotonic() + 60
    while store.replays().height < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = store.replays().height
    assert 2 <= finished < BFCL_ENTRIES, "the run should have been killed part-way"

    summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=3, sandbox=SLOW))
    assert summary.already_done == finished and summary.selected == BFCL_ENTRIES - finished
    assert _rollouts(bfcl_store_path).equals(_rollouts(reference))


def test_a_failing_trajectory_is_recorded_and_retried_on_the_next_run(bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ReplayConfig.load(store=bfcl_store_path, k=2, sandbox="tests.replay.sandboxes_for_tests:FlakyBFCLSandbox")
    summary = run_replay(config)
    assert len(summary.failed) == 1 and "backend connection lost" in next(iter(summary.failed.values()))
    # where the sandbox's own code raised it (sweep D: the bare exception named neither the plug-in nor its line)
    reason = next(iter(summary.failed.values()))
    assert reason.startswith("RuntimeError: backend connection lost (raised at tests/replay/sandboxes_for_tests.py:"), reason
    assert reason.endswith(', in execute: `raise RuntimeError("backend connection lost")`)'), reason
    assert summary.done == BFCL_ENTRIES - 1
    monkeypatch.setenv("EE_TEST_FLAKY_FIXED", "1")
    retry = run_replay(config)
    assert retry.selected == 1 and retry.done == 1 and not retry.failed


def test_ray_executor_on_a_local_cluster_stores_the_same_rollouts(bfcl_store_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(bfcl_store_path, twin)
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, limit=3))

    def the_jobs_own(signum: int, frame: object) -> None:  # as `ee improve` stops on SIGTERM: run marked, reported
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, the_jobs_own)
    try:
        summary = run_replay(ReplayConfig.load(store=twin, k=2, limit=3, executor="ray", workers=2))
        # ray.init put Ray's own handler in place and ray.shutdown left it: a later SIGTERM killed `ee improve` at once,
        # its run left 'running' and unreported (found by the process sweep)
        assert signal.getsignal(signal.SIGTERM) is the_jobs_own
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert summary.done == 3 and summary.executor == "ray"
    assert _rollouts(twin).equals(_rollouts(bfcl_store_path))


def test_bad_configuration_is_reported_before_any_work(bfcl_store_path: Path) -> None:
    with pytest.raises(ConfigError, match="k"):
        ReplayConfig.load(store=bfcl_store_path, k=0)
    with pytest.raises(ConfigError, match=r"The replay job needs --store \(or store in the \[replay\] table of the --config file\)"):
        ReplayConfig.load()
    with pytest.raises(SandboxError, match="Unknown sandbox 'nope'"):
        run_replay(ReplayConfig.load(store=bfcl_store_path, sandbox="nope"))
    with pytest.raises(SandboxError, match="is not a Sandbox: it needs the sandbox methods"):
        run_replay(ReplayConfig.load(store=bfcl_store_path, sandbox="tests.replay.sandboxes_for_tests:not_a_sandbox"))


def test_config_loads_from_toml_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "replay.toml"
    path.write_text('[replay]\nstore = "s"\nk = 12\npolicy = "mutate"\nworkers = 2\n')
    config = ReplayConfig.load(path, workers=1)
    assert (config.k, config.workers, str(config.store)) == (12, 1, "s")
    path.write_text("[replay]\nstore = 's'\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        ReplayConfig.load(path)


def test_the_job_freezes_what_the_process_held_only_while_it_runs(bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects alive before the job are out of the collector's way during it, and back in its care afterwards;
    a caller that froze objects itself finds them frozen still."""
    import gc

    from ee_middleware.replay import job

    seen: list[int] = []
    real_build = job.build_executor

    class _Watching:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def map(self, trajectories: object) -> Iterator[object]:
            for outcome in self.inner.map(trajectories):
                seen.append(gc.get_freeze_count())
                yield outcome

        def close(self) -> None:
            self.inner.close()

    monkeypatch.setattr(job, "build_executor", lambda config, spec, **options: _Watching(real_build(config, spec, **options)))
    gc.unfreeze()
    held = [object() for _ in range(10)]  # noqa: F841 - alive during the run
    assert gc.get_freeze_count() == 0
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2))
    assert seen and all(count > 0 for count in seen), "frozen while the job runs"
    assert gc.get_freeze_count() == 0, "unfrozen afterwards"

    marker: list[object] = []  # a container the collector tracks
    gc.freeze()
    try:
        run_replay(ReplayConfig.load(store=bfcl_store_path, k=3))
        # Frozen objects can still die by reference counting, so the count may shrink; unfrozen, the marker would be back in generation 2.
        assert gc.get_freeze_count() > 0 and not any(o is marker for o in gc.get_objects(generation=2)), (
            "the caller's own freeze is left alone"
        )
    finally:
        gc.unfreeze()
    assert any(o is marker for o in gc.get_objects(generation=2))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_job_proposes_with_a_served_model(workers: int, bfcl_store_path: Path, serve: Any) -> None:
    """``--policy openai:URL#MODEL`` against a real HTTP server: the job's sampling settings reach it under the
    server's names (it once failed at once: the policy was given ``max_new_tokens``, which it does not take)."""
    model = serve(lambda messages: A_CALL)
    summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=workers, policy=model.spec, max_new_tokens=48))
    assert summary.done == BFCL_ENTRIES and summary.failed == {}
    assert model.requests and {(r["max_tokens"], r["temperature"]) for r in model.requests} == {(48, 1.0)}
    assert {r["n"] for r in model.requests} == {2, 1}, "n=K, then the answer the stand-in (one choice per request) left out"
    rejected = summary.rejected_by_reason
    assert rejected.get("duplicate", 0) + rejected.get("expert_action", 0) >= 1  # the answers were read as calls


class _InFlight:
    """Answers a served policy's requests (one call, so the mutation policy refills the rest of every state) and counts how many are in flight at once. Until two have met, a request waits (10 s at most, once) for a
    second one: a job that asks for a trajectory's states together makes them meet, one that asks in turn never does."""

    def __init__(self, wait_for_company: bool, answer: str = A_CALL) -> None:
        import threading

        self.wait_for_company = wait_for_company
        self.answer = answer
        self.now = self.most = 0
        self.lock = threading.Condition()

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.lock.notify_all()
            if self.wait_for_company and not self.lock.wait_for(lambda: self.most >= 2, timeout=10):
                self.wait_for_company = False  # none came: the job asks one at a time (and the test fails)
        try:
            return self.answer
        finally:
            with self.lock:
                self.now -= 1


def _propose_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("ee-replay-propose")]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_served_policy_is_asked_for_a_trajectorys_states_at_once_and_gives_the_same_rollouts(
    workers: int, bfcl_store_path: Path, tmp_path: Path, serve: Any
) -> None:
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(bfcl_store_path, twin)
    in_flight = _InFlight(wait_for_company=False)
    model = serve(in_flight)
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, policy=model.spec, requests_in_flight=1))
    assert in_flight.most == 1
    in_flight.most, in_flight.wait_for_company = 0, True
    config = ReplayConfig.load(store=twin, k=2, workers=workers, policy=model.spec)
    assert config.proposal_requests == 8  # the default for a served policy
    summary = run_replay(config)
    assert summary.done == BFCL_ENTRIES and summary.failed == {}
    if workers == 1:  # (two workers' requests meet anyway)
        assert in_flight.most >= 2
    assert _rollouts(twin).equals(_rollouts(bfcl_store_path))
    assert _propose_threads() == [], "the job's request threads end with it"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_served_policy_that_is_down_stops_the_job_with_its_address(workers: int, bfcl_store_path: Path) -> None:
    import socket

    from ee_middleware.errors import ModelServerError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(ModelServerError, match=f"127.0.0.1:{port}.*0 trajectories replayed before this are saved") as stopped:
        run_replay(
            ReplayConfig.load(
                store=bfcl_store_path, k=2, workers=workers, policy=f"openai:http://127.0.0.1:{port}/v1#m", requests_in_flight=4
            )
        )
    assert stopped.value.url.startswith(f"http://127.0.0.1:{port}/v1")
    assert _propose_threads() == []
    store = LocalExperienceStore(bfcl_store_path)
    assert store.rollouts().height == 0 and store.replays().height == 0, "no trajectory is marked failed: the server was down"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_a_served_policy_refuses_fails_its_trajectory_alone(workers: int, bfcl_store_path: Path) -> None:
    """A 400 (a state longer than the model's context) fails that trajectory; a 404 (no such model) stops the job. With
    2 workers, each holding its next trajectory (its requests asked for), too: a held one is not lost or left asking."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ee_middleware.errors import ModelRequestError
    from ee_middleware.testing.http import send_json, serving

    refuse = {"status": 400}

    class Refusing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            send_json(self, {"error": {"message": f"refused with {refuse['status']}"}}, refuse["status"])

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Refusing)) as url:
        summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=workers, policy=f"openai:{url}#m", limit=4))
        assert summary.done == 0 and len(summary.failed) == 4
        assert all("ModelRequestError" in reason and "400" in reason for reason in summary.failed.values())
        refuse["status"] = 404
        with pytest.raises(ModelRequestError, match="404"):
            run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=workers, policy=f"openai:{url}#m"))
        assert _propose_threads() == []


def lookup_sandbox() -> Any:
    """A key-value world with one read tool (named by spec in the test below)."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(lambda env: dict(env or {}), tools={"lookup": lambda world, key: f"{key} = {world.get(key, 'unknown')}"})


def _one_state_store(path: Path, trajectories: int) -> None:
    """Trajectories of one tool call each: a job that asks only for one trajectory's states at a time asks one by one."""
    import datetime as dt

    from ee_middleware.records import Trajectory

    schema = {"type": "object", "properties": {"key": {"type": "string", "enum": ["a", "b", "c", "d"]}}, "required": ["key"]}
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Read a key.", "parameters": schema}}]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat()
    store = LocalExperienceStore(path)
    for i in range(trajectories):
        state = [{"role": "user", "content": f"What is a? ({i})"}]
        call = {"id": f"c{i}", "name": "lookup", "arguments": {"key": "a"}}
        step = {"trajectory_id": f"t{i}", "index": 0, "decision_index": 0, "state": state}
        trajectory = {"id": f"t{i}", "app": "kv", "task": state[0]["content"], "tools": tools, "messages": state}
        trajectory |= {"started_at": now, "ended_at": now, "environment": {"a": 1, "b": 2, "c": 3}}
        trajectory["steps"] = [{**step, "action": {"kind": "tool_call", "tool_call": call}, "observation": {"content": "a = 1"}}]
        store.write([Trajectory.parse(trajectory)])
    store.approve([f"t{i}" for i in range(trajectories)], by="test")
    store.close()


def test_a_served_policy_is_asked_for_the_next_trajectorys_states_while_one_replays(tmp_path: Path, serve: Any) -> None:
    one, ahead = tmp_path / "one", tmp_path / "ahead"
    _one_state_store(one, 5)
    _one_state_store(ahead, 5)
    in_flight = _InFlight(wait_for_company=False, answer=LOOKUP_CALL)
    model = serve(in_flight)
    options = {"k": 2, "policy": model.spec, "sandbox": f"{__name__}:lookup_sandbox"}
    run_replay(ReplayConfig.load(store=one, requests_in_flight=1, **options))
    assert in_flight.most == 1
    in_flight.most, in_flight.wait_for_company = 0, True
    summary = run_replay(ReplayConfig.load(store=ahead, **options))
    assert summary.done == 5 and summary.branches == 10 and summary.failed == {}
    assert in_flight.most >= 2, "one trajectory's only state met the next one's"
    assert _rollouts(ahead).equals(_rollouts(one))
    assert _propose_threads() == []


class _Overlaps:
    """Answers like :class:`_InFlight` and records when each request came and went (and which trajectory it was for).
    Until ``company`` requests have been in flight at once, a request waits (10 s at most, once) for the others: a job
    whose workers each ask for one trajectory's only state at a time never has more than one request per worker."""

    def __init__(self, company: int) -> None:
        import threading

        self.company = company
        self.now = self.most = 0
        self.spans: list[tuple[float, float, str]] = []
        self.lock = threading.Condition()

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        task = next(str(m["content"]) for m in messages if m["role"] == "user")
        with self.lock:
            came = time.monotonic()
            self.now += 1
            self.most = max(self.most, self.now)
            self.lock.notify_all()
            if self.company and not self.lock.wait_for(lambda: self.most >= self.company, timeout=10):
                self.company = 0  # it never came: the workers ask one at a time each (and the test fails)
            self.now -= 1
            self.spans.append((came, time.monotonic(), task))
        return LOOKUP_CALL

    def overlapping_tasks(self) -> int:
        """The most requests for distinct trajectories in flight at one moment."""
        return max(len({task for came, went, task in self.spans if came <= moment < went}) for moment, _, _ in self.spans)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_with_two_workers_a_fake_server_is_asked_for_each_workers_next_trajectory_while_one_replays(
    executor: str, tmp_path: Path, serve: Any
) -> None:
    """Trajectories of one state each, 2 workers: without look-ahead a worker has one request in flight (its current
    trajectory's only state), so the server never sees more than 2 (3 while the job replays itself as the workers start);
    with it, each worker asks for its next trajectory while its current one is answered and replays: 4 at once, for 4
    trajectories. The stored rollouts equal one worker's one-at-a-time ones, and no request thread is left."""
    if executor == "ray":
        pytest.importorskip("ray")
    one, ahead = tmp_path / "one", tmp_path / "ahead"
    _one_state_store(one, 12)
    _one_state_store(ahead, 12)
    server = _Overlaps(company=0)
    model = serve(server)
    options = {"k": 2, "policy": model.spec, "sandbox": f"{__name__}:lookup_sandbox"}
    run_replay(ReplayConfig.load(store=one, requests_in_flight=1, **options))
    assert server.most == 1
    server.most, server.company, server.spans = 0, 4, []
    summary = run_replay(ReplayConfig.load(store=ahead, workers=2, executor=executor, requests_in_flight=2, **options))
    assert summary.done == 12 and summary.branches == 24 and summary.failed == {}
    assert server.most >= 4 and server.overlapping_tasks() >= 4, "each worker's next trajectory was asked for with its current one"
    assert _rollouts(ahead).equals(_rollouts(one))
    assert _propose_threads() == []


def test_trajectory_ids_replay_exactly_those_and_count_only_them(bfcl_store_path: Path) -> None:
    """The nightly job passes its selection: trajectories approved meanwhile do not take the selected ones' places
    (with a limit, the job picked again from the store, oldest first)."""
    store = LocalExperienceStore(bfcl_store_path)
    ids = store.trajectories(status="approved")["id"].to_list()
    store.close()
    chosen = [ids[-1], ids[1]]  # not the oldest ones, and not in the store's order
    summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, trajectory_ids=chosen))
    assert summary.selected == 2 and summary.already_done == 0 and summary.done == 2
    store = LocalExperienceStore(bfcl_store_path)
    assert sorted(store.replays()["trajectory_id"].to_list()) == sorted(chosen)
    store.close()
    again = run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, trajectory_ids=[*chosen, ids[0]]))
    assert again.selected == 1 and again.already_done == 2, "the finished ones count as done, the others are not counted"
    assert ReplayConfig.load(store=bfcl_store_path, trajectory_ids=chosen).replay_id == ReplayConfig.load(store=bfcl_store_path).replay_id


def test_a_tool_without_a_sandbox_at_a_trajectorys_last_step_is_counted_and_said_not_blocking(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool the sandbox lacks: trajectories that call it last are replayed without that call (counted by tool, and
    said by ``ee replay run``); those that call it earlier are skipped, as before."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    trajectories = list(LocalExperienceStore(bfcl_store_path).iter_trajectories(status="approved"))
    calls = {t.id: [s.action.tool_call.name for s in t.steps if s.action.tool_call] for t in trajectories}
    tool = calls[trajectories[0].id][-1]
    last = sum(names[-1] == tool and tool not in names[:-1] for names in calls.values())
    earlier = sum(tool in names[:-1] for names in calls.values())
    assert last >= 1, calls  # the first trajectory may call it earlier too: then this test needs another tool
    monkeypatch.setenv("EE_TEST_UNCOVERED", tool)
    sandbox = "tests.replay.sandboxes_for_tests:UncoveringBFCLSandbox"
    result = CliRunner().invoke(app, ["replay", "run", "--store", str(bfcl_store_path), "--k", "2", "--sandbox", sandbox, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "not executed" in result.output and f"{tool}={last}" in result.output
    summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=3, sandbox=sandbox))
    assert summary.final_calls_not_replayed == {tool: last} and len(summary.skipped) == earlier
    assert summary.done == BFCL_ENTRIES - earlier and summary.fidelity_mismatches == 0


def _light(world: dict[str, Any], state: Literal["on", "off"]) -> str:
    world["light"] = state
    return f"light {state}"


def _status(world: dict[str, Any]) -> str:
    return f"light {world['light']}"


def light_sandbox() -> PythonSandbox:
    """A world whose tools allow three distinct calls: light(on), light(off), status()."""
    return PythonSandbox(lambda environment: {"light": "off"}, tools={"light": _light, "status": _status}, kind="light")


def test_states_that_got_fewer_than_k_alternatives_are_counted_and_said(tmp_path: Path) -> None:
    """Tools whose schemas allow two calls other than the expert's, replayed with K=5: each state stored two, with
    nothing saying so (a user took it for K per state; with mutate and --k 256 on richer tools, a few dozen). Now
    counted per state and said."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from typer.testing import CliRunner

    from ee_middleware import record_experience
    from ee_middleware.cli.app import app
    from ee_middleware.testing import ScriptedChatModel, tool_call

    @tool
    def light(state: Literal["on", "off"]) -> str:
        """Switch the light."""
        return f"light {state}"

    @tool
    def status() -> str:
        """Whether the light is on."""
        return "light on"

    script = [AIMessage("", tool_calls=[tool_call("light", state="on")]), AIMessage("", tool_calls=[tool_call("status")]), AIMessage("On.")]
    store = tmp_path / "store"
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [light, status]), app="home", store=store)
    agent.invoke({"messages": [("user", "Light on please")]})
    assert agent.flush()
    agent.recorder.close()
    LocalExperienceStore(store).approve([t.id for t in LocalExperienceStore(store).iter_trajectories()], by="alice")
    run = ["replay", "run", "--store", str(store), "--k", "5", "--sandbox", "tests.replay.test_job:light_sandbox", "--no-progress"]
    summary = json.loads(CliRunner().invoke(app, [*run, "--json"]).stdout)
    assert (summary["states"], summary["branches"]) == (2, 4), summary
    assert (summary["states_short_of_k"], summary["alternatives_short_of_k"]) == (2, 6), summary
    said = CliRunner().invoke(app, [*run, "--again"], env={"COLUMNS": "300"})
    assert said.exit_code == 0, said.output
    assert "2 of 2 state(s) got fewer than k=5 alternatives (6 in all)" in said.output, said.output
    few = run_replay(ReplayConfig.load(store=store, k=2, sandbox="tests.replay.test_job:light_sandbox", seed=7))
    assert few.branches == 4 and few.states_short_of_k == few.alternatives_short_of_k == 0
