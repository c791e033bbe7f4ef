"""The records refuse, when made, what the store could not give back: a ``tool_call`` action without its call was
accepted when the field was left out (pydantic runs a field's validator only on a value given), written by
``store.write`` (which said it wrote it) and then dropped by every read as unreadable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ee_middleware.errors import RecordError
from ee_middleware.records import Action, ToolCall


@pytest.mark.parametrize("given", [{}, {"tool_call": None}])
def test_a_tool_call_action_without_its_call_is_refused_when_made(given: dict) -> None:
    with pytest.raises(ValidationError, match="a 'tool_call' action needs its tool_call"):
        Action(kind="tool_call", **given)
    with pytest.raises(RecordError, match="a 'tool_call' action needs its tool_call"):
        Action.parse({"kind": "tool_call", **given})


def test_actions_that_hold_what_they_say_are_made() -> None:
    assert Action(kind="tool_call", tool_call=ToolCall(id="c1", name="lookup", arguments={"id": 1})).tool_call is not None
    assert Action(kind="answer", content="done").tool_call is None


def test_a_trajectory_shows_as_one_short_line_however_long_its_run() -> None:
    """Before: the default repr printed every step's whole state: a 31-step run with a 2 KB system prompt ran to 187 KB."""
    from ee_middleware.testing.store_conformance import sample_trajectory

    trajectory = sample_trajectory("t-long")
    steps = [trajectory.steps[0].model_copy(update={"index": i}) for i in range(31)]
    long_run = trajectory.model_copy(update={"steps": steps, "task": "book a flight " * 40})
    shown = repr(long_run)
    assert shown.startswith("Trajectory(id='t-long', app=") and f"steps={len(steps)}" in shown and "..." in shown
    assert len(shown) < 400 and str(long_run) == shown, shown
