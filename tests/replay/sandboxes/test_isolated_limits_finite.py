""":class:`SubprocessSandbox` refuses limits that are not finite when it is built: before, ``timeout_s=inf`` passed its
``> 0`` check and the first tool call crashed in the wait (``OverflowError``), and ``memory_mb=inf`` or NaN limits
passed too."""

from __future__ import annotations

import math

import pytest

from ee_middleware.errors import SandboxError
from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from tests.replay.sandboxes.counter_world import make_counter_sandbox


@pytest.mark.parametrize(
    ("setting", "value", "advice"),
    [
        ("timeout_s", math.inf, "or None for no limit"),
        ("timeout_s", math.nan, "or None for no limit"),
        ("memory_mb", math.inf, "or None for no limit"),
        ("memory_mb", math.nan, "or None for no limit"),
        ("control_timeout_s", math.inf, "a finite number of seconds > 0"),
        ("control_timeout_s", math.nan, "a finite number of seconds > 0"),
    ],
)
def test_a_limit_that_is_not_finite_is_refused_naming_it(setting: str, value: float, advice: str) -> None:
    with pytest.raises(SandboxError) as caught:
        SubprocessSandbox(make_counter_sandbox, **{setting: value})
    message = str(caught.value)
    assert message.startswith(f"{setting} must be") and advice in message, message


def test_no_time_limit_is_still_none_and_runs_a_tool_call() -> None:
    with SubprocessSandbox(make_counter_sandbox, timeout_s=None, memory_mb=None, control_timeout_s=10.0) as box:
        box.reset(None)
        observation = box.execute(ToolCall(id="c", name="add", arguments={"key": "a", "n": 2}))
    assert observation.sandbox_failure is None and "2" in observation.content, observation
