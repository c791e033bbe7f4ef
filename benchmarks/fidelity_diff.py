"""A fidelity report of a big observation: ``describe_mismatch`` against the way it was made before (difflib over
every line, lists sorted by each item's JSON at every level for the order hint).

    .venv/bin/python benchmarks/fidelity_diff.py [--sizes 0.2 0.85 1.7] [--old-up-to 0.2] [--repeats 3]

Observations are JSON lists of records sharing values (a ``sku`` of 300, a ``history`` of 10 small numbers, a state):
the shape whose lines repeat often enough to be matched, and not so often that difflib leaves them out, which made
difflib's work grow with the square of the lines. Each is compared with the sandbox's output differing in 5 values
(``changed``), with one key more (``added``) and cut at three quarters (``cut``, a recorded prefix). Times are CPU
seconds (``time.process_time``, the least of --repeats), so other work on the machine does not count; the old way runs
only up to --old-up-to MB (it takes minutes at 1.7 MB). Printed: per size and case, new and old seconds, their ratio,
and whether both reports are the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ee_middleware.replay.fidelity import describe_mismatch

# The observations and the report from before live with the test that pins them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.replay.test_fidelity_scaling import _big_observations as observations
from tests.replay.test_fidelity_scaling import _old_describe_mismatch as old_describe_mismatch


def _cpu_seconds(repeats: int, work: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """The least CPU seconds of ``repeats`` calls of ``work(*args, **kwargs)``, and what it returned."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = work(*args, **kwargs)
        best = min(best, time.process_time() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.2, 0.85, 1.7], help="observation sizes in MB")
    parser.add_argument("--old-up-to", type=float, default=0.2, help="run the old way up to this size (MB)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'MB':>5} {'case':<8} {'new s':>8} {'old s':>8} {'old/new':>8}  same")
    for size in args.sizes:
        recorded, outputs = observations(int(size * 1_000_000))
        for case, replayed in outputs.items():
            prefix = case == "cut"
            new, report = _cpu_seconds(args.repeats, describe_mismatch, recorded, replayed, recorded_is_prefix=prefix)
            if size <= args.old_up_to:
                old, before = _cpu_seconds(1, old_describe_mismatch, recorded, replayed, recorded_is_prefix=prefix)
                print(f"{len(recorded) / 1e6:5.2f} {case:<8} {new:8.3f} {old:8.2f} {old / new:8.1f}  {report == before}")
            else:
                print(f"{len(recorded) / 1e6:5.2f} {case:<8} {new:8.3f} {'-':>8} {'-':>8}  -")


if __name__ == "__main__":
    main()
