"""Replay throughput on BFCL multi_turn_base: snapshot-and-branch vs the naive way, and 1 vs 2 workers.

    .venv/bin/python benchmarks/replay_throughput.py [--category multi_turn_base] [--limit 200] [--k 8]

Expert trajectories for every entry are recorded first (a real LangGraph agent replaying the ground
truth). Then, with the mutation policy and the same proposals for both:

(i)  snapshot-and-branch: at each recorded state take one snapshot, restore it for each of the K
     alternatives, then move on along the expert path (what the replay runner does, through the
     real BFCL sandbox: pickled once, unpickled per restore; also shown with plain deep copies);
(ii) naive: for every branch, rebuild the environment from step 0 and re-run the expert prefix
     before executing the alternative (what you do without snapshots).

Both are timed in this process, side by side. Then the full job (`run_replay`: proposals, sandbox,
fidelity checks and Parquet-spool writes) runs with 1 worker and with 2 worker processes on copies
of the same store, and the speed-up is reported.

    .venv/bin/python benchmarks/replay_throughput.py --world retail [--repeats 3] [--k 8]

runs instead the database-sized world: a retail database of about 1 MB as plain Python data (users,
orders, products; tests/replay/sandboxes/retail_world.py), replayed by the PythonSandbox with whole
copies (``journal=False``, every restore unpickles the world) and with its journal (a restore undoes
only the writes since the snapshot), interleaved, with identical observations checked and the
journaled sandbox run through the conformance kit first.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

from ee_middleware.bfcl.experts import record_experts
from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.runner import derive_seed
from ee_middleware.store import LocalExperienceStore


def snapshot_and_branch(trajectories: list, plans: dict, *, deepcopy: bool = False) -> int:
    """The replay runner's way, through the real BFCL sandbox (``deepcopy=True``: plain deep copies instead of pickled snapshots)."""
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
                sandbox.execute(call)
                branches += 1
            _restore(sandbox, snapshot, deepcopy)
            sandbox.execute(step.action.tool_call)
    return branches


def _restore(sandbox: BFCLSandbox, snapshot: object, deepcopy: bool) -> None:
    if deepcopy:
        sandbox._world = copy.deepcopy(snapshot)
    else:
        sandbox.restore(snapshot)


def naive(trajectories: list, plans: dict) -> int:
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
                sandbox.execute(call)
                branches += 1
    return branches


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
    import os
    import pickle
    import statistics
    import sys

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
            point = DecisionPoint(t.id, s.index, s.state, t.tools, s.action.tool_call)
            plans[(t.id, s.index)] = [c.call for c in proposer.propose(point, seed=derive_seed(0, t.id, s.index)).accepted]
    times: dict[str, list[float]] = {"whole_copy": [], "journal": []}
    outputs: dict[str, list[str]] = {}
    branches = 0
    for _ in range(args.repeats):  # interleaved
        for name, journal in (("whole_copy", False), ("journal", True)):
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
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "identical_observations": True,
        "conformance_kit": "passed (journaled, 1 MB world)",
    }
    for name, rates in rate.items():
        results[f"{name}_branches_per_s_min_median_max"] = [round(min(rates), 1), round(statistics.median(rates), 1), round(max(rates), 1)]
    results["journal_vs_whole_copy_speedup_median"] = round(statistics.median(rate["journal"]) / statistics.median(rate["whole_copy"]), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="multi_turn_base")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here too.")
    parser.add_argument("--world", choices=["bfcl", "retail"], default="bfcl", help="retail: the 1 MB database world (see above).")
    parser.add_argument("--repeats", type=int, default=3, help="--world retail: interleaved repeats.")
    parser.add_argument("--trajectories", type=int, default=4, help="--world retail: trajectories.")
    parser.add_argument("--steps", type=int, default=15, help="--world retail: tool calls per trajectory.")
    args = parser.parse_args()
    if args.world == "retail":
        results = retail_main(args)
        print(json.dumps(results, indent=2))
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
        return

    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "experience"
        t0 = time.perf_counter()
        report = record_experts(store_path, args.category, limit=args.limit)
        record_s = time.perf_counter() - t0
        assert not report.failed, report.failed
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
                    point = DecisionPoint(t.id, s.index, s.state, t.tools, s.action.tool_call)
                    plans[(t.id, s.index)] = [c.call for c in proposer.propose(point, seed=derive_seed(0, t.id, s.index)).accepted]
        propose_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        n_snap = snapshot_and_branch(trajectories, plans)
        snap_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_deep = snapshot_and_branch(trajectories, plans, deepcopy=True)
        deep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_naive = naive(trajectories, plans)
        naive_s = time.perf_counter() - t0
        assert n_snap == n_naive == n_deep

        jobs = {}
        for workers in (1, 2):
            copy_path = Path(tmp) / f"w{workers}"
            shutil.copytree(store_path, copy_path)
            summary = run_replay(ReplayConfig.load(store=copy_path, k=args.k, workers=workers))
            assert summary.done == len(trajectories) and summary.fidelity_mismatches == 0, summary.to_dict()
            jobs[workers] = summary

    results = {
        "category": args.category,
        "trajectories": len(trajectories),
        "states": states,
        "k": args.k,
        "branches": n_snap,
        "record_experts_s": round(record_s, 2),
        "mutation_proposals_per_s": round(n_snap / propose_s, 1),
        "snapshot_branch_per_s": round(n_snap / snap_s, 1),
        "snapshot_deepcopy_branch_per_s": round(n_deep / deep_s, 1),
        "naive_branch_per_s": round(n_naive / naive_s, 1),
        "snapshot_vs_naive_speedup": round(naive_s / snap_s, 2),
        "job_1_worker_branches_per_s": round(jobs[1].branches_per_s, 1),
        "job_2_workers_branches_per_s": round(jobs[2].branches_per_s, 1),
        "job_speedup_1_to_2_workers": round(jobs[1].duration_s / jobs[2].duration_s, 2),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
