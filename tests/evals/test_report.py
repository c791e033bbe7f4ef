"""report.md / report.html: a person can tell which tasks failed and why."""

from __future__ import annotations

from ee_middleware.evals.report import html_report, markdown_report, summarize


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
    assert failures[0].startswith("| s | t1 | 0, 2 |") and "END" in failures[0]
    assert len(failures) == 20 and len({line.split("|")[2] for line in failures}) == 20
    assert "<td>t1</td><td>0, 2</td>" in html_report(summary, rows, "m", None)
