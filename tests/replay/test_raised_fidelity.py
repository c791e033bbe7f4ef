"""An expert call whose exception ended the run (``create_agent``'s default tool-error handling re-raises it) was seen by
no model: capture records the exception (``RuntimeError: backend down: now``), and replay compares the exception the
sandbox's call raised with it, not the sandbox's error text. An error a tool node showed the model is compared as text,
as before. Real ``create_agent`` / ``create_react_agent`` graphs recorded into a real local store, replayed by
``ee replay run`` in a real ``PythonSandbox``, built by ``ee datasets build``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import ToolNode, create_react_agent
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.records import Observation, Trajectory
from ee_middleware.replay.fidelity import ended_the_run, raised_as_recorded
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call


def _fail(world: dict[str, Any], q: str) -> str:
    raise RuntimeError("backend down: " + q)


def _fail_otherwise(world: dict[str, Any], q: str) -> str:
    raise ValueError("backend down: " + q)


def _fail_later(world: dict[str, Any], q: str) -> str:
    raise RuntimeError("backend down: " + q + " (retry in 5 s)")


def _answer(world: dict[str, Any], q: str) -> str:
    return "backend up: " + q


def _lookup(world: dict[str, Any], city: str) -> str:
    return f"{city}: sunny"


def tool_error_text(exc: BaseException) -> str:
    """docs/sandboxes.md's format_error for ``ToolNode(handle_tool_errors=True)``."""
    return f"Error: {exc!r}\n Please fix your mistakes."


def _sandbox(fail: Any, **options: Any) -> PythonSandbox:
    return PythonSandbox(lambda environment: {}, tools={"fail": fail, "lookup": _lookup}, **options)


def same_sandbox() -> PythonSandbox:
    return _sandbox(_fail)


def tool_node_text_sandbox() -> PythonSandbox:
    return _sandbox(_fail, format_error=tool_error_text)


def other_exception_sandbox() -> PythonSandbox:
    return _sandbox(_fail_otherwise)


def other_message_sandbox() -> PythonSandbox:
    return _sandbox(_fail_later)


def answering_sandbox() -> PythonSandbox:
    return _sandbox(_answer)


def _lookup_raising(world: dict[str, Any], city: str) -> str:
    raise RuntimeError("backend down: now")


def lookup_raising_sandbox() -> PythonSandbox:
    """The lookup raises the exception that ended the recorded run (its call had answered)."""
    return PythonSandbox(lambda environment: {}, tools={"fail": _fail, "lookup": _lookup_raising})


def _tools() -> list[Any]:
    @tool("fail")
    def fail(q: str) -> str:
        """Ask the backend."""
        return _fail({}, q)

    @tool("lookup")
    def lookup(city: str) -> str:
        """Look up a city."""
        return _lookup({}, city)

    return [fail, lookup]


def _record(root: Path, calls: list[Any], *, shown: bool = False) -> Trajectory:
    """One run calling ``calls`` in one turn, approved. ``create_agent``'s default re-raises the tool's RuntimeError (the
    run ends ``error``); with ``shown``, ``ToolNode(handle_tool_errors=True)`` shows it to the model, which answers."""
    script = [AIMessage(content="", tool_calls=calls), AIMessage(content="the backend is down")]
    model = ScriptedChatModel(script=script)
    graph = create_react_agent(model, ToolNode(_tools(), handle_tool_errors=True)) if shown else create_agent(model, _tools())
    agent = record_experience(graph, app="raised", store=root)
    try:
        agent.invoke({"messages": [("user", "Try the backend")]})
    except RuntimeError:
        assert not shown
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(root)
    try:
        (trajectory,) = store.iter_trajectories()
        store.approve([trajectory.id], by="test")
    finally:
        store.close()
    return trajectory


def _replay(root: Path, sandbox: str) -> list[dict[str, Any]]:
    """``ee replay run`` (mutation, k=2) in ``sandbox``; the record's fidelity mismatches (none: an empty list)."""
    args = [
        "replay",
        "run",
        "--store",
        str(root),
        "--sandbox",
        f"tests.replay.test_raised_fidelity:{sandbox}",
        "--policy",
        "mutate",
        "--k",
        "2",
    ]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    store = LocalExperienceStore(root)
    try:
        replays = store.replays()
    finally:
        store.close()
    (record,) = replays.to_dicts()
    mismatches = json.loads(record["details_json"]).get("fidelity_mismatches", [])
    assert record["fidelity_mismatches"] == len(mismatches)
    return mismatches


def test_the_recording_is_the_exception_that_ended_the_run(tmp_path: Path) -> None:
    trajectory = _record(tmp_path / "experience", [tool_call("fail", q="now")])
    (step,) = trajectory.steps
    assert (trajectory.status, trajectory.error) == ("error", "RuntimeError: backend down: now")
    assert step.observation is not None and step.observation.content == "RuntimeError: backend down: now"
    assert ended_the_run(trajectory, step)


@pytest.mark.parametrize(
    ("sandbox", "replayed"),
    [
        ("other_exception_sandbox", "Error: ValueError: backend down: now"),
        ("other_message_sandbox", "Error: RuntimeError: backend down: now (retry in 5 s)"),
        ("answering_sandbox", "backend up: now"),
    ],
)
def test_another_exception_or_a_result_is_still_a_fidelity_mismatch(tmp_path: Path, sandbox: str, replayed: str) -> None:
    root = tmp_path / "experience"
    _record(root, [tool_call("fail", q="now")])
    (mismatch,) = _replay(root, sandbox)
    assert (mismatch["tool"], mismatch["recorded"], mismatch["replayed"]) == ("fail", "RuntimeError: backend down: now", replayed)


def test_an_error_the_tool_node_showed_the_model_is_still_compared_as_text(tmp_path: Path) -> None:
    """ToolNode(handle_tool_errors=True) showed the model its text and the model answered: the default format_error's
    text differs from it (a mismatch, as docs/sandboxes.md says), the docs' tool_error_text is it."""
    trajectory = _record(tmp_path / "default", [tool_call("fail", q="now")], shown=True)
    step = trajectory.steps[0]
    assert trajectory.status == "completed" and not ended_the_run(trajectory, step)
    assert (
        step.observation is not None and step.observation.content == "Error: RuntimeError('backend down: now')\n Please fix your mistakes."
    )
    (mismatch,) = _replay(tmp_path / "default", "same_sandbox")
    assert mismatch["replayed"] == "Error: RuntimeError: backend down: now"
    _record(tmp_path / "configured", [tool_call("fail", q="now")], shown=True)
    assert _replay(tmp_path / "configured", "tool_node_text_sandbox") == []


@pytest.mark.parametrize(
    ("replayed", "same"),
    [
        (Observation(content="Error: RuntimeError: backend down: now", is_error=True), True),
        (Observation(content="Error: RuntimeError('backend down: now')\n Please fix your mistakes.", is_error=True), True),
        (Observation(content="RuntimeError: backend down: now", is_error=True), True),
        (Observation(content="Error: RuntimeError: backend down: now\n Please fix your mistakes.", is_error=True), True),
        (Observation(content="Tool failed.\nbuiltins.RuntimeError: backend down: now\nTry again.", is_error=True), False),
        (Observation(content="Error: RuntimeError: backend down: now\nretry after 5 s", is_error=True), False),
        (Observation(content="Error: Exception: tool failed: RuntimeError: backend down: now", is_error=True), False),
        (Observation(content="Error: RuntimeError('backend down: now')\nretry after 5 s", is_error=True), False),
        (Observation(content="Error: MyRuntimeError: backend down: now", is_error=True), False),
        (Observation(content="Error: RuntimeError: backend down: now!", is_error=True), False),
        (Observation(content="Error: RuntimeError: backend down: no", is_error=True), False),
        (Observation(content="RuntimeError: backend down: now", is_error=False), False),
        (Observation(content="the tool failed", is_error=True), False),
        (Observation(content="Error: RuntimeError: backend down: now", is_error=True, sandbox_failure="crash"), False),
    ],
)
def test_which_sandbox_answers_name_the_recorded_exception(tmp_path: Path, replayed: Observation, same: bool) -> None:
    """On the real recording: the exception's type (whole, its module aside) and message as Python writes them, in an
    error that is the tool's own (not a sandbox failure), the whole text in one of the accepted forms. Before, a text
    that named the exception anywhere matched: a message with more lines ('retry after 5 s'), another exception quoting
    it in its message ('Exception: tool failed: RuntimeError: ...'), any text around it."""
    trajectory = _record(tmp_path / "experience", [tool_call("fail", q="now")])
    assert raised_as_recorded(trajectory, trajectory.steps[0], replayed) is same


def test_a_key_error_is_named_in_its_repr_form(tmp_path: Path) -> None:
    """str(KeyError('x')) is "'x'", its repr "KeyError('x')": the recorded "KeyError: 'x'" matches either."""
    trajectory = _record(tmp_path / "experience", [tool_call("fail", q="now")])
    step = trajectory.steps[0]
    assert step.observation is not None
    step = step.model_copy(update={"observation": step.observation.model_copy(update={"content": "KeyError: 'order 7'"})})
    trajectory = trajectory.model_copy(update={"error": "KeyError: 'order 7'", "steps": [step]})
    for text in ("Error: KeyError: 'order 7'", "Error: KeyError('order 7')\n Please fix your mistakes."):
        assert raised_as_recorded(trajectory, step, Observation(content=text, is_error=True)), text
    assert not raised_as_recorded(trajectory, step, Observation(content="Error: KeyError: 'order 8'", is_error=True))


def _fail_shown_then_model_failed(root: Path) -> Trajectory:
    """``ToolNode`` shows the model the tool's error as ``Type: message``; the model call given it fails (a provider's
    503), so the run ends ``error`` with no decision after the call, but on another exception than the tool's."""

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        if not any(m.type == "tool" for m in messages):
            return AIMessage(content="", tool_calls=[tool_call("fail", q="now")])
        assert messages[-1].content == "RuntimeError: backend down: now"  # the model was given the tool node's text
        raise RuntimeError("provider: 503 service unavailable")

    node = ToolNode(_tools(), handle_tool_errors=lambda e: f"{type(e).__name__}: {e}")
    agent = record_experience(create_react_agent(ScriptedChatModel(policy=policy), node), app="raised", store=root)
    with pytest.raises(RuntimeError, match="503"):
        agent.invoke({"messages": [("user", "Try the backend")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(root)
    try:
        (trajectory,) = store.iter_trajectories()
        store.approve([trajectory.id], by="test")
    finally:
        store.close()
    return trajectory


def test_an_error_shown_to_a_model_whose_call_then_failed_is_compared_as_text(tmp_path: Path) -> None:
    """The model saw 'RuntimeError: backend down: now'; the default format_error writes 'Error: RuntimeError: ...',
    which is not that text: a fidelity mismatch (docs/sandboxes.md: make format_error write what the tool node showed).
    Before, the run's ending ``error`` with no decision after the call was taken to mean that no model saw the text, and
    the mismatch went unreported (0 mismatches)."""
    root = tmp_path / "experience"
    trajectory = _fail_shown_then_model_failed(root)
    (step,) = trajectory.steps
    assert (trajectory.status, trajectory.error) == ("error", "RuntimeError: provider: 503 service unavailable")
    assert not ended_the_run(trajectory, step)
    (mismatch,) = _replay(root, "same_sandbox")
    assert (mismatch["recorded"], mismatch["replayed"]) == ("RuntimeError: backend down: now", "Error: RuntimeError: backend down: now")


def test_only_the_parallel_call_whose_exception_ended_the_run_is_compared_as_raised(tmp_path: Path) -> None:
    """Two parallel calls both raise; the run's error is one of them. The other's exception did not end the run (its
    record is no record of the run's exception), so its text is compared as text."""
    trajectory = _record(tmp_path / "experience", [tool_call("fail", q="now"), tool_call("fail", q="later")])
    by_text = {s.observation.content: s for s in trajectory.steps if s.observation is not None}
    assert set(by_text) == {"RuntimeError: backend down: now", "RuntimeError: backend down: later"}
    assert trajectory.error in by_text
    ended = [text for text, step in by_text.items() if ended_the_run(trajectory, step)]
    assert ended == [trajectory.error]
    for text, step in by_text.items():
        replayed = Observation(content=f"Error: {text}", is_error=True)
        assert raised_as_recorded(trajectory, step, replayed) is (text == trajectory.error), text
