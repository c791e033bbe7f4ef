"""Parsing model output into tool calls: every accepted shape, and garbage that never raises."""

from __future__ import annotations

import builtins
import json
import random

import pytest

from ee_middleware.models.parsing import ParseProblem, call_id, from_openai_message, parse_tool_calls
from ee_middleware.records import ToolCall


def calls_of(text: str, **kwargs: object) -> list[tuple[str, dict]]:
    results = parse_tool_calls(text, **kwargs)  # type: ignore[arg-type]
    assert all(isinstance(r, ToolCall) for r in results), results
    return [(r.name, r.arguments) for r in results if isinstance(r, ToolCall)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "cd", "arguments": {"folder": "temp"}}', [("cd", {"folder": "temp"})]),
        ('{"name": "cd", "parameters": {"folder": "temp"}}', [("cd", {"folder": "temp"})]),
        ('{"name": "cd", "arguments": "{\\"folder\\": \\"temp\\"}"}', [("cd", {"folder": "temp"})]),
        ('{"name": "pwd"}', [("pwd", {})]),
        ('[{"name": "cd", "arguments": {"folder": "a"}}, {"name": "ls", "arguments": {}}]', [("cd", {"folder": "a"}), ("ls", {})]),
        ('{"type": "function", "function": {"name": "cd", "arguments": "{\\"folder\\": \\"b\\"}"}}', [("cd", {"folder": "b"})]),
        ("<tool_call>\n" + '{"name": "cd", "arguments": {"folder": "a"}}' + "\n</tool_call>", [("cd", {"folder": "a"})]),
        (
            '<tool_call>{"name": "cd", "arguments": {"folder": "a"}}</tool_call>\n<tool_call>{"name": "ls", "arguments": {"a": true}}</tool_call>',
            [("cd", {"folder": "a"}), ("ls", {"a": True})],
        ),
        ('<tool_call>\n{"name": "ls", "arguments": {}}', [("ls", {})]),  # generation stopped before the closing tag
        ("mv(source='a.txt', destination='temp')", [("mv", {"source": "a.txt", "destination": "temp"})]),
        ("[cd(folder='temp'), ls(a=True), pwd()]", [("cd", {"folder": "temp"}), ("ls", {"a": True}), ("pwd", {})]),
        ("ls(a=true, limit=null)", [("ls", {"a": True, "limit": None})]),
        ("tag(items=('a', 'b'), weights={'x': -1.5})", [("tag", {"items": ["a", "b"], "weights": {"x": -1.5}})]),
        ("math.sqrt(x=4)", [("math.sqrt", {"x": 4})]),
        (
            'Sure, here it is:\n```json\n{"name": "cat", "arguments": {"file_name": "notes.txt"}}\n```\nDone.',
            [("cat", {"file_name": "notes.txt"})],
        ),
        (
            'I will call {"name": "cat", "arguments": {"file_name": "notes.txt"}} now, then {"name": "pwd"}.',
            [("cat", {"file_name": "notes.txt"}), ("pwd", {})],
        ),
        ("Let me look first.\nls(a=True)\nThen decide.", [("ls", {"a": True})]),
        ("[{'name': 'cd', 'arguments': {'folder': 'temp'}}]", [("cd", {"folder": "temp"})]),
        ('{"tool_calls": [{"id": "q", "type": "function", "function": {"name": "pwd", "arguments": ""}}]}', [("pwd", {})]),
    ],
)
def test_accepted_formats(text: str, expected: list[tuple[str, dict]]) -> None:
    assert calls_of(text) == expected


def test_positional_arguments_need_a_parameter_order() -> None:
    [problem] = parse_tool_calls("mv('a.txt', 'temp')")
    assert isinstance(problem, ParseProblem) and "positional" in problem.problem
    assert calls_of("mv('a.txt', 'temp')", param_order={"mv": ["source", "destination"]}) == [
        ("mv", {"source": "a.txt", "destination": "temp"})
    ]
    [too_many] = parse_tool_calls("mv('a', 'b', 'c')", param_order={"mv": ["source", "destination"]})
    assert isinstance(too_many, ParseProblem) and "3 positional arguments" in too_many.problem


def test_ids_are_kept_or_generated_deterministically() -> None:
    [kept] = from_openai_message({"tool_calls": [{"id": "call_7", "type": "function", "function": {"name": "pwd", "arguments": "{}"}}]})
    assert isinstance(kept, ToolCall) and kept.id == "call_7"
    first = parse_tool_calls('[{"name": "cd", "arguments": {"folder": "a"}}, {"name": "cd", "arguments": {"folder": "a"}}]')
    again = parse_tool_calls('[{"name": "cd", "arguments": {"folder": "a"}}, {"name": "cd", "arguments": {"folder": "a"}}]')
    assert [c.id for c in first] == [c.id for c in again]  # type: ignore[union-attr]
    assert first[0].id.startswith("alt-") and first[0].id != first[1].id  # type: ignore[union-attr]
    assert call_id("cd", {"folder": "a"}) == call_id("cd", {"folder": "a"}) != call_id("cd", {"folder": "b"})


def test_openai_message_with_several_calls_and_bad_argument_json() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "cd", "arguments": '{"folder": "temp"}'}},
            {"id": "c2", "type": "function", "function": {"name": "cat", "arguments": '{"file_name": '}},
            {"id": "c3", "type": "function", "function": {"name": "ls", "arguments": {"a": True}}},
            {"id": "c4", "type": "function", "function": {"name": "mv", "arguments": '["a", "b"]'}},
        ],
    }
    good, bad_json, dict_args, list_args = from_openai_message(message)
    assert isinstance(good, ToolCall) and (good.id, good.name, good.arguments) == ("c1", "cd", {"folder": "temp"})
    assert isinstance(bad_json, ParseProblem) and bad_json.problem.startswith("cat: arguments are not valid JSON")
    assert isinstance(dict_args, ToolCall) and dict_args.arguments == {"a": True}
    assert isinstance(list_args, ParseProblem) and "must be a JSON object" in list_args.problem


def test_openai_message_without_tool_calls_parses_its_content() -> None:
    assert [(c.name, c.arguments) for c in from_openai_message({"role": "assistant", "content": "pwd()"})] == [("pwd", {})]  # type: ignore[union-attr]
    parts = {"role": "assistant", "content": [{"type": "text", "text": '{"name": "pwd"}'}]}
    assert [c.name for c in from_openai_message(parts)] == ["pwd"]  # type: ignore[union-attr]
    for message in (None, "text", {"role": "assistant", "content": ""}, {"tool_calls": "nope"}, {"tool_calls": [5]}):
        results = from_openai_message(message)
        assert results and all(isinstance(r, ParseProblem) for r in results), message


GARBAGE = [
    "",
    "   \n ",
    "I don't know which tool to use.",
    "rm -rf / --no-preserve-root",
    "sudo shutdown -h now; echo done",
    '{"name": "cd", "arguments": {"folder": "te',
    '{"arguments": {"folder": "a"}}',
    '{"name": 42, "arguments": {}}',
    '{"name": "cd", "arguments": [1, 2]}',
    "[]",
    "[1, 2, 3]",
    '"just a string"',
    "__import__('os').system('rm -rf /')",
    "cd(folder=__import__('os').getcwd())",
    "cd(**{'folder': 'x'})",
    "cd(folder=open('/etc/passwd').read())",
    "cd(folder=lambda: 1)",
    "cd(folder=1j)",
    "cd(folder=b'bytes')",
    "cd(folder=1e999)",
    '{"name": "cd", "arguments": {"folder": NaN}}',
    '{"name": "cd", "arguments": "{\\"folder\\": Infinity}"}',
    "(lambda: __import__('os'))()",
    "exec('print(1)')",
    "cd(folder='unterminated)",
    "<tool_call>not json at all</tool_call>",
    "<tool_call></tool_call>",
    "```json\n{broken\n```",
    "[" * 50_000,
    '{"a":' * 10_000,
    "x" * 100_000,
    "f(" * 5_000,
]


@pytest.mark.parametrize("text", GARBAGE, ids=[repr(g[:25]) for g in GARBAGE])
def test_garbage_gives_problems_and_never_raises(text: str) -> None:
    results = parse_tool_calls(text)
    assert results, "a problem is always reported"
    assert all(isinstance(r, ParseProblem) and r.problem for r in results), results


def test_random_bytes_never_raise() -> None:
    rng = random.Random(1)
    for _ in range(300):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        for text in (blob, blob.decode("latin-1"), "{" + blob.decode("latin-1"), "f(" + blob.decode("latin-1")):
            results = parse_tool_calls(text)
            assert results and all(isinstance(r, ToolCall | ParseProblem) for r in results)


def test_python_calls_are_never_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[str] = []
    monkeypatch.setattr(builtins, "__import__", _recording_import(touched))
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: touched.append("eval"))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: touched.append("exec"))
    parse_tool_calls("__import__('os').system('touch /tmp/pwned')")
    parse_tool_calls("cd(folder=__import__('os').system('touch /tmp/pwned'))")
    parse_tool_calls("[exec(code='1'), eval(expr='2')]")
    assert "os" not in touched and "eval" not in touched and "exec" not in touched


def _recording_import(touched: list[str]) -> object:
    real = builtins.__import__

    def fake(name: str, *args: object, **kwargs: object) -> object:
        touched.append(name)
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    return fake


def test_a_named_call_to_a_dangerous_builtin_is_only_data() -> None:
    """`exec(code='...')` parses as a call NAMED exec; the schema check, not the parser, rejects it."""
    [parsed] = parse_tool_calls("exec(code='import os')")
    assert isinstance(parsed, ToolCall) and parsed.name == "exec" and parsed.arguments == {"code": "import os"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a call considered while thinking, then a plain answer (Qwen3 / QwQ): no call was made
        ('<think>Maybe {"name": "search", "arguments": {"q": "x"}}? No, I know it.</think>\nThe answer is 4.', []),
        # DeepSeek-R1: the chat template opened <think>, so the answer holds only the closing tag
        ('Maybe {"name": "search", "arguments": {"q": "x"}}? No.\n</think>\n\nThe answer is 4.', []),
        ("<think>\nls(a=True) would list it\n</think>\n\nThe folder is empty.", []),
        # the call made after thinking is the only one, also when the thinking mentions the call format
        (
            '<think>I should use <tool_call>{"name": "bad", "arguments": {}}</tool_call></think>\n'
            '<tool_call>{"name": "good", "arguments": {"a": 1}}</tool_call>',
            [("good", {"a": 1})],
        ),
        ('<thinking>cd(folder="x")?</thinking>\n[ls(a=True)]', [("ls", {"a": True})]),
    ],
)
def test_calls_inside_reasoning_are_not_calls(text: str, expected: list[tuple[str, dict]]) -> None:
    results = parse_tool_calls(text)
    assert [(r.name, r.arguments) for r in results if isinstance(r, ToolCall)] == expected
    assert expected or all(isinstance(r, ParseProblem) for r in results)


def test_an_answer_cut_off_while_reasoning_says_so() -> None:
    [problem] = parse_tool_calls('<think>Let me try {"name": "search", "arguments": {}} and')
    assert isinstance(problem, ParseProblem) and "ends inside a <think> block" in problem.problem and "max_tokens" in problem.problem
    [only] = parse_tool_calls("<think>All done.</think>\n")
    assert isinstance(only, ParseProblem) and "only reasoning" in only.problem


FAMILY_MARKERS = [
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', [("get_weather", {"city": "Paris"})]),
    (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get-time.v2[ARGS]{}</s>',
        [("get_weather", {"city": "Paris"}), ("get-time.v2", {})],
    ),
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', [("get_weather", {"city": "Paris"})]),
    ('<|python_tag|>brave_search.call(query="weather Paris")', [("brave_search.call", {"query": "weather Paris"})]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})]),
    # gpt-oss (harmony), with its special tokens and with them skipped when decoding
    (
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>',
        [("get_weather", {"city": "Paris"})],
    ),
    (
        'analysisThe user wants the weather.commentary to=functions.get_weather json{"city":"Paris"}',
        [("get_weather", {"city": "Paris"})],
    ),
    # DeepSeek V3 / R1, then V3.1
    (
        "<\uff5ctool\u2581calls\u2581begin\uff5c><\uff5ctool\u2581call\u2581begin\uff5c>function<\uff5ctool\u2581sep\uff5c>get_weather\n"
        '```json\n{"city": "Paris"}\n```<\uff5ctool\u2581call\u2581end\uff5c><\uff5ctool\u2581calls\u2581end\uff5c>',
        [("get_weather", {"city": "Paris"})],
    ),
    (
        '<\uff5ctool\u2581call\u2581begin\uff5c>get_weather<\uff5ctool\u2581sep\uff5c>{"city": "Paris"}<\uff5ctool\u2581call\u2581end\uff5c>'
        "<\uff5ctool\u2581call\u2581begin\uff5c>get_time<\uff5ctool\u2581sep\uff5c>{}<\uff5ctool\u2581call\u2581end\uff5c>",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    # Qwen3-Coder: parameters as text, read as JSON where they are JSON
    (
        "<tool_call>\n<function=search>\n<parameter=query>\nbest pizza\n</parameter>\n<parameter=limit>\n5\n</parameter>\n"
        '<parameter=filters>\n{"open": true}\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=noop>\n</function>\n</tool_call>',
        [("search", {"query": "best pizza", "limit": 5, "filters": {"open": True}}), ("noop", {})],
    ),
]


@pytest.mark.parametrize(("text", "expected"), FAMILY_MARKERS)
def test_model_family_call_markers(text: str, expected: list[tuple[str, dict]]) -> None:
    """Mistral (tokenizer v11: name[ARGS]{...}; older: a JSON list), Llama 3.1 (<|python_tag|>), gpt-oss, DeepSeek, Qwen3-Coder."""
    assert calls_of(text) == expected


def test_a_mistral_call_with_broken_arguments_is_a_problem_naming_the_tool() -> None:
    [problem] = parse_tool_calls('[TOOL_CALLS]get_weather[ARGS]{"city": "Par')
    assert isinstance(problem, ParseProblem) and problem.problem.startswith("get_weather: arguments are not valid JSON")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('"{\\"city\\": \\"Paris\\"}"', {"city": "Paris"}),  # a server json.dumps-ed the string the model wrote
        ("null", {}),  # a tool without parameters, serialised from None
        ('"null"', {}),
    ],
)
def test_openai_arguments_encoded_twice_or_null(arguments: str, expected: dict) -> None:
    message = {"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}
    [call] = from_openai_message(message)
    assert isinstance(call, ToolCall) and call.arguments == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"reasoning_content": "The user wants the weather, so"},  # vLLM before 0.11, DeepSeek
        {"reasoning": "The user wants the weather, so"},  # vLLM 0.11 on, Ollama's /v1, OpenRouter
        {"thinking": "The user wants the weather, so"},  # Ollama's /api/chat, gpt-oss's template
        {"reasoning_details": [{"type": "reasoning.text", "text": "The user wants the weather, so"}]},  # OpenRouter
    ],
)
def test_a_message_with_only_reasoning_says_so(fields: dict) -> None:
    """A model cut off while reasoning answers with its reasoning only: said so, whichever field the server put it in
    (before, only reasoning_content and reasoning were read: a thinking field was 'neither tool_calls nor content')."""
    [problem] = from_openai_message({"role": "assistant", "content": None, **fields})
    assert isinstance(problem, ParseProblem) and "only reasoning" in problem.problem


def test_every_call_embedded_in_prose_is_read_however_many() -> None:
    text = " and then ".join(f'{{"name": "step_{i}", "arguments": {{"i": {i}}}}}' for i in range(100))
    assert calls_of(f"Plan: {text}.") == [(f"step_{i}", {"i": i}) for i in range(100)]


WHOLLY_CALLS = [
    ('{"name": "cd", "arguments": {"folder": "temp"}}', [("cd", {"folder": "temp"})]),
    ('  [{"name": "cd", "arguments": {"folder": "a"}}, {"name": "ls", "arguments": {}}]\n', [("cd", {"folder": "a"}), ("ls", {})]),
    ("<tool_call>\n" + '{"name": "cd", "arguments": {"folder": "a"}}' + "\n</tool_call>", [("cd", {"folder": "a"})]),
    (
        '<tool_call>{"name": "cd", "arguments": {"folder": "a"}}</tool_call>\n<tool_call>{"name": "ls", "arguments": {"a": true}}</tool_call><|im_end|>',
        [("cd", {"folder": "a"}), ("ls", {"a": True})],
    ),
    ('<tool_call>\n{"name": "ls", "arguments": {}}', [("ls", {})]),  # generation stopped before the closing tag
    ('<think>Which tool?</think>\n<tool_call>{"name": "pwd"}</tool_call>', [("pwd", {})]),
    ("[cd(folder='temp'), ls(a=True), pwd()]", [("cd", {"folder": "temp"}), ("ls", {"a": True}), ("pwd", {})]),
    ("mv(source='a.txt', destination='temp')", [("mv", {"source": "a.txt", "destination": "temp"})]),
    *FAMILY_MARKERS,
]


@pytest.mark.parametrize(("text", "expected"), WHOLLY_CALLS)
def test_an_answer_that_is_wholly_calls_is_read_whole(text: str, expected: list[tuple[str, dict]]) -> None:
    """``whole`` (BFCL's suites) reads every shape a chat template or model family writes as the whole answer."""
    assert calls_of(text, whole=True) == expected == calls_of(text)


@pytest.mark.parametrize(
    "text",
    [
        'Sure, here it is:\n```json\n{"name": "cat", "arguments": {"file_name": "notes.txt"}}\n```\nDone.',
        'I will call {"name": "cat", "arguments": {"file_name": "notes.txt"}} now, then {"name": "pwd"}.',
        "Let me look first.\nls(a=True)\nThen decide.",
        'Calling <tool_call>{"name": "pwd"}</tool_call> now.',
        '<tool_call>{"name": "pwd"}</tool_call> The folder is /tmp.',
        'The weather: [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"} and then I will tell you.',
        "Here: <function=search><parameter=query>pizza</parameter></function> done",
    ],
)
def test_a_call_quoted_in_prose_is_no_call_when_the_answer_must_be_wholly_calls(text: str) -> None:
    """The lenient reading finds the call (other callers keep it); ``whole`` reads none and says why."""
    assert any(isinstance(r, ToolCall) for r in parse_tool_calls(text))
    results = parse_tool_calls(text, whole=True)
    assert results and all(isinstance(r, ParseProblem) for r in results), results
    assert from_openai_message({"role": "assistant", "content": text}, bfcl=True) == results


@pytest.mark.parametrize(("text", "expected"), WHOLLY_CALLS)
def test_an_answer_that_is_wholly_calls_is_read_anywhere_too(text: str, expected: list[tuple[str, dict]]) -> None:
    """``anywhere`` (a text-only model's answer in BFCL's suites) reads whatever ``whole`` reads."""
    assert calls_of(text, anywhere=True) == expected


CD = '{"name": "cd", "arguments": {"folder": "docs"}}'
CAT = '{"name": "cat", "arguments": {"file_name": "a.txt"}}'
BLOCKS_IN_PROSE = [
    (f"I will change to the docs folder first.\n<tool_call>\n{CD}\n</tool_call>", [("cd", {"folder": "docs"})]),
    (
        f"<tool_call>\n{CD}\n</tool_call>\nNow I will read the file.\n<tool_call>\n{CAT}\n</tool_call>",
        [("cd", {"folder": "docs"}), ("cat", {"file_name": "a.txt"})],
    ),
    (f"<tool_call>\n{CD}\n</tool_call>\nThat moves us to docs.", [("cd", {"folder": "docs"})]),
    (f"<think>Which folder?</think>Sure.\n<tool_call>\n{CD}\n</tool_call>", [("cd", {"folder": "docs"})]),
    # a block that is not JSON is skipped (bfcl-eval's Qwen FC handler does so), the others are read
    (
        f'Here:\n<tool_call>\n{{"name": "cd", "arguments": {{"folder": \n</tool_call>\n<tool_call>\n{CAT}\n</tool_call>',
        [("cat", {"file_name": "a.txt"})],
    ),
    (f"Reading it.\n<|tool_call|>[{CAT}]<|/tool_call|>", [("cat", {"file_name": "a.txt"})]),  # Phi FC
    (f"Reading it.\n<|tool_call|>{CD}, {CAT}", [("cd", {"folder": "docs"}), ("cat", {"file_name": "a.txt"})]),  # no list, no closing tag
    (
        "Let me search.\n<tool_call>\n<function=search>\n<parameter=query>\npizza\n</parameter>\n</function>\n</tool_call>",
        [("search", {"query": "pizza"})],
    ),
    ('The weather: [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', [("get_weather", {"city": "Paris"})]),
    ('I will look. to=functions.get_weather json{"city":"Paris"}', [("get_weather", {"city": "Paris"})]),
]


@pytest.mark.parametrize(("text", "expected"), BLOCKS_IN_PROSE)
def test_a_text_only_model_s_call_blocks_are_read_wherever_they_stand(text: str, expected: list[tuple[str, dict]]) -> None:
    """``anywhere``: a model family's call blocks are read however much prose surrounds them, as bfcl-eval's handlers for
    local models (Qwen FC, Phi FC) read a text answer; before, a sentence besides the blocks left the answer with no call.
    ``whole`` (a served model's content) still reads none of them, and the default reading is unchanged."""
    assert calls_of(text, anywhere=True) == expected
    assert all(isinstance(r, ParseProblem) for r in parse_tool_calls(text, whole=True))
    assert any(isinstance(r, ToolCall) for r in parse_tool_calls(text))


@pytest.mark.parametrize(
    "text",
    [
        'Sure, here it is:\n```json\n{"name": "cat", "arguments": {"file_name": "notes.txt"}}\n```\nDone.',
        'I will call {"name": "cat", "arguments": {"file_name": "notes.txt"}} now, then {"name": "pwd"}.',
        "Let me look first.\nls(a=True)\nThen decide.",
        'Calling <tool_call>{"name": "pwd"}</tool_call> now.',  # no newlines inside the tags: Qwen FC's handler reads none
        f"As the docs say, calls look like <tool_call>\n{CD}",  # a block never closed, after prose
        '<|python_tag|>{"name": "pwd", "parameters": {}} and then I will tell you.',
        'The list: [TOOL_CALLS][{"name": "pwd", "arguments": {}}]',
    ],
)
def test_a_call_quoted_in_prose_is_still_no_call_for_a_text_only_model(text: str) -> None:
    """Bare JSON, Python calls and fences quoted in prose are no call however the answer is read in BFCL's suites, nor
    are the blocks whose handlers (Llama, Mistral) decode the whole answer."""
    results = parse_tool_calls(text, anywhere=True)
    assert results and all(isinstance(r, ParseProblem) for r in results), results


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "cd", "parameters": {"folder": "docs"}}\n</tool_call>',  # not 'arguments'
        '<tool_call>\n{"name": "pwd"}\n</tool_call>',
        '<tool_call>\n{"name": "cd", "arguments": "{\\"folder\\": \\"docs\\"}"}\n</tool_call>',
        f"<tool_call>\n[{CD}]\n</tool_call>",
        f"<tool_call>\n{CD}\n</tool_call>\n<tool_call>\n[1]\n</tool_call>",  # one block of the wrong shape fails them all
        "<tool_call>\nnot json\n</tool_call>",
        '<|tool_call|>[{"name": "cd", "arguments": {}, "id": "1"}]<|/tool_call|>',  # Phi FC: exactly name and arguments
        "Sure. <|tool_call|>[not json]<|/tool_call|>",
    ],
)
def test_a_text_only_model_s_block_of_another_shape_leaves_the_answer_without_a_call(text: str) -> None:
    """As bfcl-eval's Qwen FC and Phi FC handlers decode them: a block must be ``{"name": ..., "arguments": {...}}``."""
    results = parse_tool_calls(text, anywhere=True)
    assert results and all(isinstance(r, ParseProblem) for r in results), results


def test_a_text_only_model_s_arguments_as_json_text_are_read_only_where_the_calls_are_executed() -> None:
    """bfcl-eval's Qwen FC handler: ``decode_execute`` (multi-turn, the calls are run) loads arguments written as the JSON
    text of an object; ``decode_ast`` (categories scored on the calls alone) refuses them."""
    text = 'Going there.\n<tool_call>\n{"name": "cd", "arguments": "{\\"folder\\": \\"docs\\"}"}\n</tool_call>'
    assert calls_of(text, anywhere=True, executed=True) == [("cd", {"folder": "docs"})]
    [problem] = parse_tool_calls(text, anywhere=True)
    assert isinstance(problem, ParseProblem) and "arguments must be a JSON object" in problem.problem
    bad = text.replace('\\"docs\\"}', '\\"docs\\"')
    assert all(isinstance(r, ParseProblem) for r in parse_tool_calls(bad, anywhere=True, executed=True))


@pytest.mark.parametrize("arguments", ["", "null", '"{\\"a\\": 1}"', '{"a": NaN}', "[1]", '{"a": 1}', '{"a": ', "  "])
def test_bfcl_decoding_reads_a_structured_call_as_json_loads_reads_its_arguments(arguments: str) -> None:
    """bfcl-eval's function-calling handler decodes ``json.loads(arguments)``: a call exactly where that is a JSON object
    (NaN included), with the name as sent. The default reading stays lenient ('' and null are no arguments; a text encoded
    twice is decoded twice; NaN is refused)."""
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": " f ", "arguments": arguments}}],
    }
    [read] = from_openai_message(message, bfcl=True)
    try:
        expected = json.loads(arguments)
    except ValueError:
        expected = None
    if isinstance(expected, dict):
        assert isinstance(read, ToolCall) and (read.id, read.name) == ("c1", " f ") and json.dumps(read.arguments) == json.dumps(expected)
    else:
        assert isinstance(read, ParseProblem) and read.problem.startswith(" f : arguments"), read
    [lenient] = from_openai_message(message)
    if arguments in ("", "null", "  ", '"{\\"a\\": 1}"'):
        assert isinstance(lenient, ToolCall) and lenient.name == "f"


def test_bfcl_decoding_reads_no_legacy_function_call() -> None:
    message = {"role": "assistant", "content": "", "function_call": {"name": "pwd", "arguments": "{}"}}
    assert [c.name for c in from_openai_message(message)] == ["pwd"]  # type: ignore[union-attr]
    assert all(isinstance(r, ParseProblem) for r in from_openai_message(message, bfcl=True))


# Llama 3.1/3.3's custom-tool format, as Meta's prompt asks for it (llama-models, llama3_1 system_message.jinja:
# '<function=example_function_name>{"example_name": "example_value"}</function>', one call on one line).
LLAMA_FUNCTION_TAGS = [
    (
        '<function=search_orders>{"customer": "C-17", "status": "open"}</function>',
        [("search_orders", {"customer": "C-17", "status": "open"})],
    ),
    ("<function=get_time>{}</function>", [("get_time", {})]),
    (
        '<function=search_orders>{"customer": "C-17", "limit": 5}<|eom_id|>',
        [("search_orders", {"customer": "C-17", "limit": 5})],
    ),  # cut tag
    ("<function=search_orders>{'customer': 'C-17'}</function>", [("search_orders", {"customer": "C-17"})]),  # single quotes
    # single quotes, cut tag: was a problem ("neither a JSON object ..."), where the JSON form above is read
    ("<function=search_orders>{'customer': 'C-17', 'limit': 5}<|eom_id|>", [("search_orders", {"customer": "C-17", "limit": 5})]),
    ("<function=note>{'text': 'ends with <|eom_id|>'}\n<|eom_id|>", [("note", {"text": "ends with <|eom_id|>"})]),
    ('<function=a>{"x": 1}</function><function=b>{"y": [2]}</function>', [("a", {"x": 1}), ("b", {"y": [2]})]),
]


@pytest.mark.parametrize(("text", "expected"), LLAMA_FUNCTION_TAGS)
@pytest.mark.parametrize("mode", [{}, {"whole": True}, {"anywhere": True}])
def test_llama_function_tag_calls_keep_their_json_arguments(text: str, expected: list[tuple[str, dict]], mode: dict) -> None:
    """Was: the Qwen3-Coder reader matched ``<function=NAME>`` and looked only for ``<parameter=...>`` tags, so
    ``<function=search_orders>{"customer": "C-17", ...}</function>`` was read as ``search_orders({})`` in every mode."""
    assert calls_of(text, **mode) == expected
    assert calls_of(f"<|python_tag|>{text}<|eot_id|>", **mode) == expected, "framed by special tokens"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<function=search_orders>customer C-17</function>", "neither a JSON object of arguments nor <parameter=...> tags"),
        ('<function=search_orders>{"customer": "C-1', "neither a JSON object of arguments nor <parameter=...> tags"),  # cut off
        ('<function=search_orders>["C-17"]</function>', "arguments must be a JSON object, got list"),
        ('<function=search_orders>{"customer": "C-17"} and more</function>', "holds text after its JSON arguments"),
    ],
)
@pytest.mark.parametrize("mode", [{}, {"whole": True}, {"anywhere": True}])
def test_a_function_tag_body_that_is_not_arguments_is_a_problem_never_an_empty_call(text: str, problem: str, mode: dict) -> None:
    [result] = parse_tool_calls(text, **mode)  # type: ignore[arg-type]
    assert isinstance(result, ParseProblem), result
    assert result.problem.startswith("search_orders: ") and problem in result.problem


def test_qwen3_coder_function_tags_read_as_before_beside_a_llama_one() -> None:
    """Qwen3-Coder's ``<parameter=...>`` bodies and an empty body (no parameters) keep their reading."""
    text = (
        "<tool_call>\n<function=search>\n<parameter=query>\npizza\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=noop>\n</function>\n</tool_call>\n"
        '<function=get_weather>{"city": "Paris"}</function>'
    )
    expected = [("search", {"query": "pizza"}), ("noop", {}), ("get_weather", {"city": "Paris"})]
    assert calls_of(text) == expected and calls_of(text, whole=True) == expected and calls_of(text, anywhere=True) == expected


def test_a_llama_function_tag_answer_from_a_server_is_read_with_its_arguments() -> None:
    """The client's path: a server without a tool parser returns the call as the message's content."""
    from ee_middleware.models import Choice

    content = '<function=search_orders>{"customer": "C-17", "status": "open"}</function>'
    for choice in (Choice.from_message({"role": "assistant", "content": content}), Choice.from_text(content)):
        [call] = choice.tool_calls()
        assert isinstance(call, ToolCall) and (call.name, call.arguments) == ("search_orders", {"customer": "C-17", "status": "open"})
    [bfcl] = from_openai_message({"role": "assistant", "content": content}, bfcl=True)
    assert isinstance(bfcl, ToolCall) and bfcl.arguments == {"customer": "C-17", "status": "open"}


LLAMA_AND_FENCED = [
    # Llama 3.1's parallel calls, split at ';' as bfcl-eval's Llama 3.1 handler splits them (a ';' inside a string kept:
    # more lenient than that handler, which splits at every one; text calls are counted apart, text_calls)
    (
        '<|python_tag|>{"name": "a", "parameters": {"x": "1;2"}}; {"name": "b", "parameters": {}}',
        [("a", {"x": "1;2"}), ("b", {})],
    ),
    ('<|python_tag|>{"name": "a", "parameters": {"x": 1}}<|eot_id|>', [("a", {"x": 1})]),  # the end-of-turn token kept
    ('```json\n{"name": "a", "arguments": {"x": 1}}\n```', [("a", {"x": 1})]),  # one fenced block, the whole answer
    ('```\n[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]\n```', [("a", {}), ("b", {})]),
]


@pytest.mark.parametrize(("text", "expected"), LLAMA_AND_FENCED)
@pytest.mark.parametrize("mode", [{"whole": True}, {"anywhere": True}, {}])
def test_llama_parallel_calls_and_a_fenced_answer_are_read_in_every_mode(text: str, expected: list[tuple[str, dict]], mode: dict) -> None:
    """Was (a sweep): BFCL's suites (whole, anywhere) scored these 0: 'invalid JSON (Extra data ...)' and 'not JSON and
    not a Python call', where the tau suites (the default mode) read them."""
    assert calls_of(text, **mode) == expected


@pytest.mark.parametrize(
    "text",
    [
        '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; and then I will tell you',  # prose after a ';'
        'Sure: ```json\n{"name": "a", "arguments": {"x": 1}}\n```',  # prose before the fence
    ],
)
def test_prose_around_calls_is_still_no_whole_answer(text: str) -> None:
    [problem] = parse_tool_calls(text, whole=True)
    assert isinstance(problem, ParseProblem), problem
