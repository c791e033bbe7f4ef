"""A call whose JSON arguments hold ``</tool_call>`` (a note or a file about tool calls), as the trainer renders calls for
a template that shows them as text (``<tool_call>{json}</tool_call>``, SmolLM2's), reads back as that call: the parser
reads the JSON after ``<tool_call>`` with the JSON decoder instead of cutting at the first closing tag."""

from __future__ import annotations

from typing import Any

import pytest

from ee_middleware.models.chat_template import tool_call_text
from ee_middleware.models.parsing import ParseProblem, parse_tool_calls
from ee_middleware.records import ToolCall

NOTE = {"path": "notes.md", "content": "Wrap calls as <tool_call>{...}</tool_call> in the doc.\n</tool_call>"}
LS = {"folder": "docs"}


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}


def _calls(parsed: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    assert all(isinstance(p, ToolCall) for p in parsed), parsed
    return [(p.name, p.arguments) for p in parsed]


WRITE = tool_call_text(_call("write_file", NOTE))
LIST = tool_call_text(_call("ls", LS))


@pytest.mark.parametrize("whole", [False, True], ids=["lenient", "whole"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (WRITE, [("write_file", NOTE)]),
        (WRITE + "\n" + LIST, [("write_file", NOTE), ("ls", LS)]),
        (LIST + WRITE, [("ls", LS), ("write_file", NOTE)]),
        (WRITE + "<|im_end|>", [("write_file", NOTE)]),
        ("<tool_call>\n" + WRITE[len("<tool_call>") : -len("</tool_call>")] + "\n</tool_call>", [("write_file", NOTE)]),
        (WRITE[: -len("</tool_call>")], [("write_file", NOTE)]),  # generation stopped before the closing tag
    ],
)
def test_a_rendered_call_holding_the_closing_tag_reads_back(text: str, expected: list[Any], whole: bool) -> None:
    """Was: the block was cut at the '</tool_call>' inside the argument: 'invalid JSON (Unterminated string ...)'."""
    assert _calls(parse_tool_calls(text, whole=whole)) == expected


def test_prose_after_such_a_call_is_still_prose() -> None:
    text = WRITE + "\nThat writes the note."
    assert _calls(parse_tool_calls(text)) == [("write_file", NOTE)]
    [problem] = parse_tool_calls(text, whole=True)
    assert isinstance(problem, ParseProblem) and "besides its tool calls" in problem.problem


def test_broken_calls_are_reported_as_before() -> None:
    # a block that is no JSON runs to the first closing tag, as before; the next block is still read
    parsed = parse_tool_calls('<tool_call>{"name": "cd", "arguments": {"folder": </tool_call>\n' + LIST)
    assert isinstance(parsed[0], ParseProblem) and "invalid JSON" in parsed[0].problem
    assert _calls(parsed[1:]) == [("ls", LS)]
    # an unterminated string in a call: the first closing tag ends it, and what follows is not swallowed
    parsed = parse_tool_calls('<tool_call>{"name": "cd", "arguments": {"folder": "a}</tool_call>\n' + LIST)
    assert isinstance(parsed[0], ParseProblem) and _calls(parsed[1:]) == [("ls", LS)]
    [problem] = parse_tool_calls("<tool_call>not json at all</tool_call>")
    assert isinstance(problem, ParseProblem)
