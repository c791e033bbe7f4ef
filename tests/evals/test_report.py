"""report.md / report.html: a person can tell which tasks failed and why."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.report import html_report, markdown_report, summarize, write_outputs


def test_failures_are_one_row_per_task_with_its_failed_trials_and_a_reason_that_is_not_cut_short() -> None:
    """Before: one row per trial (3 trials of one task filled 3 of the 20 rows with the same reason) and reasons
    cut at 200 characters, which cut the traces: hints (which expert calls were not made) in the middle."""
    reason = "the final sandbox state differs from the expert's; expert calls it did not make: " + "mv(a='x'), " * 20 + "END"
    rows = [
        {"suite": "s", "task_id": "t1", "trial": k, "success": k == 1, "reason": None if k == 1 else reason, "error_type": "x"}
        for k in range(3)
    ] + [{"suite": "s", "task_id": f"u{i}", "trial": 0, "success": False, "reason": "r", "error_type": "x"} for i in range(25)]
    summary = summarize(rows, ["s"])
    text = markdown_report(summary, rows, "m", None)
    failures = [line for line in text.splitlines() if line.startswith("| s |")][1:]
    assert failures[0].startswith("| s | t1 | 2 of 3 (0, 2) |") and "END" in failures[0]
    assert failures[1].startswith("| s | u0 | 1 of 1 (0) |")  # before: '0', read as no failed trial
    assert len(failures) == 20 and len({line.split("|")[2] for line in failures}) == 20
    assert "<td>t1</td><td>2 of 3 (0, 2)</td>" in html_report(summary, rows, "m", None)


def test_a_suite_with_no_task_reads_no_task_and_odd_task_names_keep_the_tables_whole(tmp_path: Path) -> None:
    """Before: a suite that scored no task read 0.0% (as if every task failed), in the tables and on the chart; a
    task id holding '|' split its markdown row."""
    long_name = "a-very-long-task-name-" * 10 + "Größe|价格 🙂"
    rows = [{"suite": "s", "task_id": long_name, "trial": 0, "success": False, "reason": "line one\nline | two", "error_type": "x"}]
    job = EvalJob(suites=["bfcl:simple:1"], model="m", out=str(tmp_path))
    write_outputs(tmp_path, rows, job, names=["s", "empty"])
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| empty | 0 | 0 | no task | no task | - |" in text and "| s | 1 | 1 | 0.0% | 0.0% | x: 1 |" in text
    [failure] = [line for line in text.splitlines() if line.startswith("| s | a-very")]
    assert failure.count(" | ") == 3 and "Größe\\|价格 🙂" in failure and "line one line \\| two" in failure
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<td>empty</td><td>0</td><td>0</td><td>no task</td><td>no task</td>" in page and html.escape(long_name) in page
    assert (tmp_path / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "summary.json").read_text())["suites"]
    assert [(s["suite"], s["tasks"], s["success_rate"]) for s in summary] == [("s", 1, 0.0), ("empty", 0, 0.0)]  # JSON keys kept
