"""The notes of decisions paused for a human review (``capture.paused.PausedDecisions``), on real trajectories and a
real local store: what the review of 652ab76 found."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ee_middleware.capture.paused import NOTE_LIFETIME_S, PAUSED_FOLDER, PausedDecisions
from ee_middleware.records import Action, ToolCall, Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

WEB_SEARCH = {"type": "web_search_preview"}
CODE = {"type": "code_interpreter"}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def _paused(thread_id: str, calls: list[str], tools: list[dict]) -> Trajectory:
    """An interrupted run of ``thread_id`` whose last decision made ``calls`` (awaiting review), offered ``tools``."""
    base = sample_trajectory("paused")
    first = base.steps[0]
    steps = [
        first.model_copy(
            update={
                "index": i,
                "action": Action(kind="tool_call", tool_call=ToolCall(id=c, name="lookup", arguments={})),
                "observation": None,
            }
        )
        for i, c in enumerate(calls)
    ]
    return base.model_copy(update={"status": "interrupted", "thread_id": thread_id, "steps": steps, "tools": tools})


def _later_ns() -> int:
    return time.time_ns() + 10**9


def test_every_reviewed_turn_of_a_resume_finds_the_note_and_the_resume_ends_it(tmp_path: Path) -> None:
    """The note was removed at the first lookup, so a resume's second reviewed call got nothing; it now lasts until the
    thread's next run (the resume itself, assembled) is remembered, in this process or another."""
    store = LocalExperienceStore(tmp_path / "s")
    paused = PausedDecisions(store)
    paused.remember(_paused("t1", ["c1", "c2"], [LOOKUP]))
    other = PausedDecisions(store)  # another process recording the same store
    assert other.tools("t1", ["c1"], _later_ns()) == [LOOKUP]
    assert other.tools("t1", ["c2"], _later_ns()) == [LOOKUP]
    resumed = sample_trajectory("resumed").model_copy(update={"thread_id": "t1"})
    other.remember(resumed)
    assert list((tmp_path / "s" / PAUSED_FOLDER).iterdir()) == []
    assert PausedDecisions(store).tools("t1", ["c1"], _later_ns()) is None
    store.close()


def test_a_run_from_before_the_pause_assembled_late_leaves_the_note(tmp_path: Path) -> None:
    """A thread's earlier run, whose capture another process finished after this pause was noted, does not end the note:
    only a run started after the paused one (its resume) does."""
    import datetime as dt

    store = LocalExperienceStore(tmp_path / "s")
    pause = _paused("t1", ["c1"], [LOOKUP])
    PausedDecisions(store).remember(pause)
    earlier = sample_trajectory("earlier").model_copy(
        update={"thread_id": "t1", "started_at": pause.started_at - dt.timedelta(minutes=1), "ended_at": pause.started_at}
    )
    PausedDecisions(store).remember(earlier)
    assert PausedDecisions(store).tools("t1", ["c1"], _later_ns()) == [LOOKUP]
    store.close()


def test_unnamed_tools_and_odd_thread_ids_are_kept_as_they_are(tmp_path: Path) -> None:
    """Built-in tools without a name (a provider's web search, code interpreter) came back as two copies of one, and a
    thread id UTF-8 cannot encode (a lone surrogate, which the store accepts) raised, losing the trajectory."""
    store = LocalExperienceStore(tmp_path / "s")
    thread = "t\udcff"
    PausedDecisions(store).remember(_paused(thread, ["c1"], [WEB_SEARCH, CODE, LOOKUP]))
    assert PausedDecisions(store).tools(thread, ["c1"], _later_ns()) == [WEB_SEARCH, CODE, LOOKUP]
    store.close()


def test_a_review_left_unanswered_is_pruned_in_time(tmp_path: Path) -> None:
    """Notes of reviews nobody answers, and temporary files of a killed write, do not pile up in the store."""
    store = LocalExperienceStore(tmp_path / "s")
    PausedDecisions(store).remember(_paused("old", ["c1"], [LOOKUP]))
    folder = tmp_path / "s" / PAUSED_FOLDER
    [old] = list(folder.iterdir())
    stale = time.time() - NOTE_LIFETIME_S - 60
    os.utime(old, (stale, stale))
    left = folder / "abc.json.tmp"
    left.write_text("{")
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    PausedDecisions(store).remember(_paused("new", ["c9"], [LOOKUP]))
    assert [p.name for p in folder.iterdir()] != [] and not old.exists() and not left.exists()
    assert PausedDecisions(store).tools("new", ["c9"], _later_ns()) == [LOOKUP]
    store.close()


class _IndexedStore:
    """A plug-in store without lazy reads (no ``scan``) whose ``trajectory_index`` reads columns alone, and whose whole
    trajectories table must not be read."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def trajectory_index(self, columns: Any, *, status: Any = None, app: Any = None, ids: Any = None) -> Any:
        return self.inner.trajectory_index(columns, status=status, app=app, ids=ids)

    def trajectories(self, **kwargs: Any) -> Any:
        raise AssertionError("read the whole trajectories table")

    def steps(self, trajectory_ids: Any = None) -> Any:
        return self.inner.steps(trajectory_ids)


def test_a_plug_in_store_is_asked_for_the_paused_runs_columns_alone(tmp_path: Path) -> None:
    """A store without lazy reads is asked for the paused run's columns (``trajectory_index``, where it has one), not its
    whole trajectories table (every stored conversation, to find one paused decision)."""
    import datetime as dt

    from ee_middleware.capture.paused import paused_decision_tools

    paused = sample_trajectory("paused", steps=2)
    steps = [paused.steps[0], paused.steps[1].model_copy(update={"observation": None})]  # its second call awaits review
    store = LocalExperienceStore(tmp_path / "store")
    store.write([paused.model_copy(update={"status": "interrupted", "thread_id": "t1", "steps": steps})])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    expected = paused_decision_tools(store, "t1", ["call-1"], later)
    assert expected
    assert paused_decision_tools(_IndexedStore(store), "t1", ["call-1"], later) == expected
