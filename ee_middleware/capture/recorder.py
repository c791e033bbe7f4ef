"""``record_experience``: wrap a compiled LangGraph graph so that every run is recorded.

>>> from ee_middleware import record_experience
>>> agent = record_experience(graph, app="support-bot", store="./experience")   # doctest: +SKIP
>>> agent.invoke({"messages": [("user", "Where is my order 42?")]})             # doctest: +SKIP

or, on a function that builds the graph::

    @record_experience(app="support-bot", store="./experience")
    def build_agent():
        return create_react_agent(model, tools)

``invoke``, ``ainvoke``, ``stream``, ``astream``, ``astream_events``, ``stream_events``, ``batch``,
``abatch`` and their ``*_as_completed`` forms behave exactly as the graph's own (same results, same
exceptions); everything else is passed through to the graph. The recorded agent is a LangChain
``Runnable`` (and a LangGraph subgraph when it is a node), so ``|``, ``with_retry``, ``with_fallbacks``,
``bind``, ``with_config``, ``with_listeners`` and ``StateGraph.add_node`` run it through those methods:
each run is recorded once, a retried run once per attempt. A run's outcome (final state, interrupt)
is taken from the graph's own run, not from what it returned, so every way of running it records the
same trajectory.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import dataclasses
import functools
import inspect
import logging
import multiprocessing.util
import os
import secrets
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, Protocol, TypedDict, overload

from langchain_core.runnables import Runnable
from langchain_core.runnables.base import RunnableBindingBase
from langchain_core.runnables.config import merge_configs, var_child_runnable_config
from langgraph.pregel.protocol import PregelProtocol
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Tracer

from ee_middleware._lifetime import process_hooks
from ee_middleware._version import __version__
from ee_middleware.capture import shutdown
from ee_middleware.capture.callbacks import (
    RECORDING,
    RunCapture,
    RunRecord,
    cancelled_reason,
    emit_run,
    finish_root,
    is_cancellation,
    is_drain,
    is_interrupt,
    parent_resuming,
    resumes_from_checkpoint,
    root_attributes,
    root_span_name,
    sendable_calls,
    start_recorded_span,
)
from ee_middleware.capture.clock import CLOCK, now_ns
from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.direct_spans import DirectSpan, DirectTracer, RootIds, StandInSpan
from ee_middleware.capture.offload import (
    CaptureRedaction,
    ProcessOffload,
    capture_function,
    direct_tracer,
    frozen_problem,
    in_capture_process,
    keep_redaction_when_restored,
    picklable_problem,
    recording_parts,
    redaction_settings,
    refuse_unimportable_redact_fn,
    use_redaction,
)
from ee_middleware.capture.payloads import captured_error
from ee_middleware.capture.processor import ApprovePredicate, CaptureStats, strict_default
from ee_middleware.capture.redaction import SALT_FILE, store_salt
from ee_middleware.capture.shutdown import flush_on_sigterm
from ee_middleware.capture.store_redaction import (
    StoreRedaction,
    has_rules,
    record_store_redaction,
    same_redaction,
    settings_in_force,
)
from ee_middleware.capture.vault import Vault
from ee_middleware.capture.worker import SpanFinisher
from ee_middleware.errors import CaptureError, ConfigError
from ee_middleware.messages import MAX_JSON_DEPTH, decimal_number, to_jsonable
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.store.metadata import keeps_metadata, local_folder
from ee_middleware.store.protocol import ExperienceStore, check_store_object
from ee_middleware.store.registry import open_store

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("ee_middleware.capture")

STOPPED_STATE_TIMEOUT_S = 2.0
"""How long a run that stops without an output waits for the thread's state (:meth:`_Run.stopped_state_config`) before it
is recorded without it. The read runs beside the caller (:class:`_StateRead`); an async caller waits for it
:data:`STOPPED_STATE_WAIT_S` at most, a sync one not at all, except that a drained run's caller waits up to this bound
(it may resume the thread at once, and the read must see the state the drain saved)."""

STOPPED_STATE_WAIT_S = 0.2
"""How long the caller of an async run that stopped so waits for that read (:meth:`RecordedGraph._aread_stopped_state`)
before it goes on; the read itself goes on to :data:`STOPPED_STATE_TIMEOUT_S`."""

_live_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


class Recorder:
    """Owns the tracer, the span finisher and the span processor of one ``record_experience`` call."""

    def __init__(
        self,
        config: CaptureConfig,
        *,
        store: ExperienceStore | None = None,
        tracer_provider: TracerProvider | None = None,
        approve_if: ApprovePredicate | None = None,
    ) -> None:
        self.config = config
        self.id = uuid.uuid4().hex
        self.strict = config.strict or strict_default()
        self.approve_if = approve_if
        # Settings are refused before anything is made (the store's folder, its salt, a vault, redaction.json).
        if tracer_provider is not None and not hasattr(tracer_provider, "add_span_processor"):
            raise ConfigError(
                f"tracer_provider must be an OpenTelemetry SDK TracerProvider (got {type(tracer_provider).__name__}); "
                "pass opentelemetry.sdk.trace.TracerProvider() or leave it out."
            )
        if approve_if is not None and not callable(approve_if):  # (a name as text, True): every run's approval would fail
            raise ConfigError(
                f"approve_if must be a function trajectory -> bool (got {type(approve_if).__name__} {approve_if!r:.80}); "
                "pass the function itself, e.g. approve_if=lambda t: t.error is None, or leave it out."
            )
        # a redact_fn no other process can import by its name (a lambda, a __main__ function): once redaction.json named
        # it, every other recorder of the store, replay, datasets and exports would refuse the store
        refuse_unimportable_redact_fn(config.redact_fn)
        self._offload_blocker: str | None = None
        self._offload_problems(tracer_provider, approve_if, None)  # what does not depend on the store
        self.store: ExperienceStore = store if store is not None else open_store(config.store)
        store_spec = self._offload_problems(tracer_provider, approve_if, self.store)
        vault_path = self._vault_path()
        own = redaction_settings(config, vault_path)
        # the store's recorded rules too (another service's patterns, kinds, key names, redact_fn): the union is applied
        settings = settings_in_force(self.store, own)  # (refuses an unreadable or newer file, another vault)
        custom = capture_function(self.store, settings, config.redact_fn)  # a recorded redact_fn not importable here: refused
        if not keeps_metadata(self.store):
            record_store_redaction(self.store, own)  # writes nothing: refuses what such a store's later writers would lose
        salt = self._pseudonym_salt(settings)
        self.vault = Vault(vault_path, create=True) if salt is not None and vault_path is not None else None
        if vault_path is not None and self.vault is None:  # no pseudonyms to keep: no vault, none recorded
            own = redaction_settings(config, None)
            settings = settings_in_force(self.store, own)
        settings, custom = self._record_redaction(own, settings, custom, salt)
        self.redaction = CaptureRedaction(self.store, config, settings, custom=custom, salt=salt, vault=self.vault)
        """What capture redacts: this recorder's settings and the store's (read again every STORE_RULES_CHECK_S)."""
        self.redactor = self.redaction.redactor
        self.encoder, self.processor = recording_parts(
            config, self.store, recorder_id=self.id, strict=self.strict, approve_if=approve_if, redactor=self.redactor
        )
        keep_redaction_when_restored(self.store, settings, salt)
        self.finisher = SpanFinisher(self.processor.report_span_failure)
        self.tracer_provider = tracer_provider
        """The user's own tracer provider, or None: the recorder's spans then reach only its processor, made directly."""
        self.tracer: Tracer | DirectTracer
        if tracer_provider is None:
            self.tracer = direct_tracer(config, self.processor)
        else:
            tracer_provider.add_span_processor(self.processor)
            self.tracer = tracer_provider.get_tracer("ee_middleware", __version__)
        self._unsampled_tracer: DirectTracer | None = None  # (unsampled_tracer)
        self.warned_tool_lists = False  # said once: a run's model calls were offered different tools (RunCapture)
        self.warned_emulated_tools = False  # said once: LLMToolEmulator wrote tool results (RunCapture)
        self.warned_nested_environment = False  # said once: the environment= hook raised for a graph run inside a tool
        self.warned_detached_graph = False  # said once: a graph run a tool started outlived the tool (RunCapture)
        self.offload: ProcessOffload | None = None
        self._offload_lock = threading.Lock()  # one thread starts the capture process
        self._offload_init: dict[str, Any] | None = None  # what the child needs, once it may start
        self._in_flight: dict[str, weakref.ref[_Run]] = {}  # trajectory id -> its run, until the run ends (or is collected)
        self._collected: set[str] = set()  # runs collected in flight (_collected_in_flight): their close() ends them still
        self._reading: dict[str, _StateRead] = {}  # trajectory id -> the read its stopped run waits for (keeps the run)
        self._failed_seen = 0  # stats.runs_failed as the last flush saw it: a flush after more failed returns False
        self._failed_lock = threading.Lock()
        self._ready_in: int | None = None  # the process where this recorder's writing threads run ahead (_ready_for_a_run)
        self.closed = False
        """Set by :meth:`close`: runs are no longer recorded (each is counted in ``stats.runs_failed``)."""
        self._plan_offload(store_spec, approve_if, salt)
        _live_recorders.add(self)
        # atexit runs the last registered first: registered again now, the recorder's exit flush runs before the exit hook
        # of a tracer provider made before it (the user's own), which would shut its processor down with runs unfinished
        atexit.unregister(_flush_at_exit)
        atexit.register(_flush_at_exit)
        if flush_on_sigterm(_flush_at_sigterm, _END_GATE.open):  # SIGTERM at its default ends the process without the exit flush
            for recorder in list(_live_recorders):  # the runs in flight of recorders built on other threads before this one
                if recorder._in_flight:
                    _ready_for_a_run(recorder)
        # capture's threads start with a recorder's first run (_ready_for_a_run), not here: an agent built and never run
        # (at import, per request, in a registry) costs none

    def _offload_problems(self, provider: TracerProvider | None, approve_if: Any, store: ExperienceStore | None) -> dict[str, Any] | None:
        """Check ``config.offload`` before anything is made: :class:`ConfigError` for ``"process"`` where the capture
        process cannot be used (``"auto"`` notes why, in ``_offload_blocker``); the store's folder to open there, if any
        (``store``: None before the store is opened, whose kind is then not checked)."""
        mode = self.config.offload
        if mode == "thread" or in_capture_process():  # a recorder the app's modules build in a capture process: never used
            return None
        problems = []
        if provider is not None:
            problems.append("records to your own tracer_provider (its exporters must see the spans in this process)")
        store_spec: dict[str, Any] | None = None
        if type(store) is LocalExperienceStore:
            # resolved now: the app may change directory before the process starts (auto mode)
            store_spec = {"root": str(Path(store.root).resolve()), "fsync": getattr(store, "_fsync", True)}
        elif store is not None:  # a subclass or another kind of store may write differently: only the local folder is opened there
            problems.append(
                f"records to a {type(store).__name__}, which the capture process does not open (it opens only a "
                "LocalExperienceStore folder); pass the store's folder as store="
            )
        problems += [
            p
            for p in (picklable_problem("redact_fn", self.config.redact_fn), picklable_problem("approve_if", approve_if), frozen_problem())
            if p
        ]
        if problems:
            self._offload_blocker = "; ".join(problems)
            if mode == "process":
                raise ConfigError(
                    f"offload='process' cannot be used: the recorder {self._offload_blocker}. Define functions at module level "
                    "in an importable module, or use offload='thread'."
                )
            return None
        return store_spec

    def _plan_offload(self, store_spec: dict[str, Any] | None, approve_if: Any, salt: bytes | None) -> None:
        """Decide ``config.offload`` (checked by :meth:`_offload_problems`): start the capture process now
        (``"process"``), later under sustained load (``"auto"``), or never (``"thread"``, or ``"auto"`` where it cannot)."""
        mode = self.config.offload
        if store_spec is None:  # thread mode, a capture process, or a reason noted in _offload_blocker
            return
        if mode == "auto" and len(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)) < 2:
            self._offload_blocker = "has one CPU to run on (a second process would only take turns with the agent)"
            return
        self._offload_init = {
            "config": dataclasses.replace(self.config, environment=None),  # the hook runs here, when a run starts
            "recorder_id": self.id,
            "strict": self.strict,
            "store": store_spec,
            "salt": salt,
            "vault": str(self.vault.path) if self.vault is not None else None,
            "approve_if": approve_if,
            "redaction": self.redaction.settings,  # the store's rules too, as read here (the child reads them again later)
            "rules_check_s": self.redaction.check_s,
        }
        if mode == "process":
            self._start_offload(wait_first=True)

    def _start_offload(self, *, wait_first: bool) -> None:
        init, self._offload_init = self._offload_init, None
        try:
            self.offload = ProcessOffload(init, self.processor.report_failure, wait_first=wait_first, on_lost=self._record_here)
        except OSError as exc:  # not a run's failure: runs are recorded on this process's threads
            self.processor.stats.offload_start_failures += 1
            logger.warning("ee-middleware: could not start the capture process (%r); capture's work stays on this process's threads.", exc)

    def _record_here(self, records: list[RunRecord]) -> None:
        """Record runs on this process's threads (the capture process that was sent them died)."""
        for record in records:
            self.finisher.submit(functools.partial(emit_run, self, record, self.processor.report_span_failure))

    def _offload_for_run(self) -> ProcessOffload | None:
        """The capture process to send the next run to, if any (starts it under sustained load in auto mode)."""
        offload = self.offload
        if offload is not None:
            return offload if offload.ready() else None
        if self.finisher.forced and self.config.offload == "auto" and (self._offload_init or self._offload_blocker):
            # another thread starting it meanwhile: this run takes the threads, never waits for it
            if not self._offload_lock.acquire(blocking=False):
                return None
            try:
                if self._offload_init is not None:
                    logger.info("ee-middleware: sustained load; moving capture's work to a child process (offload='auto').")
                    self._start_offload(wait_first=False)
                elif self._offload_blocker is not None:
                    logger.warning(
                        "ee-middleware: capture works on the agent's threads under sustained load; offload='auto' would move it to "
                        "a child process, but the recorder %s.",
                        self._offload_blocker,
                    )
                    self._offload_blocker = None  # said once
            finally:
                self._offload_lock.release()
        return None

    def _pseudonym_salt(self, settings: StoreRedaction) -> bytes | None:
        """The store's salt (placeholders are consistent pseudonyms within a store, in every process): kept through
        the store's ``read_meta``/``write_meta`` or in its folder; a salt of this recorder's own for a store that keeps
        no metadata (:func:`~ee_middleware.capture.store_redaction.record_store_redaction` warns). One that cannot be read
        or made (another user's, owner-only) is a :class:`ConfigError`: a salt of its own would tag values otherwise than
        the store's runs. None without pseudonyms, or where ``settings`` (what is applied) redact nothing."""
        if not self.config.redaction_pseudonyms or not has_rules(settings.rules):
            return None
        try:
            salt = store_salt(self.store)
        except OSError as exc:
            # a salt of this recorder's own would give the same value another tag than the store's runs have, silently
            from ee_middleware.capture.store_redaction import permission_fix
            from ee_middleware.store.metadata import meta_where

            where = meta_where(self.store, SALT_FILE)
            fix = permission_fix() if isinstance(exc, PermissionError) else "check the folder's permissions and free space."
            raise ConfigError(
                f"Cannot read or create the store's pseudonym key {where} ({exc}): the same value would get another tag here "
                f"than in the runs stored so far, so nothing is recorded without it. {fix[0].upper()}{fix[1:]}"
            ) from exc
        return salt if salt is not None else secrets.token_bytes(32)

    def _vault_path(self) -> Path | None:
        vault = self.config.vault
        if not vault:
            return None
        if isinstance(vault, str):
            return Path(vault).expanduser().absolute()
        root = getattr(self.store, "root", None)
        if root is None:
            raise ConfigError(f"vault=True keeps the vault beside a local store folder; {self.store!r} has none. Give a path: vault='...'.")
        root = Path(root).absolute()
        return root.with_name(root.name + ".vault")

    def _record_redaction(
        self, own: StoreRedaction, settings: StoreRedaction, custom: Callable[[str], str] | None, salt: bytes | None
    ) -> tuple[StoreRedaction, Callable[[str], str] | None]:
        """Keep this recorder's settings (``own``) with the store (``redaction.json``, the union with what is there), for
        replay, datasets, exports and later recorders; return what capture applies (``settings``, the union read before,
        and its ``custom`` function), wider where another writer recorded more meanwhile. The store writes them and the
        salt again if its folder is removed and made again while this recorder writes to it."""
        if not keeps_metadata(self.store):
            return settings, custom  # (refused or warned about before anything was made)
        try:
            merged = record_store_redaction(self.store, own)
        except OSError as exc:
            logger.warning("ee-middleware: cannot write the store's redaction settings (%s); replay and datasets use the defaults.", exc)
            return settings, custom
        if same_redaction(merged.union(settings), settings):
            return settings, custom
        settings = merged.union(settings)
        return settings, capture_function(self.store, settings, self.config.redact_fn)

    def _refresh_redaction(self) -> None:
        """Apply what another writer added to the store's redaction settings since this recorder read them
        (:meth:`~ee_middleware.capture.offload.CaptureRedaction.refresh`) to the runs from now on."""
        if self.redaction.refresh():
            use_redaction(self, self.redaction)
            self.redactor = self.redaction.redactor

    @property
    def stats(self) -> CaptureStats:
        """What capture did so far (written, auto-approved, failures); with a capture process, its
        counters as of the last :meth:`flush` are added."""
        if self.offload is None:
            return self.processor.stats
        return self.processor.stats.merged(self.offload.stats)

    @property
    def offload_cpu_s(self) -> float:
        """CPU seconds the capture process has used, as of the last :meth:`flush` (0 without one)."""
        return self.offload.cpu_s if self.offload is not None else 0.0

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every finished run is in the store (written by the capture process too, when
        there is one). Strict mode re-raises capture failures, also the capture process's.

        Returns ``False`` when that did not happen: the time ran out, or a run failed to be stored since the last flush
        (a full disk, a ``redact_fn`` that raised: each counted in ``stats.runs_failed`` and logged), in either offload
        mode; ``True`` otherwise. A run that stopped and waits for the thread's state (:class:`_StateRead`) is ended
        first, when the read answers or at its bound; at once, without the state, where the read runs on the event loop
        this flush is called on (``flush()`` in async code, right after a cancelled run whose read took longer than
        :data:`STOPPED_STATE_WAIT_S`) or on a loop that has stopped or closed. ``timeout`` bounds the whole flush, every
        step of it together."""
        return self._flush(timeout)[0]

    def _flush(self, timeout: float) -> tuple[bool, bool]:
        """:meth:`flush`'s answer, and whether this process's own work was done in ``timeout`` (``False``: some was not,
        and the runs it was for are not in the store yet; a capture process writes what it was sent however long that
        takes, also once this process has ended)."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        self._settle_state_reads(left())
        try:
            # this process's own work first (the runs it records itself end with it; a capture process outlives it)
            done = self.finisher.flush(left())
            offloaded, error = self.offload.flush(left()) if self.offload is not None else (True, None)
            if self.offload is not None:  # again: the runs a dying capture process was sent are recorded here
                done = self.finisher.flush(left()) and done
            written = self.processor.flush_in_time(int(left() * 1000))
            in_time = done and written
            flushed = in_time and offloaded
        finally:  # (strict mode raised the failure: said once, as this return value says it once)
            with self._failed_lock:
                failed = self.stats.runs_failed
                failed_since = failed > self._failed_seen
                self._failed_seen = max(self._failed_seen, failed)
        flushed = flushed and not failed_since
        if error is not None and self.strict:
            raise CaptureError(f"Recording failed in the capture process: {error}")
        if self.vault is not None:
            self.vault.flush()
        return flushed, in_time

    def _settle_state_reads(self, timeout: float) -> None:
        """End the runs waiting for the thread's state (:class:`_StateRead`): each when its read answers, at its bound, or
        when ``timeout`` runs out, whichever comes first; at once where the read runs on the event loop this thread
        runs (which cannot go on while it waits here: ``flush()`` called in async code), or on one that has stopped or
        closed (which cannot answer)."""
        deadline = time.monotonic() + timeout
        for read in list(self._reading.values()):
            if not read.on_this_thread_loop() and read.answerable():
                read.done.wait(max(0.0, min(deadline, read.deadline) - time.monotonic()))
            if not read.settle():  # settled elsewhere, perhaps still ending its run on another thread: wait for that
                read.done.wait(max(0.0, deadline - time.monotonic()))

    def _end_runs_in_flight(self, reason: str) -> int:
        """End the runs still in flight as ``interrupted``, ``reason`` as their error (the process is ending: they will
        not finish); returns how many. A run that ends by itself meanwhile is recorded once, as it ended first."""
        ended = 0
        for ref in list(self._in_flight.values()):
            run = ref()
            if run is None:
                continue
            try:
                ended += run.terminate(reason)
            except Exception:  # the others are still ended
                logger.exception("ee-middleware: could not end a run in flight")
        return ended

    def close(self) -> None:
        """Flush and stop (the capture process too); the recorder records nothing afterwards: a run started, or still in
        flight, after ``close()`` is not stored, counted in ``stats.runs_failed`` (logged), so the next :meth:`flush`
        returns ``False`` (strict mode raises)."""
        try:
            self.flush()
        finally:
            self.closed = True
            if self.offload is not None:
                self.offload.close()
        self.finisher.close()
        self.processor.shutdown()
        if self.vault is not None:
            self.vault.close()

    def unsampled_tracer(self) -> DirectTracer:
        """With the user's own ``tracer_provider``: the tracer of the runs its sampler leaves out, made directly for this
        recorder's processor (:mod:`~ee_middleware.capture.direct_spans`) with the provider's resource, their roots marked
        as its sampler decides. Without it such runs were never stored, without a word (their spans reach no processor)."""
        if self._unsampled_tracer is None:
            resource = getattr(getattr(self.tracer_provider, "resource", None), "attributes", None)
            if resource is None:
                self._unsampled_tracer = direct_tracer(self.config, self.processor)
            else:
                sampler = getattr(self.tracer_provider, "sampler", None)
                self._unsampled_tracer = DirectTracer(
                    self.processor, dict(resource), sampler if callable(getattr(sampler, "should_sample", None)) else None
                )
        return self._unsampled_tracer

    # --- one run -------------------------------------------------------------------------------

    @contextmanager
    def run(self, graph_input: Any, config: Mapping[str, Any] | None) -> Iterator[_Run]:
        """Record one graph run: yields the config to run with; ends the root span afterwards."""
        run = self._start(graph_input, config)
        try:
            yield run
        except BaseException as exc:
            run.fail(exc)
            raise
        else:
            run.finish()

    def _not_stored_after_close(self, when: str) -> None:
        """Count a run that is not stored because :meth:`close` stopped this recorder (``when``: as it started, ended)."""
        message = (
            f"a run that {when} after the recorder of app {self.config.app!r} was closed (recorder.close()) is not stored; "
            "close it only once the agent runs no more, or record with a new one: record_experience(agent.unwrap(), ...)"
        )
        self.processor.report_failure(message, CaptureError(message))

    def _start(self, graph_input: Any, config: Mapping[str, Any] | None) -> _Run:
        if self.closed:
            self._not_stored_after_close("started")
            return _Run.disabled(self, config)
        if self.redaction.claim():
            # the store's redaction settings read again here, before this run encodes anything (its conversation id at
            # once, below): queued on the finisher, the first run after the check kept its thread id under the old rules.
            # A read of redaction.json costs about 0.05 ms, once every STORE_RULES_CHECK_S at most.
            try:
                self._refresh_redaction()
            except Exception as exc:  # noqa: BLE001 - the app's run goes on; capture keeps the rules it has
                logger.warning(
                    "ee-middleware: cannot apply the store's redaction settings read again (%r); capture keeps the rules it has.", exc
                )
        try:
            return _Run(self, graph_input, config)
        except ConfigError:
            raise  # an environment reference that is not a dict (_environment_reference): the caller's to fix, before the run
        except Exception as exc:
            why = str(exc) if isinstance(exc, CaptureError) else repr(exc)  # (a hook's failure names the hook: its own text)
            if self.strict:
                raise CaptureError(f"could not start recording: {why}") from exc
            self.processor.report_failure(f"could not start recording: {why}", exc)
            return _Run.disabled(self, config)


_UNREAD: Any = object()


class _StateRead:
    """The read of the thread's state that a run which stopped without an output waits for before it is ended
    (:meth:`_Run.stopped_state_config`, started by :meth:`RecordedGraph._read_stopped_state`). A sync caller never waits
    for it, an async one :data:`STOPPED_STATE_WAIT_S` at most: its cancellation or closed stream returns, and the run is
    ended (its record made) when the read answers or at :data:`STOPPED_STATE_TIMEOUT_S`, whichever comes first; sooner
    by a flush (which waits for it within the bound), at exit (the same), or at SIGTERM (which does not wait: the
    shutdown's time is for writing)."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.deadline = time.monotonic() + STOPPED_STATE_TIMEOUT_S
        self.done = threading.Event()
        """Set once settled: the run was ended, or ends as soon as its caller says how (:meth:`hold`)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop an async read runs on (a flush on that loop's thread cannot wait for it)."""
        self.stop: Callable[[], None] | None = None
        """Stops what is left of the read once it is settled otherwise (cancels the async read, or the sync one's timer)."""
        self.task: asyncio.Task[None] | None = None  # the async read (asyncio keeps only a weak reference)
        self._lock = threading.Lock()
        self._settled = False
        self._ending: tuple[str, BaseException | None, str | None] | None = None

    def hold(self, ending: tuple[str, BaseException | None, str | None]) -> bool:
        """Keep how the run ended (:meth:`_Run.fail`) for when the read settles; ``False`` when it has settled already
        (the caller ends the run now)."""
        with self._lock:
            if self._settled:
                return False
            self._ending = ending
            return True

    def settle(self, state: Any = _UNREAD, *, blocking: bool = True) -> bool:
        """The read answered ``state``, failed or ran out of time (no ``state``): end the run as its caller said, once.
        Whether this call ended it. ``done`` is set once the run is ended (its record queued), so a flush waiting on it
        finds the record. ``blocking=False`` (SIGTERM's writer): gives up at once where another thread holds the lock,
        which may be the very thread SIGTERM's handler interrupted, and would never let go of it."""
        if not self._lock.acquire(blocking=blocking):
            return False
        try:
            if self._settled:
                return False
            self._settled = True
            if state is not _UNREAD:
                self.run.stopped_state = state
            ending = self._ending
        finally:
            self._lock.release()
        self.run.recorder._reading.pop(self.run.trajectory_id, None)
        try:
            self._stop_read()
            if ending is None:
                return False
            # its caller has its exception already: nobody waits for this end (not held at SIGTERM, whose writer ends it too)
            try:
                return self.run._end(*ending, held=False)
            except Exception as exc:  # noqa: BLE001 - on a timer, a reader or the loop: counted and logged (strict: at the next flush)
                self.run.recorder.processor.report_failure(f"could not end a run that stopped: {exc!r}", exc)
                return False
        finally:
            self.done.set()

    @property
    def settled(self) -> bool:
        """Whether the run's end was decided (it may still be ending: :attr:`done` is set once it has)."""
        return self._settled

    def _stop_read(self) -> None:
        """Stop what is left of the read. An async read whose loop has stopped or closed may never run again: its task
        goes without asyncio's "Task was destroyed but it is pending!" (no error: the run is ended here)."""
        task, loop = self.task, self.loop
        if task is not None and loop is not None and not task.done() and not loop.is_running():
            with contextlib.suppress(Exception):
                task._log_destroy_pending = False  # type: ignore[attr-defined] - asyncio's own switch for this warning
        if self.stop is not None:
            with contextlib.suppress(Exception):  # (a closed event loop)
                self.stop()

    def answerable(self) -> bool:
        """Whether the read can still answer: not an async one whose event loop has closed or stopped (nothing runs
        it while a flush waits: ``run_until_complete`` returned, or ``asyncio.run`` ended with the read pending)."""
        loop = self.loop
        if loop is None:
            return True
        return not loop.is_closed() and loop.is_running() and not (self.task is not None and self.task.done())

    def on_this_thread_loop(self) -> bool:
        """Whether the read runs on the event loop this thread is running: it cannot go on while this thread waits."""
        try:
            return self.loop is not None and asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False


class _Run:
    """The root ``invoke_agent`` span of one run and its callback handler."""

    def __init__(self, recorder: Recorder, graph_input: Any, config: Mapping[str, Any] | None) -> None:
        self.recorder = recorder
        self.input = graph_input
        self.output: Any = None
        self.enabled = True
        cfg = dict(config or {})
        in_effect = _config_in_effect(cfg)  # (read only) with what a tool or node running this agent hands down
        self.trajectory_id = uuid.uuid4().hex
        self.thread_id = in_effect["configurable"].get("thread_id")
        # run in a tool or node of a graph resuming (a sub-agent that paused there resumes with it, input ignored)
        self.parent_resuming = parent_resuming(graph_input, in_effect["configurable"])
        self.environment = self._environment(graph_input, in_effect, cfg.get("configurable") or {})
        _ready_for_a_run(recorder)  # before the run is in flight, where SIGTERM would have it written
        self.offload = recorder._offload_for_run()
        self.tracer: Tracer | DirectTracer = recorder.tracer
        """What makes the run's spans: the recorder's tracer, or for a run the user's sampler left out, a direct one."""
        parent = _outer_run_context()
        CLOCK.run_started()  # its spans' times from now on keep their order whatever the wall clock does (capture.clock)
        try:
            if self.offload is not None:
                # the spans are made in the capture process; the run's root here is a stand-in with the ids the root gets
                # there (in the current trace, marked sampled as the user's sampler says: DirectTracer.root_ids)
                self.start_ns = now_ns()
                self.root_ids: RootIds = _root_ids(recorder, parent)
                self.span = StandInSpan(root_span_name(recorder), self.root_ids, self.start_ns)
            else:
                attrs = root_attributes(recorder, self.trajectory_id, self.thread_id)
                self.span = start_recorded_span(
                    recorder,
                    recorder.tracer,
                    root_span_name(recorder),
                    parent,
                    kind=SpanKind.INTERNAL,
                    attributes=attrs,
                    start_time=now_ns(),
                )
                if recorder.tracer_provider is not None and isinstance(self.span, DirectSpan):
                    # the user's sampler left the run out: its calls' spans are made directly too, marked not sampled as
                    # their sampler decided (training data is not sampled)
                    self.tracer = recorder.unsampled_tracer()
            self.context = trace.set_span_in_context(self.span)
            self.handler = RunCapture(recorder, self.trajectory_id, self.context, buffered=self.offload is not None, tracer=self.tracer)
            hook = recorder.config.environment
            if callable(hook) and (cfg.get("configurable") or {}).get("ee_environment") is None:
                self.handler.nested_environment = functools.partial(_hook_environment, hook, graph_input, in_effect)
            self.config = _with_callback(cfg, self.handler)
        except BaseException:
            CLOCK.run_ended()
            raise
        self.paused = False
        """Whether the run stopped at a static breakpoint (``interrupt_before``/``interrupt_after``), set by the graph's
        wrapper: LangGraph returns such a run's state as if it had ended."""
        self.stopped_state: Any = None
        """The thread's state read from the checkpointer where the run stopped without an output and no node told it
        (:meth:`stopped_state_config`), set by the graph's wrapper; ``None`` for every other run."""
        self.read: _StateRead | None = None
        """The read of the thread's state the run waits for before it is ended, if one was started."""
        self.drained = False
        """Whether LangGraph drained the run (:func:`~ee_middleware.capture.callbacks.is_drain`): its thread's state as it
        stopped, read from the checkpointer (:attr:`stopped_state`), is its output."""
        recorder.finisher.run_started()
        self._ending: tuple[str, BaseException | None, str | None] | None = None  # how it ended, if held at SIGTERM
        recorder._in_flight[self.trajectory_id] = weakref.ref(
            self, functools.partial(_collected_in_flight, recorder._in_flight, recorder._collected, recorder.finisher, self.trajectory_id)
        )

    @classmethod
    def disabled(cls, recorder: Recorder, config: Mapping[str, Any] | None) -> _Run:
        run = cls.__new__(cls)
        run.recorder, run.enabled, run.config, run.output, run.paused, run.read = recorder, False, config, None, False, None
        return run

    def _environment(self, graph_input: Any, in_effect: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any] | None:
        """The run's environment reference: its own config's ``ee_environment`` (the call's, or bound to the agent), else
        the recorder's ``environment=`` (a hook is given the config in effect), else one the run inherited (an agent run
        in a tool of a run that was given one). ``own``: the run's own ``configurable``; ``in_effect``: the config the
        graph runs with (:func:`_config_in_effect`)."""
        if own.get("ee_environment") is not None:
            return _environment_reference(own["ee_environment"], "config['configurable']['ee_environment']")
        hook = self.recorder.config.environment
        if callable(hook):
            return _hook_environment(hook, graph_input, in_effect)
        if hook is not None:
            return _environment_reference(hook, "environment=")  # a dict (CaptureConfig checked it)
        inherited = in_effect["configurable"].get("ee_environment")
        return _environment_reference(
            inherited, "the inherited config['configurable']['ee_environment'] (of the run whose tool ran this agent)"
        )

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this run the one in flight (:data:`~ee_middleware.capture.callbacks.RECORDING`: an outer recorded run
        whose tool invokes this agent leaves its calls to this recorder) and, where its spans reach the user's own
        ``tracer_provider``, its root span the current span, so that spans the user's code opens nest under it there.
        Without one the root reaches no exporter of the user's: spans the user's code opens keep the parent they have
        without capture (their own request span, another instrumentation's), never one their backend is not sent."""
        if not self.enabled:
            yield
            return
        # (a run the user's sampler left out is not current either: their spans keep the unsampled parent they have)
        user_spans = self.recorder.tracer_provider is not None and self.tracer is self.recorder.tracer
        token = otel_context.attach(self.context) if user_spans else None
        recording = RECORDING.set(self.handler)
        try:
            yield
        finally:
            try:
                RECORDING.reset(recording)
            except ValueError:  # left in another context than it was entered in (a stream stepped from another task)
                RECORDING.set(None if recording.old_value is recording.MISSING else recording.old_value)
            if token is not None:
                otel_context.detach(token)

    def stopped_state_config(self, exc: BaseException) -> dict[str, Any] | None:
        """The config to read the thread's state with where this run stops on ``exc`` without an output and needs it
        (``None`` for every other run, which reads nothing: a checkpointer may be a database). A resumed run
        (``Command``, ``None``) that is cancelled or closed early, paused by a parent graph, or raises (any error, such as
        the reviewed call's tool raising, before a node was given the thread's state) has no output; its record
        keeps the conversation it continued from the state its first node was given (:attr:`RunCapture.first_state`).
        Where no node was given the thread's state (the first one it ran is a ``Send``'s target, such as
        ``create_agent``'s tools after ``interrupt()`` in a tool, which is given the tool calls; or none ran), the
        thread's state, as the run left it, stands in. A drained run (LangGraph's ``GraphDrained``) reads its thread's
        state too, as its output: the drain saved it at a step boundary, with the results of the calls that ran. A run
        already ended (at SIGTERM or exit, before its task was cancelled) reads nothing: its record is written."""
        drained = is_drain(exc)  # stopped at a step boundary with its checkpoint saved: that state is its output
        if not self.enabled or not (drained or resumes_from_checkpoint(self.input)):
            return None
        if self.read is not None or self.trajectory_id not in self.recorder._in_flight:
            return None
        handler = self.handler
        if handler.graph_output is not None or self.output is not None or (handler.first_state is not None and not drained):
            return None
        configurable = dict((self.config or {}).get("configurable") or {})
        if drained:  # the checkpoint the drain saved: the thread's latest, not the one a forked run started from
            configurable.pop("checkpoint_id", None)
        return {"configurable": configurable} if configurable.get("thread_id") is not None else None

    def finish(self) -> None:
        if not self.enabled:
            return
        returned = self.output  # invoke's: the state with "__interrupt__", a GraphOutput (version="v2"), a list of chunks
        interrupted = (
            self.handler.interrupted
            or self.paused
            or bool(returned.get("__interrupt__") if isinstance(returned, Mapping) else getattr(returned, "interrupts", None))
        )
        self._end("interrupted" if interrupted else "completed", None)

    def fail(self, exc: BaseException) -> None:
        if not self.enabled:
            return
        ending: tuple[str, BaseException | None, str | None]
        if is_interrupt(exc):  # paused (interrupt(), a breakpoint): its thread resumes later
            ending = ("interrupted", None, None)
        elif is_cancellation(exc):  # stopped from outside (its task cancelled, its stream closed, drained): the reason is kept
            self.drained = is_drain(exc)
            ending = ("interrupted", None, cancelled_reason(exc))
        else:
            ending = ("error", exc, None)
        if self.read is None or not self.read.hold(ending):  # else ended when the thread's state is read (_StateRead)
            self._end(*ending)

    def terminate(self, reason: str) -> bool:
        """End the run as ``interrupted`` with ``reason`` (the process is ending), unless it has ended; whether it had not.
        A run whose own thread was ending it when SIGTERM held it (:data:`_END_GATE`) ends as that thread said, and so
        does one waiting for the thread's state (:class:`_StateRead`), with what was read by now. No state is read for a
        run still running here (a resumed run inside a ``Send``'s target keeps no task then): at SIGTERM the main thread
        is in the handler, so an async checkpointer's event loop cannot answer, and a sync read would spend the 5 s the
        runs have to be written."""
        held_by_read = None
        if self.read is not None:
            # never waits for the read's lock: SIGTERM's handler may have interrupted the thread holding it
            if self.read.settle(blocking=False):
                return True
            self.recorder._reading.pop(self.trajectory_id, None)  # (the flush at SIGTERM does not wait for it either)
            held_by_read = self.read._ending  # how its caller ended it, if it did (set before the read settles)
        return self._end(*(self._ending or held_by_read or ("interrupted", None, reason)), held=False)

    def _end(self, status: str, error: BaseException | None, reason: str | None = None, *, held: bool = True) -> bool:
        """End the run: ``error`` for an ``error`` run, ``reason`` why an ``interrupted`` one stopped if nobody paused it.
        Once: ``False`` when it has ended already (at exit or SIGTERM, while its own thread ends it)."""
        recorder = self.recorder
        if self.trajectory_id in recorder._collected:
            # ended by its coroutine's or generator's close() inside the garbage collector, which can run on any thread at
            # any allocation, one holding a lock that writing the run takes: written on the finisher thread instead
            recorder._collected.discard(self.trajectory_id)
            recorder.finisher.submit(functools.partial(self._write, status, error, reason, counted=False))
            return True
        if held and _END_GATE.holds():
            self._ending = (status, error, reason)
            _END_GATE.wait()  # the process is ending at SIGTERM: the run is written as it ended, and its caller waits
        if recorder._in_flight.pop(self.trajectory_id, None) is None:
            return False
        self._write(status, error, reason)
        return True

    def _write(self, status: str, error: BaseException | None, reason: str | None, *, counted: bool = True) -> None:
        """Write the ended run's record (:meth:`_end`'s); ``counted``: whether it is still counted in flight, by the
        finisher and the clock (a run collected in flight no longer is: :func:`_collected_in_flight`)."""
        recorder, handler = self.recorder, self.handler
        if recorder.closed:  # closed while the run was in flight: its parts are gone
            if counted:
                recorder.finisher.run_ended()
                CLOCK.run_ended()
            recorder._not_stored_after_close("ended")
            return
        handler.close_open_spans()
        # the graph's final state, however it was run (see RunCapture); self.output is what the caller gets
        output = handler.graph_output if handler.graph_output is not None else self.output
        if output is None and self.drained:  # its thread's state as the drain left it (saved at the step boundary)
            output = self.stopped_state
        if self.offload is not None:
            calls = sendable_calls(handler.calls or [])
            record = RunRecord(
                self.trajectory_id,
                self.start_ns,
                now_ns(),
                self.thread_id,
                status,
                captured_error(error),
                self.input,
                output,
                self.environment,
                calls,
                reason=reason,
                awaits_calls=handler.awaits_calls,
                last_reply_task=handler.last_reply_task(output),
                parent_resuming=self.parent_resuming,
                root_ids=self.root_ids,
                first_state=self._first_state() if output is None else None,
                nested_outcomes=handler.unhosted_outcomes(),
            )
            if not self.offload.send(record):  # not picklable, or the process is gone: made here, as in thread mode
                recorder.finisher.submit(lambda: emit_run(recorder, record, recorder.processor.report_span_failure))
        else:
            record = RunRecord(
                self.trajectory_id,
                0,
                now_ns(),  # the root ends when the run did, not when the finisher thread gets to it
                self.thread_id,
                status,
                error,
                self.input,
                output,
                self.environment,
                [],
                reason=reason,
                awaits_calls=handler.awaits_calls,
                last_reply_task=handler.last_reply_task(output),
                parent_resuming=self.parent_resuming,
                first_state=self._first_state() if output is None else None,
                nested_outcomes=handler.unhosted_outcomes(),
            )
            span, fragments = self.span, handler.fragments  # the run's messages, encoded by its chat spans (this job runs after theirs)
            recorder.finisher.submit(lambda: finish_root(recorder, span, record, fragments, end_time=record.end_ns))
        if counted:
            recorder.finisher.run_ended()
            CLOCK.run_ended()

    def _first_state(self) -> Any:
        """The state a run without an output keeps (:attr:`RunRecord.first_state`): its first node's, else the thread's
        as it stopped (:meth:`stopped_state_config`)."""
        first = self.handler.first_state
        return first if first is not None else self.stopped_state


def _collected_in_flight(
    in_flight: dict[str, weakref.ref[_Run]], collected: set[str], finisher: SpanFinisher, key: str, _collected_ref: object
) -> None:
    """The weak reference callback of a run in flight whose :class:`_Run` was collected. A task or stream dropped
    unfinished (a pending ``ainvoke`` task on an event loop closed at shutdown, a stream left unfinished) is one reference
    cycle with its coroutine and run, and the collector calls this before it closes the coroutine, whose ``close()``
    then ends the run (:meth:`_Run.fail`, ``GeneratorExit``): the run is kept in ``collected`` for that and no longer
    counted in flight. A run never ended (its frame never closed) is not written."""
    if in_flight.pop(key, None) is not None:
        collected.add(key)
        finisher.run_ended()
        CLOCK.run_ended()


_CHECKPOINT_COORDINATES = ("thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map")
"""The ``configurable`` keys that address a checkpoint: a config naming one of its own does not take the inherited
``configurable`` (LangGraph's ``ensure_config``)."""


def _given(value: Any) -> bool:
    """Whether a config value counts as given when LangGraph merges configs (``None`` and empty collections do not)."""
    return value is not None and not (isinstance(value, (list, tuple, dict)) and not value)


def _config_in_effect(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as the graph runs with it: merged over the config LangChain hands down to code that a runnable runs (a
    tool's, a node's: ``var_child_runnable_config``, what ``ensure_config()`` reads), as LangGraph merges them. So an
    agent invoked in a tool without a config of its own is on the outer run's thread, as its graph is. ``config``'s own
    values win; where its ``configurable`` names a checkpoint of its own (a thread id, a checkpoint namespace or id), the
    inherited ``configurable`` is left out, as the graph leaves it out. Read only: the graph is given ``config`` itself
    and merges the inherited config alike."""
    inherited = var_child_runnable_config.get()
    merged: dict[str, Any] = {k: v for k, v in (inherited or {}).items() if _given(v)}
    merged.update((k, v) for k, v in config.items() if _given(v))
    own = config.get("configurable") or {}
    if any(_given(own.get(key)) for key in _CHECKPOINT_COORDINATES):
        merged["configurable"] = dict(own)
    else:
        merged["configurable"] = {**((inherited or {}).get("configurable") or {}), **own}
    return merged


def _root_ids(recorder: Recorder, context: otel_context.Context | None = None) -> RootIds:
    """The ids a run's root span will have (the child of the span in ``context``, the current context's when ``None``),
    decided in the agent's process. A recorder that offloads has no tracer provider of the user's (the capture process
    could not reach its exporters), so its tracer is always direct."""
    tracer = recorder.tracer
    assert isinstance(tracer, DirectTracer), "a recorder with the user's own tracer provider never offloads"
    return tracer.root_ids(root_span_name(recorder), context)


def _outer_run_context() -> otel_context.Context | None:
    """The context a run's root span starts in where it is made inside another recorded run whose root is not the current
    span (its spans reach no provider of the user's, so it was not made current: :meth:`_Run.active`): that run's root,
    so that the inner run is in the outer run's trace, below it, as nested runs are told apart
    (:mod:`~ee_middleware.replay.paused_turns`). ``None`` (the current context) for every other run."""
    outer = RECORDING.get()
    if outer is None or outer.recorder.tracer_provider is not None:
        return None
    return outer.parent_context


def _hook_environment(hook: Callable[..., Any], graph_input: Any, in_effect: Mapping[str, Any]) -> dict[str, Any] | None:
    """The environment reference the ``environment=`` hook gives for a run started with ``graph_input`` and ``in_effect``
    (called as the run starts, and again as each graph run inside one of its tools starts). An exception of the hook is
    a :class:`CaptureError` naming it (the run is not recorded; the app's run goes on unless capture is strict)."""
    name = getattr(hook, "__qualname__", None) or type(hook).__name__
    try:
        value = hook(graph_input, in_effect)
    except Exception as exc:
        raise CaptureError(f"the environment= hook {name}() raised {exc!r}") from exc
    return _environment_reference(value, f"the environment= hook {name}() returned a value that")


def _environment_reference(value: Any, given_as: str) -> dict[str, Any] | None:
    """``value`` as a trajectory's environment reference: a JSON object (``Trajectory.environment``, what a replay sandbox
    reads to rebuild the world at step 0). A path becomes its text, a ``Decimal`` a number (its text where a float would
    change it); other values are encoded as before (datetimes as ISO text, sets as lists). Anything but a mapping raises
    :class:`ConfigError` on the agent's thread, before the run: stored, it could not be assembled into a trajectory."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{given_as} must be a dict (a JSON object naming what replay needs to rebuild the environment), got "
            f"{type(value).__name__}. Put the value under a key of your choosing, e.g. {{'snapshot': ...}} instead of the "
            "bare value; or leave it out (None) for a run without one."
        )
    return _json_ready(value, given_as)


def _json_ready(value: Any, given_as: str, _at: str = "", _depth: int = 0) -> Any:
    """``value`` with paths as their text and ``Decimal`` numbers as numbers, in mappings and sequences (a copy; the
    caller's data is not changed). Deeper than :data:`~ee_middleware.messages.MAX_JSON_DEPTH` levels, values are left to
    the encoder (which cuts such nesting). A
    value JSON cannot hold (a live connection, a file, a client: it would be stored as its ``repr``, from which no
    world can be rebuilt) raises :class:`ConfigError` naming where it is (``_at``) and what ``given_as`` gave it."""
    if _depth > MAX_JSON_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: _json_ready(v, given_as, f"{_at}[{k!r}]", _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_ready(v, given_as, f"{_at}[{i}]", _depth + 1) for i, v in enumerate(value)]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Decimal):
        return decimal_number(value)
    if value is not None and not isinstance(value, (str, int, float)):
        try:
            to_jsonable(value, unknown=lambda held: _not_json(held, value, given_as, _at))  # (encoded later, as before)
        except (TypeError, ValueError, RecursionError):  # a dataclass's fields copied (asdict) where one cannot be
            _not_json(value, value, given_as, _at)
    return value


def _not_json(held: Any, value: Any, given_as: str, at: str) -> NoReturn:
    inside = "" if held is value else f" (inside its {type(value).__module__}.{type(value).__qualname__})"
    kind = f"{type(held).__module__}.{type(held).__qualname__}"
    said = f"{given_as} holds" if given_as.endswith(" that") else f"{given_as} must hold JSON data, but holds"
    raise ConfigError(
        f"{said} a {kind} at environment{at}{inside}, which JSON cannot hold: it would be stored as its repr, and replay "
        "could not rebuild the world from it. An environment reference names what replay needs to rebuild the world "
        "(plain data: ids, a snapshot's path, a database dump such as a SQLite backup file's path or "
        "'\\n'.join(conn.iterdump())), never a live object: keep connections, files and clients out of it."
    )


def _with_callback(config: dict[str, Any], handler: RunCapture) -> dict[str, Any]:
    callbacks = config.get("callbacks")
    if callbacks is None:
        config["callbacks"] = [handler]
    elif isinstance(callbacks, list):
        config["callbacks"] = [*callbacks, handler]
    else:  # a CallbackManager: copy it so the caller's manager is not changed
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=True)
        config["callbacks"] = manager
    return config


class RecordedGraph(Runnable[Any, Any]):
    """A compiled LangGraph graph whose runs are recorded. Behaves like the graph it wraps.

    It is a LangChain ``Runnable``, so it stands in for the graph wherever one is taken: ``agent |
    f``, ``with_retry``, ``with_fallbacks``, ``bind``, ``with_listeners``, a node of a bigger
    ``StateGraph``. Those wrappers run it through the methods below, so each run is recorded once
    (a retried run once per attempt). Its name, schemas and drawing are the graph's; every other
    attribute passes through to the graph.
    """

    def __init__(self, graph: Any, recorder: Recorder, config: Mapping[str, Any] | None = None) -> None:
        self._graph = graph
        self._recorder = recorder
        self._config = config  # bound by with_config: merged into each run's config

    def __getattr__(self, name: str) -> Any:
        if name in ("_graph", "_recorder", "_config"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._graph, name)

    def __repr__(self) -> str:
        return f"RecordedGraph({self._graph!r}, app={self._recorder.config.app!r})"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self._graph)))

    def copy(self, *args: Any, **kwargs: Any) -> RecordedGraph:
        """The graph's ``copy(update=...)``, recorded by this agent's recorder (the graph's own would record nothing)."""
        return RecordedGraph(self._graph.copy(*args, **kwargs), self._recorder, self._config)

    def validate(self) -> RecordedGraph:
        """Validate the graph (its ``validate()``); this agent, as the graph's returns the graph."""
        self._graph.validate()
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> RecordedGraph:
        """A deep copy of the graph, recorded by this agent's recorder: the recorder (its store, threads and capture
        process) is shared, as one graph's copies share a checkpointer's connection pool."""
        return RecordedGraph(copy.deepcopy(self._graph, memo), self._recorder, copy.deepcopy(self._config, memo))

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    def unwrap(self) -> Any:
        """The original graph, unrecorded."""
        return self._graph

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every finished run is written to the store; ``False`` if the time ran out or a run failed to be
        stored since the last flush (see :meth:`Recorder.flush`)."""
        return self._recorder.flush(timeout)

    def with_config(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> RecordedGraph:
        """This agent with ``config`` bound to each of its runs (as the graph's ``with_config``), so
        the recorder sees it too (the thread id, ``ee_environment``)."""
        return RecordedGraph(self._graph, self._recorder, merge_configs(self._config, config, kwargs))  # type: ignore[arg-type]

    def _run(self, input: Any, config: Mapping[str, Any] | None) -> Any:
        if self._config is not None:
            config = merge_configs(self._config, config)  # type: ignore[arg-type]
        bound = _bound_configurable(self._graph)
        if bound:  # the graph's own (graph.with_config(...) before it was wrapped): its thread id, ee_environment
            # under the call's, as the graph merges them; passing them on changes nothing for the graph
            config = {**(config or {}), "configurable": {**bound, **((config or {}).get("configurable") or {})}}
        return self._recorder.run(input, config)

    # --- what the graph says about itself (Runnable defines these, so they do not pass through) --

    @property
    def InputType(self) -> Any:
        return self._graph.InputType

    @property
    def OutputType(self) -> Any:
        return self._graph.OutputType

    @property
    def config_specs(self) -> Any:
        return self._graph.config_specs

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        return self._graph.get_name(suffix, name=name)

    def get_input_schema(self, config: Any = None) -> Any:
        return self._graph.get_input_schema(config)

    def get_output_schema(self, config: Any = None) -> Any:
        return self._graph.get_output_schema(config)

    def get_input_jsonschema(self, config: Any = None) -> dict[str, Any]:
        return self._graph.get_input_jsonschema(config)

    def get_output_jsonschema(self, config: Any = None) -> dict[str, Any]:
        return self._graph.get_output_jsonschema(config)

    def config_schema(self, *, include: Sequence[str] | None = None) -> Any:
        return self._graph.config_schema(include=include)

    def get_config_jsonschema(self, *, include: Sequence[str] | None = None) -> dict[str, Any]:
        return self._graph.get_config_jsonschema(include=include)

    def get_graph(self, config: Any = None, **kwargs: Any) -> Any:
        return self._graph.get_graph(config, **kwargs)

    def get_prompts(self, config: Any = None) -> Any:
        return self._graph.get_prompts(config)

    # --- runs ----------------------------------------------------------------------------------

    def invoke(self, input: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        with self._run(input, config) as run, run.active():
            try:
                run.output = self._graph.invoke(input, run.config, **kwargs)
            except BaseException as exc:
                self._read_stopped_state(run, exc)
                raise
            run.paused = self._stopped_at_breakpoint(run, kwargs)
        return run.output

    async def ainvoke(self, input: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        with self._run(input, config) as run, run.active():
            try:
                run.output = await self._graph.ainvoke(input, run.config, **kwargs)
            except BaseException as exc:
                await self._aread_stopped_state(run, exc)
                raise
            run.paused = await self._astopped_at_breakpoint(run, kwargs)
        return run.output

    def stream(self, input: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Iterator[Any]:
        return self._recorded_stream("stream", input, config, kwargs)

    def astream(self, input: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        return self._recorded_astream("astream", input, config, kwargs)

    def astream_events(self, input: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """The graph's ``astream_events``, recorded as one run (it runs the graph's own ``astream``)."""
        if kwargs.get("version") == "v3":  # an awaitable run stream, driven by the caller
            return self._streaming_through_self().astream_events(input, config, **kwargs)
        return self._recorded_astream("astream_events", input, config, kwargs)

    def stream_events(self, input: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """The graph's ``stream_events`` (``version="v3"``: a run stream the caller drives), recorded as one run."""
        return self._streaming_through_self().stream_events(input, config, **kwargs)

    def _streaming_through_self(self) -> Any:
        """A shallow copy of the graph whose ``stream``/``astream`` are this recorder's: LangGraph's
        run streams (``version="v3"``) run the graph through ``self.stream``/``self.astream``, and
        are built lazily, so the run they drive is recorded as that stream."""
        shadow = copy.copy(self._graph)
        shadow.stream = self.stream
        shadow.astream = self.astream
        return shadow

    def _breakpoint_state_config(self, run: _Run, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The config to read the thread's state with after ``run``, when it may have stopped at a static breakpoint: the
        graph (or this call) sets ``interrupt_before``/``interrupt_after``, and the run has a checkpointer and a thread.
        ``None`` otherwise: no state is read (a checkpointer may be a database)."""
        graph = self._graph
        breakpoints = (
            kwargs.get("interrupt_before")
            or kwargs.get("interrupt_after")
            or getattr(graph, "interrupt_before_nodes", None)
            or getattr(graph, "interrupt_after_nodes", None)
        )
        if not run.enabled or not breakpoints or getattr(graph, "checkpointer", None) in (None, False, True):
            return None
        configurable = (run.config or {}).get("configurable") or {}
        return {"configurable": dict(configurable)} if configurable.get("thread_id") is not None else None

    def _stopped_at_breakpoint(self, run: _Run, kwargs: Mapping[str, Any]) -> bool:
        """Whether ``run`` ended at a static breakpoint: the thread's state still has nodes to run."""
        config = self._breakpoint_state_config(run, kwargs)
        if config is None:
            return False
        try:
            return bool(self._graph.get_state(config).next)
        except Exception:  # noqa: BLE001 - a checkpointer that cannot be read here (an async one): the run counts as ended
            return False

    async def _astopped_at_breakpoint(self, run: _Run, kwargs: Mapping[str, Any]) -> bool:
        config = self._breakpoint_state_config(run, kwargs)
        if config is None:
            return False
        try:
            return bool((await self._graph.aget_state(config)).next)
        except Exception:  # noqa: BLE001 - as _stopped_at_breakpoint
            return False

    def _state_read(self, run: _Run) -> _StateRead:
        """The read of the thread's state ``run`` now waits for before it is ended (kept by its recorder until settled)."""
        read = run.read = _StateRead(run)
        run.recorder._reading[run.trajectory_id] = read
        return read

    def _read_stopped_state(self, run: _Run, exc: BaseException) -> None:
        """Start reading the thread's state for ``run`` where it stops on ``exc`` without an output and needs it
        (:meth:`_Run.stopped_state_config`), on a daemon thread: the caller goes on at once (a closed stream, a Ctrl-C'd
        ``invoke``), and the run is ended when the read answers or, at the latest, by a timer at
        :data:`STOPPED_STATE_TIMEOUT_S` (a failing checkpointer: at once). Never raises. A checkpointer that never answers
        keeps that one daemon thread waiting in it (a thread cannot be stopped); the run is recorded without the state."""
        config = run.stopped_state_config(exc)
        if config is None:
            return
        read = self._state_read(run)
        graph = self._graph

        def read_state() -> None:
            try:
                state = graph.get_state(config).values
            except Exception as error:  # noqa: BLE001 - a checkpointer that cannot be read here (an async one): recorded without it
                logger.debug("ee-middleware: could not read the thread's state of a resumed run that stopped: %r", error)
                read.settle()
            else:
                read.settle(state)

        timer = threading.Timer(max(0.0, read.deadline - time.monotonic()), read.settle)
        timer.daemon = True
        read.stop = timer.cancel
        reader = threading.Thread(target=read_state, name="ee-stopped-state-read", daemon=True)
        try:
            timer.start()
            reader.start()
        except RuntimeError:  # no new thread (interpreter shutdown): recorded without it
            read.settle()
            return
        if is_drain(exc):
            # a drain is the caller's own cooperative stop, which it may resume at once: read the state the drain saved
            # before the caller goes on, or a resume's checkpoints would be read instead (bounded, as any such read)
            reader.join(max(0.0, read.deadline - time.monotonic()))

    async def _aread_stopped_state(self, run: _Run, exc: BaseException) -> None:
        """:meth:`_read_stopped_state` of an async run: the read is a task of its own on the caller's event loop, bounded
        by :data:`STOPPED_STATE_TIMEOUT_S`. The caller waits for it :data:`STOPPED_STATE_WAIT_S` at most, not cancelled
        with it, so that a read that answers soon has the run stored with its turn before the caller goes on (a
        ``flush()`` on the loop right after, the loop ending); a slower one goes on without the caller, and a
        cancellation that comes again (an anyio cancel scope, such as Starlette's for a client that went away, cancels
        its task again at every await) stops the caller's wait at once, never the read. ``asyncio.run`` cancels every
        task as it ends: the read is made again, within its bound, as the loop waits. A loop that stops or closes with
        the read pending (``run_until_complete`` then ``close()``) leaves the run to the next flush, or the exit's,
        which store it at once without the state."""
        config = run.stopped_state_config(exc)
        if config is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # an async generator closed without its loop: no read
            return
        read = self._state_read(run)
        read.loop = loop
        read.task = task = loop.create_task(self._aread_state(read, config))
        read.stop = functools.partial(loop.call_soon_threadsafe, task.cancel)
        task.add_done_callback(lambda _: read.settle())  # (cancelled before it started: the loop ending)
        try:
            # not cancelled with the caller (asyncio.wait): a read that answers soon (a database's round trip) has the
            # run stored with its turn before the caller goes on, and before its loop can end
            # (a drain's caller, which may resume at once, waits for the state the drain saved: see _read_stopped_state)
            wait = read.deadline - time.monotonic() if is_drain(exc) else min(STOPPED_STATE_WAIT_S, read.deadline - time.monotonic())
            await asyncio.wait({task}, timeout=max(0.0, wait))
        except asyncio.CancelledError:
            # cancelled again (an anyio cancel scope does so at every await): the read goes on by itself
            if not isinstance(exc, asyncio.CancelledError):  # (one already on its way up is the caller's cancellation)
                raise

    async def _aread_state(self, read: _StateRead, config: dict[str, Any]) -> None:
        """The read :meth:`_aread_stopped_state` starts: settles ``read`` with the thread's state, or without it where
        the checkpointer fails or does not answer by the read's bound."""
        while not read.settled:  # (not done: set only once the run has ended, after a flush elsewhere settled it)
            try:
                async with asyncio.timeout(max(0.0, read.deadline - time.monotonic())):
                    snapshot = await self._graph.aget_state(config)
            except asyncio.CancelledError:
                # Only this recorder and the loop hold this task: it is the loop ending (asyncio.run cancels each of its
                # tasks once, then waits for them), or the read was settled otherwise (read.done). Read again within the
                # bound, as the loop waits: the caller that ended it right after its cancelled run loses nothing.
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                if time.monotonic() >= read.deadline:
                    break
            except Exception as error:  # noqa: BLE001 - as _read_stopped_state (TimeoutError included)
                logger.debug("ee-middleware: could not read the thread's state of a resumed run that stopped: %r", error)
                break
            else:
                read.settle(snapshot.values)
                return
        read.settle()

    def _recorded_stream(self, method: str, input: Any, config: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> Iterator[Any]:
        with self._run(input, config) as run:
            try:
                with run.active():
                    iterator = iter(getattr(self._graph, method)(input, run.config, **kwargs))
                while True:
                    with run.active():
                        try:
                            chunk = next(iterator)
                        except StopIteration:
                            run.paused = self._stopped_at_breakpoint(run, kwargs)
                            break
                    yield chunk
            except BaseException as exc:  # closed early (GeneratorExit), cancelled, failed
                self._read_stopped_state(run, exc)
                raise

    async def _recorded_astream(
        self, method: str, input: Any, config: Mapping[str, Any] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        with self._run(input, config) as run:
            try:
                with run.active():
                    iterator = getattr(self._graph, method)(input, run.config, **kwargs).__aiter__()
                while True:
                    with run.active():
                        try:
                            chunk = await iterator.__anext__()
                        except StopAsyncIteration:
                            run.paused = await self._astopped_at_breakpoint(run, kwargs)
                            break
                    yield chunk
            except BaseException as exc:  # closed early (GeneratorExit), cancelled, failed
                await self._aread_stopped_state(run, exc)
                raise

    def batch(
        self,
        inputs: Sequence[Any],
        config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        # every run ends, as in the graph's own batch; the failure raised is that of the lowest index that failed
        # (the graph's executor.map), not the first to end
        ended = {index: (output, failed) for index, output, failed in self._batch_runs(inputs, config, kwargs)}
        if not return_exceptions:
            for index in range(len(inputs)):
                output, failed = ended[index]
                if failed:
                    raise output
        return [ended[index][0] for index in range(len(inputs))]

    def batch_as_completed(
        self,
        inputs: Sequence[Any],
        config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> Iterator[tuple[int, Any]]:
        """``(index, output)`` of each input as its run ends, each run recorded (as the graph's own)."""
        with contextlib.closing(self._batch_runs(inputs, config, kwargs)) as runs:  # a failure raised: the others end first
            for index, output, failed in runs:
                if failed and not return_exceptions:
                    raise output
                yield index, output

    def _batch_runs(self, inputs: Sequence[Any], config: Any, kwargs: dict[str, Any]) -> Iterator[tuple[int, Any, bool]]:
        """``(index, output or exception, whether it failed)`` of each input as its run ends, at most
        ``max_concurrency`` at once."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        configs = _configs_for(inputs, config)

        def one(index: int) -> tuple[int, Any, bool]:
            try:
                return index, self.invoke(inputs[index], configs[index], **kwargs), False
            except Exception as exc:  # noqa: BLE001 - the caller gets it back, or raised in input order
                return index, exc, True

        if len(inputs) <= 1:
            yield from (one(i) for i in range(len(inputs)))
            return
        with ThreadPoolExecutor(max_workers=_max_concurrency(configs)) as pool:
            for future in as_completed([pool.submit(one, i) for i in range(len(inputs))]):
                yield future.result()

    async def abatch(
        self,
        inputs: Sequence[Any],
        config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        runs = self._aruns(inputs, config, kwargs)
        return list(await asyncio.gather(*(runs(i) for i in range(len(inputs))), return_exceptions=return_exceptions))

    async def abatch_as_completed(
        self,
        inputs: Sequence[Any],
        config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[tuple[int, Any]]:
        """``(index, output)`` of each input as its run ends, each run recorded (as the graph's own)."""
        runs = self._aruns(inputs, config, kwargs)

        async def one(index: int) -> tuple[int, Any]:
            try:
                return index, await runs(index)
            except Exception as exc:
                if return_exceptions:
                    return index, exc
                raise

        for next_done in asyncio.as_completed([one(i) for i in range(len(inputs))]):
            yield await next_done

    def _aruns(self, inputs: Sequence[Any], config: Any, kwargs: dict[str, Any]) -> Callable[[int], Any]:
        """``index -> ainvoke of that input``, at most ``max_concurrency`` at once (as the graph's own)."""
        configs = _configs_for(inputs, config)
        limit = _max_concurrency(configs)
        gate = asyncio.Semaphore(limit) if limit else None

        async def run(index: int) -> Any:
            if gate is None:
                return await self.ainvoke(inputs[index], configs[index], **kwargs)
            async with gate:
                return await self.ainvoke(inputs[index], configs[index], **kwargs)

        return run


# LangGraph looks for a graph inside a node (a subgraph: its state in ``get_state(subgraphs=True)``,
# its nodes in ``get_graph(xray=True)``) by this type; the calls it makes pass through to the graph.
PregelProtocol.register(RecordedGraph)


def _bound_configurable(graph: Any) -> dict[str, Any]:
    """The ``configurable`` values ``graph`` binds to each of its runs: those of ``graph.with_config(...)`` (a
    ``RunnableBinding``, also inside ``with_retry`` and the like) and of a compiled graph's own ``config``; an outer
    binding's over an inner one's, as they merge when the graph runs."""
    layers: list[Mapping[str, Any]] = []
    runnable = graph
    for _ in range(32):
        bound = getattr(runnable, "config", None)
        if isinstance(bound, Mapping) and isinstance(bound.get("configurable"), Mapping):
            layers.append(bound["configurable"])
        if not isinstance(runnable, RunnableBindingBase):
            break
        runnable = runnable.bound
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged.update(layer)
    return merged


def _max_concurrency(configs: Sequence[Any]) -> int | None:
    return (configs[0] or {}).get("max_concurrency") if configs else None


def _configs_for(inputs: Sequence[Any], config: Any) -> list[Any]:
    if config is None or isinstance(config, Mapping):
        return [config] * len(inputs)
    configs = list(config)
    if len(configs) != len(inputs):
        raise ValueError(f"batch got {len(inputs)} inputs but {len(configs)} configs")
    return configs


def _is_graph(obj: Any) -> bool:
    return callable(getattr(obj, "invoke", None)) and callable(getattr(obj, "stream", None))


def _not_a_graph(function: str, built: Any) -> str:
    """Why ``@record_experience`` on ``function`` records nothing: it returned ``built``, which is no graph; naming a
    graph that ``built`` holds (a ``(graph, checkpointer)`` tuple, a dict of parts)."""
    what = type(built).__name__
    if isinstance(built, (tuple, list)):
        what = f"a {what} ({', '.join(type(item).__name__ for item in built)})"
        held = next((f"Its item {i}" for i, item in enumerate(built) if _is_graph(item)), None)
    elif isinstance(built, Mapping):
        what = f"a {what} with keys {', '.join(map(repr, list(built)[:8]))}"
        held = next((f"Its value {key!r}" for key, item in built.items() if _is_graph(item)), None)
    else:
        what = "None" if built is None else f"a {what}"
        held = None
    if held is not None:
        fix = (
            f"{held} is the graph: return the graph alone from {function}(), keeping the rest elsewhere, or wrap it where it "
            "is built: graph = record_experience(graph, app=..., store=...)."
        )
    elif callable(getattr(built, "compile", None)):  # a StateGraph (a builder): the graph is what its compile() returns
        fix = (
            f"It is the graph's builder, not compiled: return builder.compile() from {function}() (with its "
            "checkpointer, if any: builder.compile(checkpointer=...)), and the decorator records the compiled graph."
        )
    elif hasattr(built, "__aenter__") or hasattr(built, "__enter__"):  # an @asynccontextmanager / @contextmanager factory
        fix = (
            f"It is a context manager (an @asynccontextmanager or @contextmanager factory), which the decorator does not "
            f"enter: take @record_experience off {function}() and wrap the graph where the factory yields it: "
            "yield record_experience(graph, app=..., store=...)."
        )
    else:
        fix = (
            "Decorate the function that builds and returns the graph, or wrap the graph itself: record_experience(graph, "
            "app=...) gives an agent whose runs are recorded (a function that runs the agent records nothing)."
        )
    return f"@record_experience on {function}(): the function returned {what}, not a compiled LangGraph graph, so no run would be recorded. {fix}"


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _same_store(recorder: Recorder, spec: Any) -> bool:
    """Whether ``recorder`` writes to the store ``spec`` names: its local folder, or another kind's same spec (a plug-in's
    ``root`` is its own: a database file, a URL)."""
    root = local_folder(recorder.store)
    if root is None:
        return bool(str(recorder.config.store) == str(spec))
    try:
        return Path(root).resolve() == Path(spec).expanduser().resolve()
    except (OSError, TypeError, ValueError):
        return False


_UNNAMED_APP = next(f.default for f in dataclasses.fields(CaptureConfig) if f.name == "app")
"""``CaptureConfig.app`` when nothing named the app."""


_P = ParamSpec("_P")


class RecordingOptions(TypedDict, total=False):
    """The keywords :func:`record_experience` takes, its own and every :class:`CaptureConfig` setting (for type
    checkers: a misspelled one is an error there, as it is when the call runs)."""

    app: str | None
    store: str | os.PathLike[str] | ExperienceStore | None
    app_version: str | None
    approve_if: ApprovePredicate | None
    tracer_provider: TracerProvider | None
    environment: Mapping[str, Any] | Callable[[Any, Mapping[str, Any]], Mapping[str, Any] | None] | None
    redact: bool | None
    redaction_patterns: Mapping[str, str] | None
    redact_fn: Callable[[str], str] | None
    config: CaptureConfig | str | None
    redaction_kinds: Mapping[str, bool]
    redaction_keys: Sequence[str]
    redaction_pseudonyms: bool
    vault: bool | str
    max_observation_chars: int
    strict: bool
    offload: str
    offload_nice: int


class RecordingDecorator(Protocol):
    """What ``@record_experience(app=..., ...)`` gives: a decorator of a function returning a graph (an ``async def``
    one stays async)."""

    @overload
    def __call__(
        self, factory: Callable[_P, Awaitable[PregelProtocol | RecordedGraph]]
    ) -> Callable[_P, Coroutine[Any, Any, RecordedGraph]]: ...
    @overload
    def __call__(self, factory: Callable[_P, PregelProtocol | RecordedGraph]) -> Callable[_P, RecordedGraph]: ...


class _ForkSafeLock:
    """A lock that a forked child gets new: a fork while another thread held it (building a decorated factory's recorder)
    would leave the child a lock that no thread of its own ever releases, and its first call of the factory waiting
    forever."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._pid != os.getpid():
            self._lock, self._pid = threading.Lock(), os.getpid()
        with self._lock:
            yield


@overload
def record_experience(graph: PregelProtocol | RecordedGraph, **options: Unpack[RecordingOptions]) -> RecordedGraph: ...
@overload
def record_experience(
    graph: Callable[_P, Awaitable[PregelProtocol | RecordedGraph]], **options: Unpack[RecordingOptions]
) -> Callable[_P, Coroutine[Any, Any, RecordedGraph]]: ...
@overload
def record_experience(
    graph: Callable[_P, PregelProtocol | RecordedGraph], **options: Unpack[RecordingOptions]
) -> Callable[_P, RecordedGraph]: ...
@overload
def record_experience(graph: None = None, **options: Unpack[RecordingOptions]) -> RecordingDecorator: ...


def record_experience(
    graph: Any = None,
    *,
    app: str | None = None,
    store: str | os.PathLike[str] | ExperienceStore | None = None,
    app_version: str | None = None,
    approve_if: ApprovePredicate | None = None,
    tracer_provider: TracerProvider | None = None,
    environment: Mapping[str, Any] | Callable[[Any, Mapping[str, Any]], Mapping[str, Any] | None] | None = None,
    redact: bool | None = None,
    redaction_patterns: Mapping[str, str] | None = None,
    redact_fn: Callable[[str], str] | None = None,
    config: CaptureConfig | str | None = None,
    **settings: Any,
) -> Any:
    """Record every run of a LangGraph graph into an experience store.

    Use it on a compiled graph (``record_experience(graph, app=..., store=...)``) or as a decorator
    on a function that returns one (``@record_experience(app=..., store=...)``); on an ``async def``
    function the decorated function is async too, and awaiting it gives the recorded graph.

    Args:
        graph: the compiled graph, or a function (sync or async) returning one; a decorated function that returns
            anything else (a ``(graph, checkpointer)`` tuple, the agent's answer) raises :class:`ConfigError` when called.
        app: name of the agent, stored with every run. Without it, the one ``config`` or ``EE_APP`` gives (as any
            setting), else the decorated function's name, else ``"default-app"``.
        store: store folder (default ``./experience`` or ``EE_STORE``) or a store object.
        app_version: version stored with every run.
        approve_if: ``trajectory -> bool``; runs for which it returns True are approved automatically.
        tracer_provider: your OpenTelemetry SDK ``TracerProvider``; the spans then also reach your
            own exporters. By default the recorder's spans are made directly for its own processor, seen by no exporter and
            stored whatever the ``OTEL_*`` sampling and limits say (the global provider is never replaced).
        environment: environment reference for replay: a dict or a hook ``(input, config) -> dict``
            (a run's ``config["configurable"]["ee_environment"]`` takes its place); anything but a dict
            raises :class:`ConfigError` when the run starts.
        redact / redaction_patterns / redact_fn: secret scrubbing (on by default; ``redaction_kinds`` and
            ``redaction_keys``, key names whose values are always secrets, go in ``**settings``). The recorder also
            applies what the store's ``redaction.json`` recorded (every other writer's kinds, patterns, key names and
            ``redact_fn``; :mod:`ee_middleware.capture.store_redaction`): a recorded ``redact_fn`` it cannot import
            raises :class:`ConfigError` naming it. ``redact_fn`` is recorded by its ``module.function`` name, which
            every other writer of the store imports: define it at module level in an importable module (a lambda, a
            function defined inside another or in a script run as ``__main__`` raises :class:`ConfigError`, before
            anything is written).
        config: a :class:`CaptureConfig` or the path of a TOML file with a ``[capture]`` table.
        **settings: any other :class:`CaptureConfig` field, e.g. ``offload="process"`` (capture's
            work in a child process: the low-overhead mode under sustained load; see
            :mod:`ee_middleware.capture.offload`).
    """
    if graph is not None and not _is_graph(graph) and not callable(graph):
        raise ConfigError(f"record_experience expects a compiled LangGraph graph or a function returning one, got {type(graph).__name__}.")

    store_path = os.fspath(store) if isinstance(store, (str, os.PathLike)) else None
    store_obj = store if store is not None and store_path is None else None
    if store_obj is not None:
        check_store_object(
            store_obj,
            given_as="record_experience(store=...)",
            takes="a store: a folder path, a store spec (local:PATH, NAME:LOCATION for a store plug-in) or an ExperienceStore "
            "object (LocalExperienceStore, a plug-in's store)",
        )

    overrides = dict(
        app=app,
        store=store_path,
        app_version=app_version,
        environment=environment,
        redact=redact,
        redaction_patterns=redaction_patterns,
        redact_fn=redact_fn,
        **settings,
    )

    def capture_config(default_app: str | None) -> CaptureConfig:
        if isinstance(config, CaptureConfig):
            cfg = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
        else:
            cfg = CaptureConfig.load(config, **overrides)
        if default_app and not app and cfg.app == _UNNAMED_APP:  # the function's name: below the file and EE_APP
            cfg = dataclasses.replace(cfg, app=default_app)
        return cfg

    def build(default_app: str | None) -> Recorder:
        return Recorder(capture_config(default_app), store=store_obj, tracer_provider=tracer_provider, approve_if=approve_if)

    def already_recorded(agent: RecordedGraph) -> RecordedGraph:
        """``agent`` itself (a run is never recorded twice) where the settings given here are its recorder's, or none
        are given; else :class:`ConfigError`: they would be ignored."""
        recorder = agent.recorder
        given = [name for name, value in overrides.items() if value is not None]
        differ: list[str] = []
        if config is not None or given:
            wanted = capture_config(None)
            for name in [f.name for f in dataclasses.fields(CaptureConfig)] if config is not None else given:
                if name == "store":
                    if store_obj is None and not _same_store(recorder, wanted.store):
                        differ.append(name)
                elif getattr(recorder.config, name) != getattr(wanted, name):
                    differ.append(name)
        for name, value, have in (
            ("store", store_obj, recorder.store),
            ("approve_if", approve_if, recorder.approve_if),
            ("tracer_provider", tracer_provider, recorder.tracer_provider),
        ):
            if value is not None and value is not have and name not in differ:
                differ.append(name)
        if not differ:
            return agent
        where = getattr(recorder.store, "root", None) or type(recorder.store).__name__
        raise ConfigError(
            f"record_experience: this agent is already recorded (app {recorder.config.app!r}, store {str(where)!r}); the "
            f"{_listed(differ)} given here differ from that recorder's and would be ignored (wrapping a recorded agent "
            "again never records a run twice). To record with these settings instead, wrap the graph itself: "
            "record_experience(agent.unwrap(), app=..., store=...) (its runs go to the new store alone, the first "
            "wrapper's to the first). To keep the first recording, use the agent as it is."
        )

    def wrap(target: Any) -> Any:
        if isinstance(target, RecordedGraph):
            return already_recorded(target)
        if _is_graph(target):
            return RecordedGraph(target, build(None))
        recorder_cell: list[Recorder] = []
        building = _ForkSafeLock()  # first calls from several threads at once build one recorder (one capture process)

        def recorded(built: Any) -> Any:
            if isinstance(built, RecordedGraph):
                return already_recorded(built)
            if not _is_graph(built):
                raise ConfigError(_not_a_graph(getattr(target, "__qualname__", None) or repr(target), built))
            if not recorder_cell:
                with building.held():
                    if not recorder_cell:
                        recorder_cell.append(build(getattr(target, "__name__", None)))
            return RecordedGraph(built, recorder_cell[0])

        async def awaited(pending: Awaitable[Any]) -> Any:
            return recorded(await pending)

        if inspect.iscoroutinefunction(target):  # an async factory (tools = await client.get_tools(); ...): one too

            @functools.wraps(target)
            async def afactory(*args: Any, **kwargs: Any) -> Any:
                return recorded(await target(*args, **kwargs))

            return afactory

        @functools.wraps(target)
        def factory(*args: Any, **kwargs: Any) -> Any:
            built = target(*args, **kwargs)
            if inspect.isawaitable(built) and not _is_graph(built):  # a function returning a coroutine that builds it
                return awaited(built)
            return recorded(built)

        return factory

    if graph is None:
        return wrap
    return wrap(graph)


_forked_pid: int | None = None
"""This process's id where it was forked from one that imported capture (see :func:`_flush_at_multiprocessing_exit`)."""


def _detach_offloads_after_fork() -> None:
    """A forked process records its own runs on its own threads: the capture process, the runs in flight and the work
    queued on the finisher belong to its parent (which ends and writes them), so its exit and SIGTERM flushes act for it."""
    global _forked_pid
    _forked_pid = os.getpid()
    for recorder in list(_live_recorders):
        recorder.offload = None
        recorder._offload_lock = threading.Lock()  # it may have been held by a thread that does not exist here
        recorder._failed_lock = threading.Lock()
        recorder._failed_seen = recorder.stats.runs_failed  # (without the capture process's now)
        recorder._in_flight.clear()
        recorder._collected = set()
        recorder._reading = {}
        recorder.finisher.forget_after_fork()  # (its thread starts with the first run here: _ready_for_a_run)
        if recorder.vault is not None:
            recorder.vault.forget_after_fork()
    _END_GATE.open()  # closed by the parent's SIGTERM writer, which does not exist here


# Registered once per process: a reload (importlib.reload; Jupyter's %autoreload, which clears these globals first) runs
# this module again, and registering again would run each hook twice in every forked child (two exit flushes). What was
# registered is kept outside these globals (_lifetime.process_hooks). The hooks registered first stay and look their
# names up in these globals (the same dict after either reload); %autoreload gives them the new code, while after
# importlib.reload they run their first load's body (an edit to the hooks themselves takes effect on restart).
_HOOKS = process_hooks(__name__)
_FIRST_LOAD = not _HOOKS
_HOOKS["fork"] = True

if _FIRST_LOAD and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_detach_offloads_after_fork)


def _flush_at_multiprocessing_exit(_: object) -> None:
    """In a ``multiprocessing`` process forked from this one (``Process``, ``Pool``, ``ProcessPoolExecutor`` with the
    ``fork`` start method): such a process ends with ``os._exit``, which runs no ``atexit`` hook, after running
    ``multiprocessing``'s own exit finalizers; the exit flush is made one of them, so the runs it recorded are written
    before it ends. (Registered here, after ``multiprocessing`` clears the finalizers a forked process inherits. A
    process of the ``forkserver`` or ``spawn`` start method imports capture itself, often only with its first task, after
    this hook ran: it is registered there when the process's first run starts, see :func:`_ready_for_a_run`.)"""
    if _forked_pid == os.getpid():
        _flush_at_multiprocessing_finalizers()


_exit_flush_in: int | None = None  # the process whose multiprocessing exit finalizers flush capture's recorders


def _flush_at_multiprocessing_finalizers() -> None:
    """Make the exit flush one of ``multiprocessing``'s exit finalizers in this process, once: a process it started ends
    with them, and with ``os._exit`` where the start method is ``fork`` or ``forkserver`` (no ``atexit`` hook runs)."""
    global _exit_flush_in
    if _exit_flush_in != os.getpid():
        _exit_flush_in = os.getpid()
        multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=0)


if _FIRST_LOAD:
    # keyed on this module, which multiprocessing holds weakly and sys.modules keeps alive (as capture's shutdown module does)
    multiprocessing.util.register_after_fork(sys.modules[__name__], _flush_at_multiprocessing_exit)


EXITED = "terminated: the process exited"
"""The ``error`` of a run still in flight at exit (a daemon thread's; status ``interrupted``)."""


if "exit" in _HOOKS:
    atexit.unregister(_HOOKS["exit"])  # the previous load's (see _HOOKS): one exit flush, the new code's


@atexit.register
def _flush_at_exit() -> None:
    with _sigterm_after_the_exit_flush():
        _flush_every_recorder()


_HOOKS["exit"] = _flush_at_exit


@contextmanager
def _sigterm_after_the_exit_flush() -> Iterator[None]:
    """Hold a SIGTERM that comes during the exit flush until it is done, where capture's handler is installed
    (:mod:`~ee_middleware.capture.shutdown`): a ``multiprocessing.Pool``'s ``terminate`` (its ``with`` block's end) sends
    it to workers that are ending, in their exit flush. Handled at once, on the main thread that may then hold one of
    capture's locks, it left the handler's own flush waiting on that lock for its 5 s, and the process killed with its
    runs unwritten. Raised again once the flush is done, the process still ends killed by SIGTERM; a second SIGTERM
    meanwhile ends it at once."""
    try:
        held = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is shutdown._on_sigterm
    except (AttributeError, ValueError):  # no SIGTERM (Windows), not the main interpreter
        held = False
    if not held:
        yield
        return
    came: list[int] = []

    def note(signum: int, frame: object) -> None:
        if came:  # the second: at once
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
        came.append(signum)

    signal.signal(signal.SIGTERM, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, shutdown._on_sigterm)
        if came:
            signal.raise_signal(signal.SIGTERM)


def _flush_every_recorder() -> None:
    with _one_interrupt_waited_out():
        _flush_recorders()


@contextmanager
def _one_interrupt_waited_out() -> Iterator[None]:
    """While the runs are written at exit (bounded: 10 s a recorder), a Ctrl-C is said and waited out, the next one
    stops the writing: a second Ctrl-C a moment after the first (the usual way to stop a program) had every run that
    finished in the last seconds lost, their answers already given. Outside the main thread, as it is."""
    if threading.current_thread() is not threading.main_thread() or not _live_recorders:
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    said: list[bool] = []

    def patient(signum: int, frame: Any) -> None:
        if said:
            raise KeyboardInterrupt
        said.append(True)
        sys.stderr.write(
            "ee-middleware: writing the recorded runs before exiting (at most a few seconds); press Ctrl-C again to quit without them.\n"
        )

    try:
        signal.signal(signal.SIGINT, patient)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(signal.SIGINT, before)


EXIT_FLUSH_S = 10.0
"""How long capture waits at exit for a recorder's runs to be written (its capture process's, once more)."""


def _flush_recorders() -> None:
    for recorder in list(_live_recorders):
        try:
            try:
                recorder._settle_state_reads(timeout=STOPPED_STATE_TIMEOUT_S)  # a run stopped just before: as a flush would
                recorder._end_runs_in_flight(EXITED)
                if not recorder._flush(EXIT_FLUSH_S)[1]:  # (as _flush_at_sigterm says it)
                    logger.warning(
                        "ee-middleware: the recorded runs were not all written to the store within the %g s capture waits "
                        "at exit (app %r): those of the last moments are lost. To keep them, call flush() on the recorded "
                        "agent before the program ends, with a timeout long enough for its store (it returns False while "
                        "runs remain unwritten).",
                        EXIT_FLUSH_S,
                        recorder.config.app,
                    )
            finally:
                if recorder.offload is not None:
                    recorder.offload.close(timeout=EXIT_FLUSH_S)
            close = getattr(recorder.store, "close", None)
            if callable(close):
                close()
        except Exception:
            logger.exception("ee-middleware: flushing recorded runs at exit failed")


class _EndGate:
    """Closed at SIGTERM by the thread that writes the runs: a run ending on any other thread then waits (its caller does
    not get its result) and is written as it ended by that thread, so no caller gets the result of a run that is not
    written before the process ends. Opened again only if the process goes on after all."""

    def __init__(self) -> None:
        self._writer: threading.Thread | None = None
        self._open = threading.Event()
        self._open.set()

    def close(self) -> None:
        self._writer = threading.current_thread()
        self._open.clear()

    def open(self) -> None:
        self._writer = None
        self._open.set()

    def holds(self) -> bool:
        writer = self._writer
        return writer is not None and writer is not threading.current_thread()

    def wait(self) -> None:
        self._open.wait()


_END_GATE = _EndGate()


def _ready_for_a_run(recorder: Recorder) -> None:
    """As a run of ``recorder`` starts, on its thread, before it is in flight; what this process needs to write it
    however it ends, once (per process, per recorder):

    - in a process ``multiprocessing`` started (any start method), the exit flush is one of its exit finalizers (a
      ``forkserver`` worker ends with ``os._exit``: its runs were lost when its pool was closed);
    - where capture's SIGTERM handler is this process's (not where ``threading`` is green), its writer thread runs
      (:func:`~ee_middleware.capture.shutdown.ready_to_write`) and so do ``recorder``'s threads that write a run (the
      span finisher, the store writer): the handler's flush cannot start them (see
      :meth:`~ee_middleware.capture.processor.ExperienceSpanProcessor.start_writer`), and before any run ended they were
      not running. Started here, not when the recorder is built or the process forked: a recorder never run, or a
      forked process that records nothing, starts no thread."""
    pid = os.getpid()
    if recorder._ready_in == pid:
        return
    if _exit_flush_in != pid and multiprocessing.parent_process() is not None:
        _flush_at_multiprocessing_finalizers()
    if not shutdown.ready_to_write():
        return  # started as they are needed (the handler, if it is capture's again later, starts its own)
    try:
        recorder.finisher.start()
        recorder.processor.start_writer()
    except RuntimeError:  # no new thread (interpreter shutdown): they start with their first job, as without the handler
        return
    recorder._ready_in = pid


def _flush_at_sigterm(seconds: float, reason: str) -> None:
    """At SIGTERM (:mod:`ee_middleware.capture.shutdown`): hold the runs ending now (:class:`_EndGate`), end every live
    recorder's runs in flight (those held as they ended, the others as ``interrupted`` with ``reason``), then write what
    each holds, all within ``seconds``. A capture process is flushed, not stopped: it outlives this process to write
    what was sent to it (stopping it in time would mean killing it); what has not reached it by half the time (a child
    starved of CPU on a busy machine reads its pipe slowly) is taken back and written here
    (:meth:`~ee_middleware.capture.offload.ProcessOffload.withdraw_unsent`). Says so when not everything was written."""
    deadline = time.monotonic() + seconds
    _END_GATE.close()
    recorders = list(_live_recorders)
    for recorder in recorders:
        recorder._end_runs_in_flight(reason)
    for recorder in recorders:  # what has not reached a capture process by half the time is written here
        if recorder.offload is not None:
            try:
                recorder.offload.withdraw_unsent(max(0.0, deadline - time.monotonic()) / 2)
            except Exception:
                logger.exception("ee-middleware: taking back the runs the capture process had not taken failed")
    flushed: dict[int, bool] = {}
    for _ in range(2):  # again for a run that was past the gate when it closed, and ended during the first
        for recorder in recorders:
            try:
                flushed[id(recorder)] = recorder.flush(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                logger.exception("ee-middleware: writing recorded runs at SIGTERM failed")
    if not all(flushed.values()):
        logger.warning(
            "ee-middleware: not every recorded run was written within the %.0f s SIGTERM allows: runs may be lost (a "
            "capture process goes on writing what it was sent after this process ends).",
            seconds,
        )
    for recorder in recorders:
        close = getattr(recorder.store, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
