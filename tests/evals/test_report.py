"""report.md / report.html: a person can tell which tasks failed and why."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ee_middleware.evals.bfcl.suite import CATEGORIES
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
    assert [(s["suite"], s["tasks"], s["success_rate"]) for s in summary] == [("s", 1, 0.0), ("empty", 0, None)]  # keys kept, null rate


def _many_suites_rows(names: list[str], failed_per_suite: int = 5) -> list[dict]:
    return [
        {"suite": name, "task_id": f"{name}-t{i}", "trial": 0, "success": i >= failed_per_suite, "reason": f"r{i}", "error_type": "x"}
        for name in names
        for i in range(failed_per_suite + 2)
    ]


BFCL_NAMES = [f"bfcl:{c}" for c in CATEGORIES]  # the 15 categories the harness runs


def test_with_many_suites_every_suite_s_first_failures_are_listed_in_the_run_s_order() -> None:
    """Before: the first 20 failed tasks sorted by suite name, so a run of the 15 BFCL categories listed failures of
    bfcl:irrelevance to bfcl:live_parallel only and none of bfcl:simple, multiple, parallel or the multi-turn ones."""
    rows = sorted(_many_suites_rows(BFCL_NAMES), key=lambda r: (r["suite"], r["task_id"], r["trial"]))  # as write_outputs has them
    summary = summarize(rows, BFCL_NAMES)
    for text, marker in ((markdown_report(summary, rows, "m", None), "| {} |"), (html_report(summary, rows, "m", None), "<td>{}</td>")):
        failures = text[text.index("First failures") :]
        positions = [failures.find(marker.format(name)) for name in BFCL_NAMES]
        assert all(p >= 0 for p in positions), [n for n, p in zip(BFCL_NAMES, positions, strict=True) if p < 0]
        assert positions == sorted(positions)
    one = _many_suites_rows(["s"], failed_per_suite=25)
    assert markdown_report(summarize(one, ["s"]), one, "m", None).count("| s | s-t") == 20  # one suite: its first 20, as before


def test_the_chart_of_many_suites_stays_page_wide_with_labels_that_do_not_overlap(tmp_path: Path) -> None:
    """Before: one vertical bar per suite, 1.2 inches each, names tilted 20 degrees: 15 BFCL categories gave a
    2000-pixel-wide, 320-pixel-high strip whose long names ran into each other."""
    import struct

    from ee_middleware.evals.report import chart_figure

    rows = _many_suites_rows(BFCL_NAMES)
    summary = summarize(rows, BFCL_NAMES)
    figure = chart_figure(summary)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    labels = [t for ax in figure.axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels()) if t.get_text()]
    assert {t.get_text() for t in labels} >= set(BFCL_NAMES)
    boxes = [t.get_window_extent(renderer) for t in labels]
    overlapping = [
        (a.get_text(), b.get_text())
        for i, a in enumerate(labels)
        for b, bb in zip(labels[i + 1 :], boxes[i + 1 :], strict=True)
        if boxes[i].overlaps(bb)
    ]
    assert overlapping == []
    job = EvalJob(suites=["bfcl:simple:1"], model="m", out=str(tmp_path))
    write_outputs(tmp_path, rows, job, names=BFCL_NAMES)
    width, height = struct.unpack(">II", (tmp_path / "success.png").read_bytes()[16:24])
    assert width <= 1000 and height >= 15 * 20, (width, height)


def test_the_summary_is_the_same_whatever_order_the_results_came_in() -> None:
    """Before: failure types with equal counts were listed in the order their rows came in, and the rows of a run come
    in the order tasks finish (several workers, a resumed run), so `--json` differed from run to run and from
    summary.json (written from sorted rows)."""
    rows = [
        {"suite": "s", "task_id": f"t{i}", "trial": 0, "success": False, "reason": "r", "error_type": kind}
        for i, kind in enumerate(["b_type", "a_type", "c_type", "c_type"])
    ]
    first = json.dumps(summarize(rows, ["s"]))
    assert first == json.dumps(summarize(rows[::-1], ["s"]))
    assert list(summarize(rows, ["s"])[0]["failures"]) == ["c_type", "a_type", "b_type"]
    excluded = {"s": {"x": "no state change", "y": "interrupted"}}
    flipped = {"s": dict(reversed(list(excluded["s"].items())))}
    assert json.dumps(summarize(rows, ["s"], excluded)) == json.dumps(summarize(rows, ["s"], flipped))


def test_pass_hat_is_the_exact_fraction_rounded_once() -> None:
    """Sweep H: pass^1 over tasks passing 3 of 3, 2 of 3, 3 of 3 and 1 of 3 trials read 0.7499999999999999 in --json."""
    outcomes = {"a": [True, True, True], "b": [True, True, False], "c": [True, True, True], "d": [True, False, False]}
    rows = [
        {"suite": "s", "task_id": task, "trial": trial, "success": ok, "reason": "" if ok else "r", "error_type": None if ok else "x"}
        for task, trials in outcomes.items()
        for trial, ok in enumerate(trials)
    ]
    [summary] = summarize(rows, ["s"])
    assert summary["pass_hat"] == {"1": 0.75, "2": 7 / 12, "3": 0.5}  # by hand: (1 + 1/3 + 1 + 0) / 4 for k=2


def test_the_first_failures_are_the_first_in_the_tasks_order_numbers_as_numbers() -> None:
    """Was (a sweep): task ids sorted as text, so simple_python_14 .. simple_python_29 were "the first failures" and
    simple_python_4 .. 7, the real first ones, were left in "... and 4 more"."""
    failed = [4, 5, 6, 7, *range(14, 30)]
    rows = [
        {
            "suite": "bfcl:simple",
            "task_id": f"simple_python_{i}",
            "trial": 0,
            "success": i not in failed,
            "reason": "wrong",
            "error_type": None,
        }
        for i in range(30)
    ]
    rows.sort(key=lambda r: (r["suite"], r["task_id"], r["trial"]))  # as write_outputs has them
    text = markdown_report(summarize(rows, ["bfcl:simple"]), rows, "m", None)
    failures = text[text.index("First failures") :]
    listed = [line.split("|")[2].strip() for line in failures.splitlines() if line.startswith("| bfcl:simple")]
    assert listed[:5] == ["simple_python_4", "simple_python_5", "simple_python_6", "simple_python_7", "simple_python_14"], listed
