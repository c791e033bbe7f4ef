"""Read OTLP JSON trace files into :class:`~ee_middleware.capture.spandata.SpanData`.

Accepts what an OpenTelemetry Collector's ``file`` exporter writes (one ``ExportTraceServiceRequest``
JSON object per line) and single pretty-printed documents. Trace and span ids may be hex (the OTLP
JSON mapping) or base64 (protobuf's generic JSON mapping). Every request and span is checked against
the OTLP shapes (:mod:`ee_middleware.ingest.otlp_schema`); what does not fit is reported with its
location and skipped, and the rest of the file is still read. A file that is not text, or not
JSON at all, is one problem, never one per line. Files are read as they stream (one line at a time;
gzip'd files as they decompress); a zstd-compressed or protobuf file is one problem naming the
Collector setting that writes JSON.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_middleware._text import numbered_lines
from ee_middleware.capture.spandata import SpanData
from ee_middleware.ingest.otlp_schema import (
    SPAN_FLAGS_HAS_IS_REMOTE,
    SPAN_FLAGS_IS_REMOTE,
    Dropped,
    ShapeError,
    check_request,
    loose_ids,
    never_ended,
    read_span,
    resource_attributes,
)

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
    stored without them; ``unended`` the (trace id, span id) of spans written without an end time; ``dropped`` what the
    SDK dropped from a span to keep within its span limits (attributes, events), by (trace id, span id), for the spans
    that say so.
    """

    spans: list[SpanData] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rejected: list[RejectedSpan] = field(default_factory=list)
    unended: set[tuple[str, str]] = field(default_factory=set)
    dropped: dict[tuple[str, str], Dropped] = field(default_factory=dict)


def read_otlp_json(path: str | Path) -> ParseResult:
    """Read every span of an OTLP JSON file."""
    result = ParseResult()
    result.spans.extend(iter_otlp_json(path, result))
    return result


def iter_otlp_json(path: str | Path, sink: ParseResult) -> Iterator[SpanData]:
    """The spans of an OTLP JSON file one at a time; its problems and rejected spans go to ``sink``.

    A JSON Lines file is read line by line, so memory holds one request at a time whatever the file's
    size (a single pretty-printed document is read whole). A gzip'd file is read as it decompresses.
    """
    path = Path(path)
    problems, seen, spans = len(sink.errors), Counter[str](), 0
    try:
        with path.open("rb") as raw:
            magic = raw.peek(4)[:4]
            if magic[:2] == _GZIP:
                with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                    for span in _read_stream(path, io.BufferedReader(unzipped, _HEAD), sink, seen):  # type: ignore[arg-type]
                        spans += 1
                        yield span
            elif magic == _ZSTD:
                sink.errors.append(
                    f"{path}: zstd-compressed (a Collector file exporter's 'compression: zstd'), which is not read; "
                    "set 'format: json' without compression on the file exporter (or gzip the files)."
                )
            else:
                for span in _read_stream(path, raw, sink, seen):
                    spans += 1
                    yield span
    except gzip.BadGzipFile as exc:
        sink.errors.append(f"{path}: not a readable gzip file ({exc}).")
    except (EOFError, zlib.error) as exc:
        sink.errors.append(f"{path}: a damaged or cut gzip file ({exc}); the spans before the damage were read.")
    except OSError as exc:
        sink.errors.append(f"{path}: cannot read the file: {exc.strerror or exc}")
    if not spans and len(sink.errors) == problems:
        sink.errors.append(f"{path}: {_no_spans(seen)}; {_EXPECTED}.")


def _no_spans(seen: Counter[str]) -> str:
    """What a file that was read without a problem, yet held no span, held instead (``seen``: what
    :func:`_read_request` counted): as an empty file is, it is one problem (a mistaken export goes unnoticed else)."""
    if not seen["requests"]:
        return "holds an empty JSON list ([]), no export request"
    return f"holds {seen['requests']} export request(s) with no span in them"


def _read_stream(path: Path, stream: io.BufferedReader, sink: ParseResult, seen: Counter[str]) -> Iterator[SpanData]:
    head = stream.peek(_HEAD)[:_HEAD]
    nul = head.find(_NUL)
    if nul >= 0:  # binary (OTLP protobuf, junk): one problem, never one per line
        sink.errors.append(f"{path}: not a text file (a NUL byte at offset {nul}); {_BINARY}")
        return
    lines = numbered_lines(stream)
    first = next(lines, None)
    if first is None:
        sink.errors.append(f"{path}: the file is empty; {_EXPECTED}.")
        return
    number, line = first
    text = _decode(path, number, line, sink, whole_file=True)
    if text is None:
        return
    document = _loads(text)
    if document is _INVALID:  # not JSON Lines: one document over several lines (pretty-printed), read whole
        whole = _decode(path, number, b"".join([line, *(chunk for _, chunk in lines)]), sink, whole_file=True)
        if whole is None:
            return
        try:
            document = json.loads(whole)
        except (ValueError, RecursionError) as exc:
            where = f"{path}:{number}" if whole.strip() == text.strip() else f"{path}"
            sink.errors.append(f"{where}: not valid JSON ({_json_problem(exc)}); {_EXPECTED}.")
            return
        yield from _read_request(document, f"{path}", sink, seen)
        return
    yield from _read_request(document, f"{path}:{number}", sink, seen)
    for number, line in lines:  # JSON Lines: one request per line
        text = _decode(path, number, line, sink, whole_file=False)
        if text is None:
            continue
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            sink.errors.append(f"{path}:{number}: not valid JSON ({_json_problem(exc)}); line skipped.")
            continue
        yield from _read_request(document, f"{path}:{number}", sink, seen)


_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_NUL = b"\0"
_HEAD = 1 << 16
_BINARY = f"{_EXPECTED}. Binary OTLP (protobuf) is not read: set 'format: json' on the Collector's file exporter."
_INVALID = object()


def _decode(path: Path, number: int, line: bytes, sink: ParseResult, *, whole_file: bool) -> str | None:
    """A line as text, or None with one problem: for the first line, about the whole file (binary, not UTF-8)."""
    where = f"{path}" if whole_file else f"{path}:{number}"
    rest = "" if whole_file else "; line skipped"
    nul = line.find(_NUL)
    if nul >= 0:
        sink.errors.append(
            f"{where}: not a text file (a NUL byte at offset {nul}); {_BINARY}" if whole_file else f"{where}: binary data{rest}."
        )
        return None
    try:
        return line.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        sink.errors.append(f"{where}: not UTF-8 text (byte 0x{line[exc.start]:02x} at offset {exc.start}){rest}; {_EXPECTED}.")
        return None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _INVALID


def _json_problem(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "arrays or objects nested too deeply to read"
    return str(exc)


def _read_request(document: Any, where: str, result: ParseResult, seen: Counter[str] | None = None) -> Iterator[SpanData]:
    """The spans of one JSON document (an export request, or a list of them); ``seen`` counts the requests read."""
    seen = Counter() if seen is None else seen
    if isinstance(document, list):
        for i, item in enumerate(document):
            yield from _read_request(item, f"{where}[{i}]", result, seen)
        return
    try:
        request = check_request(document)
    except ShapeError as exc:
        result.errors.append(f"{where}: {exc}; skipped.")
        return
    seen["requests"] += 1
    for r, resource_spans in enumerate(request.resourceSpans):
        resource = resource_attributes(resource_spans)
        for s, scope_spans in enumerate(resource_spans.scopeSpans):
            for k, raw in enumerate(scope_spans.spans):
                try:
                    span, dropped = read_span(raw, resource, scope_spans.scope_name)
                except ShapeError as exc:
                    name = raw.get("name") if isinstance(raw, Mapping) else None
                    name = name[:80] if isinstance(name, str) else ""
                    label = f" ({name!r})" if name else ""
                    result.errors.append(f"{where} resourceSpans[{r}].scopeSpans[{s}].spans[{k}]{label}: {exc}; span skipped.")
                    result.rejected.append(RejectedSpan(*loose_ids(raw), name=name))
                    continue
                if never_ended(raw):
                    result.unended.add((span.trace_id, span.span_id))
                if dropped:
                    result.dropped[(span.trace_id, span.span_id)] = dropped
                yield span


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
        remote = span.parent is not None and span.parent.is_remote
        item["flags"] = SPAN_FLAGS_HAS_IS_REMOTE | (SPAN_FLAGS_IS_REMOTE if remote else 0)  # as the SDK's OTLP encoder
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
