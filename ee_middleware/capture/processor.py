"""An OpenTelemetry span processor that writes finished agent runs into an experience store.

Add it to any SDK ``TracerProvider``: it buffers GenAI spans per run and, when the run's root span
ends, assembles a trajectory and writes it from a background thread. ``on_end`` only appends to a
buffer, so it never blocks the thread that ended the span. While runs keep finishing, the writer
writes at most once every ``min_write_interval_s`` (one ``write`` and one ``fsync`` for all the runs
finished meanwhile: a third of the CPU per trajectory of writing each alone); ``force_flush`` writes
at once.

With ``recorder_id`` set (as :func:`~ee_middleware.record_experience` does), it takes only the spans
of that recorder. Without it, it takes every GenAI span, and the spans above them, and reads a trace when its local
root span ends as ``ee traces ingest`` reads those spans (:func:`~ee_middleware.ingest.service.ingest_spans`: the same
runs, the other instrumentations' dialects, the store's redaction): this is how traces from other instrumentations
(OpenLLMetry, OpenInference, the GenAI conventions' event form) are captured live.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import AssemblyOptions, assemble, split_nested
from ee_middleware.capture.config import env_flag
from ee_middleware.capture.direct_spans import cleaned_attributes
from ee_middleware.capture.normalize import operation_of
from ee_middleware.capture.paused import PausedDecisions
from ee_middleware.capture.spandata import SpanData, from_readable_span
from ee_middleware.errors import CaptureError, RecordError, RedactFnError
from ee_middleware.records import Approval, Trajectory, approve_if_verdict, utcnow
from ee_middleware.store.protocol import ExperienceStore, check_store_object

logger = logging.getLogger("ee_middleware.capture")

ApprovePredicate = Callable[[Trajectory], bool]

AUTO_APPROVER = "auto:approve_if"
"""Who approved a run ``approve_if`` approved (its ``approval.by``)."""


@dataclass
class CaptureStats:
    """Counters of what capture did; ``errors`` holds the last few failure messages."""

    trajectories_written: int = 0
    trajectories_auto_approved: int = 0
    runs_failed: int = 0
    """Runs not stored, each counted once however many of its spans failed."""
    approve_if_failed: int = 0
    """Runs whose ``approve_if`` raised: stored all the same, ``pending`` (the message is in ``errors``)."""
    spans_dropped: int = 0
    errors: list[str] = field(default_factory=list)
    runs_not_offloaded: int = 0
    """With capture offloaded to a process: runs recorded in the agent's process instead (objects
    that cannot be pickled); they are stored all the same."""
    runs_recovered: int = 0
    """Runs sent to a capture process that died before it said it wrote them, recorded in the agent's process
    instead (a run it had written is stored twice under one id, which every read drops)."""
    offload_start_failures: int = 0
    """Capture processes that could not be started (logged as warnings): runs were then recorded in
    the agent's process, and none of them failed for it."""
    spans_failed: int = 0
    """Calls whose span could not be finished whole (a ``redact_fn`` or the encoder raised on its payload): the run
    holding one is not stored and counts once in ``runs_failed``; this counts each such span."""
    choices_dropped: int = 0
    """Choices of model calls made with ``n`` > 1 that were left out: each call is recorded with its first choice, the
    reply LangChain's ``invoke`` returns and the graph went on with (the others never reached it). Counted in the agent's
    process (:data:`~ee_middleware.capture.semconv.EE_CHOICES_DROPPED` on each such call's span)."""

    def record_error(self, message: str, *, runs: int = 1, spans: int = 0) -> None:
        """Count a failure of ``runs`` runs (not stored) or of ``spans`` spans, and keep its message."""
        self.runs_failed += runs
        self.spans_failed += spans
        self.errors = [*self.errors, message][-20:]

    def merged(self, other: CaptureStats) -> CaptureStats:
        """The sum of two processes' counters (``errors``: the last 20 of both)."""
        return CaptureStats(
            trajectories_written=self.trajectories_written + other.trajectories_written,
            trajectories_auto_approved=self.trajectories_auto_approved + other.trajectories_auto_approved,
            runs_failed=self.runs_failed + other.runs_failed,
            approve_if_failed=self.approve_if_failed + other.approve_if_failed,
            spans_dropped=self.spans_dropped + other.spans_dropped,
            errors=[*self.errors, *other.errors][-20:],
            runs_not_offloaded=self.runs_not_offloaded + other.runs_not_offloaded,
            runs_recovered=self.runs_recovered + other.runs_recovered,
            offload_start_failures=self.offload_start_failures + other.offload_start_failures,
            spans_failed=self.spans_failed + other.spans_failed,
            choices_dropped=self.choices_dropped + other.choices_dropped,
        )


@dataclass
class _Ancestry:
    """The spans of one trace not kept that hold a span kept (:meth:`ExperienceSpanProcessor._unread_span`)."""

    wanted: set[str] = field(default_factory=set)
    """The parents of the spans kept and remembered: a span not kept is remembered when it is one of them."""
    parents: dict[str, str] = field(default_factory=dict)
    """The parent of each span remembered, by its id."""
    spans: list[SpanData] = field(default_factory=list)
    """The spans remembered (a LangGraph graph's or node's span of another instrumentation: what its runs are read by)."""


def _capture_failure(spans: list[SpanData]) -> str | None:
    """Why a run's ``spans`` are not stored, when capture could not finish one of them whole (a ``redact_fn`` or the
    encoder raised on its payload: :data:`~ee_middleware.capture.semconv.EE_CAPTURE_FAILED`). Assembled from the spans
    left, it would be a cut-down run (steps missing, an empty observation) stored as ``completed`` and approvable; it is
    counted as failed instead, and the reason holds no value of the run."""
    for span in spans:
        failed = span.attributes.get(sc.EE_CAPTURE_FAILED)
        if failed:
            run = next((s.attributes[sc.EE_TRAJECTORY_ID] for s in spans if s.attributes.get(sc.EE_TRAJECTORY_ID)), spans[0].trace_id)
            return f"run {run} was not stored: {failed}, and the trajectory would lack it (see the error logged for it)"
    return None


def _run_failures(parts: list[list[SpanData]]) -> list[str | None]:
    """:func:`_capture_failure` of each run :func:`~ee_middleware.capture.assembler.split_nested` made of one recorded
    run: a call that failed costs the run it belongs to only. A graph run inside a tool (``parts[1:]``) is read from its
    own spans and a root made of the tool call's span (its outcome) and the outer run's root (its app and environment):
    it fails with those too, but not for a failed model or tool call of the outer run elsewhere."""
    outer = parts[0]
    failures = [_capture_failure(outer)]
    for nested in parts[1:]:
        root = nested[0]  # made by split_nested: the tool call's span id, the outer root's as its parent
        inherited = [s for s in outer if s.span_id in (root.span_id, root.parent_span_id)]
        failures.append(_capture_failure([*nested, *inherited]))
    return failures


def strict_default() -> bool:
    """Strict capture (raise instead of log) when ``EE_CAPTURE_STRICT`` is on (our test suite sets it); read by
    :func:`~ee_middleware.capture.config.env_flag`, so a misspelt value is refused, as ``CaptureConfig.load`` refuses it."""
    return env_flag("EE_CAPTURE_STRICT") is True


_SAME_FAILURES_TO_STOP = 3
"""Runs of a refused batch written one by one that failed in a row the same way (type and errno): then the store
refuses every write, and the runs left are reported together instead of each retried (and logged). A
:class:`~ee_middleware.errors.RecordError` (one record the store cannot hold) is that run's fault and never counts."""

_WHOLE_STORE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
"""Operating-system errors no smaller write avoids (a full disk, a quota, a read-only or unreadable folder)."""


_ASSEMBLED: tuple[list[SpanData], dict[str, str]] = ([], {})
"""What :meth:`ExperienceSpanProcessor._write` leaves in a batch's place of a run it has assembled."""


def _refuses_every_write(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in _WHOLE_STORE_ERRNOS


def _trajectories(n: int) -> str:
    return "1 trajectory" if n == 1 else f"{n} trajectories"


class ExperienceSpanProcessor(SpanProcessor):
    """Buffers GenAI spans per agent run and writes each finished run to ``store``."""

    def __init__(
        self,
        store: ExperienceStore,
        *,
        recorder_id: str | None = None,
        options: AssemblyOptions | None = None,
        approve_if: ApprovePredicate | None = None,
        strict: bool | None = None,
        redact_message: Callable[[str], str] | None = None,
        max_buffered_runs: int = 10_000,
        max_batch: int = 256,
        min_write_interval_s: float = 0.05,
    ) -> None:
        check_store_object(
            store,
            given_as="ExperienceSpanProcessor's store",
            takes="an ExperienceStore object (LocalExperienceStore, a plug-in's store: open a folder or a store spec with "
            "ee_middleware.open_store(...))",
        )
        self.store = store
        self.recorder_id = recorder_id
        self.options = options or (
            AssemblyOptions(source="record_experience", model_calls_required=False)
            if recorder_id
            else AssemblyOptions(source="otel-processor")
        )
        self.approve_if = approve_if
        self.strict = strict_default() if strict is None else strict
        self.redact_message = redact_message
        """Applied to every failure message before it is logged or kept in ``stats``: an exception's text
        (from assembly, the store or ``approve_if``) can quote the run's data."""
        self.stats = CaptureStats()
        self.paused = PausedDecisions(store)
        """The tools offered at the decisions runs paused on for a human review, for the runs resuming their threads
        (given to assembly as ``options.paused_tools`` unless the options say otherwise)."""
        self._max_buffered = max_buffered_runs
        self._max_batch = max_batch
        self._write_interval = min_write_interval_s
        self._last_write = 0.0  # when the last write started
        self._flushing = 0
        self._buffers: OrderedDict[str, list[SpanData]] = OrderedDict()
        self._whole: dict[tuple[int, int], dict[str, Any]] = {}  # (keep_whole) by (trace id, span id), until the span ends
        self._unread: dict[str, _Ancestry] = {}
        """Without ``recorder_id``: per trace with spans buffered, the spans not kept (no GenAI operation) above them."""
        self._jobs: list[tuple[list[SpanData], dict[str, str]]] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._failed_seen = 0  # stats.runs_failed at the last force_flush: what it has said already
        self._closed = False
        self._pending_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._may_name_operation: Callable[[Mapping[str, Any]], bool] = lambda attributes: False
        if recorder_id is None:  # other instrumentations' spans are read as ingest reads them: imported here, not in
            # the threads that end spans and write runs (two threads importing ingest at once deadlocked on its modules)
            from ee_middleware.capture.offload import refuse_unimportable_redact_fn
            from ee_middleware.ingest.dialects import adapted_operation, may_name_operation
            from ee_middleware.ingest.service import ingest_spans

            self._may_name_operation, self._adapted_operation, self._ingest_spans = may_name_operation, adapted_operation, ingest_spans
            if self.options.redactor is not None:  # refused now, as a recorder's is, not at every write
                refuse_unimportable_redact_fn(self.options.redactor.custom)
        _processors.add(self)

    # --- SpanProcessor -------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._on_end(span)
        except Exception as exc:  # noqa: BLE001 - capture must never break the host
            self.report_failure(f"could not buffer span {span.name!r}: {exc!r}", exc)

    def _on_end(self, span: ReadableSpan) -> None:
        parent = span.parent
        # a recorder's spans are kept by their trajectory id: the trace id is read only without one (ingest)
        trace_id = "" if self.recorder_id is not None else f"{span.context.trace_id:032x}"
        whole = self._whole.pop((span.context.trace_id, span.context.span_id), None) if self._whole else None
        if whole is not None:  # the values capture gave, not the ones the user's provider cut (keep_whole)
            data = from_readable_span(span)
            data = dataclasses.replace(data, attributes={**data.attributes, **cleaned_attributes(whole)})
            self._keep(data.attributes, trace_id, parent is None or parent.is_remote, data, None)
            return
        self._keep(span.attributes or {}, trace_id, parent is None or parent.is_remote, span, from_readable_span)

    def keep_whole(self, span: Any, attributes: Mapping[str, Any]) -> None:
        """Keep the attributes capture gives ``span``, an SDK span of the user's own ``tracer_provider``, as given, to be
        read back when it ends in place of what the provider kept: its limits (``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``,
        ``SpanLimits``) are for the user's exporters, and cut the JSON of a run's messages, from which no run can be
        assembled (such runs were never stored). Called again for the same span, the attributes add up. A span that does
        not record (its sampler dropped it: it never reaches :meth:`on_end`) is left alone."""
        if not span.is_recording():
            return
        context = span.get_span_context()
        key = (context.trace_id, context.span_id)
        kept = self._whole.get(key)
        self._whole[key] = {**kept, **attributes} if kept is not None else dict(attributes)

    def on_end_data(self, data: SpanData) -> None:
        """A span made as plain data (:class:`~ee_middleware.capture.direct_spans.DirectTracer`): kept as :meth:`on_end`
        keeps an SDK span."""
        try:
            self._keep(data.attributes, data.trace_id, data.parent_span_id is None or bool(data.parent_remote), data, None)
        except Exception as exc:  # noqa: BLE001 - capture must never break the host
            self.report_failure(f"could not buffer span {data.name!r}: {exc!r}", exc)

    def _keep(self, attrs: Mapping[str, Any], trace_id: str, is_root: bool, span: Any, convert: Callable[[Any], SpanData] | None) -> None:
        """Buffer a span of this processor's runs (``convert``-ed to :class:`SpanData` once known to be one)."""
        if self.recorder_id is not None:
            if attrs.get(sc.EE_RECORDER) != self.recorder_id:
                return
            key = str(attrs.get(sc.EE_TRAJECTORY_ID))
            done = operation_of(attrs) == sc.OP_INVOKE_AGENT
        else:
            key, done = trace_id, is_root
            if operation_of(attrs) is None and not (done and key in self._buffers):
                # a span of a dialect that names its operation in its own words (a Langfuse generation) is kept as one
                # that names it is; its other spans (Logfire's web requests, MLflow's traced functions) are not
                data = (convert(span) if convert is not None else span) if self._may_name_operation(attrs) else None
                if data is None or self._adapted_operation(data) is None:
                    if not done:
                        self._unread_span(key, span, convert)
                    return
                self._buffer(key, done, data)
                return
        self._buffer(key, done, convert(span) if convert is not None else span)

    def _unread_span(self, key: str, span: Any, convert: Callable[[Any], SpanData] | None) -> None:
        """Remember the parent of a span not kept (a LangGraph node's) that holds a span kept: the run that span belongs
        to may be that of another instrumentation's spans above it (ee-middleware's own, where
        :func:`~ee_middleware.record_experience` shares this provider), not one of its own. A span ends after the spans
        under it, so only the spans over a GenAI span are remembered, not every span of the app."""
        if key not in self._unread:  # (the common case, a trace holding no GenAI span yet: no lock taken)
            return
        span_id = span.span_id if isinstance(span, SpanData) else f"{span.context.span_id:016x}"
        parent = span.parent_span_id if isinstance(span, SpanData) else f"{span.parent.span_id:016x}" if span.parent else None
        with self._lock:  # (its run may be handed to the writer meanwhile: then nothing is added to what it reads)
            ancestry = self._unread.get(key)
            if ancestry is not None and span_id in ancestry.wanted:
                ancestry.spans.append(convert(span) if convert is not None else span)
                if parent is not None:
                    ancestry.parents[span_id] = parent
                    ancestry.wanted.add(parent)

    def _buffer(self, key: str, done: bool, data: SpanData) -> None:
        """Keep ``data`` with its run's spans (``key``); ``done``: the run's root, whose run goes to the writer."""
        with self._lock:
            if self._closed:
                return
            self._buffers.setdefault(key, []).append(data)
            self._buffers.move_to_end(key)
            if self.recorder_id is None and data.parent_span_id is not None:
                self._unread.setdefault(key, _Ancestry()).wanted.add(data.parent_span_id)
            if done:
                ancestry = self._unread.pop(key, None)
                spans = self._buffers.pop(key)
                if ancestry is not None:
                    spans += ancestry.spans
                self._jobs.append((spans, ancestry.parents if ancestry is not None else {}))
                self._ensure_worker()
                # the writer waits without a time-out only on an empty queue: wake it for the first run, and at the batch
                # bound; between, it keeps its own time (min_write_interval_s). Waking it at every run's end only sent it
                # back to sleep, taking the interpreter lock from the agent (thread mode) or CPU from it (process mode)
                if len(self._jobs) == 1 or len(self._jobs) >= self._max_batch:
                    self._wake.notify_all()  # all: force_flush waits on the same condition
            while len(self._buffers) > self._max_buffered:
                evicted, dropped = self._buffers.popitem(last=False)
                self._unread.pop(evicted, None)
                self.stats.spans_dropped += len(dropped)
                logger.warning("ee-middleware dropped %d spans of a run that never finished (buffer full).", len(dropped))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every finished run has been written: ``True`` when they were, within ``timeout_millis``, and none
        failed since the last flush (a failure is logged and counted in :attr:`stats`; strict mode raises it), as a
        recorder's ``flush()`` answers. It answered ``True`` for runs the store had refused."""
        try:
            in_time = self.flush_in_time(timeout_millis)
        finally:  # (strict mode raised the failure: said once, as this answer says it once)
            failed, self._failed_seen = self.stats.runs_failed > self._failed_seen, self.stats.runs_failed
        return in_time and not failed

    def flush_in_time(self, timeout_millis: int = 30_000) -> bool:
        """:meth:`force_flush` for the recorders, which count failures themselves: ``True`` when every finished run was
        written or given up on within ``timeout_millis``. In strict mode, re-raise a failure."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._lock:
            self._flushing += 1
            self._wake.notify_all()
            try:
                while self._jobs or self._busy:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._wake.wait(remaining)
            finally:
                self._flushing -= 1
            error, self._pending_error = self._pending_error, None
        if error is not None and self.strict:
            raise CaptureError(f"Recording failed: {error}") from error
        return True

    def shutdown(self) -> None:
        self.force_flush()
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._whole.clear()  # (spans still open at shutdown end nowhere now)
        close = getattr(self.store, "close", None)
        if callable(close):
            close()

    def forget_after_fork(self) -> None:
        """In a process forked from this one's: the runs queued and buffered are the parent's (it writes them), and the
        lock, the writer thread and its state are the parent's (the lock may have been held by a thread that does not
        exist here, the writer busy with a batch). Start empty; the counters go on from the parent's."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._buffers = OrderedDict()
        self._whole = {}
        self._unread = {}
        self._jobs = []
        self._busy = False
        self._flushing = 0
        self._pending_error = None
        self._thread = None
        self.paused = PausedDecisions(self.store)  # its lock too (what it knew is in the store's paused/ files)

    # --- worker --------------------------------------------------------------------------------

    def start_writer(self) -> None:
        """Start the thread that writes the finished runs now, not when the first run ends. Where capture's SIGTERM
        handler is the process's (:mod:`~ee_middleware.capture.shutdown`), the runs in flight are written from it, and a
        thread started there may never begin: a new thread waits for :mod:`threading`'s own lock, which the main thread
        holds while it starts a thread itself, and never lets go of once the signal came (the process ends in the
        handler). Idle, the thread waits on a condition; a daemon, it keeps no process from exiting."""
        with self._lock:
            if not self._closed:
                self._ensure_worker()

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="ee-experience-writer", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if not self._jobs:
                    return
                # runs that finish within min_write_interval_s of the last write wait to go with it
                while not (self._closed or self._flushing or len(self._jobs) >= self._max_batch):
                    wait_s = self._last_write + self._write_interval - time.monotonic()
                    if wait_s <= 0:
                        break
                    self._wake.wait(wait_s)
                jobs, self._jobs = self._jobs[: self._max_batch], self._jobs[self._max_batch :]
                self._busy = True
                self._last_write = time.monotonic()
            try:
                self._write(jobs)
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()

    def _write(self, jobs: list[tuple[list[SpanData], dict[str, str]]]) -> None:
        if self.recorder_id is None:
            self._ingest([span for spans, _ in jobs for span in spans], len(jobs))
            return
        trajectories: list[Trajectory] = []
        options = self.options
        if options.paused_tools is None:
            options = dataclasses.replace(options, paused_tools=self.paused.tools)
        if options.paused_steps is None:
            options = dataclasses.replace(options, paused_steps=self.paused.awaiting_steps)
        for n in range(len(jobs)):
            # A run's spans are let go once it is assembled (the list is the caller's too): a long run's chat spans hold
            # its conversation once per model call, as much again as its record, which need not be held beside them.
            spans = jobs[n][0]
            jobs[n] = _ASSEMBLED
            # a graph run inside a tool (an agent as a tool) is a trajectory of its own, after the run it ran in
            parts = split_nested(spans)
            del spans
            for position, failure in enumerate(_run_failures(parts)):
                run, parts[position] = parts[position], []
                if failure is not None:  # a call of this run could not be recorded whole: not stored cut down
                    self.report_failure(failure, CaptureError(failure))
                    continue
                try:
                    trajectory = assemble(run, options)
                    if position == 0:  # before the next run: a resume may come in the same batch (the thread's own runs)
                        self.paused.remember(trajectory)
                    trajectories.append(self._approve(trajectory))
                except Exception as exc:  # noqa: BLE001
                    self.report_failure(f"could not assemble a run of trace {run[0].trace_id}: {exc}", exc)
                del run
        if not trajectories:
            return
        try:
            self.store.write(trajectories)
            self._count_written(trajectories)
        except Exception as exc:  # noqa: BLE001
            if len(trajectories) == 1 or _refuses_every_write(exc):
                message = f"could not write {_trajectories(len(trajectories))} to {self.store!r}: {exc}"
                self.report_failure(message, exc, runs=len(trajectories))
                return
            self._write_one_by_one(trajectories)

    def _ingest(self, spans: list[SpanData], traces: int) -> None:
        """Store the runs of other instrumentations' traces as ``ee traces ingest`` stores them, redacted with the store's
        rules (and the processor's ``options.redactor``), ``approve_if`` deciding on each new one."""
        from ee_middleware.ingest.service import IngestReport

        report = IngestReport()
        approved: set[str] = set()

        def decide(trajectory: Trajectory) -> Trajectory:
            decided = self._approve(trajectory)
            if decided.approval.by == AUTO_APPROVER:
                approved.add(decided.id)
            return decided

        try:
            self._ingest_spans(
                spans,
                self.store,
                app=self.options.app,
                redactor=self.options.redactor,
                report=report,
                decide=decide,
                live=True,
                source=self.options.source,
                max_observation_chars=self.options.max_observation_chars,
            )
        except Exception as exc:  # noqa: BLE001 - capture must never break the host
            failed = max(1, report.runs - len(report.ingested))  # (a batch written before the failure is stored)
            self.report_failure(f"could not store the runs of {traces} trace(s) to {self.store!r}: {exc}", exc, runs=failed)
            self.stats.trajectories_written += len(report.ingested)
            return
        self.stats.trajectories_written += len(report.ingested)
        self.stats.trajectories_auto_approved += len(approved & set(report.ingested))
        for problem in report.errors:
            self.report_failure(problem, CaptureError(problem))
        if report.unlisted_problems:
            self.stats.runs_failed += report.unlisted_problems

    def _write_one_by_one(self, trajectories: list[Trajectory]) -> None:
        """Write each run of a batch the store refused on its own: a batch is stored whole or not at all, and one run the
        store refuses (a record larger than the largest file this process may write, one it cannot encode) must not take
        the runs batched with it along. A store that fails :data:`_SAME_FAILURES_TO_STOP` runs in a row the same way
        (a remote store timing out) has the rest reported with that failure at once, not retried one by one; a run the store
        refuses for its own record (:class:`~ee_middleware.errors.RecordError`) is reported alone and never counts."""
        same: tuple[type[BaseException], Any] | None = None
        in_a_row = 0
        for position, trajectory in enumerate(trajectories):
            try:
                self.store.write([trajectory])
                self._count_written([trajectory])
                same, in_a_row = None, 0
            except RecordError as refused:  # a fault of this run's record (an integer outside 64 bits): not the store's,
                # so neither counted towards nor breaking a run of failures that says the store refuses every write
                message = f"could not write 1 run (of {len(trajectories)} batched together) to {self.store!r}: {refused}"
                self.report_failure(message, refused)
            except Exception as single:  # noqa: BLE001
                kind = (type(single), getattr(single, "errno", None))
                in_a_row = in_a_row + 1 if kind == same else 1
                same = kind
                left = len(trajectories) - position
                if _refuses_every_write(single) or in_a_row >= _SAME_FAILURES_TO_STOP:
                    message = f"could not write {_trajectories(left)} (of {len(trajectories)} batched together) to {self.store!r}: {single}"
                    self.report_failure(message, single, runs=left)
                    return
                message = f"could not write 1 run (of {len(trajectories)} batched together) to {self.store!r}: {single}"
                self.report_failure(message, single)

    def _approve(self, trajectory: Trajectory) -> Trajectory:
        if self.approve_if is None:
            return trajectory
        try:
            verdict = self.approve_if(trajectory)
        except Exception as exc:  # noqa: BLE001 - a user predicate that fails leaves the run pending
            # (stored all the same: not a run lost, so not in runs_failed, which makes flush() say False)
            self._report(f"approve_if raised for trajectory {trajectory.id}: {exc!r}; it stays pending", exc, runs=0, spans=0)
            self.stats.approve_if_failed += 1
            return trajectory
        try:
            approved = approve_if_verdict(verdict)
        except TypeError as exc:  # neither True nor False: left pending as for a rule that raised
            self._report(f"{exc} (trajectory {trajectory.id} stays pending)", exc, runs=0, spans=0)
            self.stats.approve_if_failed += 1
            return trajectory
        if approved:
            trajectory.approval = Approval(status="approved", by=AUTO_APPROVER, at=utcnow(), reason="approve_if returned True")
        return trajectory

    def _count_written(self, trajectories: list[Trajectory]) -> None:
        """Count ``trajectories`` as stored, and those ``approve_if`` approved as auto-approved (once stored: a run the store
        refused was approved by no one)."""
        self.stats.trajectories_written += len(trajectories)
        self.stats.trajectories_auto_approved += sum(1 for t in trajectories if t.approval.by == AUTO_APPROVER)

    def report_failure(self, message: str, exc: BaseException, *, runs: int = 1) -> None:
        """Count (``runs`` runs not stored, in ``runs_failed``) and log a capture failure (and keep it for strict mode's
        ``force_flush``)."""
        self._report(message, exc, runs=runs, spans=0)

    def report_span_failure(self, message: str, exc: BaseException) -> None:
        """Count (in ``spans_failed``) and log a call whose span could not be finished whole (and keep it for strict
        mode's ``force_flush``: the first failure is the one raised). Its run is marked, and :meth:`_write` counts it
        once in ``runs_failed`` when it does not store it."""
        self._report(message, exc, runs=0, spans=1)

    def _report(self, message: str, exc: BaseException, *, runs: int, spans: int) -> None:
        # a RedactFnError's text is ee's own (it names the function, never the text it was given): redacting it with
        # the function that failed would withhold why
        if self.redact_message is not None and not isinstance(exc, RedactFnError):
            try:
                message = self.redact_message(message)
            except Exception:  # noqa: BLE001 - a failing redaction must not hide the failure, nor show its text
                message = f"{message.split(':', 1)[0]}: (details withheld: redacting them failed)"
        self.stats.record_error(message, runs=runs, spans=spans)
        logger.error("ee-middleware capture: %s", message)
        with self._lock:
            if self._pending_error is None:
                self._pending_error = exc

    def pending_spans(self) -> int:
        """Spans buffered for runs that have not finished yet."""
        with self._lock:
            return sum(len(v) for v in self._buffers.values())


_processors: weakref.WeakSet[ExperienceSpanProcessor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for processor in list(_processors):
        processor.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
