"""Reading a freshly captured store (its spool) against reading the same store compacted (Parquet).

    .venv/bin/python benchmarks/store_read.py [--category multi_turn_base] [--limit 200] [--repeats 5]
    .venv/bin/python benchmarks/store_read.py --store PATH   # an existing store instead of recording one

Expert trajectories for every entry are recorded first (a real LangGraph agent replaying the BFCL ground
truth; the store is left as capture leaves it: every trajectory in the spool). The store is copied twice:
one copy stays as it is, the other is compacted into Parquet parts. Then each workload reads each copy
in a fresh process (cold: nothing imported or cached from an earlier read), interleaved (every
workload on both copies once per round) for --repeats rounds:

* ``job``: what the replay job reads before it starts (``select_trajectories``: the approved trajectories' ids
  (``trajectory_columns``) and ``replays()``, then every ``iter_trajectories(status="approved")``) on one store handle;
* ``iter``: ``iter_trajectories()`` alone on a fresh handle;
* ``trajectories``: ``trajectories()`` alone (the frame ``ee traces list`` shows);
* ``lookup``: ``get()`` of one trajectory by the first 12 characters of its id (``ee traces show ID``), the middle one
  written.

Each child times its read in CPU seconds (``time.process_time``: other work on the 2-core machine does
not change it; wall seconds are printed too) after its imports, then again after a full ``gc.collect()``
(``settled``: the collector's work the read left behind is counted too, as the store switches the
collector off while it decodes the spool), and reports its peak RSS (``VmHWM``, its own image's) and a digest of what it
read (every trajectory's ``model_dump_json`` and the frames' rows). Which copy is read first alternates round by round.
The script prints min/median/max per workload and copy, the spool/Parquet ratios (median, and the per-round min/max;
``settled`` is the one to quote: it counts the collector's work the spool's read defers), the load average before and
after, and checks that every read of both copies gave identical outputs.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _ee import json_child, peak_rss_mib, spread

WORKLOADS = ("job", "iter", "trajectories", "lookup")


def _child(store_path: Path, workload: str, lookup_id: str = "") -> dict:
    """One cold read in this (fresh) process."""
    import polars as pl

    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.store.registry import trajectory_columns

    digest = hashlib.sha256()
    c0, t0 = time.process_time(), time.perf_counter()
    store = LocalExperienceStore(store_path, create=False)
    if workload == "job":
        approved = trajectory_columns(store, ["id"], status="approved")
        finished = store.replays(replay_id="r").filter(pl.col("status").is_in(["done", "skipped"]))
        trajectories = list(store.iter_trajectories(status="approved"))
        frames = [approved, finished]
    elif workload == "iter":
        trajectories = list(store.iter_trajectories())
        frames = []
    elif workload == "lookup":
        trajectories = [store.get(lookup_id[:12])]
        frames = []
    else:
        trajectories = []
        frames = [store.trajectories()]
    cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - t0
    gc.collect()  # what the collector still owes for the objects the read made (the store defers it while decoding)
    settled_cpu_s = time.process_time() - c0
    for t in trajectories:
        digest.update(t.model_dump_json().encode())
    for df in frames:
        digest.update(repr(df.rows()).encode())
    return {
        "cpu_s": cpu_s,
        "settled_cpu_s": settled_cpu_s,
        "wall_s": wall_s,
        "trajectories": len(trajectories),
        "steps": sum(len(t.steps) for t in trajectories),
        "digest": digest.hexdigest(),
        "peak_rss_mb": peak_rss_mib(),  # VmHWM: ru_maxrss would report this child's parent's peak (the benchmark's)
    }


def _run_child(store_path: Path, workload: str, lookup_id: str) -> dict:
    command = [sys.executable, __file__, "--child", str(store_path), "--workload", workload, "--lookup-id", lookup_id]
    return json_child(command, f"reading {store_path} ({workload})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="multi_turn_base")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--store", type=Path, default=None, help="Read a copy of this store instead of recording experts.")
    parser.add_argument("--repeats", type=int, default=5, help="Interleaved rounds (every workload on both copies per round).")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"Comma-separated, of {', '.join(WORKLOADS)}.")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here too.")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="job", help=argparse.SUPPRESS)
    parser.add_argument("--lookup-id", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.workload, args.lookup_id)))
        return

    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.store.spool import list_segments

    workloads = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"Unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}.")
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        spool_copy, parquet_copy = Path(tmp) / "spool", Path(tmp) / "parquet"
        if args.store is None:
            from ee_middleware.bfcl.experts import record_experts

            report = record_experts(spool_copy, args.category, limit=args.limit)
            assert not report.failed, report.failed
            LocalExperienceStore(spool_copy).close()
        else:
            shutil.copytree(args.store, spool_copy)
        shutil.copytree(spool_copy, parquet_copy)
        LocalExperienceStore(parquet_copy).compact()
        spool_bytes = sum(p.stat().st_size for p in list_segments(spool_copy / "spool"))
        parquet_bytes = sum(p.stat().st_size for p in parquet_copy.glob("*/part-*.parquet"))
        if not spool_bytes:
            raise SystemExit(f"{args.store} has nothing in its spool (compacted already?): give a freshly captured store.")
        ids = LocalExperienceStore(parquet_copy).trajectory_index(["id"])["id"].to_list()
        lookup_id = ids[len(ids) // 2]

        runs: dict[tuple[str, str], list[dict]] = {}
        copies = [("spool", spool_copy), ("parquet", parquet_copy)]
        for repeat in range(args.repeats):  # interleaved: every workload on both copies once per round, which first alternating
            for workload in workloads:
                for name, path in copies if repeat % 2 == 0 else copies[::-1]:
                    runs.setdefault((workload, name), []).append(_run_child(path, workload, lookup_id))
    load_after = [round(x, 2) for x in os.getloadavg()]

    results: dict = {
        "store": str(args.store) if args.store else f"{args.category} experts, limit {args.limit}",
        "spool_mb": round(spool_bytes / 1e6, 2),
        "parquet_mb": round(parquet_bytes / 1e6, 2),
        "repeats": args.repeats,
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        "cpus": os.cpu_count(),
    }
    for workload in workloads:
        spool_runs, parquet_runs = runs[(workload, "spool")], runs[(workload, "parquet")]
        digests = {r["digest"] for r in spool_runs + parquet_runs}
        if len(digests) != 1:
            raise SystemExit(f"{workload}: the spool and the Parquet copy read differently ({len(digests)} distinct outputs).")
        ratios = [s["cpu_s"] / p["cpu_s"] for s, p in zip(spool_runs, parquet_runs, strict=True)]
        results[workload] = {
            "trajectories": spool_runs[0]["trajectories"],
            "steps": spool_runs[0]["steps"],
            "spool_cpu_s_min_median_max": spread([r["cpu_s"] for r in spool_runs]),
            "parquet_cpu_s_min_median_max": spread([r["cpu_s"] for r in parquet_runs]),
            "spool_wall_s_min_median_max": spread([r["wall_s"] for r in spool_runs]),
            "parquet_wall_s_min_median_max": spread([r["wall_s"] for r in parquet_runs]),
            "spool_vs_parquet_cpu_median": round(
                statistics.median(r["cpu_s"] for r in spool_runs) / statistics.median(r["cpu_s"] for r in parquet_runs), 2
            ),
            "spool_vs_parquet_cpu_per_round_min_max": [round(min(ratios), 2), round(max(ratios), 2)],
            "spool_settled_cpu_s_min_median_max": spread([r["settled_cpu_s"] for r in spool_runs]),
            "parquet_settled_cpu_s_min_median_max": spread([r["settled_cpu_s"] for r in parquet_runs]),
            "spool_vs_parquet_settled_cpu_median": round(
                statistics.median(r["settled_cpu_s"] for r in spool_runs) / statistics.median(r["settled_cpu_s"] for r in parquet_runs), 2
            ),
            "spool_peak_rss_mb_max": round(max(r["peak_rss_mb"] for r in spool_runs), 1),
            "parquet_peak_rss_mb_max": round(max(r["peak_rss_mb"] for r in parquet_runs), 1),
            "identical_outputs": True,
        }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
