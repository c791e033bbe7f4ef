"""Recording BFCL experts: LangChain tool classes built once (now) vs a new pydantic class per entry and turn (before).

    .venv/bin/python benchmarks/record_experts.py [--limit 50] [--repeats 3] [--category multi_turn_base]

Both ways record the same entries into fresh stores, interleaved; the old way is the reference
implementation kept in tests/bfcl/test_experts.py (which also checks both record the same
trajectories). Reported: seconds per recording (min/median/max), the speed-up, the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the reference implementation lives with its test

import ee_middleware.bfcl.experts as experts
from tests.bfcl.test_experts import _per_entry_tool_classes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="multi_turn_base")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    variants = {"per_entry_classes": _per_entry_tool_classes, "built_once": experts._langchain_tools}
    with tempfile.TemporaryDirectory() as tmp:
        experts.record_experts(Path(tmp) / "warm", args.category, limit=3)  # imports, data files
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved
        for name, build in variants.items():
            experts._langchain_tools = build
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                report = experts.record_experts(Path(tmp) / "store", args.category, limit=args.limit)
                times[name].append(time.perf_counter() - start)
            assert len(report.recorded) == args.limit and not report.failed, report.failed
    experts._langchain_tools = variants["built_once"]
    result = {
        "category": args.category,
        "entries": args.limit,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        **{f"{name}_s_min_median_max": [round(f(v), 2) for f in (min, statistics.median, max)] for name, v in times.items()},
        "speedup_median": round(statistics.median(times["per_entry_classes"]) / statistics.median(times["built_once"]), 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
