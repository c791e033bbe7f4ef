"""SR on a thread of several runs, recorded from a real LangGraph agent (``create_agent`` with a checkpointer, and a run
given its history by the caller) into a real local store, replayed by the replay job in a Python sandbox of the same
tools (``tests/trainers/datasets/thread_world.py``): what the teacher is told, and which alternatives it is shown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.source import load_source
from ee_middleware.trainers.datasets.sr import SAME_OUTCOME_ONLY, SROptions, build_sr
from ee_middleware.trainers.datasets.teachers import teacher_prompt
from tests.trainers.datasets.test_builders import RecordingTeacher
from tests.trainers.datasets.thread_world import NOTE, ROME, record_threads


@pytest.fixture(scope="module")
def threads_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_threads(tmp_path_factory.mktemp("threads") / "experience")


@pytest.fixture
def threads(threads_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "threads"
    shutil.copytree(threads_template, target)
    return target


def test_the_teacher_is_told_the_request_the_run_works_on(threads: Path) -> None:
    """At weather(Rome) the agent works on ROME, in the thread's second run (its state starts with the first run's
    NOTE) and in the run given the history by its caller (its stored ``task`` is ROME too, its turn's question; it was
    NOTE, the first message it was given). Before, the teacher was told NOTE in both: the state's first user message."""
    store = LocalExperienceStore(threads)
    tasks = {t.id: t.task for t in store.iter_trajectories()}
    assert sorted(tasks.values()) == sorted([NOTE, ROME, ROME]), "the history run's stored task is its turn's question"
    store.close()
    teacher = RecordingTeacher(["I call it because it answers the question."])
    build_sr(load_source(LocalExperienceStore(threads)), teacher, SROptions(k=3))
    at_rome = [case for case in teacher.cases if case.chosen == "weather(city='Rome')"]
    assert len(at_rome) == 2 and {case.task for case in at_rome} == {ROME}
    assert all(teacher_prompt(case).startswith(f"You are working on this task: {ROME}\n") for case in at_rome)


def test_alternatives_with_the_calls_own_outcome_are_left_out_and_counted(threads: Path, tmp_path: Path) -> None:
    """London's weather is Rome's (``rainy``) and every other note is ``saved`` like the expert's: none is shown as a
    contrast (before, the template rationale said London's ``rainy`` 'does not do what the task asks' and the note state
    was an example contrasting ``saved`` with ``saved``). The note state, left with no alternative, gives no row."""
    teacher = RecordingTeacher(["I call it because it answers the question."])
    _, report = build_sr(load_source(LocalExperienceStore(threads)), teacher, SROptions(k=4))
    for case in teacher.cases:
        assert case.alternatives and all(outcome != case.chosen_outcome for _, outcome in case.alternatives), case
    assert [sorted(action for action, _ in case.alternatives) for case in teacher.cases] == [
        ["weather(city='Atlantis')", "weather(city='Oslo')", "weather(city='Paris')"]
    ] * 2
    assert report.same_outcome_left_out == 6 and report.dropped == {SAME_OUTCOME_ONLY: 1}
    assert report.states == 3 and report.rows == 2 == report.states - sum(report.dropped.values())

    summary = build_datasets(DatasetConfig.load(store=threads, out=tmp_path / "ds", kinds="sr", sr_k=4))
    info = summary["datasets"]["sr"]
    assert (info["rows"], info["states"], info["dropped"], info["same_outcome_left_out"]) == (2, 3, {SAME_OUTCOME_ONLY: 1}, 6)
    sr = pl.read_parquet(tmp_path / "ds" / "sr.parquet")
    for completion in sr["completion"]:
        (target,) = json.loads(completion)
        assert target["content"].startswith("I call weather(city='Rome') because it returns rainy, which moves the task forward.")
        assert "London" not in target["content"] and "Paris') returns sunny" in target["content"]
        assert [call["function"]["name"] for call in target["tool_calls"]] == ["weather"]
