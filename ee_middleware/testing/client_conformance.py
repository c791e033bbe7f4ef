"""A conformance kit for model clients: run it against any implementation of the chat-client protocol.

>>> from ee_middleware.testing.client_conformance import check_chat_client     # doctest: +SKIP
>>> check_chat_client(lambda: MyClient("my-model"))                            # doctest: +SKIP

A model client (:class:`~ee_middleware.models.protocol.ChatClient`: a ``package.module:factory`` or an
``ee_middleware.models`` entry point, or the built-in ``openai:`` and ``local:`` clients) is asked by the replay's chat
policy (``n`` answers per decision point, every tool call of every answer a candidate), by teachers (one answer's
text, no tools), by the eval harness (one answer per step, its tool calls executed) and by the experience sandbox (one
answer's text). The kit asks a client built by ``make_client`` as they do, with a small conversation and one simple
tool, and checks what they rely on:

* the protocol: a non-empty ``model`` string (records name the model by it), ``complete(messages, *, tools, n,
  sampling)``, ``describe()`` and ``close()``;
* ``describe()`` returns a dict of JSON-able values (replay records keep it with every proposal), the same each time,
  also after answering;
* ``complete`` called as teachers and the user simulator call it (``complete(messages, sampling=...)``: ``tools`` and
  ``n`` left at their defaults, None and 1), with tools offered, and with ``n`` > 1 sampled, returns a list of
  exactly ``n`` :class:`~ee_middleware.models.protocol.Choice` objects, at least one of them with a message (``n`` > 1
  is asked with temperature 1: a client may answer a greedy request once, as the local generator does);
* each choice is well typed: ``problem`` None or a non-empty string (the backend gave no message), ``raw`` a string,
  ``finish_reason`` and ``model`` None or strings, ``structured`` a bool; its ``message`` a dict whose ``content`` is
  None, a string or a list of content parts (dicts), so that ``text`` reads what the model said; ``tool_calls`` None
  or a list of ``{"function": {"name": ..., "arguments": ...}}`` objects (arguments a JSON string or a dict), on a
  structured choice only (a text-only choice's calls are parsed from its text); ``tool_calls()`` returns
  :class:`~ee_middleware.records.ToolCall` s and :class:`~ee_middleware.models.parsing.ParseProblem` s;
* tool calls name only the tools offered (none when no tool is offered);
* ``complete`` changes neither the messages nor the tools it was given (replay passes a recorded state, the eval
  harness its conversation, and goes on using them);
* ``close()`` returns, called twice, for a client that answered and for one that never did;
* ``complete`` and ``close`` return within ``timeout_s`` (a consumer waits for them): a client that hangs fails the kit.

What a model says varies, so nothing is checked of the words: only shapes, types, counts and the inputs left as they
were. A model may write a tool call that cannot be read (a :class:`~ee_middleware.models.parsing.ParseProblem`:
counted, not a failure); a call the kit can read must name an offered tool. A model that needs another prompt passes
``messages`` (asked without tools), ``tool_messages`` and ``tools`` (asked with them).

A failure is an ``AssertionError`` naming the call, what the client returned against what the protocol requires, the
promise and the fix.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ee_middleware.models.parsing import ParseProblem
from ee_middleware.models.protocol import ChatClient, Choice, Message, Sampling, ToolSchema
from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.registry import settings_problem
from ee_middleware.testing.messages import Said, broken, settings_text, shown

__all__ = ["CONVERSATION", "TOOLS", "TOOL_CONVERSATION", "check_chat_client"]

MakeClient = Callable[[], Any]

TOOLS: list[ToolSchema] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather now in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
"""The kit's one tool (OpenAI's tool schema)."""

CONVERSATION: list[Message] = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
"""The conversation the kit asks without tools (as teachers and the experience sandbox ask)."""

TOOL_CONVERSATION: list[Message] = [
    {"role": "system", "content": "You are a weather assistant. Use the get_weather tool to answer."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call-0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    },
    {"role": "tool", "tool_call_id": "call-0", "content": "Sunny, 21 C."},
    {"role": "user", "content": "And in Lyon?"},
]
"""The conversation the kit asks with :data:`TOOLS` offered: a recorded state as replay passes one, with an earlier
tool call (its arguments a JSON string, as OpenAI's format has them) and its result."""

_PROTOCOL = (
    "a 'model' attribute (a non-empty string) and 'complete(messages, *, tools=None, n=1, sampling)', 'describe()' and 'close()' methods"
)

N_ANSWERS = (
    "complete returns a list of n Choice objects, one per answer (the replay policy makes every answer's tool calls "
    "candidates and counts fewer than n as short answers; the eval harness, teachers and the experience sandbox read the "
    "first, so none may be missing)"
)

CHOICE_FIX = (
    "Build each answer with Choice.from_message(message, finish_reason=...) (a chat message: role, content, tool_calls) "
    "or Choice.from_text(text, finish_reason=...) (a model that writes its calls as text)"
)


def check_chat_client(
    make_client: MakeClient,
    *,
    messages: Sequence[Message] | None = None,
    tool_messages: Sequence[Message] | None = None,
    tools: Sequence[ToolSchema] | None = None,
    n: int = 3,
    max_tokens: int = 64,
    timeout_s: float = 300.0,
) -> None:
    """Run every check on clients built by ``make_client`` (a new one each time it is called); raises ``AssertionError``.

    ``messages``: the conversation asked without tools (default :data:`CONVERSATION`); ``tool_messages`` and ``tools``:
    the conversation asked with tools offered and those tools (default :data:`TOOL_CONVERSATION` and :data:`TOOLS`);
    ``n``: how many sampled answers to ask for at once (2 or more); ``max_tokens``: the longest answer asked for (small
    keeps a real model quick); ``timeout_s``: how long each ``complete`` and ``close`` may take (a client that never
    returns fails the kit rather than hanging it: its call is left running on a daemon thread). Each request is made
    once, with a copy of the conversation and tools the kit owns."""
    assert n >= 2, f"n is how many answers the kit asks for at once (n > 1 is what replay asks), 2 or more: got {n}"
    assert max_tokens >= 1, f"max_tokens must be 1 or more, got {max_tokens}"
    assert timeout_s > 0, f"timeout_s must be more than 0 seconds, got {timeout_s}"
    plain = list(messages if messages is not None else CONVERSATION)
    with_tools = list(tool_messages if tool_messages is not None else TOOL_CONVERSATION)
    offered = list(tools if tools is not None else TOOLS)
    assert plain and with_tools, "messages and tool_messages each hold at least one message"
    assert offered, "tools names at least one tool (pass messages= alone to change the conversation asked without tools)"
    client = _make(make_client)
    _check_protocol(client)
    described = _check_describe(client)
    greedy = Sampling(temperature=0.0, max_tokens=max_tokens, seed=0)
    sampled = Sampling(temperature=1.0, max_tokens=max_tokens, seed=0)
    _ask(client, plain, None, 1, greedy, timeout_s)  # as teachers and the tau user simulator ask: tools and n left out
    _ask(client, with_tools, offered, 1, greedy, timeout_s)  # as the eval harness asks
    _ask(client, with_tools, offered, n, sampled, timeout_s)  # as the replay policy asks
    after = _call(client.describe, "describe() after complete()")
    assert settings_text(after) == settings_text(described), broken(
        "describe() after complete()",
        after,
        Said(f"what it returned before: {shown(described)}"),
        "describe() returns the settings that shape answers, the same each time (replay records keep them)",
        "Return the client's settings, not what its answers changed (counters, the last request); keep those in attributes",
    )
    _check_close(client, "a client that answered", timeout_s)
    _check_close(_make(make_client), "a client that never answered", timeout_s)


def _make(make_client: MakeClient) -> Any:
    try:
        return make_client()
    except Exception as exc:
        raise AssertionError(f"make_client() raised {type(exc).__name__}: {exc}") from exc


def _check_protocol(client: Any) -> None:
    missing = [name for name in ("model", "complete", "describe", "close") if not hasattr(client, name)]
    assert not missing and isinstance(client, ChatClient), (
        f"{type(client).__name__} is no model client: it lacks {', '.join(repr(m) for m in missing) or 'a member'}. A "
        f"ChatClient has {_PROTOCOL}"
    )
    not_called = [name for name in ("complete", "describe", "close") if not callable(getattr(client, name))]
    assert not not_called, f"{type(client).__name__}'s {', '.join(not_called)} cannot be called: a ChatClient has {_PROTOCOL}"
    model = client.model
    assert isinstance(model, str) and model.strip(), broken(
        "the client's model attribute",
        model,
        Said("a non-empty string"),
        "a client names its model (replay records and eval reports say which model answered)",
        "Set self.model to the model's name, e.g. the served model or the model folder",
    )


def _check_describe(client: Any) -> dict[str, Any]:
    described = _call(client.describe, "describe()")
    problem = settings_problem(described)
    assert problem is None, broken(
        "describe()",
        described,
        Said("a dict of JSON-able values"),
        f"describe() returns the settings that shape answers as JSON (replay records keep them with every proposal): {problem}",
        "Return a dict with text keys holding only dicts, lists, strings, numbers, booleans and None (never a secret)",
    )
    again = _call(client.describe, "describe()")
    assert settings_text(again) == settings_text(described), broken(
        "describe(), asked again,",
        again,
        Said(f"what it returned the first time: {shown(described)}"),
        "describe() returns the same settings each time (they name what shaped the answers)",
        "Build it from the client's settings alone (no clock, no counter, no random id)",
    )
    return described


def _ask(
    client: Any, messages: list[Message], tools: list[ToolSchema] | None, n: int, sampling: Sampling, timeout_s: float
) -> list[Choice]:
    """``client.complete`` asked as a consumer asks it (without ``tools`` and ``n`` when ``tools`` is None and ``n`` 1),
    with copies of ``messages`` and ``tools`` that are then checked unchanged; its answer checked."""
    given_messages, given_tools = copy.deepcopy(messages), copy.deepcopy(tools)
    defaults = tools is None and n == 1
    offered = "None" if tools is None else f"[{', '.join(_tool_names(tools))}]"
    sampled = f"Sampling(temperature={sampling.temperature}, max_tokens={sampling.max_tokens}, seed={sampling.seed})"
    call = (
        f"complete(<{len(messages)} messages>, sampling={sampled})"
        if defaults
        else f"complete(<{len(messages)} messages>, tools={offered}, n={n}, sampling={sampled})"
    )
    try:
        if defaults:
            choices = _within(lambda: client.complete(given_messages, sampling=sampling), call, timeout_s)
        else:
            choices = _within(lambda: client.complete(given_messages, tools=given_tools, n=n, sampling=sampling), call, timeout_s)
    except _NotReturned:
        raise
    except TypeError as exc:
        hint = " Teachers and the tau user simulator leave tools and n out: default them to None and 1." if defaults else ""
        raise AssertionError(f"{call} raised TypeError: {exc}. A ChatClient has {_PROTOCOL}.{hint}") from exc
    except Exception as exc:
        raise AssertionError(
            f"{call} raised {type(exc).__name__}: {exc}. The kit asks a plain question any chat model answers; complete "
            "raises only where the model cannot answer at all (ee_middleware.errors.ModelError: server down, model missing)"
        ) from exc
    _check_unchanged(call, "messages", messages, given_messages)
    if tools is not None:
        _check_unchanged(call, "tools", tools, given_tools)
    _check_choices(call, choices, n, tools)
    return choices


def _check_unchanged(call: str, what: str, before: list[Any], after: Any) -> None:
    assert after == before, (
        f"{call} changed the {what} it was given: {_difference(before, after)}. complete never changes the {what} it is "
        "given (replay passes a recorded state and the eval harness its conversation, and both go on using them). Copy "
        f"what you change (copy.deepcopy({what}), or new dicts for the items you change) and send the copy"
    )


def _difference(before: list[Any], after: Any) -> str:
    """Where ``after`` (what the client left of a list it was given) differs from ``before``, in words."""
    if not isinstance(after, list):
        return f"it is now {_kind(after)}"
    if len(after) != len(before):
        extra = after[len(before) :] if len(after) > len(before) and after[: len(before)] == before else None
        added = f" (added at the end: {shown(extra, 300)})" if extra else ""
        return f"it held {len(before)} items and now holds {len(after)}{added}"
    index = next(i for i, (old, new) in enumerate(zip(before, after, strict=True)) if old != new)
    return f"item {index} was {shown(before[index], 300)} and is now {shown(after[index], 300)}"


def _check_choices(call: str, choices: Any, n: int, tools: list[ToolSchema] | None) -> None:
    assert isinstance(choices, list), broken(call, Said(_kind(choices)), Said("a list of Choice objects"), N_ANSWERS, CHOICE_FIX)
    assert len(choices) == n, broken(
        call,
        Said(f"{len(choices)} choice(s)"),
        Said(f"{n} choice(s)"),
        N_ANSWERS,
        "Return one Choice per answer asked for: sample n answers (n sequences in one generate call, or n requests where "
        "the backend answers one at a time)",
    )
    offered = None if tools is None else _param_order(tools)
    for index, choice in enumerate(choices):
        problem = _choice_problem(choice, offered)
        assert problem is None, f"{call}: choice {index} {problem}"
    problems = [choice.problem for choice in choices]
    assert any(problem is None for problem in problems), broken(
        call,
        Said(f"only choices without a message (problems: {shown(problems, 300)})"),
        Said("at least one answer with a message"),
        "a choice's problem says the backend gave no message at all; to the kit's plain request a working client answers",
        "Check the backend answers this request; return Choice.from_message/from_text for each answer it gave",
    )


def _choice_problem(choice: Any, offered: dict[str, list[str]] | None) -> str | None:
    """What is wrong with ``choice`` (one answer of ``complete``, with the tools named ``offered`` or no tools), in words
    that follow ``choice N``; None when it keeps the protocol."""
    if not isinstance(choice, Choice):
        return f"is {_kind(choice)}, not a Choice: consumers read its problem, message, text, finish_reason and tool_calls(). {CHOICE_FIX}"
    fields = [
        ("problem", choice.problem, "None or a non-empty string (why the backend gave no message)", _is_problem),
        ("raw", choice.raw, "a string (the answer as text, for records)", lambda v: isinstance(v, str)),
        ("finish_reason", choice.finish_reason, "None or a string ('stop', 'length', 'tool_calls')", _optional_str),
        ("structured", choice.structured, "a bool", lambda v: isinstance(v, bool)),
        ("model", choice.model, "None or a string (the model that answered)", _optional_str),
    ]
    for name, value, wanted, ok in fields:
        if not ok(value):
            return f"has {name}={shown(value)}: it must be {wanted}. {CHOICE_FIX}"
    if choice.problem is not None:
        return None
    problem = _message_problem(choice.message, choice.structured)
    if problem is not None:
        return f"{problem}. {CHOICE_FIX}"
    return _read_problem(choice) or _calls_problem(choice, offered)


def _message_problem(message: Any, structured: bool) -> str | None:
    if not isinstance(message, dict):
        return f"has no problem and its message is {_kind(message)}: a choice without a problem holds the chat message, a dict"
    role = message.get("role", "assistant")
    if role != "assistant":
        return f"has a message whose role is {shown(role)}: an answer is the assistant's message (role 'assistant')"
    content = message.get("content")
    if not (content is None or isinstance(content, str) or (isinstance(content, list) and all(isinstance(p, dict) for p in content))):
        return (
            f"has a message whose content is {_kind(content)}: content is the model's text, a string (None with tool calls, "
            "or a list of content parts, dicts such as {'type': 'text', 'text': ...}); Choice.text reads '' from anything "
            "else, and teachers and the eval harness would see an empty answer. Decode the model's output to a string"
        )
    calls = message.get("tool_calls")
    if calls is None or calls == []:
        return None
    if not structured:
        return (
            "has structured=False and a message with tool_calls: a text-only choice's calls are parsed from its text, so "
            "these are never read. Use Choice.from_message for a message with tool_calls"
        )
    if not isinstance(calls, list):
        return f"has a message whose tool_calls is {_kind(calls)}, not a list"
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name or not isinstance(arguments, str | dict):
            return (
                f"has a message whose tool call {index} is {shown(call)}: each tool call is "
                "{'id': ..., 'type': 'function', 'function': {'name': NAME, 'arguments': JSON text of an object (or the object)}}"
            )
    return None


def _read_problem(choice: Choice) -> str | None:
    """Why reading ``choice`` as consumers do (``text``, ``reasoning``, ``refusal``) fails or gives the wrong types."""
    for name, wanted, ok in (
        ("text", "a string", lambda v: isinstance(v, str)),
        ("reasoning", "None or a string", _optional_str),
        ("refusal", "None or a string", _optional_str),
    ):
        try:
            value = getattr(choice, name)
        except Exception as exc:  # noqa: BLE001 - a subclass's own failure, named in the kit's message
            return f"cannot be read: its {name} raised {type(exc).__name__}: {exc}"
        if not ok(value):
            return f"has {name}={shown(value)}: it must be {wanted}. Keep Choice's own {name} (read from the message)"
    return None


def _calls_problem(choice: Choice, offered: dict[str, list[str]] | None) -> str | None:
    """Why ``choice``'s tool calls, as consumers read them (``tool_calls()``), break the protocol."""
    structured = choice.message.get("tool_calls") if isinstance(choice.message, dict) else None
    if offered is None and structured:
        names = [c["function"]["name"] for c in structured]
        return (
            f"calls {', '.join(names)} and no tool was offered (tools=None): a model asked without tools answers with text. "
            "Send no tools and return only what the model answered"
        )
    try:
        parsed = choice.tool_calls(param_order=offered or {})  # as the replay policy reads them
    except Exception as exc:  # noqa: BLE001 - a subclass's own failure, named in the kit's message
        return f"cannot be read: its tool_calls() raised {type(exc).__name__}: {exc}. Keep Choice's own tool_calls()"
    if not isinstance(parsed, list) or not all(isinstance(item, ToolCall | ParseProblem) for item in parsed):
        return f"has tool_calls() returning {shown(parsed)}: a list of ToolCall and ParseProblem. Keep Choice's own tool_calls()"
    if offered is None:
        return None
    for item in parsed:
        if isinstance(item, ToolCall) and item.name not in offered:
            return (
                f"calls {item.name}({json.dumps(item.arguments, default=repr)}), and the tools offered were only "
                f"{', '.join(sorted(offered))}: a client returns calls of the tools offered (replay would count it as an "
                "unusable candidate, the eval harness as a wrong call). Send the tools given to the model (with their names "
                "as given); if the model itself named another tool, pass tools=/tool_messages= it answers reliably"
            )
    return None


def _check_close(client: Any, what: str, timeout_s: float) -> None:
    for time in ("", " again"):
        try:
            _within(client.close, f"close() called{time} on {what}", timeout_s)
        except _NotReturned:
            raise
        except Exception as exc:
            raise AssertionError(
                f"close() called{time} on {what} raised {type(exc).__name__}: {exc}. close() releases what the client holds "
                "and may be called more than once (a consumer's error path and its end may both close it): do nothing when already closed"
            ) from exc


class _NotReturned(AssertionError):
    """A call of the client's that did not return within the kit's ``timeout_s``."""


def _within(function: Callable[[], Any], call: str, timeout_s: float) -> Any:
    """``function()``'s result, or what it raised, once it returns within ``timeout_s``; else :class:`_NotReturned`
    naming ``call`` (the call goes on, on a daemon thread: nothing can stop it from outside)."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as it is
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="ee-client-conformance", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise _NotReturned(
            f"{call} did not return within {timeout_s:g} s. A consumer waits for it (a replay's worker, the eval harness, "
            "a teacher): give every request a time limit (the HTTP client's timeout, a generation's max_new_tokens) and "
            "raise ee_middleware.errors.ModelError when it runs out. A slow model that needs longer: pass timeout_s="
        )
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def _call(function: Callable[[], Any], what: str) -> Any:
    try:
        return function()
    except Exception as exc:
        raise AssertionError(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _tool_names(tools: Sequence[ToolSchema]) -> list[str]:
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        assert isinstance(name, str) and name, (
            f"each tool is an OpenAI tool schema ({{'type': 'function', 'function': {{'name': ...}}}}): got {tool!r}"
        )
        names.append(name)
    return names


def _param_order(tools: Sequence[ToolSchema]) -> dict[str, list[str]]:
    """Each offered tool's parameter names in schema order, by tool name (what ``tool_calls(param_order=...)`` takes)."""
    order = {}
    for name, tool in zip(_tool_names(tools), tools, strict=True):
        parameters = tool["function"].get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
        order[name] = list(properties) if isinstance(properties, Mapping) else []
    return order


def _is_problem(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(value.strip()))


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _kind(value: Any) -> str:
    """``value``'s type and value in words: ``an int (42)``, ``a tuple of 2 items``, ``None``."""
    if value is None:
        return "None"
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(value, tuple | list | set | frozenset):
        return f"{article} {name} of {len(value)} item(s)"
    return f"{article} {name} ({shown(value)})"
