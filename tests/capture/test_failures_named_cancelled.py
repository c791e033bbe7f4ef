"""A tool failing with an exception merely *named* ``CancelledError`` (``concurrent.futures``', an app's own) fails the
run: capture stores it ``error``, and the failing call keeps its error observation. The assembler took capture's own
tool span (``error.type``: the bare ``__qualname__``) for a cancellation and dropped the call's observation. Real
``create_agent`` graphs, the real recorder and store."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call


class CancelledError(Exception):
    """An order the customer cancelled."""


@tool
def fetch(key: str) -> str:
    """Fetch an order (through a pool whose futures may be cancelled)."""
    if key == "pool":
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        future.cancel()
        return future.result()  # concurrent.futures.CancelledError, an Exception
    raise CancelledError(f"order {key} was cancelled by the customer")


def _policy(key: str) -> Any:
    def policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        return AIMessage("", tool_calls=[tool_call("fetch", key=key)])

    return policy


@pytest.mark.parametrize(
    ("key", "error"), [("pool", "CancelledError: "), ("A-7", "CancelledError: order A-7 was cancelled by the customer")]
)
def test_a_tool_failing_with_an_exception_named_cancelled_error_is_an_error_observation(tmp_path: Path, key: str, error: str) -> None:
    store = tmp_path / "store"
    agent = record_experience(create_agent(ScriptedChatModel(policy=_policy(key)), [fetch]), app="orders", store=store)
    with pytest.raises((concurrent.futures.CancelledError, CancelledError)):
        agent.invoke({"messages": [("user", f"fetch {key}")]})
    agent.recorder.close()
    opened = LocalExperienceStore(store)
    try:
        (trajectory,) = opened.iter_trajectories()
    finally:
        opened.close()
    assert (trajectory.status, trajectory.error) == ("error", error)
    (step,) = trajectory.steps
    assert step.observation is not None
    assert (step.action.tool_call.name, step.observation.content, step.observation.is_error) == ("fetch", error, True)
