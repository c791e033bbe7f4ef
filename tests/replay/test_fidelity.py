"""Fidelity reports say where the sandbox's observation parts from the recorded one, with a short diff."""

from __future__ import annotations

import json

from ee_middleware.replay.fidelity import MAX_DIFF_LINES, MAX_LINE_CHARS, describe_mismatch, first_difference, unified_diff

ORDER = {
    "order_id": "#W7157189",
    "user_id": "liam_smith_2635",
    "ship_to": "489 Birch Street, Apt 4, Boise, ID, 83702",
    "status": "pending",
    "items": [{"product_id": "7389028453", "name": "Packable Rain Jacket", "quantity": 2}],
}


def test_first_difference() -> None:
    assert first_difference("abc", "abd") == 2
    assert first_difference("", "x") == 0
    assert first_difference("same", "same and more") == 4, "a prefix parts where it ends"
    assert first_difference("same", "same") == 4


def test_a_difference_deep_inside_json_is_located_and_diffed_field_by_field() -> None:
    recorded = json.dumps(ORDER)
    replayed = json.dumps({**ORDER, "status": "cancelled"})
    report = describe_mismatch(recorded, replayed)
    assert report["position"] == recorded.index('"pending"') + 1 > 70, "past the old 70-character excerpt"
    assert (report["line"], report["column"]) == (1, report["position"] + 1)
    assert (report["recorded_chars"], report["replayed_chars"]) == (len(recorded), len(replayed))
    lines = report["diff"].splitlines()
    assert lines[:2] == ["--- recorded", "+++ sandbox"] and lines[2].startswith("@@")
    assert [line for line in lines[3:] if line[:1] in "-+"] == ['- "status": "pending",', '+ "status": "cancelled",'], lines
    assert len(lines) == 7, "one line of context on each side"


def test_long_prose_is_diffed_by_clause() -> None:
    words = ", ".join(f"item {i} is fine" for i in range(40))
    recorded = f"Checked the warehouse: {words}; the parcel left Portland on Monday."
    replayed = recorded.replace("Portland", "Denver")
    report = describe_mismatch(recorded, replayed)
    changed = [line for line in report["diff"].splitlines()[3:] if line[:1] in "-+"]
    assert changed == ["-the parcel left Portland on Monday.", "+the parcel left Denver on Monday."]
    assert report["position"] == recorded.index("Portland")


def test_multiline_text_reports_line_and_column() -> None:
    recorded = "total: 3 files\nnotes.txt\nreport.pdf\n"
    replayed = "total: 3 files\nnotes.txt\nreport.docx\n"
    report = describe_mismatch(recorded, replayed)
    assert (report["line"], report["column"]) == (3, len("report.") + 1)
    assert "-report.pdf" in report["diff"] and "+report.docx" in report["diff"]


def test_a_recorded_observation_that_was_cut_compares_as_a_prefix() -> None:
    replayed = "x" * 50 + "DIFFERENT" + "y" * 500
    recorded = "x" * 50 + "SAME-ISH!"
    report = describe_mismatch(recorded, replayed, recorded_is_prefix=True)
    assert report["position"] == 50 and report["replayed_chars"] == len(replayed)
    assert "y" * 100 not in report["diff"], "only the recorded prefix's length of the sandbox's text is compared"


def test_diffs_stay_short() -> None:
    recorded = "\n".join(f"line {i}" for i in range(100))
    replayed = "\n".join(f"line {i}" if i % 3 else f"changed {i}" for i in range(100))
    diff = unified_diff(recorded, replayed).splitlines()
    assert len(diff) == MAX_DIFF_LINES and diff[-1].startswith("… ") and diff[-1].endswith("more diff lines")
    wide = unified_diff("a" * 1000, "b" * 1000).splitlines()
    assert all(len(line) <= MAX_LINE_CHARS for line in wide)


def test_differences_the_line_split_hides_still_show() -> None:
    diff = unified_diff("ok\n", "ok")  # the same lines once split: shown as Python literals
    assert "-'ok\\n'" in diff and "+'ok'" in diff


def fidelity_ref_sandbox() -> object:
    """A sandbox whose ``ref`` answers another 9-digit number than the recorded one (named by spec in the test)."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(lambda env: {}, tools={"ref": lambda world: "123456789"})


def test_a_fidelity_diff_keeps_its_markers_under_the_stores_redaction(tmp_path: object) -> None:
    """The job's report of a mismatch is redacted as a whole by the store's rules: a diff redacted after it was made
    lost its '+' line to the phone pattern ('+123456789'). Both texts are redacted first, then compared."""
    import datetime as dt
    from pathlib import Path

    from ee_middleware.records import Trajectory
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.store import LocalExperienceStore

    root = Path(str(tmp_path)) / "experience"
    state = [{"role": "user", "content": "What is my reference?"}]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat()
    step = {"trajectory_id": "ref-1", "index": 0, "decision_index": 0, "state": state}
    trajectory = Trajectory.parse(
        {
            "id": "ref-1",
            "app": "refs",
            "task": "reference?",
            "tools": [{"type": "function", "function": {"name": "ref", "parameters": {"type": "object", "properties": {}}}}],
            "messages": state,
            "started_at": now,
            "ended_at": now,
            "steps": [
                {
                    **step,
                    "action": {"kind": "tool_call", "tool_call": {"id": "c1", "name": "ref", "arguments": {}}},
                    "observation": {"content": "471576218"},
                }
            ],
        }
    )
    store = LocalExperienceStore(root)
    store.write([trajectory])
    store.approve([trajectory.id], by="test")
    store.close()
    summary = run_replay(ReplayConfig.load(store=root, sandbox=f"{__name__}:fidelity_ref_sandbox", k=1))
    (example,) = summary.fidelity_examples
    assert example["diff"].splitlines()[-2:] == ["-471576218", "+123456789"], example["diff"]
