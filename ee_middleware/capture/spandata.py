"""A neutral, plain-data view of a finished span.

Both live SDK spans (:class:`opentelemetry.sdk.trace.ReadableSpan`) and spans read from OTLP JSON
files become :class:`SpanData`, so that one assembler turns either into trajectories.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SpanData:
    """The parts of a span that trajectory assembly reads."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)
    status_code: str = "UNSET"  # UNSET | OK | ERROR
    status_message: str | None = None
    events: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    resource: Mapping[str, Any] = field(default_factory=dict)
    parent_remote: bool | None = None
    """Whether the parent span is in another process (continued from a W3C ``traceparent``: OTLP span ``flags`` bits 8
    and 9); None where that is not recorded (no parent, or an exporter that writes no flags)."""
    scope: str | None = None
    """The name of the instrumentation scope that wrote it (``opentelemetry.instrumentation.openai_v2``), where known."""

    @property
    def duration_ms(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e6

    @property
    def is_error(self) -> bool:
        return self.status_code == "ERROR"

    def exception_message(self) -> str | None:
        """The message of the first recorded exception event, if any."""
        for name, attrs in self.events:
            if name == "exception":
                kind = attrs.get("exception.type")
                message = attrs.get("exception.message")
                return f"{kind}: {message}" if kind else str(message)
        return None


def from_readable_span(span: Any) -> SpanData:
    """Convert an SDK ``ReadableSpan``."""
    context = span.get_span_context()
    parent = span.parent
    return SpanData(
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_span_id=f"{parent.span_id:016x}" if parent is not None else None,
        name=span.name,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or span.start_time or 0,
        attributes=_plain(span.attributes),
        status_code=span.status.status_code.name,
        status_message=span.status.description,
        events=tuple((e.name, _plain(e.attributes)) for e in span.events),
        resource=_resource_attributes(span.resource),
        parent_remote=parent.is_remote if parent is not None else None,
        scope=getattr(getattr(span, "instrumentation_scope", None), "name", None) or None,
    )


def _plain(attributes: Any) -> dict[str, Any]:
    """A copy of a span's or event's attributes as a dict: the SDK's ``BoundedAttributes`` copies its
    own dict (``copy()``); ``dict()`` of it would read it key by key through the mapping protocol
    (a third of this function's time)."""
    if not attributes:
        return {}
    copy = getattr(attributes, "copy", None)
    plain = copy() if callable(copy) else None
    return plain if type(plain) is dict else dict(attributes)


_RESOURCE: list[tuple[Any, dict[str, Any]]] = [(None, {})]  # the last resource and its (immutable) attributes: one per provider


def _resource_attributes(resource: Any) -> dict[str, Any]:
    if resource is None:
        return {}
    cached = _RESOURCE[0]  # read once: another thread may replace it
    if cached[0] is not resource:
        cached = (resource, dict(resource.attributes))
        _RESOURCE[0] = cached
    return dict(cached[1])
