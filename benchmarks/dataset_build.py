"""Dataset build speed: the vectorised IL+IWM builders vs a plain-Python loop, on a synthetic store.

    .venv/bin/python benchmarks/dataset_build.py [--steps 100000] [--k 8] [--baseline-steps 10000]

A synthetic store with ``--steps`` expert steps (10 per trajectory) and K rollouts per step is
written in the store's real layout (Parquet parts of the trajectories/steps/rollouts tables). The
polars builders (``build_il`` + ``build_iwm``) run on the whole store; the baseline, a
straightforward per-row Python loop producing the same rows (``json.loads``/``json.dumps`` per
example), runs on the first ``--baseline-steps`` steps' trajectories, and both report rows per
second (the vectorised builder is also timed on that same subset, side by side).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import tempfile
import time
from pathlib import Path

import polars as pl

from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.store.tables import ROLLOUT_SCHEMA, STEP_SCHEMA, TRAJECTORY_SCHEMA
from ee_middleware.trainers.datasets.il import build_il
from ee_middleware.trainers.datasets.iwm import IWMOptions, build_iwm
from ee_middleware.trainers.datasets.rows import IWM_INSTRUCTION
from ee_middleware.trainers.datasets.source import DatasetSource, load_source

STEPS_PER_TRAJECTORY = 10
TOOLS = [
    {
        "type": "function",
        "function": {"name": f"tool_{i}", "description": "d", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}},
    }
    for i in range(8)
]


def synthetic_store(root: Path, steps: int, k: int, seed: int = 0) -> LocalExperienceStore:
    rng = random.Random(seed)
    store = LocalExperienceStore(root, fsync=False)
    n_traj = steps // STEPS_PER_TRAJECTORY
    now = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    tools_json = json.dumps(TOOLS)
    trajectories = pl.DataFrame(
        {
            "id": [f"t{i:07d}" for i in range(n_traj)],
            "schema_version": "1.0",
            "app": "synthetic",
            "status": "completed",
            "started_at": now,
            "ended_at": now,
            "num_steps": STEPS_PER_TRAJECTORY,
            "source": "benchmark",
            "recorded_approval": "approved",
            "recorded_approval_by": "benchmark",
            "recorded_approval_at": now,
            "tools_json": tools_json,
            "messages_json": "[]",
        }
    )
    trajectories = trajectories.with_columns(
        [pl.lit(None).cast(t).alias(c) for c, t in TRAJECTORY_SCHEMA.items() if c not in trajectories.columns]
    )
    step_rows, rollout_rows = [], []
    for t in range(n_traj):
        state = [{"role": "user", "content": f"task {t}: " + "please do the thing " * 10}]
        for i in range(STEPS_PER_TRAJECTORY):
            call_id = f"c{t}-{i}"
            args = json.dumps({"x": f"value-{rng.randint(0, 999)}"})
            observation = f"result {rng.random():.6f} " * rng.randint(1, 8)
            step_rows.append(
                {"trajectory_id": f"t{t:07d}", "index": i, "decision_index": i, "state_json": json.dumps(state), "action_kind": "tool_call",
                 "tool_call_id": call_id, "tool_name": f"tool_{i % 8}", "arguments_json": args, "observation": observation,
                 "observation_is_error": False, "observation_truncated_chars": 0}
            )  # fmt: skip
            for b in range(k):
                rollout_rows.append(
                    {"id": f"r{t}-{i}-{b}", "schema_version": "1.0", "replay_id": "bench", "trajectory_id": f"t{t:07d}", "step_index": i,
                     "branch_index": b, "tool_call_id": f"alt-{i}-{b}", "tool_name": f"tool_{b}", "arguments_json": json.dumps({"x": f"alt-{b}"}),
                     "proposer_policy": "mutate", "proposer_json": '{"policy":"mutate"}', "observation": f"alt result {b} " * rng.randint(1, 6),
                     "observation_truncated_chars": 0, "is_error": b % 3 == 0, "synthetic": False, "sandbox": "bench", "duration_ms": 0.1,
                     "created_at": now}
                )  # fmt: skip
            state = [
                *state,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"id": call_id, "type": "function", "function": {"name": f"tool_{i % 8}", "arguments": args}}],
                },
                {"role": "tool", "tool_call_id": call_id, "content": observation},
            ]
    store._write_part("trajectories", trajectories.select(list(TRAJECTORY_SCHEMA)).cast(TRAJECTORY_SCHEMA))  # type: ignore[arg-type]
    steps_frame = pl.DataFrame(step_rows).with_columns(
        pl.lit(None, dtype=pl.Float64).alias("latency_ms"),
        pl.lit(None, dtype=pl.Float64).alias("model_latency_ms"),
        pl.lit(None, dtype=pl.String).alias("content"),
    )
    store._write_part("steps", steps_frame.select(list(STEP_SCHEMA)).cast(STEP_SCHEMA))  # type: ignore[arg-type]
    rollouts_frame = pl.DataFrame(rollout_rows).with_columns(pl.lit(None, dtype=pl.String).alias("proposer_model"))
    store._write_part("rollouts", rollouts_frame.select(list(ROLLOUT_SCHEMA)).cast(ROLLOUT_SCHEMA))  # type: ignore[arg-type]
    return store


def python_loop(source: DatasetSource, budget: int) -> list[dict]:
    """The obvious way: one dict per example, JSON decoded and re-encoded in Python."""
    tools = dict(source.trajectories.iter_rows())
    states = {}
    rows = []
    for step in source.steps.iter_rows(named=True):
        state = json.loads(step["state_json"])
        states[(step["trajectory_id"], step["index"])] = state
        call = {
            "id": step["tool_call_id"],
            "type": "function",
            "function": {"name": step["tool_name"], "arguments": step["arguments_json"]},
        }
        action = {"role": "assistant", "content": "", "tool_calls": [call]}
        rows.append({"kind": "il", "prompt": json.dumps(state), "completion": json.dumps([action]), "tools": tools[step["trajectory_id"]]})
        observation = step["observation"][:budget]
        prompt = [*state, action, {"role": "user", "content": IWM_INSTRUCTION}]
        rows.append(
            {
                "kind": "iwm",
                "prompt": json.dumps(prompt),
                "completion": json.dumps([{"role": "assistant", "content": observation}]),
                "tools": tools[step["trajectory_id"]],
            }
        )
    for r in source.rollouts.iter_rows(named=True):
        state = states[(r["trajectory_id"], r["step_index"])]
        call = {"id": r["tool_call_id"], "type": "function", "function": {"name": r["tool_name"], "arguments": r["arguments_json"]}}
        prompt = [*state, {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "user", "content": IWM_INSTRUCTION}]
        rows.append(
            {
                "kind": "iwm",
                "prompt": json.dumps(prompt),
                "completion": json.dumps([{"role": "assistant", "content": r["observation"][:budget]}]),
                "tools": tools[r["trajectory_id"]],
            }
        )
    pl.DataFrame(rows)
    return rows


def vectorised(source: DatasetSource) -> int:
    return build_il(source).height + build_iwm(source, IWMOptions(max_error_share=1.0)).height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--baseline-steps", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = synthetic_store(Path(tmp) / "store", args.steps, args.k)
        make_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        source = load_source(store)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        full_rows = vectorised(source)
        full_s = time.perf_counter() - t0

        subset_ids = source.trajectories["id"].head(args.baseline_steps // STEPS_PER_TRAJECTORY)
        subset = DatasetSource(
            trajectories=source.trajectories.filter(pl.col("id").is_in(subset_ids.implode())),
            steps=source.steps.filter(pl.col("trajectory_id").is_in(subset_ids.implode())),
            rollouts=source.rollouts.filter(pl.col("trajectory_id").is_in(subset_ids.implode())),
        )
        t0 = time.perf_counter()
        sub_rows = vectorised(subset)
        sub_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        base_rows = len(python_loop(subset, IWMOptions().max_observation_tokens * 4))
        base_s = time.perf_counter() - t0
        assert base_rows == sub_rows, (base_rows, sub_rows)

    results = {
        "steps": args.steps,
        "k": args.k,
        "rollouts": args.steps * args.k,
        "make_store_s": round(make_s, 1),
        "load_source_s": round(load_s, 2),
        "vectorised_full_rows": full_rows,
        "vectorised_full_s": round(full_s, 2),
        "vectorised_full_rows_per_s": round(full_rows / full_s),
        "subset_rows": sub_rows,
        "vectorised_subset_rows_per_s": round(sub_rows / sub_s),
        "python_loop_subset_rows_per_s": round(base_rows / base_s),
        "speedup_vs_python_loop": round(base_s / sub_s, 1),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
