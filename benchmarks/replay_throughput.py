"""Replay throughput on BFCL multi_turn_base: snapshot-and-branch vs the naive way, and 1 vs 2 workers.

    .venv/bin/python benchmarks/replay_throughput.py [--category multi_turn_base] [--limit 200] [--k 8]

Expert trajectories for every entry are recorded first (a real LangGraph agent replaying the ground
truth). Then, with the mutation policy and the same proposals for both:

(i)  snapshot-and-branch: at each recorded state take one snapshot, restore it for each of the K
     alternatives, then move on along the expert path (what the replay runner does, through the
     real BFCL sandbox: pickled once, unpickled per restore; also shown with plain deep copies);
(ii) naive: for every branch, rebuild the environment from step 0 and re-run the expert prefix
     before executing the alternative (what you do without snapshots).

An untimed pass first checks that all three see the same observation at every branch; then they are timed in this
process, every round in a rotating order under the same collector state (the process's heap frozen). The whole job
(`run_replay`: loading the store, proposals, sandbox, fidelity checks and spool writes) runs with 1 worker, with 2
worker processes and (with --ray) with 2 Ray actors, each on a fresh copy of the same store, in the same rounds
(--repeats of them), after the ways of branching (snapshot-and-branch with pickled snapshots is the job's baseline,
"sandbox_only"). It prints min/median/max rates, the ratios (snapshot / naive, job with 1 worker / sandbox only, 2 workers / 1,
Ray / 1), the load average before and after, peak memory, the CPU seconds of the job process per
branch (what a single job process still has to do while the workers replay), and checks that every
run stored the same rollouts (ids, calls, observations, records).

The local jobs also run cold (``job_1_worker_cold``, ``job_2_workers_cold``): each in a fresh Python process, as
``ee replay`` runs, timed from its call of ``run_replay`` (the imports before it are the same for both), so that the
1-worker job pays its own first-use costs too instead of running in this warm process. The cold pair is interleaved
with the other jobs in every round, checked for the same rollouts, and gives ``job_2_vs_1_workers_cold_speedup``.

Ray runs twice: on a local cluster the job starts itself (``ray.init``, its start-up timed with the
job) and on a running local cluster (``ray start --head --block``, started before the timed job and
stopped after it, so that no cluster daemon runs beside the other jobs), which is how a cluster is
used in production: the job joins it and creates its actors.

The experts are stored with stable ids (``bfcl-<entry id>``): proposals are seeded by trajectory id,
and with random ids some recordings draw a deliberately invalid ``logarithm(precision=692387)``
that runs for minutes in mpmath and dominates every rate.

    .venv/bin/python benchmarks/replay_throughput.py --sustained [--repeats 3]

also runs, after the default run and reported beside it (``sustained``), the sustained case: one
store holding every multi-turn category (base, miss_func, miss_param, long_context: 800 entries), so
the job runs several times longer and the workers' start-up is a smaller part of it; the jobs with 1
and 2 workers (and with --ray both Ray jobs) alternate for --repeats rounds, each on a fresh copy,
with the same rollouts checked.

    .venv/bin/python benchmarks/replay_throughput.py --world retail [--repeats 3] [--k 8]

runs instead the database-sized world: a retail database of about 1 MB as plain Python data (users,
orders, products; tests/replay/sandboxes/retail_world.py), replayed by the PythonSandbox with whole
copies (``journal=False``, every restore unpickles the world) and with its journal (a restore undoes
only the writes since the snapshot), interleaved, with identical observations checked and the
journaled sandbox run through the conformance kit first.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _ee import peak_rss_mib, project_bytecode, spread

from ee_middleware.bfcl.experts import record_experts
from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.runner import derive_seed
from ee_middleware.store import LocalExperienceStore


def snapshot_and_branch(trajectories: list, plans: dict, *, deepcopy: bool = False, seen: list[str] | None = None) -> int:
    """The replay runner's way, through the real BFCL sandbox (``deepcopy=True``: plain deep copies instead of pickled
    snapshots); ``seen``: each branch's observation appended (the untimed check that every way sees the same)."""
    sandbox = BFCLSandbox()
    branches = 0
    for t in trajectories:
        sandbox.reset(t.environment)
        for step in t.steps:
            if step.action.tool_call is None:
                continue
            snapshot = copy.deepcopy(sandbox.world) if deepcopy else sandbox.snapshot()
            for call in plans[(t.id, step.index)]:
                _restore(sandbox, snapshot, deepcopy)
                observation = sandbox.execute(call)
                if seen is not None:
                    seen.append(observation.content)
                branches += 1
            _restore(sandbox, snapshot, deepcopy)
            sandbox.execute(step.action.tool_call)
    return branches


def _restore(sandbox: BFCLSandbox, snapshot: object, deepcopy: bool) -> None:
    if deepcopy:
        sandbox._world = copy.deepcopy(snapshot)
    else:
        sandbox.restore(snapshot)


def naive(trajectories: list, plans: dict, *, seen: list[str] | None = None) -> int:
    """Without snapshots: rebuild the world from step 0 and re-run the expert prefix for every branch."""
    sandbox = BFCLSandbox()
    branches = 0
    for t in trajectories:
        calls = [s for s in t.steps if s.action.tool_call is not None]
        for i, step in enumerate(calls):
            for call in plans[(t.id, step.index)]:
                sandbox.reset(t.environment)
                for prefix in calls[:i]:
                    sandbox.execute(prefix.action.tool_call)
                observation = sandbox.execute(call)
                if seen is not None:
                    seen.append(observation.content)
                branches += 1
    return branches


SANDBOX_WAYS = {
    "sandbox_only": lambda trajectories, plans, seen=None: snapshot_and_branch(trajectories, plans, seen=seen),
    "sandbox_deepcopy": lambda trajectories, plans, seen=None: snapshot_and_branch(trajectories, plans, deepcopy=True, seen=seen),
    "naive": naive,
}
"""The ways of branching timed in this process (the first is the runner's, the baseline of the whole jobs too)."""


def retail_branches(sandbox: object, trajectories: list, plans: dict) -> tuple[int, list[str]]:
    """Snapshot-and-branch as the replay runner does it (one snapshot per step, dropped after the step)."""
    seen: list[str] = []
    branches = 0
    for t in trajectories:
        sandbox.reset(t.environment)
        for step in t.steps:
            branches += _retail_step(sandbox, step, plans[(t.id, step.index)], seen)
    return branches, seen


def _retail_step(sandbox: object, step: object, calls: list, seen: list[str]) -> int:
    snapshot = sandbox.snapshot()
    for call in calls:
        sandbox.restore(snapshot)
        seen.append(sandbox.execute(call).content)
    sandbox.restore(snapshot)
    seen.append(sandbox.execute(step.action.tool_call).content)
    return len(calls)


def retail_main(args: argparse.Namespace) -> dict:
    import pickle
    import statistics

    from ee_middleware.records import ToolCall
    from ee_middleware.testing import check_sandbox

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the world lives with the tests that check it
    from tests.replay.sandboxes import retail_world as retail

    size = len(pickle.dumps(retail.build(retail.ONE_MB), protocol=pickle.HIGHEST_PROTOCOL))
    check_sandbox(
        retail.make_sandbox,
        environment=retail.ONE_MB,
        mutate=ToolCall(id="m", name="place_order", arguments={"user_id": "u1", "product_id": "p2", "quantity": 1}),
        read=[
            ToolCall(id="r1", name="get_user", arguments={"user_id": "u1"}),
            ToolCall(id="r2", name="get_product", arguments={"product_id": "p2"}),
        ],
        require_digest=True,
    )
    trajectories = [retail.trajectory(retail.ONE_MB, args.steps, seed=i, trajectory_id=f"retail-{i}") for i in range(args.trajectories)]
    proposer = Proposer(MutationPolicy(), k=args.k)
    plans = {}
    for t in trajectories:
        for s in t.steps:
            point = DecisionPoint(t.id, s.index, s.state, t.step_tools(s), s.action.tool_call)
            plans[(t.id, s.index)] = [c.call for c in proposer.propose(point, seed=derive_seed(0, t.id, s.index)).accepted]
    load_before = [round(x, 2) for x in os.getloadavg()]
    times: dict[str, list[float]] = {"whole_copy": [], "journal": []}
    outputs: dict[str, list[str]] = {}
    branches = 0
    for repeat in range(args.repeats):  # interleaved, which runs first alternating
        for name, journal in (("whole_copy", False), ("journal", True))[:: 1 if repeat % 2 == 0 else -1]:
            sandbox = retail.make_sandbox(journal=journal)
            t0 = time.perf_counter()
            branches, seen = retail_branches(sandbox, trajectories, plans)
            times[name].append(time.perf_counter() - t0)
            sandbox.close()
            assert outputs.setdefault(name, seen) == seen, f"{name}: observations differ between repeats"
    assert outputs["journal"] == outputs["whole_copy"], "the journaled sandbox saw different observations"
    rate = {name: [branches / s for s in spans] for name, spans in times.items()}
    results = {
        "world": "retail",
        "world_pickled_bytes": size,
        "trajectories": len(trajectories),
        "steps_per_trajectory": args.steps,
        "k": args.k,
        "branches": branches,
        "repeats": args.repeats,
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "identical_observations": True,
        "conformance_kit": "passed (journaled, 1 MB world)",
    }
    for name, rates in rate.items():
        results[f"{name}_branches_per_s_min_median_max"] = [round(min(rates), 1), round(statistics.median(rates), 1), round(max(rates), 1)]
    results["journal_vs_whole_copy_speedup_median"] = round(statistics.median(rate["journal"]) / statistics.median(rate["whole_copy"]), 1)
    return results


def _job_run(store: Path, k: int, workers: int, executor: str = "local", ray_address: str | None = None) -> dict:
    """One whole job on ``store``: wall time, when the first trajectory was done (start-up), and the CPU time of this
    (the job's) process and of its reaped children (workers, the fork server)."""
    before_self, before_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    first: list[float] = []
    by_job: list[int] = []  # branches of the trajectories the job's own process replayed (with 2 workers: while they started)
    t0 = time.perf_counter()

    def on_outcome(outcome: object, n: int, total: int) -> None:
        first or first.append(time.perf_counter() - t0)
        if workers > 1 and not outcome.stored:  # type: ignore[attr-defined]
            by_job.append(outcome.record.branches)  # type: ignore[attr-defined]

    summary = run_replay(
        ReplayConfig.load(store=store, k=k, workers=workers, executor=executor, ray_address=ray_address), on_outcome=on_outcome
    )
    wall = time.perf_counter() - t0
    after_self, after_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    assert summary.failed == {} and summary.fidelity_mismatches == 0, summary.to_dict()
    return {
        "summary": summary,
        "wall_s": wall,
        "first_outcome_s": first[0],
        "branches_replayed_by_job_process": sum(by_job),
        "job_cpu_s": (after_self.ru_utime + after_self.ru_stime) - (before_self.ru_utime + before_self.ru_stime),
        "children_cpu_s": (after_children.ru_utime + after_children.ru_stime) - (before_children.ru_utime + before_children.ru_stime),
    }


JOBS = (
    ("job_1_worker", 1, "local"),
    ("job_2_workers", 2, "local"),
    ("job_1_worker_cold", 1, "local-cold"),
    ("job_2_workers_cold", 2, "local-cold"),
    ("job_ray_2_actors", 2, "ray"),
    ("job_ray_2_actors_running_cluster", 2, "ray-running"),
)
RAY_JOBS = ("job_ray_2_actors", "job_ray_2_actors_running_cluster")
LOCAL_JOBS = ("job_1_worker", "job_2_workers", "job_1_worker_cold", "job_2_workers_cold")


def _cold_job_run(store: Path, k: int, workers: int) -> dict:
    """:func:`_job_run` in a fresh Python process (this script's ``--one-job``), as ``ee replay`` runs a job."""
    from types import SimpleNamespace

    command = [sys.executable, __file__, "--one-job", str(store), "--workers", str(workers), "--k", str(k)]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"the cold job failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    run = json.loads(finished.stdout.strip().splitlines()[-1])
    run["summary"] = SimpleNamespace(**run["summary"])
    return run


def _one_job(store: Path, k: int, workers: int) -> None:
    """``--one-job``: one local job on ``store``, its :func:`_job_run` printed as JSON (the last line)."""
    run = _job_run(store, k, workers)
    run["summary"] = {"branches": run["summary"].branches, "replay_id": run["summary"].replay_id}
    run["job_process_peak_rss_mib"] = peak_rss_mib()  # VmHWM: this process's own (ru_maxrss would be the benchmark's)
    # The largest peak of the processes the job started and waited for (its fork server, the workers that server forked
    # and waited for): RUSAGE_CHILDREN's ru_maxrss is the largest of theirs. The fork server was exec'd (its peak is its
    # own); a worker's counts the pages it shares with the fork server it was forked from, as its RSS does.
    run["largest_child_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(run))


@contextlib.contextmanager
def _running_ray_cluster(num_cpus: int = 2, timeout_s: float = 120.0) -> Iterator[str]:
    """A local Ray cluster for one job: ``ray start --head --block`` (its own session, its log in a temporary file),
    ready when it says so; stopped with SIGTERM afterwards, and whatever of its process group is left is killed."""
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--num-cpus={num_cpus}", "--port=0"]
        command += ["--include-dashboard=false", "--disable-usage-stats"]
        address_file = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
        ours = None
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while "Ray runtime started" not in Path(log.name).read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start did not start a cluster:\n{Path(log.name).read_text()[-2000:]}")
                time.sleep(0.1)
            ours = address_file.read_text() if address_file.exists() else None
            yield "auto"  # the cluster started last on this machine: this one
        finally:
            process.terminate()  # ray start --block stops every process of the cluster on SIGTERM
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            # SIGTERM leaves the cluster's address behind (``ray stop`` would remove it, and stop every cluster on
            # the machine): a later ``ray.init()`` without an address would try to join the stopped cluster.
            with contextlib.suppress(OSError):
                if ours is not None and address_file.read_text() == ours:
                    address_file.unlink()


def _job_round(runs: dict[str, list[dict]], store: Path, scratch: Path, k: int, expected: dict, rotation: int = 0) -> None:
    """One whole job for each of ``runs``' job variants, each on a fresh copy of ``store``, starting ``rotation`` places
    into their order (so that no variant always runs first, or right after the ways of branching).

    Every job must replay ``expected["branches"]`` branches and store ``expected["outputs"]`` (both taken from the
    first job when missing).
    """
    from tests.replay.golden_replay import outputs

    jobs = [job for job in JOBS if job[0] in runs]
    start = rotation % len(jobs)
    for name, workers, executor in jobs[start:] + jobs[:start]:
        copy_path = scratch / name
        shutil.copytree(store, copy_path)
        if executor == "ray-running":
            with _running_ray_cluster() as address:
                run = _job_run(copy_path, k, workers, "ray", ray_address=address)
        elif executor == "local-cold":
            run = _cold_job_run(copy_path, k, workers)
        else:
            run = _job_run(copy_path, k, workers, executor)
        branches = expected.setdefault("branches", run["summary"].branches)
        assert run["summary"].branches == branches, (name, run["summary"].branches, branches)
        stored = outputs(copy_path, run["summary"].replay_id)
        assert stored == expected.setdefault("outputs", stored), f"{name} stored different rollouts than the first job run"
        runs[name].append(run)
        shutil.rmtree(copy_path)


def _sustained(args: argparse.Namespace, tmp: Path) -> dict:
    """The sustained case: every multi-turn category in one store, jobs with 1 and 2 workers alternating (see the docstring)."""
    import statistics

    from ee_middleware.bfcl.data import MULTI_TURN_CATEGORIES
    from tests.replay.golden_replay import stable_store

    recorded = tmp / "recorded"
    for category in MULTI_TURN_CATEGORIES:
        report = record_experts(recorded, category, limit=args.limit)
        assert not report.failed, report.failed
    LocalExperienceStore(recorded).close()
    store_path = stable_store(recorded, tmp / "experience")
    store = LocalExperienceStore(store_path)
    store.close()
    store.compact()
    trajectories = list(store.iter_trajectories(status="approved"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {name: [] for name in (*LOCAL_JOBS, *(RAY_JOBS if args.ray else ()))}
    expected: dict = {}
    for repeat in range(args.repeats):
        _job_round(runs, store_path, tmp / f"round-{repeat}", args.k, expected, rotation=repeat)
    n_branches = expected["branches"]
    rates = {name: [n_branches / r["wall_s"] for r in rs] for name, rs in runs.items()}
    ray_ratios = {
        f"{name.removeprefix('job_')}_vs_1_worker_speedup_median_min_max": [
            round(statistics.median(rates[name]) / statistics.median(rates["job_1_worker"]), 2),
            *spread([a / b for a, b in zip(rates[name], rates["job_1_worker"], strict=True)], 2)[::2],
        ]
        for name in RAY_JOBS
        if name in rates
    }
    return {
        "categories": list(MULTI_TURN_CATEGORIES),
        "trajectories": len(trajectories),
        "branches": n_branches,
        "repeats": args.repeats,
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "identical_rollouts_across_jobs": True,
        **{f"{name}_branches_per_s_min_median_max": spread(values, 1) for name, values in rates.items()},
        **{f"{name}_wall_s_min_median_max": spread([r["wall_s"] for r in rs], 2) for name, rs in runs.items()},
        **{f"{name}_first_outcome_s_min_median_max": spread([r["first_outcome_s"] for r in rs], 3) for name, rs in runs.items()},
        "cpu_us_per_branch_median": {
            name: round(statistics.median(r["job_cpu_s"] + r["children_cpu_s"] for r in rs) / n_branches * 1e6, 1)
            for name, rs in runs.items()
        },
        **_worker_speedups(rates, ""),
        **_worker_speedups(rates, "_cold"),
        **ray_ratios,
    }


def _worker_speedups(rates: dict[str, list[float]], cold: str) -> dict:
    """2 workers against 1, both jobs warm (``cold=""``) or both cold (``"_cold"``, see the docstring): the ratio of the
    medians and the min/max of the rounds' ratios."""
    import statistics

    two, one = rates[f"job_2_workers{cold}"], rates[f"job_1_worker{cold}"]
    ratios = [a / b for a, b in zip(two, one, strict=True)]
    return {
        f"job_2_vs_1_workers{cold}_speedup_median": round(statistics.median(two) / statistics.median(one), 2),
        f"job_2_vs_1_workers{cold}_speedup_min_max": [round(min(ratios), 2), round(max(ratios), 2)],
    }


def main() -> None:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="multi_turn_base")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here too.")
    parser.add_argument("--world", choices=["bfcl", "retail"], default="bfcl", help="retail: the 1 MB database world (see above).")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved repeats (both worlds).")
    parser.add_argument("--ray", action="store_true", help="--world bfcl: also run the job on a local Ray cluster with 2 actors.")
    parser.add_argument(
        "--sustained",
        action="store_true",
        help="--world bfcl: also the sustained case, every multi-turn category in one store (see above).",
    )
    parser.add_argument("--trajectories", type=int, default=4, help="--world retail: trajectories.")
    parser.add_argument("--steps", type=int, default=15, help="--world retail: tool calls per trajectory.")
    parser.add_argument("--one-job", type=Path, default=None, help=argparse.SUPPRESS)  # a cold job's own process
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_job is not None:
        _one_job(args.one_job, args.k, args.workers)
        return
    if args.world == "retail":
        results = retail_main(args)
        print(json.dumps(results, indent=2))
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # stable ids and the output digest live with the tests
    from tests.replay.golden_replay import stable_store

    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        recorded = Path(tmp) / "recorded"
        t0 = time.perf_counter()
        report = record_experts(recorded, args.category, limit=args.limit)
        record_s = time.perf_counter() - t0
        assert not report.failed, report.failed
        LocalExperienceStore(recorded).close()
        store_path = stable_store(recorded, Path(tmp) / "experience")
        store = LocalExperienceStore(store_path)
        store.close()
        store.compact()
        trajectories = list(store.iter_trajectories(status="approved"))
        states = sum(1 for t in trajectories for s in t.steps if s.action.tool_call is not None)

        proposer = Proposer(MutationPolicy(), k=args.k)
        t0 = time.perf_counter()
        plans = {}
        for t in trajectories:
            for s in t.steps:
                if s.action.tool_call is not None:
                    point = DecisionPoint(t.id, s.index, s.state, t.step_tools(s), s.action.tool_call)
                    plans[(t.id, s.index)] = [c.call for c in proposer.propose(point, seed=derive_seed(0, t.id, s.index)).accepted]
        propose_s = time.perf_counter() - t0
        n_branches = sum(len(calls) for calls in plans.values())

        # Untimed: every way of branching sees the same observation at every branch (the timed runs below are the same
        # code without collecting them).
        observations = {}
        for name, way in SANDBOX_WAYS.items():
            observations[name] = []
            assert way(trajectories, plans, seen=observations[name]) == n_branches, name
        assert all(seen == observations["sandbox_only"] for seen in observations.values()), (
            "the ways of branching saw different observations"
        )
        del observations

        runs: dict[str, list[dict]] = {**{name: [] for name in SANDBOX_WAYS}, **{name: [] for name in LOCAL_JOBS}}
        if args.ray:
            runs.update({name: [] for name in RAY_JOBS})
        expected = {"branches": n_branches}
        ways = list(SANDBOX_WAYS.items())
        for repeat in range(args.repeats):  # interleaved: every variant once per round
            # The heap this process holds (the loaded store, and ray's modules once a Ray job ran) frozen out of the
            # collector's way, as run_replay does for the job: without it every full collection walks that heap, and
            # after the first Ray job the baseline ran at half its speed while the job did not (a flattering ratio).
            gc.freeze()
            for name, way in ways[repeat % len(ways) :] + ways[: repeat % len(ways)]:  # which runs first rotates
                t0, c0 = time.perf_counter(), time.process_time()
                assert way(trajectories, plans) == n_branches
                runs[name].append({"wall_s": time.perf_counter() - t0, "job_cpu_s": time.process_time() - c0, "children_cpu_s": 0.0})
            gc.unfreeze()
            _job_round(runs, store_path, Path(tmp) / f"round-{repeat}", args.k, expected, rotation=repeat)
        sustained = _sustained(args, Path(tmp) / "sustained") if args.sustained else None
    load_after = [round(x, 2) for x in os.getloadavg()]

    rates = {name: [n_branches / r["wall_s"] for r in rs] for name, rs in runs.items()}
    median = {name: statistics.median(values) for name, values in rates.items()}
    results = {
        "category": args.category,
        "trajectories": len(trajectories),
        "states": states,
        "k": args.k,
        "branches": n_branches,
        "repeats": args.repeats,
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        "cpus": os.cpu_count(),
        "project_bytecode": project_bytecode(),
        "record_experts_s": round(record_s, 2),
        "mutation_proposals_per_s": round(n_branches / propose_s, 1),
        "snapshot_deepcopy_branch_per_s": round(median["sandbox_deepcopy"], 1),
        "naive_branch_per_s": round(median["naive"], 1),
        "identical_observations_across_ways_of_branching": True,
        "identical_rollouts_across_jobs": True,
    }
    for name, values in rates.items():
        results[f"{name}_branches_per_s_min_median_max"] = spread(values, 1)
    results["snapshot_vs_naive_speedup"] = round(median["sandbox_only"] / median["naive"], 2)
    per_round = [naive_run["wall_s"] / run["wall_s"] for run, naive_run in zip(runs["sandbox_only"], runs["naive"], strict=True)]
    results["snapshot_vs_naive_speedup_per_round_min_max"] = [round(min(per_round), 2), round(max(per_round), 2)]
    results["job_1_worker_vs_sandbox_only_median"] = round(median["job_1_worker"] / median["sandbox_only"], 3)
    # The same ratio in CPU time, which the load of other work on the machine does not change.
    cpu = {name: statistics.median(r["job_cpu_s"] + r["children_cpu_s"] for r in rs) for name, rs in runs.items()}
    results["cpu_us_per_branch_median"] = {name: round(c / n_branches * 1e6, 1) for name, c in cpu.items()}
    results["job_1_worker_vs_sandbox_only_cpu_median"] = round(cpu["sandbox_only"] / cpu["job_1_worker"], 3)
    results.update(_worker_speedups(rates, ""))
    results.update(_worker_speedups(rates, "_cold"))
    for name in RAY_JOBS:
        if name in median:
            results[f"{name.removeprefix('job_')}_vs_1_worker_speedup_median"] = round(median[name] / median["job_1_worker"], 2)
    for name, rs in runs.items():
        if name in SANDBOX_WAYS:
            continue
        # Start-up: from the job's start until its first trajectory is done (workers: started, warm, one trajectory replayed).
        results[f"{name}_first_outcome_s_min_median_max"] = spread([r["first_outcome_s"] for r in rs], 3)
        # The job process's own CPU per branch: with 2 workers, all it still does (load, hand out, count).
        results[f"{name}_job_process_cpu_us_per_branch_min_median_max"] = spread([r["job_cpu_s"] / n_branches * 1e6 for r in rs], 1)
        if name in ("job_2_workers", "job_2_workers_cold"):
            cold = name.removeprefix("job_2_workers")  # "" or "_cold": the 1-worker job it is compared with
            shares = [r["job_cpu_s"] / (r["job_cpu_s"] + r["children_cpu_s"]) for r in rs if r["job_cpu_s"] + r["children_cpu_s"] > 0]
            results[f"{name}_job_process_share_of_cpu_min_median_max"] = spread(shares, 3)
            job_cpu = statistics.median(r["job_cpu_s"] for r in rs)
            workers_cpu = statistics.median(r["children_cpu_s"] for r in rs)
            results[f"{name}_cpu_s_job_process_and_workers_median"] = [round(job_cpu, 2), round(workers_cpu, 2)]
            # What 2 workers could give on 2 cores with no start-up and perfect balance: 1 worker's CPU against all the CPU
            # of the 2-worker job (job process, fork server, workers) spread over 2 cores. An upper bound from CPU time,
            # for a machine whose other work makes the wall-clock ratio meaningless.
            results[f"job_2_vs_1_workers{cold}_cpu_bound_estimate_2_cores"] = round(
                cpu[f"job_1_worker{cold}"] / ((job_cpu + workers_cpu) / 2), 2
            )
            results[f"{name}_branches_replayed_by_job_process_min_median_max"] = spread(
                [r["branches_replayed_by_job_process"] for r in rs], 0
            )
    for name in ("job_1_worker_cold", "job_2_workers_cold"):
        if runs.get(name):  # the job's own process, in a fresh interpreter; and the largest of its fork server and workers
            results[f"{name}_job_process_peak_rss_mib_max"] = round(max(r["job_process_peak_rss_mib"] for r in runs[name]), 1)
            results[f"{name}_largest_worker_or_fork_server_peak_rss_mib_max"] = round(
                max(r["largest_child_peak_rss_mib"] for r in runs[name]), 1
            )
    if sustained is not None:
        results["sustained"] = sustained
    results["peak_rss_mib_this_process"] = round(peak_rss_mib(), 1)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
