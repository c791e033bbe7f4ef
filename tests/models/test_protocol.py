"""The chat-client protocol's answer type: its text and tool calls, whatever the backend sent."""

from __future__ import annotations

from ee_middleware.models import Choice
from ee_middleware.models.parsing import ParseProblem
from ee_middleware.records import ToolCall


def test_a_problem_in_an_answer_cut_at_max_tokens_says_so() -> None:
    cut = Choice.from_message(
        {"role": "assistant", "content": '<tool_call>{"name": "lookup", "arguments": {"q": "lo'}, finish_reason="length"
    )
    [problem] = cut.tool_calls()
    assert isinstance(problem, ParseProblem)
    assert problem.problem.startswith("the answer was cut off at max_tokens") and "invalid JSON" in problem.problem
    thinking = Choice.from_message({"role": "assistant", "content": None, "reasoning_content": "Let me see"}, finish_reason="length")
    [problem] = thinking.tool_calls()
    assert isinstance(problem, ParseProblem) and "cut off at max_tokens" in problem.problem and "only reasoning" in problem.problem
    text = Choice.from_text('<tool_call>{"name": "lookup", "arguments": {}}</tool_call><tool_call>{"name": "lo', finish_reason="length")
    done, broken = text.tool_calls()
    assert isinstance(done, ToolCall) and done.name == "lookup", "the calls before the cut are kept"
    assert isinstance(broken, ParseProblem) and "cut off at max_tokens" in broken.problem


def test_an_answer_that_stopped_keeps_its_own_problem() -> None:
    [problem] = Choice.from_message({"role": "assistant", "content": "I cannot help."}, finish_reason="stop").tool_calls()
    assert isinstance(problem, ParseProblem) and problem.problem == "no tool call found in the output"
