"""One record from a large store: the filtered read the store does against reading its tables whole and filtering.

    .venv/bin/python benchmarks/store_lookup.py [--trajectories 20000] [--repeats 5]

A store of ``--trajectories`` runs is written (generated: each run 4 tool calls, its messages and states made unique,
about 1 kB of text a message, as a real support agent's are), compacted into Parquet parts, and a handful of its runs
approved and given rollouts. Then each lookup is timed in a fresh Python process (cold: nothing imported or cached
from an earlier read), both ways interleaved, the order alternating round by round:

* ``whole``: what the store did before its lookups filtered as they read (and what a store plug-in that reads its
  tables whole still does): every row of the tables the answer comes from (``trajectories()``, ``steps()``,
  ``rollouts()``), then the rows of the one run;
* ``filtered``: the store's own lookup (``get(id)``, ``steps(id)``, ``approvals(id)``, ``rollouts(id)``,
  ``approve(id)`` on a copy), whose filter the Parquet reader applies as it reads.

Each child reports its wall and CPU seconds after its imports and its peak RSS (``VmHWM``); both ways must give the
same answer (a digest of the records, compared every round) or the script fails. It prints min/median/max per lookup
and way, the whole/filtered ratios of the medians (time and peak memory), and the load average before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _ee import json_child, peak_rss_mib, spread

LOOKUPS = ("get", "steps", "approvals", "rollouts", "approve")
WANTED = "run-00777"
"""The run every lookup asks for (the store holds it in one of its middle parts)."""


def _child(store_path: Path, lookup: str, way: str) -> dict:
    import polars as pl

    from ee_middleware.store import LocalExperienceStore

    c0, t0 = time.process_time(), time.perf_counter()
    store = LocalExperienceStore(store_path, create=False)
    if lookup == "get":  # the run's row and its steps: compared by id, decision, messages and every step's row
        if way == "whole":
            row = store.trajectories().filter(pl.col("id") == WANTED).row(0, named=True)
            steps = store.steps().filter(pl.col("trajectory_id") == WANTED)
            answer = [row["id"], row["approval"], json.loads(row["messages_json"]), steps.rows()]
        else:
            t = store.get(WANTED)
            answer = [t.id, t.approval.status, t.model_dump(mode="json")["messages"], store.steps([WANTED]).rows()]
    elif lookup == "steps":
        frame = store.steps().filter(pl.col("trajectory_id") == WANTED) if way == "whole" else store.steps([WANTED])
        answer = frame.rows()
    elif lookup == "approvals":
        frame = store.approvals().filter(pl.col("trajectory_id") == WANTED) if way == "whole" else store.approvals([WANTED])
        answer = frame.rows()
    elif lookup == "rollouts":
        frame = store.rollouts().filter(pl.col("trajectory_id") == WANTED) if way == "whole" else store.rollouts([WANTED])
        answer = frame.rows()
    else:  # approve: the decision, as approving read before (the whole trajectories table for the current decisions)
        if way == "whole":
            current = store.trajectories().filter(pl.col("id") == WANTED).row(0, named=True)["approval"]
        else:
            current = store.trajectory_index(["id"], ids=[WANTED]).row(0, named=True)["approval"]
        store.approve(WANTED, by="bench", reason=way)
        answer = [current]
    wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "peak_rss_mib": peak_rss_mib(),
        "digest": hashlib.sha256(repr(answer).encode()).hexdigest(),
    }


def _run_child(store_path: Path, lookup: str, way: str) -> dict:
    return json_child([sys.executable, __file__, "--child", str(store_path), "--lookup", lookup, "--way", way], f"{lookup} ({way})")


def _build(root: Path, n: int) -> None:
    """``n`` generated runs, unique text in every message and state, compacted; ten approved, five with rollouts."""
    from ee_middleware.records import Trajectory
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory

    filler = " ".join(f"word{i}" for i in range(150))  # about 1 kB a message

    def made(i: int) -> Trajectory:
        data = sample_trajectory(f"run-{i:05d}", steps=4).model_dump(mode="json")

        def unique(o: object) -> object:
            if isinstance(o, dict):
                return {k: (f"{v} {filler} #{i}" if k == "content" and isinstance(v, str) else unique(v)) for k, v in o.items()}
            return [unique(v) for v in o] if isinstance(o, list) else o

        return Trajectory.model_validate(unique(data))

    store = LocalExperienceStore(root)
    for start in range(0, n, 2000):
        store.write([made(i) for i in range(start, min(n, start + 2000))])
        store.close()
        store.compact()
    store.approve([f"run-{i:05d}" for i in range(770, 780)], by="alice")
    for i in (775, 776, 777, 778, 779):
        tid = f"run-{i:05d}"
        store.write_replay(sample_replay_record(tid), [sample_rollout(f"roll-{i}-{b}", tid, 0, b) for b in range(8)])
    store.close()
    store.compact()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5, help="Interleaved rounds (every lookup both ways per round).")
    parser.add_argument("--lookups", default=",".join(LOOKUPS), help=f"Comma-separated, of {', '.join(LOOKUPS)}.")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here too.")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lookup", default="get", help=argparse.SUPPRESS)
    parser.add_argument("--way", default="filtered", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.lookup, args.way)))
        return
    lookups = [x for x in args.lookups.split(",") if x]
    if unknown := sorted(set(lookups) - set(LOOKUPS)):
        raise SystemExit(f"Unknown lookup {', '.join(unknown)}; choose from {', '.join(LOOKUPS)}.")
    if args.trajectories <= 777:
        raise SystemExit("--trajectories must be more than 777 (the run looked up is run-00777).")
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "store"
        t0 = time.perf_counter()
        _build(store_path, args.trajectories)
        built_s = time.perf_counter() - t0
        parquet_mib = sum(p.stat().st_size for p in store_path.glob("*/part-*.parquet")) / 2**20
        load_before = [round(x, 2) for x in os.getloadavg()]
        runs: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(args.repeats):
            for lookup in lookups:
                for way in ("whole", "filtered")[:: 1 if repeat % 2 == 0 else -1]:
                    target = store_path
                    if lookup == "approve":  # each decision on a copy of the store as built
                        target = Path(tmp) / f"copy-{way}"
                        shutil.rmtree(target, ignore_errors=True)
                        shutil.copytree(store_path, target)
                    runs.setdefault((lookup, way), []).append(_run_child(target, lookup, way))
            for lookup in lookups:
                digests = {runs[(lookup, way)][-1]["digest"] for way in ("whole", "filtered")}
                assert len(digests) == 1, f"{lookup}: the two ways answered differently"
        results: dict = {
            "trajectories": args.trajectories,
            "parquet_mib": round(parquet_mib, 1),
            "build_s": round(built_s, 1),
            "repeats": args.repeats,
            "load_average_1_5_15_before": load_before,
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
            "identical_answers": True,
        }
        for lookup in lookups:
            whole, filtered = runs[(lookup, "whole")], runs[(lookup, "filtered")]
            entry = {}
            for way, rs in (("whole", whole), ("filtered", filtered)):
                entry[f"{way}_wall_s_min_median_max"] = spread([r["wall_s"] for r in rs])
                entry[f"{way}_peak_rss_mib_min_median_max"] = spread([r["peak_rss_mib"] for r in rs], 1)
            entry["wall_ratio_whole_over_filtered_median"] = round(
                entry["whole_wall_s_min_median_max"][1] / entry["filtered_wall_s_min_median_max"][1], 2
            )
            entry["peak_rss_ratio_whole_over_filtered_median"] = round(
                entry["whole_peak_rss_mib_min_median_max"][1] / entry["filtered_peak_rss_mib_min_median_max"][1], 2
            )
            results[lookup] = entry
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
