"""ee_middleware.messages: the message shapes every layer exchanges, and JSON that never raises."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
    convert_to_messages,
    message_chunk_to_message,
)
from langchain_core.tools import tool
from pydantic import BaseModel

from ee_middleware.messages import (
    MAX_JSON_DEPTH,
    clean_text,
    content_to_text,
    decode_tool_call,
    dumps,
    genai_to_openai,
    langchain_to_openai,
    message_type,
    one_line,
    openai_to_genai,
    openai_tool_schemas,
    parse_arguments,
    split_reasoning,
    to_jsonable,
    with_decoded_arguments,
)


def _call(arguments: Any, call_id: str = "c1", name: str = "f") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- round trips (the shapes meet in capture, ingest and export) -----------------------------------


def test_langchain_openai_genai_round_trip():
    messages = [
        SystemMessage("be brief"),
        HumanMessage("hi ✓"),
        AIMessage("", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c1"}]),
        ToolMessage("42", tool_call_id="c1"),
        AIMessage("the answer is 42"),
    ]
    openai = langchain_to_openai(messages)
    assert openai[2]["tool_calls"][0] == {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    assert openai[3] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    assert genai_to_openai(openai_to_genai(openai)) == openai


def test_arguments_and_odd_values_never_raise():
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("not json") == {"_raw": "not json"}
    assert parse_arguments("[1, 2]") == {"_raw": [1, 2]}
    assert parse_arguments(None) == {}
    assert json.loads(dumps({"b": b"\x00\x01", "f": float("nan"), "o": object, "s": {3}})) == {
        "b": {"type": "bytes", "base64": "AAE="},
        "f": "nan",
        "o": "<class 'object'>",
        "s": [3],
    }
    assert clean_text("ok \ud83d\ude80 \udc00") == "ok 🚀 \ufffd"


# --- clean_text -------------------------------------------------------------------------------------


def test_clean_text_keeps_valid_unicode_and_replaces_only_lone_surrogates():
    for text in ("", "plain", "Zürich · 東京 · 🚀", "tab\tnew\nline"):
        assert clean_text(text) == text
    assert clean_text("\ud83d") == "\ufffd"  # a lone high surrogate
    assert clean_text("a\udc00b") == "a\ufffdb"  # a lone low surrogate
    assert clean_text("\ud83d\ude80") == "🚀"  # a pair split into surrogates is joined again
    assert clean_text("x\ud800\ud800y").encode("utf-8") == "x\ufffd\ufffdy".encode()


# --- to_jsonable / dumps ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Point:
    x: int
    label: str


class _Model(BaseModel):
    name: str
    when: dt.date


class _BrokenModel:
    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        raise RuntimeError("cannot dump")

    def __repr__(self) -> str:
        return "<broken model>"


def test_to_jsonable_keeps_json_scalars_and_turns_the_rest_into_json_data():
    assert to_jsonable(None) is None
    assert to_jsonable(True) is True and to_jsonable(0) == 0  # bools stay bools, not ints
    assert to_jsonable(1.5) == 1.5
    assert [to_jsonable(v) for v in (float("nan"), float("inf"), float("-inf"))] == ["nan", "inf", "-inf"]
    assert to_jsonable("a\udc00") == "a\ufffd"
    assert to_jsonable({1: (1, 2), None: {3}, "k\udc00": frozenset()}) == {"1": [1, 2], "None": [3], "k\ufffd": []}
    assert to_jsonable(bytearray(b"\xff")) == {"type": "bytes", "base64": "/w=="}
    assert to_jsonable(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05"
    assert to_jsonable(dt.date(2026, 1, 2)) == "2026-01-02"
    assert to_jsonable(_Model(name="n", when=dt.date(2026, 1, 2))) == {"name": "n", "when": "2026-01-02"}
    assert to_jsonable(_Point(1, "p")) == {"x": 1, "label": "p"}
    assert to_jsonable(_Point) == repr(_Point)  # a dataclass type is not an instance
    assert to_jsonable(_BrokenModel()) == "<broken model>"
    assert to_jsonable(object) == "<class 'object'>"


class _Kind(enum.Enum):
    refund = "refund"
    nested = (1, uuid.UUID(int=1))


@dataclasses.dataclass
class _Verdict:
    kind: _Kind
    ref: uuid.UUID
    amount: decimal.Decimal
    within: dt.timedelta


def test_to_jsonable_writes_stdlib_values_as_pydantic_s_json_mode_does_not_as_their_repr():
    """A UUID, an enum member, a duration, a time and a Decimal (in an environment, a dataclass structured answer) were
    their repr ("UUID('...')", "<Kind.refund: 'refund'>"), which a sandbox or a trainer reading the JSON cannot use."""
    verdict = _Verdict(_Kind.refund, uuid.UUID(int=5), decimal.Decimal("12.50"), dt.timedelta(days=1, seconds=90))
    assert to_jsonable(verdict) == {"kind": "refund", "ref": "00000000-0000-0000-0000-000000000005", "amount": 12.5, "within": "P1DT1M30S"}
    assert to_jsonable(_Kind.nested) == [1, "00000000-0000-0000-0000-000000000001"]
    assert to_jsonable(dt.time(9, 30, 1)) == "09:30:01"
    assert [to_jsonable(decimal.Decimal(v)) for v in ("3", "0.1000000000000000000001", "NaN")] == [3, "0.1000000000000000000001", "NaN"]
    assert json.loads(dumps({"v": verdict})) == {"v": to_jsonable(verdict)}
    keyed = {_Kind.refund: 1, dt.timedelta(hours=4): 2, uuid.UUID(int=1): 3, dt.date(2026, 1, 2): 4, 5: 5, None: 6}
    assert to_jsonable(keyed) == {"refund": 1, "PT4H": 2, "00000000-0000-0000-0000-000000000001": 3, "2026-01-02": 4, "5": 5, "None": 6}


def test_to_jsonable_stops_at_a_depth_limit():
    nested: list[Any] = []
    inner = nested
    for _ in range(MAX_JSON_DEPTH + 36):
        inner.append([])
        inner = inner[0]
    value = to_jsonable(nested)
    depth = 0
    while isinstance(value, list):
        (value,) = value
        depth += 1
    assert (depth, value) == (MAX_JSON_DEPTH + 1, "<nested too deep>")


def test_dumps_is_compact_utf8_json_and_never_raises():
    assert dumps({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'
    assert dumps({1: "int keys are JSON's own"}) == '{"1":"int keys are JSON\'s own"}'
    assert dumps({(1, 2): "x"}) == '{"(1, 2)":"x"}'  # keys JSON cannot hold fall back to their text
    assert dumps({"f": float("nan")}) == '{"f":"nan"}'
    assert dumps("\udc00") == '"\ufffd"'
    assert dumps(dt.date(2026, 1, 2)) == '"2026-01-02"'
    cycle: list[Any] = []
    cycle.append(cycle)
    text = dumps(cycle)  # a cycle becomes nested lists down to the depth limit
    assert isinstance(json.loads(text), list) and text.endswith('"<nested too deep>"' + "]" * (MAX_JSON_DEPTH + 1))
    assert json.loads(dumps({"b": b"\x00"})) == {"b": {"type": "bytes", "base64": "AA=="}}


# --- content_to_text --------------------------------------------------------------------------------


def test_content_to_text_flattens_strings_and_content_blocks():
    assert content_to_text(None) == ""
    assert content_to_text("") == ""
    assert content_to_text("ünïcode") == "ünïcode"
    blocks = ["a", {"type": "text", "text": "b"}, {"content": "c"}, {"type": "citation", "url": "u"}]
    # text blocks a line apart; a small block of a kind it does not know: its JSON
    assert content_to_text(blocks) == 'a\nb\nc\n{"type":"citation","url":"u"}'
    assert content_to_text(("x", "y")) == "x\ny"
    assert content_to_text([]) == ""
    assert content_to_text({"a": 1}) == '{"a":1}'  # a mapping is not a list of blocks
    assert content_to_text(3) == "3"


# --- content that is not text (images, audio, files) ------------------------------------------------

PIXELS = bytes(range(256)) * 600  # 153,600 bytes: 150.0 KB
B64 = base64.b64encode(PIXELS).decode("ascii")
IMAGE = "[image: image/png, 150.0 KB]"


@pytest.mark.parametrize(
    "block",
    [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}", "detail": "high"}},  # LangChain / OpenAI chat
        {"type": "image_url", "image_url": f"data:image/png;base64,{B64}"},
        {"type": "image", "base64": B64, "mime_type": "image/png", "id": "blk-1"},  # LangChain v1 standard block
        {"type": "image", "source_type": "base64", "data": B64, "mime_type": "image/png"},  # LangChain 0.3 data block
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},  # Anthropic
        {"type": "input_image", "image_url": f"data:image/png;base64,{B64}"},  # OpenAI Responses
        {"type": "blob", "modality": "image", "mime_type": "image/png", "content": B64},  # GenAI semantic conventions
        {"type": "image", "data": B64, "mimeType": "image/png"},  # MCP
    ],
)
def test_an_inline_image_is_the_same_short_placeholder_in_every_dialect(block):
    assert content_to_text([block]) == IMAGE
    assert content_to_text(block) == IMAGE  # one block on its own


@pytest.mark.parametrize(
    ("block", "text"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "[image: https://example.com/cat.png]"),
        (
            {"type": "image", "url": "https://example.com/cat.png", "mime_type": "image/png"},
            "[image: image/png, https://example.com/cat.png]",
        ),
        ({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}, "[image: https://example.com/cat.png]"),
        (
            {"type": "uri", "modality": "image", "mime_type": "image/png", "uri": "https://example.com/cat.png"},
            "[image: image/png, https://example.com/cat.png]",
        ),
        ({"type": "image", "file_id": "file-abc"}, "[image: file id file-abc]"),
        ({"type": "image", "source_type": "id", "id": "file-abc"}, "[image: file id file-abc]"),
        ({"type": "image", "source": {"type": "file", "file_id": "file-abc"}}, "[image: file id file-abc]"),
        (
            {"type": "file", "modality": "document", "mime_type": "application/pdf", "file_id": "file-abc"},
            "[document: application/pdf, file id file-abc]",
        ),
        ({"type": "file", "file": {"file_id": "file-abc", "filename": "report.pdf"}}, "[file: report.pdf, file id file-abc]"),
        (
            {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{B64}", "filename": "report.pdf"}},
            "[file: application/pdf, report.pdf, 150.0 KB]",
        ),
        (
            {"type": "file", "base64": B64, "mime_type": "application/pdf", "filename": "report.pdf"},
            "[file: application/pdf, report.pdf, 150.0 KB]",
        ),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": B64}, "title": "Q3"},
            "[document: application/pdf, Q3, 150.0 KB]",
        ),
        ({"type": "input_audio", "input_audio": {"data": B64, "format": "wav"}}, "[audio: audio/wav, 150.0 KB]"),
        ({"type": "audio", "base64": B64, "mime_type": "audio/mpeg"}, "[audio: audio/mpeg, 150.0 KB]"),
        ({"type": "blob", "modality": "audio", "mime_type": "audio/wav", "content": "UklGRg=="}, "[audio: audio/wav, 4 bytes]"),
        ({"type": "video", "url": "https://example.com/v.mp4"}, "[video: https://example.com/v.mp4]"),
        ({"type": "image"}, "[image]"),
    ],
)
def test_a_content_block_that_is_not_text_says_what_was_there(block, text):
    assert content_to_text([block]) == text


def test_placeholders_stand_on_their_own_line_between_texts():
    content = [{"type": "text", "text": "What is this?"}, {"type": "image", "base64": B64, "mime_type": "image/png"}, "Be brief."]
    assert content_to_text(content) == f"What is this?\n{IMAGE}\nBe brief."
    assert content_to_text(["Look:\n", {"type": "image", "file_id": "f"}]) == "Look:\n[image: file id f]"


def test_an_unknown_block_never_puts_a_large_payload_into_text():
    text = content_to_text([{"type": "x-sticker", "name": "cat", "payload": B64}, {"type": "x-note", "body": "n" * 100_000}])
    assert B64[:100] not in text and "n" * 5000 not in text and len(text) < 6000
    first, _ = text.split("}\n{")
    assert json.loads(first + "}") == {"type": "x-sticker", "name": "cat", "payload": "<base64, 150.0 KB>"}
    assert (
        content_to_text([{"type": "x-link", "href": f"data:image/gif;base64,{B64}"}])
        == '{"type":"x-link","href":"<data URL, image/gif, 150.0 KB>"}'
    )


def test_genai_media_parts_become_the_placeholder_beside_the_text():
    [message] = genai_to_openai(
        [
            {
                "role": "user",
                "parts": [
                    {"type": "text", "content": "What is in this picture?"},
                    {"type": "blob", "modality": "image", "mime_type": "image/png", "content": B64},
                    {"type": "uri", "modality": "image", "uri": "https://example.com/cat.png"},
                    {"type": "reasoning", "content": "not the user's text"},
                ],
            }
        ]
    )
    assert message == {"role": "user", "content": f"What is in this picture?\n{IMAGE}\n[image: https://example.com/cat.png]"}


def test_a_tool_response_of_content_blocks_is_their_text():
    blocks = [{"type": "text", "text": "the chart:"}, {"type": "image", "base64": B64, "mime_type": "image/png"}]
    [reply] = genai_to_openai([{"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": blocks}]}])
    assert reply == {"role": "tool", "tool_call_id": "c1", "content": f"the chart:\n{IMAGE}"}
    rows = [{"type": "fruit", "name": "pear"}]  # a tool's own JSON, not content blocks: kept as JSON
    [reply] = genai_to_openai([{"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": rows}]}])
    assert reply["content"] == '[{"type":"fruit","name":"pear"}]'


def test_langchain_messages_with_images_convert_to_the_placeholder():
    human = HumanMessage(
        content=[{"type": "text", "text": "Describe it."}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}}]
    )
    tool_reply = ToolMessage(
        content=[{"type": "image", "base64": B64, "mime_type": "image/png"}], tool_call_id="c1", artifact={"raw": "kept out"}
    )
    assert langchain_to_openai([human, tool_reply]) == [
        {"role": "user", "content": f"Describe it.\n{IMAGE}"},
        {"role": "tool", "content": IMAGE, "tool_call_id": "c1"},
    ]


# --- parse_arguments --------------------------------------------------------------------------------


def test_parse_arguments_from_a_dict_copies_and_makes_json_data():
    given = {"city": "Zürich", "when": dt.date(2026, 1, 2), "ids": (1, 2)}
    parsed = parse_arguments(given)
    assert parsed == {"city": "Zürich", "when": "2026-01-02", "ids": [1, 2]}
    parsed["city"] = "Bern"
    assert given["city"] == "Zürich"


def test_parse_arguments_from_json_text():
    assert parse_arguments('{"city": "Zürich", "n": [1, {"deep": true}]}') == {"city": "Zürich", "n": [1, {"deep": True}]}
    assert parse_arguments('{"city": "Z\\u00fcrich"}') == {"city": "Zürich"}
    assert parse_arguments("") == {}
    assert parse_arguments("{}") == {}


def test_parse_arguments_keeps_malformed_and_non_object_arguments_under_raw():
    assert parse_arguments('{"city": "Zür') == {"_raw": '{"city": "Zür'}
    assert parse_arguments("{'single': 'quotes'}") == {"_raw": "{'single': 'quotes'}"}
    assert parse_arguments("bad \udc00") == {"_raw": "bad \ufffd"}
    assert parse_arguments('"just a string"') == {"_raw": "just a string"}
    assert parse_arguments("7") == {"_raw": 7}
    assert parse_arguments("null") == {"_raw": None}
    assert parse_arguments([1, b"\x00"]) == {"_raw": [1, {"type": "bytes", "base64": "AA=="}]}
    assert parse_arguments(7) == {"_raw": 7}


# --- one_line ---------------------------------------------------------------------------------------


def test_one_line_collapses_whitespace():
    assert one_line(None, 10) == ""
    assert one_line("", 10) == ""
    assert one_line(" \n\t ", 10) == ""
    assert one_line("  a\n\n b\t c  ", 10) == "a b c"


def test_one_line_cuts_to_width_with_an_ellipsis():
    assert one_line("abcde", 5) == "abcde"  # exactly the width: kept whole
    assert one_line("abcdef", 5) == "abcd…"
    assert len(one_line("x" * 500, 40)) == 40
    assert one_line("ééééé", 3) == "éé…"  # counted in characters, not bytes
    assert one_line("a  b  c", 5) == "a b c"  # collapsed first (7 characters before), then measured
    assert one_line("a\nbcdefgh", 4) == "a b…"


# --- decode_tool_call / with_decoded_arguments ------------------------------------------------------


def test_decode_tool_call_decodes_json_text_arguments_without_touching_the_input():
    call = _call('{"city": "Zürich"}')
    original = copy.deepcopy(call)
    assert decode_tool_call(call) == {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"city": "Zürich"}}}
    assert call == original
    assert decode_tool_call(_call(""))["function"]["arguments"] == {}
    assert decode_tool_call(_call("  \n"))["function"]["arguments"] == {}
    assert decode_tool_call(_call({"already": "an object"}))["function"]["arguments"] == {"already": "an object"}
    assert decode_tool_call(_call(None))["function"]["arguments"] is None


def test_decode_tool_call_returns_what_it_cannot_decode_unchanged():
    malformed = _call('{"city": ')
    assert decode_tool_call(malformed) is malformed
    not_a_function_call = {"id": "c1", "type": "custom", "input": "x"}
    assert decode_tool_call(not_a_function_call) is not_a_function_call
    assert decode_tool_call("a string") == "a string"
    assert decode_tool_call({"function": "not a dict"}) == {"function": "not a dict"}


def test_with_decoded_arguments_decodes_every_call_of_every_message():
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [_call('{"a": 1}', "c1"), _call("bad", "c2")]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": "done", "tool_calls": []},
    ]
    original = copy.deepcopy(messages)
    decoded = with_decoded_arguments(messages)
    assert [c["function"]["arguments"] for c in decoded[1]["tool_calls"]] == [{"a": 1}, "bad"]
    assert decoded[0] == messages[0] and decoded[2] == messages[2] and decoded[3] == messages[3]
    assert messages == original
    assert with_decoded_arguments([]) == []


# --- LangChain -> OpenAI ----------------------------------------------------------------------------


def test_langchain_to_openai_accepts_objects_tuples_and_dicts():
    converted = langchain_to_openai([("user", "hi"), {"role": "assistant", "content": "yo"}, SystemMessage("rules")])
    assert converted == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "system", "content": "rules"},
    ]
    assert langchain_to_openai([]) == []


def test_langchain_to_openai_tool_calls_names_and_content_blocks():
    converted = langchain_to_openai(
        [
            HumanMessage("h", name="alice"),
            SystemMessage("s", name="ignored"),
            AIMessage(
                [{"type": "text", "text": "let me "}, "look"],
                tool_calls=[
                    {"name": "weather", "args": {"city": "Zürich"}, "id": None},
                    {"name": "ping", "args": {}, "id": "c2"},
                ],
            ),
            ToolMessage("sunny", tool_call_id="c1", name="weather"),
            AIMessage("no calls"),
        ]
    )
    assert converted[0] == {"role": "user", "content": "h", "name": "alice"}
    assert converted[1] == {"role": "system", "content": "s"}  # system names are not carried
    assert converted[2] == {
        "role": "assistant",
        "content": "let me \nlook",  # text blocks a line apart, as LangChain's convert_to_openai_messages joins them
        "tool_calls": [
            {"id": "", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Zürich"}'}},
            {"id": "c2", "type": "function", "function": {"name": "ping", "arguments": "{}"}},
        ],
    }
    assert converted[3] == {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "weather"}
    assert converted[4] == {"role": "assistant", "content": "no calls"}


def test_langchain_to_openai_keeps_a_malformed_tool_call_as_the_model_wrote_it():
    """``invalid_tool_calls`` (arguments that are not JSON, or a call that lost its name) are the
    model's calls too: kept after the valid ones, their arguments as raw text (was: dropped)."""
    [converted] = langchain_to_openai(
        [
            AIMessage(
                "",
                tool_calls=[{"name": "ping", "args": {}, "id": "c1"}],
                invalid_tool_calls=[
                    {"type": "invalid_tool_call", "name": "refund", "args": '{"order_id": "A-1"', "id": "c2", "error": "bad JSON"},
                    {"type": "invalid_tool_call", "name": None, "args": None, "id": None, "error": None},
                ],
            )
        ]
    )
    assert converted["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "ping", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "refund", "arguments": '{"order_id": "A-1"'}},
        {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
    ]
    [genai] = openai_to_genai([converted])
    # the GenAI part holds the text as written (genai_to_openai gives it back); records keep it under _raw
    assert genai["parts"][1]["arguments"] == '{"order_id": "A-1"'
    assert parse_arguments(genai["parts"][1]["arguments"]) == {"_raw": '{"order_id": "A-1"'}


# --- tool schemas -----------------------------------------------------------------------------------


@tool
def _weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_openai_tool_schemas_normalises_every_form():
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    openai_form = {"type": "function", "function": {"name": "weather", "description": "d", "parameters": parameters}}
    flat = {"name": "weather", "description": "d", "parameters": parameters, "strict": True}
    assert openai_tool_schemas([openai_form]) == [openai_form]
    assert openai_tool_schemas([flat]) == [openai_form]  # keys OpenAI does not define are dropped
    assert openai_tool_schemas([{"name": "ping"}]) == [
        {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}
    ]
    assert openai_tool_schemas([{"not": "a tool"}]) == []
    assert openai_tool_schemas(None) == [] and openai_tool_schemas([]) == []
    (from_langchain,) = openai_tool_schemas([_weather])
    assert from_langchain["type"] == "function"
    assert from_langchain["function"]["name"] == "_weather"
    assert from_langchain["function"]["description"] == "The weather in a city."
    assert from_langchain["function"]["parameters"]["properties"] == {"city": {"type": "string"}}


def test_openai_tool_schemas_does_not_share_the_callers_dicts():
    tool_def = {"type": "function", "function": {"name": "f"}}
    (schema,) = openai_tool_schemas([tool_def])
    assert "parameters" in schema["function"] and "parameters" not in tool_def["function"]


# --- OpenAI <-> GenAI -------------------------------------------------------------------------------


def test_openai_to_genai_parts():
    converted = openai_to_genai(
        [
            {"content": "no role means user"},
            {"role": "assistant", "content": "checking", "tool_calls": [_call('{"city": "Zürich"}'), _call("{broken", "c2", "g")]},
            {"role": "assistant", "content": None, "tool_calls": [_call({"x": 1}, "c3")]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sunny"}], "name": "f"},
            {"role": "user", "content": ""},
        ]
    )
    assert converted[0] == {"role": "user", "parts": [{"type": "text", "content": "no role means user"}]}
    assert converted[1] == {
        "role": "assistant",
        "parts": [
            {"type": "text", "content": "checking"},
            {"type": "tool_call", "id": "c1", "name": "f", "arguments": {"city": "Zürich"}},
            {"type": "tool_call", "id": "c2", "name": "g", "arguments": "{broken"},  # text that is no JSON object, as written
        ],
    }
    assert converted[2] == {"role": "assistant", "parts": [{"type": "tool_call", "id": "c3", "name": "f", "arguments": {"x": 1}}]}
    assert converted[3] == {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "sunny"}], "name": "f"}
    assert converted[4] == {"role": "user", "parts": []}


def test_genai_to_openai_parts():
    converted = genai_to_openai(
        [
            {"role": None, "parts": [{"type": "text", "content": "a"}, {"type": "text", "content": "b"}]},
            {
                "role": "assistant",
                "name": "bot",
                "parts": [
                    {"type": "tool_call", "id": "c1", "name": "f", "arguments": {"city": "Zürich"}},
                    {"type": "tool_call", "id": None, "name": "g", "arguments": '{"n": 1}'},
                    {"type": "reasoning", "content": "f for the city, g for n"},  # its reasoning, not its text
                    "not a part",
                ],
            },
            {
                "role": "tool",
                "parts": [
                    {"type": "tool_call_response", "id": "c1", "response": "sunny"},
                    {"type": "tool_call_response", "id": "c2", "response": {"temp": 21}},
                ],
            },
        ]
    )
    assert converted == [
        {"role": "user", "content": "a\nb"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "f for the city, g for n",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"city":"Zürich"}'}},
                {"id": "", "type": "function", "function": {"name": "g", "arguments": '{"n":1}'}},
            ],
            "name": "bot",
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},  # one tool message per response
        {"role": "tool", "tool_call_id": "c2", "content": '{"temp":21}'},
    ]


def test_genai_to_openai_keeps_text_beside_tool_responses():
    """An Anthropic-style user turn carries tool results and the user's own text together: a tool
    message per result, then the text as a message of its role (was: the text was dropped)."""
    converted = genai_to_openai(
        [
            {
                "role": "user",
                "name": "alice",
                "parts": [
                    {"type": "tool_call_response", "id": "c1", "response": "sunny"},
                    {"type": "text", "content": "and tomorrow?"},
                    {"type": "tool_call_response", "id": "c2", "response": {"temp": 21}},
                ],
            },
            {"role": "user", "parts": [{"type": "tool_call_response", "id": "c3", "response": "ok"}, {"type": "text", "content": ""}]},
        ]
    )
    assert converted == [
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": '{"temp":21}'},
        {"role": "user", "content": "and tomorrow?", "name": "alice"},
        {"role": "tool", "tool_call_id": "c3", "content": "ok"},
    ]


def test_genai_to_openai_accepts_openai_shaped_messages():
    converted = genai_to_openai(
        [
            {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "args": {"a": 1}, "id": "c1"}]},
            {"role": "assistant", "content": "", "tool_calls": [_call('{"b": 2}', "c2")]},
            {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "ok"},
            {"content": "no role"},
        ]
    )
    assert converted == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"b":2}'}}],
        },
        {"role": "tool", "content": "ok", "tool_call_id": "c1", "name": "f"},
        {"role": "user", "content": "no role"},
    ]


def test_genai_to_openai_names_a_message_that_is_not_an_object():
    with pytest.raises(ValueError, match="a message must be an object, got list"):
        genai_to_openai([["role", "user"]])


def test_a_document_block_keeps_the_text_the_model_read_beside_its_placeholder() -> None:
    """A RAG tool's document blocks (for citations) carry the text the model read: it was dropped for the placeholder."""
    from ee_middleware.messages import content_to_text

    cited = [{"type": "document", "title": "Q3 report", "text": "Revenue grew 12%"}]
    assert content_to_text(cited) == "[document: Q3 report]\nRevenue grew 12%"
    anthropic = [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Hello doc"}}]
    assert content_to_text(anthropic) == "[document: text/plain, 9 bytes]\nHello doc"


def test_a_tools_own_json_with_a_type_field_is_not_taken_for_a_media_block() -> None:
    """``{"type": "file", "name": ..., "content": ...}`` from a file tool is its JSON, not ``[file: notes.txt]``."""
    from ee_middleware.messages import _response_text, content_to_text

    listing = {"type": "file", "name": "notes.txt", "content": "hello world"}
    assert _response_text(listing) == '{"type":"file","name":"notes.txt","content":"hello world"}'
    assert content_to_text({"type": "image", "base64": "aGVsbG8=", "mime_type": "image/png"}) == "[image: image/png, 5 bytes]"


def test_system_parts_in_any_dialect_are_the_system_text() -> None:
    """OpenAI/Anthropic-shaped system parts ({"type": "text", "text"}) gave an empty system prompt to every state."""
    from ee_middleware.capture.assembler import _system_text

    assert _system_text([{"type": "text", "text": "You are a shop bot."}]) == "You are a shop bot."
    assert _system_text('[{"type": "text", "content": "GenAI system"}]') == "GenAI system"


# --- reasoning models ---------------------------------------------------------------------------

THOUGHT = "The user asks about pears; check the stock first."
PEARS = {"name": "check_stock", "args": {"item": "pear"}, "id": "c1", "type": "tool_call"}


@pytest.mark.parametrize(
    "reply",
    [
        # vLLM --reasoning-parser through a chat model that keeps the field (ChatDeepSeek, Ollama, a ChatOpenAI subclass)
        AIMessage(content="", additional_kwargs={"reasoning_content": THOUGHT}, tool_calls=[PEARS]),
        AIMessage(content="", additional_kwargs={"reasoning": THOUGHT}, tool_calls=[PEARS]),  # vLLM's newer field name
        AIMessage(content=[{"type": "reasoning", "reasoning": THOUGHT}], tool_calls=[PEARS]),  # LangChain's standard block
        AIMessage(content=[{"type": "thinking", "thinking": THOUGHT, "signature": "c2ln"}], tool_calls=[PEARS]),  # Anthropic
        AIMessage(  # OpenAI's Responses API (LangChain 0.3 format): the reasoning summary
            content=[{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": THOUGHT}]}], tool_calls=[PEARS]
        ),
        AIMessage(content=f"<think>\n{THOUGHT}\n</think>\n\n", tool_calls=[PEARS]),  # no reasoning parser: inline
        AIMessage(content=f"{THOUGHT}\n</think>\n\n", tool_calls=[PEARS]),  # the chat template opened the block
        # Ollama's /api/chat message (and the gpt-oss chat template's assistant field) is ``thinking``: a message dict an
        # app keeps in its state is read by LangChain with the field in additional_kwargs
        convert_to_messages(
            [{"role": "assistant", "content": "", "thinking": THOUGHT, "tool_calls": [_call('{"item": "pear"}', name="check_stock")]}]
        )[0],
        AIMessage(  # langchain-openrouter: the text as reasoning_content and OpenRouter's reasoning_details beside it (once)
            content="",
            additional_kwargs={
                "reasoning_content": THOUGHT,
                "reasoning_details": [{"type": "reasoning.text", "text": THOUGHT, "format": "unknown", "index": 0}],
            },
            tool_calls=[PEARS],
        ),
        AIMessage(  # OpenRouter for a model that returns a summary and its encrypted reasoning (no reasoning text)
            content="",
            additional_kwargs={
                "reasoning_details": [
                    {"type": "reasoning.summary", "summary": THOUGHT, "format": "openai-responses-v1", "index": 0},
                    {"type": "reasoning.encrypted", "data": "gAAAAABo", "format": "openai-responses-v1", "index": 1},
                ]
            },
            tool_calls=[PEARS],
        ),
        # streamed through langchain-openrouter: the chunks' reasoning_details fragments, added as LangChain's
        # generate_from_stream adds them, and made the reply's message
        message_chunk_to_message(
            sum(
                (
                    AIMessageChunk(
                        content="", additional_kwargs={"reasoning_details": [{"type": "reasoning.text", "text": part, "index": 0}]}
                    )
                    for part in (THOUGHT[:20], THOUGHT[20:])
                ),
                AIMessageChunk(content="", tool_call_chunks=[{"name": "check_stock", "args": '{"item": "pear"}', "id": "c1", "index": 0}]),
            )
        ),
    ],
    ids=[
        "reasoning_content",
        "reasoning",
        "reasoning-block",
        "thinking-block",
        "responses-summary",
        "inline",
        "template-opened",
        "thinking",
        "openrouter",
        "openrouter-summary",
        "openrouter-streamed",
    ],
)
def test_a_reasoning_models_reply_keeps_its_reasoning_as_vllm_returns_it(reply: AIMessage) -> None:
    """Every shape a reasoning model's reply takes in LangChain becomes the OpenAI message vLLM's reasoning parsers
    return, text and reasoning apart; the GenAI span shape carries it as a ``reasoning`` part and reads back the same.
    Was: the reasoning was dropped, or (inline) left in ``content``, so an answer's text held ``<think>`` blocks."""
    [converted] = langchain_to_openai([reply])
    assert converted == {
        "role": "assistant",
        "content": "",
        "reasoning_content": THOUGHT,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "check_stock", "arguments": '{"item":"pear"}'}}],
    }
    [genai] = openai_to_genai([converted])
    assert genai["parts"][0] == {"type": "reasoning", "content": THOUGHT}
    assert genai_to_openai(json.loads(json.dumps([genai]))) == [converted]


def test_an_answer_written_after_inline_reasoning_is_only_the_answer() -> None:
    [answer] = langchain_to_openai([AIMessage(content=f"<think>\n{THOUGHT}\n</think>\n\nNo pears left.")])
    assert answer == {"role": "assistant", "content": "No pears left.", "reasoning_content": THOUGHT}
    # a reply cut off while reasoning said nothing yet
    [cut] = langchain_to_openai([AIMessage(content=f"<think>{THOUGHT} Maybe")])
    assert cut == {"role": "assistant", "content": "", "reasoning_content": f"{THOUGHT} Maybe"}
    # ingested spans in OpenAI's shape (other instrumentations) are read the same way
    assert genai_to_openai([{"role": "assistant", "content": f"<think>{THOUGHT}</think>No pears left."}]) == [
        {"role": "assistant", "content": "No pears left.", "reasoning_content": THOUGHT}
    ]
    assert genai_to_openai([{"role": "assistant", "content": "No pears left.", "reasoning": THOUGHT}]) == [
        {"role": "assistant", "content": "No pears left.", "reasoning_content": THOUGHT}
    ]


def test_ingested_messages_keep_reasoning_in_the_fields_each_server_returns_it() -> None:
    """Messages read from spans (OpenAI's shape, as LiteLLM's raw request spans and other instrumentations dump them;
    GenAI parts) carry reasoning under the field their server or framework gives it: ``thinking`` (Ollama's /api/chat, the
    gpt-oss chat template), ``reasoning`` and ``reasoning_details`` (vLLM >= 0.11, Ollama's /v1, OpenRouter), thinking
    blocks in an assistant's content, Pydantic AI's ``thinking`` part. Each becomes ``reasoning_content``, never text.
    Was: dropped (thinking, reasoning_details, the thinking part), or the block's JSON written into ``content``."""
    call = _call('{"item": "pear"}', name="check_stock")
    expected = {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": THOUGHT,
        "tool_calls": [_call('{"item":"pear"}', name="check_stock")],
    }
    summary_only = [
        {"type": "reasoning.summary", "summary": THOUGHT, "format": "openai-responses-v1", "index": 0},
        {"type": "reasoning.encrypted", "data": "gAAAAABo", "format": "openai-responses-v1", "index": 1},
    ]
    shapes = [
        {"thinking": THOUGHT},  # Ollama /api/chat, the gpt-oss template
        {"reasoning": THOUGHT, "reasoning_details": [{"type": "reasoning.text", "text": THOUGHT, "format": "unknown", "index": 0}]},
        {"reasoning_details": summary_only},  # OpenRouter without the text
        {"reasoning_details": [{"type": "reasoning.text", "text": THOUGHT, "signature": "c2ln", "format": "anthropic-claude-v1"}]},
    ]
    for fields in shapes:
        assert genai_to_openai([{"role": "assistant", "content": "Checking.", "tool_calls": [call], **fields}]) == [expected], fields
    blocks = [{"type": "thinking", "thinking": THOUGHT, "signature": "c2ln"}, {"type": "text", "text": "Checking."}]
    assert genai_to_openai([{"role": "assistant", "content": blocks, "tool_calls": [call]}]) == [expected]
    reasoning_block = [{"type": "reasoning", "reasoning": THOUGHT}, {"type": "text", "text": "Checking."}]
    assert genai_to_openai([{"role": "assistant", "content": reasoning_block, "tool_calls": [call]}]) == [expected]
    pydantic_ai = {
        "role": "assistant",
        "parts": [
            {"type": "thinking", "content": THOUGHT},
            {"type": "text", "content": "Checking."},
            {"type": "tool_call", "id": "c1", "name": "check_stock", "arguments": {"item": "pear"}},
        ],
    }
    assert genai_to_openai([pydantic_ai]) == [expected]
    # the GenAI shape capture writes carries it as a reasoning part, whichever field it came in
    assert openai_to_genai([{"role": "assistant", "content": "Checking.", "thinking": THOUGHT}])[0]["parts"][0] == {
        "type": "reasoning",
        "content": THOUGHT,
    }
    # a user's or a tool's fields are never reasoning; nothing without reasoning gets the key
    assert genai_to_openai([{"role": "user", "content": "hi", "thinking": THOUGHT}]) == [{"role": "user", "content": "hi"}]
    assert genai_to_openai([{"role": "assistant", "content": "ok", "reasoning_details": [summary_only[1]]}]) == [
        {"role": "assistant", "content": "ok"}
    ]


def test_messages_without_reasoning_are_unchanged() -> None:
    """No ``reasoning_content`` key where there is no reasoning (records of other models stay byte-identical); text that
    only mentions the tags, an empty block (Qwen3 with thinking off) and other roles' text are not reasoning."""
    replies = [
        AIMessage(content="Use <think> tags to reason."),
        AIMessage(content="Say </think> to end."),  # a closing tag inside a sentence: not the end of reasoning
        AIMessage(content="", additional_kwargs={"reasoning_content": ""}, tool_calls=[PEARS]),
        AIMessage(content=[{"type": "redacted_thinking", "data": "eyJ"}, {"type": "text", "text": "Done."}]),
        HumanMessage(content="<think>not a model's reasoning</think> hi"),
    ]
    converted = langchain_to_openai(replies)
    assert [m.get("reasoning_content") for m in converted] == [None] * 5
    assert [m["content"] for m in converted] == [
        "Use <think> tags to reason.",
        "Say </think> to end.",
        "",
        "Done.",
        "<think>not a model's reasoning</think> hi",
    ]
    assert "reasoning_content" not in converted[0]
    assert langchain_to_openai([AIMessage(content="<think>\n\n</think>\n\nHello.")]) == [{"role": "assistant", "content": "Hello."}]
    assert split_reasoning("Say </think> to end.") == (None, "Say </think> to end.")
    assert split_reasoning("<thinking>Plan it.</thinking>\nDone.") == ("Plan it.", "Done.")


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (HumanMessageChunk(content="How many pears?", name="bob"), HumanMessage(content="How many pears?", name="bob")),
        (SystemMessageChunk(content="Be brief."), SystemMessage(content="Be brief.")),
        (AIMessageChunk(content="3 pears."), AIMessage(content="3 pears.")),
        (
            ToolMessageChunk(content="3", tool_call_id="c1", name="check_stock", status="error"),
            ToolMessage(content="3", tool_call_id="c1", name="check_stock", status="error"),
        ),
        (ChatMessageChunk(content="ok", role="critic"), ChatMessage(content="ok", role="critic")),
        (FunctionMessageChunk(content="3", name="check_stock"), FunctionMessage(content="3", name="check_stock")),
    ],
    ids=["human", "system", "ai", "tool", "chat", "function"],
)
def test_a_message_chunk_converts_as_the_message_it_is_a_piece_of(chunk: Any, message: Any) -> None:
    """A streamed chunk (what a node that streams its model adds up and puts in its state) has the role, name and
    tool call id of its whole message. Was: its role was its class name ("AIMessageChunk"), its tool calls dropped."""
    assert message_type(chunk) == message.type
    assert langchain_to_openai([chunk]) == langchain_to_openai([message])
    assert langchain_to_openai([chunk])[0]["role"] != type(chunk).__name__


def test_a_streamed_replys_tool_calls_are_kept_as_for_a_whole_reply() -> None:
    """The tool calls streamed in pieces (``tool_call_chunks``, arguments split over chunks), one whose arguments are
    not JSON kept as the model wrote them, as for an ``AIMessage``'s ``tool_calls`` and ``invalid_tool_calls``."""
    pieces = [
        AIMessageChunk(content="Let me "),
        AIMessageChunk(content="check.", tool_call_chunks=[{"name": "check_stock", "args": '{"item": ', "id": "c1", "index": 0}]),
        AIMessageChunk(content="", tool_call_chunks=[{"name": None, "args": '"pear"}', "id": None, "index": 0}]),
        AIMessageChunk(content="", tool_call_chunks=[{"name": "ship", "args": "to Bob, fast", "id": "c2", "index": 1}]),
    ]
    streamed = pieces[0]
    for piece in pieces[1:]:
        streamed += piece
    whole = AIMessage(
        content="Let me check.",
        tool_calls=[{"name": "check_stock", "args": {"item": "pear"}, "id": "c1"}],
        invalid_tool_calls=[{"name": "ship", "args": "to Bob, fast", "id": "c2", "error": None}],
    )
    [converted] = langchain_to_openai([streamed])
    assert converted == langchain_to_openai([whole])[0] == langchain_to_openai([message_chunk_to_message(streamed)])[0]
    assert converted["role"] == "assistant"
    assert [call["function"] for call in converted["tool_calls"]] == [
        {"name": "check_stock", "arguments": '{"item":"pear"}'},
        {"name": "ship", "arguments": "to Bob, fast"},
    ]
    assert message_type({"role": "user"}) is None


def test_a_chat_message_keeps_the_role_it_says() -> None:
    """Sweep C, finding 4: ``ChatMessage(role="user")`` was stored with the role ``chat`` (the run had no task, and
    exports wrote ``"role": "chat"``); LangChain's own conversion sends its role."""
    from langchain_core.messages import ChatMessage

    converted = langchain_to_openai([ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")])
    assert converted == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert langchain_to_openai([ChatMessage(role="ai", content="Hello")]) == [{"role": "assistant", "content": "Hello"}]


def test_blocks_of_tools_the_provider_ran_are_no_part_of_the_answer() -> None:
    """Sweep C, finding 5: LangChain's standard ``server_tool_call``/``server_tool_result`` blocks and Anthropic's
    ``server_tool_use``/``web_search_tool_result`` were stored as JSON before the answer (the user got ``message.text``)."""
    from langchain_core.messages import AIMessage

    answer = "The capital of France is Paris."
    standard = [
        {"type": "server_tool_call", "id": "s1", "name": "web_search", "args": {"query": "capital of France"}},
        {"type": "server_tool_result", "tool_call_id": "s1", "status": "success", "output": [{"url": "https://x"}]},
        {"type": "text", "text": answer},
    ]
    anthropic = [
        {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {"query": "capital of France"}},
        {"type": "web_search_tool_result", "tool_use_id": "s1", "content": [{"type": "web_search_result", "url": "https://x"}]},
        {"type": "text", "text": answer},
    ]
    for content in (standard, anthropic):
        message = AIMessage(content=content)
        assert langchain_to_openai([message]) == [{"role": "assistant", "content": message.text}]
        assert message.text == answer


def test_to_jsonable_writes_numpy_values_as_their_python_values() -> None:
    """A numpy scalar is no ``int``/``float``: it was written as its repr (``'np.int64(7)'``), so a world rebuilt from a
    recorded environment held text where the app had a number, and a tool's numpy argument was taught as a string."""
    np = pytest.importorskip("numpy")
    environment = {"stock": np.int64(7), "price": np.float32(0.5), "grid": np.arange(4).reshape(2, 2), "ok": np.bool_(True)}
    assert to_jsonable(environment) == {"stock": 7, "price": 0.5, "grid": [[0, 1], [2, 3]], "ok": True}
    assert to_jsonable(np.float64("nan")) == "nan"  # as a float that is no finite number
