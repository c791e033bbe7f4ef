"""Where trajectories are replayed: in this process, in local worker processes, or on a Ray cluster.

Every executor takes a :class:`WorkerSpec` (strings and numbers only, so it crosses process and
machine boundaries) and yields one :class:`~ee_middleware.replay.runner.ReplayOutcome` per
trajectory as soon as it is ready, in completion order. Each worker builds its own sandbox and
policy once and reuses them for every trajectory it is given.

Worker processes and Ray actors propose, replay *and write*: given :attr:`WorkerSpec.store`, each
opens its own handle on the store and appends every trajectory's rollouts and record to its own
spool segment (the store's writers never share a file), then sends back only the record. The job
process then only hands out trajectories and counts, so a second worker adds throughput instead of
waiting on one process that writes everything. Until the first worker is ready, the job replays
trajectories itself (and writes them), so the workers' start-up costs no throughput. A worker that cannot open that very store (a Ray
node without the shared folder) sends the rollouts back, and the job writes them as before.

With a served policy (more than one request in flight), every worker asks for its next trajectory's proposals while
it replays the one before, whether it is given a stream (one worker), one trajectory per call (local workers) or
batches (Ray actors): a worker sent trajectories call by call holds its latest until its next call (see
:meth:`_Worker.replay_all`), so the server's request slots stay busy across trajectories.

Local workers are forked from a fork server of the job's own, which imports what a worker needs once
(see :class:`JobForkServer`): a worker starts in milliseconds instead of a fresh interpreter's
~0.4 s of imports each.

Every worker closes its sandbox and policy when it ends, and no worker outlives the job: the fork
server ends with the job's process, and local worker processes die with the fork server (see
:mod:`ee_middleware._lifetime`), even when the job is killed with ``SIGKILL``; sandbox children
(``--isolation subprocess``) then kill themselves and every process their tools started. A job that ends early
(Ctrl-C, SIGTERM, an error) stops its local workers at once: each drops the trajectory it is replaying (nothing of it
is stored: a trajectory's rollouts and record are written together once it is done) and what it was sent after it, or
stops building its sandbox and policy (a model loading), then closes what it built; a second signal meanwhile kills
them (see :meth:`ProcessExecutor.close`). Ray actors still being built are killed at once (see
:meth:`RayExecutor.close`); built ones close first.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gc
import itertools
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ee_middleware._lifetime import SIGNAL_CHECK_S, die_with_parent, second_signal_ends, sigint_ignored_by_children
from ee_middleware._optional import import_optional
from ee_middleware.capture.store_redaction import TRUSTED_REDACT_FNS_ENV
from ee_middleware.errors import (
    EEError,
    MissingExtraError,
    ModelError,
    ModelLoadError,
    ModelRequestError,
    ModelResponseError,
    ModelServerError,
    PolicyError,
    RecordError,
    SandboxError,
    StoreError,
)
from ee_middleware.models.spec import endpoint_problem
from ee_middleware.plugins import ShadowedPluginWarning
from ee_middleware.records import ReplayRecord, Trajectory, utcnow
from ee_middleware.replay.runner import ProposingAhead, ReplayOutcome, ReplaySettings, propose_ahead, replay_trajectory
from ee_middleware.replay.sandboxes.protocol import Sandbox
from ee_middleware.store.rows import TrajectoryRows

logger = logging.getLogger("ee_middleware.replay")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its sandbox and proposer, and how to replay."""

    sandbox_factory: Callable[[], Sandbox]
    policy: str
    settings: ReplaySettings
    policy_options: dict[str, Any] = field(default_factory=dict)
    policy_defaults: dict[str, Any] = field(default_factory=dict)
    """The sampling options the user left at their defaults: a plug-in's factory gets those it takes, a chat client's
    wrapper all of them (see :func:`~ee_middleware.replay.policies.registry.prepare_policy`)."""
    store: str | None = None
    """The store (a spec for :func:`~ee_middleware.store.registry.open_store`) the worker writes each
    trajectory's rollouts and record into; ``None``: it returns them and the job writes them."""
    store_marker: str | None = None
    """The text of the store's ``ee-store.json`` where the job read it: a worker writes only into a
    store whose marker reads the same (the same store, not another one at the same path elsewhere)."""
    requests_in_flight: int = 1
    """Proposal requests the worker keeps in flight at once (see :attr:`ReplayConfig.requests_in_flight`)."""
    look_ahead: bool = True
    """With more than one request in flight, ask for the next trajectory's proposals while one replays (see
    :meth:`_Worker.replay_all`); off only to measure what that gains (``benchmarks/replay_served_policy.py``)."""


def model_unusable(exc: ModelError) -> bool:
    """Whether a model's error (the policy's, or an experience sandbox's) means no trajectory can be replayed: the
    server is unreachable or failing after retries, refuses the key or the model's name (401, 403, 404), refuses for its
    setup or a setting every request carries (llama-server without ``--jinja``: :attr:`ModelRequestError.setup`), or a
    local model does not load. A request it refuses otherwise (400: a state longer than its context), an answer it
    garbles or messages its chat template cannot render fail that trajectory alone; so does a failure after retries
    from a server that still lists its models (:func:`fails_alone`), until :data:`SERVER_FAILURES_IN_A_ROW` in a row."""
    if isinstance(exc, ModelRequestError):
        return exc.status in (401, 403, 404) or exc.setup
    return isinstance(exc, (ModelLoadError, ModelServerError)) and not isinstance(exc, ModelResponseError)


SERVER_FAILURES_IN_A_ROW = 3
"""Items in a row (a replay worker's trajectories, ``ee experience eval``'s predictions) whose requests a server failed
after its retries (5xx, time-outs) while it still answered ``GET /models``: then its generation is down, not one prompt
(a vLLM whose engine died, a gateway that lists models itself), and the work stops as for a server that is gone,
instead of retrying every item left (see :class:`ServerFailuresInARow`)."""


def fails_alone(exc: ModelError, clients: Iterable[Any]) -> bool:
    """Whether ``exc``, a server failure after the client's retries (5xx, a timeout, no connection: what
    :func:`model_unusable` stops on), belongs to the request that got it alone: the server still answers ``GET /models``
    (:func:`~ee_middleware.models.spec.endpoint_problem`), so it failed on that request (a per-input crash in its
    tokenizer or chat template, a proxy relaying a refusal as 500, a prompt it takes too long over) and answers others.

    The server is asked through the ``clients`` in use (a policy's, an experience sandbox's) whose ``base_url`` the
    failed request's URL starts with, or, where none does, through those that can be asked and have no ``base_url`` (a
    client of the user's own): a client whose ``base_url`` is another server's did not make the request (a policy
    plug-in's own served client is not among ``clients``), and that server's answer says nothing of the one that failed.
    It is asked once, within a short timeout (``endpoint_problem``'s ``quick``): the request already waited out the
    client's timeout and retries. A refusal of every request (401, 403, 404, its setup), a local model that does not
    load, and a failure no client can be asked about (none has ``list_models``, or none is the failed URL's and all name
    their server) are never one request's alone."""
    if not isinstance(exc, ModelServerError) or isinstance(exc, (ModelRequestError, ModelResponseError)):
        return False
    askable = list({id(client): client for client in clients if getattr(client, "list_models", None) is not None}.values())
    url = getattr(exc, "url", "") or ""
    serving = [client for client in askable if _serves(client, url)] or [client for client in askable if not _base_url(client)]
    return bool(serving) and all(endpoint_problem(client, quick=True) is None for client in serving)


def _base_url(client: Any) -> str:
    """``client``'s ``base_url``, ``""`` where it names none."""
    base = getattr(client, "base_url", None)
    return base if isinstance(base, str) else ""


def _serves(client: Any, url: str) -> bool:
    base = _base_url(client)
    return bool(base) and (url == base or url.startswith(base.rstrip("/") + "/"))


class ServerFailuresInARow:
    """The items in a row (``items``: "trajectories", "predictions") that ended with a server failure kept to their own
    request (:func:`fails_alone`). At ``limit`` of them the server's generation is down behind a live model listing,
    and :meth:`note` raises a :class:`~ee_middleware.errors.ModelServerError` saying so (naming the last failure's URL),
    which stops the work as a server that is gone does. One rule for a replay (per worker) and ``ee experience eval``."""

    def __init__(self, items: str, limit: int = SERVER_FAILURES_IN_A_ROW) -> None:
        self.items = items
        self.limit = limit
        self._failures: list[ModelError] = []

    def note(self, failure: ModelError | None) -> None:
        """One item ended: with ``failure``, the server failure :func:`fails_alone` kept to it, or any other way
        (``None``: answered, or failed for another reason), which ends the row."""
        self._failures = [*self._failures, failure] if failure is not None else []
        if len(self._failures) >= self.limit:
            failures, self._failures = self._failures, []
            raise _generation_down(failures, self.items)


def _generation_down(failures: list[ModelError], items: str) -> ModelServerError:
    last = failures[-1]
    message = (
        f"{last} The server still lists its models, but failed the last {len(failures)} {items} in a row after its "
        "retries: its generation is down (a dead engine behind a live API server, a gateway answering the listing itself). "
        "Check the server's log and restart it."
        # (the job stops at the last of them: recorded failed are the ones before it, and the next run asks again)
        + (" The last of them is not recorded as failed: the next run replays it." if items == "trajectories" else "")
    )
    error = ModelServerError(
        message, url=getattr(last, "url", "") or "", status=getattr(last, "status", None), timed_out=getattr(last, "timed_out", False)
    )
    error.__cause__ = last
    return error


class _Worker:
    """A sandbox and a proposer, built on first use and rebuilt after a failure."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self._parts: tuple[Sandbox, Any] | None = None
        self._store: Any = None
        self._store_checked = False
        self._requests: RequestThreads | None = None
        self._stopped = False
        """Whether a replay was cut short by a stop (Ctrl-C, SIGTERM): the proposal requests in flight are not waited for."""
        self._waiting: tuple[Trajectory | TrajectoryRows, ProposingAhead | None] | None = None
        """The trajectory held for the next call, with its proposals asked for (see :meth:`replay_all`)."""
        self._answers_closed: collections.Counter[str] = collections.Counter()
        """The answer counts (see :func:`answer_counts`) of the policies this worker closed (rebuilt after a failure)
        whose requests had all ended."""
        self._closed_in_flight: list[tuple[Any, list[Future[Any]]]] = []
        """The policies this worker let go while requests they were asked were still running (a trajectory failed while
        the next one's proposals were asked for ahead), with those requests. Such a policy is closed only once they
        have ended (closing a served policy's client cuts its requests off, and the server's work is lost), and its
        counts grow as they end: each record reads them again until then."""
        self._answers_recorded: collections.Counter[str] = collections.Counter()
        """The answer counts already put in a record (see :meth:`_with_answer_counts`)."""
        self._server_failures = ServerFailuresInARow("trajectories")
        """This worker's trajectories in a row failed by a server that still lists its models (see :meth:`_replay`)."""

    def _build(self) -> tuple[Sandbox, Any]:
        from ee_middleware.replay.policies.proposer import Proposer
        from ee_middleware.replay.policies.registry import prepare_policy

        if self._parts is None:
            sandbox = self.spec.sandbox_factory()
            try:
                policy, _ = prepare_policy(self.spec.policy, self.spec.policy_options, self.spec.policy_defaults)
            except BaseException:
                _close_quietly(sandbox)  # (its child process, with isolation): the next build makes another
                raise
            self._parts = (sandbox, Proposer(policy, k=self.spec.settings.k))
        return self._parts

    def warm_up(self) -> None:
        """Build the sandbox and policy and open the store now, before the first trajectory arrives.

        A part that cannot be built is left for the first trajectory, which raises its error to the job as before.
        """
        try:
            self._build()
            self._writable_store()
        except Exception:  # noqa: BLE001 - raised again, with its own message, on first use
            pass

    def replay(self, trajectory: Trajectory | TrajectoryRows) -> ReplayOutcome:
        return self._stored(self._replay(trajectory))

    def replay_all(self, trajectories: Iterable[Trajectory | TrajectoryRows], *, hold_last: bool = False) -> Iterator[ReplayOutcome]:
        """:meth:`replay` for each of ``trajectories``, in order. With proposal threads (``requests_in_flight`` > 1),
        each trajectory's proposals are asked for while the one before it replays, so a served policy's requests keep
        coming across trajectories (a trajectory of few states leaves threads idle otherwise).

        ``hold_last``: for a worker sent its trajectories a few at a time (a local worker process, a Ray actor), the
        last one is not replayed yet but held, its proposals being asked for, until the next call, which replays it
        first; a call with no trajectories (and ``hold_last`` false) replays the one held. Its requests so keep coming
        across calls as they do across one call's trajectories. A call that raises, or is closed early, and
        :meth:`close`, drop the one held (none is left asking)."""
        if self.spec.requests_in_flight <= 1 or not self.spec.look_ahead:
            try:
                for trajectory in trajectories:
                    yield self.replay(trajectory)
            except (KeyboardInterrupt, SystemExit):
                self._stopped = True
                raise
            return
        finished = False
        try:
            for item in trajectories:
                upcoming = self._ask_ahead(item)
                current, self._waiting = self._waiting, upcoming
                if current is not None:
                    yield self._stored(self._replay(*current))
            if not hold_last and self._waiting is not None:
                last, self._waiting = self._waiting, None
                yield self._stored(self._replay(*last))
            finished = True
        except (KeyboardInterrupt, SystemExit):
            self._stopped = True
            raise
        finally:
            if not finished:
                self._drop_waiting()  # the job stopped (an error, or the caller closed the iterator): none is left asking

    def _stopping(self) -> bool:
        """Whether this worker was stopped (Ctrl-C, SIGTERM, a local worker's stop signal or the job's stop event)."""
        return self._stopped or _worker_stopped() is not None

    def _drop_waiting(self) -> None:
        """Drop the trajectory held for the next call: its requests not sent yet are cancelled, and those in flight
        waited for, unless this worker is stopping (a served model's answer can take minutes; none is used)."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None and waiting[1] is not None:
            waiting[1].drop(wait_for_running=not self._stopping())

    def _ask_ahead(self, item: Trajectory | TrajectoryRows) -> tuple[Trajectory | TrajectoryRows, ProposingAhead | None]:
        """``item`` built (when it can be), with its proposals asked for now."""
        _, proposer = self._build()
        if type(item) is TrajectoryRows:
            try:
                item = item.build()
            except Exception:  # noqa: BLE001 - built again (and failed alone, with its reason) when its turn comes
                return item, None
        requests = self._request_threads()
        assert requests is not None
        return item, propose_ahead(item, proposer, self.spec.settings, requests)

    def _stored(self, outcome: ReplayOutcome) -> ReplayOutcome:
        outcome = self._with_answer_counts(outcome)
        store = self._writable_store()
        if store is None:
            return outcome
        with _uninterrupted():  # a worker told to stop finishes writing what it replayed
            outcome = write_outcome(store, outcome, where=self.spec.store)
        return ReplayOutcome(outcome.record, stored=True)

    def _with_answer_counts(self, outcome: ReplayOutcome) -> ReplayOutcome:
        """``outcome`` with what this worker's policy counted of answers fewer than asked since its previous record
        (``details["fewer_answers"]``, see :meth:`~ee_middleware.records.ReplayRecord.fewer_answers`): the job's summary
        sums the records, so every worker's counts (a process's, a Ray actor's, the job's own) are summed once."""
        running = self._closed_answer_counts()  # (first: it moves those whose requests ended into _answers_closed)
        now = collections.Counter(self._answers_closed)
        now.update(running)
        if self._parts is not None:
            now.update(answer_counts(getattr(self._parts[1], "policy", None)))
        new = {name: count - self._answers_recorded[name] for name, count in now.items() if count > self._answers_recorded[name]}
        self._answers_recorded = now
        if not new:
            return outcome
        record = outcome.record
        given = record.details.get("fewer_answers")
        merged = collections.Counter(given if isinstance(given, dict) else {})
        merged.update(new)
        details = {**record.details, "fewer_answers": dict(merged)}
        return ReplayOutcome(record.model_copy(update={"details": details}), outcome.rollouts, outcome.stored)

    def _closed_answer_counts(self) -> collections.Counter[str]:
        """The answer counts of the policies let go while their requests ran (see :attr:`_closed_in_flight`), as of
        now; one whose requests have all ended is counted in :attr:`_answers_closed` from now on, and closed."""
        counts: collections.Counter[str] = collections.Counter()
        running = []
        for policy, requests in self._closed_in_flight:
            ended = all(request.done() for request in requests)  # before the counts are read: none grows after
            if ended:
                self._answers_closed.update(answer_counts(policy))
                _close_quietly(policy)
            else:
                counts.update(answer_counts(policy))
                running.append((policy, requests))
        self._closed_in_flight = running
        return counts

    def _writable_store(self) -> Any:
        """This worker's own handle on the job's store, or ``None`` when the job writes (see :attr:`WorkerSpec.store`)."""
        if not self._store_checked:
            self._store_checked = True
            self._store = _open_same_store(self.spec.store, self.spec.store_marker) if self.spec.store is not None else None
        return self._store

    def _replay(self, trajectory: Trajectory | TrajectoryRows, ahead: ProposingAhead | None = None) -> ReplayOutcome:
        settings = self.spec.settings
        sandbox, proposer = self._build()  # a sandbox or policy that cannot be built stops the job
        if type(trajectory) is TrajectoryRows:
            try:
                trajectory = trajectory.build()
            except Exception as exc:  # noqa: BLE001 - a damaged stored trajectory fails alone; the sandbox is fine
                return self._failed(trajectory.id, exc)
        try:
            outcome = replay_trajectory(trajectory, sandbox, proposer, settings, requests=self._request_threads(), ahead=ahead)
        except (PolicyError, MissingExtraError):
            raise  # the policy is unusable (server down, model missing): stop the whole job
        except ModelError as exc:
            server_failure = model_unusable(exc)
            if server_failure and not fails_alone(exc, _model_clients(sandbox, proposer)):
                raise  # every trajectory would fail the same way (retried each time): stop the job
            self._close_parts()
            # a failure of a server that still lists its models is this trajectory's; a run of them stops the job
            self._server_failures.note(exc if server_failure else None)
            return self._failed(trajectory.id, exc)
        except Exception as exc:  # noqa: BLE001 - one trajectory's failure must not stop the job
            self._close_parts()
            self._server_failures.note(None)
            return self._failed(trajectory.id, exc)
        except (KeyboardInterrupt, SystemExit):
            self._stopped = True  # (the job's own process replaying while its workers start calls this, not replay_all)
            raise
        if outcome.record.status != "skipped":  # (a trajectory skipped for its tools asks little or nothing of a server)
            self._server_failures.note(None)
        # what the policy raised: examples in the record, and a trajectory it raised at every state of fails (see Proposer.settle)
        return proposer.settle(outcome, settings.privacy.redact_data)

    def _request_threads(self) -> RequestThreads | None:
        """The threads that propose for a trajectory's states concurrently, when the spec asks for more than one."""
        if self.spec.requests_in_flight > 1 and self._requests is None:
            self._requests = RequestThreads(self.spec.requests_in_flight, name="ee-replay-propose")
        return self._requests

    def _failed(self, trajectory_id: str, exc: Exception) -> ReplayOutcome:
        """A ``failed`` record for ``trajectory_id`` (retried by the next run), the error's last line as its reason, and
        where the user's code raised it (a plug-in sandbox's or policy's bug), if it did."""
        from ee_middleware.plugins import where_user_code_raised

        settings = self.spec.settings
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        where = where_user_code_raised(exc)
        tb += f" (raised at {where})" if where else ""
        record = ReplayRecord(
            replay_id=settings.replay_id,
            trajectory_id=trajectory_id,
            status="failed",
            reason=settings.privacy.redact_data(tb),
            policy=settings.policy,
            sandbox="?",
            k=settings.k,
            seed=settings.seed,
            finished_at=utcnow(),
            # an attempt after the first names its configuration, as its other records do: a build of the configuration
            # finds the earlier attempts through it even where this attempt failed everything
            details={"attempt_of": settings.attempt_of, "attempt": settings.attempt} if settings.attempt_of else {},
        )
        return ReplayOutcome(record)

    def close(self) -> None:
        store, self._store, self._store_checked = self._store, None, False
        requests, self._requests = self._requests, None
        try:
            self._drop_waiting()
            if requests is not None:
                # before the policy closes: no request still uses it; but a stopped worker does not wait for the requests
                # in flight (a served model's answers can take minutes): their threads end with them, unused
                requests.shutdown(wait=not self._stopping(), cancel_futures=True)
            if store is not None:
                store.close()  # seals (and syncs) this worker's spool segment
        finally:
            self._close_parts()  # the sandbox's child must end even if that failed: the worker waits for it on exit
            closed, self._closed_in_flight = self._closed_in_flight, []
            for policy, _ in closed:  # their requests have ended, or a stopped worker does not wait for them
                _close_quietly(policy)

    def _close_parts(self) -> None:
        if self._parts is not None:
            sandbox, proposer = self._parts
            self._parts = None
            policy = getattr(proposer, "policy", None)
            _close_quietly(sandbox)
            # its counts go in the next record; requests still running on it (all were asked before this) count more
            running = self._requests.unfinished() if self._requests is not None else []
            if running:
                self._closed_in_flight.append((policy, running))  # closed once they have ended
            else:
                self._answers_closed.update(answer_counts(policy))
                _close_quietly(policy)


def _model_clients(sandbox: Sandbox, proposer: Any) -> list[Any]:
    """The chat clients a worker's parts ask (see :func:`fails_alone`): its policy's (a
    :class:`~ee_middleware.replay.policies.chat.ChatPolicy`'s) and an experience sandbox's."""
    clients = (getattr(getattr(proposer, "policy", None), "client", None), getattr(sandbox, "_client", None))
    return [client for client in clients if client is not None]


def _close_quietly(part: Any) -> None:
    """Close ``part`` (a sandbox, a policy) where it has a ``close``; closing is best effort."""
    close = getattr(part, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def answer_counts(policy: Any) -> dict[str, int]:
    """What ``policy`` counted of answers fewer than asked (its ``answer_counts()``, as
    :meth:`~ee_middleware.replay.policies.chat.ChatPolicy.answer_counts` gives them; none for a policy without it, or
    one whose method fails): the names of :data:`~ee_middleware.records.FEWER_ANSWERS`, counts above 0."""
    from ee_middleware.records import FEWER_ANSWERS

    method = getattr(policy, "answer_counts", None)
    if not callable(method):
        return {}
    try:
        counts = method()
    except Exception:  # a count must not fail a replay
        logger.debug("the policy's answer_counts() failed", exc_info=True)
        return {}
    if not isinstance(counts, dict):
        return {}
    return {
        name: value for name in FEWER_ANSWERS if isinstance(value := counts.get(name), int) and not isinstance(value, bool) and value > 0
    }


class RequestThreads(concurrent.futures.Executor):
    """A fixed pool of daemon threads (the proposal requests of a served policy, ``requests_in_flight`` at a time).

    Unlike :class:`~concurrent.futures.ThreadPoolExecutor`, whose threads the interpreter joins as it exits, a stopped
    job or worker (Ctrl-C, SIGTERM) does not wait for the requests still in flight: ``shutdown(wait=False)`` leaves
    them to end on their own threads (with their answer, or their request's time-out), which nothing waits for.
    """

    def __init__(self, threads: int, *, name: str = "ee-request") -> None:
        if threads < 1:
            raise ValueError(f"RequestThreads needs at least one thread, got {threads}")
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._shut = False
        self._unfinished: set[Future[Any]] = set()  # submitted, and not ended yet (see unfinished())
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[Any] = Future()
            self._unfinished.add(future)
            self._queue.put((future, fn, args, kwargs))
        return future

    def unfinished(self) -> list[Future[Any]]:
        """The requests submitted that have not ended yet (queued or running; one cancelled has ended)."""
        with self._lock:
            self._unfinished = {future for future in self._unfinished if not future.done()}
            return list(self._unfinished)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - the caller gets it from the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                self._unfinished.discard(future)
            del future, fn, args, kwargs
        self._queue.put(None)  # the next thread ends too

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
                        self._unfinished.discard(item[0])
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def write_outcome(store: Any, outcome: ReplayOutcome, *, where: object) -> ReplayOutcome:
    """Append one trajectory's rollouts and record to ``store`` (named ``where`` in the error a failed write raises);
    return the outcome as stored, for the job's summary.

    A replay the store refuses for a value it cannot hold (a :class:`~ee_middleware.errors.RecordError`: an integer
    outside 64 bits, made by the sandbox or the policy) fails that trajectory alone: a ``failed`` record naming the value
    is stored instead (retried by the next run, as any failed trajectory), and the job goes on with the others. When even
    that record cannot be stored, the trajectory is left out with a warning naming it.
    """
    try:
        try:
            store.write_replay(outcome.record, outcome.rollouts)
        except RecordError as exc:
            failed = _refused_replay(outcome.record, exc)
            try:
                store.write_replay(failed)
            except RecordError as again:
                logger.warning("ee-middleware: trajectory %r skipped (nothing stored for it): %s", failed.trajectory_id, again)
                return ReplayOutcome(failed.model_copy(update={"status": "skipped", "reason": f"nothing stored for it: {again}"}))
            return ReplayOutcome(failed)
    except OSError as exc:
        raise StoreError(f"Could not write rollouts to {where}: {exc}. Free space or fix permissions, then re-run.") from exc
    return outcome


def _refused_replay(record: ReplayRecord, exc: RecordError) -> ReplayRecord:
    """A ``failed`` record for the trajectory of ``record``, whose replay the store refused with ``exc`` (which names the
    value out of range and where it is)."""
    details = {key: record.details[key] for key in ("attempt_of", "attempt", "fewer_answers") if key in record.details}
    return ReplayRecord(
        replay_id=record.replay_id,
        trajectory_id=record.trajectory_id,
        status="failed",
        reason=f"{exc} The sandbox or the policy produced that value; this trajectory failed alone (retried by the next run).",
        policy=record.policy,
        sandbox=record.sandbox,
        k=record.k,
        seed=record.seed,
        finished_at=utcnow(),
        details=details,
    )


def store_marker(store: Any) -> str | None:
    """The text of a local store's ``ee-store.json`` (``None`` for other stores), for :attr:`WorkerSpec.store_marker`."""
    root = getattr(store, "root", None)
    return _marker_text(Path(root)) if root is not None else None


def _marker_text(root: Path) -> str | None:
    from ee_middleware.store.replay_spool import MARKER

    try:
        return (root / MARKER).read_text()
    except OSError:
        return None


def _open_same_store(spec: str, marker: str | None) -> Any:
    """Where this worker writes into the store ``spec`` names, when it is the job's own store; else ``None``.

    A local store (``local:FOLDER``, as the job names it) is written through its spool alone
    (:class:`~ee_middleware.store.replay_spool.ReplaySpool`: the same records, without loading the store's tables).
    """
    if spec.startswith("local:") and marker is not None:
        from ee_middleware.store.replay_spool import ReplaySpool

        root = Path(spec.removeprefix("local:"))
        return ReplaySpool(root) if _marker_text(root) == marker else None
    from ee_middleware.store.registry import open_store

    try:
        store = open_store(spec, create=False)
    except EEError:
        return None  # not reachable from here: the job writes what this worker returns
    if marker is not None and store_marker(store) != marker:
        store.close()
        return None
    return store


class _JobReplays:
    """The job's own process replaying while its workers start: a worker of its own, built on first use, that returns
    what it replays (``stored`` is false) for the job to write."""

    def __init__(self, spec: WorkerSpec) -> None:
        self._spec = replace(spec, store=None, store_marker=None)
        self._worker: _Worker | None = None

    def replay(self, trajectory: Trajectory | TrajectoryRows) -> ReplayOutcome:
        if self._worker is None:
            self._worker = _Worker(self._spec)
        return self._worker.replay(trajectory)

    def close(self) -> None:
        """Close its sandbox and policy (the workers replay from now on); a later :meth:`replay` builds them again."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()


class Executor(Protocol):
    """Runs replays and yields outcomes in completion order."""

    def map(self, trajectories: Iterable[Trajectory | TrajectoryRows]) -> Iterator[ReplayOutcome]: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Replays in the calling process, one trajectory at a time (``--workers 1``)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self._worker = _Worker(spec)

    def map(self, trajectories: Iterable[Trajectory | TrajectoryRows]) -> Iterator[ReplayOutcome]:
        return self._worker.replay_all(trajectories)

    def close(self) -> None:
        self._worker.close()


_PROCESS_WORKER: _Worker | None = None

_STOP: Any = None
"""In a local worker: the job's stop event (a :mod:`multiprocessing` ``Event``), set once the job ends early."""

_INTERRUPTED: str | None = None
"""In a local worker: the signal that told it to stop (SIGINT: the job's, or Ctrl-C reaching its process group)."""

_INTERRUPTIBLE = False
"""In a local worker: whether a replay runs that the stop signal cuts short (not while the worker waits for its next
call, nor while it writes what it replayed)."""


class _WorkerStopped(Exception):
    """What a local worker's call returns once the worker was told to stop (it replays nothing more)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _on_stop_signal(signum: int, _frame: object) -> None:
    """A local worker's SIGINT handler: replay nothing more; the replay running now (if any) ends at once.

    Only the first stop interrupts: a Ctrl-C reaches the worker with its process group, and the job's own SIGINT
    (:meth:`ProcessExecutor._stop_workers`) follows at once. Raised again, the second cut short what the first set off:
    a sandbox ending its child (``SubprocessSandbox._stop_child``) forgot the child before it killed it, and the worker's
    exit then waited for that child's tool call to end (the job stopped after 15 s, not 1)."""
    global _INTERRUPTED
    first = _INTERRUPTED is None
    _INTERRUPTED = _INTERRUPTED or signal.Signals(signum).name
    if _INTERRUPTIBLE and first:
        raise KeyboardInterrupt(_INTERRUPTED)


def _worker_stopped() -> str | None:
    """Why this local worker must replay nothing more (``None``: it goes on)."""
    if _INTERRUPTED is not None:
        return _INTERRUPTED
    return "the job stopped" if _STOP is not None and _STOP.is_set() else None


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """A part of a local worker's replay that its stop signal does not cut short (it still stops after it)."""
    global _INTERRUPTIBLE
    was, _INTERRUPTIBLE = _INTERRUPTIBLE, False
    try:
        yield
    finally:
        _INTERRUPTIBLE = was


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    global _INTERRUPTIBLE
    _INTERRUPTIBLE = True
    try:
        if _INTERRUPTED is not None:  # it came just before
            raise KeyboardInterrupt(_INTERRUPTED)
        yield
    finally:
        _INTERRUPTIBLE = False


def _init_process_worker(spec: WorkerSpec, torch_threads: int, parent_pid: int, stop: Any = None, listening: Any = None) -> None:
    """Set up a local worker process: its stop signal and event, then its sandbox and policy (:meth:`_Worker.warm_up`).

    ``listening`` (an ``Event``) is set once the stop signal's handler is in place: from then on the job may send it
    SIGINT (see :meth:`ProcessExecutor._stop_workers`), which also cuts the warm-up short (a policy loading a model, a
    sandbox that takes long to build): a job stopped meanwhile does not wait for it."""
    global _PROCESS_WORKER, _STOP
    warnings.filterwarnings("ignore", category=ShadowedPluginWarning)  # said by the job, once, not by each worker
    # The process that must not outlive us: the job (spawned workers) or the job's fork server, which ends the moment the
    # job does. Killed by the kernel when it dies; the watchdog covers systems without prctl.
    die_with_parent(parent_pid, _end_orphaned_worker, death_signal=signal.SIGKILL)
    _STOP = stop
    signal.signal(signal.SIGINT, _on_stop_signal)  # (SIGTERM stays deadly: the pool ends a broken worker with it)
    if listening is not None:
        listening.set()
    JobForkServer.release_in_worker()
    os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads))
    _PROCESS_WORKER = worker = _Worker(spec)
    # A worker process ends through multiprocessing's exit function, which waits for every child
    # process: the sandbox (and its child, with --isolation subprocess) must be closed before that.
    multiprocessing.util.Finalize(None, worker.close, exitpriority=100)
    # The job sets its stop event before it looks at ``listening``: a worker that starts its warm-up after this check
    # either finds the event set, or was listening in time to be sent the signal.
    if _worker_stopped() is None:
        try:
            with _interruptible():
                worker.warm_up()
        except KeyboardInterrupt:
            if _INTERRUPTED is None:
                raise  # not the stop signal's
            # stopped while warming up: every call it gets returns at once, and it closes what it built as it ends
    # What the worker holds now (modules, sandbox, policy) lives as long as it does: out of the collector's full passes,
    # as the job process does for its own heap (see ee_middleware.replay.job._frozen_heap).
    gc.freeze()


def _end_orphaned_worker() -> None:
    """The job is gone: kill the sandbox children of this worker (their tools' processes too), then end."""
    isolated = sys.modules.get("ee_middleware.replay.sandboxes.isolated")
    if isolated is not None:
        isolated.kill_all_children()
    os._exit(1)


def _started() -> None:
    """Nothing: submitted once so that the pool starts its processes at once."""


def _replay_in_process(trajectories: list[Trajectory | TrajectoryRows], hold_last: bool) -> tuple[list[ReplayOutcome], Exception | None]:
    """This worker's :meth:`_Worker.replay_all` of ``trajectories``: the outcomes of the trajectory it held and of
    ``trajectories`` but the last, which it holds (its proposals asked for) until the next call, when ``hold_last``;
    and the error that stopped them (``None`` when none did), so that what a call replayed before a policy stopped
    working is counted by the job, as with one worker and on Ray.

    A worker told to stop (see :meth:`ProcessExecutor.close`) replays nothing more: the trajectory it is replaying ends
    at once (unstored), and the call returns what it replayed before, with :class:`_WorkerStopped`."""
    assert _PROCESS_WORKER is not None
    if (why := _worker_stopped()) is not None:
        return [], _WorkerStopped(why)
    replays = _PROCESS_WORKER.replay_all(trajectories, hold_last=hold_last)
    outcomes: list[ReplayOutcome] = []
    try:
        while (why := _worker_stopped()) is None:
            with _interruptible():
                outcome = next(replays, None)
            if outcome is None:
                return outcomes, None
            outcomes.append(outcome)
    except KeyboardInterrupt:
        if _INTERRUPTED is None:
            raise  # not the stop signal's
        why = _INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - raised by the job once it has the outcomes before it
        return outcomes, _sendable(exc)
    finally:
        replays.close()  # drops the trajectory held for the next call, when stopped
    return outcomes, _WorkerStopped(why)


def _until_error(replays: Iterator[ReplayOutcome]) -> tuple[list[ReplayOutcome], Exception | None]:
    """The outcomes of a worker's call, in order, and the error that stopped them (``None`` when none did), sendable to
    the job (see :func:`_sendable`), which raises it once it has counted the outcomes before it."""
    outcomes: list[ReplayOutcome] = []
    try:
        for outcome in replays:
            outcomes.append(outcome)
    except Exception as exc:  # noqa: BLE001 - raised by the job once it has the outcomes before it
        return outcomes, _sendable(exc)
    return outcomes, None


WORKER_MODULES = (
    "ee_middleware.replay.fork_server_preload",  # first: the job's sys.path, then the rest of this list, guarded
    "ee_middleware.replay.executors",
    "ee_middleware.replay.policies.registry",
    "ee_middleware.replay.policies.proposer",
    "ee_middleware.replay.policies.mutate",
    "ee_middleware.store.replay_spool",
    "ee_middleware.capture.store_redaction",
    "ee_middleware.replay.sandboxes.registry",  # the spec's sandbox factory
    "multiprocessing.popen_forkserver",  # what a worker unpickles: its process object, the job's stop event
    "multiprocessing.synchronize",
    "jsonschema",  # words why a proposal does not fit its tool (schema.py imports it on first use)
    "jsonschema_rs",  # the [fast] extra's validator (skipped where it is not installed)
    "ctypes",  # die_with_parent's prctl
    "resource",  # the spool's file-size limit (_files.py)
)
"""What every local worker imports, once, in the job's fork server (see :class:`JobForkServer`)."""


class JobForkServer:
    """A fork server of the job's own: one fresh interpreter that imports what a worker needs, then forks each worker.

    Spawning a worker costs a fresh interpreter and ~0.4 s CPU of imports, in every worker; forking this server costs
    a few milliseconds, and its imports run once, beside the job's own work. It is :mod:`multiprocessing`'s fork server
    (``forkserver`` start method), but this job's private one rather than the process-wide one, so that it ends with
    the job: :meth:`stop` ends it when the job closes its workers, and it ends by itself the moment the job's process
    dies (even by ``SIGKILL``: its "alive" pipe then reads EOF). Each worker closes its copy of that pipe (see
    :meth:`release_in_worker`), so only the job keeps the server alive, and dies with the server (parent-death signal
    and watchdog). The server itself only imports modules: it starts no thread, so forking it is safe.
    """

    def __init__(self, preload: Iterable[str]) -> None:
        import importlib
        from multiprocessing import forkserver

        # Every internal used here or later (in the context's Popen and in release_in_worker) is looked up before the
        # server starts, so that a Python whose internals differ falls back to spawning before anything runs.
        server = forkserver.ForkServer()
        for module, name in _FORK_SERVER_INTERNALS:
            getattr(server if module is None else importlib.import_module(module), name)  # AttributeError if it moved
        server.set_forkserver_preload(list(dict.fromkeys(preload)))
        # the server ignores SIGINT from its first instruction (a Ctrl-C during its imports ended it with a "Fatal Python
        # error" traceback); workers it forks ignore it too until they handle it (see _init_process_worker)
        with sigint_ignored_by_children(hold=False), _safe_path_for_children():  # (hold: its workers' mask, see there)
            _start_resource_tracker()
            server.ensure_running()
        self._server = server
        self._stopped = False
        try:
            self.pid: int = server._forkserver_pid  # type: ignore[attr-defined]
            self.context = _fork_server_context(server)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End the server (its workers have ended: it holds nothing but imported modules). Once: stopping it again
        does nothing (its pid may be another process's by then)."""
        if self._stopped:
            return
        self._stopped = True
        # SIGTERM ends it at once (it handles only SIGCHLD and SIGINT); on EOF of its alive pipe alone it would first
        # tear its interpreter down, ~0.1 s on the job's path.
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self._server._stop()  # type: ignore[attr-defined]  # closes the "alive" pipe and reaps the server

    @staticmethod
    def release_in_worker() -> None:
        """In a worker forked by a server: close the worker's copy of the server's "alive" pipe, so the job alone keeps it open."""
        from multiprocessing import forkserver

        if forkserver.get_inherited_fds() is None:  # not started by a fork server
            return
        state = forkserver._forkserver  # type: ignore[attr-defined]
        fd, state._forkserver_alive_fd = state._forkserver_alive_fd, None
        if fd is not None:
            os.close(fd)


def _start_resource_tracker() -> None:
    """Start :mod:`multiprocessing`'s resource tracker (it unlinks the semaphores the job shares with its workers) with
    SIGHUP blocked, as it keeps SIGINT and SIGTERM out itself: a closed terminal or a dropped ssh session sends SIGHUP to
    the whole process group, and the tracker died of it, leaving its "process died unexpectedly, relaunching. Some
    resources might leak" and a ``KeyError`` traceback per semaphore on the job's stderr. A signal blocked stays blocked
    across ``exec``, and the tracker unblocks only the two it ignores; it still ends when the job's process does. A
    no-op where it runs already or this platform has no signal mask."""
    from multiprocessing import resource_tracker

    if not hasattr(signal, "pthread_sigmask") or not hasattr(signal, "SIGHUP"):
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _safe_path_for_children() -> Iterator[None]:
    """A Python that multiprocessing starts in this block (the job's fork server) runs with ``-P``: the working directory
    is not put first on its ``sys.path`` (``python -c`` puts it there). Before CPython 3.12.8 and 3.13.1 the fork server
    imports its preload with that path, and :mod:`~ee_middleware.replay.fork_server_preload` can set the job's only once
    the ``ee_middleware`` package is imported: from a working directory holding an ``ee_middleware`` folder (a checkout),
    that would be the folder's, and so would every module the workers run. (The job's own path, which may hold the
    working directory, is applied by that module and, in each worker, by multiprocessing.)"""
    from multiprocessing import util

    flags = util._args_from_interpreter_flags  # type: ignore[attr-defined]
    util._args_from_interpreter_flags = lambda: [*flags(), "-P"]  # type: ignore[attr-defined]
    try:
        yield
    finally:
        util._args_from_interpreter_flags = flags  # type: ignore[attr-defined]


_FORK_SERVER_INTERNALS: tuple[tuple[str | None, str], ...] = (
    (None, "_forkserver_pid"),  # None: an attribute of the ForkServer instance
    (None, "_forkserver_alive_fd"),
    (None, "_stop"),
    (None, "connect_to_new_process"),
    ("multiprocessing.forkserver", "read_signed"),
    ("multiprocessing.forkserver", "get_inherited_fds"),
    ("multiprocessing.forkserver", "_forkserver"),
    ("multiprocessing.popen_forkserver", "Popen"),
    ("multiprocessing.spawn", "get_preparation_data"),
    ("multiprocessing.context", "set_spawning_popen"),
    ("multiprocessing.context", "ForkServerProcess"),
    ("multiprocessing.context", "ForkServerContext"),
    ("multiprocessing.util", "_args_from_interpreter_flags"),
)
"""The parts of CPython's :mod:`multiprocessing` (3.11-3.14) the job's fork server relies on."""


def _refers_to_main(spec: WorkerSpec) -> bool:
    """Whether ``spec`` holds something defined in the job's ``__main__`` (a sandbox factory in the user's script):
    workers forked by the fork server do not import the main module, spawned ones do."""
    import pickle

    try:
        return b"__main__" in pickle.dumps(spec)
    except Exception:  # noqa: BLE001 - the pool reports an unpicklable spec itself
        return False


def start_job_fork_server(preload: Iterable[str] = ()) -> JobForkServer | None:
    """A fork server for a job's local workers, importing :data:`WORKER_MODULES` and ``preload`` (the sandbox's module,
    its ``worker_modules``; one that raises as it is imported is skipped: :mod:`~ee_middleware.replay.fork_server_preload`);
    ``None`` where this Python cannot fork from one (workers are then spawned). Started before the workers are made,
    so that its imports overlap the job's own set-up; the :class:`ProcessExecutor` it is given stops it, and so may the
    caller (:meth:`JobForkServer.stop` is idempotent)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    try:
        return JobForkServer([*WORKER_MODULES, *preload])
    except (AttributeError, TypeError) as exc:  # this Python's multiprocessing internals differ from those relied on
        logger.warning("ee-middleware: cannot start replay workers from a fork server on this Python (%r); spawning them instead.", exc)
        return None
    except OSError as exc:  # its socket's path (in the temporary folder) longer than a Unix socket's 107 bytes
        if "too long" not in str(exc):
            raise
        logger.warning(
            "ee-middleware: cannot start replay workers from a fork server: its socket's path in the temporary folder %s is "
            "too long for a Unix socket (%s); spawning them instead (slower to start). A shorter TMPDIR avoids it.",
            tempfile.gettempdir(),
            exc,
        )
        return None


def _fork_server_context(server: Any) -> multiprocessing.context.BaseContext:
    """A ``forkserver`` context whose processes are forked by ``server`` instead of the process-wide fork server."""
    import io
    from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util

    class Popen(popen_forkserver.Popen):
        def _launch(self, process_obj: Any) -> None:
            # popen_forkserver.Popen._launch (CPython 3.11-3.13), asking ``server`` instead of the module's global one, and
            # without importing the job's main module in the worker (a spawned worker imports it as __mp_main__: for
            # the `ee` command, the whole CLI): nothing a worker is sent is defined there (sandboxes and policies are
            # named by spec strings, the rest is ee_middleware's own).
            prep_data = spawn.get_preparation_data(process_obj._name)
            prep_data.pop("init_main_from_path", None)
            prep_data.pop("init_main_from_name", None)
            buf = io.BytesIO()
            multiprocessing.context.set_spawning_popen(self)
            try:
                reduction.dump(prep_data, buf)
                reduction.dump(process_obj, buf)
            finally:
                multiprocessing.context.set_spawning_popen(None)
            self.sentinel, w = server.connect_to_new_process(self._fds)
            parent_w = os.dup(w)  # the child's sentinel of this process
            self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    class Process(multiprocessing.context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> Popen:
            return Popen(process_obj)

        def __reduce__(self) -> tuple[Any, ...]:
            return (_plain_process, (), self.__dict__)  # the worker unpickles a plain process object: this class is local

    class Context(multiprocessing.context.ForkServerContext):
        pass

    Context.Process = Process  # type: ignore[assignment]
    return Context()


def _plain_process() -> multiprocessing.process.BaseProcess:
    return multiprocessing.context.ForkServerProcess.__new__(multiprocessing.context.ForkServerProcess)


_READ_AHEAD = 256
"""At most this many trajectories are read ahead while the workers start (when the job does not replay meanwhile)."""

_CALLS_PER_WORKER = 2
"""Calls queued per local worker: the next one starts the moment the last one ends, without waiting for the job."""

_Call = Future[tuple[list[ReplayOutcome], Exception | None]]
"""A call to a local worker: what :func:`_replay_in_process` returns."""

_LOCAL_BATCH_S = 0.02
"""About how much replay one call to a local worker carries (see :class:`_BatchSizes`): a call costs the job and the
pool well under a millisecond of CPU, and at the end of the job a worker waits at most about two calls' worth for the
other (the calls it has queued)."""


class ProcessExecutor:
    """Replays in ``workers`` local processes, forked from a fork server of the job's own (see :class:`JobForkServer`).

    ``start_method="spawn"`` spawns each worker instead (a fresh interpreter each). Either way nothing of the job
    process's state leaks into a worker: a worker is a fresh interpreter, or a fork of one that only imported modules.
    The fork server imports :data:`WORKER_MODULES` and ``preload``; ``fork_server``, one started before (see
    :func:`start_job_fork_server`), is taken over instead (stopped when the executor closes, or at once where workers
    are spawned).

    Each worker is a pool of one process with :data:`_CALLS_PER_WORKER` calls queued, each carrying about
    :data:`_LOCAL_BATCH_S` of replay (:class:`_BatchSizes`, from the outcomes that came back: one trajectory per call
    until then, and for trajectories that take longer), so that the job's and the pool's cost per call (pickling,
    their threads waking) stays small beside trajectories that take milliseconds. A worker holds the last trajectory
    of a call for its next one (see :meth:`_Worker.replay_all`'s ``hold_last``): with a served policy, it asks for
    that trajectory's proposals while it replays the one before, as one worker does. Once the job has no trajectory
    left, a worker holding one is sent a call that replays it.
    """

    replay_while_starting: bool = False
    """Until the first worker has started, the job's process replays trajectories itself (and the job writes them)
    instead of waiting for the fork server's imports or spawned interpreters. Off unless asked for (the
    ``replay_while_starting`` argument): the job's process then builds the policy and sandbox too, which it should not
    for one that loads a model (see :func:`ee_middleware.replay.job.light_in_process`)."""

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        *,
        start_method: str = "forkserver",
        preload: Iterable[str] = (),
        fork_server: JobForkServer | None = None,
        torch_threads: int = 1,
        replay_while_starting: bool | None = None,
    ) -> None:
        self.workers = workers
        if replay_while_starting is not None:
            self.replay_while_starting = replay_while_starting
        self._server: JobForkServer | None = None
        if start_method == "forkserver" and start_method in multiprocessing.get_all_start_methods() and not _refers_to_main(spec):
            self._server = fork_server or start_job_fork_server(preload)
        elif fork_server is not None:
            fork_server.stop()  # (workers are spawned: see _refers_to_main)
        if self._server is not None:
            context, parent_pid = self._server.context, self._server.pid
        else:
            context, parent_pid = multiprocessing.get_context("spawn" if start_method == "forkserver" else start_method), os.getpid()
        self._start_error: BaseException | None = None
        self._ready: list[Future[None]] = []  # one per worker: done once that worker has started (see _started)
        self._here = _JobReplays(spec)
        self._unanswered = [0] * workers  # trajectories sent to each worker whose outcomes have not come back
        self._unanswered_ids: list[dict[str, None]] = [{} for _ in range(workers)]  # their ids, in the order sent
        self._all_replayed = False  # set once map() has yielded every trajectory's outcome
        self._sizes = _BatchSizes(target_s=_LOCAL_BATCH_S)
        self._pools: list[ProcessPoolExecutor] = []  # one per worker (a pool of one process)
        # Everything from here on is undone when it fails or is interrupted (Ctrl-C while many workers are set up): the
        # fork server started above must not outlive the job.
        try:
            _start_resource_tracker()  # (the fork server's start did where there is one; spawned workers' Events start it)
            self._stop = context.Event()  # set when the job ends early: every call a worker gets then replays nothing
            self._listening = [context.Event() for _ in range(workers)]  # set once that worker takes the stop signal
            for _ in range(workers):
                self._pools.append(
                    ProcessPoolExecutor(
                        max_workers=1,
                        mp_context=context,
                        initializer=_init_process_worker,
                        initargs=(spec, torch_threads, parent_pid, self._stop, self._listening[len(self._pools)]),
                    )
                )
        except BaseException:
            self._shut_pools()
            self._stop_server()
            raise
        # Start the workers now: they start up while the job reads the store. Starting one waits until the fork server
        # has imported what workers need, so under a fork server a thread starts them, and meanwhile map() reads the
        # first trajectories. (A spawned worker's parent-death signal is tied to the thread that started it: spawned
        # workers are started here, on the job's thread.)
        self._starter: threading.Thread | None = None
        if self._server is None:
            self._start_workers()
        else:
            self._starter = threading.Thread(target=self._start_workers, name="ee-replay-worker-start", daemon=True)
            self._starter.start()

    def _start_workers(self) -> None:
        try:
            for pool in self._pools:  # its submission starts its worker
                if self._stop.is_set():  # the job ended while they start (Ctrl-C): start no more, close() waits for this
                    break
                self._ready.append(pool.submit(_started))
        except BaseException as exc:  # noqa: BLE001 - raised by map() on the job's thread
            self._start_error = exc

    def _starting(self) -> bool:
        return self._starter is not None and self._starter.is_alive()

    def _await_workers(self) -> None:
        if self._starter is not None:
            self._starter.join()
        if self._start_error is not None:
            raise self._start_error

    def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def _worker_ready(self) -> bool:
        """Whether a worker has started (or starting them failed: :meth:`_await_workers` raises it)."""
        return self._start_error is not None or any(ready.done() for ready in list(self._ready))

    def map(self, trajectories: Iterable[Trajectory | TrajectoryRows]) -> Iterator[ReplayOutcome]:
        source = _SharedIterator(trajectories)
        pending: dict[_Call, int] = {}  # a call -> the worker it was sent to
        feeder: _Feeder | None = None
        try:
            if self.replay_while_starting and not self._worker_ready():
                # Until the first worker has started (a fork server importing, spawned interpreters starting), the job
                # replays trajectories itself. A thread hands the workers their first trajectories the moment they are
                # forked, so a long trajectory here does not keep them waiting.
                feeder = _Feeder(self, source)
                while not self._worker_ready() and (trajectory := source.next()) is not None:
                    outcome = self._here.replay(trajectory)
                    self._sizes.observe([outcome])  # the workers' next calls are sized from these too
                    yield outcome
                self._here.close()  # its sandbox (a child process, with isolation) is not needed any more
                feeder, handed_out = None, feeder.join()
                pending |= handed_out
            else:  # the job reads ahead while its workers start, so that its reading overlaps their start-up
                source.read_ahead(self._starting, _READ_AHEAD)
            self._await_workers()
            while True:
                self._submit(source, pending)
                if not pending:
                    self._all_replayed = True
                    return
                done = _first_done(pending)
                failure: Exception | None = None
                for future in done:  # every call that came back is counted (its worker stored it), then the error raised
                    index = pending.pop(future)
                    try:
                        outcomes, error = future.result()
                    except BrokenProcessPool as exc:
                        raise SandboxError(self._worker_died(index)) from exc
                    self._unanswered[index] -= len(outcomes)
                    for outcome in outcomes:
                        self._unanswered_ids[index].pop(outcome.record.trajectory_id, None)
                    self._sizes.observe(outcomes)
                    failure = failure or error
                    if failure is None:
                        self._submit(source, pending)  # before the job writes and counts what came back
                    yield from outcomes
                if isinstance(failure, _WorkerStopped):  # SIGINT reached a worker (Ctrl-C to the job's process group)
                    raise KeyboardInterrupt(failure.why)
                if failure is not None:
                    raise failure
        except BrokenProcessPool as exc:  # a pool broken before a call was sent to it: submit() raises it
            broken = [i for i, pool in enumerate(self._pools) if getattr(pool, "_broken", False)]
            raise SandboxError(self._worker_died(broken[0] if broken else 0)) from exc
        finally:
            if feeder is not None:
                pending |= feeder.join(quiet=True)
            for future in pending:
                future.cancel()

    def _submit(self, source: _SharedIterator, pending: dict[_Call, int]) -> None:
        """Queue up to :data:`_CALLS_PER_WORKER` calls for every worker, a batch of trajectories each (see
        :class:`_BatchSizes`); once there is none left, a call that replays the trajectory it holds to a worker that
        holds one and has no call queued."""
        queued = collections.Counter(pending.values())
        for depth in range(1, _CALLS_PER_WORKER + 1):
            for index, pool in enumerate(self._pools):
                if queued[index] < depth:
                    batch = source.take(self._sizes.size)
                    if not batch:
                        break
                    pending[pool.submit(_replay_in_process, batch, True)] = index
                    queued[index] += 1
                    self._unanswered[index] += len(batch)
                    self._unanswered_ids[index].update(dict.fromkeys(item.id for item in batch))
            else:
                continue
            for index, pool in enumerate(self._pools):  # none left
                if not queued[index] and self._unanswered[index]:
                    pending[pool.submit(_replay_in_process, [], False)] = index
            return

    def _worker_died(self, index: int) -> str:
        """What to tell of worker ``index``, whose process ended without answering (its pool broken): while it started
        (building its policy and sandbox), or while it replayed (a tool, the sandbox or the policy)."""
        ready = self._ready[index] if index < len(self._ready) else None
        started = ready is not None and ready.done() and not ready.cancelled() and ready.exception(timeout=0) is None
        head = f"replay worker {index + 1} of {self.workers} ended without answering"
        if not started:
            return (
                f"{head}, while it started (building its policy and sandbox): their code ended its process (os._exit, a crash "
                "in native code such as a segfault, or the system's out-of-memory killer: a local model too large for the "
                "memory left). What was stored stays; the next run continues from there."
            )
        ids = list(self._unanswered_ids[index])
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        held = f" while it held trajectories {shown} (one of them the cause)" if ids else ""
        return (
            f"{head}{held}: a tool, the sandbox or the policy ended its process (os._exit, a crash in native code such as a "
            "segfault, or the system's out-of-memory killer). Without isolation the sandbox runs inside the worker; where a "
            "tool is the cause, run with --isolation subprocess (with --tool-timeout and --memory-mb) to run the tools in a "
            "child process whose crash is recorded as that call's sandbox failure. What was stored stays; the next run "
            "continues from there."
        )

    def close(self) -> None:
        """End the workers and the fork server. When the job ends early (Ctrl-C, SIGTERM, an error; also before any
        trajectory was sent, the fork server still importing or the workers still building their policy), or a worker
        has not finished starting, the workers are stopped first (see :meth:`_stop_workers`): the job then ends within
        about a second instead of after every trajectory they were sent, or their warm-up (a model loading). A second
        Ctrl-C, SIGTERM or SIGHUP meanwhile kills them. A job that replayed everything and is stopped while its workers
        close their sandboxes stops them too, and still ends as stopped (``KeyboardInterrupt``, exit 130)."""
        try:
            early = not self._all_replayed or any(self._unanswered)
            said = _say_if_slow(_SLOW_STOP_TEXT) if early else None  # a stop that takes a while is said, not silent
            try:
                with second_signal_ends(self._kill_workers, first=None if early else self._stop_workers):
                    if early:
                        self._stop.set()  # a worker forked from now on skips its warm-up (see _init_process_worker)
                    if self._starter is not None:
                        _join(self._starter)  # it ends once the server forked the workers, or failed to
                    if early or not self._all_started():
                        self._stop_workers()
                    self._shut_pools()
            finally:
                if said is not None:
                    said.cancel()
        finally:
            try:
                self._here.close()
            finally:
                self._stop_server()

    def _all_started(self) -> bool:
        """Whether every worker has started (its warm-up done: see :func:`_started`)."""
        return len(self._ready) == len(self._pools) and all(ready.done() for ready in self._ready)

    def _stop_workers(self) -> None:
        """Tell every worker to replay nothing more: the calls queued for it then return at once, and a worker that
        handles the stop signal is sent SIGINT, which ends the replay it runs (see :func:`_replay_in_process`), or its
        warm-up (a policy still loading: see :func:`_init_process_worker`). It stores nothing of that trajectory, and
        closes its sandbox as it ends (:meth:`_shut_pools`)."""
        self._stop.set()  # (before ``listening`` is read: see _init_process_worker)
        for listening, process in zip(self._listening, self._processes(), strict=False):
            # one that does not handle SIGINT yet (SIGINT would end it with a traceback) finds the event set before its warm-up
            if listening.is_set():
                _signal_process(process, signal.SIGINT)

    def _kill_workers(self) -> None:
        """Kill every worker now (a second signal while they stop): their sandboxes' children end with them."""
        self._stop.set()
        for process in self._processes():
            _signal_process(process, signal.SIGKILL)

    def _processes(self) -> list[multiprocessing.process.BaseProcess | None]:
        """Each worker's process, in the order of ``self._pools`` (``None``: not started, or ended)."""
        found: list[multiprocessing.process.BaseProcess | None] = []
        for pool in self._pools:
            processes = getattr(pool, "_processes", None) or {}  # {pid: process}; None once the pool is shut
            found.append(next(iter(list(processes.values())), None))
        return found

    def _shut_pools(self) -> None:
        """End every worker (each closes its sandbox and policy first), all at once, and wait until each has ended.

        ``shutdown(wait=False)`` forgets a pool's processes, so a later ``shutdown(wait=True)`` waits for nothing: the
        job then stopped its fork server while workers were still closing their sandboxes, which cut them off. Each
        pool is shut down, waiting, on a thread of its own instead."""
        enders = [
            threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, name="ee-replay-worker-end")
            for pool in self._pools
        ]
        for ender in enders:
            ender.start()
        for ender in enders:
            _join(ender)


SLOW_STOP_S = 1.0
"""How long a job stopping early (Ctrl-C, SIGTERM, an error) waits for its workers before it says that it does."""

_SLOW_STOP_TEXT = (
    "ee-middleware: stopping the replay workers (each leaves the trajectory it is on unstored and closes its sandbox); "
    "a Ctrl-C or SIGTERM now kills them."
)


def _say_if_slow(text: str) -> threading.Timer:
    """A started timer that logs ``text`` as a warning after :data:`SLOW_STOP_S` unless cancelled first: without it a job
    whose workers took long to stop (a sandbox closing slowly) printed nothing between the Ctrl-C and its last line."""

    def say() -> None:
        logger.warning(text)

    timer = threading.Timer(SLOW_STOP_S, say)
    timer.daemon = True
    timer.name = "ee-replay-stop-said"
    timer.start()
    return timer


def _first_done(futures: Iterable[Future[Any]]) -> set[Future[Any]]:
    """``concurrent.futures.wait(futures, return_when=FIRST_COMPLETED)``'s done set, waking every
    :data:`~ee_middleware._lifetime.SIGNAL_CHECK_S` so that a signal is acted on at once (see there). And it never waits inside a
    :class:`threading.Condition`: a signal handler that raises (Ctrl-C, SIGTERM) there can leave the condition's lock
    released, and the stop then surfaced as ``RuntimeError: release unlocked lock``."""
    futures = list(futures)
    arrived: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(arrived.put)
    while True:
        try:
            arrived.get(timeout=SIGNAL_CHECK_S)
        except queue.Empty:
            continue
        return {future for future in futures if future.done()}


def _join(thread: threading.Thread) -> None:
    """``thread.join()``, waking every :data:`~ee_middleware._lifetime.SIGNAL_CHECK_S` to run the signal handlers (see there)."""
    while thread.is_alive():
        thread.join(SIGNAL_CHECK_S)


def _signal_process(process: multiprocessing.process.BaseProcess | None, sig: signal.Signals) -> None:
    """Send ``sig`` to ``process`` while it runs (nothing when it has ended).

    A worker that ended (killed, crashed) is reaped at once by the job's fork server, whose child it is, so its pid may
    already be another process's, while its pool still lists it: whether it ended is read from its exit status, which
    the server reports on the worker's sentinel, not from its pid."""
    if process is None or process.pid is None or _has_ended(process):
        return
    try:
        os.kill(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _has_ended(process: multiprocessing.process.BaseProcess) -> bool:
    """Whether ``process`` has ended: its exit status is known, or its sentinel says it has one (``exitcode`` reads it,
    without waiting; the pool's own thread may have read it first)."""
    try:
        return process.exitcode is not None
    except ValueError:  # closed
        return True


class _SharedIterator:
    """An iterator two threads take items from (``next`` under a lock); ``None`` once it is exhausted."""

    def __init__(self, items: Iterable[Trajectory | TrajectoryRows]) -> None:
        self._items = iter(items)
        self._ahead: collections.deque[Trajectory | TrajectoryRows] = collections.deque()
        self._lock = threading.Lock()

    def next(self) -> Trajectory | TrajectoryRows | None:
        with self._lock:
            return self._ahead.popleft() if self._ahead else next(self._items, None)

    def take(self, n: int) -> list[Trajectory | TrajectoryRows]:
        """The next ``n`` items (fewer at the end; none once it is exhausted)."""
        with self._lock:
            taken = [self._ahead.popleft() for _ in range(min(n, len(self._ahead)))]
            taken += itertools.islice(self._items, n - len(taken))
            return taken

    def read_ahead(self, keep_going: Callable[[], bool], limit: int) -> None:
        """Take items now, while ``keep_going()`` holds and fewer than ``limit`` are waiting; :meth:`next` gives them first."""
        with self._lock:
            while keep_going() and len(self._ahead) < limit and (item := next(self._items, None)) is not None:
                self._ahead.append(item)


class _Feeder:
    """A thread that waits until an executor's workers are forked, then hands them their first trajectories."""

    def __init__(self, executor: ProcessExecutor, source: _SharedIterator) -> None:
        self._executor, self._source = executor, source
        self._handed_out: dict[_Call, int] = {}
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="ee-replay-feeder", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        try:
            self._executor._await_workers()
            if not self._stopped.is_set():
                self._executor._submit(self._source, self._handed_out)
        except BaseException as exc:  # noqa: BLE001 - raised by join() on the job's thread
            self._error = exc

    def join(self, *, quiet: bool = False) -> dict[_Call, int]:
        """What the thread handed out; raises what stopped it (unless ``quiet``: the job is ending, and a thread still
        waiting for the workers then hands nothing out)."""
        if quiet:
            self._stopped.set()
        self._thread.join()
        if self._error is not None and not quiet:
            raise self._error
        return self._handed_out


def _signal_handlers() -> dict[int, Any]:
    """This process's SIGTERM, SIGINT and SIGHUP handlers (none outside the main thread: only it can set them)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}


RAY_JOB_ENV = "EE_RAY_JOB"
"""Set (to a token of the job's) in the environment of the local Ray instance a replay job starts, which every process of
it inherits: what tells them apart from any other process at the end (:func:`_shut_ray_down`)."""


def _shut_ray_down(ray: Any, token: str | None) -> None:
    """Stop the local Ray instance this job started (``token``: its :data:`RAY_JOB_ENV`), and every process of it:
    ``ray.shutdown`` stops the processes the driver started, but the agents its raylet started (``ray::DashboardAgent``,
    ``ray::RuntimeEnvAgent``) outlived a raylet a Ctrl-C had ended (a terminal's SIGINT reaches the whole process group),
    or a ``ray.init`` cut short before it knew its node, reparented to init, for about a minute. They are killed."""
    try:
        ray.shutdown()
    except Exception:  # a shutdown that fails leaves what it could not stop; the job's error goes on
        logger.debug("ray.shutdown() failed", exc_info=True)
    if token is None:
        return
    if os.environ.get(RAY_JOB_ENV) == token:
        del os.environ[RAY_JOB_ENV]
    marker = f"{RAY_JOB_ENV}={token}".encode()
    if _kill_inheriting(marker):  # a raylet cut short may still be starting an agent: looked for again a moment later
        time.sleep(0.5)
        _kill_inheriting(marker)


def _kill_inheriting(marker: bytes) -> bool:
    """SIGKILL every other process whose environment holds ``marker``; whether there was one."""
    found = False
    try:
        entries = os.listdir("/proc")  # (Linux; elsewhere nothing more is done)
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                inherited = marker in fh.read().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        if inherited:
            found = True
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)
    return found


def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


class _RayWorker:
    def __init__(self, spec: WorkerSpec) -> None:
        warnings.filterwarnings("ignore", category=ShadowedPluginWarning)  # said by the driver, once
        self._worker = _Worker(spec)
        self._worker.warm_up()  # while the driver reads the store
        gc.freeze()  # what the actor holds now lives as long as it does (as in a local worker)

    def ready(self) -> None:
        """Nothing: its result is there once the actor has been built."""

    def replay(
        self, trajectories: list[Trajectory | TrajectoryRows], hold_last: bool = True
    ) -> tuple[list[ReplayOutcome], Exception | None]:
        """The outcomes of the trajectory held from the call before and of ``trajectories`` but the last, which is held
        for the next call, its proposals being asked for (see :meth:`_Worker.replay_all`: a served policy's requests
        keep coming across calls); a call with no trajectories and ``hold_last`` false replays the one held. In order,
        and the error that stopped them (``None`` when none did): what was replayed before a policy that stopped
        working is kept, as with one worker. A call the driver cancelled (the job is ending) stops after the trajectory
        it is replaying."""
        import ray

        context = ray.get_runtime_context()
        uncancelled = itertools.takewhile(lambda _: not context.is_canceled(), trajectories)
        return _until_error(self._worker.replay_all(uncancelled, hold_last=hold_last))

    def close(self) -> None:
        self._worker.close()


def _sendable(exc: Exception) -> Exception:
    """``exc`` when it survives a pickle round trip (Ray sends it to the driver), else one of its base class that
    the job handles alike (:class:`PolicyError`, :class:`ModelError`, :class:`MissingExtraError`, else :class:`RuntimeError`) saying what
    it was: an error whose class needs keyword arguments, or holds a connection, would otherwise cost the batch's
    outcomes."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - whatever the class raises: its message still goes
        message = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
        for kind in (PolicyError, ModelError, MissingExtraError):
            if isinstance(exc, kind):
                return kind(message)
        return RuntimeError(message)


_RAY_CLOSE_TIMEOUT_S = 30.0
_RAY_CALLS_IN_FLIGHT = 2
"""Calls queued per actor: the next one starts the moment the last one ends, without waiting for the driver."""


class _BatchSizes:
    """How many trajectories one call to a worker (a Ray actor, a local process) carries: about ``target_s`` of replay
    (measured from the outcomes that came back), so that the cost per call (about a millisecond in Ray's driver and
    actor, a fraction of one for a local process) stays small beside trajectories that take milliseconds, while a
    trajectory that takes seconds still goes alone."""

    def __init__(self, target_s: float = 0.05, largest: int = 32) -> None:
        self.target_s = target_s
        self.largest = largest
        self.size = 1
        self._mean_s: float | None = None

    def observe(self, outcomes: Iterable[ReplayOutcome]) -> None:
        for outcome in outcomes:
            duration = outcome.record.duration_s
            if duration:
                self._mean_s = duration if self._mean_s is None else 0.8 * self._mean_s + 0.2 * duration
        if self._mean_s:
            self.size = max(1, min(self.largest, int(self.target_s / self._mean_s)))


class RayExecutor:
    """Replays on a Ray cluster with ``workers`` actors (each builds its sandbox and policy once).

    Joins ``address`` (or ``RAY_ADDRESS``) when given; otherwise starts a local Ray instance and
    stops it on :meth:`close`. Each call to an actor carries a batch of trajectories (see
    :class:`_BatchSizes`), and every actor has :data:`_RAY_CALLS_IN_FLIGHT` calls queued, so no actor waits for the
    driver between two. With ``replay_while_starting`` the driver replays trajectories itself until the first actor
    is built, as :class:`ProcessExecutor` does.
    """

    replay_while_starting: bool = False
    """Until the first actor is built, the driver replays trajectories itself (and the job writes them), as
    :attr:`ProcessExecutor.replay_while_starting` does for local workers (and off unless asked for, for the same reason)."""

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        *,
        address: str | None = None,
        num_cpus_per_worker: float = 1.0,
        replay_while_starting: bool | None = None,
    ) -> None:
        ray = import_optional("ray", extra="ray", purpose="run the replay on a Ray cluster (--executor ray)")
        self._ray = ray
        self._started = False
        self._token: str | None = None
        if replay_while_starting is not None:
            self.replay_while_starting = replay_while_starting
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address:
                kwargs["address"] = address
                trusted = os.environ.get(TRUSTED_REDACT_FNS_ENV)
                if trusted:  # a running cluster's workers have their nodes' environment: the store's redact_fn trusted here
                    kwargs["runtime_env"] = {"env_vars": {TRUSTED_REDACT_FNS_ENV: trusted}}
            else:  # a new local instance, even where an earlier `ray start` left its address behind
                kwargs.update(address="local", num_cpus=max(workers, 1))
                self._token = os.environ[RAY_JOB_ENV] = uuid.uuid4().hex  # inherited by every process of it
            # Ray's driver puts its own SIGTERM handler in place (and ray.shutdown does not take it back): the job's
            # (``ee improve`` stopping as on Ctrl-C, marking and reporting its run) is put back.
            handlers = _signal_handlers()
            try:
                ray.init(**kwargs)
            except BaseException as exc:  # Ctrl-C or SIGTERM while Ray starts: its processes go with the job
                _shut_ray_down(ray, self._token)
                job_handler = handlers.get(signal.SIGTERM)
                if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM and callable(job_handler):
                    _restore_signal_handlers(handlers)
                    job_handler(signal.SIGTERM, None)  # Ray's handler exited 15, silently: the job's stops it as Ctrl-C does
                raise
            finally:
                _restore_signal_handlers(handlers)
            self._started = True
        self._actors: list[Any] = []
        self._ready: list[Any] = []
        self._pending: dict[Any, int] = {}  # a call's result -> the index of the actor it was sent to
        try:  # an actor created before a failure or an interrupt (Ctrl-C while many are set up) is killed
            actor_class = ray.remote(num_cpus=num_cpus_per_worker)(_RayWorker)
            for _ in range(workers):
                self._actors.append(actor_class.remote(spec))
            self._ready = [actor.ready.remote() for actor in self._actors]
        except BaseException:
            self._ready = []  # (none is asked to close: none has replayed anything)
            self._close_actors()
            raise
        self._here = _JobReplays(spec)

    def map(self, trajectories: Iterable[Trajectory | TrajectoryRows]) -> Iterator[ReplayOutcome]:
        ray, pending = self._ray, self._pending
        source = iter(trajectories)
        sizes = _BatchSizes()
        unanswered = [0] * len(self._actors)  # trajectories sent to each actor whose outcomes have not come back
        try:
            for _ in range(_RAY_CALLS_IN_FLIGHT):  # queued now: each actor starts on them the moment it is built
                for index in range(len(self._actors)):
                    unanswered[index] += self._send(index, source, sizes.size)
            if self.replay_while_starting:
                while not ray.wait(self._ready, num_returns=1, timeout=0)[0] and (trajectory := next(source, None)) is not None:
                    outcome = self._here.replay(trajectory)
                    sizes.observe([outcome])  # the actors' next calls are sized from these too
                    yield outcome
                self._here.close()
            while pending:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done)
                outcomes, error = ray.get(done)
                unanswered[index] -= len(outcomes)
                sizes.observe(outcomes)
                if error is None:  # the next call before the job writes and counts what came back
                    sent = self._send(index, source, sizes.size)
                    unanswered[index] += sent
                    if not sent and unanswered[index] and index not in pending.values():
                        self._pending[self._actors[index].replay.remote([], False)] = index  # the trajectory it holds
                yield from outcomes
                if error is not None:
                    raise error
        finally:
            self._cancel_pending()

    def _send(self, index: int, source: Iterator[Trajectory | TrajectoryRows], size: int) -> int:
        """Send actor ``index`` the next ``size`` trajectories (fewer at the end); how many it was sent."""
        batch = list(itertools.islice(source, size))
        if batch:
            self._pending[self._actors[index].replay.remote(batch)] = index
        return len(batch)

    def _cancel_pending(self) -> None:
        pending, self._pending = list(self._pending), {}
        for ref in pending:
            try:
                self._ray.cancel(ref)
            except Exception:  # noqa: BLE001 - the actors are killed on close either way
                pass

    def close(self) -> None:
        """Cancel the calls still queued, close each built actor's sandbox and policy, then kill every actor (one still
        being built at once: it replayed nothing, and its close would wait for the build) and stop the Ray instance this
        executor started."""
        self._cancel_pending()  # (a consumer that stopped iterating without closing map) calls queued behind close's
        try:
            self._here.close()
        finally:
            self._close_actors()

    def _close_actors(self) -> None:
        # Close the sandboxes first: ray.kill ends an actor at once, and a sandbox child would only
        # notice a second later that its parent is gone. An actor still being built (its sandbox or policy loading: the
        # job stopped, or ended, before it was ready) has replayed nothing, and its close would wait for the build: it
        # is killed at once.
        try:
            built = set(self._ray.wait(self._ready, num_returns=len(self._ready), timeout=0)[0]) if self._ready else set()
        except Exception:  # noqa: BLE001 - then every actor is asked to close, as before
            built = set(self._ready)
        try:
            closing = [actor.close.remote() for actor, ready in zip(self._actors, self._ready, strict=False) if ready in built]
            self._ray.get(closing, timeout=_RAY_CLOSE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a dead or hung actor is killed below either way
            pass
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started:
            _shut_ray_down(self._ray, self._token)
