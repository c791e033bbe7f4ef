"""Runs of a job: one folder per run, one manifest per stage, a lock, and the watermark of the last successful run.

::

    RUNS/
      .lock                     held (fcntl) for the whole of a run (and a prune): a second run fails at once, naming the holder
      base-models/              base models converted once from GGUF, shared by every run
      20261129-031500-042a7/    one run (ids sort by start time)
        config.toml             the configuration file as the run started (its stages read this copy)
        run.json                status, config and its hash, stage order, watermark, budget cuts, outcome
        stages/select.json      one manifest per stage: status, inputs with hashes, outputs, timings, decisions
        ...

Every file is replaced atomically (:mod:`ee_middleware._files`), so a run killed at any moment
leaves readable manifests: a stage whose manifest says ``done`` is finished and is not redone; any
other stage runs again from its start (each stage is idempotent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_write_text
from ee_middleware._locks import holder_lock, lock_held
from ee_middleware._version import __version__
from ee_middleware.jobs.errors import JobError, RunConfigChangedError, RunLockedError, RunNotFoundError
from ee_middleware.messages import finite_or_null

RUN_SCHEMA_VERSION = 1
RUN_FILE = "run.json"
STAGES_DIR = "stages"
LOCK_FILE = ".lock"
PRUNING_DIR = ".pruning"
"""Where ``ee runs prune`` moves a run's folder before deleting it (a prune cut short leaves it there, never half a run)."""

RUNNING, SUCCEEDED, NOTHING_NEW, FAILED, STOPPED, ABANDONED = "running", "succeeded", "nothing-new", "failed", "stopped", "abandoned"
DAMAGED = "damaged"
"""The status :meth:`RunsDir.list` gives a run whose run.json cannot be read (:attr:`Run.damage` says why); no job
continues, prunes or counts such a run."""
RESUMABLE = frozenset({RUNNING, FAILED, STOPPED})
"""A run in one of these states is continued by the next call with the same configuration (``running``
found while the lock is free means the process was killed)."""
FINISHED = frozenset({SUCCEEDED, NOTHING_NEW})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def ids_digest(ids: Iterable[str]) -> str:
    """A hash of a set of ids (order does not matter)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def file_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path", "sha256", "bytes"}`` of a file, for a manifest's inputs and outputs."""
    p = Path(path)
    return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}


class Run:
    """One run's folder: ``run.json`` and the stage manifests."""

    def __init__(self, folder: Path, data: dict[str, Any], *, damage: str | None = None) -> None:
        self.folder = folder
        self.data = data
        self.damage = damage
        """Why the run's run.json cannot be read (:meth:`damaged`), or None."""

    def __repr__(self) -> str:
        return f"Run({self.id!r}, {self.status!r})"

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def app(self) -> str | None:
        """The app the run's job worked on (``app`` in its configuration's job table), if it names one."""
        app = job_table(self).get("app")
        return str(app) if app is not None else None

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @classmethod
    def load(cls, folder: Path) -> Run:
        """The run in ``folder``; :class:`JobError` naming its run.json and the fix when that cannot be read, is not
        JSON, or is not a run's (an object with an ``id`` and a ``status``)."""
        path = folder / RUN_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JobError(_damaged(path, str(exc), "restore it from a backup or remove the run's folder")) from exc
        problem = _not_a_record(data, ("id", "status"))
        if not problem and "stage_order" in data and data["stage_order"] is None:
            problem = "its 'stage_order' is null, not an array of strings"
        problem = problem or _wrong_field(data, RUN_FIELDS)
        if problem:
            raise JobError(_damaged(path, problem, "restore it from a backup or remove the run's folder"))
        return cls(folder, data)

    @classmethod
    def damaged(cls, folder: Path, why: str) -> Run:
        """A run whose run.json cannot be read, as :meth:`RunsDir.list` lists it: its folder's name as its id, the status
        :data:`DAMAGED` and ``why`` as its error (``ee runs list`` shows it; ``ee runs show`` gives the error). It is never
        saved: its run.json stays as it is, for the user to restore."""
        return cls(folder, {"id": folder.name, "status": DAMAGED, "error": why, "stage_order": []}, damage=why)

    def save(self) -> None:
        if self.damage is not None:  # never overwrite the damaged file with this stand-in's few fields
            raise JobError(self.damage)
        self.data["updated_at"] = now()
        text = json.dumps(finite_or_null(self.data), indent=2, ensure_ascii=False, default=str, allow_nan=False)
        atomic_write_text(self.folder / RUN_FILE, text + "\n")

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    # --- stages -------------------------------------------------------------------------------

    def stage_path(self, name: str) -> Path:
        return self.folder / STAGES_DIR / f"{name}.json"

    def stage(self, name: str) -> dict[str, Any] | None:
        """The stage's manifest, or None when it never started."""
        path = self.stage_path(name)
        if not path.is_file():
            return None
        fix = (
            f"restore it from a backup, or, when no stage after it has finished, remove it (the stage then counts as not "
            f"run: continuing run {self.id} runs it again); else start a new run (ee improve --new-run)"
        )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JobError(_damaged(path, str(exc), fix)) from exc
        problem = _not_a_record(manifest, ("stage", "status")) or _wrong_field(manifest, STAGE_FIELDS)
        if problem:
            raise JobError(_damaged(path, problem, fix))
        return manifest

    def stages(self) -> list[dict[str, Any]]:
        """Every stage's manifest in the run's stage order (those never started are left out). A run that succeeded
        whose stages folder is gone (or a file) is damaged: :class:`JobError` naming it (a manifest removed alone is
        what the error for a damaged one advises)."""
        order = self.data.get("stage_order", [])
        if self.data.get("status") == SUCCEEDED and order and not (self.folder / STAGES_DIR).is_dir():
            raise JobError(
                f"The run in {self.folder} succeeded, but its stages folder {self.folder / STAGES_DIR} is not there (removed "
                "since, or a file in its place): what its stages did is not known. Restore the folder from a backup, or "
                "remove the run's folder."
            )
        return [m for m in (self.stage(name) for name in order) if m is not None]

    def write_stage(self, name: str, manifest: dict[str, Any]) -> None:
        path = self.stage_path(name)
        path.parent.mkdir(exist_ok=True)
        text = json.dumps(finite_or_null(manifest), indent=2, ensure_ascii=False, default=str, allow_nan=False)
        atomic_write_text(path, text + "\n")

    def stage_done(self, name: str) -> bool:
        manifest = self.stage(name)
        return manifest is not None and manifest.get("status") == "done"

    def outputs(self, name: str) -> dict[str, Any]:
        """A finished stage's outputs (empty when it has none or did not finish)."""
        manifest = self.stage(name)
        return dict(manifest.get("outputs") or {}) if manifest and manifest.get("status") == "done" else {}


_RUN_ID = re.compile(r"(\d{8}-\d{6}-\d{3})[0-9a-f]{2}")
"""A run's id (:meth:`RunsDir._new_id`): its millisecond and a random byte."""
_BEING_MADE_S = 5.0
"""How old a run-named folder without a run.json must be to be listed as a damaged run (not one being made)."""


class RunsDir:
    """The folder that holds a job's runs (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"RunsDir({str(self.root)!r})"

    def lock(self, *, doing: str | None = None) -> contextlib.AbstractContextManager[None]:
        """Hold the runs folder's lock; :class:`RunLockedError` at once when another process holds it. ``doing``: what
        the caller, not a run, wanted to do (``prune its runs``), for the error."""
        self.root.mkdir(parents=True, exist_ok=True)
        overlap = f"the runs folder cannot {doing} while a run is going" if doing else "two runs never overlap"
        return holder_lock(
            self.root / LOCK_FILE,
            lambda holder: RunLockedError(
                f"Another run holds {self.root / LOCK_FILE} ({holder}); {overlap}. Wait for it to finish "
                "(`ee runs list` shows it), or stop that process; the lock is released when it exits, even if it is killed."
            ),
        )

    def locked_by_other(self) -> bool:
        """Whether some process holds the lock now (a ``running`` run is then really running)."""
        return lock_held(self.root / LOCK_FILE)

    def shown_status(self, run: Run, *, held: bool | None = None) -> str:
        """A run's status as ``ee runs list`` and ``ee runs show`` print it: ``running (killed?)`` for a run that says
        ``running`` while no process holds the lock (its process was killed; the next ``ee improve`` continues it).
        ``held``: :meth:`locked_by_other`, when the caller asked already."""
        if run.status != RUNNING:
            return run.status
        return run.status if (self.locked_by_other() if held is None else held) else f"{run.status} (killed?)"

    def _new_id(self) -> str:
        """A run id that sorts after every run's before it (``latest`` is the last in order, and the watermark is the
        last successful run's): the time to the millisecond and a random byte. A run started in the same millisecond as
        the newest one waits for the next millisecond rather than take a random byte that would sort it before that run.
        A clock behind the newest run's id (stepped back by NTP, or a run made on a clock that was ahead: a VM's bad
        clock a year ahead) gives the millisecond after that id's instead: a later run sorted before it, and every
        following night took that run's watermark and selected the same trajectories again. ``started_at`` in
        run.json keeps the clock's time."""
        names = (p.name for p in self.root.iterdir()) if self.root.is_dir() else iter(())
        newest = max((m[1] for name in names if (m := _RUN_ID.fullmatch(name))), default="")
        while True:
            stamp = datetime.now(UTC)
            prefix = f"{stamp:%Y%m%d-%H%M%S}-{stamp.microsecond // 1000:03d}"
            if prefix > newest:
                return prefix + secrets.token_hex(1)
            if prefix < newest:
                after = datetime.strptime(newest, "%Y%m%d-%H%M%S-%f").replace(tzinfo=UTC) + timedelta(milliseconds=1)
                return f"{after:%Y%m%d-%H%M%S}-{after.microsecond // 1000:03d}" + secrets.token_hex(1)
            time.sleep(0.001)

    def create(self, job: str, config: dict[str, Any], config_hash: str) -> Run:
        run_id = self._new_id()
        folder = self.root / run_id
        (folder / STAGES_DIR).mkdir(parents=True)
        run = Run(
            folder,
            {
                "schema_version": RUN_SCHEMA_VERSION,
                "ee_middleware_version": __version__,
                "job": job,
                "id": run_id,
                "status": RUNNING,
                "started_at": now(),
                "finished_at": None,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "attempts": 1,
                "config_hash": config_hash,
                "config": config,
                "stage_order": [],
                "budget_cuts": [],
                "outcome": {},
            },
        )
        run.save()
        return run

    def list(self) -> list[Run]:
        """Every run, oldest first. A folder whose run.json cannot be read is listed too, as :meth:`Run.damaged` (status
        :data:`DAMAGED`, the reason in :attr:`Run.damage`), so that it is seen, and ``latest`` never quietly means an
        older run."""
        if not self.root.is_dir():
            return []
        runs = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and self._run_folder(p)):
            try:
                runs.append(Run.load(folder))
            except JobError as exc:
                runs.append(Run.damaged(folder, str(exc)))
        return runs

    @staticmethod
    def _run_folder(folder: Path) -> bool:
        """Whether ``folder`` is a run's: it holds a run.json (a file, or whatever stands there: a damaged run), or is
        named as runs are and lost its run.json (a run being made writes it at once: a folder of a few seconds is not
        one yet)."""
        if os.path.lexists(folder / RUN_FILE):
            return True
        try:
            return _RUN_ID.fullmatch(folder.name) is not None and time.time() - folder.stat().st_mtime > _BEING_MADE_S
        except OSError:
            return False

    def get(self, run_id: str, *, scope: Mapping[str, Any] | None = None) -> Run:
        """The run whose id is, or starts with, ``run_id`` (``latest`` for the newest, of ``scope`` where given: see
        :meth:`last_successful`); :class:`JobError` naming the file and the fix when that run's run.json cannot be read."""
        runs = self.list()
        if run_id == "latest" and scope:
            runs = self._of(scope, runs)  # (several apps' jobs share a runs folder: the newest of the configured one)
        if run_id == "latest" and runs:
            matches = runs[-1:]
        else:
            matches = [r for r in runs if r.id == run_id] or [r for r in runs if r.id.startswith(run_id)]
        if len(matches) != 1:
            found = "several runs match" if matches else "no run matches"
            raise RunNotFoundError(f"{found} {run_id!r} in {self.root}. See `ee runs list --runs {self.root}`.")
        if matches[0].damage is not None:
            which = "the newest run, which `latest` names" if run_id == "latest" else "this run"
            raise JobError(f"{matches[0].damage} (It is {which}; `ee runs list` shows the others.)")
        return matches[0]

    def resumable(
        self,
        config_hash: str,
        scope: Mapping[str, Any] | None = None,
        *,
        hash_like: Callable[[Run], str] | None = None,
        refused: Callable[[Run], str | None] | None = None,
    ) -> Run | None:
        """The newest unfinished run (of ``scope``, see :meth:`last_successful`), to continue; :class:`RunConfigChangedError`
        when it ran another configuration. ``hash_like(run)``: this configuration's hash written as ``run`` wrote its
        own (see :meth:`ImproveConfig.config_hash`'s ``recorded``), also accepted. ``refused(run)``, for a run of another
        configuration: ``None`` when the run may go on with this one anyway (the caller then records the change), else
        what differs, for the error."""
        unfinished = [r for r in self._of(scope) if r.status in RESUMABLE]
        if not unfinished:
            return None
        run = unfinished[-1]
        recorded = run.data.get("config_hash")
        if recorded != config_hash and (hash_like is None or recorded != hash_like(run)):
            why = refused(run) if refused is not None else None
            if refused is not None and why is None:
                return run
            raise RunConfigChangedError(
                f"Run {run.id} in {self.root} is {run.status} and was started with another configuration (hash "
                f"{str(recorded)[:12]}, now {config_hash[:12]}), so it cannot be continued with this one"
                + (f": {why}" if why else ".")
                + " Restore its configuration to continue it, or pass --new-run to mark it abandoned and start a new run "
                "(from its first stage)."
            )
        return run

    def abandon_unfinished(self, reason: str, scope: Mapping[str, Any] | None = None, *, config: Any = None) -> list[str]:
        """Mark every unfinished run (of ``scope``) ``abandoned`` (its folder stays, for the record); their ids.

        An improve run's candidate goes with it: one it registered that is still ``candidate`` (its evaluation may have
        loaded it on the replicas) is retired with ``run ID abandoned (REASON)`` and unloaded from the replicas, as the
        promote stage retires a candidate that failed its gate (:func:`ee_middleware.jobs.deploy.retire_abandoned`;
        ``abandoned_candidate`` in the run's outcome). Left there, nothing would ever retire it: each abandoned night
        kept one more adapter loaded (a LoRA slot and memory on vLLM) and one more ``candidate`` in the registry. A
        registry that cannot be written stops here, before the run is marked (the next call tries again). ``config``: the
        job's :class:`~ee_middleware.jobs.config.ImproveConfig` (its registry and replicas); without it no candidate is
        retired."""
        ids = []
        for run in self._of(scope):
            if run.status in RESUMABLE:
                retired: dict[str, Any] = {}
                if run.data.get("job") == "improve" and config is not None:
                    from ee_middleware.jobs.deploy import retire_abandoned

                    retired = retire_abandoned(run, f"run {run.id} abandoned ({reason})", config)
                outcome = {**run.data.get("outcome", {}), "abandoned": reason}
                if retired:
                    outcome["abandoned_candidate"] = retired
                run.update(status=ABANDONED, finished_at=now(), outcome=outcome)
                ids.append(run.id)
        return ids

    def prune(self, keep: int, *, dry_run: bool = False, registry: str | None = None) -> dict[str, Any]:
        """Remove old runs' folders, keeping the ``keep`` newest runs and every run something still needs:

        - an unfinished run (``running``, ``failed``, ``stopped``): the next call continues it;
        - each job's watermark: the newest ``succeeded`` run of each store and app (:meth:`last_successful`), where the
          next run starts;
        - the live adapter's lineage: a run whose candidate is live, or the adapter a rollback returns to, in the
          registry it registered into (its datasets, evaluation and report; a registry that cannot be read keeps every
          run that registered into it, and so does one a run records as ``module:factory`` where ``registry``, the
          registry the job's own configuration names, is another: a runs folder's records choose no code to import).

        The folder lock is held throughout (a job that is running refuses it, and no job starts meanwhile). A folder is
        moved into ``.pruning/`` before it is deleted, so that one cut short is never listed as a damaged run; a later
        prune finishes it. Folders other than runs (``base-models/``) are never touched. ``dry_run``: only say what would
        go. Returns ``{"root", "keep", "dry_run", "removed": [{"id", "status", "bytes"}], "kept": [{"id", "status",
        "why"}], "bytes_freed"}``, oldest first."""
        if keep < 0:
            raise JobError(f"keep must be 0 or more (the newest runs kept besides those still needed), not {keep}.")
        if not self.root.is_dir():
            return {"root": str(self.root), "keep": keep, "dry_run": dry_run, "removed": [], "kept": [], "bytes_freed": 0}
        with self.lock(doing="prune its runs"):
            runs = self.list()
            needed = self._needed(runs, registry)
            newest = {r.id for r in runs[len(runs) - keep :]} if keep else set()
            removed, kept = [], []
            for run in runs:
                why = needed.get(run.id) or (f"one of the {keep} newest" if run.id in newest else None)
                if run.damage is not None:  # nothing tells whether it is still needed
                    why = f"damaged: its {RUN_FILE} cannot be read; restore it, or remove the folder by hand"
                if why:
                    kept.append({"id": run.id, "status": run.status, "why": why})
                else:
                    removed.append({"id": run.id, "status": run.status, "bytes": _folder_bytes(run.folder)})
            if not dry_run:
                trash = self.root / PRUNING_DIR
                for entry in removed:
                    trash.mkdir(exist_ok=True)
                    target = trash / entry["id"]
                    (self.root / entry["id"]).replace(target)
                if trash.is_dir():  # this prune's, and what one cut short left
                    import shutil

                    shutil.rmtree(trash)
        freed = sum(entry["bytes"] for entry in removed)
        return {"root": str(self.root), "keep": keep, "dry_run": dry_run, "removed": removed, "kept": kept, "bytes_freed": freed}

    def _needed(self, runs: list[Run], registry: str | None = None) -> dict[str, str]:
        """Run id -> why it is kept whatever ``keep`` says (see :meth:`prune`), every reason that holds."""
        needed: dict[str, list[str]] = {}
        for run in runs:
            if run.status in RESUMABLE:
                needed.setdefault(run.id, []).append(f"unfinished ({run.status}): the next call continues it")
        scopes: list[dict[str, Any]] = []
        for run in runs:
            table = job_table(run)
            scope = {"store": table.get("store"), "app": table.get("app")}
            if scope not in scopes:
                scopes.append(scope)
        for scope in scopes:
            last = self.last_successful(scope)
            if last is not None:
                needed.setdefault(last.id, []).append(f"the watermark of app {scope['app']}: the next run starts after it")
        opened: dict[str, Any] = {}
        for run in runs:
            register = run.outputs("register")
            # the run record's outcome names the candidate too: a register manifest lost (removed by hand) left the run
            # behind the rollback target's adapter to be removed
            outcome = run.data.get("outcome") if isinstance(run.data.get("outcome"), dict) else {}
            candidate = register.get("candidate") or outcome.get("candidate")
            if isinstance(candidate, str) and candidate:
                location = register.get("registry") or job_table(run).get("registry")
                why = _adapter_needs(location, candidate, opened, configured=registry)
                if why:
                    needed.setdefault(run.id, []).append(why)
        return {run_id: "; ".join(reasons) for run_id, reasons in needed.items()}

    def last_successful(self, scope: Mapping[str, Any] | None = None) -> Run | None:
        """The newest run that finished every stage (its watermark is where the next run starts).

        ``scope``: only runs whose configuration's job table has these values (the improve job's store and app), so that
        jobs of several apps can share one runs folder: each starts at its own watermark and continues its own runs."""
        done = [r for r in self._of(scope) if r.status == SUCCEEDED]
        return done[-1] if done else None

    def _of(self, scope: Mapping[str, Any] | None, listed: list[Run] | None = None) -> list[Run]:
        """The runs of ``scope`` (every run for none), of ``listed`` where given (a listing made already), else read now."""
        runs = self.list() if listed is None else listed
        if not scope:
            return runs
        return [r for r in runs if all(same_place(job_table(r).get(key), value) for key, value in scope.items())]


ATTEMPT_END_FIELDS = ("failed_at", "stopped_at", "error", "traceback", "report_error")
"""The fields of run.json that tell how the current attempt ended: a continued attempt moves them into
``earlier_attempts``, so that a run continued to success reads as one that succeeded."""


def continue_attempt(run: Run, *, last_written: str | None = None) -> None:
    """Start the next attempt of ``run`` (this process continues it): the attempt that ended is recorded in
    ``earlier_attempts`` (its number, host and pid, when it started, how it ended: ``failed``, ``stopped`` or ``killed``
    for one that left the run ``running``, when, and its error and traceback) and the fields that told how it ended
    (:data:`ATTEMPT_END_FIELDS`) leave run.json's top level; ``pid``, ``host`` and ``resumed_at`` are this attempt's,
    ``attempts`` counts it. ``last_written``: run.json's ``updated_at`` as the ended attempt left it, where this process
    wrote run.json since (the settings it goes on with): a killed attempt ended then."""
    data = run.data
    attempt = int(data.get("attempts", 1))
    status = str(data.get("status"))
    started = data.get("resumed_at") or data.get("started_at")
    ended: dict[str, Any] = {"attempt": attempt, "host": data.get("host"), "pid": data.get("pid"), "started_at": started}
    ended["ended"] = "killed" if status == RUNNING else status  # running while no process held the lock: it was killed
    ended["ended_at"] = data.get("failed_at") or data.get("stopped_at") or last_written or data.get("updated_at")
    ended.update({key: data[key] for key in ATTEMPT_END_FIELDS if key not in ("failed_at", "stopped_at") and data.get(key) is not None})
    if status == RUNNING:
        ended["error"] = (
            "the process ended without marking the run (SIGKILL, out of memory, a power loss); ended_at is the last time it wrote run.json"
        )
    with contextlib.suppress(JobError):  # a damaged manifest: the stage is left unsaid (the stage itself says so when run)
        ended["stage"] = next((name for name in data.get("stage_order") or [] if not run.stage_done(name)), None)
    for key in ATTEMPT_END_FIELDS:
        data.pop(key, None)
    run.update(
        status=RUNNING,
        attempts=attempt + 1,
        resumed_at=now(),
        host=socket.gethostname(),
        pid=os.getpid(),
        earlier_attempts=[*data.get("earlier_attempts", []), ended],
    )


def _damaged(path: Path, problem: str, fix: str) -> str:
    """The error for a run's file (run.json, a stage manifest) that cannot be read: which, why, and what to do."""
    from ee_middleware.messages import one_line

    return f"{path} cannot be read ({one_line(problem, 200)}). It is written atomically, so it was changed or cut short since: {fix}."


def _not_a_record(data: Any, keys: tuple[str, ...]) -> str | None:
    """What is wrong with a run's JSON file that parsed: not an object, or a key it needs is missing or not text."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    missing = [key for key in keys if not isinstance(data.get(key), str)]
    return f"no {', no '.join(repr(key) for key in missing)} in it" if missing else None


STAGE_FIELDS: dict[str, str] = {
    "attempt": "whole number",
    "pid": "whole number",
    "started_at": "time",
    "finished_at": "time",
    "seconds": "number",
    "seconds_earlier_attempts": "number",
    "untimed_attempts": "whole number",
    "peak_rss_mb": "object of numbers",
    "peak_rss_per_stage": "true/false",
    "inputs": "object",
    "summary": "string",
    "outputs": "object",
    "decisions": "array of strings",
    "budget_cuts": "array",
    "incomplete_reads": "array of strings",
    "error": "string",
    "live_changed": "object",
    "superseded": "string",
}
"""What each field of a stage manifest besides ``stage`` and ``status`` holds when it is there and not null (the improve
job writes them; ``ee runs list``/``show``, the report, a continued run and a prune read them): a manifest with one of
another type cannot be read (:meth:`Run.stage`), as one that is not JSON cannot."""

RUN_FIELDS: dict[str, str] = {
    "job": "string",
    "config": "object",
    "stage_order": "array of strings",
    "attempts": "whole number",
    "earlier_attempts": "array of objects",
    "started_at": "time",
    "finished_at": "time",
    "outcome": "object",
    "outcome.candidate": "string",
    "watermark": "object",
    "budget_cuts": "array of objects",
    "incomplete_reads": "array of strings",
    "reselected": "array of objects",
    "report": "object",
}
"""As :data:`STAGE_FIELDS`, for the fields of run.json besides ``id`` and ``status`` that are read back (a dotted key: a
field of the object before the dot): a run.json with one of another type is listed as damaged (:meth:`Run.load`)."""


def _wrong_field(record: dict[str, Any], fields: Mapping[str, str]) -> str | None:
    """The first field of ``record`` (a stage manifest, run.json) that does not hold what ``fields`` says (absent and null
    are fine), and what it holds instead; or None."""
    for key, kind in fields.items():
        value: Any = record
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        fits = {
            "object": isinstance(value, dict),
            "object of numbers": isinstance(value, dict),
            "array": isinstance(value, list),
            "array of strings": isinstance(value, list),
            "array of objects": isinstance(value, list),
            "string": isinstance(value, str),
            "time": isinstance(value, str),
            "number": number,
            "whole number": number and isinstance(value, int),
            "true/false": isinstance(value, bool),
        }[kind]
        if not fits:
            wanted = {"time": "a string", "true/false": "true or false"}.get(kind) or ("an " if kind[0] in "aeo" else "a ") + kind
            return f"its {key!r} is a JSON {_json_kind(value)}, not {wanted}"
        if kind.startswith("array of ") and not all(isinstance(item, str if kind.endswith("strings") else dict) for item in value):
            return f"its {key!r} is not an {kind}"
        if kind == "object of numbers" and not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()):
            return f"its {key!r} is not an object of numbers"
        if kind == "time":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return f"its {key!r} {value!r} is not an ISO time"
    return None


def _json_kind(value: Any) -> str:
    """What a value read from JSON is, in JSON's words (``array``, ``true/false``)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def _adapter_needs(registry: Any, name: str, opened: dict[str, Any], *, configured: str | None = None) -> str | None:
    """Why the run that registered ``name`` into ``registry`` is needed: its adapter is live, or the one a rollback
    returns to; also when the registry cannot be read (nothing can be told then, so the run is kept). ``opened``: the
    registries opened so far (location -> registry, or the exception opening it raised)."""
    if not registry:
        return None
    from ee_middleware.adapters.errors import AdapterError, AdapterNotFoundError
    from ee_middleware.adapters.registry import imports_code, open_registry
    from ee_middleware.messages import one_line

    location = str(registry)
    if imports_code(location) and location != str(configured):
        return (
            f"its registry {location} is a plug-in factory, built only where the job's configuration names it (--config, "
            "or EE_ADAPTER_REGISTRY), never from a run's records, so whether its adapter is live cannot be told: it is kept "
            "(prune with --config naming that registry to have it read)"
        )
    try:
        if location not in opened:
            try:
                opened[location] = open_registry(location, create=False)
            except Exception as exc:  # noqa: BLE001 - remembered, and said below
                opened[location] = exc
        if isinstance(opened[location], Exception):
            raise opened[location]
        record = opened[location].get(name)
        if opened[location].resolve(record.app) == name:
            return f"its adapter {name} is live"
        with contextlib.suppress(AdapterError):
            if opened[location].rollback_target(record.app).name == name:
                return f"its adapter {name} is the one `ee adapters rollback` returns to"
    except AdapterNotFoundError:
        return None  # the registry does not hold it: neither live nor a rollback's
    except Exception as exc:  # noqa: BLE001 - kept, saying why: a registry that is gone, busy or damaged tells nothing
        return f"the registry {location} could not be read ({one_line(str(exc), 120)}), so it is kept"
    return None


def _folder_bytes(folder: Path) -> int:
    """The size of the files under ``folder`` (links not followed)."""
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def same_place(recorded: Any, value: Any) -> bool:
    """A recorded configuration value matches: equal, or a relative path recorded by an older version that names the same
    folder from the working directory (paths in run.json were written as the config file had them; ``local:PATH``
    too). A value run.json cannot hold as it is (a TOML date, a tuple) is compared as run.json writes it: a run recorded
    ``2026-01-31`` as the string it wrote."""
    if recorded == value or as_recorded(recorded) == as_recorded(value):
        return True
    if not (isinstance(recorded, str) and isinstance(value, str)):
        return False
    if recorded.startswith("local:") and value.startswith("local:"):
        recorded, value = recorded.removeprefix("local:"), value.removeprefix("local:")
    return (
        os.path.isabs(value)
        and ":" not in recorded
        and not os.path.isabs(recorded)
        and os.path.abspath(os.path.expanduser(recorded)) == value
    )


def as_recorded(value: Any) -> Any:
    """``value`` as run.json holds it once written and read back (a date as its text, a tuple as a list)."""
    return json.loads(json.dumps(value, default=str))


NOT_SET = "(not set)"
"""How a setting one side of a change lacks is shown."""


def changed_lines(table: str, key: str, old: Any, new: Any, *, width: int | None = None) -> list[str]:
    """``[TABLE] KEY: OLD -> NEW`` for a changed setting, as a refusal, the progress line and run.json's
    ``config_changes`` show it: a table compared key by key, one line per setting that differs
    (``[replay] policy_settings.temperature: 0.7 -> 0.9``); the value of a secret-named setting, or of one inside
    a secret-named table, shown as ``***`` (``api_key``, ``hf_token``; the rule of ``_toml._is_secret_name``) and
    credentials in the others hidden. ``width``: each value cut to that many characters."""
    from ee_middleware._toml import _is_secret_name
    from ee_middleware.errors import hide_credentials
    from ee_middleware.messages import one_line

    if isinstance(old, Mapping) or isinstance(new, Mapping):
        before = old if isinstance(old, Mapping) else {} if old in (None, NOT_SET) else None
        after = new if isinstance(new, Mapping) else {} if new in (None, NOT_SET) else None
        if before is not None and after is not None:
            lines: list[str] = []
            for name in sorted(set(before) | set(after), key=str):
                old_value, new_value = before.get(name, NOT_SET), after.get(name, NOT_SET)
                if not same_place(old_value, new_value):
                    lines += changed_lines(table, f"{key}.{name}", old_value, new_value, width=width)
            return lines
    secret = any(_is_secret_name(part) for part in key.split("."))

    def shown(value: Any) -> str:
        text = NOT_SET if value == NOT_SET else "***" if secret else hide_credentials(str(as_recorded(value)))
        return one_line(text, width) if width else text

    return [f"[{table}] {key}: {shown(old)} -> {shown(new)}"]


def job_table(run: Run) -> dict[str, Any]:
    """The run's configuration of its job (the ``[improve]`` table of an improve run)."""
    table = (run.data.get("config") or {}).get(run.data.get("job") or "")
    return table if isinstance(table, dict) else {}
