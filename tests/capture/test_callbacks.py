"""The spans capture makes of a real LangGraph agent's calls (callbacks.py), when a call cannot be recorded whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware import record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.errors import CaptureError, RedactFnError
from ee_middleware.store import LocalExperienceStore
from tests.conftest import USER_TASK


def scrub_or_fail(text: str) -> str:
    """A user's ``redact_fn`` that raises on some strings (module level: the capture process imports it)."""
    if "ordered 5 pear" in text:  # order_item's result
        raise RuntimeError(f"scrubber crashed on: {text}")
    return text


SOMETIMES = {"fail": False}
"""Whether :func:`sometimes` raises (a test switches it)."""


def sometimes(text: str) -> str:
    """A user's ``redact_fn`` that raises on order_item's result while :data:`SOMETIMES` says so (module level: a
    recorder records a redact_fn only where other processes can import it by its name)."""
    if SOMETIMES["fail"] and "ordered 5 pear" in text:
        raise RuntimeError("scrubber crashed")
    return text


def approve_completed(trajectory: Any) -> bool:
    return trajectory.status == "completed"


def _stored(store_path: Path) -> list[Any]:
    if not store_path.exists():
        return []
    store = LocalExperienceStore(store_path)
    try:
        return list(store.iter_trajectories())
    finally:
        store.close()


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_run_whose_redact_fn_raised_on_one_call_is_not_stored_as_if_whole(
    offload, react_graph, store_path, tracer_provider, span_exporter, monkeypatch
):
    """Defect: the span of the tool call whose result ``redact_fn`` raised on was left without its result, and the run
    was assembled from what was left: stored ``completed`` with an empty observation (``is_error`` False), and approved
    by ``approve_if``. It is now counted as failed, with a reason that quotes none of its values, and not stored. It
    counts once in ``runs_failed`` (it counted 3: the tool call's span, the next model call's span, whose history holds
    the result, and the run); those two spans count in ``spans_failed``."""
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    kwargs: dict[str, Any] = {"tracer_provider": tracer_provider} if offload == "thread" else {"offload": "process"}
    agent = record_experience(
        react_graph,
        app="shop",
        store=store_path,
        redact_fn=scrub_or_fail,
        approve_if=approve_completed,
        strict=False,
        **kwargs,
    )
    try:
        result = agent.invoke(USER_TASK)
        assert result["messages"][-1].content.startswith("Pears"), "the agent itself is not affected"
        agent.flush()
        stats = agent.recorder.stats
    finally:
        agent.recorder.close()
    assert _stored(store_path) == [], "a cut-down run must not be stored as completed"
    assert stats.trajectories_written == stats.trajectories_auto_approved == 0
    assert (stats.runs_failed, stats.spans_failed) == (1, 2), stats
    reason = stats.errors[-1]
    assert (
        "was not stored" in reason
        and "tool call's arguments or result could not be encoded or redacted (RedactFnError: the redact_fn raised RuntimeError)" in reason
    )
    assert "ordered 5 pear" not in reason
    if offload == "thread":  # the user's own exporter gets the span marked, without the value
        [tool_span] = [s for s in span_exporter.get_finished_spans() if s.name == "execute_tool order_item"]
        assert "RuntimeError" in tool_span.attributes[sc.EE_CAPTURE_FAILED]
        assert "ordered 5 pear" not in json.dumps(dict(tool_span.attributes))


def test_strict_mode_raises_when_a_run_could_not_be_recorded_whole(react_graph, store_path):
    agent = record_experience(react_graph, app="shop", store=store_path, redact_fn=scrub_or_fail, strict=True)
    agent.invoke(USER_TASK)
    with pytest.raises(CaptureError, match="Recording failed") as raised:
        agent.flush()
    cause = raised.value.__cause__
    assert isinstance(cause, RedactFnError) and "scrub_or_fail raised builtins.RuntimeError" in str(cause)
    assert "scrubber crashed" not in str(raised.value), "never its message: it may quote the text it was given"
    assert isinstance(cause.__cause__, RuntimeError) and "scrubber crashed" in str(cause.__cause__), "its own, for a traceback"
    agent.recorder.close()
    assert _stored(store_path) == []


def test_runs_that_redact_alike_are_still_stored_after_one_that_failed(react_graph, store_path, monkeypatch):
    """Only the run whose call failed is left out: the next run of the same recorder is stored whole."""
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    monkeypatch.setitem(SOMETIMES, "fail", True)
    agent = record_experience(react_graph, app="shop", store=store_path, redact_fn=sometimes, strict=False)
    agent.invoke(USER_TASK)
    agent.flush()
    SOMETIMES["fail"] = False
    agent.invoke(USER_TASK)
    agent.flush()
    agent.recorder.close()
    [trajectory] = _stored(store_path)
    assert trajectory.status == "completed" and trajectory.num_steps == 3
    assert trajectory.steps[1].observation.content.startswith("ordered 5 pear")


class _Ambiguous:
    """What a pandas Series is in a boolean test: a comparison gives another one, whose truth raises."""

    def __eq__(self, other: object) -> Any:
        return self

    def __bool__(self) -> bool:
        raise ValueError("The truth value of a Series is ambiguous (stand-in)")

    __hash__ = None  # type: ignore[assignment]


class _FrameWithATypeColumn:
    """A stand-in for a pandas DataFrame with a ``type`` column: ``frame.type`` is that column."""

    type = _Ambiguous()


def test_a_node_update_holding_a_table_with_a_type_column_leaves_the_run_alone_stand_in_dataframe(tmp_path: Path) -> None:
    """Capture reads which node wrote the run's last reply from the nodes' updates (a36a1f6): it compared each value's
    ``type`` with "ai", and a DataFrame's ``type`` column made that raise at every node's end (logged; in strict mode the
    user's invoke raised it). Only messages are asked their type now."""
    from typing import TypedDict

    from langchain_core.messages import AIMessage
    from langgraph.graph import END, START, StateGraph

    from ee_middleware.testing import ScriptedChatModel

    model = ScriptedChatModel(script=[AIMessage(content="Two refunds.")])

    class State(TypedDict, total=False):
        question: str
        table: Any
        rows: list[Any]
        answer: str

    builder = StateGraph(State)
    builder.add_node("load", lambda state: {"table": _FrameWithATypeColumn(), "rows": [_FrameWithATypeColumn()]})
    builder.add_node("answer", lambda state: {"answer": model.invoke(state["question"]).content})
    builder.add_edge(START, "load")
    builder.add_edge("load", "answer")
    builder.add_edge("answer", END)
    agent = record_experience(builder.compile(), app="ops", store=tmp_path / "store", strict=True)
    agent.invoke({"question": "How many refunds?"})
    agent.flush()
    agent.recorder.close()
    [trajectory] = _stored(tmp_path / "store")
    assert trajectory.status == "completed" and trajectory.task == "How many refunds?"


class _EngineResult:
    """What presidio's ``AnonymizerEngine.anonymize`` returns: not the text, and a repr that quotes what it replaced."""

    def __init__(self, text: str, original: str) -> None:
        self.text, self.items = text, [{"original": original}]

    def __repr__(self) -> str:
        return f"text: {self.text}\nitems: {self.items}"


def returns_none_on_an_order(text: str) -> Any:
    return None if "ordered 5 pear" in text else text


def returns_bytes(text: str) -> Any:
    return text.replace("pear", "fruit").encode()


def returns_a_result_object(text: str) -> Any:
    return _EngineResult(text.replace("pear", "<FRUIT>"), "pear") if "ordered 5 pear" in text else text


@pytest.mark.parametrize(
    ("redact_fn", "returned"),
    [(returns_none_on_an_order, "None"), (returns_bytes, "builtins.bytes"), (returns_a_result_object, "_EngineResult")],
)
def test_a_redact_fn_that_returns_no_text_stores_nothing_and_says_what_it_returned(
    react_graph: Any, store_path: Path, redact_fn: Any, returned: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: stored as if whole, the function's result in the text's place: ``None`` made arguments null and the result
    "None", bytes became base64 blobs, and a result object's repr (presidio's) quoted the value it replaced (a sweep)."""
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    agent = record_experience(react_graph, app="shop", store=store_path, redact_fn=redact_fn, strict=False)
    try:
        agent.invoke(USER_TASK)
        agent.flush()
        stats = agent.recorder.stats
    finally:
        agent.recorder.close()
    assert _stored(store_path) == []
    assert stats.runs_failed == 1
    reason = next(e for e in stats.errors if "RedactFnError" in e)
    assert f"the redact_fn tests.capture.test_callbacks.{redact_fn.__name__} returned" in reason
    assert returned in reason and "must return a str" in reason
    assert "pear" not in reason
