"""Eval harness throughput: the oracle over all 800 BFCL multi-turn entries, 1 and 2 workers, beside the official checker.

Side by side, interleaved, ``--repeats`` times:

* ``harness, N worker(s)``: ``run_eval`` with the ``oracle`` client on the four multi-turn suites
  (task loading, the agent loop against the real backends, BFCL's multi_turn_checker, result rows,
  journal with fsync, Parquet, report) -- what ``ee eval run`` does;
* ``official checker alone``: BFCL's ``multi_turn_checker`` called directly on the same answers
  (the ground-truth call strings per turn, which is what the oracle's conversations decode to), as
  BFCL's own eval runner would score an answer file; no agent loop, no execution of our own.

Verdicts must match: every one of the 800 entries valid on every side (so each entry's verdict is the same), or the
script fails. The methods' order rotates every repeat. Prints tasks/s (min/median/max), the ratio to
the checker alone, load average and peak RSS. Run: ``.venv/bin/python benchmarks/eval_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

SUITES = ["bfcl:multi_turn_base", "bfcl:multi_turn_miss_func", "bfcl:multi_turn_miss_param", "bfcl:multi_turn_long_context"]


def harness(workers: int) -> tuple[float, int]:
    from ee_middleware.evals.job import EvalJob
    from ee_middleware.evals.runner import run_eval

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = run_eval(EvalJob(suites=SUITES, model="oracle", out=out, workers=workers))
        elapsed = time.perf_counter() - started
    return elapsed, sum(s["successes"] for s in summary)


def official() -> tuple[float, int]:
    import copy

    from ee_middleware.bfcl._package import import_bfcl
    from ee_middleware.bfcl.data import MULTI_TURN_CATEGORIES, load_entries
    from ee_middleware.evals.bfcl.official import unique_model_name

    started = time.perf_counter()
    checker = import_bfcl("eval_checker.multi_turn_eval.multi_turn_checker")
    valid = 0
    for category in MULTI_TURN_CATEGORIES:
        for entry in load_entries(category):
            answer = [[calls] if calls else [] for calls in entry.ground_truth]
            test_entry = {"id": entry.id, "initial_config": copy.deepcopy(entry.initial_config), "involved_classes": entry.involved_classes}
            valid += bool(
                checker.multi_turn_checker(answer, entry.ground_truth, test_entry, category, unique_model_name("official"))["valid"]
            )
    return time.perf_counter() - started, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    methods = {"official checker alone": official, "harness, 1 worker": lambda: harness(1), "harness, 2 workers": lambda: harness(2)}
    times: dict[str, list[float]] = {name: [] for name in methods}
    load_before = [round(x, 2) for x in os.getloadavg()]
    order = list(methods.items())
    for repeat in range(args.repeats):
        # interleaved, so load changes hit every method alike, the order rotated so that none always runs first
        for name, method in order[repeat % len(order) :] + order[: repeat % len(order)]:
            elapsed, valid = method()
            assert valid == 800, f"{name}: {valid}/800 valid (every ground-truth answer must pass)"
            times[name].append(elapsed)
    base = statistics.median(times["official checker alone"])
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"800 BFCL multi-turn entries, oracle answers; {args.repeats} interleaved repeats; load average {load_before} -> {load_after}")
    print(f"{'method':26} {'tasks/s min':>11} {'median':>8} {'max':>8} {'time vs checker':>16}")
    for name, values in times.items():
        rates = sorted(800 / t for t in values)
        print(f"{name:26} {rates[0]:11.1f} {statistics.median(rates):8.1f} {rates[-1]:8.1f} {statistics.median(values) / base:15.2f}x")
    print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; all 800 valid on every side")


if __name__ == "__main__":
    main()
