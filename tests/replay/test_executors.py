"""The executors: the local process executor's start-up paths, and Ray's batches, start-up and errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ee_middleware.replay import executors
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from tests.conftest import BFCL_ENTRIES


def _rollouts(path: Path) -> pl.DataFrame:
    return LocalExperienceStore(path).rollouts().drop("created_at", "duration_ms").sort("id")


def _own_processes() -> set[int]:
    import psutil

    # multiprocessing's resource tracker serves the whole process (every pool, every job) and ends with it
    return {c.pid for c in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())}


@pytest.mark.parametrize("where", ["an internal is missing", "the server started, then its set-up failed"])
def test_where_the_fork_server_cannot_be_used_workers_are_spawned_with_the_same_rollouts(
    where: str, bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python whose multiprocessing internals differ (simulated): nothing is left running, and the job still runs."""
    twin = tmp_path / "twin"
    shutil.copytree(bfcl_store_path, twin)
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=2))

    if where == "an internal is missing":
        monkeypatch.setattr(executors, "_FORK_SERVER_INTERNALS", (*executors._FORK_SERVER_INTERNALS, (None, "_moved_in_python_4")))
    else:

        def changed_internals(server: object) -> None:
            raise AttributeError("module 'multiprocessing.popen_forkserver' has no attribute 'Popen'")

        monkeypatch.setattr(executors, "_fork_server_context", changed_internals)
    spawned: list[str] = []
    real_pool = executors.ProcessPoolExecutor

    def pool(*args: object, mp_context: object, **kwargs: object) -> object:
        spawned.append(mp_context.get_start_method())  # type: ignore[attr-defined]
        return real_pool(*args, mp_context=mp_context, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(executors, "ProcessPoolExecutor", pool)
    before = _own_processes()
    summary = run_replay(ReplayConfig.load(store=twin, k=2, workers=2))
    assert spawned == ["spawn", "spawn"]  # a pool of one process per worker
    assert caplog.text.count("spawning them instead") == 1, "the job tried once, and spawned (it tried twice: its own, the executor's)"
    assert summary.done == BFCL_ENTRIES
    assert _rollouts(twin).equals(_rollouts(bfcl_store_path))
    assert _own_processes() == before, "no fork server left behind"


SCRIPT = """
import sys
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.bfcl.sandbox import BFCLSandbox


def make_sandbox():
    return BFCLSandbox()


if __name__ == "__main__":
    summary = run_replay(ReplayConfig.load(store=sys.argv[1], k=2, workers=2, sandbox="__main__:make_sandbox"))
    print(summary.done, summary.failed)
"""


def _run_job_script(script: Path, store: Path, **run: Any) -> None:
    """Run ``script`` (a job printing its summary's ``done`` and ``failed``) on ``store`` in a Python of its own
    (``run``: ``subprocess.run``'s ``cwd``, ``env``) and check that it replayed every trajectory, none failed."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, text=True, timeout=300, check=False, **run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[:2] == [str(BFCL_ENTRIES), "{}"], done.stdout + done.stderr[-2000:]


def test_a_sandbox_defined_in_the_users_script_reaches_the_workers(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Workers forked by the fork server do not import the job's __main__: a spec naming it gets spawned workers."""
    script = tmp_path / "my_job.py"
    script.write_text(SCRIPT)
    _run_job_script(script, bfcl_store_path)


SHADOWING_MODULE = """
import os

open(os.environ["EE_TEST_SHADOW_MARK"], "a").close()
raise ImportError("a module of the job's working directory: only that it was imported is recorded")
"""

JOB_SCRIPT = """
import sys

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay

if __name__ == "__main__":
    summary = run_replay(ReplayConfig.load(store=sys.argv[1], k=2, workers=2))
    print(summary.done, summary.failed)
"""


@pytest.mark.parametrize("shadow", ["jsonschema_rs.py", "ee_middleware/__init__.py"], ids=["a preloaded module", "a checkout"])
def test_the_fork_server_imports_with_the_jobs_path_not_from_its_working_directory(
    shadow: str, bfcl_store_path: Path, tmp_path: Path
) -> None:
    """CPython 3.11's fork server preloads with ``python -c``'s path (the working directory first), not the job's:
    a job started from a folder holding a module of a preloaded name (``jsonschema_rs.py``, or an ``ee_middleware``
    folder: a checkout) had its fork server import that module, and its workers run with it. The server now starts
    with ``-P`` (no working directory on its path) and takes the job's path first (fork_server_preload)."""
    working_directory = tmp_path / "project"
    (working_directory / shadow).parent.mkdir(parents=True, exist_ok=True)
    (working_directory / shadow).write_text(SHADOWING_MODULE)
    script = tmp_path / "jobs" / "nightly.py"
    script.parent.mkdir()
    script.write_text(JOB_SCRIPT)
    mark = tmp_path / "imported-from-the-working-directory"
    env = {**os.environ, "EE_TEST_SHADOW_MARK": str(mark)}
    env.pop("PYTHONPATH", None)
    _run_job_script(script, bfcl_store_path, cwd=working_directory, env=env)
    assert not mark.exists(), f"the fork server imported the working directory's {shadow}"


def test_the_job_replays_trajectories_itself_until_a_worker_has_started_then_hands_them_out(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork server is held (its preload waits for a file) while the job takes two trajectories: the job replays
    those and the one it takes while the first worker starts, the workers replay the rest; the store holds what one
    worker stores."""
    import time

    twin = tmp_path / "twin"
    shutil.copytree(bfcl_store_path, twin)
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=1))

    gate = tmp_path / "gate"
    monkeypatch.setenv("EE_TEST_PRELOAD_GATE", str(gate))
    monkeypatch.setattr(executors, "WORKER_MODULES", (*executors.WORKER_MODULES, "tests.replay.gated_preload"))
    taken: list[str] = []
    real_map = executors.ProcessExecutor.map

    def gated(executor: executors.ProcessExecutor, trajectories: object) -> object:
        for n, trajectory in enumerate(trajectories):  # type: ignore[call-overload]
            if n == 2:
                assert not executor._worker_ready()
                gate.touch()
                deadline = time.monotonic() + 120
                while not executor._worker_ready() and time.monotonic() < deadline:
                    time.sleep(0.01)
            taken.append(trajectory.id)
            yield trajectory

    monkeypatch.setattr(executors.ProcessExecutor, "map", lambda self, trajectories: real_map(self, gated(self, trajectories)))
    seen: dict[str, bool] = {}
    before = _own_processes()
    summary = run_replay(
        ReplayConfig.load(store=twin, k=2, workers=2), on_outcome=lambda o, n, total: seen.update({o.record.trajectory_id: o.stored})
    )

    assert summary.done == BFCL_ENTRIES and len(taken) == BFCL_ENTRIES > 3
    assert [seen[t] for t in taken] == [False] * 3 + [True] * (BFCL_ENTRIES - 3), "the job's 3, then the workers' (they write)"
    assert _rollouts(twin).equals(_rollouts(bfcl_store_path))
    assert _own_processes() == before


@pytest.mark.parametrize(
    ("policy", "sandbox", "light"),
    [
        ("mutate", "bfcl", True),
        ("openai:http://127.0.0.1:8000/v1#support-bot", "bfcl", True),
        ("local:/models/smollm2", "bfcl", False),
        ("transformers:/models/smollm2@/adapters/a", "bfcl", False),
        ("my_package.policies:build", "bfcl", False),
        ("mutate", "experience:local:/models/world", False),
    ],
)
def test_the_job_replays_while_workers_start_only_with_a_light_policy_and_sandbox(
    policy: str, sandbox: str, light: bool, bfcl_store_path: Path
) -> None:
    """A job whose policy loads a model (or is a user's, of unknown weight) leaves all replays to its workers."""
    from ee_middleware.replay.job import light_in_process

    assert light_in_process(ReplayConfig.load(store=bfcl_store_path, k=2, workers=2, policy=policy, sandbox=sandbox)) is light


def test_a_job_that_stops_while_its_workers_start_hands_them_nothing(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's first outcome ends it (its consumer stops) while the fork server is still held: when the server comes
    up, the feeder hands out no trajectory for the workers to replay after the job has ended."""
    import threading

    from ee_middleware.replay.executors import ProcessExecutor, WorkerSpec
    from ee_middleware.replay.runner import ReplaySettings
    from ee_middleware.replay.sandboxes.registry import sandbox_factory

    gate = tmp_path / "gate"
    monkeypatch.setenv("EE_TEST_PRELOAD_GATE", str(gate))
    monkeypatch.setattr(executors, "WORKER_MODULES", (*executors.WORKER_MODULES, "tests.replay.gated_preload"))
    handed_out: list[int] = []
    real_submit = ProcessExecutor._submit

    def submit(self: ProcessExecutor, source: object, pending: set, window: int) -> None:
        before = len(pending)
        real_submit(self, source, pending, window)  # type: ignore[arg-type]
        handed_out.append(len(pending) - before)

    monkeypatch.setattr(ProcessExecutor, "_submit", submit)
    trajectories = list(LocalExperienceStore(bfcl_store_path).iter_trajectories(status="approved"))
    spec = WorkerSpec(sandbox_factory("bfcl"), "mutate", ReplaySettings(replay_id="r", policy="mutate", k=2))
    before = _own_processes()
    executor = ProcessExecutor(spec, 2, replay_while_starting=True)
    try:
        outcomes = executor.map(trajectories)
        first = next(outcomes)
        assert not first.stored and not executor._worker_ready()  # the job's own, the server still held
        threading.Timer(0.5, gate.touch).start()
        outcomes.close()  # waits for the feeder, which waits for the server
    finally:
        executor.close()
    assert sum(handed_out) == 0
    assert _own_processes() == before


def _preloaded_in_the_fork_server(monkeypatch: pytest.MonkeyPatch, module: str, variable: str, tmp_path: Path) -> Path:
    """Have the job's fork server import the test module ``module`` first, with ``variable`` naming the folder it
    writes what each worker saw into (returned), and the workers replay every trajectory (the job none itself)."""
    from ee_middleware.replay import job

    folder = tmp_path / variable.lower()
    folder.mkdir()
    monkeypatch.setenv(variable, str(folder))
    # (after fork_server_preload, which gives the server the job's path: the tests' modules are found through it)
    first, *rest = executors.WORKER_MODULES
    monkeypatch.setattr(executors, "WORKER_MODULES", (first, module, *rest))
    monkeypatch.setattr(job, "light_in_process", lambda config: False)
    return folder


@pytest.mark.parametrize("sandbox", ["bfcl", "tests.replay.sandboxes_for_tests:make_bfcl_sandbox"], ids=["built-in", "a factory function"])
def test_workers_forked_by_the_job_import_no_module_themselves(
    sandbox: str, bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a worker needs is imported once, by the job's fork server (``WORKER_MODULES``, the sandbox's module and its
    ``worker_modules``): workers replaying BFCL with the mutation policy import nothing after they are forked. Before,
    each imported polars and the job module (through the proposer), the chat policies and the model layer (through the
    policy registry), jsonschema, mpmath and BFCL's backends: about 0.2 s of CPU per worker; and a sandbox built by a
    factory function imported the function's module (the fork server had the sandbox class's alone)."""
    imports = _preloaded_in_the_fork_server(monkeypatch, "tests.replay.recording_preload", "EE_TEST_WORKER_IMPORTS", tmp_path)
    stored: list[bool] = []
    summary = run_replay(
        ReplayConfig.load(store=bfcl_store_path, k=2, workers=2, sandbox=sandbox), on_outcome=lambda o, n, total: stored.append(o.stored)
    )

    assert summary.done == BFCL_ENTRIES and stored == [True] * BFCL_ENTRIES, "the workers replayed and wrote every trajectory"
    workers = sorted(imports.iterdir())
    assert len(workers) == 2, workers
    imported = {path.name: path.read_text().split() for path in workers}
    assert imported == {path.name: [] for path in workers}, imported


def test_the_fork_server_freezes_what_it_imported_and_its_workers_collect_as_usual(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork server imports with the collector off and freezes what it built (it lives as long as the server and
    every worker): each worker starts with that heap out of the collector's passes, and with the collector on."""
    at_fork = _preloaded_in_the_fork_server(monkeypatch, "tests.replay.collector_preload", "EE_TEST_COLLECTOR_AT_FORK", tmp_path)
    summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=2))

    assert summary.done == BFCL_ENTRIES and summary.failed == {}
    workers = {path.name: path.read_text().split() for path in at_fork.iterdir()}
    assert len(workers) == 2, workers
    for frozen, collecting in workers.values():
        assert int(frozen) > 10_000, f"the server froze {frozen} objects: its imported modules are more"
        assert collecting == "True", "a worker starts with the collector off"


def test_a_preloaded_module_that_raises_in_the_fork_server_is_left_to_the_workers(
    bfcl_store_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """multiprocessing's fork server survives only an ImportError from a module it preloads: a sandbox factory's module
    that raises there (it reads the application's command line) ended it, and the job with ``EOFError: unexpected EOF``.
    Now the server says which module and goes on, and each worker imports it itself."""
    before = _own_processes()
    summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=2, sandbox="tests.replay.fragile_factory:make_sandbox"))
    assert summary.done == BFCL_ENTRIES and summary.failed == {}
    err = capfd.readouterr().err
    assert "could not import 'tests.replay.fragile_factory' (RuntimeError: this module reads the application's command line)" in err, err
    assert _own_processes() == before


def test_the_jobs_fork_server_is_stopped_once_however_often_it_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job starts its fork server before its executor and stops it after the executor did: the second stop sends
    nothing (the server's pid may be another process's by then)."""
    server = executors.start_job_fork_server()
    assert server is not None
    killed: list[tuple[int, int]] = []
    real_kill = os.kill
    monkeypatch.setattr(executors.os, "kill", lambda pid, sig: (killed.append((pid, sig)), real_kill(pid, sig)))
    server.stop()
    server.stop()
    assert killed == [(server.pid, executors.signal.SIGTERM)]
    assert server.pid not in _own_processes()


def test_a_sandbox_worker_module_that_does_not_import_is_left_to_the_workers_with_a_warning(bfcl_store_path: Path) -> None:
    """A module that raises (not an ImportError) would stop the fork server: the job imports each first and leaves such
    a one out (the workers import it themselves, and say what fails), as it does a name that is not a string."""
    from ee_middleware.replay.job import worker_modules
    from tests.replay.sandboxes_for_tests import BrokenWorkerModulesBFCLSandbox

    with pytest.warns(UserWarning, match=r"worker module 'tests.replay.broken_worker_module', which does not import \(RuntimeError"):
        assert worker_modules(BrokenWorkerModulesBFCLSandbox()) == ["tests.replay.gated_preload"]
    one = type("OneModuleSandbox", (), {"worker_modules": "tests.replay.gated_preload"})()
    assert worker_modules(one) == ["tests.replay.gated_preload"], "a string names one module (not its letters)"
    before = _own_processes()
    with pytest.warns(UserWarning, match="broken_worker_module"):
        summary = run_replay(
            ReplayConfig.load(
                store=bfcl_store_path, k=2, workers=2, sandbox="tests.replay.sandboxes_for_tests:BrokenWorkerModulesBFCLSandbox"
            )
        )
    assert summary.done == BFCL_ENTRIES and summary.failed == {}
    assert _own_processes() == before


def test_a_stored_trajectory_that_cannot_be_built_fails_alone_and_keeps_the_sandbox(bfcl_store_path: Path, tmp_path: Path) -> None:
    from ee_middleware.replay.executors import WorkerSpec, _Worker
    from ee_middleware.replay.runner import ReplaySettings
    from ee_middleware.replay.sandboxes.registry import sandbox_factory
    from ee_middleware.store.rows import TrajectoryRows

    shutil.copytree(bfcl_store_path, tmp_path / "compacted")
    store = LocalExperienceStore(tmp_path / "compacted")
    store.compact()  # read from Parquet parts, trajectories come as their rows
    good = next(t for t in store.iter_trajectory_rows(status="approved") if type(t) is TrajectoryRows)
    broken = TrajectoryRows({**good.row, "id": "broken", "tools_json": "{not json"}, good.steps)
    worker = _Worker(WorkerSpec(sandbox_factory("bfcl"), "mutate", ReplaySettings(replay_id="r", policy="mutate", k=2)))
    try:
        assert worker.replay(good).record.status == "done"
        parts = worker._parts
        failed = worker.replay(broken)
        assert failed.record.status == "failed" and failed.record.trajectory_id == "broken"
        assert "JSONDecodeError" in (failed.record.reason or "")
        assert worker._parts is parts  # the sandbox and policy were not torn down for it
        assert worker.replay(good).record.status == "done"
    finally:
        worker.close()


def test_a_job_that_leaves_all_replays_to_its_workers_reads_ahead_while_they_start(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a policy the job does not replay with (a model), its first read of the store overlaps the fork server's
    imports: the first trajectory is taken while the server is still held (the gate opens only then)."""
    from ee_middleware.replay import job

    gate = tmp_path / "gate"
    monkeypatch.setenv("EE_TEST_PRELOAD_GATE", str(gate))
    monkeypatch.setattr(executors, "WORKER_MODULES", (*executors.WORKER_MODULES, "tests.replay.gated_preload"))
    monkeypatch.setattr(job, "light_in_process", lambda config: False)
    starting_at_first: list[bool] = []
    real_map = executors.ProcessExecutor.map

    def gated(executor: executors.ProcessExecutor, trajectories: object) -> object:
        for trajectory in trajectories:  # type: ignore[attr-defined]
            if not starting_at_first:
                starting_at_first.append(executor._starting())  # the workers are still being started
                gate.touch()
            yield trajectory

    monkeypatch.setattr(executors.ProcessExecutor, "map", lambda self, trajectories: real_map(self, gated(self, trajectories)))
    seen: list[bool] = []
    summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=2), on_outcome=lambda o, n, total: seen.append(o.stored))
    assert summary.done == BFCL_ENTRIES and all(seen)  # every trajectory replayed (and written) by the workers
    assert starting_at_first == [True]


def test_local_workers_are_sent_batches_and_a_policy_that_stops_mid_batch_keeps_what_came_before(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three trajectories per call to a local worker: the same rollouts as one worker; and where the policy fails at the
    second trajectory of the first worker's first batch, the job raises the policy's error, and the trajectory replayed
    before it in that batch is counted and stored."""
    from ee_middleware.errors import PolicyError
    from ee_middleware.replay import job

    class ThreeAtOnce(executors._BatchSizes):
        def __init__(self, **options: object) -> None:
            super().__init__()
            self.size = 3

        def observe(self, outcomes: object) -> None:
            pass

    monkeypatch.setattr(executors, "_BatchSizes", ThreeAtOnce)
    twin, fresh = tmp_path / "twin", tmp_path / "fresh"
    shutil.copytree(bfcl_store_path, twin)
    shutil.copytree(bfcl_store_path, fresh)
    batches: list[int] = []
    real_take = executors._SharedIterator.take

    def counting(self: executors._SharedIterator, n: int) -> list:
        taken = real_take(self, n)
        batches.extend([len(taken)] if taken else [])
        return taken

    monkeypatch.setattr(executors._SharedIterator, "take", counting)
    monkeypatch.setattr(job, "light_in_process", lambda config: False)  # the workers replay every trajectory
    summary = run_replay(ReplayConfig.load(store=twin, k=2, workers=2))
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=1))
    assert summary.done == BFCL_ENTRIES and batches == [3, 3]  # a call to each worker, three trajectories each
    assert _rollouts(twin).equals(_rollouts(bfcl_store_path))

    order = [t.id for t in LocalExperienceStore(fresh).iter_trajectories(status="approved")]
    monkeypatch.setenv("EE_TEST_FAIL_ON", order[1])
    finished: list[str] = []
    before = _own_processes()
    with pytest.raises(PolicyError, match=f"went away at {order[1]}.*replayed before this are saved"):
        run_replay(
            ReplayConfig.load(store=fresh, k=2, workers=2, policy="tests.replay.policies_for_tests:failing"),
            on_outcome=lambda o, n, total: finished.append(o.record.trajectory_id),
        )
    assert order[0] in finished and order[1] not in finished
    done = LocalExperienceStore(fresh).replays().filter(pl.col("status") == "done")["trajectory_id"].to_list()
    assert order[0] in done and order[1] not in done
    assert _own_processes() == before


# -- Ray ----------------------------------------------------------------------------------------------------------------

GATED = "tests.replay.policies_for_tests:gated"


def test_on_ray_the_job_replays_until_an_actor_is_built_and_the_actors_replay_and_write_the_rest(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actors' policy is held until the job has replayed two trajectories itself (the ones it read after queueing
    one call per actor, twice); then the actors replay and write what was queued for them. The store holds what one
    worker stores, and no Ray process is left."""
    pytest.importorskip("ray")
    import os

    from ee_middleware.replay import job

    twin = tmp_path / "twin"
    shutil.copytree(bfcl_store_path, twin)
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=1, policy=GATED))

    gate = tmp_path / "gate"
    monkeypatch.setenv("EE_TEST_POLICY_GATE", str(gate))
    monkeypatch.setenv("EE_TEST_GATE_PID", str(os.getpid()))
    monkeypatch.setattr(job, "light_in_process", lambda config: True)  # this user policy is the mutation policy
    seen: list[bool] = []

    def on_outcome(outcome: object, n: int, total: int) -> None:
        seen.append(outcome.stored)  # type: ignore[attr-defined]
        if n == 2:
            gate.touch()

    before = _own_processes()
    summary = run_replay(ReplayConfig.load(store=twin, k=2, workers=2, executor="ray", policy=GATED), on_outcome=on_outcome)
    assert summary.done == BFCL_ENTRIES == 6
    assert seen == [False, False, True, True, True, True], "the job's two (it writes them), then the actors' four (they write)"
    assert _rollouts(twin).equals(_rollouts(bfcl_store_path))
    assert _own_processes() == before


def test_on_ray_a_policy_that_stops_working_mid_batch_stops_the_job_and_keeps_what_came_before(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three trajectories per call: the policy fails at the second of the first actor's batch. The job raises the
    policy's error (not Ray's wrapper), and the trajectory replayed before it in that batch is stored and counted."""
    pytest.importorskip("ray")
    from ee_middleware.errors import PolicyError

    order = [t.id for t in LocalExperienceStore(bfcl_store_path).iter_trajectories(status="approved")]
    monkeypatch.setenv("EE_TEST_FAIL_ON", order[1])

    class ThreeAtOnce(executors._BatchSizes):
        def __init__(self) -> None:
            super().__init__()
            self.size = 3

        def observe(self, outcomes: object) -> None:
            pass

    monkeypatch.setattr(executors, "_BatchSizes", ThreeAtOnce)
    finished: list[str] = []
    with pytest.raises(PolicyError, match=f"went away at {order[1]}.*replayed before this are saved"):
        run_replay(
            ReplayConfig.load(store=bfcl_store_path, k=2, workers=2, executor="ray", policy="tests.replay.policies_for_tests:failing"),
            on_outcome=lambda o, n, total: finished.append(o.record.trajectory_id),
        )
    assert order[0] in finished and order[1] not in finished
    done = LocalExperienceStore(bfcl_store_path).replays().filter(pl.col("status") == "done")["trajectory_id"].to_list()
    assert order[0] in done and order[1] not in done


def test_a_ray_call_carries_about_fifty_milliseconds_of_trajectories_and_a_slow_one_alone() -> None:
    from ee_middleware.records import ReplayRecord, utcnow
    from ee_middleware.replay.runner import ReplayOutcome

    def took(seconds: float) -> ReplayOutcome:
        return ReplayOutcome(
            ReplayRecord(
                replay_id="r",
                trajectory_id="t",
                status="done",
                policy="mutate",
                sandbox="bfcl",
                k=2,
                seed=0,
                duration_s=seconds,
                finished_at=utcnow(),
            )
        )

    sizes = executors._BatchSizes()
    assert sizes.size == 1  # nothing measured yet: one at a time
    sizes.observe([took(0.01)] * 20)
    assert sizes.size == 5
    sizes.observe([took(0.0)])  # a failed record carries no duration: it changes nothing
    assert sizes.size == 5
    sizes.observe([took(0.0001)] * 50)
    assert sizes.size == sizes.largest == 32
    sizes.observe([took(3.0)])
    assert sizes.size == 1


def test_an_error_an_actor_cannot_send_as_it_is_goes_as_its_base_class_with_its_message() -> None:
    """Ray pickles what an actor returns: an error whose class needs keyword arguments (or holds a connection) is sent
    as the base class the job handles alike, naming what it was; one that pickles goes as it is."""
    from ee_middleware.errors import ModelError, ModelRequestError, PolicyError

    server_down = PolicyError("the policy server went away")
    assert executors._sendable(server_down) is server_down
    sent = executors._sendable(ModelRequestError("model 'x' not found", url="http://127.0.0.1:8000/v1", status=404))
    assert type(sent) is ModelError and "ModelRequestError: model 'x' not found" in str(sent)
    assert type(executors._sendable(_Unpicklable("boom"))) is RuntimeError


class _Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = __import__("threading").Lock()


def test_the_job_returns_only_once_every_worker_has_closed_its_sandbox(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers end by themselves, closing their sandboxes (a container stopped, a connection closed) to the end,
    before the job returns: none is cut off by the fork server's end, or still running after the job.

    A user's policy (the mutation policy, named by its spec) keeps the job's own process from replaying while the
    workers start: with the built-in one it may replay every trajectory before any worker is forked, and the workers,
    stopped as they start, then build no sandbox to close."""
    closed = tmp_path / "closed"
    closed.mkdir()
    monkeypatch.setenv("EE_TEST_CLOSED_DIR", str(closed))
    sandbox = "tests.replay.sandboxes_for_tests:SlowClosingBFCLSandbox"
    monkeypatch.delenv("EE_TEST_BUILD_DIR", raising=False)
    policy = "tests.replay.policies_for_tests:slow_to_build"  # built at once (no EE_TEST_BUILD_DIR)
    before = _own_processes()
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=2, sandbox=sandbox, policy=policy))
    workers = {int(p.name) for p in closed.iterdir()} - {os.getpid()}
    assert len(workers) == 2, f"the job returned before its workers closed their sandboxes ({len(workers)} of 2 had)"
    assert _own_processes() <= before


def test_stopping_the_local_ray_instance_kills_every_process_that_inherited_its_token() -> None:
    """Sweep Z: a replay on Ray stopped by Ctrl-C while Ray started left its raylet's agents (``ray::DashboardAgent``,
    ``ray::RuntimeEnvAgent``) running for about a minute, reparented to init. Every process of the instance inherits
    the job's token (EE_RAY_JOB); the end kills those and no other. Real processes; a stand-in for ray's ``shutdown``."""
    import os
    import subprocess
    import sys

    from ee_middleware.replay.executors import RAY_JOB_ENV, _shut_ray_down

    class StandInRay:
        shut = 0

        def shutdown(self) -> None:
            self.shut += 1

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    ours = subprocess.Popen(sleep, env={**os.environ, RAY_JOB_ENV: "token-1"})
    other_job = subprocess.Popen(sleep, env={**os.environ, RAY_JOB_ENV: "token-2"})
    unrelated = subprocess.Popen(sleep)
    try:
        ray = StandInRay()
        _shut_ray_down(ray, "token-1")
        assert ray.shut == 1
        assert ours.wait(timeout=10) == -9
        assert other_job.poll() is None and unrelated.poll() is None
    finally:
        for process in (ours, other_job, unrelated):
            process.kill()
            process.wait()


def test_the_workers_of_a_running_ray_cluster_are_given_the_redact_fns_trusted_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """A running cluster's workers have their nodes' environment, not the driver's: EE_TRUSTED_REDACT_FNS set here (by
    the job's environment, or a recorder given the function) did not reach them, and replay of a store recorded with a
    redact_fn stopped there as untrusted. ``ray.init`` is given it as the job's runtime environment (a stand-in for the
    cluster: ``ray.init`` records what it is given and stops, since no cluster runs here)."""
    import ray

    from ee_middleware.capture.store_redaction import TRUSTED_REDACT_FNS_ENV
    from ee_middleware.replay.executors import RayExecutor, WorkerSpec
    from ee_middleware.replay.runner import ReplaySettings
    from ee_middleware.replay.sandboxes.registry import sandbox_factory

    given: dict[str, Any] = {}

    def init(**kwargs: Any) -> None:
        given.update(kwargs)
        raise RuntimeError("no cluster here")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setenv(TRUSTED_REDACT_FNS_ENV, "myapp.privacy.scrub")
    spec = WorkerSpec(sandbox_factory("bfcl"), "mutate", ReplaySettings(replay_id="r", policy="mutate", k=2))
    with pytest.raises(RuntimeError, match="no cluster here"):
        RayExecutor(spec, 2, address="ray://cluster:10001")
    assert given["runtime_env"] == {"env_vars": {TRUSTED_REDACT_FNS_ENV: "myapp.privacy.scrub"}}
