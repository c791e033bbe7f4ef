"""Read OTLP JSON trace files into :class:`~ee_middleware.capture.spandata.SpanData`.

Accepts what an OpenTelemetry Collector's ``file`` exporter writes (one ``ExportTraceServiceRequest``
JSON object per line) and single pretty-printed documents. Trace and span ids may be hex (the OTLP
JSON mapping) or base64 (protobuf's generic JSON mapping). A span that cannot be read is reported
with its location and skipped; the rest of the file is still read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_middleware.capture.spandata import SpanData

_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR", "STATUS_CODE_UNSET": "UNSET", "STATUS_CODE_OK": "OK", "STATUS_CODE_ERROR": "ERROR"}


@dataclass
class ParseResult:
    """Spans read from a file, with one message per span or line that could not be read."""

    spans: list[SpanData] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_otlp_json(path: str | Path) -> ParseResult:
    """Read every span of an OTLP JSON file."""
    path = Path(path)
    result = ParseResult()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        result.errors.append(f"{path}: cannot read the file: {exc.strerror or exc}")
        return result
    for where, document in _documents(path, text, result.errors):
        _read_request(document, where, result)
    return result


def _documents(path: Path, text: str, errors: list[str]) -> Iterator[tuple[str, Any]]:
    stripped = text.strip()
    if not stripped:
        errors.append(f"{path}: the file is empty; expected OTLP JSON (one export request per line).")
        return
    try:
        yield f"{path}", json.loads(stripped)
        return
    except json.JSONDecodeError:
        pass  # JSON Lines: one request per line
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); line skipped.")


def _read_request(document: Any, where: str, result: ParseResult) -> None:
    if isinstance(document, list):
        for i, item in enumerate(document):
            _read_request(item, f"{where}[{i}]", result)
        return
    if not isinstance(document, Mapping) or "resourceSpans" not in document:
        result.errors.append(f"{where}: expected an OTLP export request with 'resourceSpans'; skipped.")
        return
    for r, resource_spans in enumerate(_list(document.get("resourceSpans"))):
        resource = _attributes((resource_spans.get("resource") or {}).get("attributes")) if isinstance(resource_spans, Mapping) else {}
        scopes = (
            _list(resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans"))
            if isinstance(resource_spans, Mapping)
            else []
        )
        for s, scope_spans in enumerate(scopes):
            for k, raw in enumerate(_list(scope_spans.get("spans") if isinstance(scope_spans, Mapping) else None)):
                location = f"{where} resourceSpans[{r}].scopeSpans[{s}].spans[{k}]"
                try:
                    result.spans.append(_span(raw, resource))
                except (ValueError, TypeError, KeyError) as exc:
                    name = raw.get("name") if isinstance(raw, Mapping) else None
                    label = f" ({name!r})" if name else ""
                    result.errors.append(f"{location}{label}: {exc}; span skipped.")


def _span(raw: Any, resource: Mapping[str, Any]) -> SpanData:
    if not isinstance(raw, Mapping):
        raise TypeError(f"a span must be a JSON object, got {type(raw).__name__}")
    trace_id = _id(raw.get("traceId"), 16, "traceId")
    span_id = _id(raw.get("spanId"), 8, "spanId")
    parent = raw.get("parentSpanId")
    parent_id = _id(parent, 8, "parentSpanId") if parent else None
    start = _int(raw.get("startTimeUnixNano"), "startTimeUnixNano")
    end = _int(raw.get("endTimeUnixNano", start), "endTimeUnixNano")
    if end < start:
        raise ValueError(f"endTimeUnixNano ({end}) is before startTimeUnixNano ({start})")
    status = raw.get("status") or {}
    events = tuple((str(e.get("name", "")), _attributes(e.get("attributes"))) for e in _list(raw.get("events")) if isinstance(e, Mapping))
    return SpanData(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_id,
        name=str(raw.get("name") or ""),
        start_ns=start,
        end_ns=end,
        attributes=_attributes(raw.get("attributes")),
        status_code=_STATUS.get(status.get("code", 0), "UNSET") if isinstance(status, Mapping) else "UNSET",
        status_message=status.get("message") if isinstance(status, Mapping) else None,
        events=events,
        resource=dict(resource),
    )


def _id(value: Any, size: int, field_name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field_name} is missing or not a string")
    if len(value) == size * 2:
        try:
            int(value, 16)
            return value.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise ValueError(f"{field_name} {value!r} is neither {size * 2} hex digits nor base64 of {size} bytes")
    return raw.hex()


def _int(value: Any, field_name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field_name} must be an integer (nanoseconds), got {value!r}") from None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in _list(items):
        if isinstance(item, Mapping) and "key" in item:
            out[str(item["key"])] = _value(item.get("value") or {})
    return out


def _value(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_value(v) for v in _list((value["arrayValue"] or {}).get("values"))]
    if "kvlistValue" in value:
        return _attributes((value["kvlistValue"] or {}).get("values"))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def spans_to_otlp_json(spans: list[Any], resource: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Encode SDK ``ReadableSpan`` objects as one OTLP JSON export request (hex ids).

    Useful for writing the file a collector's file exporter would write (tests, fixtures, exports).
    """
    encoded = []
    for span in spans:
        ctx = span.get_span_context()
        item: dict[str, Any] = {
            "traceId": f"{ctx.trace_id:032x}",
            "spanId": f"{ctx.span_id:016x}",
            "name": span.name,
            "kind": int(span.kind.value) + 1,
            "startTimeUnixNano": str(span.start_time),
            "endTimeUnixNano": str(span.end_time),
            "attributes": [{"key": k, "value": _encode_value(v)} for k, v in (span.attributes or {}).items()],
            "status": {"code": {"UNSET": 0, "OK": 1, "ERROR": 2}[span.status.status_code.name], "message": span.status.description or ""},
            "events": [
                {
                    "name": e.name,
                    "timeUnixNano": str(e.timestamp),
                    "attributes": [{"key": k, "value": _encode_value(v)} for k, v in (e.attributes or {}).items()],
                }
                for e in span.events
            ],
        }
        if span.parent is not None:
            item["parentSpanId"] = f"{span.parent.span_id:016x}"
        encoded.append(item)
    resource_attrs = dict(resource or (spans[0].resource.attributes if spans else {}))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": k, "value": _encode_value(v)} for k, v in resource_attrs.items()]},
                "scopeSpans": [{"scope": {"name": "ee_middleware"}, "spans": encoded}],
            }
        ]
    }


def _encode_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_encode_value(v) for v in value]}}
    return {"stringValue": str(value)}
