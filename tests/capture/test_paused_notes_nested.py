"""The notes of paused decisions (``capture.paused.PausedDecisions``, ``paused/`` in a local store) of a sub-agent
recorded with its own ``record_experience`` on the outer run's thread, paused in one of the outer run's tools (which
pauses that run too), then resumed with it. Was: one note per thread, so the two paused runs' notes overwrote each
other, and the sub-agent's resumed run (stored before the outer's resumed run ends) removed the outer run's note: a
process recording the outer run's resume after a restart found neither. Real ``create_agent`` graphs, real recorders
and a real local store; each lookup by a fresh ``PausedDecisions`` (another process, or the app after a restart)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from ee_middleware import record_experience
from ee_middleware.capture.paused import PAUSED_FOLDER, PausedDecisions
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.capture.test_recorded_sub_agent_resumed import find, refund

pytestmark = pytest.mark.usefixtures("no_child_left")

THREAD = {"configurable": {"thread_id": "T1"}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def _inner_policy(messages: list[Any], tools: Any) -> AIMessage:
    if messages[-1].type == "tool":
        return AIMessage(f"inner done: {messages[-1].content}")
    return AIMessage("", tool_calls=[tool_call("refund", order="A-7")])


def _outer_policy(messages: list[Any], tools: Any) -> AIMessage:
    if messages[-1].type == "tool":
        return AIMessage(f"outer done: {messages[-1].content}")
    return AIMessage("", tool_calls=[tool_call("find", key="cust"), tool_call("billing", request="refund A-7")])


def _awaiting(store: Path) -> dict[str, tuple[list[str], list[dict[str, Any]]]]:
    """Each paused run (``outer``: awaiting ``billing``, ``inner``: awaiting ``refund``): the ids of its calls awaiting
    review and the tools its decision was offered."""
    opened = LocalExperienceStore(store)
    try:
        paused: list[Trajectory] = [t for t in opened.iter_trajectories() if t.status == "interrupted"]
    finally:
        opened.close()
    out = {}
    for trajectory in paused:
        [step] = [s for s in trajectory.steps if s.observation is None]
        call = step.action.tool_call
        assert call is not None
        out["outer" if call.name == "billing" else "inner"] = ([call.id], trajectory.step_tools(step))
    return out


def _noted(store: Path, call_ids: list[str]) -> list[dict[str, Any]] | None:
    """What a fresh process's notes say the decision that made ``call_ids`` on ``T1`` was offered (no table read)."""
    opened = LocalExperienceStore(store)
    try:
        return PausedDecisions(opened).tools("T1", call_ids, time.time_ns() + 10**9, chosen_per_call=False)
    finally:
        opened.close()


@pytest.mark.parametrize(
    ("offload", "apps"),
    [("thread", ("inner", "outer")), ("process", ("inner", "outer")), ("thread", ("shop", "shop"))],
    ids=["thread", "process", "both-one-app"],
)
def test_the_outer_run_and_its_sub_agent_keep_a_note_each_until_each_is_resumed(
    tmp_path: Path, offload: str, apps: tuple[str, str]
) -> None:
    store = tmp_path / "store"
    inner = record_experience(create_agent(ScriptedChatModel(policy=_inner_policy), [refund]), app=apps[0], store=store)
    seen: list[tuple[Any, Any]] = []
    awaiting: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}

    @tool
    def billing(request: str) -> str:
        """Ask the billing agent."""
        answer = inner.invoke({"messages": [("user", request)]})["messages"][-1].content
        assert inner.flush(30)  # the sub-agent's resumed run is stored: the outer run's resume is not yet
        seen.append((_noted(store, awaiting["outer"][0]), _noted(store, awaiting["inner"][0])))
        return answer

    graph = create_agent(ScriptedChatModel(policy=_outer_policy), [find, billing], checkpointer=InMemorySaver())
    outer = record_experience(graph, app=apps[1], store=store)
    try:
        outer.invoke({"messages": [("user", "refund A-7 please")]}, THREAD)
        assert inner.flush(30) and outer.flush(30)
        awaiting.update(_awaiting(store))
        assert sorted(awaiting) == ["inner", "outer"]
        for role, (call_ids, offered) in awaiting.items():  # both paused runs' notes are there, for any process
            assert _noted(store, call_ids) == offered, role
        assert outer.invoke(Command(resume=True), THREAD)["messages"][-1].content == "outer done: inner done: refunded A-7"
        assert inner.flush(30) and outer.flush(30)
    finally:
        inner.recorder.close()
        outer.recorder.close()
    # once the sub-agent's resume was stored, the outer run's note was still there and the sub-agent's was ended
    assert seen == [(awaiting["outer"][1], None)]
    folder = store / PAUSED_FOLDER
    assert not folder.exists() or list(folder.iterdir()) == []  # each resume ended its own


def test_a_note_of_a_store_written_before_is_read_and_ended_by_the_resume(tmp_path: Path) -> None:
    """A store written before keeps one note per thread (``paused/<hash of the thread id>.json``): it is still read, and
    the run resuming it ends it."""
    folder = tmp_path / "s" / PAUSED_FOLDER
    opened = LocalExperienceStore(tmp_path / "s")
    try:
        resumed = sample_trajectory("resumed").model_copy(update={"thread_id": "T1"})
        call_id = resumed.steps[0].action.tool_call.id  # type: ignore[union-attr]
        started = resumed.started_at - dt.timedelta(minutes=1)
        folder.mkdir()
        note = folder / f"{hashlib.sha256(b'T1').hexdigest()[:32]}.json"
        note.write_text(json.dumps({"thread_id": "T1", "started_at": started.isoformat(), "calls": {call_id: [LOOKUP]}}))
        assert PausedDecisions(opened).tools("T1", [call_id], time.time_ns() + 10**9, chosen_per_call=False) == [LOOKUP]
        PausedDecisions(opened).remember(resumed)
        assert list(folder.iterdir()) == []
    finally:
        opened.close()


def test_a_run_that_resumed_no_review_ends_only_its_own_apps_notes(tmp_path: Path) -> None:
    """A sub-agent run from new input (its tool ran it afresh in the outer run's resume) resumes no review (its call
    ``call-0`` only shares the id of the call awaiting review, as providers number calls per reply): it leaves the
    outer run's note, which a run of the outer app from new input ends (the thread went on: nobody answered it)."""
    folder = tmp_path / "s" / PAUSED_FOLDER
    opened = LocalExperienceStore(tmp_path / "s")
    try:
        base = sample_trajectory("paused", app="outer")
        [first, *_] = base.steps
        call = first.action.tool_call.model_copy(update={"name": "billing"})  # type: ignore[union-attr]
        awaiting = first.model_copy(update={"observation": None, "action": first.action.model_copy(update={"tool_call": call})})
        paused = base.model_copy(update={"status": "interrupted", "thread_id": "T1", "steps": [awaiting]})
        call_id = awaiting.action.tool_call.id  # type: ignore[union-attr]
        later = {"thread_id": "T1", "started_at": base.started_at + dt.timedelta(minutes=1)}
        PausedDecisions(opened).remember(paused)
        PausedDecisions(opened).remember(sample_trajectory("fresh-sub-agent", app="inner").model_copy(update=later))
        assert PausedDecisions(opened).tools("T1", [call_id], time.time_ns() + 10**9, chosen_per_call=False) is not None
        PausedDecisions(opened).remember(sample_trajectory("new-input", app="outer").model_copy(update=later))
        assert list(folder.iterdir()) == []
    finally:
        opened.close()
