"""Capture's work in a child process: encoding, redaction, spans, assembly and store writes.

Under sustained load the background work of capture (about 1.9 ms of CPU per run of a small ReAct
graph) cannot wait for idle moments, and a thread of the agent's process doing it holds the
interpreter lock the agent needs. With ``offload="process"`` (or ``"auto"`` under sustained load)
the agent's process only pickles each finished run's raw objects (:class:`RunRecord`: messages,
outputs, times; about 0.1 ms) and writes them to a pipe; a child process started from this module
(:func:`child_main`) makes the spans with the same code as the thread path
(:func:`~ee_middleware.capture.callbacks.emit_run`), made directly for its own processor, with the
same redaction rules (the recorder's own united with the store's recorded ones: :class:`CaptureRedaction`), salt and
vault, and writes the trajectories to the same store (its own spool segment).

Only for a recorder without the user's own ``tracer_provider``: spans made in the child never reach a provider of
the agent's process, so with the user's own ``tracer_provider`` capture stays in-thread.

- ``flush()`` sends a marker and waits for the child's answer, which comes after everything sent
  before it is written (``fsync``) and the vault is made durable; it carries the child's counters
  and the failures since the last answer (strict mode re-raises them in the agent's process).
- A run whose objects cannot be pickled (a user's environment object), or whose pickle names
  something only the parent's ``__main__`` has, is emitted in the agent's process instead (the
  thread path); nothing is lost.
- The agent's threads never wait on the pipe: a pickled run is written as far as the pipe takes it
  at once, and the rest is queued for a sender thread. The queue is bounded; while it is full (a
  child that is stopped or cannot keep up) runs take the thread path, so the agent never waits on
  the child.
- The child runs at the lowest CPU priority (nice 19), in the agent's session but its own process
  group: it works on CPU time the agent does not want, and a Ctrl-C to the agent's terminal does not
  reach it.
- A child that cannot start (it cannot import a setting, exits, or does not answer) is a warning
  and ``stats.offload_start_failures``, not a failed run: the runs took the thread path.
- A child that dies (the OOM killer, an operator's ``kill``) loses no run it was sent: the agent's
  process keeps each run it sent until a flush answer says the child wrote it (a flush of its own,
  asked for every :attr:`ProcessOffload.max_kept_runs` runs, without waiting), and records the kept
  runs on its own threads once the child is gone (``stats.runs_recovered``; a run the child had
  already written is stored twice under one id, which every read drops). Only runs past
  ``max_kept_bytes`` of kept runs can be lost; the failure then says how many.
- The child ends with its parent: it reads to the end of the pipe (the runs sent before the parent
  died are still written, SIGKILL included; the pipe is enlarged to :data:`PIPE_BYTES` so that a burst
  fits in it) and exits; a parent-death signal and a watchdog (:mod:`ee_middleware._lifetime`) end it
  once it has made no progress for :data:`ORPHAN_GRACE_S`. ``close()`` and exit stop it.
- Only the process that started the child talks to it. A process forked from it later (gunicorn
  ``--preload`` workers, ``multiprocessing``'s fork start method, ``os.fork``) closes its copies of
  the pipe ends at the fork and records its runs on its own threads: it never writes to the pipe,
  reads the parent's flush answers, or stops the parent's child at its exit.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import operator
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ee_middleware.capture.callbacks import RunRecord
from ee_middleware.capture.processor import CaptureStats
from ee_middleware.errors import CaptureError

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from ee_middleware.capture.config import CaptureConfig
    from ee_middleware.capture.direct_spans import DirectTracer
    from ee_middleware.capture.payloads import PayloadEncoder
    from ee_middleware.capture.processor import ExperienceSpanProcessor
    from ee_middleware.capture.redaction import Redactor
    from ee_middleware.capture.store_redaction import StoreRedaction
    from ee_middleware.capture.vault import Vault
    from ee_middleware.store.protocol import ExperienceStore

logger = logging.getLogger("ee_middleware.capture")

MODES = ("thread", "process", "auto")
STORE_RULES_CHECK_S = 5.0
"""How often (seconds, at most) a recorder reads its store's ``redaction.json`` again while it records
(:meth:`CaptureRedaction.refresh`): rules another writer added since it started then reach its runs."""
SPAN_PROCESSOR_ENV = "EE_CAPTURE_OFFLOAD_SPAN_PROCESSOR"
"""``package.module:factory`` of a span processor for the child's spans (tests read them with it): the child then makes
them through the OpenTelemetry SDK, on a provider of its own, instead of directly."""
ORPHAN_GRACE_S = 30.0
"""Once its parent is gone, the capture process exits after this long without taking a message from its pipe (a store
write that hangs); while it makes progress it writes the pipe to the end, however slowly it gets CPU at nice 19."""
PIPE_BYTES = 1 << 20
"""The size asked for the pipe to the capture process (Linux's ``pipe-max-size``, 1 MiB by default, where that is
lower; 64 KiB where the system refuses). What is in the pipe outlives the agent's process: the child reads it to the end
after its parent died, SIGKILL included, while runs still queued in the agent's process (the pipe was full: the child,
at nice 19 on a busy machine, reads slowly) end with it. At 64 KiB, a burst of about 17 runs of a small agent filled it."""
_PICKLE_PROTOCOL = 5
_ANSWER_MARGIN_S = 0.5
"""Of a flush's time, what is kept for the child's answer (at most a tenth): the child writes within the rest."""


def _service_attributes(config: CaptureConfig) -> dict[str, Any]:
    attrs = {"service.name": config.app}
    if config.app_version:
        attrs["service.version"] = config.app_version
    return attrs


def direct_tracer(config: CaptureConfig, processor: ExperienceSpanProcessor) -> DirectTracer:
    """The tracer of a recorder without the user's own tracer provider: its spans reach only ``processor``, made as plain
    data (:mod:`ee_middleware.capture.direct_spans`); the global provider is never replaced."""
    from ee_middleware.capture.direct_spans import DirectTracer, resource_attributes

    return DirectTracer(processor, resource_attributes(_service_attributes(config)))


def private_provider(config: CaptureConfig) -> TracerProvider:
    """An SDK tracer provider of the recorder's own, where a test's span processor (:data:`SPAN_PROCESSOR_ENV`) must see
    the capture process's spans as SDK spans. Every span is sampled (the spans are capture's records, whatever
    ``OTEL_TRACES_SAMPLER`` says for the user's exporters)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    # Not shut down at exit by the SDK: its exit hook ran before the recorder's (``_flush_at_exit``), which ends the runs
    # still being finished, so the processor was closed by then and those runs were lost. The recorder closes it.
    return TracerProvider(resource=Resource.create(_service_attributes(config)), sampler=ALWAYS_ON, shutdown_on_exit=False)


def redaction_settings(config: CaptureConfig, vault: Vault | os.PathLike[str] | str | None) -> StoreRedaction:
    """The redaction settings a recorder of ``config`` keeps with its store (``redaction.json``), in the agent's process and
    in the capture process (``vault``: the vault, or its path)."""
    from ee_middleware.capture.store_redaction import StoreRedaction, function_name

    fn = config.redact_fn
    path = getattr(vault, "path", vault)
    return StoreRedaction(
        rules=config.redaction_rules(),
        pseudonyms=config.redaction_pseudonyms,
        vault=os.fspath(path) if path is not None else None,
        custom_function=function_name(fn) if fn is not None else None,
    )


_MAIN_MODULES = ("__main__", "__mp_main__")
"""The names a script's own module has (``__mp_main__``: the script as a ``multiprocessing`` spawn child imports it)."""


def redact_fn_problem(fn: Callable[..., Any]) -> str | None:
    """Why ``fn``, a recorder's own ``redact_fn``, cannot be recorded in the store's ``redaction.json`` (``None`` when
    it can): its name there (``module.qualname``, :func:`~ee_middleware.capture.store_redaction.function_name`) must
    import back to this very function in another process, since replay, dataset builds, exports, ingest and every other
    recorder of the store import it by that name and apply it. A lambda, a function defined inside another one, a
    function of the script run as ``__main__`` (a notebook's too), a ``functools.partial`` or a callable object cannot be:
    once its name is recorded, every other recorder of the store would refuse to start."""
    from ee_middleware.capture.store_redaction import function_name

    name = function_name(fn)
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return f"{name} ({type(fn).__name__}) has no 'module.function' name another process could import it by"
    if "<lambda>" in qualname:
        return f"{name} is a lambda, which has no name to import it by"
    if "<locals>" in qualname:
        return f"{name} is defined inside another function, which cannot be imported"
    if module in _MAIN_MODULES:
        spec = getattr(sys.modules.get(module), "__spec__", None)  # python -m package.module: the script has a module name
        also = f"; import it from {spec.name} instead (from {spec.name} import {qualname})" if getattr(spec, "name", None) else ""
        return (
            f"{name} is defined in the script run as __main__ (or a notebook): replay, dataset builds, exports and other "
            f"recorders run in processes of their own, whose __main__ is their own program, so they cannot import it{also}"
        )
    import importlib

    try:
        target: Any = importlib.import_module(module)
        for attr in qualname.split("."):
            target = getattr(target, attr)
    except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, the module's own error: all mean the same here
        return f"{name} does not import back ({type(exc).__name__}: {exc})"
    if target is not fn and target != fn:  # (a bound method compares equal to the same method bound again)
        return f"{name} imports another object than this redact_fn (a method of an object, or a name reused in its module)"
    return None


def refuse_unimportable_redact_fn(fn: Callable[..., Any] | None) -> None:
    """Raise :class:`~ee_middleware.errors.ConfigError` for a recorder's own ``redact_fn`` that cannot be recorded in the
    store (:func:`redact_fn_problem`), saying what to do; called before the recorder makes or writes anything."""
    from ee_middleware.errors import ConfigError

    why = redact_fn_problem(fn) if fn is not None else None
    if why is None:
        if fn is not None:
            from ee_middleware.capture.store_redaction import function_name, trust_redact_fn

            trust_redact_fn(function_name(fn))  # given the function itself: the store naming it names this one
        return
    short = getattr(fn, "__name__", None) or "my_scrubber"
    short = short if short.isidentifier() else "my_scrubber"
    raise ConfigError(
        f"redact_fn cannot be used: {why}. The store keeps a redact_fn by its 'module.function' name (redaction.json's "
        "custom_function), and replay, dataset builds, exports, ingest and every other recorder of the store import it by "
        "that name and apply it, so one they cannot import would stop all of them. Define it at module level in an "
        f"importable module (your app's package, e.g. myapp/privacy.py: def {short}(text: str) -> str: ...) and pass that: "
        f"from myapp.privacy import {short}; record_experience(..., redact_fn={short})."
    )


def recorded_function_fix(store: Any, settings: StoreRedaction, own: Callable[..., Any] | None) -> str:
    """What to add to the :class:`~ee_middleware.errors.ConfigError` of
    :func:`~ee_middleware.capture.store_redaction.capture_custom_function` for ``settings`` (a ``redact_fn`` the store
    recorded that this process cannot import): how to recover where it cannot be made importable (a lambda or a
    ``__main__`` function another writer recorded), naming the file and the key to edit."""
    from ee_middleware.capture.store_redaction import REDACTION_FILE, function_name, load_custom_function
    from ee_middleware.errors import ConfigError
    from ee_middleware.store.metadata import meta_where

    mine = function_name(own) if own is not None else None
    missing = []
    for name in settings.custom_functions:
        if name == mine:
            continue
        try:
            load_custom_function(name)
        except ConfigError:
            missing.append(name)
    never = [name for name in missing if "<" in name or name.split(".", 1)[0] in _MAIN_MODULES]
    names = " and ".join(f'"{name}"' for name in missing) or "the name"
    if never:
        first = (
            f"{' and '.join(never)} can never be imported, here or by any other process (a lambda, a function defined "
            "inside another or in a script run as __main__; a recorder no longer accepts such a redact_fn, an older "
            "ee-middleware did), so the fixes above do not apply to it. To recover, edit"
        )
    else:
        first = "If it cannot be made importable here, recover as follows: edit"
    return (
        f'{first} {meta_where(store, REDACTION_FILE)}: remove {names} from its "custom_function" list, or replace it '
        "with the 'module.function' name of an importable function that does the same. The runs already stored with it "
        "were redacted by it at capture and stay so; once it is removed, the store's recorders, replay, datasets and "
        "exports no longer apply it to what they write."
    )


def capture_function(store: Any, settings: StoreRedaction, own: Callable[[str], str] | None) -> Callable[[str], str] | None:
    """:func:`~ee_middleware.capture.store_redaction.capture_custom_function` of ``settings``, whose
    :class:`~ee_middleware.errors.ConfigError` for a recorded ``redact_fn`` this process cannot import also says how to
    recover (:func:`recorded_function_fix`)."""
    from ee_middleware.capture.store_redaction import UntrustedRedactFnError, capture_custom_function
    from ee_middleware.errors import ConfigError

    try:
        return capture_custom_function(settings, own)
    except UntrustedRedactFnError:
        raise  # (it says what to do)
    except ConfigError as exc:
        raise ConfigError(f"{exc} {recorded_function_fix(store, settings, own)}") from None


class CaptureRedaction:
    """The redaction a recorder applies at capture, in the agent's process and in the capture process: its own settings
    united with the ones its store recorded (``redaction.json``: every kind, pattern, key name and ``redact_fn`` any
    writer of the store used; :func:`~ee_middleware.capture.store_redaction.settings_in_force`), as read when the
    recorder started and again every :data:`STORE_RULES_CHECK_S` seconds (:meth:`refresh`).

    ``custom`` is the ``redact_fn`` to apply (:func:`~ee_middleware.capture.store_redaction.capture_custom_function` of
    ``settings``), made by the caller before anything is written, so that one it cannot import stops the recorder there.
    """

    def __init__(
        self,
        store: Any,
        config: CaptureConfig,
        settings: StoreRedaction,
        *,
        custom: Callable[[str], str] | None,
        salt: bytes | None,
        vault: Vault | None,
        check_s: float | None = None,
    ) -> None:
        self.store = store
        self.own_fn = config.redact_fn
        self.pseudonyms = config.redaction_pseudonyms
        self.settings = settings
        """What is applied: the recorder's settings and the store's, as last read."""
        self.salt = salt
        self.vault = vault
        self.redactor = self._redactor(custom)
        self.check_s = STORE_RULES_CHECK_S if check_s is None else check_s
        """How often the store's settings are read again (:data:`STORE_RULES_CHECK_S`; the capture process gets its
        recorder's)."""
        self._next_check = time.monotonic() + self.check_s

    def _redactor(self, custom: Callable[[str], str] | None) -> Redactor:
        from ee_middleware.capture.redaction import Redactor

        on_replace = self.vault.add if self.vault is not None else None
        return Redactor(self.settings.rules, salt=self.salt, custom=custom, on_replace=on_replace)

    def claim(self) -> bool:
        """Whether the store's settings are due to be read again (:meth:`refresh`); the next time is then set, so that
        of threads asking at once, one (or a few) go on to read them."""
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_s
        return True

    def refresh(self) -> bool:
        """Read the store's ``redaction.json`` again: where another writer widened it since (a kind, a pattern, a key name,
        a ``redact_fn``), :attr:`settings` and :attr:`redactor` take it in and True is returned.

        A ``redact_fn`` recorded since that cannot be imported here cannot be applied: the redactor then fails every run
        with the :class:`~ee_middleware.errors.ConfigError` that names it (each run is counted in ``stats.runs_failed``,
        not stored in plain text; logged once here). Never raises: a file that cannot be read leaves the rules as they
        were (a warning)."""
        from ee_middleware.capture.store_redaction import has_rules, same_redaction, settings_in_force
        from ee_middleware.errors import ConfigError

        self._next_check = time.monotonic() + self.check_s
        try:
            wider = settings_in_force(self.store, self.settings)
        except Exception as exc:  # noqa: BLE001 - capture goes on with the rules it has
            logger.warning("ee-middleware: cannot read the store's redaction settings again (%s); capture keeps the rules it has.", exc)
            return False
        if same_redaction(wider, self.settings):
            return False
        try:
            custom = capture_function(self.store, wider, self.own_fn)
        except ConfigError as exc:
            logger.error("ee-middleware: %s Until then this recorder's runs are not stored.", exc)
            custom = functools.partial(_cannot_apply, str(exc))
        salt = self.salt
        if salt is None and self.pseudonyms and has_rules(wider.rules):
            from ee_middleware.capture.redaction import store_salt

            try:
                salt = store_salt(self.store)
            except OSError:
                salt = None
            except ConfigError as exc:  # a damaged or missing redaction.key: the rules stay as they were until it is fixed
                logger.error("ee-middleware: %s Capture keeps the redaction rules it has.", exc)
                return False
        settings, self.settings, self.salt = self.settings, wider, salt
        try:
            redactor = self._redactor(custom)
        except Exception as exc:  # noqa: BLE001 - a pattern another writer recorded that does not compile here
            logger.warning("ee-middleware: cannot apply the store's widened redaction settings (%s); capture keeps the rules it has.", exc)
            self.settings = settings
            return False
        self.redactor = redactor
        logger.info("ee-middleware: another writer widened the store's redaction settings; this recorder applies them now.")
        return True


def use_redaction(recorder: Any, redaction: CaptureRedaction) -> None:
    """Have ``recorder`` (a :class:`~ee_middleware.capture.recorder.Recorder` or the capture process's worker) redact the
    next runs' payloads and failure messages with ``redaction``'s redactor (after :meth:`CaptureRedaction.refresh`), and
    write its settings into a store folder made again."""
    from ee_middleware.capture.payloads import PayloadEncoder

    redactor = redaction.redactor
    recorder.encoder = PayloadEncoder(redactor, recorder.config.max_observation_chars)
    recorder.processor.redact_message = redactor.redact_text
    keep_redaction_when_restored(recorder.store, redaction.settings, redaction.salt)


def _cannot_apply(message: str, text: str) -> str:
    """The ``redact_fn`` of a recorder that cannot import one the store recorded since it started: fails every run."""
    from ee_middleware.errors import ConfigError

    raise ConfigError(message)


def keep_redaction_when_restored(store: Any, settings: StoreRedaction, salt: bytes | None) -> None:
    """Have ``store`` (one that can: :meth:`~ee_middleware.store.local.LocalExperienceStore.add_restore_hook`) write
    ``settings`` (``redaction.json``) and ``salt`` (``redaction.key``) again when its folder is removed while it is written
    to and made again, before the batch counts as written: otherwise replay, datasets and exports would read the default
    rules and make another salt, writing the app's own patterns in plain text and other pseudonyms."""
    add = getattr(store, "add_restore_hook", None)
    if not callable(add):
        return
    key = ("ee-redaction", json.dumps(settings.to_dict(), sort_keys=True), salt)
    add(key, functools.partial(_restore_redaction, weakref.ref(store), settings, salt))


def _restore_redaction(store_ref: weakref.ref[Any], settings: StoreRedaction, salt: bytes | None) -> None:
    """Write ``settings`` and ``salt`` into a store folder made again (:func:`keep_redaction_when_restored`); raises when
    they cannot be written (the batch then fails)."""
    from ee_middleware.capture.redaction import SALT_FILE, store_salt
    from ee_middleware.capture.store_redaction import record_store_redaction
    from ee_middleware.store.metadata import write_meta

    store = store_ref()
    if store is None:
        return
    record_store_redaction(store, settings)
    if salt is not None and not write_meta(store, SALT_FILE, (salt.hex() + "\n").encode(), exclusive=True) and store_salt(store) != salt:
        logger.warning(
            "ee-middleware: the store %r was made again with another recorder's pseudonym salt; this recorder's runs use its own.",
            store,
        )


def recording_parts(
    config: CaptureConfig,
    store: ExperienceStore,
    *,
    recorder_id: str,
    strict: bool,
    approve_if: Any,
    redactor: Redactor,
) -> tuple[PayloadEncoder, ExperienceSpanProcessor]:
    """A recorder's payload encoder and span processor, redacting with ``redactor`` (:attr:`CaptureRedaction.redactor`):
    the same in the agent's process (thread mode) and in the capture process."""
    from ee_middleware.capture.assembler import AssemblyOptions
    from ee_middleware.capture.payloads import PayloadEncoder
    from ee_middleware.capture.processor import ExperienceSpanProcessor

    processor = ExperienceSpanProcessor(
        store,
        recorder_id=recorder_id,
        # span payloads are redacted as they are set, so assembly need not redact them again
        options=AssemblyOptions(
            app=config.app,
            redactor=None,
            max_observation_chars=config.max_observation_chars,
            source="record_experience",
            model_calls_required=False,  # every run is stored, also one that called no model
        ),
        approve_if=approve_if,
        strict=strict,
        redact_message=redactor.redact_text,
    )
    return PayloadEncoder(redactor, config.max_observation_chars), processor


def picklable_problem(name: str, value: Any) -> str | None:
    """Why ``value`` (the setting ``name``) cannot be sent to the child, or ``None``."""
    if value is None:
        return None
    module = getattr(value, "__module__", None)
    if module == "__main__":
        return f"{name} ({getattr(value, '__qualname__', value)!r}) is defined in the script run as __main__, which the capture process cannot import"
    try:
        pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - PicklingError, TypeError, AttributeError: all mean the same here
        return f"{name} ({getattr(value, '__qualname__', type(value).__name__)!r}) cannot be pickled ({exc})"
    return None


def child_executable() -> str:
    """The interpreter the child runs: ``multiprocessing``'s (``sys.executable`` unless the app set
    another with ``multiprocessing.set_executable``)."""
    from multiprocessing.spawn import get_executable

    return os.fsdecode(get_executable())


def frozen_problem() -> str | None:
    """Why no child can be started from this program (a frozen executable runs no ``-c``), or ``None``."""
    if getattr(sys, "frozen", False):
        return "runs as a frozen application, whose executable cannot start the capture process"
    return None


def _child_environment() -> dict[str, str]:
    """The agent's environment, with its ``sys.path`` as ``PYTHONPATH``: ee_middleware (and what it
    imports) is found in the child also when the app added its folder to ``sys.path`` at runtime."""
    env = dict(os.environ)
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path if isinstance(p, str)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _frame(data: bytes) -> memoryview:
    """``data`` with the length header :class:`multiprocessing.connection.Connection` reads."""
    n = len(data)
    header = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
    return memoryview(header + data)


_instances: weakref.WeakSet[ProcessOffload] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for offload in list(_instances):
        offload.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ProcessOffload:
    """The agent process's side: starts the child, sends it runs, flushes, stops it.

    The agent's threads never wait on the pipe: :meth:`send` pickles the run, writes what the pipe
    takes at once and queues the rest for a sender thread, so a child that is slow or stopped never
    blocks the agent. The
    queue is bounded (``max_queued_runs``, ``max_queued_bytes``); while it is full, runs are recorded
    on the agent process's threads instead (``stats.runs_not_offloaded``, with a warning).

    Only the process that made it uses it: in a forked process every method acts as if the child
    were gone, without touching the pipe or the child (see :meth:`forget_after_fork`)."""

    max_tool_lists = 64
    """Tool lists numbered at once (the rest are sent again when used again)."""
    max_queued_runs = 2_000
    max_queued_bytes = 64 * 1024 * 1024
    max_kept_runs = 500
    """Runs sent since the child's last answer before a flush of their own is asked for (not waited on)."""
    max_kept_bytes = 32 * 1024 * 1024
    """Pickled bytes of kept runs; the oldest past it are no longer kept (a dying child may lose them)."""

    def __init__(
        self,
        init: dict[str, Any],
        on_error: Callable[[str, BaseException], None],
        *,
        wait_first: bool,
        on_lost: Callable[[list[RunRecord]], None] | None = None,
    ) -> None:
        self._on_error = on_error
        self._on_lost = on_lost  # records the runs a dead child was sent, on the agent process's threads
        self._wait_first = wait_first
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()  # the queue, the tool-list numbers, the state (held briefly)
        self._wake = threading.Condition(self._lock)
        self._read_lock = threading.Lock()  # one reader of the child's answers at a time
        # framed messages (or what is left of one) for the sender, each with the number of the run it holds (None: a flush
        # or close message, or the start-up ones)
        self._queue: deque[tuple[memoryview, int | None]] = deque()
        self._queued_bytes = 0
        self._writing = False  # the sender thread is writing a message taken from the queue
        self._cut: int | None = None  # the run whose message the sender left unfinished when runs were withdrawn
        self._state = "starting"  # starting | ready | failed | closed | forked | withdrawn
        self.stats = CaptureStats()
        self.cpu_s = 0.0  # the child's CPU time, as of its last answer
        self.pid: int | None = None
        self._token = 0
        self._unacked = 0
        self._sent = 0  # runs sent so far (each kept run is numbered by it)
        self._kept: deque[tuple[int, bytes, dict[int, list[Any]]]] = deque()  # (number, pickled run, its numbered tool lists)
        self._kept_bytes = 0
        self._written_upto = 0  # the child said it wrote every run up to this number
        self._lost_unreported = 0  # runs a dead child may not have written, until a flush returns False for them
        self._asked: dict[int, int] = {}  # flush token -> runs sent before it: its answer says they are written
        self._background_token: int | None = None  # a flush asked for by send, not waited on
        self._late_errors: list[str] = []  # failures in answers to flushes that had timed out
        self._tool_numbers: OrderedDict[tuple[int, ...], tuple[tuple[Any, ...], int]] = OrderedDict()  # ids -> (lists, slot)
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        main_thread = threading.current_thread() is threading.main_thread()  # the death signal follows the starting thread
        code = "from ee_middleware.capture.offload import child_main; child_main()"
        self.nice = init["config"].offload_nice if "config" in init else CHILD_NICE
        args = [child_executable(), "-c", code, str(to_child_r), str(from_child_w), str(os.getpid()), "1" if main_thread else "0"]
        args.append(str(self.nice))
        try:  # (the parent's ends are closed if it cannot start)
            # its own process group: a Ctrl-C to the agent's terminal does not cut it off mid-write
            # (the agent's exit stops it). The agent's session, not a new one: Linux's autogroup
            # shares CPU between sessions first, so in a session of its own the child would get an
            # equal share with the agent whatever its priority (see child_main)
            self._process = subprocess.Popen(
                args,
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                close_fds=True,
                process_group=0,
                env=_child_environment(),
            )
        except BaseException:
            os.close(to_child_w)
            os.close(from_child_r)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.pid = self._process.pid
        os.set_blocking(to_child_w, False)  # a write takes what fits in the pipe now, never waits
        _enlarge_pipe(to_child_w)
        self._out_fd = to_child_w
        self._in = Connection(from_child_r, writable=False)
        for start_up in ([p for p in sys.path if isinstance(p, str)], init):
            frame = _frame(pickle.dumps(start_up, protocol=_PICKLE_PROTOCOL))
            self._queue.append((frame, None))
            self._queued_bytes += len(frame)  # (the sender takes each off the count as it writes it)
        self._sender = threading.Thread(target=self._send_loop, name="ee-capture-offload-sender", daemon=True)
        self._sender.start()
        _instances.add(self)

    def forget_after_fork(self) -> None:
        """In a process forked from the one that started the child: close this process's copies of
        the pipe ends (the child then still sees the end of the pipe when its parent closes it) and
        never send, flush or stop anything; runs take the thread path here."""
        self._lock = threading.Lock()  # they may have been held by a thread that does not exist here
        self._wake = threading.Condition(self._lock)
        self._read_lock = threading.Lock()
        self._state = "forked"
        self._owner_pid = os.getpid()
        self._queue.clear()
        self._close_out()
        try:
            self._in.close()
        except OSError:
            pass

    def _close_out(self) -> None:
        fd, self._out_fd = self._out_fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _forked(self) -> bool:
        """Whether this is a process forked from the owner (where the fork hook did not run)."""
        if self._owner_pid != os.getpid():
            self.forget_after_fork()
        return self._state == "forked"

    def __repr__(self) -> str:
        return f"ProcessOffload(pid={self.pid}, state={self._state})"

    @property
    def alive(self) -> bool:
        return self._state in ("starting", "ready")

    def ready(self) -> bool:
        """Whether runs go to the child now: the first call waits for it to start when built with
        ``wait_first`` (explicit ``offload="process"``); otherwise runs take the thread path until it has."""
        if self._state == "ready" and not self._forked():
            return True
        if self._state != "starting" or self._forked():
            return False
        with self._read_lock:
            if self._state == "starting":
                timeout = 60.0 if self._wait_first else 0.0
                if self._in.poll(timeout):
                    self._read_hello()
                elif self._wait_first:
                    self._fail("the capture process did not start within 60 s", TimeoutError("capture process start-up"))
            return self._state == "ready"

    def _read_hello(self) -> None:
        try:
            kind, detail = pickle.loads(self._in.recv_bytes())
        except (EOFError, OSError) as exc:
            self._fail(f"the capture process exited while starting (exit code {self._process.poll()})", exc)
            return
        if kind == "ready":
            with self._lock:
                if self._state == "starting":
                    self._state = "ready"
        else:
            self._fail(f"the capture process could not start: {detail}", RuntimeError(detail))

    def send(self, record: RunRecord) -> bool:
        """Hand a finished run to the child; ``False`` when it must be emitted here instead (then
        ``record`` is unchanged). Never waits for the child: the bytes are queued for the sender."""
        if self._forked():
            return False
        with self._lock:
            if self._state != "ready":
                return False
            if len(self._queue) >= self.max_queued_runs or self._queued_bytes >= self.max_queued_bytes:
                self._note_fallback(
                    f"the capture process is not taking runs ({len(self._queue)} runs, {self._queued_bytes} bytes queued for it; "
                    "later runs go to it again once it reads them)"
                )
                return False
            sent_tools = self._number_tool_lists(record)
            try:
                data = pickle.dumps(record, protocol=_PICKLE_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - whatever the objects raise: the thread path takes the run
                data, why = None, f"its objects cannot be pickled ({type(exc).__name__})"
            else:
                why = "it holds objects of classes defined in the script run as __main__"
            if data is None or b"__main__" in data:  # __main__: a class of the parent's script, which the child cannot import
                self._unnumber_tool_lists(record, sent_tools)
                self._note_fallback(why)
                return False
            self._enqueue(data, self._sent + 1)  # (the number _keep gives it)
            self._unacked += 1
            self._keep(data, sent_tools)
            ask = self._background_token is None and (
                len(self._kept) >= self.max_kept_runs or self._kept_bytes >= self.max_kept_bytes // 2
            )  # (by bytes too: large runs fill max_kept_bytes before max_kept_runs)
            if ask:
                self._background_token = self._ask_flush(30.0)
            waiting = self._background_token is not None
        if waiting and not ask:
            self._read_answers_now()
        return True

    def _keep(self, data: bytes, sent_tools: list[tuple[dict[str, Any], list[Any], Any]]) -> None:
        """(With ``_lock`` held.) Keep a sent run (as sent: what the agent changes in its objects later does not
        change it) until the child says it wrote it."""
        self._sent += 1
        slots = {params["tools"]: tool_list for params, tool_list, change in sent_tools if change is None}
        self._kept.append((self._sent, data, slots))
        self._kept_bytes += len(data)
        while self._kept_bytes > self.max_kept_bytes and len(self._kept) > 1:
            self._kept_bytes -= len(self._kept.popleft()[1])

    def _not_kept(self) -> int:
        """(With ``_lock`` held.) Runs sent that are neither kept nor said written by the child."""
        first_kept = self._kept[0][0] if self._kept else self._sent + 1
        return first_kept - 1 - self._written_upto

    def _ask_flush(self, timeout: float, kind: str = "flush") -> int:
        """(With ``_lock`` held.) Send a flush marker; its answer will say every run sent before it is written."""
        self._token += 1
        self._asked[self._token] = self._sent
        self._enqueue(pickle.dumps((kind, self._token, timeout), protocol=_PICKLE_PROTOCOL))
        return self._token

    def _read_answers_now(self) -> None:
        """Take the child's answers that are there, without waiting (a flush asked for by :meth:`send`)."""
        if not self._read_lock.acquire(blocking=False):
            return  # a flush is reading them
        try:
            while self._state == "ready" and self._in.poll(0):
                self._take_answer()
        except (OSError, EOFError) as exc:
            self._fail(f"the capture process is gone ({self._exit_description()})", exc)
        finally:
            self._read_lock.release()

    def _take_answer(self) -> tuple[int, bool]:
        """(With ``_read_lock`` held.) Read one answer of the child: its counters, its failures, and which kept runs
        it has written; returns its token and whether its flush finished."""
        _, got, done, stats, cpu_s, error = pickle.loads(self._in.recv_bytes())
        child = CaptureStats(**stats)
        with self._lock:  # (send counts runs_not_offloaded under it)
            child.runs_not_offloaded, child.offload_start_failures = self.stats.runs_not_offloaded, self.stats.offload_start_failures
            child.runs_recovered = self.stats.runs_recovered
            self.stats = child
            written = self._asked.pop(got, None)
            if done and written is not None:  # (a flush that timed out in the child wrote not all of them)
                self._written_upto = max(self._written_upto, written)
                while self._kept and self._kept[0][0] <= written:
                    self._kept_bytes -= len(self._kept.popleft()[1])
            if got == self._background_token:
                self._background_token = None
        self.cpu_s = cpu_s
        if error is not None:
            self._late_errors.append(error)
        return got, done

    def _exit_description(self) -> str:
        try:  # (its pipe is closed: it is exiting, if it has not exited yet)
            code = self._process.wait(1.0)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _enqueue(self, data: bytes, run: int | None = None) -> None:
        """(With ``_lock`` held.) Write the message now as far as the pipe takes it without waiting
        (the agent's thread then makes one ``write`` call and wakes no thread); what does not fit
        is queued for the sender thread, which waits for the child to read. ``run``: the number of the kept run the
        message holds (:meth:`withdraw_unsent` takes it back while it is queued)."""
        frame = _frame(data)
        if not self._queue and not self._writing and self._state == "ready":  # nothing ahead of it: write here
            try:
                written = os.write(self._out_fd, frame)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError:
                written = 0  # the child is gone: the sender's write finds out and says so
            if written == len(frame):
                return
            frame = frame[written:]
        self._queue.append((frame, run))
        self._queued_bytes += len(frame)
        if len(self._queue) == 1:
            self._wake.notify()

    def _send_loop(self) -> None:
        """The sender thread: writes the queued messages to the pipe, in order, waiting for room."""
        poller = select.poll()
        poller.register(self._out_fd, select.POLLOUT)
        while True:
            with self._lock:
                while not self._queue and self._state in ("starting", "ready"):
                    self._wake.wait()
                if not self._queue or self._state not in ("starting", "ready", "closed"):
                    return
                frame, run = self._queue.popleft()
                self._queued_bytes -= len(frame)
                self._writing = True
            try:
                while frame:
                    if self._state not in ("starting", "ready", "closed"):
                        self._cut = run  # (withdrawn: this message never reached the child whole)
                        return  # failed: the child is being stopped; or its runs are withdrawn
                    if not poller.poll(200):
                        continue  # no room yet (the child is busy, or stopped)
                    try:
                        frame = frame[os.write(self._out_fd, frame) :]
                    except (BlockingIOError, InterruptedError):
                        continue
            except OSError as exc:
                if self._state in ("starting", "ready"):
                    self._fail(f"the capture process is gone ({self._exit_description()})", exc)
                return
            finally:
                with self._lock:
                    self._writing = False
                    self._wake.notify_all()

    def _number_tool_lists(self, record: RunRecord) -> list[tuple[dict[str, Any], list[Any], Any]]:
        """Replace each chat call's tool list (a model bound to tools passes the same schema objects
        on every call) by its number; the first use of a list sends it along. Returns what to undo
        if the record is not sent.

        Numbers are slots 1..``max_tool_lists``: a new list takes a free slot or the least recently
        used one, and is sent with the record, where the child puts it in that slot; both tables
        stay that small (a model bound anew at every turn makes new lists every time)."""
        new: dict[int, list[Any]] = {}
        undo: list[tuple[dict[str, Any], list[Any], Any]] = []
        table = self._tool_numbers
        for _, _, _, data, _, _ in record.calls:
            params = data[1] if len(data) == 3 and isinstance(data[1], dict) else None
            tools = params.get("tools") if params is not None else None
            if not isinstance(tools, list) or not tools:
                continue
            key = tuple(map(id, tools))
            known = table.get(key)
            if known is not None and all(map(operator.is_, known[0], tools)):  # (as many: the key has one id each)
                table.move_to_end(key)
            else:
                if known is not None:  # the same ids, other objects (the old ones were freed): its slot is reused
                    evicted: tuple[Any, Any] | None = (key, table.pop(key))
                    slot = known[1]
                elif len(table) < self.max_tool_lists:
                    evicted, slot = None, len(table) + 1
                else:
                    oldest = next(iter(table))
                    if table[oldest][1] in new:  # (more new lists in one run than slots: this one goes as it is)
                        continue
                    evicted = (oldest, table.pop(oldest))
                    slot = evicted[1][1]
                known = (tuple(tools), slot)  # the tuple keeps the ids from being reused while the slot holds them
                table[key] = known
                new[slot] = tools
                undo.append(({}, [], (key, evicted)))
            undo.append((params, tools, None))
            params["tools"] = known[1]
        record.tool_lists = new or None
        return undo

    def _unnumber_tool_lists(self, record: RunRecord, undo: list[tuple[dict[str, Any], list[Any], Any]]) -> None:
        """Undo :meth:`_number_tool_lists` for a record that is not sent (the child never saw it)."""
        for params, tools, change in reversed(undo):
            if change is None:
                params["tools"] = tools
                continue
            key, evicted = change
            del self._tool_numbers[key]
            if evicted is not None:
                self._tool_numbers[evicted[0]] = evicted[1]
                self._tool_numbers.move_to_end(evicted[0], last=False)
        record.tool_lists = None

    _fallback_noted: frozenset[str] = frozenset()

    def _note_fallback(self, why: str) -> None:
        """(With ``_lock`` held.) Count a run recorded in this process; warn once per kind of cause."""
        self.stats.runs_not_offloaded += 1
        kind = why.split(" (")[0]
        if kind not in self._fallback_noted:
            self._fallback_noted = self._fallback_noted | {kind}
            logger.warning("ee-middleware: a run is recorded in the agent's process instead of the capture process: %s.", why)

    def flush(self, timeout: float = 30.0) -> tuple[bool, str | None]:
        """Wait until the child has written everything sent so far: (done in time, the failures it
        reported since the last flush, as one message or ``None``). Returns within ``timeout``: the child is given a
        little less for its write, so that its answer can come in time (a late answer is read by the next flush)."""
        if self._forked():
            return True, None
        deadline = time.monotonic() + timeout
        if not self._read_lock.acquire(timeout=max(0.0, timeout)):  # another flush, or the first run waiting for the child
            return False, None
        try:
            if self._state == "starting" and self._in.poll(0):
                self._read_hello()
            with self._lock:
                if self._state != "ready":  # not started yet, nothing was sent to it; or gone (said so)
                    lost, self._lost_unreported = self._lost_unreported, 0
                    return not lost, None  # (a child that died since the last flush may have lost runs: said once)
                remaining = max(0.0, deadline - time.monotonic())
                token = self._ask_flush(remaining - min(_ANSWER_MARGIN_S, remaining / 10))
            try:
                return self._await(token, deadline)
            except (OSError, EOFError) as exc:
                self._fail(f"the capture process is gone ({self._exit_description()})", exc)
                with self._lock:
                    lost, self._lost_unreported = self._lost_unreported, 0
                return not lost, None
        finally:
            self._read_lock.release()

    def withdraw_unsent(self, timeout: float) -> int:
        """This process is ending (SIGTERM): wait at most ``timeout`` for every queued message to reach the pipe, then take
        back the runs that did not, and record them on this process's threads (``on_lost``); returns how many.

        The child outlives this process to write what it read and what the pipe holds, but what is still queued here
        (the pipe was full: a child that gets little CPU on a busy machine, at its nice 19, reads slowly) ends with this
        process. Those runs, and one whose message the sender had written only part of (the child cannot read it), are
        recorded here instead, as the runs of a child that died are; nothing is sent to the child after that (its runs
        take the thread path), and the pipe is closed, so that the child writes what it has and exits."""
        if self._forked():
            return 0
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._state != "ready":
                return 0
            while (self._queue or self._writing) and (remaining := deadline - time.monotonic()) > 0:
                self._wake.wait(remaining)
            if not (self._queue or self._writing):
                return 0  # all in the pipe: the child writes it, after this process too
            self._state = "withdrawn"
            self._wake.notify_all()
        self._sender.join(1.0)  # it sees the state at its next look (every 0.2 s while it waits for room), and stops
        with self._lock:
            unsent = {run for _, run in self._queue if run is not None}
            if self._cut is not None:
                unsent.add(self._cut)
            self._queue.clear()
            self._queued_bytes = 0
            taken = [(data, slots) for number, data, slots in self._kept if number in unsent]
            self._kept = deque(kept for kept in self._kept if kept[0] not in unsent)
            self._kept_bytes = sum(len(kept[1]) for kept in self._kept)
            self._unacked = max(0, self._unacked - len(taken))
        if not self._sender.is_alive():
            self._close_out()  # (a sender still writing keeps the pipe: the process's end closes it)
        missing = len(unsent) - len(taken)  # no longer kept (past max_kept_bytes): lost with this process
        logger.warning(
            "ee-middleware: the capture process had not taken the last %s sent to it when this process was told to stop "
            "(on a busy machine it gets little CPU: it runs at nice %d); %s recorded by this process instead%s.",
            _runs(len(unsent)),
            self.nice,
            "they are" if len(unsent) != 1 else "it is",
            f", but {_runs(missing)} of them could not be (no longer kept) and are lost" if missing else "",
        )
        if taken and self._on_lost is not None:
            self.stats.runs_recovered += len(taken)
            self._on_lost([_restored(data, slots) for data, slots in taken])
        return len(taken)

    def _await(self, token: int, deadline: float) -> tuple[bool, str | None]:
        """(With ``_read_lock`` held.) Read answers until ``token``'s; an answer to an earlier flush
        that had timed out is skipped, but its failures are kept for this one."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._in.poll(remaining):
                return False, None
            got, done = self._take_answer()
            if got == token:
                with self._lock:
                    self._unacked = 0
                errors, self._late_errors = self._late_errors, []
                return done, "; ".join(errors) if errors else None

    def _fail(self, message: str, exc: BaseException) -> int:
        """The child is unusable: record the runs it was sent on the agent process's threads, say so (with what may be
        lost) and send nothing more. Returns how many runs may be lost."""
        with self._lock:
            if self._state not in ("starting", "ready"):
                return 0  # said already, or closing
            starting = self._state == "starting"  # no run was sent to it: all took the thread path
            kept = [(data, slots) for _, data, slots in self._kept] if self._on_lost is not None else []
            lost = self._not_kept() if kept else self._unacked
            self._lost_unreported += lost
            self._state = "failed"
            self._unacked = self._kept_bytes = 0
            self._kept.clear()
            self._asked.clear()
            self._queue.clear()
            self._queued_bytes = 0
            self._wake.notify_all()
        if kept:
            self.stats.runs_recovered += len(kept)
            message += f"; the {_runs(len(kept))} it was sent and had not said it wrote are recorded in the agent's process"
            assert self._on_lost is not None
            self._on_lost([_restored(data, slots) for data, slots in kept])
        if lost:
            message += f"; {_runs(lost)} sent to it before those may not be written"
        if starting:  # not a run's failure: a warning and its own counter, strict mode raises nothing
            self.stats.offload_start_failures += 1
            logger.warning("ee-middleware: %s; capture's work stays on the agent process's threads.", message)
        elif lost:
            message += "; later runs are recorded in the agent's process"
            failure = CaptureError(message)  # what strict mode raises says this, not only 'Broken pipe'
            failure.__cause__ = exc
            self._on_error(message, failure)
        else:  # nothing is lost: not a run's failure (strict mode raises nothing), but said
            logger.warning("ee-middleware: %s; later runs are recorded in the agent's process.", message)
        self._stop(kill=True)
        return lost

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the child (killed if it has not exited within ``timeout``)."""
        if self._forked():
            return  # the parent's child: only the parent stops it
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._state == "ready":
                self._token += 1
                self._enqueue(pickle.dumps(("close", self._token, timeout), protocol=_PICKLE_PROTOCOL))
            if self._state in ("starting", "ready"):
                self._state = "closed"
            self._wake.notify_all()
            # the sender writes what is queued (the close message last); a stalled child is killed
            while (self._queue or self._writing) and (remaining := deadline - time.monotonic()) > 0:
                self._wake.wait(remaining)
            stalled = bool(self._queue or self._writing)
        if stalled:
            logger.warning("ee-middleware: the capture process did not take its last runs within %.0f s; stopping it.", timeout)
        self._stop(kill=stalled, timeout=max(0.1, deadline - time.monotonic()))

    def _stop(self, *, kill: bool, timeout: float = 5.0) -> None:
        if kill:
            self._process.kill()
        with self._lock:
            self._wake.notify_all()
        if self._sender is not threading.current_thread():
            self._sender.join(5.0)  # it ends once nothing is queued, or the child is gone (it looks every 0.2 s)
        if not self._sender.is_alive() or self._sender is threading.current_thread():
            self._close_out()  # the end of the pipe: the child writes what it read and exits
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            if not kill:  # (one killed above was said already)
                logger.warning(
                    "ee-middleware: the capture process had not written every run it was sent within %.0f s; stopping it "
                    "(those runs are lost). Call flush() on the recorded agent before the program ends, with a timeout "
                    "long enough for its store.",
                    timeout,
                )
        try:
            self._in.close()
        except OSError:
            pass


def _restored(data: bytes, slots: dict[int, list[Any]]) -> RunRecord:
    """A kept run as it was sent, its chat calls holding their tool lists again instead of their numbers."""
    record: RunRecord = pickle.loads(data)
    for _, _, _, call_data, _, _ in record.calls:
        params = call_data[1] if len(call_data) == 3 and isinstance(call_data[1], dict) else None
        if params is not None and type(params.get("tools")) is int:
            params["tools"] = slots[params["tools"]]
    record.tool_lists = None
    return record


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


# --- the child ------------------------------------------------------------------------------------


class _Worker:
    """The child's recorder: what :func:`~ee_middleware.capture.callbacks.emit_run` reads."""

    def __init__(
        self,
        *,
        config: CaptureConfig,
        recorder_id: str,
        strict: bool,
        store: dict[str, Any],
        salt: bytes | None,
        vault: str | None,
        approve_if: Any,
        redaction: StoreRedaction | None = None,
        rules_check_s: float | None = None,
    ) -> None:
        from ee_middleware.capture.redaction import store_salt
        from ee_middleware.capture.store_redaction import has_rules, settings_in_force
        from ee_middleware.capture.vault import Vault
        from ee_middleware.store.local import LocalExperienceStore

        self.config, self.id, self.strict = config, recorder_id, strict
        self.store = LocalExperienceStore(store["root"], fsync=store["fsync"])  # the agent's store: its resolved folder
        self.vault = Vault(vault) if vault is not None else None
        # what the recorder applies (its settings and the store's, as it read them) and what the store has recorded since;
        # a recorded redact_fn this process cannot import stops the child here: the runs take the agent's threads
        settings = settings_in_force(self.store, redaction if redaction is not None else redaction_settings(config, self.vault))
        custom = capture_function(self.store, settings, config.redact_fn)
        if salt is None and config.redaction_pseudonyms and has_rules(settings.rules):  # rules recorded since the recorder read them
            salt = store_salt(self.store)
        self.redaction = CaptureRedaction(self.store, config, settings, custom=custom, salt=salt, vault=self.vault, check_s=rules_check_s)
        self.encoder, self.processor = recording_parts(
            config, self.store, recorder_id=recorder_id, strict=strict, approve_if=approve_if, redactor=self.redaction.redactor
        )
        keep_redaction_when_restored(self.store, settings, salt)  # a store folder made again
        self.tracer: Tracer | DirectTracer
        tap = os.environ.get(SPAN_PROCESSOR_ENV)
        if not tap:
            self.tracer = direct_tracer(config, self.processor)
        else:  # a test reads the spans: SDK spans, on a provider of the child's own
            import importlib

            from ee_middleware._version import __version__

            provider = private_provider(config)
            provider.add_span_processor(self.processor)
            module, _, factory = tap.partition(":")
            provider.add_span_processor(getattr(importlib.import_module(module), factory)())
            self.tracer = provider.get_tracer("ee_middleware", __version__)
        self._tool_lists: dict[int, list[Any]] = {}

    def report_failure(self, message: str, exc: BaseException) -> None:
        self.processor.report_failure(message, exc)

    def emit(self, record: RunRecord) -> None:
        from ee_middleware.capture.callbacks import emit_run

        emitting = False
        try:
            if self.redaction.claim() and self.redaction.refresh():  # another writer widened the store's rules
                self._use_refreshed_redaction()
            if record.tool_lists:
                self._tool_lists.update(record.tool_lists)
            for _, _, _, data, _, _ in record.calls:  # numbered tool lists: the same objects every time, so encoded once
                if len(data) == 3 and isinstance(data[1], dict) and isinstance(data[1].get("tools"), int):
                    data[1]["tools"] = self._tool_lists[data[1]["tools"]]
            emitting = True
            # a call whose span failed is a span's failure: its run is marked, and counted once when it is not stored
            emit_run(self, record, self.processor.report_span_failure)
        except Exception as exc:  # noqa: BLE001 - one run's failure never stops the child
            failure = _without_data(f"could not record a run sent by the agent's process ({len(record.calls)} model calls)", exc)
            # from emit_run: its root's outcome could not be recorded (the root is marked, as the thread path's finisher says)
            (self.processor.report_span_failure if emitting else self.report_failure)(*failure)

    def _use_refreshed_redaction(self) -> None:
        """Redact the next runs (their payloads and failure messages) with :attr:`redaction`'s new redactor, and write its
        settings into a store folder made again."""
        use_redaction(self, self.redaction)

    def flush(self, timeout: float) -> tuple[bool, str | None]:
        error = None
        try:
            done = self.processor.flush_in_time(int(timeout * 1000))
        except Exception as exc:  # noqa: BLE001 - strict mode's CaptureError: sent to the parent, which raises it
            done, error = True, str(exc)
        if self.vault is not None:
            self.vault.flush()
        return done, error

    def close(self) -> None:
        self.flush(30.0)
        self.processor.shutdown()
        if self.vault is not None:
            self.vault.close()


def _without_data(what: str, exc: BaseException) -> tuple[str, BaseException]:
    """A failure on data from the agent's process, told without that data: an exception's message
    may hold the run's text (unpickling errors quote their arguments), which then reached stderr,
    ``stats.errors`` and strict mode's error unredacted. The exception's type names the cause."""
    message = f"{what}: {type(exc).__module__}.{type(exc).__qualname__} (its message is not shown: it may hold the run's data)"
    return message, RuntimeError(message)


def _enlarge_pipe(fd: int) -> None:
    """Ask for a pipe of :data:`PIPE_BYTES` (at most the system's ``pipe-max-size``); where that is refused (not Linux, a
    user past its pipe-pages limit) the pipe keeps its size."""
    try:
        import fcntl

        try:
            with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as limit:
                size = min(PIPE_BYTES, int(limit.read()))
        except (OSError, ValueError):
            size = PIPE_BYTES
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (ImportError, AttributeError, OSError):
        pass


_LAST_READ = [0.0]
"""When (``time.monotonic``) the capture process last took a message from its pipe: :func:`child_main`'s loop sets it."""


def _arm_lifetime(parent_pid: int, death_signal: bool) -> None:
    from ee_middleware._lifetime import die_with_parent

    armed = threading.Lock()

    def orphaned(*_: Any) -> None:
        # The parent is gone: the main loop reads the rest of the pipe and exits; this bounds it, by progress rather than
        # a fixed time: the child exits once it has taken nothing from the pipe for ORPHAN_GRACE_S (a store write that
        # hangs), but a full pipe (1 MiB) it writes slowly, at nice 19 on a busy machine, is written to the end.
        if not armed.acquire(blocking=False):  # (the death signal and the watchdog both tell it)
            return
        orphaned_at = time.monotonic()

        def bound() -> None:
            while True:
                idle = time.monotonic() - max(orphaned_at, _LAST_READ[0])
                if idle >= ORPHAN_GRACE_S:
                    os._exit(3)
                time.sleep(ORPHAN_GRACE_S - idle)

        threading.Thread(target=bound, name="ee-orphan-grace", daemon=True).start()

    signal.signal(signal.SIGTERM, orphaned)
    die_with_parent(parent_pid, orphaned, death_signal=signal.SIGTERM if death_signal else None)


CHILD_NICE = 19
"""The capture process's nice value by default (``CaptureConfig.offload_nice``): the lowest priority, so that it runs on CPU time the agent does
not want (measured: the agent's thread ran 1.138x its plain time with the child at the agent's
priority, 1.123x at nice 19, in interleaved 3 s rounds on 2 cores). It still gets a share when the
machine is saturated, unlike ``SCHED_IDLE``, so a flush or the drain at exit ends."""


def _yield_to_the_agent(nice: int) -> None:
    """Lower this (the capture) process's priority to ``nice`` (never raise it); where that is not allowed, it stays as
    it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    except (AttributeError, OSError):
        pass


CHILD_GC_THRESHOLD = (10_000, 10, 10)
"""The capture process's collector thresholds (Python's default: 700, 10, 10). Each run it records allocates tens of
thousands of short-lived objects (messages, span attributes, pydantic records) and frees nearly all of them by reference
counting; at the default, a young collection ran every few hundred allocations, about one per 2 runs."""


def _out_of_the_collectors_way() -> None:
    """Freeze what the capture process holds once it is ready (modules, the store, the redaction rules: ~125,000 objects
    that live as long as it does) and collect the young generation less often (:data:`CHILD_GC_THRESHOLD`).

    Measured on 1,200 of ``benchmarks/capture_overhead.py``'s runs replayed through the child's recorder in one process
    (``gc.callbacks`` timing each collection): the collector took ~0.2 ms of the child's ~1.3 ms per run (0.15 of it in
    full passes over those long-lived objects), 0.01 ms after this. The child's CPU is what costs the agent most in a
    busy service (its work slows the agent's on the other core), so less of it is the point. What is frozen is held for
    the child's life anyway; only a cycle among those objects that became garbage later would not be freed."""
    gc.freeze()
    gc.set_threshold(*CHILD_GC_THRESHOLD)


_IN_CAPTURE_PROCESS = False


def in_capture_process() -> bool:
    """Whether this is a capture process (:func:`child_main`). Reading its settings imports the app's modules (where
    ``approve_if`` or ``redact_fn`` live), whose import-time code may build a recorder again: one built here never
    starts a capture process of its own (with ``offload="process"`` each child would start the next, without end)."""
    return _IN_CAPTURE_PROCESS


def child_main() -> None:
    """``python -c 'from ee_middleware.capture.offload import child_main; child_main()' IN OUT PPID SIGNAL NICE``."""
    global _IN_CAPTURE_PROCESS
    _IN_CAPTURE_PROCESS = True
    in_fd, out_fd, parent_pid, death_signal, nice = (int(a) for a in sys.argv[1:6])
    _arm_lifetime(parent_pid, bool(death_signal))
    _yield_to_the_agent(nice)
    inbox, outbox = Connection(in_fd, writable=False), Connection(out_fd, readable=False)

    def answer(*message: Any) -> None:
        try:
            outbox.send_bytes(pickle.dumps(message, protocol=_PICKLE_PROTOCOL))
        except OSError:
            pass  # the parent is gone; keep writing what it sent

    try:
        sys.path[:] = pickle.loads(inbox.recv_bytes())
        worker = _Worker(**pickle.loads(inbox.recv_bytes()))
    except EOFError:
        return
    except Exception as exc:  # noqa: BLE001 - told to the parent, which records in-thread instead
        answer("failed", f"{exc!r}")
        return
    _out_of_the_collectors_way()
    answer("ready", os.getpid())
    while True:
        try:
            data = inbox.recv_bytes()
        except (EOFError, OSError):
            break  # the parent closed the pipe or died: everything it sent is read
        _LAST_READ[0] = time.monotonic()
        try:
            message = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - a run the child cannot read is counted, not fatal
            worker.report_failure(*_without_data(f"could not read a run sent by the agent's process ({len(data)} bytes pickled)", exc))
            continue
        if isinstance(message, RunRecord):
            worker.emit(message)
            continue
        kind, token, timeout = message
        done, error = worker.flush(timeout)  # error: strict mode's failure since the last flush
        answer("flushed", token, done, dataclasses.asdict(worker.processor.stats), time.process_time(), error)
        if kind == "close":
            break
    worker.close()
