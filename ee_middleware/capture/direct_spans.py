"""Spans made straight into :class:`~ee_middleware.capture.spandata.SpanData` for the recorder's own processor.

Without the user's own ``tracer_provider=``, a recorder's spans reach one span
processor, its own: nothing else can see them. Making them through the OpenTelemetry SDK there
built each span twice (the SDK's span, its attributes cleaned one by one under a lock, then the
plain :class:`SpanData` the assembler reads): a fifth of the capture process's CPU per run (issue
11.5: 1.61-1.68 -> 1.30-1.34 ms replaying the benchmark's runs). :class:`DirectTracer` makes the plain record at once, with the SDK's semantics where
the recorder or the user's code can see a difference:

- A span's parent is the span in the context it is started in (the current one without a context,
  as the SDK's ``start_span``): a run inside the user's own span continues its trace (the root is never made the
  current span: no exporter of the user's gets it, so spans their code opens keep the parent they have without capture;
  a recorded run inside another starts under the outer run's root, in its trace).
- Attribute values are kept as the SDK keeps them: sequences become tuples, other types go through
  the SDK's own cleaning. Unlike a private SDK provider, no ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` or
  ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` set for the user's exporters cuts a recorded payload.
- Every span is recorded: ``OTEL_TRACES_SAMPLER`` and an unsampled parent are the user's choices
  for what their exporters see, not for what capture stores (a private SDK provider read them and
  stored none or a fraction of the runs). A run's root span is *marked* sampled or not as the user's
  sampler decides (their global SDK provider's, else the one ``OTEL_TRACES_SAMPLER`` names), as the stored run's trace
  flags say; spans below the root share its flags.
- Read as an SDK span (by a span processor, or code handed the span): ``name``, ``attributes``, ``parent``,
  ``status``, ``events``, ``start_time``... are there, read-only.
- ``set_status``, ``record_exception`` and calls on an ended span behave as the SDK's; a span ended on
  one thread while another still sets attributes on it takes none after its end.

A user's own ``tracer_provider`` keeps the SDK's spans: their exporters must see them.
"""

from __future__ import annotations

import random
import threading
import traceback
import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry import trace
from opentelemetry.attributes import _clean_attribute_value
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from ee_middleware.capture.clock import now_ns
from ee_middleware.capture.spandata import SpanData

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from ee_middleware.capture.processor import ExperienceSpanProcessor

__all__ = ["DirectSpan", "DirectTracer", "RootIds", "StandInSpan", "cleaned_attributes", "resource_attributes"]

_PLAIN = (str, bool, int, float)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM_TRACE_ID = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))
"""W3C Trace Context level 2's flag for a random trace id (set by SDKs that know it on the trace ids they generate)."""


class RootIds(NamedTuple):
    """A root span's ids decided in one process and used to make the span in another (the capture process): a recorded
    run inside it nests under a stand-in with these ids while the run is in flight, and the stored run is in the same
    trace."""

    trace_id: int
    span_id: int
    trace_flags: int
    parent_span_id: int | None
    parent_remote: bool | None
    trace_state: tuple[tuple[str, str], ...] = ()

    def contexts(self) -> tuple[SpanContext, SpanContext | None]:
        """The span's context and its parent's."""
        state = TraceState(list(self.trace_state)) if self.trace_state else None
        own = SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=TraceFlags(self.trace_flags), trace_state=state)
        if self.parent_span_id is None:
            return own, None
        return own, SpanContext(self.trace_id, self.parent_span_id, is_remote=bool(self.parent_remote))


def env_sampler() -> Any:
    """The sampler an SDK ``TracerProvider()`` takes from ``OTEL_TRACES_SAMPLER``/``_ARG`` (``parentbased_always_on``
    where unset or unreadable)."""
    from opentelemetry.sdk.trace import sampling

    read = getattr(sampling, "_get_from_env_or_default", None)
    try:
        sampler = read() if callable(read) else None
    except Exception:  # noqa: BLE001 - an unreadable setting: the SDK's default
        sampler = None
    return sampler if sampler is not None else sampling.ParentBased(sampling.ALWAYS_ON)


def resource_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of the SDK resource made from ``attributes`` (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``
    and the SDK's own ``telemetry.sdk.*`` merged in as ``Resource.create`` does), read once per recorder."""
    from opentelemetry.sdk.resources import Resource

    return dict(Resource.create(dict(attributes)).attributes)


class DirectTracer:
    """Starts :class:`DirectSpan` s whose ended records go to ``processor`` (:meth:`ExperienceSpanProcessor.on_end_data`)."""

    def __init__(self, processor: ExperienceSpanProcessor, resource: Mapping[str, Any], sampler: Any = None) -> None:
        self.processor = processor
        self.resource = dict(resource)
        self.sampler = sampler
        self._env_sampler: Any = None

    def user_sampler(self) -> Any:
        """The sampler that decides a root's flags: the one given, else the global SDK provider's (a sampler set in code
        or through an entry point), else the one ``OTEL_TRACES_SAMPLER`` names (read once)."""
        if self.sampler is not None:
            return self.sampler
        sampler = getattr(trace.get_tracer_provider(), "sampler", None)
        if sampler is not None and callable(getattr(sampler, "should_sample", None)):
            return sampler
        if self._env_sampler is None:
            self._env_sampler = env_sampler()
        return self._env_sampler

    def root_ids(
        self, name: str, context: Context | None = None, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None
    ) -> RootIds:
        """The ids of a span started now in ``context`` (the current context when ``None``): in its parent's trace, marked
        sampled as the sampler decides where the parent is not a span of this module (whose flags it shares)."""
        parent_span = trace.get_current_span(context)
        parent = parent_span.get_span_context()
        valid = parent.is_valid
        trace_id = parent.trace_id if valid else (random.getrandbits(128) or 1)
        state = parent.trace_state if valid else None
        if isinstance(parent_span, DirectSpan):
            flags = int(parent.trace_flags)
        else:  # as the SDK's start_span: sampled as the sampler says, the random-trace-id flag as the trace's
            try:
                result = self.user_sampler().should_sample(context, trace_id, name, kind, attributes)
                flags, state = int(_SAMPLED if result.decision.is_sampled() else _NOT_SAMPLED), result.trace_state
            except Exception:  # noqa: BLE001 - a user's sampler that fails marks nothing out: the SDK's default
                flags = int(parent.trace_flags) & 1 if valid else int(_SAMPLED)
            if _RANDOM_TRACE_ID and (getattr(parent.trace_flags, "random_trace_id", False) if valid else True):
                flags |= _RANDOM_TRACE_ID
        return RootIds(
            trace_id,
            random.getrandbits(64) or 1,
            flags,
            parent.span_id if valid else None,
            parent.is_remote if valid else None,
            tuple(state.items()) if state else (),
        )

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        start_time: int | None = None,
        *,
        ids: RootIds | None = None,
    ) -> DirectSpan:
        """A started span, the child of the span in ``context`` (the current context when ``None``), or with the ``ids``
        decided earlier (:meth:`root_ids`)."""
        start = now_ns() if start_time is None else start_time
        if ids is None:
            parent_span = trace.get_current_span(context)
            if isinstance(parent_span, DirectSpan):  # a call's span below its run's root: the root's trace and flags
                parent = parent_span._context
                own = SpanContext(parent.trace_id, random.getrandbits(64) or 1, False, parent.trace_flags, parent.trace_state)
                return DirectSpan(self, name, kind, own, parent, attributes, start)
            ids = self.root_ids(name, context, kind, attributes)
        own, parent_context = ids.contexts()
        return DirectSpan(self, name, kind, own, parent_context, attributes, start)


class DirectSpan(trace.Span):
    """A recording span that becomes a :class:`SpanData` when it ends."""

    def __init__(
        self,
        tracer: DirectTracer,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: Mapping[str, Any] | None,
        start_ns: int,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._context = context
        self._parent = parent
        self._start_ns = start_ns
        self._end_ns: int | None = None
        self._attributes: dict[str, Any] = cleaned_attributes(attributes) if attributes else {}
        self._events: list[tuple[str, dict[str, Any], int]] = []
        self._status = Status(StatusCode.UNSET)
        self._lock = threading.Lock()  # a span's end and a late call from another thread: nothing lands after the end

    # --- trace.Span ---------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_ns is None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        cleaned = cleaned_attributes(attributes)
        with self._lock:
            if self._end_ns is None:
                self._attributes.update(cleaned)

    def set_attribute(self, key: str, value: Any) -> None:
        self.set_attributes({key: value})

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        event = (name, cleaned_attributes(attributes) if attributes else {}, now_ns() if timestamp is None else timestamp)
        with self._lock:
            if self._end_ns is None:
                self._events.append(event)

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        """Links are not read by trajectory assembly: accepted and not kept."""

    def update_name(self, name: str) -> None:
        with self._lock:
            if self._end_ns is None:
                self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if isinstance(status, StatusCode):
            status = Status(status, description)
        with self._lock:
            # as the SDK: an OK status is final, and UNSET never replaces one
            if self._end_ns is None and self._status.status_code is not StatusCode.OK and status.status_code is not StatusCode.UNSET:
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
        with self._lock:
            if self._end_ns is not None:
                return
            self._end_ns = now_ns() if end_time is None else end_time
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
                events=tuple((name, attrs) for name, attrs, _ in self._events),
                resource=dict(self._tracer.resource),
                parent_remote=parent.is_remote if parent is not None else None,
            )
        )

    # --- what an SDK span also lets its readers see (read-only) ---------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> SpanKind:
        return self._kind

    @property
    def context(self) -> SpanContext:
        return self._context

    @property
    def parent(self) -> SpanContext | None:
        return self._parent

    @property
    def attributes(self) -> Mapping[str, Any]:
        return types.MappingProxyType(self._attributes)

    @property
    def events(self) -> tuple[Any, ...]:
        from opentelemetry.sdk.trace import Event

        return tuple(Event(name, attrs, timestamp) for name, attrs, timestamp in self._events)

    @property
    def links(self) -> tuple[Any, ...]:
        return ()

    @property
    def status(self) -> Status:
        return self._status

    @property
    def start_time(self) -> int:
        return self._start_ns

    @property
    def end_time(self) -> int | None:
        return self._end_ns

    @property
    def resource(self) -> Any:
        from opentelemetry.sdk.resources import Resource

        return Resource(self._tracer.resource)

    @property
    def instrumentation_scope(self) -> None:
        return None

    dropped_attributes = dropped_events = dropped_links = 0


class StandInSpan(NonRecordingSpan):
    """The root span, in the agent's process, of a run whose spans the capture process makes (``offload="process"``),
    what a recorded run inside it starts under: it records nothing here, and reads as the run's root span does in thread
    mode where the agent's process knows it (name, parent, times); ``attributes`` and ``events`` are empty (they are
    made there)."""

    def __init__(self, name: str, ids: RootIds, start_ns: int) -> None:
        own, parent = ids.contexts()
        super().__init__(own)
        self.name = name
        self.parent = parent
        self.start_time = start_ns

    kind = SpanKind.INTERNAL
    end_time = None
    attributes: Mapping[str, Any] = types.MappingProxyType({})
    events: tuple[Any, ...] = ()
    links: tuple[Any, ...] = ()
    status = Status(StatusCode.UNSET)
    instrumentation_scope = None
    dropped_attributes = dropped_events = dropped_links = 0

    @property
    def context(self) -> SpanContext:
        return self.get_span_context()


def cleaned_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
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
