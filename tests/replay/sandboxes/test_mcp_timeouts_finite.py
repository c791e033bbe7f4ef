"""An MCP sandbox refuses a timeout that is not a finite number of seconds > 0 when it is built: inf passed the old
"> 0" check and every tool call then failed on its wait (``Future.result(timeout=inf)`` raises OverflowError)."""

from __future__ import annotations

import math
import sys

import pytest

pytest.importorskip("mcp")

from ee_middleware.errors import SandboxError
from ee_middleware.replay.sandboxes.mcp import McpSandbox, McpServer


@pytest.mark.parametrize("setting", ["timeout_s", "start_timeout_s"])
@pytest.mark.parametrize("value", [math.inf, math.nan, 0.0, -1.0])
def test_an_mcp_sandbox_refuses_a_timeout_that_is_not_finite_and_positive(setting: str, value: float) -> None:
    with pytest.raises(SandboxError, match="must be a finite number of seconds > 0"):
        McpSandbox({"notes": McpServer(sys.executable, ("-c", "pass"))}, **{setting: value})
