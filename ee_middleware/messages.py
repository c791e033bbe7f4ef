"""Conversions between the message shapes that meet in this library.

* OpenAI chat messages: the shape stored in records and exported for fine-tuning.
* OpenTelemetry GenAI messages (``gen_ai.input.messages``): ``{"role", "parts": [...]}`` with parts
  of type ``text``, ``tool_call`` and ``tool_call_response``.
* LangChain message objects, converted with ``langchain_core`` (imported lazily: only the capture
  path has it loaded already).

Plus :func:`to_jsonable` / :func:`dumps`, which turn anything a tool may return into JSON without
raising, and which replace unpaired surrogates that UTF-8 cannot encode.

A reasoning model's reasoning is kept apart from what it said, in the shape vLLM's reasoning parsers
return it: ``reasoning_content`` on the OpenAI assistant message (only when there is some, so other
messages are unchanged), a ``reasoning`` part in GenAI messages. It is read from LangChain's
``reasoning``/``thinking`` content blocks, from the fields servers return it in (on an OpenAI-shaped
message, or in a LangChain message's ``additional_kwargs``: ``reasoning_content``; ``reasoning``, vLLM's
newer name, Ollama's /v1 and OpenRouter's; ``thinking``, Ollama's /api/chat and the gpt-oss chat template's;
OpenRouter's ``reasoning_details``), from GenAI ``reasoning`` and ``thinking`` (Pydantic AI) parts, and from
reasoning written inline at the start of the text (``<think>...</think>``, a model served without a
reasoning parser), which never stays in ``content`` (:func:`split_reasoning`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import functools
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

Message = dict[str, Any]


def clean_text(text: str) -> str:
    """Replace unpaired surrogates (which UTF-8, Parquet and JSON readers reject) with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # UTF-16 rejoins split surrogate pairs and turns each lone surrogate into one U+FFFD
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


MAX_JSON_DEPTH = 200
"""How deep :func:`to_jsonable` follows nested values (a tool call's arguments, an environment); deeper ones become the
text ``"<nested too deep>"`` (a value that holds itself would not end). LangChain itself fails on arguments some 400
levels deep; 64 cut arguments a real tool had received whole (a sweep)."""


def to_jsonable(value: Any, _depth: int = 0, *, unknown: Callable[[Any], Any] | None = None) -> Any:
    """Turn ``value`` into plain JSON data, as pydantic's JSON mode writes the types it knows (an enum member its value,
    a UUID its text, a date, time or duration ISO 8601 text; a ``Decimal`` is a number: :func:`decimal_number`); a
    numpy scalar or array is its Python value (``tolist()``), a float that is no finite number its text (``"nan"``,
    ``"inf"``: JSON has none); objects JSON cannot hold become their ``repr``, or what ``unknown`` makes of them."""
    if _depth > MAX_JSON_DEPTH:
        return "<nested too deep>"
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {_key_text(k): to_jsonable(v, _depth + 1, unknown=unknown) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, _depth + 1, unknown=unknown) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"type": "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, _depth + 1, unknown=unknown)
    if isinstance(value, (uuid.UUID, dt.timedelta)):
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(value)  # "PT4H" for 4 hours, as pydantic writes (and reads back) a duration
    if isinstance(value, Decimal):
        return decimal_number(value)
    library = type(value).__module__.partition(".")[0]
    if library in ("numpy", "pandas") and callable(getattr(value, "tolist", None)):
        # numpy's scalars and arrays, a pandas Series (a DataFrame's cell or column, an environment built with them):
        # their Python values, not their repr ('np.int64(7)'), which would rebuild a world from text
        return to_jsonable(value.tolist(), _depth + 1, unknown=unknown)
    if library == "pandas" and type(value).__name__ == "NAType":  # pd.NA, a nullable column's missing value (NaT: a datetime)
        return None
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        try:
            return to_jsonable(model_dump(mode="json"), _depth + 1, unknown=unknown)
        except Exception:  # noqa: BLE001 - fall through to repr
            pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), _depth + 1, unknown=unknown)
    return unknown(value) if unknown is not None else clean_text(repr(value))


def _key_text(key: Any) -> str:
    """A mapping's key as JSON's text: an enum member, a UUID, a date, time or duration as :func:`to_jsonable` writes
    them as values; any other key its ``str``."""
    if isinstance(key, enum.Enum):
        key = key.value  # (a str or int enum's str() is "Tier.gold" before Python 3.12)
    if isinstance(key, (uuid.UUID, dt.date, dt.time, dt.timedelta)):
        key = to_jsonable(key)
    return clean_text(str(key))


def decimal_number(value: Decimal) -> int | float | str:
    """A ``Decimal`` as a JSON number: an integer where it is whole, a float where the float is the same number, else
    (and for NaN or infinity) its text, which no float would keep exactly."""
    if not value.is_finite():
        return str(value)
    if value == value.to_integral_value():
        return int(value)
    number = float(value)
    return number if Decimal(repr(number)) == value else str(value)


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is not finite (NaN, infinity: not JSON) replaced by None, in dicts, lists and
    tuples at any depth: what a file or ``--json`` answer meant for other programs holds (``null``, never ``NaN``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """JSON text for ``value`` (compact, UTF-8, never raises on odd objects)."""
    try:  # the C encoder for the common case; odd objects go through to_jsonable one by one
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=to_jsonable)
    except (ValueError, TypeError, RecursionError):  # NaN, non-string keys, cycles
        text = json.dumps(to_jsonable(value), ensure_ascii=False, separators=(",", ":"))
    return clean_text(text)


def content_to_text(content: Any) -> str:
    """Flatten message content (a string or a list of content blocks) into text.

    Text blocks give their text, a line apart (joined with ``"\\n"``, as LangChain's ``convert_to_openai_messages``
    and vLLM join a message's text parts: what the model read; an empty one adds nothing). A block that is not text
    (an image, audio, a video, a file, in any dialect: see :func:`media_placeholder`) gives a short placeholder on its
    own line, never its inline bytes, followed by the text it carries when it carries text (a document block with its
    ``text``, an Anthropic document whose source is text): the model read that text. A block of a kind not known here
    gives its JSON, with inline data and huge strings left out (:func:`_without_payloads`). One mapping on its own is a
    media block only when it holds media (data, a URL, a file id): a tool's own ``{"type": "file", "name": ...}`` stays
    its JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    media = media_placeholder(content) if isinstance(content, Mapping) and _holds_media(content) else None
    if media is not None:  # one block on its own
        return _with_carried_text(media, content)
    if isinstance(content, Sequence):
        text = ""
        after_media = False
        for block in content:
            media = media_placeholder(block) if isinstance(block, Mapping) else None
            if media is not None:
                piece = _with_carried_text(media, block)
            elif isinstance(block, str):
                piece = block
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                piece = block["text"]
            elif isinstance(block, Mapping) and isinstance(block.get("content"), str):
                piece = block["content"]
            else:
                piece = dumps(_without_payloads(to_jsonable(block)))
            if text and piece:
                if media is None and not after_media:
                    text += "\n"  # text blocks one after the other: a line apart, as LangChain and vLLM join them
                elif not text[-1].isspace() and not piece[0].isspace():
                    text += "\n"  # a placeholder stands on its own line
            text += piece
            after_media = media is not None
        return text
    return dumps(content)


# --- content that is not text ------------------------------------------------------------------

_MEDIA_KINDS = {
    "image_url": "image",
    "input_image": "image",
    "image": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "audio": "audio",
    "video_url": "video",
    "video": "video",
    "input_file": "file",
    "file": "file",
    "document": "document",
    "blob": "",
    "uri": "",
    "media": "",
}
"""Content block types that are not text, and the kind each says (empty: from its ``modality`` or mime type).
LangChain's standard blocks (``image``/``audio``/``video``/``file`` with ``base64``/``url``/``file_id``) and
its 0.3 data blocks (``source_type``), OpenAI chat (``image_url``, ``input_audio``, ``file``) and Responses
(``input_image``, ``input_file``), Anthropic (``image``/``document`` with a ``source``), MCP (``data`` and
``mimeType``), the GenAI conventions' ``blob``/``uri``/``file`` parts, vLLM's ``video_url``/``audio_url``,
Google's ``media``."""

_NESTED = ("source", "image_url", "input_audio", "audio_url", "video_url", "file")
_DATA_KEYS = ("base64", "data", "file_data", "bytes")
_URL_KEYS = ("url", "uri", "file_url", "file_uri", "image_url")
_MIME_KEYS = ("mime_type", "media_type", "mimeType")
_NAME_KEYS = ("filename", "name", "title")
_MAX_URL_CHARS = 500
_BASE64_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_DATA_URL_RE = re.compile(r"data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)


def _holds_media(block: Mapping[str, Any]) -> bool:
    """Whether a mapping carries media (inline data, a URL, a file id, a nested source), not only a ``type``."""
    if block.get("type") == "blob" and block.get("content"):  # a GenAI blob part holds its data under "content"
        return True
    return any(block.get(key) for key in (*_NESTED, *_DATA_KEYS, *_URL_KEYS, "file_id"))


def _with_carried_text(placeholder: str, block: Mapping[str, Any]) -> str:
    """A media block's placeholder, and the text the block carries (a document's ``text``, a text source's data)."""
    source = block.get("source")
    carried = block.get("text")
    if not isinstance(carried, str) and isinstance(source, Mapping) and source.get("type") == "text":
        carried = source.get("data")
    if not isinstance(carried, str) and block.get("source_type") == "text":
        carried = block.get("text") or block.get("data")
    return f"{placeholder}\n{carried}" if isinstance(carried, str) and carried.strip() else placeholder


def media_placeholder(block: Mapping[str, Any]) -> str | None:
    """The text that stands for a content block that is not text, or None for any other block.

    It says what was there: the kind (image, audio, video, document, file), the mime type, the file's
    name, then where it is: the size of inline data (never the data), the URL, or the file id. One
    placeholder whichever dialect the block came in, e.g. ``[image: image/png, 150.0 KB]``,
    ``[image: https://example.com/cat.png]``, ``[file: application/pdf, report.pdf, file id file-abc]``."""
    kind = block.get("type")
    if not isinstance(kind, str) or kind not in _MEDIA_KINDS:
        return None
    fields: dict[str, Any] = dict(block)
    source_type = block.get("source_type")
    for key in _NESTED:
        nested = block.get(key)
        if isinstance(nested, Mapping):
            fields.update({k: v for k, v in nested.items() if k != "type"})
            if key == "source":
                source_type = nested.get("type")
        elif isinstance(nested, str) and key == "image_url":
            fields["url"] = nested
    if kind == "blob" or source_type == "text":
        fields.setdefault("data", fields.get("content"))
    mime = _first_str(fields, _MIME_KEYS)
    data = next((fields[k] for k in _DATA_KEYS if isinstance(fields.get(k), (str, bytes, bytearray)) and fields[k]), None)
    url = _first_str(fields, _URL_KEYS)
    if url and url[:5].lower() == "data:":
        data, url = url, None
    size = None
    if data is not None:
        data_mime, size = _payload_size(data, text=source_type == "text")
        mime = mime or data_mime
    file_id = _first_str(fields, ("file_id",)) or (_first_str(fields, ("id",)) if source_type == "id" else None)
    audio_format = fields.get("format")
    if not mime and isinstance(audio_format, str) and audio_format:
        mime = f"{_MEDIA_KINDS[kind] or 'audio'}/{audio_format}"
    modality = block.get("modality")
    said = (modality if isinstance(modality, str) and modality else None) or _MEDIA_KINDS[kind]
    said = said or (mime.split("/")[0] if mime and mime.split("/")[0] in ("image", "audio", "video") else "file")
    details = [mime, _first_str(fields, _NAME_KEYS)]
    if size is not None:
        details.append(_human_size(size))
    elif url:
        details.append(url if len(url) <= _MAX_URL_CHARS else url[: _MAX_URL_CHARS - 1] + "…")
    elif file_id:
        details.append(f"file id {file_id}")
    details = [clean_text(" ".join(d.split())) for d in details if d]
    return f"[{said}: {', '.join(details)}]" if details else f"[{said}]"


def _first_str(fields: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    return next((fields[k] for k in keys if isinstance(fields.get(k), str) and fields[k]), None)


def _payload_size(data: str | bytes | bytearray, *, text: bool = False) -> tuple[str | None, int]:
    """(mime type of a data URL or None, size in bytes) of inline data: base64 text, a data URL, raw bytes,
    or (``text``) plain text."""
    if not isinstance(data, str):
        return None, len(data)
    if text:
        return None, len(data.encode("utf-8", "replace"))
    match = _DATA_URL_RE.match(data)
    if match:
        payload = data[match.end() :]
        if ";base64" not in match.group(2).lower():
            return match.group(1) or None, len(payload.encode("utf-8", "replace"))
        return match.group(1) or None, _base64_size(payload)
    return None, _base64_size(data)


def _base64_size(text: str) -> int:
    stripped = "".join(text.split())
    return max(0, len(stripped) * 3 // 4 - (len(stripped) - len(stripped.rstrip("="))))


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if value < 1024 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


_MIN_BASE64_CHARS = 256
_MAX_STRING_CHARS = 4096
_KEPT_CHARS = 1000


def _without_payloads(value: Any) -> Any:
    """JSON data with inline data (data URLs, base64 of 256+ characters) replaced by a note of its size,
    and other strings over 4096 characters cut to their first 1000 with a note of what was left out:
    the JSON of a content block of a kind not known here stays short."""
    if isinstance(value, str):
        if value[:5].lower() == "data:" and _DATA_URL_RE.match(value):
            mime, size = _payload_size(value)
            return f"<data URL, {mime}, {_human_size(size)}>" if mime else f"<data URL, {_human_size(size)}>"
        if len(value) >= _MIN_BASE64_CHARS and _BASE64_RE.fullmatch(value):
            return f"<base64, {_human_size(_base64_size(value))}>"
        if len(value) > _MAX_STRING_CHARS:
            return f"{value[:_KEPT_CHARS]}… <{len(value) - _KEPT_CHARS} more characters>"
        return value
    if isinstance(value, dict):
        return {k: _without_payloads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_payloads(v) for v in value]
    return value


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict, from a dict or JSON text; non-objects go under ``"_raw"``."""
    if isinstance(arguments, Mapping):
        return dict(to_jsonable(arguments))
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except json.JSONDecodeError:
            return {"_raw": clean_text(arguments)}
        return decoded if isinstance(decoded, dict) else {"_raw": decoded}
    return {"_raw": to_jsonable(arguments)}


def arguments_json(arguments: Any, *, schema: Mapping[str, Any] | None = None) -> str:
    """A tool call's arguments as an OpenAI ``tool_calls`` item holds them: what the model wrote, as it saw it again in
    its history.

    - Text is decided on itself: text that decodes to a JSON object gives that object's JSON (:func:`dumps`); any other
      text (no JSON: a malformed call, LangChain's ``invalid_tool_calls``; or JSON that is no object, ``"hello"`` or
      ``[1, 2]``) is given back as written (cleaned, :func:`~ee_middleware.text.clean_text`); empty text is ``{}``.
    - A mapping gives its JSON, except exactly ``{"_raw": "<text>"}`` with text that is no JSON: that is how a malformed
      call's text is held once parsed (:func:`parse_arguments`), so the text is given back, never an object with a
      ``_raw`` key the model did not write. Where ``schema`` (the tool's schema, OpenAI or flat) declares a ``_raw``
      parameter, the mapping is the tool's own argument and stays JSON. Without the schema, a real ``_raw`` argument
      whose value is text that is no JSON cannot be told from a malformed call and is shown as that text (one whose
      value is JSON text stays an object, as text that decodes to JSON was never held under ``_raw`` as text).
    - Any other value (a list or a number written as the arguments) gives its JSON."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        if not arguments.strip():
            return "{}"
        try:
            decoded = json.loads(arguments)
        except (ValueError, RecursionError):
            return clean_text(arguments)
        return dumps(to_jsonable(decoded)) if isinstance(decoded, dict) else clean_text(arguments)
    if not isinstance(arguments, Mapping):
        return dumps(to_jsonable(arguments))
    parsed = dict(to_jsonable(arguments))
    raw = parsed.get("_raw")
    if len(parsed) == 1 and isinstance(raw, str) and not declares_raw(schema):
        try:
            json.loads(raw)
        except (ValueError, RecursionError):
            return raw  # JSON text would have been decoded: only text that is no JSON was kept as it is
    return dumps(parsed)


def declares_raw(schema: Any) -> bool:
    """Whether a tool schema (OpenAI ``{"type": "function", "function": {...}}``, flat, or Anthropic ``input_schema``)
    declares a parameter named ``_raw``: then ``{"_raw": ...}`` is the tool's own argument, not a malformed call's text
    (see :func:`parse_arguments`)."""
    inner = schema.get("function", schema) if isinstance(schema, Mapping) else None
    parameters = (inner.get("parameters") or inner.get("input_schema")) if isinstance(inner, Mapping) else None
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    return isinstance(properties, Mapping) and "_raw" in properties


def one_line(text: str | None, width: int) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``width`` characters with an ellipsis."""
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def unusable_reasons(failures: dict[str, int], most: int = 5) -> str:
    """The reasons a model's answers (an experience model's predictions, a policy's proposals) were unusable
    (``failures``: counts by reason), the most frequent first, with their counts."""
    reasons = sorted(failures.items(), key=lambda item: (-item[1], item[0]))
    shown = "; ".join(f"{one_line(reason, 160)} ({count})" for reason, count in reasons[:most])
    return shown + (f"; {len(reasons) - most} other reason(s)" if len(reasons) > most else "")


def decode_tool_call(call: Any) -> Any:
    """An OpenAI ``tool_calls`` item with its ``arguments`` decoded from JSON text to an object,
    as chat templates expect. Empty text becomes ``{}``; an item whose arguments are not valid JSON
    (or that is not a function call) is returned unchanged."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return call
    return {**call, "function": {**call["function"], "arguments": arguments}}


def with_decoded_arguments(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with every tool call's arguments decoded (see :func:`decode_tool_call`)."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            message = {**message, "tool_calls": [decode_tool_call(call) for call in message["tool_calls"]]}
        out.append(message)
    return out


# --- LangChain -> OpenAI ---------------------------------------------------------------------


def langchain_to_openai(messages: Iterable[Any]) -> list[Message]:
    """Convert LangChain messages (objects, tuples or dicts) to OpenAI chat messages."""
    base_message, convert_to_messages = _langchain_messages()
    items = list(messages)
    if not all(isinstance(message, base_message) for message in items):  # (it gives message objects back as they are)
        items = convert_to_messages(items)
    return [_langchain_message_to_openai(message) for message in items]


@functools.cache
def _langchain_messages() -> tuple[type, Any]:
    """LangChain's ``BaseMessage`` and ``convert_to_messages``, imported once (``langchain_core.messages`` resolves each
    name at every import statement; capture converts one message at a time)."""
    from langchain_core.messages import BaseMessage, convert_to_messages

    return BaseMessage, convert_to_messages


def message_type(message: Any) -> Any:
    """A LangChain message's ``type`` ("ai", "human", "tool", ...), a streamed chunk's (``AIMessageChunk``, whose
    ``type`` is its class name) as its whole message's; ``None`` for an object without one (a dict, a tuple) or whose
    ``type`` is no string (a pandas DataFrame with a ``type`` column: its column, which no comparison may be asked of)."""
    kind = getattr(message, "type", None)
    return CHUNK_TYPES.get(kind, kind) if isinstance(kind, str) else None


CHUNK_TYPES = {
    "AIMessageChunk": "ai",
    "HumanMessageChunk": "human",
    "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool",
    "ChatMessageChunk": "chat",
    "FunctionMessageChunk": "function",
}
"""The ``type`` of each of LangChain's message chunks (what ``model.stream()`` yields, and what a node that streams
its model and adds the chunks up puts in the graph's state), and of the message it is a piece of."""


def _langchain_message_to_openai(message: Any) -> Message:
    kind = message_type(message)
    role = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}.get(kind, kind)
    if kind == "chat" and isinstance(getattr(message, "role", None), str) and message.role:
        # a ChatMessage says its role itself (as LangChain's convert_to_openai_messages reads it)
        role = {"human": "user", "ai": "assistant"}.get(message.role, message.role)
    content = message.content
    reasoning: list[str] = []
    if kind == "ai":
        reasoning = _block_reasoning(content) or _fields_reasoning(getattr(message, "additional_kwargs", None) or {})
        content = _assistant_content(content, NOT_ASSISTANT_TEXT)  # its reasoning, and its calls (in tool_calls)
    converted: Message = {"role": role, "content": content_to_text(content)}
    if kind == "ai":
        inline, converted["content"] = split_reasoning(converted["content"])
        if inline is not None and inline not in reasoning:
            reasoning.append(inline)
        if reasoning:
            converted["reasoning_content"] = clean_text("\n\n".join(reasoning))
        calls = [
            {
                "id": call.get("id") or "",
                "type": "function",
                "function": {"name": call["name"], "arguments": dumps(call.get("args") or {})},
            }
            for call in getattr(message, "tool_calls", None) or []
        ]
        # a call whose arguments did not parse (malformed JSON from the model): kept as the model
        # wrote it, as OpenAI returns it (arguments the raw text; parse_arguments puts it under "_raw")
        calls += [
            {
                "id": call.get("id") or "",
                "type": "function",
                "function": {"name": call.get("name") or "", "arguments": _raw_arguments(call.get("args"))},
            }
            for call in getattr(message, "invalid_tool_calls", None) or []
        ]
        if calls:
            converted["tool_calls"] = calls
    elif kind == "tool":
        converted["tool_call_id"] = message.tool_call_id
    name = getattr(message, "name", None)
    if name and kind in ("tool", "human", "ai"):
        converted["name"] = name
    return converted


NOT_ASSISTANT_TEXT = frozenset(
    {
        "reasoning",
        "thinking",
        "redacted_thinking",
        "tool_call",
        "tool_call_chunk",
        "invalid_tool_call",
        "tool_use",
        "function_call",
        # tools the provider ran itself (web search, code execution) and their results
        "server_tool_call",
        "server_tool_call_chunk",
        "server_tool_result",
        "server_tool_use",
        "mcp_tool_use",
        "mcp_tool_result",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
    }
)
"""Content blocks of a LangChain AI message that are not what the model said: its reasoning (LangChain's
standard ``reasoning`` block, Anthropic's ``thinking``/``redacted_thinking``), the tool calls its
``tool_calls`` already carry (standard ``tool_call`` blocks, Anthropic's ``tool_use``, OpenAI's ``function_call``), and
the calls of tools the provider ran itself with their results (LangChain's standard ``server_tool_call`` /
``server_tool_result``, Anthropic's ``server_tool_use``, ``web_search_tool_result`` and the like): ``message.text``
leaves them out too."""


_REASONING_BLOCKS = frozenset({"reasoning", "thinking", "redacted_thinking"})


def _assistant_content(content: Any, leave_out: frozenset[str] = _REASONING_BLOCKS) -> Any:
    """An assistant's content without the blocks of ``leave_out`` (its reasoning: it is not what the model said)."""
    if isinstance(content, list):
        return [b for b in content if not (isinstance(b, Mapping) and b.get("type") in leave_out)]
    return content


def _block_reasoning(content: Any) -> list[str]:
    """The reasoning in an assistant's content blocks: ``reasoning`` blocks (LangChain's standard ``reasoning`` text, or
    the ``summary`` texts of OpenAI's Responses API) and Anthropic ``thinking`` blocks. Redacted thinking gives none."""
    pieces: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and block.get("type") == "reasoning":
                pieces.extend(_reasoning_texts(block.get("reasoning"), block.get("summary")))
            elif isinstance(block, Mapping) and block.get("type") == "thinking":
                pieces.extend(_reasoning_texts(block.get("thinking")))
    return pieces


REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
"""The fields a reply carries its reasoning in, beside its content, the first that has some wins: ``reasoning_content``
(vLLM before 0.11, DeepSeek, and LangChain's chat models for DeepSeek, Ollama, xAI, Groq, OpenRouter in
``additional_kwargs``), ``reasoning`` (vLLM from 0.11, gpt-oss on vLLM and Ollama's /v1, OpenRouter; LangChain's
Responses API ``additional_kwargs``, a dict with a ``summary``) and ``thinking`` (Ollama's /api/chat, the gpt-oss chat
template). OpenRouter's ``reasoning_details`` is read where none of them has any (:func:`_details_texts`)."""


def _fields_reasoning(fields: Mapping[str, Any]) -> list[str]:
    """The reasoning in a reply's fields (an OpenAI-shaped message, a LangChain message's ``additional_kwargs``)."""
    for key in REASONING_FIELDS:
        value = fields.get(key)
        if value is None:  # the usual case, on capture's path for every assistant message: nothing to read
            continue
        pieces = _reasoning_texts(value, value.get("summary") if isinstance(value, Mapping) else None)
        if pieces:
            return pieces
    details = fields.get("reasoning_details")
    return _details_texts(details) if details is not None else []


def _details_texts(details: Any) -> list[str]:
    """The texts of OpenRouter's ``reasoning_details``: ``reasoning.text`` entries' ``text``, ``reasoning.summary``
    entries' ``summary``; ``reasoning.encrypted`` has none. (Streamed fragments are one entry per ``index`` once
    LangChain adds the chunks.)"""
    if not isinstance(details, list):
        return []
    pieces = []
    for entry in details:
        if not isinstance(entry, Mapping):
            continue
        text = entry.get("text") if entry.get("type") == "reasoning.text" else None
        text = entry.get("summary") if entry.get("type") == "reasoning.summary" else text
        if isinstance(text, str) and text.strip():
            pieces.append(text)
    return pieces


def _reasoning_texts(text: Any, summary: Any = None) -> list[str]:
    if isinstance(text, str):
        return [text] if text.strip() else []
    if isinstance(summary, list):
        return [s["text"] for s in summary if isinstance(s, Mapping) and isinstance(s.get("text"), str) and s["text"].strip()]
    return []


_THINK_START = re.compile(r"\s*<(think|thinking)>")
_THINK_END = re.compile(r"</think(?:ing)?>(?=[ \t]*(?:\n|\Z))")  # ending its line, as models write it (not in a sentence)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(reasoning, answer)`` of an assistant's text that starts with its reasoning inline, as a reasoning model
    (Qwen3, QwQ, DeepSeek-R1) served without a reasoning parser writes it: a leading ``<think>...</think>`` block; one
    never closed (the model was cut off while reasoning: all of it is reasoning); or text up to a ``</think>`` ending its
    line whose opening tag the chat template wrote into the prompt (DeepSeek-R1-0528, Qwen3 thinking-2507). The reasoning comes
    without its surrounding whitespace, the answer without the whitespace that separated them (as Qwen3's template
    splits them). ``(None, text)`` for text that holds no reasoning; an empty block gives ``None`` and the answer."""
    if "think" not in text:  # most text: no regex over it
        return None, text
    start = _THINK_START.match(text)
    if start is not None:
        close = text.find(f"</{start.group(1)}>", start.end())
        if close < 0:
            reasoning, answer = text[start.end() :], ""
        else:
            reasoning, answer = text[start.end() : close], text[close + len(start.group(1)) + 3 :]
    else:
        end = _THINK_END.search(text)
        if end is None or "<think" in text[: end.start()]:
            return None, text
        reasoning, answer = text[: end.start()], text[end.end() :]
    return (reasoning.strip() or None), answer.lstrip()


def _raw_arguments(args: Any) -> str:
    return clean_text(args) if isinstance(args, str) else dumps(args) if args is not None else ""


def openai_tool_schemas(tools: Iterable[Any] | None) -> list[dict[str, Any]]:
    """Normalise tool definitions (OpenAI, flat GenAI, or LangChain tools) to OpenAI form."""
    schemas: list[dict[str, Any]] = []
    for tool in tools or []:
        if isinstance(tool, Mapping):
            schemas.append(_normalise_tool_schema(tool))
        else:
            from langchain_core.utils.function_calling import convert_to_openai_tool

            schemas.append(convert_to_openai_tool(tool))
    return [s for s in schemas if s]


def _normalise_tool_schema(tool: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(tool.get("function"), Mapping):
        function = dict(tool["function"])
    elif "name" in tool:
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
    else:
        return {}
    function.setdefault("parameters", {"type": "object", "properties": {}})
    return {"type": "function", "function": to_jsonable(function)}


# --- OpenAI <-> GenAI semantic-convention messages ------------------------------------------


def openai_to_genai(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """OpenAI chat messages -> GenAI ``gen_ai.input.messages`` items."""
    converted = []
    for message in messages:
        role = message.get("role", "user")
        parts: list[dict[str, Any]] = []
        if role == "tool":
            parts.append(
                {
                    "type": "tool_call_response",
                    "id": message.get("tool_call_id", ""),
                    "response": content_to_text(message.get("content")),
                }
            )
        else:
            reasoning = message_reasoning(message) if role == "assistant" else None
            if reasoning:
                parts.append({"type": "reasoning", "content": reasoning})
            text = content_to_text(_assistant_content(message.get("content")) if role == "assistant" else message.get("content"))
            if text:
                parts.append({"type": "text", "content": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function", {})
                parts.append(
                    {
                        "type": "tool_call",
                        "id": call.get("id", ""),
                        "name": function.get("name", ""),
                        "arguments": genai_arguments(function.get("arguments")),
                    }
                )
        item: dict[str, Any] = {"role": role, "parts": parts}
        if message.get("name"):
            item["name"] = message["name"]
        converted.append(item)
    return converted


def genai_arguments(arguments: Any) -> Any:
    """A ``tool_call`` part's arguments: the object (:func:`parse_arguments`), or, for text that is no JSON object (a
    malformed call, or JSON such as ``"hello"`` or ``[1, 2]``), that text as written, so that :func:`genai_to_openai`
    gives back what the model wrote (the conventions allow any value here), and an object there is always one the model
    wrote, never ``{"_raw": ...}`` made of text that was none."""
    if isinstance(arguments, str) and arguments.strip():
        try:
            decoded = json.loads(arguments)
        except (ValueError, RecursionError):
            return clean_text(arguments)
        return decoded if isinstance(decoded, dict) else clean_text(arguments)  # (what parse_arguments gives: decoded once)
    return parse_arguments(arguments)


def message_reasoning(message: Mapping[str, Any]) -> str | None:
    """The reasoning an OpenAI-shaped message carries apart from its text: its reasoning or thinking content blocks,
    else its reasoning fields (``reasoning_content``, ``reasoning``, ``thinking``, OpenRouter's ``reasoning_details``:
    see :data:`REASONING_FIELDS`); ``None`` when it has none."""
    pieces = _block_reasoning(message.get("content")) or _fields_reasoning(message)
    return "\n\n".join(pieces) if pieces else None


def genai_to_openai(messages: Iterable[Mapping[str, Any]], *, object_arguments: bool = False) -> list[Message]:
    """GenAI ``{"role", "parts"}`` messages -> OpenAI chat messages.

    Also accepts messages that are already in OpenAI shape (``content``/``tool_calls``), which some
    instrumentations emit under the GenAI attribute names.

    A tool call's arguments are given as :func:`arguments_json` writes them. ``object_arguments``: the messages were
    written by :func:`openai_to_genai` (ee-middleware's capture), whose calls hold an object only where the model wrote
    one (:func:`genai_arguments`: text that is no JSON object stays text): each object is given as its JSON, a real
    ``{"_raw": "hello"}`` included (LangChain's ``tool_calls`` entry), where other recorders' ``{"_raw": "<text>"}`` is
    read as the text a parser put there.
    """
    out: list[Message] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError(f"a message must be an object, got {type(message).__name__}")
        if "parts" not in message:
            out.append(_openai_shaped(message, object_arguments))
            continue
        role = str(message.get("role") or "user")
        texts: list[Any] = []  # text, and the parts that are not text (blob, uri, file): content_to_text says them
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        responses: list[Message] = []
        for part in message.get("parts") or []:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                texts.append(content_to_text(part.get("content")))
            elif kind in ("reasoning", "thinking") and isinstance(part.get("content"), str) and part["content"].strip():
                reasoning.append(part["content"])  # the conventions' reasoning part; Pydantic AI writes "thinking"
            elif kind in _MEDIA_KINDS:
                texts.append(part)
            elif kind == "tool_call":
                calls.append(
                    {
                        "id": str(part.get("id") or ""),
                        "type": "function",
                        "function": {
                            "name": str(part.get("name") or ""),
                            "arguments": _call_arguments(part.get("arguments"), object_arguments),
                        },
                    }
                )
            elif kind == "tool_call_response":
                responses.append(
                    {
                        "role": "tool",
                        "tool_call_id": str(part.get("id") or ""),
                        "content": _response_text(part.get("response")),
                    }
                )
        out.extend(responses)  # one tool message per response, right after the calls they answer
        text = content_to_text(texts)
        if responses and not text and not calls:
            continue
        # text beside the responses (an Anthropic-style user turn: tool results, then what the user adds)
        converted: Message = {"role": role, "content": text}
        if role == "assistant":
            _set_reasoning(converted, "\n\n".join(reasoning) or None)
        if calls:
            converted["tool_calls"] = calls
        if message.get("name"):
            converted["name"] = message["name"]
        out.append(converted)
    return out


def _call_arguments(arguments: Any, object_arguments: bool) -> str:
    """A call's arguments as :func:`genai_to_openai` gives them (see its ``object_arguments``)."""
    if object_arguments and isinstance(arguments, Mapping):
        return dumps(to_jsonable(arguments))
    return arguments_json(arguments)


def _response_text(response: Any) -> str:
    """A tool's response as the model saw it: text as it is, content blocks (text, images, ...) as their
    text (see :func:`content_to_text`), anything else (the tool's own JSON) as JSON.

    A parsed value cannot give back the text it was parsed from: it is written as :func:`dumps` writes it (no spaces
    after ``,`` and ``:``, non-ASCII as it is, numbers as Python spells them: ``1.50`` as ``1.5``, ``1e5`` as
    ``100000.0``, whitespace around it dropped). Where a span also holds the text, ingest puts the text here
    (:mod:`ee_middleware.ingest.dialects`)."""
    if isinstance(response, str):
        return response
    if _is_content_blocks(response):
        return content_to_text(response)
    return dumps(response)


LANGCHAIN_TOOL_BLOCK_TYPES = frozenset(
    {"text", "image_url", "image", "json", "search_result", "custom_tool_call_output", "document", "file"}
)
"""The block types LangGraph's ToolNode keeps as a ToolMessage's content (langchain_core.tools.base.TOOL_MESSAGE_BLOCK_TYPES)."""


def kept_as_tool_content(value: Any) -> bool:
    """Whether LangGraph's ToolNode makes a tool's return value the ToolMessage's content as it is (a list of blocks of
    :data:`LANGCHAIN_TOOL_BLOCK_TYPES`; a list with plain strings becomes its JSON, as any other value): capture then
    stores its :func:`content_to_text` (an image as its placeholder)."""
    return isinstance(value, list) and all(isinstance(x, dict) and x.get("type") in LANGCHAIN_TOOL_BLOCK_TYPES for x in value)


def _is_content_blocks(value: Any) -> bool:
    """Whether ``value`` is one content block that is not text, or a list of text and such blocks (and not a
    tool's own JSON that happens to have ``type`` fields)."""
    if isinstance(value, Mapping):
        return _holds_media(value) and media_placeholder(value) is not None
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(b, Mapping)
            and ((b.get("type") == "text" and isinstance(b.get("text", b.get("content")), str)) or media_placeholder(b) is not None)
            for b in value
        )
    )


def _set_reasoning(converted: Message, reasoning: str | None) -> None:
    """Give an assistant message its ``reasoning_content``: ``reasoning``, or the reasoning written inline at the
    start of its text (taken out of ``content``, see :func:`split_reasoning`); nothing when it has none."""
    inline, converted["content"] = split_reasoning(converted["content"])
    reasoning = reasoning or inline
    if reasoning:
        converted["reasoning_content"] = reasoning


def _openai_shaped(message: Mapping[str, Any], object_arguments: bool = False) -> Message:
    role = str(message.get("role") or "user")
    content = message.get("content")
    converted: Message = {"role": role, "content": content_to_text(_assistant_content(content) if role == "assistant" else content)}
    if converted["role"] == "assistant":
        _set_reasoning(converted, message_reasoning(message))
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or call
        calls.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {
                    "name": str(function.get("name") or ""),
                    "arguments": _call_arguments(function.get("arguments", call.get("args")), object_arguments),
                },
            }
        )
    if calls:
        converted["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if message.get(key):
            converted[key] = str(message[key])
    return converted
