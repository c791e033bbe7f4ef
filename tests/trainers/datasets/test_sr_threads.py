"""SR on a thread of several runs, recorded from a real LangGraph agent (``create_agent`` with a checkpointer, and a run
given its history by the caller) into a real local store, replayed by the replay job in a Python sandbox of the same
tools (``tests/trainers/datasets/thread_world.py``): what the teacher is told, and which alternatives it is shown."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.source import load_source
from ee_middleware.trainers.datasets.sr import SROptions, build_sr
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
    NOTE) and in the run given the history by its caller (its stored ``task`` is NOTE, the first message it was given).
    Before, the teacher was told NOTE in both: the state's first user message."""
    store = LocalExperienceStore(threads)
    tasks = {t.id: t.task for t in store.iter_trajectories()}
    assert sorted(tasks.values()) == sorted([NOTE, ROME, NOTE]), "the history run's stored task is the thread's first request"
    store.close()
    teacher = RecordingTeacher(["I call it because it answers the question."])
    build_sr(load_source(LocalExperienceStore(threads)), teacher, SROptions(k=3))
    at_rome = [case for case in teacher.cases if case.chosen == "weather(city='Rome')"]
    assert len(at_rome) == 2 and {case.task for case in at_rome} == {ROME}
    assert all(teacher_prompt(case).startswith(f"You are working on this task: {ROME}\n") for case in at_rome)

