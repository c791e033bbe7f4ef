"""Rendering chat messages with a model's own chat template, the same way everywhere.

The trainer renders training rows, the local generator renders prompts, and the local server will
render requests with these functions, so that the prompt a model sees when it serves is the one it
was trained on, byte for byte.

Some templates (SmolLM2's among them) ignore ``tools`` and ``tool_calls``. :func:`probe_template`
finds out once per tokenizer; then the tool schemas go into the system message and each tool call
becomes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text (the Hermes/Qwen shape
that :mod:`ee_middleware.models.parsing` reads), so the model still sees and learns the calls. The same
fallback is taken by templates that render calls but lose part of them: one call per message only, or the
text written beside a call dropped (Llama 3.x: an SR target's rationale would vanish from the labels).

Two more limits of real templates get a fallback rather than a silent loss or a Jinja traceback: a
template that skips or refuses ``tool`` messages (Phi-3/4 skip them, Gemma raises) gets each run of tool
results as one user turn of ``<tool_response>`` blocks (Qwen's own rendering of tool results); one without
a system role (Gemma 2) gets the system text at the start of the first user turn (Gemma 3's own rendering).
:meth:`TemplateSupport.describe` says which were taken; the trainer records it in the adapter's manifest.

Messages reach a template in the shape it reads: a template that shows text only in content parts (SmolVLM's and
Idefics3's loop over ``message['content']``) gets each message's text as one ``{"type": "text"}`` part, as vLLM gives
content to such a template; one that refuses tool call ids not in a format (Mistral's: 9 alphanumerics) gets each id in
that format, made from the recorded one. A template that shows no user or assistant text either way (a ShareGPT-style
template reads ``from``/``value``) is refused: every row would be trained without its task, tools or target.

A training row is the served prompt and what the template renders after it, where the template allows: some
generation prompts are not how the template starts the assistant's turn (QwQ-32B's and DeepSeek-R1's open a
``<think>`` block that a turn without reasoning does not have); those rows are the conversation as the template
renders it, split after the assistant's header. :func:`render_pair` says which rows took which way, and never lets a
target's tool calls drop out of its completion.

The tokenizer is any object with a transformers-style ``apply_chat_template``; nothing here
imports transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from ee_middleware.errors import ChatTemplateError
from ee_middleware.messages import content_to_text, decode_tool_call

_PROBE_TOOL = "ee_probe_tool_7f3a"
_PROBE_CALL = "ee_probe_call_9c1d"
_PROBE_SECOND_CALL = "ee_probe_call_3e8b"
_PROBE_TEXT = "ee_probe_text_6a2f"
_PROBE_RESULT = "ee_probe_result_4d7c"
_PROBE_SYSTEM = "ee_probe_system_8b5e"
_PROBE_USER = "ee_probe_user_5f1b"
_PROBE_REPLY = "ee_probe_reply_2d9a"
NINE_ALPHANUMERIC = "9 alphanumerics"
"""A ``call_id_format`` (Mistral v3's and later Mistral templates raise "Tool call IDs should be alphanumeric strings
with length 9!"): each call id becomes 9 ASCII letters and digits (:func:`nine_alphanumeric_id`)."""
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ID_MODULUS = 62**9 - 9
"""The largest prime below 62**9: a made id is its call id's UTF-8 bytes hashed modulo it (:func:`nine_alphanumeric_id`)."""
_ID_BASE = 257
"""Each byte of an id is a digit from 1 to 256 in this base, so ids of up to 6 bytes are distinct numerals below the
modulus (257**6 < 62**9 - 9): no two of them get one made id."""
TOOLS_PREAMBLE = "You may call these tools:\n"
TOOLS_SUFFIX = 'Call a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
COMPACT_TOOLS_PREAMBLE = "You may call these tools (name and arguments):\n"


class TemplateShowsNoTextError(ChatTemplateError):
    """:func:`probe_template`'s refusal of a template that renders no text of a user's or an assistant's message given
    as ``{"role": ..., "content": ...}``, nor as text parts (ShareGPT-style templates read ``from``/``value``).

    ``missing`` says whose text it does not show (``user``, ``assistant``); :attr:`shows_no_text` says so in words that
    follow the template's name, for a caller that says what it would do with the template (a server: render requests)."""

    def __init__(self, message: str, *, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)

    @property
    def shows_no_text(self) -> str:
        """``renders no text of a user and an assistant message given as ...: it reads other keys (...)``."""
        return _shows_no_text(self.missing)


class TemplateDoesNotCompileError(ChatTemplateError):
    """:func:`probe_template`'s refusal of a template that is not valid Jinja (a ``TemplateSyntaxError``): it would
    render no conversation at all. ``line`` is the template's line the error is on (``None``: not said), ``detail``
    Jinja's words for it."""

    def __init__(self, message: str, *, line: int | None, detail: str) -> None:
        super().__init__(message)
        self.line = line
        self.detail = detail


def _check_compiles(tokenizer: Any) -> None:
    """:class:`TemplateDoesNotCompileError` when rendering the simplest conversation fails on the template's syntax
    (another refusal of it is judged by the probes)."""
    try:
        _apply(tokenizer, [_probe_user()], None, TemplateSupport(tools=True, tool_calls=True), generation=True)
    except Exception as exc:  # only a syntax error is this check's business
        syntax = _jinja_syntax_error(exc)
        if syntax is None:
            return
        line = getattr(syntax, "lineno", None)
        detail = str(getattr(syntax, "message", None) or syntax)
        where = f"line {line}: " if isinstance(line, int) else ""
        raise TemplateDoesNotCompileError(
            f"The chat template is not valid Jinja ({where}{detail}), so it renders no conversation. Fix its syntax "
            "(every {% ... %} and {{ ... }} closed, each {% for %}/{% if %} ended by {% endfor %}/{% endif %}), or give "
            "the tokenizer another template.",
            line=line if isinstance(line, int) else None,
            detail=detail,
        ) from exc


def _jinja_syntax_error(exc: BaseException) -> BaseException | None:
    """``exc`` or the error it was raised from, where that is Jinja's ``TemplateSyntaxError`` (told by class name: the
    tokenizer's Jinja is not imported here)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ == "TemplateSyntaxError" for cls in type(current).__mro__):
            return current
        current = current.__cause__ or current.__context__
    return None


def _shows_no_text(missing: Sequence[str]) -> str:
    whose = " and ".join(f"an {who}" if who == "assistant" else f"a {who}" for who in missing)
    return (
        f'renders no text of {whose} message given as {{"role": ..., "content": "TEXT"}} (nor as '
        '[{"type": "text", "text": "TEXT"}] parts): it reads other keys (ShareGPT-style templates read '
        "message['from'] and message['value'])"
    )


@dataclass(frozen=True)
class TemplateSupport:
    """What the chat template renders itself; each ``False`` is a documented fallback (module docstring)."""

    tools: bool
    tool_calls: bool
    tool_role: bool = True
    """``tool`` messages are rendered with their content; else each run of them is one user turn of
    ``<tool_response>`` blocks."""
    system_role: bool = True
    """A leading system message is accepted and shown; else its text opens the first user turn."""
    content_parts: bool = False
    """The template shows a message's text only when its content is a list of parts (``[{"type": "text", "text": ...}]``,
    SmolVLM's and Idefics3's templates): every message's content is given as one text part, as vLLM gives content to a
    template that loops over it."""
    call_id_format: str | None = None
    """The template refuses tool call ids not in this format (:data:`NINE_ALPHANUMERIC`); each id is given in it."""
    template_tools: bool = False
    """With ``tools`` and ``tool_calls`` false: the template shows tools itself, but its calls are ``<tool_call>`` text,
    whose instructions the schemas come with."""

    def describe(self) -> dict[str, str]:
        """Per part, ``chat template`` or the fallback taken and why (an adapter manifest's ``rendering``)."""
        if self.tools:
            tools = "chat template"
        elif self.template_tools:
            tools = "system message (the template shows tools, but its tool calls are <tool_call> text, which the schemas come with)"
        else:
            tools = "system message (template ignores tools)"
        described = {
            "tools": tools,
            "tool_calls": "chat template"
            if self.tool_calls
            else "<tool_call> text (template ignores tool_calls, renders one per message, or drops the text beside them)",
            "tool_results": "chat template"
            if self.tool_role
            else "<tool_response> blocks in a user turn (template skips or refuses tool messages, or a reply after them)",
            "system": "chat template" if self.system_role else "start of the first user turn (template has no system role)",
        }
        if self.content_parts:
            described["content"] = 'a list of one text part (the template shows no string content): [{"type": "text", ...}]'
        if self.call_id_format is not None:
            described["call_ids"] = f"{self.call_id_format} made from each call's id (the template refuses other ids)"
        return described


def probe_template(tokenizer: Any) -> TemplateSupport:
    """Render tiny conversations to see what the template shows: a user's and an assistant's text (as a string, else as
    text parts), tools, tool calls (two in one message, with text beside them), tool results and a system message. Tool
    calls are probed with the ids as given, then, where that is refused, as 9 alphanumerics (Mistral's templates).

    Raises :class:`TemplateShowsNoTextError` (a :class:`ChatTemplateError`) for a template that renders no text of a
    user's or an assistant's message given as ``{"role": ..., "content": ...}``, nor as text parts (ShareGPT-style
    templates read ``from``/``value``): rows rendered with it would hold no task, no tools or no target, and a server
    rendering requests with it would show the model none of their messages. Raises :class:`TemplateDoesNotCompileError`
    for a template that is not valid Jinja (it renders nothing)."""
    _check_compiles(tokenizer)
    base = TemplateSupport(tools=True, tool_calls=True, content_parts=_content_as_parts(tokenizer))
    support = _probe_tools(tokenizer, base)
    if not (support.tools and support.tool_calls and support.tool_role):
        with_ids = _probe_tools(tokenizer, replace(base, call_id_format=NINE_ALPHANUMERIC))
        if sum((with_ids.tools, with_ids.tool_calls, with_ids.tool_role)) > sum((support.tools, support.tool_calls, support.tool_role)):
            support = with_ids
        elif with_ids.template_tools:  # the ids change nothing rendered, but the template does show tools (Mistral v3)
            support = replace(support, template_tools=True)
    system = _PROBE_SYSTEM in _probe_render(tokenizer, [{"role": "system", "content": _PROBE_SYSTEM}, _probe_user()], base)
    return replace(support, system_role=system)


def _probe_user() -> dict[str, Any]:
    return {"role": "user", "content": "hi"}


def _probe_tools(tokenizer: Any, base: TemplateSupport) -> TemplateSupport:
    """Tools, tool calls and tool results as the template shows them, messages given as ``base`` says."""
    tool = {"type": "function", "function": {"name": _PROBE_TOOL, "description": "probe", "parameters": {"type": "object"}}}
    calls = [
        {"id": f"p{i}", "type": "function", "function": {"name": name, "arguments": {}}}
        for i, name in enumerate((_PROBE_CALL, _PROBE_SECOND_CALL))
    ]
    user = _probe_user()
    one_call = _probe_render(tokenizer, [user, {"role": "assistant", "content": "", "tool_calls": calls[:1]}], base, tools=[tool])
    support = replace(base, tools=_PROBE_TOOL in one_call, tool_calls=_PROBE_CALL in one_call)
    if support.tool_calls:
        both = _probe_render(tokenizer, [user, {"role": "assistant", "content": _PROBE_TEXT, "tool_calls": calls}], base, tools=[tool])
        if not all(marker in both for marker in (_PROBE_TEXT, _PROBE_CALL, _PROBE_SECOND_CALL)):
            # the schemas come with the <tool_call> instructions
            support = replace(support, tools=False, tool_calls=False, template_tools=support.tools)
    answered = template_messages(
        [
            user,
            {"role": "assistant", "content": "", "tool_calls": calls[:1]},
            {"role": "tool", "tool_call_id": "p0", "content": _PROBE_RESULT},
        ],
        support,
    )
    # and a reply may follow: Mistral's templates refuse an assistant turn after a tool result that answers a call
    # written as text (its turns must alternate, and only turns with tool_calls are left out of the count)
    tool_role = _PROBE_RESULT in _probe_render(tokenizer, answered, support) and (
        _probe_render(tokenizer, [*answered, {"role": "assistant", "content": _PROBE_REPLY}], support, generation=False, default=None)
        is not None
    )
    return replace(support, tool_role=tool_role)


def _content_as_parts(tokenizer: Any) -> bool:
    """Whether the template shows message text only given as text parts (one that refuses string content and loops over
    parts among them); :class:`TemplateShowsNoTextError` when it shows a user's or an assistant's text neither way. A
    template that refuses these tiny conversations with string content and shows no text of them as parts is not judged
    here: its own error comes when a row is rendered."""
    missing: dict[bool, list[str] | None] = {}
    """Per way (parts or not): whose text the template does not show; ``None`` where it refused the conversations."""
    for parts in (False, True):
        support = TemplateSupport(tools=True, tool_calls=True, content_parts=parts)
        user = {"role": "user", "content": _PROBE_USER}
        prompt = _probe_render(tokenizer, [user], support, default=None)
        reply = _probe_render(tokenizer, [user, {"role": "assistant", "content": _PROBE_REPLY}], support, generation=False, default=None)
        if prompt is None or reply is None:
            missing[parts] = None
            continue
        missing[parts] = [
            who for who, marker, text in (("user", _PROBE_USER, prompt), ("assistant", _PROBE_REPLY, reply)) if marker not in text
        ]
        if not missing[parts]:
            return parts
    as_string = missing[False]
    if not as_string:  # refused as a string, and shown no better as parts: not judged here
        return False
    raise TemplateShowsNoTextError(
        f"The chat template {_shows_no_text(as_string)}, so every prompt and "
        "completion would be trained on without its task, tools or target. Give the tokenizer a template that renders "
        "role/content messages (tokenizer.chat_template = TEMPLATE; tokenizer.save_pretrained(DIR) writes "
        "chat_template.jinja), e.g. the ChatML template of a Qwen or SmolLM2 instruct model, or pick a base model whose "
        "template does.",
        missing=as_string,
    )


def _probe_render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    support: TemplateSupport,
    tools: list[dict[str, Any]] | None = None,
    *,
    generation: bool = True,
    default: str | None = "",
) -> Any:
    try:
        return _apply(tokenizer, messages, tools, support, generation=generation)
    except Exception:  # noqa: BLE001 - a template that refuses the probe does not support what it probes
        return default


def _apply(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None, support: TemplateSupport, *, generation: bool
) -> str:
    """``tokenizer.apply_chat_template`` on prepared messages, given in the shape the template reads: call ids in its
    ``call_id_format``, content as text parts where it reads them."""
    return tokenizer.apply_chat_template(
        _as_template_reads(messages, support), tools=tools, add_generation_prompt=generation, tokenize=False
    )


def _as_template_reads(messages: Sequence[dict[str, Any]], support: TemplateSupport) -> list[dict[str, Any]]:
    """Prepared messages (:func:`template_messages`) in the shape ``support`` says the template reads: tool call ids in its
    ``call_id_format`` (a call's and its result's alike), content as one text part where it reads parts. The messages
    themselves where it reads them as they are."""
    if support.call_id_format is None and not support.content_parts:
        return list(messages)
    out = []
    for message in messages:
        message = dict(message)
        if support.call_id_format is not None:
            if message.get("tool_calls"):
                message["tool_calls"] = [
                    {**call, "id": nine_alphanumeric_id(call.get("id"))} if isinstance(call, dict) else call
                    for call in message["tool_calls"]
                ]
            if message.get("role") == "tool":
                message["tool_call_id"] = nine_alphanumeric_id(message.get("tool_call_id"))
        if support.content_parts:
            message["content"] = [{"type": "text", "text": message.get("content") or ""}]
        out.append(message)
    return out


def nine_alphanumeric_id(call_id: Any) -> str:
    """A tool call id as 9 ASCII letters and digits: itself when it is so already (a Mistral model's own ids), else one made
    from it, the same for the same id, so a call and its result keep matching. Ids that differ get different ones:
    always when both are up to 6 UTF-8 bytes long (``call_1`` and ``call-1``, ``tool:0`` and ``tool.0``), else but by
    chance one in 62**9 (a polynomial hash of the id's UTF-8 bytes modulo the largest prime below 62**9). An integer id
    is taken as its decimal digits, any other one that is not a string as the empty id. The serving template's preamble
    computes the same (:func:`serving_template`)."""
    text = _id_text(call_id)
    if len(text) == 9 and all(char in _ID_ALPHABET for char in text):
        return text
    value = 0
    for byte in text.encode("utf-8", "surrogatepass"):  # a lone surrogate (JSON allows one) hashes as Jinja's does
        value = (value * _ID_BASE + byte + 1) % _ID_MODULUS
    return "".join(_ID_ALPHABET[value // 62 ** (8 - index) % 62] for index in range(9))


def _id_text(call_id: Any) -> str:
    if isinstance(call_id, str):
        return call_id
    if isinstance(call_id, int) and not isinstance(call_id, bool):  # as Jinja's `is integer` test
        return str(call_id)
    return ""


def template_messages(messages: Sequence[dict[str, Any]], support: TemplateSupport) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content, tool-call arguments as objects.

    Content parts (``[{"type": "text", "text": ...}]``) become their text and any other content that
    is not a string (a tool result kept as an object) its JSON, never a Python ``repr``.
    """
    out = []
    for message in messages:
        message = dict(message)
        if not isinstance(message.get("content"), str):
            message["content"] = content_to_text(message.get("content"))
        calls = [decode_tool_call(call) for call in message.get("tool_calls") or []]
        if calls and support.tool_calls:
            message["tool_calls"] = calls
        elif calls:
            message.pop("tool_calls", None)
            text = "".join(tool_call_text(call) for call in calls)
            message["content"] = f"{message['content']}\n{text}" if message["content"] else text
        elif "tool_calls" in message:
            message.pop("tool_calls")
        out.append(message)
    return out


def with_tools_in_system(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], *, compact: bool = False
) -> list[dict[str, Any]]:
    """The messages with the tool schemas written into the system message (added if there is none).

    ``compact`` lists each tool on one line (name and typed arguments) instead of its JSON schema:
    the fallback for states too long for full schemas (see :mod:`ee_middleware.models.truncation`).
    """
    if compact:
        listing = compact_tool_listing(tools) + "\n" + TOOLS_SUFFIX
    else:
        listing = TOOLS_PREAMBLE + "".join(json.dumps(_without_nulls(tool), ensure_ascii=False) + "\n" for tool in tools) + TOOLS_SUFFIX
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{listing}" if first.get("content") else listing
        return [first, *messages[1:]]
    return [{"role": "system", "content": listing}, *messages]


def _without_nulls(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """A tool schema without its keys whose value is ``None``, at its top and its ``function``'s level, as the serving
    templates write it (``ee_json_without_nulls``: a server's request tools hold ``None`` for fields the client left
    out, such as ``strict``), so that a prompt trains as it is served."""
    if not any(value is None for value in tool.values()) and not (
        isinstance(tool.get("function"), Mapping) and any(value is None for value in tool["function"].values())
    ):
        return tool
    kept = {key: value for key, value in tool.items() if value is not None}
    if isinstance(kept.get("function"), Mapping):
        kept["function"] = {key: value for key, value in kept["function"].items() if value is not None}
    return kept


def compact_tool_listing(tools: Sequence[Mapping[str, Any]]) -> str:
    """One line per tool, ``name(arg: type, optional?: type)``, under a preamble."""
    lines = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool
        parameters = function.get("parameters") if isinstance(function.get("parameters"), Mapping) else {}
        properties = parameters.get("properties") if isinstance(parameters.get("properties"), Mapping) else {}
        required = set(parameters.get("required") or ())
        arguments = [f"{arg}{'' if arg in required else '?'}: {_type_name(spec)}" for arg, spec in properties.items()]
        lines.append(f"{function.get('name', '?')}({', '.join(arguments)})")
    return COMPACT_TOOLS_PREAMBLE + "\n".join(lines)


def _type_name(spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return "any"
    kind = spec.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array" and isinstance(spec.get("items"), Mapping):
        return f"array[{_type_name(spec['items'])}]"
    if isinstance(spec.get("enum"), list):
        return "|".join(repr(v) for v in spec["enum"][:6])
    return str(kind) if kind else "any"


def tool_call_text(call: Any) -> str:
    """One tool call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text."""
    function = call.get("function", {}) if isinstance(call, dict) else {}
    payload = {"name": function.get("name"), "arguments": function.get("arguments", {})}
    return f"<tool_call>{json.dumps(payload, ensure_ascii=False)}</tool_call>"


def _prepared(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None, support: TemplateSupport
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    prepared = template_messages(messages, support)
    tool_list = list(tools) if tools else None
    if tool_list and not support.tools:
        prepared, tool_list = with_tools_in_system(prepared, tool_list), None
    if not support.tool_role:
        prepared = tool_results_as_user_turns(prepared)
    if not support.system_role:
        prepared = system_in_first_user_turn(prepared)
    return prepared, tool_list


def tool_results_as_user_turns(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run of ``tool`` messages as one user message of ``<tool_response>`` blocks, in order."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") != "tool":
            out.append(message)
            continue
        block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
        if out and out[-1].get("_tool_results"):
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n{block}"}
        else:
            out.append({"role": "user", "content": block, "_tool_results": True})
    return [{k: v for k, v in message.items() if k != "_tool_results"} for message in out]


def system_in_first_user_turn(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading system messages' text at the start of the first user message (a user message when there is none)."""
    index = 0
    while index < len(messages) and messages[index].get("role") in ("system", "developer"):
        index += 1
    system = "\n\n".join(str(m.get("content") or "") for m in messages[:index] if m.get("content"))
    rest = list(messages[index:])
    if not system:
        return rest
    if rest and rest[0].get("role") == "user":
        return [{**rest[0], "content": f"{system}\n\n{rest[0].get('content') or ''}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


def _template_error(exc: Exception, messages: Sequence[dict[str, Any]], template_file: str | None = None) -> ChatTemplateError:
    roles = ", ".join(str(m.get("role")) for m in messages)
    if template_file is not None:  # a file given in place of the model's own: the limit is that file's
        return ChatTemplateError(
            f"The chat template {template_file} cannot render these messages (roles {roles}): {type(exc).__name__}: {exc}. "
            f"This is a limit of that file (e.g. strict user/assistant alternation, or an error it raises): fix {template_file} "
            "so that it accepts this conversation, or use a template that does."
        )
    return ChatTemplateError(
        f"The chat template cannot render these messages (roles {roles}): {type(exc).__name__}: {exc}. This is a limit of "
        "the model's own template (e.g. strict user/assistant alternation). Give the tokenizer a template that accepts "
        "this conversation (tokenizer.chat_template = ...; tokenizer.save_pretrained(DIR) writes chat_template.jinja), "
        "or pick a base model whose template does."
    )


def render_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    support: TemplateSupport,
    *,
    template_file: str | None = None,
) -> str:
    """The prompt text for the model's next assistant turn (generation prompt included).

    ``template_file``: the file the tokenizer's template was read from in place of the model's own (a server's
    ``--chat-template``), named by the :class:`ChatTemplateError` of a conversation the template cannot render."""
    prepared, tool_list = _prepared(messages, tools, support)
    try:
        return _apply(tokenizer, prepared, tool_list, support, generation=True)
    except Exception as exc:
        raise _template_error(exc, prepared, template_file) from exc


FALLBACK_CONVERSATION = "conversation"
"""The completion is the assistant turn as the template renders the whole conversation (see :func:`render_pair`)."""
FALLBACK_CONTENT = "content"
"""The completion is the target's text plus the end-of-sequence token (see :func:`render_pair`)."""
FALLBACK_CALLS_AS_TEXT = "calls_as_text"
"""The target's tool calls are ``<tool_call>`` text: the template rendered the row without them."""
_TURN_MARKERS = ("ee_turn_probe_2c4e", "zz_turn_probe_2c4e")  # differ at their first character


class RenderedPair(NamedTuple):
    """A training row as text: the model trains on ``prompt + completion``, with the loss on ``completion``."""

    prompt: str
    completion: str
    fallback: tuple[str, ...] = ()
    """Empty when ``prompt`` is the serving prompt (:func:`render_prompt`) and ``completion`` what the template renders
    after it; else which of ``FALLBACK_CONVERSATION``, ``FALLBACK_CONTENT``, ``FALLBACK_CALLS_AS_TEXT`` were taken."""


def render_pair(
    tokenizer: Any,
    prompt: Sequence[dict[str, Any]],
    completion: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    support: TemplateSupport,
) -> RenderedPair:
    """``(prompt_text, completion_text, fallback)`` for a training row (a :class:`RenderedPair`).

    ``prompt_text`` is what :func:`render_prompt` gives for ``prompt``; the completion text is what
    rendering prompt + completion adds after it (so it ends with the template's end-of-turn marker),
    and ``fallback`` is empty. When the generation prompt is not how the template starts the assistant's
    turn (QwQ's ``<|im_start|>assistant\\n<think>\\n`` against a turn rendered ``<|im_start|>assistant\\n...``
    when it carries no reasoning), the row is the whole conversation as the template renders it: the prompt ends
    where the assistant's header ends, the completion is the rest of the turn, its text and tool calls and
    end-of-turn included (``FALLBACK_CONVERSATION``). A template that renders the earlier turns differently once a
    reply follows (Mistral v3 shows the system message only before a last user turn) keeps the serving prompt, and
    the completion is the target's text plus the end-of-sequence token (``FALLBACK_CONTENT``). Whatever the way,
    a target's tool calls stay in the completion: where the template's rendering lost them (the text-plus-end-of-sequence
    completion always does; a text that names the tool does not count as its call), they are written as ``<tool_call>``
    text after the target's text, as for templates that ignore tool calls (``FALLBACK_CALLS_AS_TEXT``).
    """
    prepared_prompt, tool_list = _prepared(prompt, tools, support)
    prepared_completion = template_messages(completion, support)
    rendered = _render_pair(tokenizer, prepared_prompt, prepared_completion, tool_list, support)
    if support.tool_calls and not _shows_calls(tokenizer, prepared_prompt, prepared_completion, tool_list, rendered, support):
        as_text = template_messages(completion, replace(support, tool_calls=False))
        rendered = _render_pair(tokenizer, prepared_prompt, as_text, tool_list, support)
        rendered = rendered._replace(fallback=(*rendered.fallback, FALLBACK_CALLS_AS_TEXT))
    return rendered


def _render_pair(
    tokenizer: Any,
    prompt: list[dict[str, Any]],
    completion: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    support: TemplateSupport,
) -> RenderedPair:
    try:
        prompt_text = _apply(tokenizer, prompt, tools, support, generation=True)
        full = _apply(tokenizer, prompt + completion, tools, support, generation=False)
    except Exception as exc:
        raise _template_error(exc, prompt + completion) from exc
    if full.startswith(prompt_text) and len(full) > len(prompt_text):
        return RenderedPair(prompt_text, full[len(prompt_text) :])
    start = _turn_start(tokenizer, prompt, tools, full, support)
    if start is not None and len(full) > start:
        return RenderedPair(full[:start], full[start:], (FALLBACK_CONVERSATION,))
    return RenderedPair(prompt_text, (completion[0].get("content") or "") + (tokenizer.eos_token or ""), (FALLBACK_CONTENT,))


def _turn_start(
    tokenizer: Any, prompt: list[dict[str, Any]], tools: list[dict[str, Any]] | None, full: str, support: TemplateSupport
) -> int | None:
    """Where the assistant's turn starts in ``full`` (prompt + completion rendered), after its header; ``None`` when the
    template renders ``prompt``'s messages there otherwise than alone (the row cannot be split at a message boundary).

    The header is what two renderings of ``prompt`` followed by an assistant turn of different text share after the
    prompt's messages, kept as far as ``full`` has it too (QwQ's tool-call turns start ``<|im_start|>assistant`` and
    put their ``\\n`` before each call)."""
    try:
        before = _apply(tokenizer, prompt, tools, support, generation=False)
        marked = [
            _apply(tokenizer, [*prompt, {"role": "assistant", "content": marker}], tools, support, generation=False)
            for marker in _TURN_MARKERS
        ]
    except Exception:  # noqa: BLE001 - a template that refuses these renderings gets the content fallback
        return None
    eos = tokenizer.eos_token or ""
    if not full.startswith(before) and eos and before.endswith(eos) and full.startswith(before[: -len(eos)]):
        before = before[: -len(eos)]  # Phi-3 ends a conversation that awaits no reply with the end-of-sequence token
    if not full.startswith(before):
        return None
    if not all(marker in text for marker, text in zip(_TURN_MARKERS, marked, strict=True)):
        return len(before)  # the header cannot be told apart: it is trained with the turn
    return max(len(before), _common_prefix_length([*marked, full]))


def _common_prefix_length(texts: Sequence[str]) -> int:
    """How many characters all of ``texts`` begin with alike."""
    shortest = min(len(text) for text in texts)
    for index in range(shortest):
        if any(text[index] != texts[0][index] for text in texts[1:]):
            return index
    return shortest


def _shows_calls(
    tokenizer: Any,
    prompt: list[dict[str, Any]],
    completion: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    rendered: RenderedPair,
    support: TemplateSupport,
) -> bool:
    """Every tool call of ``completion`` (prepared messages) is in ``rendered``, the row rendered from them.

    A call counts as shown when its function's name occurs in the rendering once more than in the same conversation
    rendered with the target's calls left out: a target whose text names the tool ("Calling check_stock for plums is
    better than guessing.") shows the name without its call. The text-plus-end-of-sequence completion
    (``FALLBACK_CONTENT``) never shows the calls of a target that has some."""
    names = [
        call["function"]["name"]
        for message in completion
        for call in message.get("tool_calls") or []
        if isinstance(call, dict) and isinstance(call.get("function"), dict) and isinstance(call["function"].get("name"), str)
    ]
    if not names:
        return True
    if FALLBACK_CONTENT in rendered.fallback:
        return False
    shown = rendered.prompt + rendered.completion  # the whole conversation, as rendered (both other ways split it)
    without_calls = [{key: value for key, value in message.items() if key != "tool_calls"} for message in completion]
    try:
        baseline = _apply(tokenizer, prompt + without_calls, tools, support, generation=False)
    except Exception:  # noqa: BLE001 - a template that refuses the turn without calls: compare with the target's text
        baseline = rendered.prompt + "".join(str(message.get("content") or "") for message in completion)
    # each shown call adds its name once, and the names of the other calls that hold it ("check" in "check_stock")
    return all(shown.count(name) - baseline.count(name) >= sum(other.count(name) for other in names) for name in set(names))


# --- serving with the same rendering ------------------------------------------------------------

_SERVING_PREAMBLE = r"""{#- ee-middleware: the trainer's rendering of requests (ee_middleware/models/chat_template.py) in front of
    the model's own chat template, whose limits it works around: @DESCRIBE@.
    A server using this template (vLLM: --chat-template THIS_FILE @PARSER@) renders each request as the adapter's
    training rows were rendered. -#}
{%- macro ee_json_without_nulls(d) -%}
{{- '{' -}}
{%- set state = namespace(first=true) -%}
{%- for key, value in d.items() if value is not none -%}
{%- if not state.first -%}{{- ', ' -}}{%- endif -%}
{%- set state.first = false -%}
{{- key | tojson -}}{{- ': ' -}}
{%- if key == 'function' and value is mapping -%}{{- ee_json_without_nulls(value) -}}{%- else -%}{{- value | tojson -}}{%- endif -%}
{%- endfor -%}
{{- '}' -}}
{%- endmacro -%}
{%- macro ee_call_id(id) -%}
{%- set ee_alphabet = '@ID_ALPHABET@' -%}
{%- set ee_id = namespace(text=(id if id is string else ((id | string) if id is integer else '')), value=0, valid=true) -%}
{%- for char in ee_id.text -%}{%- if char not in ee_alphabet -%}{%- set ee_id.valid = false -%}{%- endif -%}{%- endfor -%}
{%- if ee_id.valid and ee_id.text | length == 9 -%}{{- ee_id.text -}}
{%- else -%}
{%- for byte in ee_id.text.encode('utf-8', 'surrogatepass') -%}
{%- set ee_id.value = (ee_id.value * @ID_BASE@ + byte + 1) % @ID_MODULUS@ -%}
{%- endfor -%}
{%- for power in @ID_POWERS@ -%}{{- ee_alphabet[(ee_id.value // power) % 62] -}}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set ee = namespace(msgs=[], tools=(tools if tools is defined and tools else none)) -%}
{%- for m in messages -%}
{%- if m.content is string -%}
{%- set ee_text = m.content -%}
{%- elif m.content is defined and m.content is not none and m.content is not mapping and m.content is iterable -%}
{%- set ee_parts = namespace(text='') -%}
{%- for part in m.content -%}
{%- if part is string -%}{%- set ee_part = part -%}
{%- elif part is mapping and part.text is string -%}{%- set ee_part = part.text -%}
{%- elif part is mapping and part.content is string -%}{%- set ee_part = part.content -%}
{%- else -%}{%- set ee_part = '' -%}
{%- endif -%}
{%- if ee_part -%}{%- set ee_parts.text = ee_parts.text ~ '\n' ~ ee_part if ee_parts.text else ee_part -%}{%- endif -%}
{%- endfor -%}
{%- set ee_text = ee_parts.text -%}
{%- else -%}
{%- set ee_text = '' -%}
{%- endif -%}
{%- set ee_calls = m.tool_calls if m.tool_calls is defined and m.tool_calls else [] -%}
{%- set ee_kept = m.items() | rejectattr('0', 'in', ['content', 'tool_calls']) | list -%}
{%- if ee_calls and @TOOL_CALLS@ -%}
{%- set ee.msgs = ee.msgs + [dict(ee_kept, content=ee_text, tool_calls=ee_calls)] -%}
{%- else -%}
{%- if ee_calls -%}
{%- set ee_call_text = namespace(text='') -%}
{%- for call in ee_calls -%}
{%- set ee_function = call.function if call.function is defined else {} -%}
{%- set ee_call_text.text = ee_call_text.text ~ '<tool_call>' ~ ({'name': ee_function.name, 'arguments': (ee_function.arguments if ee_function.arguments is defined else {})} | tojson) ~ '</tool_call>' -%}
{%- endfor -%}
{%- set ee_text = ee_text ~ '\n' ~ ee_call_text.text if ee_text else ee_call_text.text -%}
{%- endif -%}
{%- set ee.msgs = ee.msgs + [dict(ee_kept, content=ee_text)] -%}
{%- endif -%}
{%- endfor -%}
{%- if ee.tools and not @TOOLS@ -%}
{%- set ee_listing = namespace(text=@TOOLS_PREAMBLE@) -%}
{%- for tool in ee.tools -%}{%- set ee_listing.text = ee_listing.text ~ ee_json_without_nulls(tool) ~ '\n' -%}{%- endfor -%}
{%- set ee_listing.text = ee_listing.text ~ @TOOLS_SUFFIX@ -%}
{%- if ee.msgs and ee.msgs[0].role == 'system' -%}
{%- set ee_first = ee.msgs[0] -%}
{%- set ee.msgs = [dict(ee_first, content=(ee_first.content ~ '\n\n' ~ ee_listing.text if ee_first.content else ee_listing.text))] + ee.msgs[1:] -%}
{%- else -%}
{%- set ee.msgs = [{'role': 'system', 'content': ee_listing.text}] + ee.msgs -%}
{%- endif -%}
{%- set ee.tools = none -%}
{%- endif -%}
{%- if not @TOOL_ROLE@ -%}
{%- set ee_runs = namespace(msgs=[], pending=none) -%}
{%- for m in ee.msgs -%}
{%- if m.role == 'tool' -%}
{%- set ee_block = '<tool_response>\n' ~ (m.content or '') ~ '\n</tool_response>' -%}
{%- set ee_runs.pending = ee_runs.pending ~ '\n' ~ ee_block if ee_runs.pending is not none else ee_block -%}
{%- else -%}
{%- if ee_runs.pending is not none -%}
{%- set ee_runs.msgs = ee_runs.msgs + [{'role': 'user', 'content': ee_runs.pending}] -%}
{%- set ee_runs.pending = none -%}
{%- endif -%}
{%- set ee_runs.msgs = ee_runs.msgs + [m] -%}
{%- endif -%}
{%- endfor -%}
{%- if ee_runs.pending is not none -%}{%- set ee_runs.msgs = ee_runs.msgs + [{'role': 'user', 'content': ee_runs.pending}] -%}{%- endif -%}
{%- set ee.msgs = ee_runs.msgs -%}
{%- endif -%}
{%- if not @SYSTEM_ROLE@ -%}
{%- set ee_system = namespace(text='', index=0, leading=true) -%}
{%- for m in ee.msgs -%}
{%- if ee_system.leading and m.role in ['system', 'developer'] -%}
{%- if m.content -%}{%- set ee_system.text = ee_system.text ~ '\n\n' ~ m.content if ee_system.text else m.content -%}{%- endif -%}
{%- set ee_system.index = ee_system.index + 1 -%}
{%- else -%}
{%- set ee_system.leading = false -%}
{%- endif -%}
{%- endfor -%}
{%- set ee_rest = ee.msgs[ee_system.index:] -%}
{%- if ee_system.text and ee_rest and ee_rest[0].role == 'user' -%}
{%- set ee.msgs = [dict(ee_rest[0], content=ee_system.text ~ '\n\n' ~ (ee_rest[0].content or ''))] + ee_rest[1:] -%}
{%- elif ee_system.text -%}
{%- set ee.msgs = [{'role': 'user', 'content': ee_system.text}] + ee_rest -%}
{%- else -%}
{%- set ee.msgs = ee_rest -%}
{%- endif -%}
{%- endif -%}
{%- if not @CALL_IDS@ -%}
{%- set ee_ids = namespace(msgs=[]) -%}
{%- for m in ee.msgs -%}
{%- set ee_m = m -%}
{%- if m.tool_calls is defined and m.tool_calls -%}
{%- set ee_mapped = namespace(calls=[]) -%}
{%- for call in m.tool_calls -%}{%- set ee_mapped.calls = ee_mapped.calls + [dict(call, id=(ee_call_id(call.id) | string))] -%}{%- endfor -%}
{%- set ee_m = dict(ee_m, tool_calls=ee_mapped.calls) -%}
{%- endif -%}
{%- if m.role == 'tool' -%}{%- set ee_m = dict(ee_m, tool_call_id=(ee_call_id(m.tool_call_id) | string)) -%}{%- endif -%}
{%- set ee_ids.msgs = ee_ids.msgs + [ee_m] -%}
{%- endfor -%}
{%- set ee.msgs = ee_ids.msgs -%}
{%- endif -%}
{%- if not @CONTENT_PARTS@ -%}
{%- set ee_parts = namespace(msgs=[]) -%}
{%- for m in ee.msgs -%}{%- set ee_parts.msgs = ee_parts.msgs + [dict(m, content=[{'type': 'text', 'text': (m.content or '')}])] -%}{%- endfor -%}
{%- set ee.msgs = ee_parts.msgs -%}
{%- endif -%}
{%- set messages = ee.msgs -%}
{%- set tools = ee.tools -%}
"""


def serving_template(template: str, support: TemplateSupport) -> str | None:
    """A chat template that renders a server's requests as :func:`render_prompt` renders them with ``support``: the
    fallbacks for ``template``'s limits (a Jinja preamble rewriting ``messages`` and ``tools``), then ``template``
    itself. ``None`` when ``template`` needs no fallback (serve it as it is).

    An adapter trained on rows rendered with fallbacks must be served with them too: a server rendering requests
    with the model's own template (vLLM's default) would show it prompts unlike its training rows, and, where tool
    calls became ``<tool_call>`` text, parse its answers with another tool-call format. With calls as text, serve with
    vLLM's ``hermes`` tool-call parser, which reads exactly that text."""
    flags = {
        "@TOOLS@": support.tools,
        "@TOOL_CALLS@": support.tool_calls,
        "@TOOL_ROLE@": support.tool_role,
        "@SYSTEM_ROLE@": support.system_role,
        "@CALL_IDS@": support.call_id_format is None,
        "@CONTENT_PARTS@": not support.content_parts,
    }
    if all(flags.values()):
        return None
    preamble = _SERVING_PREAMBLE
    for marker, value in flags.items():
        preamble = preamble.replace(marker, "true" if value else "false")
    described = "; ".join(f"{key}: {how}" for key, how in support.describe().items() if how != "chat template")
    preamble = (
        preamble.replace("@DESCRIBE@", described.replace("#}", "# }"))
        .replace("@PARSER@", "" if support.tool_calls else "--enable-auto-tool-choice --tool-call-parser hermes")
        .replace("@TOOLS_PREAMBLE@", json.dumps(TOOLS_PREAMBLE))
        .replace("@TOOLS_SUFFIX@", json.dumps(TOOLS_SUFFIX))
        .replace("@ID_ALPHABET@", _ID_ALPHABET)
        .replace("@ID_MODULUS@", str(_ID_MODULUS))
        .replace("@ID_BASE@", str(_ID_BASE))
        .replace("@ID_POWERS@", str([62**power for power in range(8, -1, -1)]))
    )
    return preamble + template
