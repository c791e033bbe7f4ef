"""A record the model wrote in its answer (a file's name and size, a person's name and email) is not a tool call: a call
in text has a call's shape, a ``name`` with ``arguments``/``parameters``, or a ``name`` alone for a tool without
arguments (one of the offered tools, where the parser is told them)."""

from __future__ import annotations

import pytest

from ee_middleware.models.parsing import ParseProblem, from_openai_message, parse_tool_calls
from ee_middleware.records import ToolCall

OFFERED = {"ls": ["path"], "pwd": []}


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "final_report.pdf", "size": 48213}',
        "{'name': 'final_report.pdf', 'size': 48213}",
        '[{"name": "final_report.pdf", "size": 48213}, {"name": "notes.txt", "size": 112}]',
        '{"name": "final_report.pdf", "size": 48213}\nThat is the newest report.',
        'The newest one is {"name": "final_report.pdf", "size": 48213}, as listed.',
        '{"name": "Alice Smith", "email": "alice@example.com"}',
        '{"type": "file", "name": "report.pdf"}',
    ],
    ids=["json", "python-literal", "list", "then-a-sentence", "in-prose", "person", "typed-record"],
)
def test_a_record_with_a_name_is_not_a_call(text: str) -> None:
    """Each was read as a call to a tool named after the record (``final_report.pdf``), so a curriculum rollout that
    answered with it was dropped as calling an unknown tool instead of as making no call."""
    for order in (None, OFFERED):
        results = parse_tool_calls(text, param_order=order)
        assert results and not any(isinstance(r, ToolCall) for r in results), (order, results)
    [problem] = parse_tool_calls('{"name": "final_report.pdf", "size": 48213}')
    assert isinstance(problem, ParseProblem) and "'size'" in problem.problem and "record, not a tool call" in problem.problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "pwd"}', [("pwd", {})]),  # a tool without arguments
        ('{"name": "pwd", "id": "call_1"}', [("pwd", {})]),
        ('{"type": "function", "function": {"name": "pwd"}}', [("pwd", {})]),
        ('{"name": "ls", "arguments": {"path": "."}, "note": "listing"}', [("ls", {"path": "."})]),
        ('{"name": "ls", "parameters": {"path": "."}}', [("ls", {"path": "."})]),
        ("{'name': 'ls', 'arguments': {'path': '.'}}", [("ls", {"path": "."})]),
        ('I will call {"name": "ls", "arguments": {"path": "."}} then {"name": "pwd"}.', [("ls", {"path": "."}), ("pwd", {})]),
        ('<tool_call>{"name": "pwd"}</tool_call>', [("pwd", {})]),
    ],
)
def test_every_call_form_is_still_read(text: str, expected: list[tuple[str, dict]]) -> None:
    for order in (None, OFFERED):
        results = parse_tool_calls(text, param_order=order)
        assert [(r.name, r.arguments) for r in results if isinstance(r, ToolCall)] == expected, (order, results)


def test_a_name_alone_is_a_call_only_to_an_offered_tool_where_the_tools_are_known() -> None:
    """Without the tools, ``{"name": "x"}`` stays a call (a tool without arguments: the caller checks the name); told the
    offered tools (``param_order``), the parser reads it as a call only when it names one of them."""
    [unknown] = parse_tool_calls('{"name": "report.pdf"}')
    assert isinstance(unknown, ToolCall) and unknown.name == "report.pdf"
    [problem] = parse_tool_calls('{"name": "report.pdf"}', param_order=OFFERED)
    assert isinstance(problem, ParseProblem) and "none of the offered tools" in problem.problem
    [call] = parse_tool_calls('{"name": "pwd"}', param_order=OFFERED)
    assert isinstance(call, ToolCall) and call.name == "pwd"
    prose = 'The files are {"name": "report.pdf"} and more; I will call {"name": "pwd"}.'
    assert [r.name for r in parse_tool_calls(prose, param_order=OFFERED) if isinstance(r, ToolCall)] == ["pwd"]


def test_structured_calls_are_not_judged_by_their_shape() -> None:
    message = {"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "pwd"}}]}
    [call] = from_openai_message(message)
    assert isinstance(call, ToolCall) and (call.id, call.name, call.arguments) == ("c1", "pwd", {})
