"""The chat-client protocol's answer type: its text and tool calls, whatever the backend sent."""

from __future__ import annotations

import pytest

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
    assert isinstance(problem, ParseProblem) and "cut off at max_tokens while still reasoning" in problem.problem
    text = Choice.from_text('<tool_call>{"name": "lookup", "arguments": {}}</tool_call><tool_call>{"name": "lo', finish_reason="length")
    done, broken = text.tool_calls()
    assert isinstance(done, ToolCall) and done.name == "lookup", "the calls before the cut are kept"
    assert isinstance(broken, ParseProblem) and "cut off at max_tokens" in broken.problem


def test_an_answer_that_stopped_keeps_its_own_problem() -> None:
    [problem] = Choice.from_message({"role": "assistant", "content": "I cannot help."}, finish_reason="stop").tool_calls()
    assert isinstance(problem, ParseProblem) and problem.problem == "no tool call found in the output"


THOUGHT = "The refund would be 42.50 if the order were eligible, but it is past 30 days."
SAID = "Sorry, this order is not eligible for a refund."


@pytest.mark.parametrize(
    "content",
    [
        f"<think>\n{THOUGHT}\n</think>\n\n{SAID}",  # Qwen3, QwQ, DeepSeek-R1 served without a reasoning parser
        f"<thinking>{THOUGHT}</thinking>\n{SAID}",
        f"{THOUGHT}\n</think>\n\n{SAID}",  # the chat template opened the block (DeepSeek-R1-0528, Qwen3 thinking-2507)
        [{"type": "text", "text": f"<think>\n{THOUGHT}\n</think>\n\n"}, {"type": "text", "text": SAID}],  # content parts
    ],
)
def test_the_text_of_an_answer_is_what_the_model_said_without_the_reasoning_it_wrote_inline(content: object) -> None:
    """Was: ``Choice.text`` returned the content as written, ``<think>`` block included, so every reader of it (the eval
    loop's replies, the SR teacher's rationale, the curriculum judge's verdict, the experience model's prediction) took
    the model's drafts for its answer. Its reasoning stays readable as ``Choice.reasoning``."""
    for choice in (Choice.from_message({"role": "assistant", "content": content}), Choice.from_text(_joined(content))):
        assert choice.text == SAID
        assert choice.reasoning == THOUGHT


def _joined(content: object) -> str:
    return content if isinstance(content, str) else "".join(part["text"] for part in content)  # type: ignore[attr-defined, index]


def test_an_answer_cut_while_reasoning_has_no_text_and_its_calls_say_why() -> None:
    cut = "<think>\nLet me look at what each call returns. The task asks about the weather, so"
    for choice in (
        Choice.from_message({"role": "assistant", "content": cut}, finish_reason="length"),
        Choice.from_text(cut, finish_reason="length"),
    ):
        assert choice.text == "" and choice.reasoning is not None and choice.reasoning.startswith("Let me look")
        [problem] = choice.tool_calls()
        assert isinstance(problem, ParseProblem) and "cut off at max_tokens" in problem.problem and "still reasoning" in problem.problem


def test_an_answer_cut_while_reasoning_says_so_once_naming_max_tokens_and_no_other_answer_does() -> None:
    """The one message every reader of the text gives for it (was: each reader its own, or none: see
    tests/models/test_cut_while_reasoning_readers.py)."""
    cut = "<think>\nThe user wants the weather. I could call <tool_call>"
    said = "Let me check.\n</think>\nIt is sunny."
    for choice in (
        Choice.from_text(cut, finish_reason="length"),
        Choice.from_message({"role": "assistant", "content": cut}, finish_reason="length"),
        Choice.from_message({"role": "assistant", "content": None, "reasoning_content": "The user wants"}, finish_reason="length"),
    ):
        message = "the answer was cut off at max_tokens while still reasoning: raise max_tokens"
        assert choice.cut_while_reasoning(64) == f"{message} (now 64)" and choice.cut_while_reasoning() == message
        [problem] = choice.tool_calls()
        assert isinstance(problem, ParseProblem) and problem.problem == message, "not the cut prefix plus the parser's own words"
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    for other in (
        Choice.from_text(cut),  # not cut at max_tokens
        Choice.from_text(f"<think>{said}", finish_reason="length"),  # it said something
        Choice.from_text("No reasoning, and cut", finish_reason="length"),
        Choice.from_message({"role": "assistant", "content": "", "reasoning_content": "x", "tool_calls": [call]}, finish_reason="length"),
        Choice.from_message({"role": "assistant", "content": None, "refusal": "I can't."}, finish_reason="length"),
        Choice(None, raw="", problem="no choices", finish_reason="length"),
    ):
        assert other.cut_while_reasoning(64) is None, other


def test_reasoning_the_server_returned_apart_is_the_answer_s_reasoning_and_text_without_reasoning_is_unchanged() -> None:
    parsed = Choice.from_message({"role": "assistant", "content": SAID, "reasoning_content": THOUGHT})
    assert (parsed.text, parsed.reasoning) == (SAID, THOUGHT)
    plain = Choice.from_message({"role": "assistant", "content": "Say </think> to end the block."})
    assert (plain.text, plain.reasoning) == ("Say </think> to end the block.", None), "a tag inside a sentence is text"
    refused = Choice.from_message({"role": "assistant", "content": f"<think>{THOUGHT}</think>\n", "refusal": "I can't help with that."})
    assert refused.text == "I can't help with that." and refused.refusal == "I can't help with that."
    inline_call = Choice.from_text('<think>Which tool?</think>\n<tool_call>{"name": "lookup", "arguments": {"q": "x"}}</tool_call>')
    [call] = inline_call.tool_calls()
    assert isinstance(call, ToolCall) and call.arguments == {"q": "x"}
