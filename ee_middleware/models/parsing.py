"""Read tool calls out of model output, whatever shape the model chose, without ever raising.

Reasoning is not read for calls: ``<think>...</think>`` blocks (Qwen3, QwQ, DeepSeek-R1; also an
answer that holds only the closing tag because the chat template opened the block) are dropped
first, so a call the model only considered while thinking is not taken for one it made.

Accepted shapes, tried in this order:

- ``<function=name>...</function>`` calls: Qwen3-Coder's ``<parameter=p>value</parameter>`` tags inside (in
  ``<tool_call>`` blocks or not; a value is read as JSON when it is JSON, else kept as text), or Llama 3.1/3.3's
  JSON object of arguments (Meta's custom-tool format, ``<function=name>{"p": 1}</function>``); any other body is a
  problem;
- ``<tool_call>{...}</tool_call>`` blocks (Hermes, Qwen, SmolLM2 style), possibly several;
- a name in a model family's markers followed by its JSON arguments: Mistral's
  ``[TOOL_CALLS]name[ARGS]{...}`` (``[TOOL_CALLS][{...}]`` is read as JSON below), gpt-oss's
  ``to=functions.name ... {...}``, DeepSeek's ``function SEP name`` (V3, R1) and ``name SEP {...}`` (V3.1),
  SEP being its tool-separator token;
- fenced code blocks (```` ```json ... ``` ````);
- the whole text as JSON: ``{"name": ..., "arguments"|"parameters": {...}}`` (``arguments`` may be
  a JSON string), a list of those, OpenAI ``{"type": "function", "function": {...}}`` items, or a
  chat message with ``tool_calls``; ``{"name": ...}`` alone (or with a call's own keys: an id, an index, a thought) is
  a call to a tool without arguments; one whose arguments are under another key (``args``, ``input``) is a problem
  naming it; in plain text (not inside call markup nor ``tool_calls``), an object with a ``name``, a record's fields
  and neither ``arguments`` nor ``parameters`` is a record the model wrote (``{"name": "report.pdf", "size": 48213}``),
  not a call, unless ``param_order`` offers a tool of that name;
- Python call syntax: ``name(a=1, b='x')`` or ``[f(a=1), g()]``, read with :mod:`ast` and
  ``ast.literal_eval`` on each argument node (never ``eval``): only literal values are accepted;
- JSON objects or Python calls embedded in prose.

BFCL's suites read answers as bfcl-eval's function-calling runner does (``bfcl=True`` of :func:`from_openai_message`,
``whole=True`` of :func:`parse_tool_calls`): a structured call's name as sent and its arguments by ``json.loads``, and
calls in the text only from an answer that is wholly calls (never one quoted in prose); a text-only model's answer
(``anywhere=True``) as bfcl-eval's handlers for local models read it: its chat template's call blocks wherever they
stand. Every other caller gets the lenient reading above.

Every function here returns :class:`ParseProblem` items for what it cannot read; none raises on bad
input.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ee_middleware.models.protocol import clip, message_refusal, parts_text
from ee_middleware.records import ToolCall

_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_TAG_OPEN = "<tool_call>"
_TAG_CLOSE = re.compile(r"\s*(?:</tool_call>|\Z)")
_BLOCK_DECODER = json.JSONDecoder()
_SPACES = re.compile(r"\s*")
_THINK_BLOCK = re.compile(r"<(think|thinking)>.*?</\1>", re.DOTALL)
_THINK_OPEN = re.compile(r"<think(?:ing)?>")
_THINK_CLOSE = re.compile(r"</think(?:ing)?>")
_NAME = r"([A-Za-z_][A-Za-z0-9_.:-]*)"
# A call's name in a model family's own markers, its JSON arguments following (up to the next one):
# Mistral (tokenizer v11+), gpt-oss (harmony, with or without its special tokens), DeepSeek V3/R1 and V3.1.
_SEP = r"<\uff5ctool\u2581sep\uff5c>"  # DeepSeek's tool-separator token, written with full-width bars
_NAMED_CALL = re.compile(
    r"\[TOOL_CALLS\]\s*" + _NAME + r"\s*\[ARGS\]"
    r"|\bto=functions\."
    + _NAME
    + r"|function"
    + _SEP
    + r"\s*"
    + _NAME
    + r"|<\uff5ctool\u2581call\u2581begin\uff5c>\s*(?!function"
    + _SEP
    + ")"
    + _NAME
    + r"\s*"
    + _SEP
)
_XML_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.DOTALL)
_XML_PARAMETER = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)
# Markers some models write before a call, which are not part of it.
_CALL_MARKERS = ("<|python_tag|>", "[TOOL_CALLS]", "<|tool_call|>")
_FENCED = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_CALL_START = re.compile(r"\[?\s*[A-Za-z_][A-Za-z0-9_.]*\s*\(")
# Where an embedded tool call can start: an object with a key, or a list of objects.
_JSON_START = re.compile(r'\{\s*"|\[\s*\{')
_MAX_EMBEDDED_TRIES = 64
_JSON_LITERALS = {"true": True, "false": False, "null": None}
_MAX_TEXT_CHARS = 50_000
_MAX_RAW_IN_PROBLEM = 120
NOT_AN_OBJECT = "arguments must be a JSON object"
"""The start of the problem of a call whose arguments are JSON, but not an object (a list, a string, null)."""
# What may frame the calls of an answer that is wholly calls: special tokens a server left in (<|im_end|>, </s>,
# DeepSeek's tool-call tokens with full-width bars), code fences and whitespace.
_MARKUP = re.compile(r"<\|[^|<>]*\|>|<\uff5c[^\uff5c<>]*\uff5c>|</s>|```[A-Za-z0-9_-]*")
_LAST_MARKUP = re.compile(f"(?:{_MARKUP.pattern})\\Z")
_TOOL_CALL_TAG = re.compile(r"</?tool_call>")
# gpt-oss's harmony header before a call in the commentary channel (its analysis channel is its reasoning).
_HARMONY_HEADER = re.compile(r"\s*(?:analysis.*?)?(?:assistant)?\s*(?:commentary)?\s*", re.DOTALL)
# The call blocks bfcl-eval's handlers for local models read wherever they stand in a text answer
# (model_handler/local_inference): QwenFCHandler._extract_tool_calls (also Granite 4's, Nanbeige's, Pelican-VL's and
# Arch's) and PhiFCHandler._extract_tool_calls (its second pattern when the first finds nothing).
_QWEN_FC_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)
_PHI_FC_BLOCK = re.compile(r"<\|tool_call\|>(.*?)<\|/tool_call\|>", re.DOTALL)
_PHI_FC_OPEN_BLOCK = re.compile(r"<\|tool_call\|>(.*?)(?:<\|/tool_call\|>)?$", re.DOTALL)


@dataclass(frozen=True)
class ParseProblem:
    """A piece of model output that could not be read as a tool call, and why."""

    problem: str
    raw: str = ""


ParsedCall = ToolCall | ParseProblem
ParamOrder = Mapping[str, Sequence[str]]


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
"""One encoder for every :func:`canonical_json` (``json.dumps`` with these options builds a new one per call)."""


def canonical_json(value: Any) -> str:
    """Stable JSON text for ``value`` (sorted keys, no spaces): equal values give equal text."""
    return _CANONICAL.encode(value)


def canonical_call(name: str, arguments: Mapping[str, Any]) -> str:
    """The identity of a tool call for duplicate detection: its name and arguments, ids ignored."""
    return canonical_json({"name": name, "arguments": dict(arguments)})


def call_id(name: str, arguments: Mapping[str, Any], index: int = 0, *, prefix: str = "alt") -> str:
    """A deterministic call id for a call that came without one: ``alt-<hash of name, arguments, index>``."""
    return call_id_of(canonical_call(name, arguments), index, prefix=prefix)


def call_id_of(key: str, index: int = 0, *, prefix: str = "alt") -> str:
    """:func:`call_id` of a call whose :func:`canonical_call` is ``key`` (for a caller that has computed it already)."""
    digest = hashlib.sha1(f"{key}#{index}".encode(), usedforsecurity=False).hexdigest()
    return f"{prefix}-{digest[:12]}"


def parse_tool_calls(
    text: str | bytes | None,
    *,
    param_order: ParamOrder | None = None,
    whole: bool = False,
    anywhere: bool = False,
    executed: bool = False,
) -> list[ParsedCall]:
    """Every tool call found in ``text``, or a single :class:`ParseProblem` saying why there is none.

    ``param_order`` (tool name -> argument names in order) lets Python-style positional arguments
    ``f(1, 'x')`` be mapped to names; without it they are a problem.

    ``whole`` (BFCL's suites): calls only from a text that is wholly calls, reasoning aside: ``<tool_call>`` blocks
    (Qwen3-Coder's ``<function=...>`` ones too), a model family's markers (``[TOOL_CALLS]``, ``to=functions.``,
    DeepSeek's), or the whole text as JSON or Python call syntax; special tokens, code fences and whitespace around them
    are allowed, prose is not: nothing is read from a call quoted in prose.

    ``anywhere`` (BFCL's suites, a text-only model's answer): as ``whole``, except that a model family's call blocks are
    read wherever they stand, the prose around them ignored, as bfcl-eval's handlers for local models read a text answer:

    - ``<tool_call>\\n...\\n</tool_call>`` blocks as Qwen FC's handler (also Granite 4's, Nanbeige's, Pelican-VL's,
      Arch's) reads them: each block ``json.loads``-ed, a block that is not JSON skipped; a block that is JSON but not
      ``{"name": ..., "arguments": {...}}`` leaves the answer with no call (one problem);
    - ``<|tool_call|>[...]<|/tool_call|>`` as Phi FC's handler reads it (the closing tag may be missing): every item
      exactly ``{"name", "arguments"}``, else no call;
    - Qwen3-Coder's ``<function=...>`` calls and the markers of Mistral (``[TOOL_CALLS]name[ARGS]``), gpt-oss and
      DeepSeek, which no bfcl-eval handler reads.

    An answer without these is read as with ``whole``: a bare JSON or Python call, ``<tool_call>`` blocks written
    otherwise (no newlines inside the tags), ``<|python_tag|>`` and ``[TOOL_CALLS][...]`` (bfcl-eval's Llama and
    Mistral handlers decode the whole answer too) only when the answer is wholly calls.

    ``executed`` (with ``anywhere``; BFCL's multi-turn categories, whose calls are run): as those handlers'
    ``decode_execute`` reads the blocks, a call's ``arguments`` may also be the JSON text of an object (``decode_ast``,
    for the categories scored on the calls alone, refuses it).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text.strip():
        return [ParseProblem("the output is empty", "" if text is None else str(text))]
    if len(text) > _MAX_TEXT_CHARS:
        return [ParseProblem(f"the output is too long to be a tool call ({len(text)} characters)", text[:_MAX_RAW_IN_PROBLEM])]
    answer, unfinished = without_reasoning(text)
    if not answer.strip():
        if unfinished:
            return [
                ParseProblem(
                    "the output ends inside a <think> block: the model was still reasoning (give it more max_tokens)", _short(text)
                )
            ]
        return [ParseProblem("the output holds only reasoning (<think>...</think>), no tool call", _short(text))]
    found = _family_blocks(answer.strip(), executed=executed) if anywhere else None
    if found is not None:
        return _with_ids(found)
    results = (_whole_answer if whole or anywhere else _parse)(answer.strip(), param_order or {})
    return _with_ids(results)


def without_reasoning(text: str) -> tuple[str, bool]:
    """``text`` without its ``<think>`` reasoning, and whether it ends inside an unclosed ``<think>`` block.

    Closed blocks are removed; a closing tag without its opening one (the chat template opened the
    block) drops everything before it; an opening tag without its closing one drops everything after.
    """
    answer = _THINK_BLOCK.sub("", text)
    closings = list(_THINK_CLOSE.finditer(answer))
    if closings:
        answer = answer[closings[-1].end() :]
    opening = _THINK_OPEN.search(answer)
    if opening is None:
        return answer, False
    return answer[: opening.start()], True


def from_openai_message(message: Any, *, param_order: ParamOrder | None = None, bfcl: bool = False) -> list[ParsedCall]:
    """The tool calls of a chat-completion ``message``; its text content is parsed when it has none.

    ``tool_calls[*].function.arguments`` is a JSON string in the OpenAI format (a JSON object is
    accepted too); arguments that are not valid JSON become a :class:`ParseProblem`.

    ``bfcl`` (BFCL's suites): as bfcl-eval's OpenAI function-calling handler decodes an answer (``decode_ast``): each
    call's name as sent and ``json.loads`` of its arguments text, once (``NaN`` accepted; empty text, ``null``, a list
    or a string encoded twice is a problem, not ``{}``); no legacy ``function_call``; the content read with
    ``whole=True`` (:func:`parse_tool_calls`).
    """
    if not isinstance(message, Mapping):
        return [ParseProblem(f"the message is not a JSON object but {type(message).__name__}", _short(message))]
    tool_calls = message.get("tool_calls")
    if tool_calls:
        if not isinstance(tool_calls, list):
            return [ParseProblem("'tool_calls' is not a list", _short(tool_calls))]
        return _with_ids([(_from_fc_call if bfcl else _from_json_call)(item) for item in tool_calls])
    legacy = message.get("function_call")
    if isinstance(legacy, Mapping) and not bfcl:
        return _with_ids([_from_json_call(legacy)])
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = parts_text(content)
    refusal = message_refusal(message)
    if refusal is not None and not (isinstance(content, str) and content.strip()):
        return [ParseProblem(f"the model refused: {clip(refusal, 300)}", _short(message))]
    if not content:
        from ee_middleware.messages import message_reasoning  # the one reader of every server's reasoning fields

        if (message_reasoning(message) or "").strip():
            return [ParseProblem("the message holds only reasoning (reasoning_content), neither tool_calls nor content", _short(message))]
        return [ParseProblem("the message has neither tool_calls nor content", _short(message))]
    return parse_tool_calls(content, param_order=param_order, whole=bfcl)


def _from_fc_call(item: Any) -> ParsedCall:
    """A structured call as bfcl-eval's OpenAI function-calling handler decodes it (see :func:`from_openai_message`)."""
    function = item.get("function") if isinstance(item, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(name, str) or not name:
        return ParseProblem("the tool call has no 'function.name' string", _short(item))
    raw = function.get("arguments")
    if not isinstance(raw, str):
        return ParseProblem(f"{name}: arguments are not JSON text but {type(raw).__name__}", _short(raw))
    try:
        arguments = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return ParseProblem(f"{name}: arguments are not valid JSON ({exc})", raw[:_MAX_RAW_IN_PROBLEM])
    if not isinstance(arguments, dict):
        return ParseProblem(f"{name}: {NOT_AN_OBJECT}, got {type(arguments).__name__}", _short(raw))
    given_id = item.get("id")
    return ToolCall(id=given_id if isinstance(given_id, str) else "", name=name, arguments=arguments)


def _whole_answer(text: str, order: ParamOrder) -> list[ParsedCall]:
    """The calls of a text that is wholly calls (see ``whole`` of :func:`parse_tool_calls`), else one problem."""
    if _XML_FUNCTION.search(text):
        return _xml_calls(text) if _only_markup(_TOOL_CALL_TAG.sub("", _XML_FUNCTION.sub("", text))) else [_not_whole(text)]
    blocks, rest = _tagged_blocks(text)
    if blocks:
        if not _only_markup(rest):
            return [_not_whole(text)]
        return [item for block in blocks for item in _parse_block(block.strip(), order)]
    if _NAMED_CALL.search(text):
        return _named_calls(text, whole=True)
    fenced = _FENCED.fullmatch(text.strip())
    if fenced is not None and fenced.group(1).strip():  # one fenced block, the whole answer: its content (bfcl-eval's
        text = fenced.group(1).strip()  # prompting handlers strip the backticks; a text call is read more leniently here)
    for marker in _CALL_MARKERS:
        if text.startswith(marker) and (payload := _without_trailing_markup(text[len(marker) :]).strip()):
            if marker == "<|python_tag|>":
                return _llama_calls(payload, order)
            return _parse_block(payload, order)
    return _parse_block(_without_trailing_markup(text), order, bare=True)


def _llama_calls(payload: str, order: ParamOrder) -> list[ParsedCall]:
    """The calls after Llama 3.1's ``<|python_tag|>``: one JSON call, or several separated by ``;`` as bfcl-eval's Llama
    3.1 handler reads them (``{"name": ...}; {"name": ...}``; a ``;`` inside a string stays the string's here, where that
    handler splits at every one: text calls are read more leniently than bfcl-eval and counted apart, ``text_calls``), or
    Python call syntax."""
    parsed = _parse_block(payload, order)
    if ";" not in payload or not (len(parsed) == 1 and isinstance(parsed[0], ParseProblem)):
        return parsed
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    calls: list[ParsedCall] = []
    at = 0
    while at < len(payload):
        try:
            item, at = decoder.raw_decode(payload, at)
        except (ValueError, RecursionError):
            return parsed
        calls += _from_json_payload(item, order)
        rest = payload[at:].lstrip()
        if rest and not rest.startswith(";"):
            return parsed
        rest = rest[1:].lstrip() if rest else rest
        at = len(payload) - len(rest)
    problems = [call for call in calls if isinstance(call, ParseProblem)]
    return problems or calls or parsed


def _family_blocks(text: str, *, executed: bool) -> list[ParsedCall] | None:
    """The calls of a model family's blocks wherever they stand in ``text`` (``anywhere`` and ``executed`` of
    :func:`parse_tool_calls`); None when it holds none."""
    if _XML_FUNCTION.search(text):
        return _xml_calls(text)
    blocks = _QWEN_FC_BLOCK.findall(text)
    if blocks:
        return _qwen_fc_calls(blocks, text, executed=executed)
    if "<|tool_call|>" in text:
        return _phi_fc_calls(text, executed=executed)
    if _NAMED_CALL.search(text):
        return _named_calls(text)
    return None


def _qwen_fc_calls(blocks: list[str], text: str, *, executed: bool) -> list[ParsedCall]:
    """``<tool_call>`` blocks as bfcl-eval's ``QwenFCHandler`` reads them (``_extract_tool_calls``, then ``decode_ast``,
    or ``decode_execute`` where the calls are ``executed``)."""
    decoded = []
    for block in blocks:
        try:
            decoded.append(json.loads(block))
        except (ValueError, RecursionError):
            continue  # bfcl-eval skips a block it cannot load
    if not decoded:
        return [ParseProblem("no <tool_call> block holds JSON, so the answer has no call", _short(text))]
    calls = [_template_call(item, "<tool_call> block", executed=executed) for item in decoded]
    problems = [call for call in calls if isinstance(call, ParseProblem)]
    return problems or calls


def _phi_fc_calls(text: str, *, executed: bool) -> list[ParsedCall]:
    """``<|tool_call|>`` blocks as bfcl-eval's ``PhiFCHandler`` reads them: the JSON list in each block (objects not in a
    list are made one), every item exactly ``{"name", "arguments"}``; anything else leaves the answer with no call."""
    items: list[Any] = []
    for match in _PHI_FC_BLOCK.findall(text) or _PHI_FC_OPEN_BLOCK.findall(text):
        if not match.startswith("[") and not match.endswith("]"):
            match = f"[{match}]"
        try:
            value = json.loads(match)
        except (ValueError, RecursionError) as exc:
            return [ParseProblem(f"a <|tool_call|> block is not JSON ({exc})", _short(match))]
        items.extend(value if isinstance(value, list) else [value])
    if not items or any(not isinstance(item, dict) or set(item) != {"name", "arguments"} for item in items):
        return [ParseProblem('a <|tool_call|> block holds something else than {"name", "arguments"} calls', _short(text))]
    calls = [_template_call(item, "<|tool_call|> item", executed=executed) for item in items]
    problems = [call for call in calls if isinstance(call, ParseProblem)]
    return problems or calls


def _template_call(item: Any, where: str, *, executed: bool) -> ParsedCall:
    """A decoded call block: ``{"name": ..., "arguments": {...}}``, as bfcl-eval's local handlers take it (the name as
    written, the arguments an object, no other shape; where the calls are ``executed``, also the JSON text of one, which
    ``convert_to_function_call`` loads)."""
    if not isinstance(item, dict):
        return ParseProblem(f"a {where} holds JSON but not a call object ({type(item).__name__})", _short(item))
    name, arguments = item.get("name"), item.get("arguments")
    if not isinstance(name, str) or not name:
        return ParseProblem(f"a {where} has no 'name' string", _short(item))
    if executed and isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as exc:
            return ParseProblem(f"{name}: arguments are not valid JSON ({exc})", _short(item))
    if not isinstance(arguments, dict):
        return ParseProblem(f"{name}: {NOT_AN_OBJECT} under 'arguments', got {type(arguments).__name__}", _short(item))
    return ToolCall(id="", name=name, arguments=arguments)


def _only_markup(text: str) -> bool:
    """Whether ``text`` holds nothing but special tokens, code fences and whitespace (:data:`_MARKUP`)."""
    return not _MARKUP.sub("", text).strip()


def _without_trailing_markup(text: str) -> str:
    """``text`` without the special tokens, code fences and whitespace at its end (:data:`_MARKUP`)."""
    text = text.rstrip()
    while (last := _LAST_MARKUP.search(text)) is not None:
        text = text[: last.start()].rstrip()
    return text


def _not_whole(text: str) -> ParseProblem:
    return ParseProblem("the answer holds text besides its tool calls, so they are not read (calls in prose are not calls)", _short(text))


def _parse(text: str, order: ParamOrder) -> list[ParsedCall]:
    xml = _xml_calls(text)
    if xml:
        return xml
    tagged, _ = _tagged_blocks(text)
    if tagged:
        return [item for block in tagged for item in _parse_segment(block.strip(), order)]
    named = _named_calls(text)
    if named:
        return named
    for marker in _CALL_MARKERS:  # '<|python_tag|>f(x=1)' is the call 'f(x=1)'
        if text.startswith(marker) and text[len(marker) :].strip():
            return _parse_segment(text[len(marker) :].strip(), order)
    fenced = [block.strip() for block in _FENCED.findall(text) if block.strip()]
    if fenced:
        results = [item for block in fenced for item in _parse_segment(block, order, bare=True)]
        if any(isinstance(r, ToolCall) for r in results):
            return results
    return _parse_segment(text, order, bare=True)


def _tagged_blocks(text: str) -> tuple[list[str], str]:
    """The contents of the ``<tool_call>`` blocks in ``text``, in order, and the text outside them.

    A block that opens with a JSON value closed by ``</tool_call>`` or the end of the text (whitespace around it aside)
    is that value, read with the JSON decoder: a ``</tool_call>`` inside one of its strings (a call writing a document
    about tool calls) is part of the call, as :func:`~ee_middleware.models.chat_template.tool_call_text` rendered it.
    Any other block runs to the first ``</tool_call>`` after its opening tag, or to the end of the text."""
    blocks: list[str] = []
    outside: list[str] = []
    pos = 0
    while (start := text.find(_TAG_OPEN, pos)) >= 0:
        outside.append(text[pos:start])
        inside = start + len(_TAG_OPEN)
        try:
            _, stop = _BLOCK_DECODER.raw_decode(text, _SPACES.match(text, inside).end())
        except (ValueError, RecursionError):
            stop = None
        closing = _TAG_CLOSE.match(text, stop) if stop is not None else None
        if closing is not None:
            block, end = text[inside:stop], closing.end()
        else:
            match = _TAGGED.match(text, start)
            block, end = (match.group(1), match.end()) if match else (text[inside:], len(text))
        blocks.append(block)
        pos = end
    outside.append(text[pos:])
    return blocks, "".join(outside)


def _named_calls(text: str, *, whole: bool = False) -> list[ParsedCall]:
    """Calls whose name a model family's marker gives (:data:`_NAMED_CALL`), each with the JSON object after it.

    ``whole``: one problem instead when anything but markup (:func:`_only_markup`; gpt-oss's channel header) comes
    before the first marker, between a name and its object, or after an object."""
    starts = list(_NAMED_CALL.finditer(text))
    calls: list[ParsedCall] = []
    if whole and not _only_markup(text[: starts[0].start()] if starts else text):
        header = _MARKUP.sub("", text[: starts[0].start()])
        if not (starts[0].group(0).startswith("to=functions.") and _HARMONY_HEADER.fullmatch(header)):
            return [_not_whole(text)]
    for index, match in enumerate(starts):
        name = next(group for group in match.groups() if group)
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        segment = text[match.end() : end]
        brace = segment.find("{")
        try:  # the JSON object after the name; what follows it (end-of-call tokens, a closing fence) is not part of it
            decoded, stop = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(segment, brace) if brace >= 0 else ({}, 0)
            arguments = _decode_arguments(decoded)
            if whole and not (_only_markup(segment[stop:]) and _MARKUP.sub("", segment[: max(brace, 0)]).strip() in ("", "json")):
                return [_not_whole(text)]
        except (ValueError, RecursionError) as exc:
            arguments = ParseProblem(f"arguments are not valid JSON ({exc})")
        if isinstance(arguments, ParseProblem):
            calls.append(ParseProblem(f"{name}: {arguments.problem}", _short(text[match.start() : end])))
        else:
            calls.append(ToolCall(id="", name=name, arguments=arguments))
    return calls


def _xml_calls(text: str) -> list[ParsedCall]:
    """The ``<function=name>...</function>`` calls in ``text``: Qwen3-Coder's ``<parameter=p>value</parameter>`` tags, or
    Llama 3.1/3.3's JSON object (Meta's custom-tool format, ``<function=name>{"p": value}</function>``)."""
    calls: list[ParsedCall] = []
    for function in _XML_FUNCTION.finditer(text):
        name, body = function.group(1), function.group(2)
        if _XML_PARAMETER.search(body) is None:
            calls.append(_function_tag_call(name, body, function.group(0)))
            continue
        arguments = {}
        for parameter in _XML_PARAMETER.finditer(body):
            value = parameter.group(2)
            try:
                arguments[parameter.group(1)] = _loads(value)
            except (ValueError, RecursionError):
                arguments[parameter.group(1)] = value
        calls.append(ToolCall(id="", name=name, arguments=arguments))
    return calls


def _function_tag_call(name: str, body: str, raw: str) -> ParsedCall:
    """A ``<function=name>`` call whose body has no ``<parameter=...>`` tags: no arguments when it is empty (Qwen3-Coder's
    call without parameters), else the JSON object it holds (Llama 3.1/3.3), or a Python-literal dict (single quotes, as
    Meta's own reader accepts), special tokens after either aside (a call whose ``</function>`` a server cut off, the
    ``<|eom_id|>`` it kept); anything else is a problem, never a call without arguments."""
    start = _SPACES.match(body).end()
    if start == len(body):
        return ToolCall(id="", name=name, arguments={})
    try:
        decoded, stop = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(body, start)
    except (ValueError, RecursionError):  # special tokens after the dict aside too, as after a JSON object
        decoded, stop = _python_literal(_without_trailing_markup(body).strip()), len(body)
        if decoded is None:
            return ParseProblem(
                f"{name}: the <function={name}> call holds neither a JSON object of arguments nor <parameter=...> tags", _short(raw)
            )
    if not _only_markup(body[stop:]):
        return ParseProblem(f"{name}: the <function={name}> call holds text after its JSON arguments", _short(raw))
    if not isinstance(decoded, dict):
        return ParseProblem(f"{name}: {NOT_AN_OBJECT}, got {type(decoded).__name__}", _short(raw))
    return ToolCall(id="", name=name, arguments=decoded)


def _parse_segment(text: str, order: ParamOrder, *, bare: bool = False) -> list[ParsedCall]:
    """A block as a whole, else the calls embedded in it, else the best explanation of why not (``bare``: plain text,
    not inside call markup; see :func:`_from_json_payload`)."""
    direct = _parse_block(text, order, bare=bare)
    if any(isinstance(r, ToolCall) for r in direct):
        return direct
    embedded = _embedded_json(text, order, bare=bare) or _embedded_python(text, order)
    if embedded:
        return embedded
    return direct if _looks_structured(text) else [ParseProblem("no tool call found in the output", _short(text))]


def _parse_block(block: str, order: ParamOrder, *, bare: bool = False) -> list[ParsedCall]:
    """One candidate payload: JSON (object or list), else a Python call expression."""
    if not block:
        return [ParseProblem("empty tool-call block", "")]
    try:
        payload = _loads(block)
    except (ValueError, RecursionError) as exc:
        if _CALL_START.match(block):
            return _from_python(block, order)
        if block[0] in "[{":
            literal = _python_literal(block)  # single-quoted dicts, True/None: Python-literal JSON
            if literal is not None:
                return _from_json_payload(literal, order, bare=bare)
            return [ParseProblem(f"invalid JSON ({_short(str(exc))})", _short(block))]
        return [ParseProblem("not JSON and not a Python call", _short(block))]
    return _from_json_payload(payload, order, bare=bare)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _loads(text: str) -> Any:
    """Strict JSON: ``NaN`` and ``Infinity`` are refused (tools and stores cannot carry them)."""
    return json.loads(text, parse_constant=_reject_constant)


def _python_literal(block: str) -> Any:
    """A dict or list written as a Python literal, as JSON-compatible data; ``None`` if it is not one."""
    try:
        tree = ast.parse(block, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, (ast.Dict, ast.List)):
        return None
    value = _literal(tree.body)
    return None if isinstance(value, ParseProblem) else value


def _from_json_payload(payload: Any, order: ParamOrder | None = None, *, bare: bool = False) -> list[ParsedCall]:
    """The calls of decoded JSON written in text; ``bare``: found in plain text (the whole answer, a fenced block, prose),
    not inside call markup nor a ``tool_calls`` list, so an object in it may be a record the model wrote."""
    if isinstance(payload, list):
        if not payload:
            return [ParseProblem("an empty JSON list", "[]")]
        return [item for element in payload for item in _from_json_payload(element, order, bare=bare)]
    if isinstance(payload, Mapping) and isinstance(payload.get("tool_calls"), list):
        return [_from_json_call(item, order, written=True) for item in payload["tool_calls"]]
    return [_from_json_call(payload, order, written=True, bare=bare)]


def _from_json_call(item: Any, order: ParamOrder | None = None, *, written: bool = False, bare: bool = False) -> ParsedCall:
    """``{"name", "arguments"|"parameters"}`` or an OpenAI ``{"type": "function", "function": {...}}`` item; a name alone
    is a call to a tool without arguments.

    ``written`` (an object in the model's text, not a server's structured ``tool_calls`` item): one whose arguments
    are under another key (``args``, ``params``, ``kwargs``, ``input``) is a problem saying so, not a call without them.
    ``bare`` (in plain text, not inside call markup: :func:`_from_json_payload`): one with a ``name``, no arguments and
    a record's fields (:func:`_record_fields`) is a record, not a call, unless ``order`` offers a tool of that name."""
    if not isinstance(item, Mapping):
        return ParseProblem(f"expected a JSON object for a tool call, got {type(item).__name__}", _short(item))
    given_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else None
    body = item.get("function") if isinstance(item.get("function"), Mapping) else item
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        return ParseProblem("the tool call has no 'name' string", _short(item))
    if written and body is item and "arguments" not in item and "parameters" not in item:
        shape = _not_a_calls_shape(item, name.strip(), order, bare=bare)
        if shape is not None:
            return ParseProblem(shape, _short(item))
    raw_args = body.get("arguments", body.get("parameters", {}))
    arguments = _decode_arguments(raw_args)
    if isinstance(arguments, ParseProblem):
        return ParseProblem(f"{name}: {arguments.problem}", _short(item))
    return ToolCall(id=given_id or "", name=name.strip(), arguments=arguments)


def _not_a_calls_shape(item: Mapping[str, Any], name: str, order: ParamOrder | None, *, bare: bool) -> str | None:
    """Why an object the model wrote with a ``name`` and neither ``arguments`` nor ``parameters`` is not read as a call
    without arguments, or None when it is one: its arguments under a misnamed key; or, ``bare`` (not inside call
    markup), a record's fields beside the name (``{"name": "report.pdf", "size": 48213}``) where no offered tool has that
    name, or an offered tool's arguments written beside its name."""
    misnamed = misnamed_arguments(item, bare=bare)
    if misnamed is not None:
        return f"the call {name!r} has its arguments under {misnamed!r}: a call's arguments go under 'arguments' (or 'parameters')"
    fields = _record_fields(item) if bare else []
    if not fields:
        return None
    keys = ", ".join(repr(key) for key in fields[:5])
    if order and name in order:
        if set(fields) <= set(order[name]):
            return f"the call {name!r} has its arguments ({keys}) beside its name: a call's arguments go under 'arguments'"
        return None  # an offered tool's call with some other key: read as it always was
    return (
        f"an object with a 'name' and {keys} but neither 'arguments' nor 'parameters' is a record, not a tool call "
        "(a call's arguments go under 'arguments')"
    )


def _decode_arguments(raw: Any) -> dict[str, Any] | ParseProblem:
    """Arguments as a dict: an object, JSON text of one, or that text encoded once more (a server that
    ``json.dumps`` the string a model wrote); ``null`` and empty text are no arguments."""
    for _ in range(2):
        if not isinstance(raw, str):
            break
        if not raw.strip():
            return {}
        try:
            raw = _loads(raw)
        except (ValueError, RecursionError) as exc:
            return ParseProblem(f"arguments are not valid JSON ({exc})", raw[:_MAX_RAW_IN_PROBLEM])
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        return ParseProblem(f"{NOT_AN_OBJECT}, got {type(raw).__name__}", _short(raw))
    return dict(raw)


def _from_python(source: str, order: ParamOrder) -> list[ParsedCall]:
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return [ParseProblem(f"not a valid Python call ({type(exc).__name__})", _short(source))]
    body = tree.body
    calls = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    if not calls:
        return [ParseProblem("an empty list of calls", _short(source))]
    return [_python_call(node, order) if isinstance(node, ast.Call) else _not_a_call(node) for node in calls]


def _not_a_call(node: ast.AST) -> ParseProblem:
    return ParseProblem("expected a function call", _short(_unparse(node)))


def _python_call(node: ast.Call, order: ParamOrder) -> ParsedCall:
    raw = _short(_unparse(node))
    name = _dotted_name(node.func)
    if name is None:
        return ParseProblem("the called object is not a plain function name", raw)
    arguments: dict[str, Any] = {}
    if node.args:
        names = list(order.get(name, ()))
        if not names:
            return ParseProblem(f"{name}: positional arguments need the tool's parameter order; use keyword arguments", raw)
        if len(node.args) > len(names):
            return ParseProblem(f"{name}: {len(node.args)} positional arguments but the tool has {len(names)} parameters", raw)
        for param, value_node in zip(names, node.args, strict=False):
            value = _literal(value_node)
            if isinstance(value, ParseProblem):
                return ParseProblem(f"{name}: argument {param!r} {value.problem}", raw)
            arguments[param] = value
    for keyword in node.keywords:
        if keyword.arg is None:
            return ParseProblem(f"{name}: '**' arguments are not accepted", raw)
        value = _literal(keyword.value)
        if isinstance(value, ParseProblem):
            return ParseProblem(f"{name}: argument {keyword.arg!r} {value.problem}", raw)
        arguments[keyword.arg] = value
    return ToolCall(id="", name=name, arguments=arguments)


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class _JsonLiterals(ast.NodeTransformer):
    """Let ``true``/``false``/``null`` through as the constants models often mean by them."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_LITERALS:
            return ast.copy_location(ast.Constant(_JSON_LITERALS[node.id]), node)
        return node


def _literal(node: ast.expr) -> Any:
    """The value of a literal argument node, as JSON-compatible data, or a :class:`ParseProblem`."""
    try:
        value = ast.literal_eval(_JsonLiterals().visit(node))
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return ParseProblem(f"is not a literal value: {_short(_unparse(node))}")
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ParseProblem(f"is {value}, which JSON cannot carry")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in (sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value)]
        bad = next((i for i in items if isinstance(i, ParseProblem)), None)
        return bad or items
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            converted = _jsonable(item)
            if not isinstance(key, str) or isinstance(converted, ParseProblem):
                return converted if isinstance(converted, ParseProblem) else ParseProblem(f"has a non-string dict key {key!r}")
            out[key] = converted
        return out
    return ParseProblem(f"is a {type(value).__name__}, which JSON cannot carry")


def _embedded_json(text: str, order: ParamOrder | None = None, *, bare: bool = False) -> list[ParsedCall]:
    """Tool-call-like JSON objects or lists inside prose, left to right, not overlapping (``bare``: see
    :func:`_from_json_payload`)."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    found: list[ParsedCall] = []
    pos, misses = 0, 0
    while misses < _MAX_EMBEDDED_TRIES:  # bounds the work on adversarial input like '{"a":' * 10_000
        match = _JSON_START.search(text, pos)
        if match is None:
            break
        try:
            payload, end = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            payload, end = None, 0
        calls = _from_json_payload(payload, order, bare=bare) if _looks_like_call(payload, order, bare=bare) else []
        if calls:  # a call moves past itself, so calls cost no more than reading the text once
            found.extend(calls)
            pos = end
        else:
            pos, misses = match.start() + 1, misses + 1
    return found


def _looks_like_call(payload: Any, order: ParamOrder | None = None, *, bare: bool = False) -> bool:
    """Whether JSON found in prose is in a call's shape (:func:`_from_json_call`); ``bare`` (prose outside call markup):
    not a record that has a ``name`` (:func:`_not_a_calls_shape`; a call with misnamed arguments is one, so its problem
    is told)."""
    if isinstance(payload, list):
        return bool(payload) and all(_looks_like_call(p, order, bare=bare) for p in payload)
    if not isinstance(payload, Mapping) or not ("name" in payload or "function" in payload or "tool_calls" in payload):
        return False
    if not bare or "function" in payload or "tool_calls" in payload or "arguments" in payload or "parameters" in payload:
        return True
    name = payload.get("name")
    if not isinstance(name, str):
        return False
    shape = _not_a_calls_shape(payload, name.strip(), order, bare=True)
    return shape is None or misnamed_arguments(payload, bare=True) is not None


MISNAMED_ARGUMENTS = frozenset({"args", "params", "kwargs", "input", "argument", "parameter"})
"""Keys a model writes a call's arguments under instead of ``arguments``/``parameters`` (Anthropic's ``input``); which of
them hold arguments: :func:`misnamed_arguments`."""


def misnamed_arguments(item: Mapping[str, Any], *, bare: bool = True) -> str | None:
    """The key of :data:`MISNAMED_ARGUMENTS` under which an object with a ``name`` (and neither ``arguments`` nor
    ``parameters``) holds its call's arguments, or None: the one rule the parser and ``ee curriculum run`` share.

    An empty value (``{}``, ``null``, ``""``, ``[]``, ``"{}"``) holds none: ``{"name": "pwd", "input": {}}`` is a call
    without arguments. ``bare`` (plain text, not inside call markup): only an object, or JSON text of one, is arguments,
    so a record's field of that name (``{"name": "bert-base", "params": "110M"}``) is left to the record rule; inside
    call markup any other value is arguments misplaced."""
    for key, value in item.items():
        if key not in MISNAMED_ARGUMENTS or _empty_arguments(value):
            continue
        if not bare or isinstance(value, Mapping) or (isinstance(value, str) and value.lstrip().startswith("{")):
            return key
    return None


def _empty_arguments(value: Any) -> bool:
    """Whether a misnamed key's value holds no arguments (``{}``, ``null``, ``""``, ``[]``, or ``"{}"`` as text)."""
    if isinstance(value, str):
        value = value.strip()
        if value[:1] == "{" and value[1:].strip() == "}":
            return True
    return value is None or (isinstance(value, (Mapping, list, str)) and not value)


CALL_FIELDS = frozenset(
    {"name", "id", "call_id", "tool_call_id", "index", "thought", "thoughts", "thinking", "reasoning", "reason", "rationale"}
    | {"explanation", "description", "comment", "note", "notes"}
)
"""Keys a call's object may carry beside its name and arguments (an id, its place in a list, the model's reason), which
no record's field makes it."""
CALL_TYPES = frozenset({"function", "tool_call", "tool_use", "function_call", "tool"})
"""The values of a ``type`` key that say the object is a call (OpenAI's ``"function"``), not a record (``"file"``)."""


def _record_fields(item: Mapping[str, Any]) -> list[str]:
    """The keys of an object with a ``name`` and no arguments that a call's object does not have (:data:`CALL_FIELDS`;
    a ``type`` naming a call, as OpenAI's ``"function"``; a misnamed arguments key left empty): a file's ``size``, a person's ``email``, a ``"type": "file"``."""
    return [
        key
        for key, value in item.items()
        if key not in CALL_FIELDS
        and not (key == "type" and value in CALL_TYPES)
        and not (key in MISNAMED_ARGUMENTS and _empty_arguments(value))  # {"name": "pwd", "input": {}}: no arguments
    ]


def _embedded_python(text: str, order: ParamOrder) -> list[ParsedCall]:
    """Python calls that stand alone on a line of prose (``Call: ls(a=True)`` is not read)."""
    found: list[ParsedCall] = []
    for line in text.splitlines():
        line = line.strip().strip("`").strip()
        if _CALL_START.match(line):
            calls = _from_python(line, order)
            if any(isinstance(c, ToolCall) for c in calls):
                found.extend(calls)
    return found


def _looks_structured(text: str) -> bool:
    """Whether the text tried to be a call (so its own problem is worth more than 'none found')."""
    return text[:1] in "[{" or bool(_CALL_START.match(text))


def _with_ids(items: list[ParsedCall]) -> list[ParsedCall]:
    out: list[ParsedCall] = []
    for index, item in enumerate(items):
        if isinstance(item, ToolCall) and not item.id:
            item = item.model_copy(update={"id": call_id(item.name, item.arguments, index)})
        out.append(item)
    return out


def _unparse(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except (ValueError, RecursionError):
        return "<unprintable>"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_RAW_IN_PROBLEM else text[: _MAX_RAW_IN_PROBLEM - 3] + "..."
