"""The scripted chat model's helpers."""

from __future__ import annotations

from ee_middleware.testing import tool_call


def test_a_scripted_call_may_pass_an_argument_called_name() -> None:
    assert tool_call("create_user", name="Ada", admin=False) == {
        "name": "create_user",
        "args": {"name": "Ada", "admin": False},
        "id": None,
        "type": "tool_call",
    }
