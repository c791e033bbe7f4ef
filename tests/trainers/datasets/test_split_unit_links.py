"""The held-out split's warning of a unit holding much of the store says what links it: a thread id many runs share (and
how many), or a task asked more than once in that unit, with an example from that unit and the fix.

Was: the warning always blamed "the task asked most often" over the whole store ("a greeting links them all"), even when
one thread id linked the unit and no task was asked twice, and its example could be a trajectory of another unit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.split import SplitRule, split_trajectories

runner = CliRunner()


def _frame(rows: list[tuple[str, str | None, str | None, int]]) -> pl.DataFrame:
    """Trajectories as (id, thread, task, start in minutes)."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "id": [r[0] for r in rows],
            "app": ["shop"] * len(rows),
            "thread_id": [r[1] for r in rows],
            "task": [r[2] for r in rows],
            "started_at": [start + timedelta(minutes=r[3]) for r in rows],
        }
    )


def test_a_unit_linked_by_one_thread_id_is_blamed_on_the_thread_with_an_example_of_that_unit() -> None:
    """Twelve runs on thread '1', each a different question; elsewhere a task asked three times (its own small unit)."""
    rows = [(f"tutorial-{i}", "1", f"question number {i}", 10 + i) for i in range(12)]
    rows += [(f"pay-{i}", f"p{i}", "Pay 42", i) for i in range(3)]  # asked most often store-wide, and earlier
    rows += [(f"solo-{i}", f"s{i}", f"other {i}", 40 + i) for i in range(2)]
    split = split_trajectories(_frame(rows), SplitRule(share=0.2))
    units = split.describe()["units"]
    warning = units["warning"]
    assert "one unit holds 12 of the 17 trajectories (its earliest: tutorial-0)" in warning
    assert "12 of them ran on one thread id, '1' (e.g. tutorial-0;" in warning
    assert "Give each conversation its own thread id" in warning and "thread_id" in warning
    assert "pay-" not in warning and "greeting" not in warning and "asked by" not in warning
    assert units["largest"]["linked_by"] == {
        "thread": {"thread_id": "1", "trajectories": 12, "example": "tutorial-0", "threads_shared": 1},
        "task": None,
        "variants": 0,
    }


def test_a_unit_linked_by_a_greeting_names_the_task_first_and_the_threads_it_also_shares() -> None:
    rows = [(f"hi-{i}", f"t{i}", "Hi!", i) for i in range(12)] + [(f"next-{i}", f"t{i}", f"question {i}", 20 + i) for i in range(12)]
    rows += [(f"solo-{i}", f"s{i}", f"other {i}", 40 + i) for i in range(4)]
    units = split_trajectories(_frame(rows), SplitRule(share=0.2)).describe()["units"]
    warning = units["warning"]
    task_at = warning.index("the task asked most often in it is asked by 12 trajectories (e.g. hi-0;")
    thread_at = warning.index("2 of them ran on one thread id, 't0' (e.g. hi-0;")
    assert task_at < thread_at and "(11 other thread ids are shared too)" in warning
    assert units["largest"]["linked_by"]["task"] == {"trajectories": 12, "example": "hi-0", "tasks_shared": 1}


def test_a_task_asked_once_in_the_unit_is_not_blamed_though_another_unit_asks_one_more_often() -> None:
    rows = [(f"run-{i}", "shared", f"request {i}", 5 + i) for i in range(11)]
    rows += [(f"hi-{i}", f"h{i}", "hello", i) for i in range(4)]
    warning = split_trajectories(_frame(rows), SplitRule(share=0.2)).describe()["units"]["warning"]
    assert "11 of them ran on one thread id, 'shared' (e.g. run-0;" in warning
    assert "asked by" not in warning and "hi-" not in warning


def test_a_long_thread_id_is_shortened_in_the_warning_and_kept_whole_in_the_record() -> None:
    long_id = "user-" + "x" * 200
    rows = [(f"run-{i}", long_id, f"request {i}", i) for i in range(11)]
    units = split_trajectories(_frame(rows), SplitRule(share=0.2)).describe()["units"]
    assert long_id not in units["warning"] and f"'{long_id[:57]}...'" in units["warning"]
    assert units["largest"]["linked_by"]["thread"]["thread_id"] == long_id


def test_a_unit_of_curriculum_variants_is_blamed_on_the_variants() -> None:
    rows = [("parent", "p", "book a flight", 0)] + [(f"variant-{i}", f"v{i}", f"book flight {i}", 1 + i) for i in range(11)]
    frame = _frame(rows).with_columns(pl.Series("parent", [None] + ["parent"] * 11))
    units = split_trajectories(frame, SplitRule(share=0.2)).describe()["units"]
    assert "What links them: 11 of them are curriculum rollouts" in units["warning"] and "thread id" not in units["warning"]
    assert units["largest"]["linked_by"] == {"thread": None, "task": None, "variants": 11}


@tool
def lookup(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_runs_recorded_on_one_thread_id_get_a_warning_naming_it_in_datasets_json_and_on_stderr(tmp_path: Path) -> None:
    """Through the real capture path: LangGraph tutorials' fixed thread_id '1' for every run, each a different question."""
    store = tmp_path / "experience"
    saver = InMemorySaver()
    for i in range(14):
        model = ScriptedChatModel(script=[AIMessage("", tool_calls=[tool_call("lookup", city="paris")]), AIMessage(f"ok {i}")])
        agent = record_experience(create_agent(model, [lookup], checkpointer=saver), app="weather", store=store)
        agent.invoke({"messages": [("user", f"question number {i}")]}, {"configurable": {"thread_id": "1" if i < 12 else f"solo-{i}"}})
        agent.flush()
        agent.recorder.close()
    opened = LocalExperienceStore(store)
    try:
        frame = opened.trajectories()
        opened.approve(frame["id"].to_list(), by="alice")
        on_thread = set(frame.filter(pl.col("thread_id") == "1")["id"].to_list())
        earliest = frame.filter(pl.col("thread_id") == "1").sort("started_at", "id")["id"][0]
        solo = frame.filter(pl.col("thread_id") == "solo-13")["id"][0]
    finally:
        opened.close()
    out = tmp_path / "data"
    listed = tmp_path / "heldout.txt"
    listed.write_text(solo + "\n")  # one solo run held out (a 0.2 share of random ids held out all 3 units 0.8% of runs)
    result = runner.invoke(
        app, ["datasets", "build", "--store", str(store), "--out", str(out), "--kinds", "il", "--heldout-ids", str(listed)]
    )
    assert result.exit_code == 0, result.output
    units: dict[str, Any] = json.loads((out / "datasets.json").read_text())["split"]["units"]
    thread = units["largest"]["linked_by"]["thread"]
    assert thread["thread_id"] == "1" and thread["trajectories"] == 12 and thread["example"] in on_thread
    assert units["largest"]["linked_by"]["task"] is None
    assert f"12 of them ran on one thread id, '1' (e.g. {earliest};" in units["warning"]
    assert "greeting" not in units["warning"]
    assert "ran on one thread id, '1'" in " ".join(result.stderr.split())
