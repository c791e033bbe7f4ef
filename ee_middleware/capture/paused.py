"""The tools offered at the decision a run paused on for a human review, for the run that resumes its thread.

A run paused by ``HumanInTheLoopMiddleware`` (or ``interrupt()``, a breakpoint) is an ``interrupted`` trajectory ending
on the model's calls without an observation; the run resumed later with ``Command(resume=...)`` (another graph
invocation, possibly in another process, after a restart) carries those calls out as the reviewer decided them, and
capture records them as its first steps (the reviewed turn). Where a middleware chooses the tools per model call
(``LLMToolSelectorMiddleware``, a ``wrap_model_call`` setting ``request.tools``), what that decision was offered is in
none of the resumed run's spans: it is in the paused trajectory. :class:`PausedDecisions` finds it there: in the
trajectories the same span processor assembled (kept per thread, a bounded number), else in the store, which every
process recording the app writes (its spool, or its Parquet parts once compacted). A resumed run that calls no model
(a ``return_direct`` tool, a reviewed tool that raised) holds not even the state that decision was made in: its
reviewed turn is the paused trajectory's steps awaiting review (:meth:`PausedDecisions.awaiting_steps`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ee_middleware._files import atomic_write_text
from ee_middleware.records import Step, ToolCall, Trajectory, offered_tools
from ee_middleware.store.metadata import local_folder
from ee_middleware.store.registry import trajectory_columns

if TYPE_CHECKING:
    from ee_middleware.store.protocol import ExperienceStore

logger = logging.getLogger("ee_middleware.capture")

_Found = TypeVar("_Found")


class PausedDecisions:
    """The tools offered at the decisions that paused threads' runs, looked up by the runs that resume them
    (:data:`~ee_middleware.capture.assembler.PausedTools`, given to assembly by the span processor).

    :meth:`remember` keeps, for each interrupted trajectory of a thread, the schemas offered at each call awaiting
    review: in memory (a bounded number of threads) and, for a local store, in a small file per paused run in a folder
    per thread in the store (``paused/``), which every process recording into the store reads (a web app's workers, the
    app after a restart). One per paused run, not per thread: a sub-agent recorded on the outer run's thread that paused
    in one of its tools pauses that run too, and each has its note. A later run of the thread ends the notes whose calls
    it holds with an observation (it resumed them: the sub-agent's resumed run ends its own, not the outer run's); one
    that resumed none and does not pause again ends those of its app (the thread went on); one left unanswered for
    :data:`NOTE_LIFETIME_S` is pruned. :meth:`tools` answers from memory, else those files (also a store's one file per
    thread from before these folders), else (a pause recorded before these files, or by a store of another kind) from
    the store's tables, read only where tools may be chosen per call (a whole-store read per resume is no price for an
    app whose tools never change), else says it does not know (``None``). Thread-safe."""

    max_threads = 256
    """Threads whose paused decisions are kept in memory (the least recently paused are forgotten first: their files
    and the store still know them)."""

    def __init__(self, store: ExperienceStore | None) -> None:
        self._store = store
        root = local_folder(store)  # (a plug-in's root may be a database file: its pauses are read from its tables)
        self._folder = root / PAUSED_FOLDER if root is not None else None
        self._lock = threading.Lock()
        self._threads: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()  # thread: paused run's id: note
        self._awaiting: OrderedDict[str, list[Step]] = OrderedDict()  # paused run's id: its steps awaiting review
        self._chosen_per_call = False  # a trajectory with step tools was seen: this app's tools are chosen per call
        self._pruned_at = 0.0

    def remember(self, trajectory: Trajectory) -> None:
        """Note ``trajectory``'s calls awaiting review (an ``interrupted`` run's calls without an observation) with the
        tools their decision was offered, and whether its steps were offered different tools; give it every trajectory
        the processor assembles, after assembling it. It ends the notes of earlier paused runs of its thread whose calls
        it holds with an observation, else, where it does not pause again, those of its app (see the class docstring).
        A run stopped from outside rather than paused (cancelled: an ``interrupted`` trajectory whose ``error`` says
        why) neither notes a review nor ends one."""
        if not self._chosen_per_call and any(s.tools is not None for s in trajectory.steps):
            self._chosen_per_call = True
        if trajectory.thread_id is None:
            return
        if trajectory.status == "interrupted" and trajectory.error is not None:
            return  # stopped from outside, not paused: nobody reviews its calls (a cancelled resume may be resumed again)
        calls = [s for s in trajectory.steps if s.action.tool_call is not None and s.action.tool_call.id]
        awaiting = [s for s in calls if s.observation is None]
        pauses = trajectory.status == "interrupted" and bool(awaiting)
        answered = {(s.action.tool_call.id, _made(s.action.tool_call)) for s in calls if s.observation is not None}  # type: ignore[union-attr]
        self._forget(trajectory, answered, went_on=not pauses)
        if not pauses:
            return
        offered = {step.action.tool_call.id: trajectory.step_tools(step) for step in awaiting}  # type: ignore[union-attr]
        entry = {
            "thread_id": trajectory.thread_id,
            "trajectory_id": trajectory.id,
            "app": trajectory.app,
            "started_at": trajectory.started_at.isoformat(),
            "calls": offered,
            "made": {step.action.tool_call.id: _made(step.action.tool_call) for step in awaiting},  # type: ignore[union-attr]
        }
        with self._lock:
            self._threads.setdefault(trajectory.thread_id, {})[trajectory.id] = entry
            self._threads.move_to_end(trajectory.thread_id)
            while len(self._threads) > self.max_threads:
                self._threads.popitem(last=False)
            self._awaiting[trajectory.id] = awaiting
            while len(self._awaiting) > self.max_threads:
                self._awaiting.popitem(last=False)
        if self._folder is not None:
            try:
                self._folder.mkdir(exist_ok=True)
                self._write(self._file(trajectory.thread_id, trajectory.id), entry)
                self._prune()
            except (OSError, ValueError) as exc:  # the store's tables still hold the pause
                logger.warning("ee-middleware capture: could not note a paused run's decision in %s (%s).", self._folder, exc)

    def tools(
        self, thread_id: str | None, call_ids: Sequence[str], before_ns: int, chosen_per_call: bool = True
    ) -> list[dict[str, Any]] | None:
        """The schemas offered at the decision of an interrupted run of ``thread_id`` started before ``before_ns`` that
        made any of ``call_ids`` (the latest such run's), or ``None`` when it is not known (see the class docstring;
        ``chosen_per_call``: the resuming run shows tools chosen per call, so the store's tables are worth reading)."""
        if thread_id is None or not call_ids:
            return None
        before = dt.datetime.fromtimestamp(before_ns / 1e9, tz=dt.UTC)
        found = self._from_notes(thread_id, lambda entries: _offered(entries, call_ids, before))
        if found is not None:  # kept for the resume's other reviewed turns: remember() of the resume ends it
            return found
        if self._store is None or not (chosen_per_call or self._chosen_per_call):
            return None
        try:
            return paused_decision_tools(self._store, thread_id, call_ids, before)
        except Exception as exc:  # noqa: BLE001 - not knowing is the fallback: the reviewed turn is then not taught
            logger.warning(
                "ee-middleware capture: could not read the tools of a paused run's decision from %r (%s); the run resuming "
                "it is recorded without them, and its reviewed turn may not be taught.",
                self._store,
                type(exc).__name__,
            )
            return None

    def awaiting_steps(self, thread_id: str | None, call_ids: Sequence[str], before_ns: int) -> list[Step] | None:
        """The steps awaiting review of the decision that made any of ``call_ids``, in the latest interrupted run of
        ``thread_id`` started before ``before_ns``: the paused trajectory's own (the state the model decided in, its
        calls as it made them, in its order), or ``None`` when that run is not known. For a run that resumed it and
        called no model (a ``return_direct`` tool; a reviewed tool that raised and ended the run), whose spans hold
        neither that state nor the decision's calls. Found as :meth:`tools` finds its notes, the steps themselves in
        memory or else read from the store (the paused run is written there before the resume is recorded)."""
        if thread_id is None or not call_ids:
            return None
        before = dt.datetime.fromtimestamp(before_ns / 1e9, tz=dt.UTC)
        entry = self._from_notes(thread_id, lambda entries: _latest(entries, call_ids, before))
        try:
            paused_id = str(entry["trajectory_id"]) if entry is not None else None
            with self._lock:
                steps = self._awaiting.get(paused_id) if paused_id is not None else None
            if steps is None and self._store is not None:
                if paused_id is None:
                    row = _latest_paused_row(self._store, thread_id, call_ids, before)
                    paused_id = None if row is None else row["id"]
                if paused_id is not None:
                    steps = [s for s in self._store.get(paused_id).steps if s.action.tool_call is not None and s.observation is None]
        except Exception as exc:  # noqa: BLE001 - not knowing is the fallback: the reviewed turn is then not taught
            logger.warning(
                "ee-middleware capture: could not read a paused run's decision from %r (%s); the run resuming it without a "
                "model call is recorded without its reviewed turn.",
                self._store,
                type(exc).__name__,
            )
            return None
        if not steps:
            return None
        wanted = set(call_ids)
        turn = next((s.decision_index for s in steps if s.action.tool_call is not None and s.action.tool_call.id in wanted), None)
        return None if turn is None else [s for s in steps if s.decision_index == turn]

    def _from_notes(self, thread_id: str, pick: Callable[[list[dict[str, Any]]], _Found | None]) -> _Found | None:
        """What ``pick`` finds among ``thread_id``'s notes in memory, else (where it finds nothing there) among those in
        the store's files."""
        with self._lock:
            entries = list(self._threads.get(thread_id, {}).values())
        found = pick(entries)
        if found is None and self._folder is not None:
            found = pick([entry for entry, _ in self._read(thread_id)])
        return found

    def _thread_folder(self, thread_id: str) -> Path:
        assert self._folder is not None
        return self._folder / _hashed(thread_id)

    def _file(self, thread_id: str, trajectory_id: str) -> Path:
        return self._thread_folder(thread_id) / f"{_hashed(trajectory_id)}.json"

    def _write(self, path: Path, entry: dict[str, Any]) -> None:
        # ASCII JSON: a thread id or a schema with text UTF-8 cannot encode (a lone surrogate) is written escaped
        for attempt in range(2):
            try:
                path.parent.mkdir(exist_ok=True)
                atomic_write_text(path, json.dumps(entry), fsync=False)
                return
            except FileNotFoundError:  # the thread's folder, empty, was removed meanwhile (its last note ended)
                if attempt:
                    raise

    def _prune(self) -> None:
        """Remove the notes of reviews left unanswered for :data:`NOTE_LIFETIME_S` and temporary files a killed write
        left (at most once an hour per process)."""
        now = time.time()
        if now - self._pruned_at < 3600 or self._folder is None:
            return
        self._pruned_at = now
        for path in self._folder.iterdir():
            with contextlib.suppress(OSError):
                age = now - path.stat().st_mtime
                if path.is_dir():  # a thread's notes: untouched (none added or ended) for that long, every one is old
                    for note in path.iterdir():
                        if age > NOTE_LIFETIME_S or now - note.stat().st_mtime > (NOTE_LIFETIME_S if note.suffix == ".json" else 3600):
                            note.unlink()
                    if age > 3600:
                        path.rmdir()  # only when empty
                elif age > NOTE_LIFETIME_S or (path.suffix != ".json" and age > 3600):
                    path.unlink()

    def _read(self, thread_id: str) -> list[tuple[dict[str, Any], Path]]:
        """The notes of ``thread_id`` in the store's files, with their paths (the one file per thread a store written
        before these folders holds, too)."""
        assert self._folder is not None
        paths = [self._folder / f"{_hashed(thread_id)}.json"]
        with contextlib.suppress(OSError):
            paths += sorted(p for p in self._thread_folder(thread_id).iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        notes = []
        for path in paths:
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(entry, dict) and entry.get("thread_id") == thread_id:
                notes.append((entry, path))
        return notes

    def _forget(self, trajectory: Trajectory, answered: set[tuple[str, str]], went_on: bool) -> None:
        """End the notes of ``trajectory``'s thread whose calls it holds with an observation (``answered``: their ids and
        :func:`_made`; a call that only shares the id, as providers number calls per reply, is another), else, where
        it ``went_on`` without pausing again, those of its app; only notes of runs started before it (a run of the thread
        from before the pause, assembled late by another process, leaves them)."""
        thread_id = trajectory.thread_id
        assert thread_id is not None
        with self._lock:
            notes: list[tuple[dict[str, Any], Path | None]] = [(entry, None) for entry in self._threads.get(thread_id, {}).values()]
        if self._folder is not None:
            notes += self._read(thread_id)
        earlier = [(entry, path) for entry, path in notes if _started(entry) < trajectory.started_at]
        ended = [(entry, path) for entry, path in earlier if any(_answers(entry, call_id, made) for call_id, made in answered)]
        if not ended and went_on:  # a run from new input: the thread went on (its app's reviews were not answered)
            ended = [(entry, path) for entry, path in earlier if entry.get("app") in (None, trajectory.app)]
        if not ended:
            return
        with self._lock:
            kept = self._threads.get(thread_id, {})
            for entry, _ in ended:
                kept.pop(str(entry.get("trajectory_id")), None)
                self._awaiting.pop(str(entry.get("trajectory_id")), None)
            if not kept:
                self._threads.pop(thread_id, None)
        for _, path in ended:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
        if self._folder is not None:
            with contextlib.suppress(OSError):
                self._thread_folder(thread_id).rmdir()  # only when empty: none of its notes is left


NOTE_LIFETIME_S = 30 * 24 * 3600
"""How long the note of a review nobody answered is kept (a resume after that is recorded as one whose pause is not
known: its reviewed turn is taught only with tools its own run was offered)."""

PAUSED_FOLDER = "paused"
"""The folder of a local store holding the notes of runs paused for a human review (see :class:`PausedDecisions`): a
folder per thread (``paused/<hash of the thread id>/``) holding a small file per paused run (``<hash of its
trajectory id>.json``). A store written before holds one file per thread (``paused/<hash of the thread id>.json``),
still read."""


def _hashed(text: str) -> str:
    """A file name for ``text`` (a thread or trajectory id: any text, even one UTF-8 cannot encode)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _started(entry: dict[str, Any] | None) -> dt.datetime:
    """When the paused run of a note started (the latest time for no note or an unreadable one: nothing to end)."""
    try:
        return dt.datetime.fromisoformat(str((entry or {})["started_at"]))
    except (KeyError, ValueError):
        return dt.datetime.max.replace(tzinfo=dt.UTC)


def _calls(entry: dict[str, Any]) -> dict[str, Any]:
    """The calls awaiting review a note holds, by id (none for an unreadable one)."""
    calls = entry.get("calls")
    return calls if isinstance(calls, dict) else {}


def _made(call: ToolCall) -> str:
    """A call's tool name and arguments, as a note keeps them: a resumed run's copy of a call has the same."""
    return json.dumps([call.name, call.arguments], sort_keys=True, default=str)


def _answers(entry: dict[str, Any], call_id: str, made: str) -> bool:
    """Whether a call with ``call_id`` and :func:`_made` ``made`` is one a note awaits (by its id alone in a note
    written before notes kept what the calls were)."""
    kept = entry.get("made")
    return call_id in _calls(entry) and (not isinstance(kept, dict) or kept.get(call_id) in (None, made))


def _latest(entries: Sequence[dict[str, Any]], call_ids: Sequence[str], before: dt.datetime) -> dict[str, Any] | None:
    """The latest of the :meth:`PausedDecisions.remember` ``entries`` whose run started before ``before`` and made any
    of ``call_ids``."""
    made = [
        entry for entry in entries if isinstance(entry, dict) and _started(entry) < before and any(c in _calls(entry) for c in call_ids)
    ]
    return max(made, key=_started) if made else None  # an unreadable start is the latest time, so never before


def _offered(entries: Sequence[dict[str, Any]], call_ids: Sequence[str], before: dt.datetime) -> list[dict[str, Any]] | None:
    """The schemas the latest of the :meth:`PausedDecisions.remember` ``entries`` whose run started before ``before``
    and made any of ``call_ids`` says that decision was offered."""
    entry = _latest(entries, call_ids, before)
    if entry is None:
        return None
    calls = _calls(entry)
    for call_id in call_ids:
        schemas = calls.get(call_id)
        if isinstance(schemas, list):
            return [schema for schema in schemas if isinstance(schema, dict)]
    return None


def paused_decision_tools(
    store: ExperienceStore, thread_id: str, call_ids: Sequence[str], before: dt.datetime
) -> list[dict[str, Any]] | None:
    """The schemas offered at the decision that made any of ``call_ids`` awaiting review (a tool call step without an
    observation) in the latest ``interrupted`` trajectory of ``thread_id`` in ``store`` started before ``before``, or
    ``None`` when there is none. A store with lazy reads (``scan``: the local store) reads only those rows."""
    row = _latest_paused_row(store, thread_id, call_ids, before)
    if row is None:
        return None
    names = None if row["offered_tools_json"] is None else json.loads(row["offered_tools_json"])
    return offered_tools(json.loads(row["tools_json"] or "[]"), names)


def _latest_paused_row(store: ExperienceStore, thread_id: str, call_ids: Sequence[str], before: dt.datetime) -> dict[str, Any] | None:
    """The latest ``interrupted`` trajectory of ``thread_id`` in ``store`` started before ``before`` with a call of
    ``call_ids`` awaiting review, as a row: its ``id``, ``started_at``, ``tools_json`` and that step's
    ``offered_tools_json``; ``None`` when there is none (see :func:`paused_decision_tools`)."""
    import polars as pl

    awaiting = (pl.col("action_kind") == "tool_call") & pl.col("tool_call_id").is_in(list(call_ids)) & pl.col("observation").is_null()
    paused = (pl.col("thread_id") == thread_id) & (pl.col("status") == "interrupted") & (pl.col("started_at") < before)
    if hasattr(store, "scan"):
        steps = store.scan("steps").filter(awaiting).select("trajectory_id", "offered_tools_json").collect()
        if steps.is_empty():
            return None
        candidates = pl.col("id").is_in(steps["trajectory_id"].unique().implode())
        trajectories = store.scan("trajectories").filter(candidates & paused).select("id", "started_at", "tools_json").collect()
    else:  # a store without lazy reads: its frames
        columns = trajectory_columns(store, ["id", "started_at", "tools_json", "thread_id", "status"])  # (not the conversations)
        trajectories = columns.filter(paused).select("id", "started_at", "tools_json")
        if trajectories.is_empty():
            return None
        steps = store.steps(trajectories["id"].to_list()).filter(awaiting).select("trajectory_id", "offered_tools_json")
    found = trajectories.join(steps, left_on="id", right_on="trajectory_id").sort("started_at", maintain_order=True)
    return None if found.is_empty() else found.row(found.height - 1, named=True)
