"""Dataset build: ``ee datasets build`` (IL + IWM) vs a plain-Python build that splices the stored JSON.

    .venv/bin/python benchmarks/dataset_build.py [--steps 100000] [--k 8] [--repeats 3]
    .venv/bin/python benchmarks/dataset_build.py --steps 10000,50000,100000 --repeats 1      # memory vs store size
    .venv/bin/python benchmarks/dataset_build.py --steps 10000 --before-ref HEAD~3            # + an older ee build
    .venv/bin/python benchmarks/dataset_build.py --steps 10000 --redaction                    # with the default redaction rules
    .venv/bin/python benchmarks/dataset_build.py --steps 20000 --sides ee --kinds il,iwm,sr --before-ref HEAD~1  # + SR (template teacher)

For each size, a synthetic store with ``--steps`` expert steps (``--steps-per-trajectory`` per
trajectory, a state growing by two messages per step, written as the store writes it: compact JSON) and ``--k`` rollouts per step is written in the
store's real layout (Parquet parts and a manifest), not timed. Then each side builds the IL and IWM
datasets (no error cap, observations cut at 512 tokens) from that store into Parquet files, **each
run in a fresh process** (cold: nothing imported, read or built before in that process; the OS
file cache is warm for both), with its peak resident memory taken from the kernel (``VmHWM`` of
that process, see :func:`_ee.peak_rss_mib`) and its time measured over the whole build: opening the store,
loading the source, building, redacting and writing the Parquet files.

Sides, interleaved (the order alternates between repeats), each repeat gives min/median/max:

* ``ee``: :func:`ee_middleware.trainers.datasets.build.build_datasets`, as ``ee datasets build``;
* ``python``: the fair plain-Python baseline: the store's Parquet read with polars, then one Python
  loop that builds every row by splicing the stored JSON text (the stored state is never decoded:
  the IWM prompt is the state's text with the action and the instruction appended; actions and
  answers are JSON written from their parts), the same redaction (the store's redactor on every
  prompt and completion, each prompt whole: ``ee`` walks each distinct message of a trajectory's prompts once, which
  gives the same text) and one Parquet write per file. Row ids use the same hash expression;
* ``ee@REF`` (with ``--before-ref REF``): the ``ee`` side run from the code at a git revision (for
  before/after numbers).

The store's ``redaction.json`` turns the redaction rules off unless ``--redaction``: with the default
rules, scanning every prompt and completion with the redaction regexes is about 95% of the build's
time on every side (the same scan of the same rows), so it hides the builders' cost and makes a 100k
build take about ten minutes a side; memory is the same either way. ``--redaction`` measures it.

``--kinds il,iwm,sr`` also builds SR with the deterministic template teacher on the ``ee`` sides (the
plain-Python side builds IL and IWM only, so it needs ``--sides ee``): all three kinds read the same
groups of trajectories.

Both sides' files are then compared row by row (every column, in order, in slices), and the
sha256 of each file's prompts and of all its rows is printed: the run stops if they differ. Between
``ee`` sides, ``datasets.json`` must be the same too, but for the timings (``seconds``) and the output folder. The
load average is printed before and after; ratios are ``python / ee`` for time and memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from _ee import before_tree, peak_rss_mib

KINDS = ("il", "iwm")
"""What the sides build by default (the plain-Python side builds only these)."""
TOOLS = [
    {
        "type": "function",
        "function": {"name": f"tool_{i}", "description": "d", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}},
    }
    for i in range(8)
]


# --- the synthetic store --------------------------------------------------------------------------


def synthetic_store(root: Path, steps: int, k: int, per_trajectory: int, seed: int = 0) -> None:
    """A store with ``steps`` steps in groups of ``per_trajectory`` and ``k`` rollouts each, written
    as at most 16 Parquet parts per table (a compaction then only writes the manifest)."""
    from ee_middleware.store.local import LocalExperienceStore
    from ee_middleware.store.tables import ROLLOUT_SCHEMA, STEP_SCHEMA, TRAJECTORY_SCHEMA

    rng = random.Random(seed)
    store = LocalExperienceStore(root, fsync=False)
    n_traj = max(1, steps // per_trajectory)
    now = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    tools_json = json.dumps(TOOLS)
    per_part = -(-n_traj // 12)
    parts: list[Path] = []  # (the parts written, unlisted until the compaction below adopts them)
    for first in range(0, n_traj, per_part):
        ids = range(first, min(n_traj, first + per_part))
        trajectories = pl.DataFrame(
            {
                "id": [f"t{t:07d}" for t in ids],
                "schema_version": "1.0",
                "app": "synthetic",
                "status": "completed",
                "started_at": now,
                "ended_at": now,
                "num_steps": per_trajectory,
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
        for t in ids:
            state = [{"role": "user", "content": f"task {t}: " + "please do the thing " * 10}]
            for i in range(per_trajectory):
                call_id = f"c{t}-{i}"
                args = json.dumps({"x": f"value-{rng.randint(0, 999)}"})
                observation = f"result {rng.random():.6f} " * rng.randint(1, 8)
                step_rows.append(
                    {"trajectory_id": f"t{t:07d}", "index": i, "decision_index": i, "state_json": _string(state), "action_kind": "tool_call",
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
        store._write_part("trajectories", trajectories.select(list(TRAJECTORY_SCHEMA)).cast(TRAJECTORY_SCHEMA), parts)  # type: ignore[arg-type]
        steps_frame = pl.DataFrame(step_rows).with_columns(
            [pl.lit(None, dtype=t).alias(c) for c, t in STEP_SCHEMA.items() if c not in step_rows[0]]
        )
        store._write_part("steps", steps_frame.select(list(STEP_SCHEMA)).cast(STEP_SCHEMA), parts)  # type: ignore[arg-type]
        if rollout_rows:
            rollouts = pl.DataFrame(rollout_rows).with_columns(
                [pl.lit(None, dtype=t).alias(c) for c, t in ROLLOUT_SCHEMA.items() if c not in rollout_rows[0]]
            )
            store._write_part("rollouts", rollouts.select(list(ROLLOUT_SCHEMA)).cast(ROLLOUT_SCHEMA), parts)  # type: ignore[arg-type]
    store.compact()  # writes the manifest (no merge: at most 16 parts per table)
    store.close()


# --- the sides (each runs in its own process: `--side NAME --store S --out O`) ---------------------


def side_ee(store: Path, out: Path, kinds: tuple[str, ...] = KINDS) -> None:
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

    build_datasets(DatasetConfig.load(store=store, out=out, kinds=",".join(kinds), iwm_max_error_share=1.0, teacher="template"))


def _string(value: Any) -> str:
    """``value`` as the store writes JSON (compact, UTF-8 unescaped)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _action(call_id: str | None, name: str, arguments: str | None) -> str:
    return (
        '{"role":"assistant","content":"","tool_calls":[{"id":' + _string(call_id or "") + ',"type":"function","function":{"name":'
        + _string(name) + ',"arguments":' + _string(arguments if arguments is not None else "{}") + "}}]}"
    )  # fmt: skip


def side_python(store: Path, out: Path, kinds: tuple[str, ...] = KINDS) -> None:
    """The plain-Python build (see the module docstring): read, splice, redact, write."""
    from ee_middleware.capture.store_redaction import store_redactor
    from ee_middleware.store.local import TABLES, LocalExperienceStore
    from ee_middleware.store.manifest import read_manifest
    from ee_middleware.trainers.datasets.iwm import IWMOptions, kept_chars
    from ee_middleware.trainers.datasets.rows import IWM_INSTRUCTION, conform, example_id

    opened = LocalExperienceStore(store, create=False)
    redactor = store_redactor(opened, create_salt=False)
    manifest = read_manifest(store, TABLES)

    def table(name: str, columns: list[str]) -> pl.DataFrame:
        return pl.concat([pl.read_parquet(p, columns=columns) for p in manifest.paths(store, name)])

    tools = dict(table("trajectories", ["id", "tools_json"]).iter_rows())  # every trajectory is approved here
    steps = table("steps", ["trajectory_id", "index", "state_json", "action_kind", "tool_call_id", "tool_name", "arguments_json",
                            "content", "observation", "observation_is_error", "observation_truncated_chars"])  # fmt: skip
    rollouts = table("rollouts", ["id", "trajectory_id", "step_index", "branch_index", "replay_id", "proposer_policy", "tool_call_id",
                                  "tool_name", "arguments_json", "observation", "is_error", "observation_truncated_chars"])  # fmt: skip
    digest = hashlib.sha256()
    for ids in (sorted(tools), sorted(rollouts["id"].to_list())):
        digest.update("\n".join(ids).encode())
        digest.update(b"\x00")
    digest.update(str(steps.height).encode())
    source_hash = digest.hexdigest()[:16]
    redact = redactor.redact_value if redactor.enabled else (lambda text: text)
    instruction = '{"role":"user","content":' + _string(IWM_INSTRUCTION) + "}"

    il: dict[str, list[Any]] = {c: [] for c in ("prompt", "completion", "tools", "trajectory_id", "step_index")}
    states: dict[tuple[str, int], str] = {}
    expert: list[tuple[Any, ...]] = []
    for trajectory_id, index, state, kind, call_id, name, arguments, content, observation, is_error, cut in steps.iter_rows():
        states[(trajectory_id, index)] = state
        if kind == "tool_call":
            target = _action(call_id, name, arguments)
            if observation is not None:
                expert.append((trajectory_id, index, None, None, "expert", call_id, name, arguments, observation, bool(is_error), cut))
        else:
            target = '{"role":"assistant","content":' + _string(content or "") + "}"
        il["prompt"].append(redact(state))
        il["completion"].append(redact("[" + target + "]"))
        il["tools"].append(tools[trajectory_id] or "[]")
        il["trajectory_id"].append(trajectory_id)
        il["step_index"].append(index)

    iwm: dict[str, list[Any]] = {
        c: []
        for c in ("prompt", "completion", "tools", "trajectory_id", "step_index", "branch_index", "replay_id", "proposer", "is_error",
                  "observation_truncated_chars")
    }  # fmt: skip
    ordered = rollouts.sort(["trajectory_id", "step_index", "branch_index"], maintain_order=True).drop("id")
    candidates = [*ordered.iter_rows(), *expert]
    # the budget's cut (the longest head whose estimated tokens fit), priced for all observations at once
    kept = kept_chars(pl.Series([row[8] for row in candidates], dtype=pl.String), IWMOptions())
    for (trajectory_id, step, branch, replay_id, proposer, call_id, name, arguments, observation, is_error, cut), keep in zip(
        candidates, kept, strict=True
    ):
        state = states.get((trajectory_id, step))
        if state is None:
            continue
        body = state.rstrip()
        splice = "," if body.strip() != "[]" else ""
        prompt = body[:-1] + splice + _action(call_id, name, arguments) + "," + instruction + "]"
        shown = observation[:keep]
        iwm["prompt"].append(redact(prompt))
        iwm["completion"].append(redact('[{"role":"assistant","content":' + _string(shown) + "}]"))
        iwm["tools"].append(tools[trajectory_id] or "[]")
        iwm["trajectory_id"].append(trajectory_id)
        iwm["step_index"].append(step)
        iwm["branch_index"].append(branch)
        iwm["replay_id"].append(replay_id)
        iwm["proposer"].append(proposer)
        iwm["is_error"].append(is_error)
        iwm["observation_truncated_chars"].append((cut or 0) + max(0, len(observation) - keep))

    out.mkdir(parents=True, exist_ok=True)
    for kind, columns in (("il", il), ("iwm", iwm)):
        if any("[REDACTED:" in c for c in columns["completion"]):
            raise SystemExit("the baseline does not implement the placeholder rules of privacy.guard_rows; use data without PII")
        frame = pl.DataFrame(columns).with_columns(pl.lit(kind).alias("kind"), pl.lit(source_hash).alias("source_hash"))
        if kind == "il":
            frame = frame.with_columns(pl.lit("expert").alias("proposer"))
        keys = [pl.col("trajectory_id"), pl.col("step_index")] + ([pl.col("branch_index"), pl.col("replay_id")] if kind == "iwm" else [])
        frame = conform(frame.with_columns(example_id(pl.lit(kind), *keys).alias("id")))
        frame.write_parquet(out / f"{kind}.parquet", compression="zstd")


SIDES = {"ee": side_ee, "python": side_python}


def run_child(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    SIDES[args.side.split("@")[0]](Path(args.store), Path(args.out), tuple(args.kinds.split(",")))
    print(json.dumps({"build_s": time.perf_counter() - started, "peak_mib": peak_rss_mib()}))


# --- the parent -----------------------------------------------------------------------------------


def run_side(side: str, store: Path, out: Path, env: dict[str, str], kinds: str = ",".join(KINDS)) -> dict[str, float]:
    """One build in a fresh process: wall time, the child's own build time and its peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--side", side, "--store", str(store), "--out", str(out), "--kinds", kinds]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage (ru_maxrss: its peak RSS)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0), stderr.seek(0)  # type: ignore[func-returns-value]
        output, errors = stdout.read().decode(), stderr.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"{side} failed ({process.returncode}):\n{errors[-3000:]}")
    reported = json.loads(output.strip().splitlines()[-1])
    return {"process_s": wall, "build_s": reported["build_s"], "peak_mib": reported["peak_mib"], "wait4_maxrss_mib": usage.ru_maxrss / 1024}


def compare(a: Path, b: Path, slice_rows: int = 50_000) -> dict[str, Any]:
    """Both files row by row (every column, in order, a slice at a time) and their hashes."""
    left, right = pl.scan_parquet(a), pl.scan_parquet(b)
    n_left = left.select(pl.len()).collect().item()
    n_right = right.select(pl.len()).collect().item()
    if n_left != n_right:
        raise SystemExit(f"{a} has {n_left} rows, {b} has {n_right}")
    prompts, rows = hashlib.sha256(), hashlib.sha256()
    for offset in range(0, n_left, slice_rows):
        x, y = left.slice(offset, slice_rows).collect(), right.slice(offset, slice_rows).collect()
        if not x.equals(y):
            bad = next(i for i in range(x.height) if x.row(i) != y.row(i))
            raise SystemExit(f"row {offset + bad} differs between {a} and {b}:\n{x.row(bad)}\n{y.row(bad)}")
        for prompt in x["prompt"].to_list():
            prompts.update(prompt.encode())
            prompts.update(b"\x00")
        rows.update(x.write_ipc(None, compression="uncompressed").getvalue())
    return {"rows": n_left, "prompts_sha256": prompts.hexdigest()[:16], "rows_sha256": rows.hexdigest()[:16]}


def same_manifest(a: Path, b: Path) -> None:
    """Stop unless both builds' ``datasets.json`` are the same but for timings and the output folder."""

    def plain(out: Path) -> Any:
        def strip(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if k != "seconds"}
            if isinstance(value, list):
                return [strip(v) for v in value]
            return value.replace(str(out), "OUT") if isinstance(value, str) else value

        return strip(json.loads((out / "datasets.json").read_text()))

    if plain(a) != plain(b):
        raise SystemExit(f"{a}/datasets.json and {b}/datasets.json differ:\n{json.dumps(plain(a))}\n{json.dumps(plain(b))}")


def stats(values: list[float]) -> str:
    return f"{min(values):8.2f} {statistics.median(values):8.2f} {max(values):8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="100000", help="Expert steps in the store; a comma-separated list runs several sizes.")
    parser.add_argument("--k", type=int, default=8, help="Rollouts per step.")
    parser.add_argument("--steps-per-trajectory", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before-ref", help="Also run the ee side from the code at this git revision.")
    parser.add_argument("--sides", default="ee,python", help="Sides to run (ee is always run: the others are compared with it).")
    parser.add_argument(
        "--redaction",
        action="store_true",
        help="Keep the default redaction rules on the store (by default its redaction.json turns them off; see the docstring).",
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help="Datasets to build (il,iwm,sr; sr needs --sides ee).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_child(args)
        return
    kinds = tuple(args.kinds.split(","))
    if "python" in args.sides.split(",") and set(kinds) - set(KINDS):
        parser.error(f"the python side builds {','.join(KINDS)} only: pass --sides ee to build {args.kinds}")
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dataset-build-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ)
        envs = {"ee": env} | ({"python": env} if "python" in args.sides.split(",") else {})
        if args.before_ref:
            tree = before_tree(args.before_ref, tmp)
            envs[f"ee@{args.before_ref}"] = {**env, "PYTHONPATH": str(tree)}
        for steps in [int(s) for s in args.steps.split(",")]:
            store = tmp / f"store-{steps}"
            started = time.perf_counter()
            synthetic_store(store, steps, args.k, args.steps_per_trajectory)
            if not args.redaction:
                from ee_middleware.capture.redaction import RedactionRules
                from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction
                from ee_middleware.store.local import LocalExperienceStore

                record_store_redaction(LocalExperienceStore(store), StoreRedaction(rules=RedactionRules(defaults=False), pseudonyms=False))
            made = time.perf_counter() - started
            print(f"\n== {steps} steps x K={args.k} ({steps // args.steps_per_trajectory} trajectories, store written in {made:.0f} s, "
                  f"redaction {'on (default rules)' if args.redaction else 'off'}, "
                  f"{sum(f.stat().st_size for f in store.rglob('*.parquet')) / 2**20:.0f} MiB of Parquet)", flush=True)  # fmt: skip
            runs: dict[str, list[dict[str, float]]] = {side: [] for side in envs}
            order = list(envs)
            for repeat in range(args.repeats):
                for side in order if repeat % 2 == 0 else order[::-1]:
                    runs[side].append(run_side(side, store, tmp / f"out-{side}", envs[side], args.kinds))
                    last = runs[side][-1]
                    print(f"  repeat {repeat + 1} {side:>10}: {last['process_s']:7.2f} s, peak {last['peak_mib']:7.0f} MiB", flush=True)
            checks = {}
            for side in envs:
                if side != "ee":
                    checks[side] = {
                        kind: compare(tmp / "out-ee" / f"{kind}.parquet", tmp / f"out-{side}" / f"{kind}.parquet") for kind in kinds
                    }
                    if side.startswith("ee@"):
                        same_manifest(tmp / "out-ee", tmp / f"out-{side}")
                    manifest = ", and the same datasets.json but for timings" if side.startswith("ee@") else ""
                    print(f"  ee and {side} wrote identical rows (every column, in order){manifest}: {json.dumps(checks[side])}")
            print(f"  {'side':>10} {'process s (min/median/max)':>27} {'build s (min/median/max)':>27} {'peak MiB (min/median/max)':>27}")
            for side, values in runs.items():
                print(
                    f"  {side:>10} {stats([v['process_s'] for v in values]):>27} {stats([v['build_s'] for v in values]):>27} "
                    f"{stats([v['peak_mib'] for v in values]):>27}"
                )
            median = {
                side: {m: statistics.median(v[m] for v in values) for m in ("process_s", "build_s", "peak_mib")}
                for side, values in runs.items()
            }
            for side in envs:
                if side != "ee":
                    print(
                        f"  {side} / ee (medians): time {median[side]['process_s'] / median['ee']['process_s']:.2f}x, "
                        f"peak memory {median[side]['peak_mib'] / median['ee']['peak_mib']:.2f}x"
                    )
            results.append({"steps": steps, "k": args.k, "runs": runs, "median": median, "rows": checks})
            shutil.rmtree(store)
    load_after = os.getloadavg()
    print(f"\nload average before: {' '.join(f'{x:.2f}' for x in load_before)}; after: {' '.join(f'{x:.2f}' for x in load_after)} "
          f"({os.cpu_count()} CPUs)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"results": results, "load_before": load_before, "load_after": load_after}, indent=2))


if __name__ == "__main__":
    main()
