"""Recording BFCL experts: LangChain tool classes built once (now) vs a new pydantic class per entry and turn (before).

    .venv/bin/python benchmarks/record_experts.py [--limit 50] [--repeats 3] [--category multi_turn_base]

Both ways record the same entries into fresh stores, interleaved (which runs first alternating); the old way is the
reference implementation kept in tests/bfcl/test_experts.py. Every recording must store the same trajectories (tools,
environment, every step's action and observation; not their random ids and times), or the script fails. Reported:
seconds per recording (min/median/max), the speed-up, the load average before and after.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the reference implementation lives with its test

import ee_middleware.bfcl.experts as experts
from tests.bfcl.test_experts import _per_entry_tool_classes


def _stored_content(store: Path) -> list[Any]:
    """What a recording stored, without its random ids and times: per trajectory (in its entry's order), its task, tools
    and every step's action and observation."""
    from ee_middleware.store import LocalExperienceStore

    content = []
    for t in LocalExperienceStore(store).iter_trajectories():
        steps = [
            (s.action.model_dump_json(exclude={"tool_call": {"id"}}), s.observation.content if s.observation else None) for s in t.steps
        ]
        content.append((json.dumps(t.tools, sort_keys=True), json.dumps(t.environment, sort_keys=True, default=str), steps))
    return sorted(content)


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
    recorded: dict[str, list[Any]] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    order = list(variants.items())
    for repeat in range(args.repeats):  # interleaved, which runs first alternating
        for name, build in order if repeat % 2 == 0 else order[::-1]:
            experts._langchain_tools = build
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                report = experts.record_experts(Path(tmp) / "store", args.category, limit=args.limit)
                times[name].append(time.perf_counter() - start)
                assert len(report.recorded) == args.limit and not report.failed, report.failed
                stored = _stored_content(Path(tmp) / "store")
            assert recorded.setdefault("first", stored) == stored, f"{name} recorded other trajectories than the first recording"
    experts._langchain_tools = variants["built_once"]
    result = {
        "category": args.category,
        "entries": args.limit,
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "identical_trajectories": True,
        **{f"{name}_s_min_median_max": [round(f(v), 2) for f in (min, statistics.median, max)] for name, v in times.items()},
        "speedup_median": round(statistics.median(times["per_entry_classes"]) / statistics.median(times["built_once"]), 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
