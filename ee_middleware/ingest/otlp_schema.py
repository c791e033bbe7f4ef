"""Typed models of the OTLP/JSON trace shapes that ingest reads, and the checks around them.

The shapes follow ``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto`` in the
JSON mapping of the OTLP specification: lowerCamelCase field names, 64-bit integers as decimal
strings (numbers are accepted too), enums as integers (protobuf's enum names are accepted too), ids
as hex (the OTLP mapping) or base64 (protobuf's generic mapping). Unknown fields are ignored, as
protobuf's JSON parsers do.

The export request is checked down to each span's list; every span is then checked on its own, so
that one bad span costs that span only. Nesting is bounded before a model sees it (an attribute
value nested hundreds of levels deep is one clear error, never a ``RecursionError``).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ee_middleware._limits import INT64_MAX, INT64_MIN
from ee_middleware.capture.spandata import SpanData

MAX_SPAN_DEPTH = 64
"""JSON nesting allowed inside one span (an attribute value nested in kvlists about 14 deep)."""

_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}
_OBJECT_HINTS = {
    "status": 'must be an object like {"code": 2, "message": "..."} (code 0 UNSET, 1 OK, 2 ERROR)',
    "value": 'must be an AnyValue object like {"stringValue": "..."}',
    "resource": 'must be an object like {"attributes": [...]}',
}


def _uint64(value: Any) -> Any:
    """OTLP/JSON writes 64-bit integers as decimal strings; numbers are accepted too."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or len(text) > 20:
            raise ValueError("must be an unsigned integer (nanoseconds since the epoch)")
        return int(text)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int64(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be an integer, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not digits.isdigit() or len(digits) > 19:
            raise ValueError("must be a 64-bit integer")
        return int(text)
    return value


def _uint32(value: Any) -> Any:
    """A count (``uint32``): a JSON number, or a decimal string as some encoders write every integer; ``null`` (an absent
    count, as converters and hand-written exporters write one) is 0, as protobuf's JSON parsers read it."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError("must be a count, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or len(text) > 10:
            raise ValueError("must be a count (an unsigned integer)")
        return int(text)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _status_code(value: Any) -> Any:
    if isinstance(value, str) and value in _STATUS_NAMES:
        return _STATUS_NAMES[value]
    if isinstance(value, bool) or not isinstance(value, int) or value not in _STATUS_CODES:
        raise ValueError("must be 0 (UNSET), 1 (OK) or 2 (ERROR), or STATUS_CODE_UNSET/OK/ERROR")
    return value


Nanos = Annotated[int, BeforeValidator(_uint64), Field(ge=0, le=2**64 - 1)]

EARLIEST_NANOS = 10**17
"""The earliest span start read as nanoseconds (1973-03-03): before it, a time written in microseconds (today about 1.8e15)
or milliseconds (1.8e12) that would store a run of January 1970."""


def span_time_text(nanos: int) -> str:
    """``nanos`` as the UTC time it names, for messages."""
    return datetime.fromtimestamp(nanos / 1e9, UTC).isoformat(timespec="seconds")


Int64 = Annotated[int, BeforeValidator(_int64), Field(ge=INT64_MIN, le=INT64_MAX)]
Count = Annotated[int, BeforeValidator(_uint32), Field(ge=0, le=2**32 - 1, strict=False)]
StatusCode = Annotated[int, BeforeValidator(_status_code)]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class AnyValue(_Shape):
    """``common.v1.AnyValue``: exactly one of the fields (none means an empty value)."""

    stringValue: str | None = None
    boolValue: bool | None = None
    intValue: Annotated[Int64 | None, Field(strict=False)] = None
    doubleValue: Annotated[float | None, Field(strict=False)] = None  # "NaN"/"Infinity" strings too
    bytesValue: str | None = None
    arrayValue: ArrayValue | None = None
    kvlistValue: KeyValueList | None = None

    def to_python(self) -> Any:
        if self.stringValue is not None:
            return self.stringValue
        if self.boolValue is not None:
            return self.boolValue
        if self.intValue is not None:
            return self.intValue
        if self.doubleValue is not None:
            return self.doubleValue
        if self.bytesValue is not None:
            return self.bytesValue
        if self.arrayValue is not None:
            return [v.to_python() for v in self.arrayValue.values]
        if self.kvlistValue is not None:
            return attributes_dict(self.kvlistValue.values)
        return None


class ArrayValue(_Shape):
    values: list[AnyValue] = Field(default_factory=list)


class KeyValue(_Shape):
    key: str
    value: AnyValue | None = None


class KeyValueList(_Shape):
    values: list[KeyValue] = Field(default_factory=list)


class Status(_Shape):
    code: StatusCode = 0
    message: str = ""


class Event(_Shape):
    name: str = ""
    timeUnixNano: Annotated[Nanos | None, Field(strict=False)] = None
    attributes: list[KeyValue] = Field(default_factory=list)
    droppedAttributesCount: Count = 0


class Span(_Shape):
    """``trace.v1.Span``: the fields trajectory assembly reads."""

    traceId: str
    spanId: str
    parentSpanId: str = ""
    name: str = ""
    startTimeUnixNano: Annotated[Nanos, Field(strict=False)]
    endTimeUnixNano: Annotated[Nanos | None, Field(strict=False)] = None
    attributes: list[KeyValue] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    status: Status | None = None
    flags: Annotated[Nanos | None, Field(strict=False)] = None
    droppedAttributesCount: Count = 0
    droppedEventsCount: Count = 0


class Dropped(NamedTuple):
    """What the SDK that exported a span dropped from it to keep within its span limits (``droppedAttributesCount``,
    ``droppedEventsCount`` and its events' ``droppedAttributesCount``): the span holds less than was recorded."""

    attributes: int = 0
    events: int = 0
    event_attributes: int = 0

    def __bool__(self) -> bool:
        return any(self)


SPAN_FLAGS_HAS_IS_REMOTE = 0x100
"""``SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK``: the span says whether its parent is remote."""
SPAN_FLAGS_IS_REMOTE = 0x200
"""``SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK``: its parent is remote (another process's, from a ``traceparent``)."""


class Resource(_Shape):
    attributes: list[KeyValue] = Field(default_factory=list)


class ScopeSpans(_Shape):
    scope: Any = Field(default=None, validation_alias=AliasChoices("scope", "instrumentationLibrary"))
    spans: list[Any] = Field(default_factory=list)  # each span is checked on its own

    @property
    def scope_name(self) -> str | None:
        """The instrumentation scope's name (the instrumentation that wrote these spans), where it is a string."""
        name = self.scope.get("name") if isinstance(self.scope, Mapping) else None
        return name if isinstance(name, str) and name else None


class ResourceSpans(_Shape):
    resource: Resource | None = None
    scopeSpans: list[ScopeSpans] = Field(default_factory=list, validation_alias=AliasChoices("scopeSpans", "instrumentationLibrarySpans"))


class ExportTraceServiceRequest(_Shape):
    """``collector.trace.v1.ExportTraceServiceRequest`` (also the shape of ``TracesData``)."""

    resourceSpans: list[ResourceSpans]


AnyValue.model_rebuild()


class ShapeError(ValueError):
    """A JSON value does not have the OTLP shape; the message names the field and what was found."""


def check_request(document: Any) -> ExportTraceServiceRequest:
    """The export request's envelope (resources and scopes; spans are checked one by one)."""
    if not isinstance(document, Mapping):
        raise ShapeError(f"expected an OTLP export request (a JSON object with 'resourceSpans'), got {_kind(document)}")
    if "resourceSpans" not in document:
        keys = ", ".join(repr(k) for k in list(document)[:5]) or "none"
        snake = (
            " (protobuf field names: OTLP JSON spells them in lowerCamelCase, as a Collector's file exporter and protobuf's MessageToJson write them by default: export without preserving_proto_field_name)"
            if "resource_spans" in document
            else ""
        )
        raise ShapeError(f"expected an OTLP export request with 'resourceSpans'; the object's keys are {keys}{snake}")
    _check_depth(document, MAX_SPAN_DEPTH + 8, skip="spans")
    return _validate(ExportTraceServiceRequest, document)


def check_span(raw: Any, resource: Mapping[str, Any]) -> SpanData:
    """One span as :class:`SpanData`; raises :class:`ShapeError` naming what is wrong."""
    return read_span(raw, resource)[0]


def read_span(raw: Any, resource: Mapping[str, Any], scope: str | None = None) -> tuple[SpanData, Dropped]:
    """One span as :class:`SpanData` with what its SDK dropped from it (:class:`Dropped`, empty when nothing); raises
    :class:`ShapeError` naming what is wrong. ``scope``: the name of the instrumentation scope it was exported under."""
    if not isinstance(raw, Mapping):
        raise ShapeError(f"a span must be a JSON object, got {_kind(raw)}")
    _check_depth(raw, MAX_SPAN_DEPTH)
    span = _validate(Span, raw)
    trace_id = decode_id(span.traceId, 16, "traceId")
    span_id = decode_id(span.spanId, 8, "spanId")
    parent_id = decode_parent_id(span.parentSpanId)
    start = span.startTimeUnixNano
    end = start if span.endTimeUnixNano in (None, 0) else span.endTimeUnixNano  # a span that never ended: see never_ended
    if end < start:
        raise ShapeError(f"endTimeUnixNano ({end}) is before startTimeUnixNano ({start})")
    for field, value in (("startTimeUnixNano", start), ("endTimeUnixNano", end)):  # (the end alone where no start was set)
        if 0 < value < EARLIEST_NANOS:
            unit, factor = ("seconds", 10**9) if value < 10**11 else ("milliseconds", 10**6) if value < 10**14 else ("microseconds", 10**3)
            raise ShapeError(
                f"{field} ({value}) is {span_time_text(value)} read as nanoseconds: a time in {unit} ({span_time_text(value * factor)})? "
                f"OTLP times are nanoseconds since 1970 (now about {time.time_ns():.2e}): the exporter that wrote it must multiply"
            )
    status = span.status or Status()
    dropped = Dropped(span.droppedAttributesCount, span.droppedEventsCount, sum(e.droppedAttributesCount for e in span.events))
    data = SpanData(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_id,
        name=span.name,
        start_ns=start,
        end_ns=end,
        attributes=attributes_dict(span.attributes),
        status_code=_STATUS_CODES[status.code],
        status_message=status.message or None,
        events=tuple((e.name, attributes_dict(e.attributes)) for e in span.events),
        resource=dict(resource),
        parent_remote=_parent_remote(span.flags) if parent_id else None,
        scope=scope,
    )
    return data, dropped


def _parent_remote(flags: int | None) -> bool | None:
    if flags is None or not flags & SPAN_FLAGS_HAS_IS_REMOTE:
        return None
    return bool(flags & SPAN_FLAGS_IS_REMOTE)


def never_ended(raw: Mapping[str, Any]) -> bool:
    """Whether a span (that passed :func:`check_span`) was written without an end time: ``endTimeUnixNano`` missing or
    0, as exporters that write spans when they start leave a span whose process died before it ended."""
    return raw.get("endTimeUnixNano") in (None, 0, "0", "")


def loose_ids(raw: Any) -> tuple[str | None, str | None, str | None]:
    """The trace, span and parent ids of a span that failed its check, where they can be read."""
    if not isinstance(raw, Mapping):
        return None, None, None
    out = []
    for key, size in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
        value = raw.get(key)
        try:
            if key == "parentSpanId":
                out.append(decode_parent_id(value) if isinstance(value, str) else None)
            else:
                out.append(decode_id(value, size, key) if isinstance(value, str) and value else None)
        except ShapeError:
            out.append(None)
    return out[0], out[1], out[2]


def resource_attributes(resource_spans: ResourceSpans) -> dict[str, Any]:
    return attributes_dict(resource_spans.resource.attributes) if resource_spans.resource else {}


def attributes_dict(items: list[KeyValue]) -> dict[str, Any]:
    return {item.key: item.value.to_python() if item.value is not None else None for item in items}


def decode_id(value: str, size: int, field_name: str) -> str:
    """A trace (16 bytes) or span (8 bytes) id as lowercase hex, from hex or base64."""
    decoded = None
    if len(value) == size * 2:
        try:
            decoded = bytes.fromhex(value)
        except ValueError:
            pass
    if decoded is None:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
    if len(decoded) != size:
        raise ShapeError(f"{field_name} ({_kind(value)}) is neither {size * 2} hex digits nor base64 of {size} bytes")
    if not any(decoded):
        raise ShapeError(f"{field_name} is all zeros, which OTLP defines as invalid")
    return decoded.hex()


def decode_parent_id(value: str) -> str | None:
    """A span's ``parentSpanId`` as lowercase hex, or ``None`` for a root span: empty, or all zeros (the invalid span id,
    which older .NET and Java OTLP exporters, OpenCensus bridges and some converters write for "no parent" instead of
    leaving the field empty; the SDKs read it as no parent too)."""
    if not value:
        return None
    try:
        return decode_id(value, 8, "parentSpanId")
    except ShapeError:
        if _all_zeros(value, 8):
            return None
        raise


def _all_zeros(value: str, size: int) -> bool:
    """Whether ``value`` is the all-zero id of ``size`` bytes, in hex or base64."""
    if value == "0" * (size * 2):
        return True
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(decoded) == size and not any(decoded)


def _validate(model: type[_Shape], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ShapeError(describe(exc)) from None


def describe(exc: ValidationError, limit: int = 3) -> str:
    """A validation error as one line: where, what is wrong, what was found."""
    parts = []
    for error in exc.errors(include_url=False)[:limit]:
        where = _location(error["loc"])
        message = error["msg"]
        last = error["loc"][-1] if error["loc"] else None
        if error["type"] in ("dict_type", "model_type") and last in _OBJECT_HINTS:
            message = _OBJECT_HINTS[last]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        message = message[0].lower() + message[1:] if message else message
        detail = "" if error["type"] == "missing" else f" (found {_kind(error.get('input'))})"
        parts.append(f"{where}: {message}{detail}" if where else f"{message}{detail}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _location(loc: tuple[Any, ...]) -> str:
    """``('attributes', 0, 'value')`` -> ``attributes[0].value``; union and tag labels are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _is_union_tag(part):
            out += f".{part}" if out else str(part)
    return out


def _is_union_tag(part: str) -> bool:
    return "[" in part or part in {"int", "str", "float", "none", "function-before", "function-after"} or part.startswith("tag:")


def _kind(value: Any) -> str:
    """What was found where something else was expected, by its JSON type and size, never its value: problem lines go
    to terminals, CI logs and ``--json``, and a misplaced value is as likely as any to be a customer's IBAN or e-mail
    (the store's redaction applies only to what is stored)."""
    if isinstance(value, str):
        return f"a string of {len(value)} character{'s' if len(value) != 1 else ''}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    return f"a {type(value).__name__}"


def _check_depth(value: Any, limit: int, skip: str | None = None) -> None:
    """Raise :class:`ShapeError` when ``value`` nests deeper than ``limit`` (checked without recursion)."""
    todo = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if depth > limit:
            raise ShapeError(f"values nest more than {limit} levels deep; flatten deeply nested attribute values")
        if isinstance(node, Mapping):
            todo.extend((v, depth + 1) for k, v in node.items() if k != skip)
        elif isinstance(node, list):
            todo.extend((v, depth + 1) for v in node)
