"""A fidelity report of a big observation: ``describe_mismatch`` against the way it was made before (difflib over
every line, lists sorted by each item's JSON at every level for the order hint).

    .venv/bin/python benchmarks/fidelity_diff.py [--sizes 0.2 0.85 1.7] [--old-up-to 0.2] [--repeats 3]

Observations are JSON lists of records sharing values (a ``sku`` of 300, a ``history`` of 10 small numbers, a state):
the shape whose lines repeat often enough to be matched, and not so often that difflib leaves them out, which made
difflib's work grow with the square of the lines. Each is compared with the sandbox's output differing in 5 values
(``changed``), with one key more (``added``) and cut at three quarters (``cut``, a recorded prefix). Times are CPU
seconds (``time.process_time``), so other work on the machine counts less; new and old run --repeats times each,
interleaved (which runs first alternating); the old way runs only up to --old-up-to MB (it takes minutes at 1.7 MB).
Printed: per size and case, new and old seconds (median, min-max), the ratio of the medians, whether both reports are
the same (the script fails when not), and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ee_middleware.replay.fidelity import describe_mismatch

# The observations and the report from before live with the test that pins them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.replay.test_fidelity_scaling import _big_observations as observations
from tests.replay.test_fidelity_scaling import _old_describe_mismatch as old_describe_mismatch


def _cpu_seconds(work: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """The CPU seconds of one call of ``work(*args, **kwargs)``, and what it returned."""
    start = time.process_time()
    result = work(*args, **kwargs)
    return time.process_time() - start, result


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.2, 0.85, 1.7], help="observation sizes in MB")
    parser.add_argument("--old-up-to", type=float, default=0.2, help="run the old way up to this size (MB)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"{'MB':>5} {'case':<8} {'new s, median (min-max)':>26} {'old s, median (min-max)':>26} {'old/new':>8}  same")
    for size in args.sizes:
        recorded, outputs = observations(int(size * 1_000_000))
        for case, replayed in outputs.items():
            prefix = case == "cut"
            ways = [("new", describe_mismatch)] + ([("old", old_describe_mismatch)] if size <= args.old_up_to else [])
            seconds: dict[str, list[float]] = {name: [] for name, _ in ways}
            reports: dict[str, Any] = {}
            for repeat in range(args.repeats):  # interleaved, which runs first alternating
                for name, way in ways if repeat % 2 == 0 else ways[::-1]:
                    spent, reports[name] = _cpu_seconds(way, recorded, replayed, recorded_is_prefix=prefix)
                    seconds[name].append(spent)
            if "old" in seconds:
                ratio = statistics.median(seconds["old"]) / statistics.median(seconds["new"])
                same = reports["new"] == reports["old"]
                print(
                    f"{len(recorded) / 1e6:5.2f} {case:<8} {_spread(seconds['new']):>26} {_spread(seconds['old']):>26} {ratio:8.1f}  {same}"
                )
                if not same:
                    raise SystemExit(f"error: the new way's report of {case} at {size:g} MB differs from the old way's")
            else:
                print(f"{len(recorded) / 1e6:5.2f} {case:<8} {_spread(seconds['new']):>26} {'-':>26} {'-':>8}  -")
    print(f"load average before {load_before}, after {[round(x, 2) for x in os.getloadavg()]} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
