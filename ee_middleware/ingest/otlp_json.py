"""Read OTLP JSON trace files into :class:`~ee_middleware.capture.spandata.SpanData`.

Accepts what an OpenTelemetry Collector's ``file`` exporter writes (one ``ExportTraceServiceRequest``
JSON object per line) and single pretty-printed documents. Trace and span ids may be hex (the OTLP
JSON mapping) or base64 (protobuf's generic JSON mapping). Every request and span is checked against
the OTLP shapes (:mod:`ee_middleware.ingest.otlp_schema`); what does not fit is reported with its
location and skipped, and the rest of the file is still read. A file that is not text, or not
JSON at all, is one problem, never one per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_middleware.capture.spandata import SpanData
from ee_middleware.ingest.otlp_schema import ShapeError, check_request, check_span, loose_ids, resource_attributes

_EXPECTED = "expected OTLP JSON (one ExportTraceServiceRequest per line, as a Collector's file exporter writes)"


@dataclass(frozen=True)
class RejectedSpan:
    """A span that failed its check, by the ids that could still be read from it."""

    trace_id: str | None
    span_id: str | None
    parent_span_id: str | None
    name: str


@dataclass
class ParseResult:
    """Spans read from a file, with one message per span, line or file that could not be read.

    ``rejected`` lists the spans that failed their check, so that the runs they belonged to are not
    stored without them.
    """

    spans: list[SpanData] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rejected: list[RejectedSpan] = field(default_factory=list)


def read_otlp_json(path: str | Path) -> ParseResult:
    """Read every span of an OTLP JSON file."""
    path = Path(path)
    result = ParseResult()
    try:
        data = path.read_bytes()
    except OSError as exc:
        result.errors.append(f"{path}: cannot read the file: {exc.strerror or exc}")
        return result
    text = _text(path, data, result.errors)
    if text is not None:
        for where, document in _documents(path, text, result.errors):
            _read_request(document, where, result)
    return result


def _text(path: Path, data: bytes, errors: list[str]) -> str | None:
    """The file as text, or None with one error when it is binary (OTLP protobuf, junk)."""
    nul = data.find(b"\0")
    if nul >= 0:
        errors.append(f"{path}: not a text file (a NUL byte at offset {nul}); {_EXPECTED}. Binary OTLP (protobuf) is not read.")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        errors.append(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); {_EXPECTED}.")
        return None


def _documents(path: Path, text: str, errors: list[str]) -> Iterator[tuple[str, Any]]:
    stripped = text.strip()
    if not stripped:
        errors.append(f"{path}: the file is empty; {_EXPECTED}.")
        return
    try:
        yield f"{path}", json.loads(stripped)
        return
    except (ValueError, RecursionError) as exc:
        whole_file_error = exc
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(lines) < 2 or _loads(lines[0][1]) is None:
        where = f"{path}:{lines[0][0]}" if len(lines) == 1 else f"{path}"
        errors.append(f"{where}: not valid JSON ({_json_problem(whole_file_error)}); {_EXPECTED}.")
        return
    for number, line in lines:  # JSON Lines: one request per line
        try:
            yield f"{path}:{number}", json.loads(line)
        except (ValueError, RecursionError) as exc:
            errors.append(f"{path}:{number}: not valid JSON ({_json_problem(exc)}); line skipped.")


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _json_problem(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "arrays or objects nested too deeply to read"
    return str(exc)


def _read_request(document: Any, where: str, result: ParseResult) -> None:
    if isinstance(document, list):
        for i, item in enumerate(document):
            _read_request(item, f"{where}[{i}]", result)
        return
    try:
        request = check_request(document)
    except ShapeError as exc:
        result.errors.append(f"{where}: {exc}; skipped.")
        return
    for r, resource_spans in enumerate(request.resourceSpans):
        resource = resource_attributes(resource_spans)
        for s, scope_spans in enumerate(resource_spans.scopeSpans):
            for k, raw in enumerate(scope_spans.spans):
                try:
                    result.spans.append(check_span(raw, resource))
                except ShapeError as exc:
                    name = raw.get("name") if isinstance(raw, Mapping) else None
                    name = name[:80] if isinstance(name, str) else ""
                    label = f" ({name!r})" if name else ""
                    result.errors.append(f"{where} resourceSpans[{r}].scopeSpans[{s}].spans[{k}]{label}: {exc}; span skipped.")
                    result.rejected.append(RejectedSpan(*loose_ids(raw), name=name))


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
