""":func:`~ee_middleware.replay.sandboxes.protocol.refused`: the answer to a call of a tool a sandbox does not cover,
where a loop must answer one (an eval's candidate), made without calling the sandbox. Real PythonSandbox."""

from __future__ import annotations

from typing import Any

from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.protocol import refused
from ee_middleware.replay.sandboxes.python import PythonSandbox


def _sandbox() -> PythonSandbox:
    def create_ticket(world: dict[str, Any], title: str) -> str:
        world["tickets"].append(title)
        return "Opened."

    sandbox = PythonSandbox(
        lambda environment: {"tickets": []}, tools={"create_ticket": create_ticket}, outside_world_tools=["page_oncall"]
    )
    sandbox.reset(None)
    return sandbox


def test_a_sandbox_that_says_why_is_quoted() -> None:
    sandbox = _sandbox()
    answer = refused(sandbox, "page_oncall")
    assert answer.is_error and answer.content == f"Error: tool 'page_oncall' was not run: {sandbox.refusal_hint('page_oncall')}"
    assert "outside_world_tools" in answer.content
    assert sandbox.state_digest() == _sandbox().state_digest()  # nothing ran
    sandbox.close()


def test_a_sandbox_that_says_nothing_gets_the_plain_answer() -> None:
    sandbox = _sandbox()
    answer = refused(sandbox, "delete_everything")
    assert answer.is_error and answer.content == "Error: tool 'delete_everything' is not available in this sandbox."
    assert answer.content == sandbox.execute(ToolCall(id="c", name="delete_everything", arguments={})).content  # as it answers
    sandbox.close()
