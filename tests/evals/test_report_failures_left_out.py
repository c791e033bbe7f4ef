"""report.md / report.html say how many failed tasks their "First failures" table leaves out, per suite."""

from __future__ import annotations

import html
from pathlib import Path

from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.report import write_outputs


def _rows(suite: str, failed: int, passed: int = 2) -> list[dict]:
    return [
        {"suite": suite, "task_id": f"t{i:02d}", "trial": 0, "success": i >= failed, "reason": f"wrong {i}", "error_type": "x"}
        for i in range(failed + passed)
    ]


def _reports(tmp_path: Path, rows: list[dict], names: list[str]) -> tuple[str, str]:
    job = EvalJob(suites=names, model="m", out=str(tmp_path))
    write_outputs(tmp_path, rows, job, names=names)
    return (tmp_path / "report.md").read_text(encoding="utf-8"), (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_run_with_50_failed_tasks_says_that_30_are_not_listed(tmp_path: Path) -> None:
    """Before: 20 rows under "First failures" and nothing said that 30 more tasks failed (found by sweep s19)."""
    markdown, page = _reports(tmp_path, _rows("s", 50), ["s"])
    listed = [line for line in markdown.splitlines() if line.startswith("| s | t")]
    assert len(listed) == 20
    assert "... and 30 more failed tasks (see results.parquet)" in markdown
    assert markdown.index("| s | t19 |") < markdown.index("... and 30 more")  # under the table
    assert "<p>... and 30 more failed tasks (see results.parquet)</p>" in page
    assert page.index("<td>t19</td>") < page.index("... and 30 more")


def test_the_tasks_left_out_are_counted_per_suite(tmp_path: Path) -> None:
    rows = _rows("tau:a", 30) + _rows("tau:b", 11) + _rows("tau:c", 2)  # 20 shared: 6 each, at least 3
    markdown, page = _reports(tmp_path, rows, ["tau:a", "tau:b", "tau:c"])
    line = "... and 29 more failed tasks (tau:a: 24, tau:b: 5; see results.parquet)"
    assert line in markdown, markdown[markdown.index("First failures") :]
    assert f"<p>{html.escape(line)}</p>" in page


def test_a_table_that_lists_every_failed_task_says_nothing_more(tmp_path: Path) -> None:
    markdown, page = _reports(tmp_path, _rows("s", 20), ["s"])
    assert len([line for line in markdown.splitlines() if line.startswith("| s | t")]) == 20
    assert "more failed" not in markdown and "more failed" not in page
    markdown, _ = _reports(tmp_path, _rows("s", 21), ["s"])
    assert "... and 1 more failed task (see results.parquet)" in markdown
