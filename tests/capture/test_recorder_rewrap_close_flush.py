"""What a recorder does with settings it cannot honour, after ``close()``, and within a flush's time-out.

- ``record_experience`` on an agent already recorded, with other settings (another app, store, ``approve_if``,
  offload), raises a ``ConfigError`` saying so and how to record with them; before, it returned the first wrapper and the
  settings were ignored (its runs went to the first store). The same settings, or none, give the agent itself.
- A run made after ``recorder.close()`` is not stored and counted in ``stats.runs_failed``, so ``flush()`` says
  ``False``; before, it was dropped silently and ``flush()`` returned ``True``.
- ``flush(timeout)`` returns within ``timeout`` in all (the state reads of stopped runs, the capture process, the
  threads); before, with ``offload="process"`` and a capture process not answering, ``flush(timeout=1.0)`` took 6 s.

Real ``create_agent`` graphs on the real local store; a capture process stopped with SIGSTOP, a checkpointer and a
store that answer slowly (stand-ins, by name)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.types import Command

from ee_middleware import record_experience
from ee_middleware.capture.config import CaptureConfig
from ee_middleware.errors import CaptureError, ConfigError
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.capture.test_resumed_send_targets import CONFIG, _SlowSaver, _sync_refund_agent

pytestmark = pytest.mark.usefixtures("no_child_left")


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-{key}"


def _policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
    if messages[-1].type == "tool":
        return AIMessage(f"answer: {messages[-1].content}")
    return AIMessage("", tool_calls=[tool_call("lookup", key="k1")])


def _graph() -> Any:
    return create_agent(ScriptedChatModel(policy=_policy, model_name="m"), [lookup])


def _ask(agent: Any, question: str = "handle k1") -> str:
    return agent.invoke({"messages": [("user", question)]})["messages"][-1].content


def _stored(path: Path) -> list[Trajectory]:
    store = LocalExperienceStore(path)
    try:
        return sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        store.close()


def _approve(trajectory: Trajectory) -> bool:
    return True


# --- record_experience on a recorded agent -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"app": "team-b"}, "app"),
        ({"store": "other"}, "store"),
        ({"approve_if": _approve}, "approve_if"),
        ({"offload": "auto"}, "offload"),
        ({"app": "team-b", "store": "other", "approve_if": _approve}, "app, store and approve_if"),
    ],
    ids=["app", "store", "approve_if", "offload", "all"],
)
def test_wrapping_a_recorded_agent_again_with_other_settings_says_so(tmp_path: Path, settings: dict[str, Any], named: str) -> None:
    first = record_experience(_graph(), app="team-a", store=tmp_path / "a")
    if "store" in settings:
        settings = {**settings, "store": tmp_path / settings["store"]}
    with pytest.raises(ConfigError, match=rf"already recorded \(app 'team-a', store '.*a'\); the {named} given here differ") as raised:
        record_experience(first, **settings)
    assert "record_experience(agent.unwrap(), app=..., store=...)" in str(raised.value)
    # the way the message names records with the new settings, the first wrapper's runs stay its own
    second = record_experience(first.unwrap(), app="team-b", store=tmp_path / "b", approve_if=_approve)
    assert _ask(second) == _ask(first) == "answer: value-k1"
    second.recorder.close()
    first.recorder.close()
    assert [(t.app, t.approval.status) for t in _stored(tmp_path / "b")] == [("team-b", "approved")]
    assert [(t.app, t.approval.status) for t in _stored(tmp_path / "a")] == [("team-a", "pending")]


def test_wrapping_a_recorded_agent_again_with_its_own_settings_or_none_gives_it_back(tmp_path: Path) -> None:
    """Never a run recorded twice: the same settings (the store's folder however it is written) give the agent itself."""
    store = LocalExperienceStore(tmp_path / "a")
    first = record_experience(_graph(), app="team-a", store=tmp_path / "a", approve_if=_approve)
    assert record_experience(first) is first
    assert record_experience(first, app="team-a", store=str(tmp_path / "a" / ".." / "a"), approve_if=_approve) is first
    assert record_experience(first, config=first.recorder.config) is first
    with pytest.raises(ConfigError, match=r"the app\b"):
        record_experience(first, config=CaptureConfig(app="team-b", store=str(tmp_path / "a")))
    on_object = record_experience(_graph(), app="team-c", store=store)
    assert record_experience(on_object, store=store) is on_object
    with pytest.raises(ConfigError, match="the store given here differ"):
        record_experience(on_object, store=LocalExperienceStore(tmp_path / "c"))
    assert _ask(record_experience(first)) == "answer: value-k1"
    first.recorder.close()
    on_object.recorder.close()
    assert len(_stored(tmp_path / "a")) == 1


def test_a_decorated_factory_returning_a_recorded_agent_with_other_settings_says_so(tmp_path: Path) -> None:
    shared = record_experience(_graph(), app="team-a", store=tmp_path / "a")

    @record_experience(app="team-b", store=tmp_path / "b")
    def build_agent() -> Any:
        return shared

    @record_experience(store=tmp_path / "a")
    def build_same() -> Any:
        return shared

    with pytest.raises(ConfigError, match="the app and store given here differ"):
        build_agent()
    assert build_same() is shared
    shared.recorder.close()


# --- runs after close() --------------------------------------------------------------------------------------------


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Capture failures logged and counted, not raised (the test suite runs capture strict)."""
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")


@pytest.mark.usefixtures("lenient")
@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_run_after_close_is_counted_not_stored_and_flush_says_false(tmp_path: Path, offload: str, caplog: Any) -> None:
    agent = record_experience(_graph(), app="svc", store=tmp_path / "s", offload=offload, strict=False)
    _ask(agent, "handle k1")
    agent.recorder.close()
    assert _ask(agent, "handle k2") == "answer: value-k1"  # the agent still answers
    assert agent.flush() is False
    assert agent.recorder.stats.runs_failed == 1
    assert "closed (recorder.close()) is not stored" in caplog.text
    assert agent.flush() is True  # said once
    assert [t.task for t in _stored(tmp_path / "s")] == ["handle k1"]


def test_strict_mode_raises_for_a_run_after_close(tmp_path: Path) -> None:
    agent = record_experience(_graph(), app="svc", store=tmp_path / "s", strict=True)
    agent.recorder.close()
    _ask(agent)
    with pytest.raises(
        CaptureError, match=r"a run that started after the recorder of app 'svc' was closed \(recorder.close\(\)\) is not stored"
    ):
        agent.flush()


@pytest.mark.usefixtures("lenient")
def test_a_run_in_flight_at_close_is_counted_not_stored(tmp_path: Path) -> None:
    """A run that started before ``close()`` and ends after it: not stored (the recorder is stopped), counted."""
    agent = record_experience(_graph(), app="svc", store=tmp_path / "s", strict=False)
    stream = agent.stream({"messages": [("user", "handle k1")]}, stream_mode="updates")
    next(stream)  # the run is in flight
    agent.recorder.close()
    assert [*stream]  # it goes on, and ends
    assert agent.flush() is False
    assert agent.recorder.stats.runs_failed == 1
    assert not agent.recorder._in_flight
    assert _stored(tmp_path / "s") == []


# --- flush's time-out ----------------------------------------------------------------------------------------------


def test_flush_returns_within_its_timeout_when_the_capture_process_does_not_answer(tmp_path: Path) -> None:
    agent = record_experience(_graph(), app="fl", store=tmp_path / "s", offload="process")
    recorder = agent.recorder
    _ask(agent, "handle k0")
    assert agent.flush()
    os.kill(recorder.offload.pid, signal.SIGSTOP)
    try:
        _ask(agent, "handle k1")
        started = time.monotonic()
        assert agent.flush(timeout=1.0) is False
        took = time.monotonic() - started
    finally:
        os.kill(recorder.offload.pid, signal.SIGCONT)
    assert 0.9 <= took < 1.5, took  # before: 6.0 s
    assert agent.flush() is True  # the late answer of the first flush is skipped; nothing is lost
    recorder.close()
    assert [t.task for t in _stored(tmp_path / "s")] == ["handle k0", "handle k1"]


class _SlowStore(LocalExperienceStore):
    """Stand-in for a store that writes slowly (a network disk): each write takes ``delay_s`` once ``slow`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.slow = False
        self.delay_s = 1.5

    def write(self, trajectories: Any) -> Any:
        if self.slow:
            time.sleep(self.delay_s)
        return super().write(trajectories)


def test_flush_timeout_bounds_the_whole_flush_with_a_run_waiting_for_its_state_stand_in(tmp_path: Path) -> None:
    """A slow checkpointer (a resumed run that stopped waits for the thread's state) and a slow store (stand-ins): each
    step took the whole time-out in turn (``flush(timeout=1.0)`` ~2 s); now they share it."""
    saver, store = _SlowSaver(), _SlowStore(tmp_path / "s")
    agent = record_experience(_sync_refund_agent(saver), app="shop", store=store)
    agent.invoke({"messages": [("user", "refund A1")]}, CONFIG)
    assert agent.flush()
    store.slow = True
    stream = agent.stream(Command(resume="yes"), CONFIG, stream_mode="updates")
    for chunk in stream:
        if "tools" in chunk:
            break
    saver.slow = True
    stream.close()  # the run now waits for the thread's state (at most STOPPED_STATE_TIMEOUT_S, 2 s)
    try:
        assert saver.entered.wait(5)
        started = time.monotonic()
        flushed = agent.flush(timeout=1.0)
        took = time.monotonic() - started
    finally:
        saver.release.set()
    assert flushed is False
    assert took < 1.4, took  # before: ~2 s (1 s for the read, then 1 s for the store's write)
    store.slow = False
    assert agent.flush() is True
    agent.recorder.close()
    assert [t.status for t in _stored(tmp_path / "s")] == ["interrupted", "interrupted"]
