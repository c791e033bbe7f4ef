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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="multi_turn_base")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here too.")
    args = parser.parse_args()

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
