"""A Ctrl-C reaching a subprocess sandbox's child while it starts (imports, unpickles its factory) is dropped there:
the parent decides what a Ctrl-C does. Before, each child died of it with a ``KeyboardInterrupt`` traceback on the
job's terminal (one per sandbox, up to 71 lines), and the sandbox failed to start."""

from __future__ import annotations

import os

import pytest

from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from tests.replay.sandboxes.ctrl_c_on_import_world import make_sandbox

pytestmark = pytest.mark.timeout(120)


def test_a_sigint_during_the_childs_start_up_is_dropped_and_the_sandbox_works(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EE_TEST_QUIET_PID", str(os.getpid()))  # the child, not this process, signals itself
    with SubprocessSandbox(make_sandbox, memory_mb=None) as box:
        box.reset({"counts": {"a": 1}})
        observation = box.execute(ToolCall(id="call_get", name="get", arguments={"key": "a"}))
    assert not observation.is_error and observation.content == "1", observation
    err = capfd.readouterr().err
    assert "KeyboardInterrupt" not in err and "Traceback" not in err, err
