"""Spans made straight into :class:`~ee_middleware.capture.spandata.SpanData` for the recorder's own processor.

Without the user's own ``tracer_provider=``, a recorder's spans reach one span
processor, its own: nothing else can see them. Making them through the OpenTelemetry SDK there
built each span twice (the SDK's span, its attributes cleaned one by one under a lock, then the
plain :class:`SpanData` the assembler reads): a fifth of the capture process's CPU per run (issue
11.5: 1.61-1.68 -> 1.30-1.34 ms replaying the benchmark's runs). :class:`DirectTracer` makes the plain record at once, with the SDK's semantics where
the recorder or the user's code can see a difference:

- A span's parent is the span in the context it is started in (the current one without a context,
  as the SDK's ``start_span``): a run inside the user's own span continues its trace.
- Attribute values are kept as the SDK keeps them: sequences become tuples, other types go through
  the SDK's own cleaning. Unlike a private SDK provider, no ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` or
  ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` set for the user's exporters cuts a recorded payload.
- Every span is recorded: ``OTEL_TRACES_SAMPLER`` and an unsampled parent are the user's choices
  for what their exporters see, not for what capture stores (a private SDK provider read them and
  stored none or a fraction of the runs). The span's trace flags are its parent's, so that spans
  the user's code starts below it are sampled as their parent was.
- ``set_status``, ``record_exception`` and calls on an ended span behave as the SDK's.

A user's own ``tracer_provider`` keeps the SDK's spans: their exporters must see them.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.attributes import _clean_attribute_value
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from ee_middleware.capture.spandata import SpanData

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from ee_middleware.capture.processor import ExperienceSpanProcessor

__all__ = ["DirectSpan", "DirectTracer", "resource_attributes"]

_PLAIN = (str, bool, int, float)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def resource_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of the SDK resource made from ``attributes`` (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``
    and the SDK's own ``telemetry.sdk.*`` merged in as ``Resource.create`` does), read once per recorder."""
    from opentelemetry.sdk.resources import Resource

    return dict(Resource.create(dict(attributes)).attributes)


class DirectTracer:
    """Starts :class:`DirectSpan` s whose ended records go to ``processor`` (:meth:`ExperienceSpanProcessor.on_end_data`)."""

    def __init__(self, processor: ExperienceSpanProcessor, resource: Mapping[str, Any]) -> None:
        self.processor = processor
        self.resource = dict(resource)

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        start_time: int | None = None,
    ) -> DirectSpan:
        """A started span, the child of the span in ``context`` (the current context when ``None``)."""
        parent = trace.get_current_span(context).get_span_context()
        if not parent.is_valid:
            parent = None
        span_id = random.getrandbits(64) or 1
        if parent is None:
            ids = SpanContext(random.getrandbits(128) or 1, span_id, is_remote=False, trace_flags=_SAMPLED)
        else:
            ids = SpanContext(parent.trace_id, span_id, is_remote=False, trace_flags=parent.trace_flags, trace_state=parent.trace_state)
        return DirectSpan(self, name, ids, parent, attributes, time.time_ns() if start_time is None else start_time)


class DirectSpan(trace.Span):
    """A recording span that becomes a :class:`SpanData` when it ends."""

    def __init__(
        self,
        tracer: DirectTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: Mapping[str, Any] | None,
        start_ns: int,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._start_ns = start_ns
        self._end_ns: int | None = None
        self._attributes: dict[str, Any] = {}
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._status = Status(StatusCode.UNSET)
        if attributes:
            self._set_all(attributes)

    # --- trace.Span ---------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_ns is None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end_ns is None:
            self._set_all(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_ns is None:
            self._set_all({key: value})

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self._end_ns is None:
            self._events.append((name, _cleaned(attributes) if attributes else {}))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        """Links are not read by trajectory assembly: accepted and not kept."""

    def update_name(self, name: str) -> None:
        if self._end_ns is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # as the SDK: an OK status is final, and UNSET never replaces one
        if self._end_ns is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self, exception: BaseException, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None, escaped: bool = False
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        event = {
            "exception.type": f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_ns is not None:
            return
        self._end_ns = time.time_ns() if end_time is None else end_time
        parent = self._parent
        status = self._status
        self._tracer.processor.on_end_data(
            SpanData(
                trace_id=f"{self._context.trace_id:032x}",
                span_id=f"{self._context.span_id:016x}",
                parent_span_id=f"{parent.span_id:016x}" if parent is not None else None,
                name=self._name,
                start_ns=self._start_ns,
                end_ns=self._end_ns,
                attributes=self._attributes,
                status_code=status.status_code.name,
                status_message=status.description,
                events=tuple(self._events),
                resource=dict(self._tracer.resource),
                parent_remote=parent.is_remote if parent is not None else None,
            )
        )

    # --- internals ----------------------------------------------------------------------------

    def _set_all(self, attributes: Mapping[str, Any]) -> None:
        self._attributes.update(_cleaned(attributes))


def _cleaned(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """``attributes`` as the SDK keeps them (without its limits): plain values as they are, sequences as tuples, other
    values through the SDK's own cleaning; a key that is not a non-empty string is dropped, as the SDK drops it."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if not key or not isinstance(key, str):
            continue
        if type(value) in _PLAIN:
            out[key] = value
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and all(type(v) in _PLAIN for v in value):
            out[key] = tuple(value)
        else:
            out[key] = _clean_attribute_value(value, None)
    return out
