"""A run whose last model turn the provider's content filter stopped (finish reason ``content_filter``: OpenAI's word,
Gemini's ``SAFETY``, Bedrock's ``guardrail_intervened``) is ``stopped``, with that reason, as one cut at ``max_tokens``
is. Was: ``completed``, so ``approve_if=status == "completed"`` approved a filtered (empty or partial) answer for
training. Real LangChain agent, OTel SDK and store; the served chat model is the stand-in of
tests/capture/test_served_replies.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import AIMessage

from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.capture.test_served_replies import _agent, _record, call, turn

pytestmark = pytest.mark.usefixtures("no_child_left")

FILTERED = "the last answer was stopped by the provider's content filter (finish_reason content_filter)"


@pytest.mark.parametrize("said", ["content_filter", "SAFETY", "guardrail_intervened"])
def test_an_answer_the_content_filter_stopped_is_stopped_not_completed(store_path: Path, said: str) -> None:
    filtered = turn(AIMessage(content="I can help you transfer the"), finish=[said])
    _, t, _ = _record(_agent(filtered), store_path)
    assert (t.status, t.error, t.approval.status) == ("stopped", FILTERED, "pending")
    assert t.final_answer == "I can help you transfer the"  # kept, for a reviewer to see


def test_a_filtered_tool_turn_ending_the_run_is_stopped(store_path: Path) -> None:
    """The filter stopped a turn that wrote a call, and the run ended there (the last acted turn)."""
    script = (turn(AIMessage(content="", tool_calls=[call("c0", "FRA")])), turn(AIMessage(content=""), finish=["content_filter"]))
    _, t, _ = _record(_agent(*script), store_path)
    assert (t.status, t.error) == ("stopped", FILTERED)


def test_a_filtered_turn_the_graph_went_on_from_ended_nothing(store_path: Path) -> None:
    script = (
        turn(AIMessage(content="", tool_calls=[call("c0", "FRA")]), finish=["content_filter"]),
        turn(AIMessage(content="LH100 leaves at 09:10.")),
    )
    _, t, _ = _record(_agent(*script), store_path)
    assert (t.status, t.error, t.approval.status) == ("completed", None, "approved")
