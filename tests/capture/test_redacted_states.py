"""``redacted_trajectory`` (``ee traces show --json``, replay's views) redacts the messages of the steps' states once
each: every state redacted whole walked the run's first message once per step (``ee traces show --json`` of 100 steps of
100 KB results: 108 -> 42 s, the same output). A real ReAct run recorded without redaction into the real local store."""

from __future__ import annotations

from pathlib import Path

from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.redaction import Redactor
from ee_middleware.capture.store_redaction import redacted_trajectory
from ee_middleware.scripted import ScriptedChatModel, tool_call
from tests.capture.redaction_capture import redact_value_calls


def test_states_are_redacted_as_each_whole_and_each_message_once(tmp_path: Path) -> None:
    @tool
    def fetch(page: int) -> str:
        """A page of the manual."""
        return f"page {page}: " + "lorem ipsum " * 50 + (" mail dana@example.org" if page % 3 == 0 else "")

    script = [AIMessage(content="", tool_calls=[tool_call("fetch", page=i)]) for i in range(8)] + [AIMessage(content="read")]
    agent = record_experience(create_react_agent(ScriptedChatModel(script=script), [fetch]), app="m", store=tmp_path / "s", redact=False)
    agent.invoke({"messages": [("user", "read the manual, then write to bob@example.org")]})
    assert agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "s", create=False)
    [trajectory] = list(store.iter_trajectories())
    store.close()
    redactor = Redactor(salt=b"a store's salt!!")
    expected = [redactor.redact_value(step.state) for step in trajectory.steps]
    with redact_value_calls() as walked:
        shown = redacted_trajectory(trajectory, redactor)
    assert [step.state for step in shown.steps] == expected
    assert "dana@example.org" not in shown.model_dump_json() and "bob@example.org" not in shown.model_dump_json()
    messages = [v for v in walked if isinstance(v, dict) and "role" in v and v in trajectory.steps[-1].state]
    assert len(messages) == len(trajectory.steps[-1].state)  # each message of the run walked once, not once per state


def test_messages_that_write_the_same_json_but_differ_are_redacted_apart() -> None:
    """(review) The memo took a message's JSON text as its identity: ``{4111111111111111: "x"}`` (an int key, left as it
    is) and ``{"4111111111111111": "x"}`` (a card, redacted) write the same text, and the first one's redaction was shown
    for both. Not reachable from a store (its states are JSON), but a trajectory built in code is."""
    from ee_middleware.capture.store_redaction import _message_redactor

    redactor = Redactor()
    redact = _message_redactor(redactor.redact_value)
    first, second = [{"role": "tool", "content": {4111111111111111: "x"}}], [{"role": "tool", "content": {"4111111111111111": "x"}}]
    assert (redact(first), redact(second)) == (redactor.redact_value(first), redactor.redact_value(second))
    assert "4111111111111111" not in str(redact(second))
