"""A record the model wrote in its answer (a file's name and size, a person's name and email) is not a tool call: a call
in text has a call's shape, a ``name`` with ``arguments``/``parameters``, or a ``name`` alone (or with a call's own keys:
an id, an index, a thought) for a tool without arguments. Inside call markup, a ``tool_calls`` list or a server's
structured call, an object with a name is a call, as the model or server said."""

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


def test_a_name_alone_is_a_call_whether_or_not_the_tools_are_known() -> None:
    """``{"name": "x"}`` is a call to a tool without arguments; told the offered tools (``param_order``), the parser still
    reads it as one, so a policy that calls a tool it was not offered is counted as calling an unknown tool (the caller
    checks the name), not as an unreadable answer pointing at the server's parser."""
    for text in ('{"name": "date"}', '{"name": "PWD"}', '{"name": "functions.pwd"}'):
        [call] = parse_tool_calls(text, param_order=OFFERED)
        assert isinstance(call, ToolCall) and call.name == text.split('"')[3], call
    prose = 'The files are {"name": "report.pdf", "size": 3} and more; I will call {"name": "pwd"}.'
    assert [r.name for r in parse_tool_calls(prose, param_order=OFFERED) if isinstance(r, ToolCall)] == ["pwd"]


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_time", "thought": "the user wants the time"}\n</tool_call>',
        '[TOOL_CALLS][{"name": "get_time", "reasoning": "the user wants the time"}]',
        '<|python_tag|>{"name": "get_time", "thought": "x"}',
        '{"tool_calls": [{"name": "get_time", "index": 0}]}',
        '<tool_call>{"name": "get_time", "size": 3}</tool_call>',
        '<tool_call>{"name": "date"}</tool_call>',
        '{"name": "get_time", "thought": "need the time"}',
        '{"reasoning": "need the time", "name": "get_time"}',
        '{"name": "get_time", "description": "get the current time"}',
        '{"index": 0, "name": "get_time", "call_id": "c1"}',
        '{"type": "tool_call", "name": "get_time"}',
        'I will check.\n```json\n{"name": "get_time", "reason": "x"}\n```',
    ],
    ids=[
        "hermes-thought",
        "mistral-reasoning",
        "python-tag-thought",
        "tool-calls-index",
        "hermes-any-key",
        "hermes-unoffered",
        "thought",
        "reasoning-first",
        "description",
        "index-and-call-id",
        "type-tool-call",
        "fenced-reason",
    ],
)
def test_a_call_without_arguments_and_with_a_calls_own_keys_is_a_call(text: str) -> None:
    """Each was read as a record: inside call markup or a ``tool_calls`` list the model said it is a call, and an id, an
    index, a thought or a reason beside a name are a call's keys, not a record's fields."""
    name = "date" if "date" in text else "get_time"
    for order in (None, {**OFFERED, "get_time": []}):
        results = parse_tool_calls(text, param_order=order)
        assert [(r.name, r.arguments) for r in results] == [(name, {})], (order, results)


def test_a_servers_structured_call_with_other_keys_is_a_call() -> None:
    """A flat structured ``tool_calls`` item with an ``index`` was read as a record."""
    message = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "name": "get_time", "index": 0}]}
    [call] = from_openai_message(message)
    assert isinstance(call, ToolCall) and (call.id, call.name, call.arguments) == ("c1", "get_time", {})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"name": "ls", "args": {"path": "."}}', "'args'"),
        ('<tool_call>{"name": "ls", "params": {"path": "."}}</tool_call>', "'params'"),
        ('{"name": "ls", "kwargs": {"path": "."}}', "'kwargs'"),
        ('{"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"path": "."}}', "'input'"),
    ],
    ids=["args", "params-in-markup", "kwargs", "anthropic-input"],
)
def test_a_call_with_its_arguments_under_another_key_says_so(text: str, key: str) -> None:
    """Not a call to ``ls`` without its arguments, and not "a record": the problem names the key the arguments are under."""
    for order in (None, OFFERED):
        [problem] = parse_tool_calls(text, param_order=order)
        assert isinstance(problem, ParseProblem), problem
        assert f"has its arguments under {key}" in problem.problem and "record" not in problem.problem


def test_an_offered_tools_arguments_beside_its_name_are_named_as_such() -> None:
    [problem] = parse_tool_calls('{"name": "ls", "path": "."}', param_order=OFFERED)
    assert isinstance(problem, ParseProblem) and "has its arguments ('path') beside its name" in problem.problem


def test_structured_calls_are_not_judged_by_their_shape() -> None:
    message = {"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "pwd"}}]}
    [call] = from_openai_message(message)
    assert isinstance(call, ToolCall) and (call.id, call.name, call.arguments) == ("c1", "pwd", {})


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "pwd", "args": {}}\n</tool_call>',
        '{"name": "pwd", "params": {}}',
        '[TOOL_CALLS][{"name": "pwd", "kwargs": {}}]',
        '{"type": "tool_use", "id": "toolu_1", "name": "pwd", "input": {}}',
        '<|python_tag|>{"name": "pwd", "params": null}',
        '{"name": "pwd", "args": ""}',
        '{"name": "pwd", "args": "{}"}',
        '{"name": "pwd", "args": []}',
    ],
    ids=["markup-args", "params", "mistral-kwargs", "anthropic-input", "python-tag-null", "empty-text", "empty-json-text", "empty-list"],
)
def test_a_call_with_an_empty_misnamed_key_is_a_call_without_arguments(text: str) -> None:
    """Each was read exactly so before 178b4db, which made it a problem ("has its arguments under 'args'")."""
    for order in (None, OFFERED):
        [call] = parse_tool_calls(text, param_order=order)
        assert isinstance(call, ToolCall) and (call.name, call.arguments) == ("pwd", {}), call


@pytest.mark.parametrize(
    "text",
    [
        'Model {"name": "bert-base", "params": "110M"} fits.\n{"name": "ls", "arguments": {"path": "."}}',
        'The regulator is {"name": "LM7805", "input": "12V", "output": "5V"}.\nls(path=".")',
    ],
    ids=["params-field-then-json-call", "input-field-then-python-call"],
)
def test_a_record_whose_field_is_called_params_or_input_does_not_hide_the_call_after_it(text: str) -> None:
    """A plain value under ``params``/``input`` is a record's field (a model's size, a part's rating), not a call's
    arguments: the problem "has its arguments under 'params'" stood in for the record, and stopped the Python call's
    reading."""
    for order in (None, OFFERED):
        assert [(c.name, c.arguments) for c in parse_tool_calls(text, param_order=order)] == [("ls", {"path": "."})]


def test_misplaced_arguments_of_any_value_inside_call_markup_say_so() -> None:
    """Inside call markup the object is a call: a plain value under ``params`` is its arguments, misplaced."""
    [problem] = parse_tool_calls('<tool_call>{"name": "ls", "params": "."}</tool_call>')
    assert isinstance(problem, ParseProblem) and "has its arguments under 'params'" in problem.problem
