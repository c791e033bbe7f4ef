"""benchmarks/store_lookup.py runs end to end on a small store (a benchmark that rots is one nobody re-runs): both ways
answer the same for every lookup, and it reports ratios and the load average. Real subprocesses, a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "store_lookup.py"


def test_the_lookup_benchmark_runs_and_both_ways_agree(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--trajectories", "800", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["identical_answers"] is True and len(results["load_average_1_5_15_before"]) == 3
    for lookup in ("get", "steps", "approvals", "rollouts", "approve"):
        assert results[lookup]["wall_ratio_whole_over_filtered_median"] > 0
