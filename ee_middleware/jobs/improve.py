"""``ee improve``: the nightly job, from newly approved trajectories to a gated, promoted adapter.

Stages, in order (each writes ``stages/NAME.json`` in the run folder, see :mod:`ee_middleware.jobs.runs`):

1. ``select``: trajectories approved since the last successful run's watermark, and the replay work
   this run takes on within ``max_trajectories`` / ``max_branches`` (the rest wait for the next run);
   nothing new and nothing to replay ends the run as ``nothing-new``;
2. ``replay``: the replay job on the selected trajectories (K alternatives per recorded state);
3. ``datasets``: IL / IWM / SR from every approved trajectory of the app, held-out split by trajectory
   (stable as the store grows);
4. ``train``: a LoRA candidate from the live adapter's base (``max_train_steps`` caps it);
5. ``register``: the candidate under its immutable name; weights the registry already holds as the live
   adapter (the same data and seed trained again) end the run here, ``unchanged`` (nothing to evaluate or promote);
6. ``evaluate``: the live adapter (the base when none is live) and the candidate on the suites,
   including the app's held-out ``traces:``, and the held-out action likelihood;
7. ``gate``: the ``[gate]`` policy (and the likelihood rule when ``gate_on_likelihood``);
8. ``promote``: on pass, every replica then the alias; otherwise the candidate is retired with the reasons.

Then the report (``report.md``, ``report.html``) is written, whatever happened. One lock per runs
folder: two runs never overlap. A run that stopped (killed, failed, out of minutes) is continued by
the next call with the same configuration, from its first unfinished stage; a finished stage is not
redone. The watermark moves only when a run succeeds (all stages finished, promoted or not).

Every stage reads the store as every ``ee`` command does: a read that damage made incomplete (an unreadable Parquet
part, a damaged record) fails the stage, so the run fails and keeps its watermark, and once the store is repaired the
next call continues it. With ``allow_partial`` the stages learn from the rest; the run says what was skipped and keeps
the watermark where it was, so that the next run selects those trajectories again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ee_middleware._lifetime import second_signal_ends, stop_for, stopping_signal
from ee_middleware._toml import read_config_text
from ee_middleware.errors import EEError
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.errors import BudgetExhausted, JobError, LiveAdapterChangedError
from ee_middleware.jobs.memory import PeakMemory
from ee_middleware.jobs.runs import (
    DAMAGED,
    FAILED,
    FINISHED,
    NOTHING_NEW,
    STOPPED,
    SUCCEEDED,
    Run,
    RunsDir,
    continue_attempt,
    job_table,
    now,
)
from ee_middleware.jobs.stages import Progress, QuietProgress, StageContext, StageResult

STAGES = ("select", "replay", "datasets", "train", "register", "evaluate", "gate", "promote")
JOB = "improve"
CONFIG_COPY = "config.toml"


def _stage_function(name: str) -> Callable[[StageContext], StageResult]:
    from ee_middleware.jobs.deploy import DEPLOY_FUNCTIONS
    from ee_middleware.jobs.stages import STAGE_FUNCTIONS

    return {**STAGE_FUNCTIONS, **DEPLOY_FUNCTIONS}[name]


def run_improve(
    config: ImproveConfig,
    *,
    progress: Progress | None = None,
    new_run: bool = False,
    force: bool = False,
    report: bool = True,
    on_start: Callable[[Run], None] | None = None,
) -> Run:
    """Start a run, or continue the unfinished one; return it (its ``status`` says how it ended).

    ``new_run`` marks an unfinished run ``abandoned`` first; ``force`` goes on even when nothing new was
    approved (to retrain on the same data). ``on_start`` is called with the run once it is started or
    continued, before its first stage (the object is the one the job updates, so a caller still holds it
    when a stage fails). Exceptions from a stage propagate after the run is marked ``failed`` (``stopped`` for
    KeyboardInterrupt: Ctrl-C, or SIGTERM/SIGHUP under ``termination_as_interrupt``) and its report is written.
    """
    say = progress or QuietProgress()
    runs = RunsDir(config.runs)
    started = time.monotonic()
    # a config or base model that cannot work stops the job before a run is started; the evaluation's sandbox is
    # looked at below, only for a run whose evaluate stage is still to run
    config.check(evaluation_sandbox=False)
    from ee_middleware.jobs.deploy import check_servers

    with runs.lock():
        if new_run:
            # a new run runs every stage: its servers and evaluation sandbox are looked at before the unfinished run is
            # abandoned (its candidate retired and unloaded), so a refused --new-run changes nothing
            check_servers(config, STAGES)
            config.check_evaluation_sandbox()
            for run_id in runs.abandon_unfinished("--new-run", config.scope(), config=config):
                say.info(f"run {run_id} marked abandoned (--new-run)")
                if report:  # its report said it stopped and that the next call continues it
                    _write_report(runs.get(run_id), say)
        config_hash = config.config_hash()

        def same(earlier: Run) -> str:
            return config.config_hash(recorded=job_table(earlier))

        run = runs.resumable(config_hash, config.scope(), hash_like=same, refused=config.refused_changes)
        redo = _selection_to_redo(run) if run is not None else None
        if not new_run:
            # so does a server it names that does not answer (a wrong port), of the stages still to run: a run continued
            # past its replay no longer needs the replay policy's server
            check_servers(config, [name for name in STAGES if run is None or not run.stage_done(name) or (redo and name in RESELECT)])
            if run is None or not run.stage_done("evaluate"):  # it may build a sandbox: a run left with gate or promote needs none
                config.check_evaluation_sandbox()
        last_written = run.data.get("updated_at") if run is not None else None  # (before this call writes run.json)
        if run is not None and (
            run.data.get("config_hash") not in (config_hash, same(run))
            or config.changed_settings(run.data.get("config") or {}, neutral=True)
        ):
            # settings of stages it has not finished, which it now runs with; or its budgets or servers (a longer night)
            _take_changes(run, config, config_hash, say)
        if run is None:
            _say_damaged_runs(runs, config, say)
            run = runs.create(JOB, config.describe(), config_hash)  # (its config file is copied in below, as a run's going on)
            run.update(stage_order=list(STAGES), force=force)
            say.info(f"run {run.id} started in {run.folder}")
        else:
            done = [name for name in STAGES if run.stage_done(name)]
            continue_attempt(run, last_written=last_written)
            say.info(f"continuing run {run.id} (attempt {run.data['attempts']}; finished stages: {', '.join(done) or 'none'})")
            if redo:
                _redo_selection(run, redo, say)
        if config.config_path is not None:
            # the stages read the file as it is now, copied into the run folder: its settings are the run's (the
            # configuration hash says so, secrets aside), an edit of the user's file while the run goes on reaches no
            # stage, and a copy edited in the runs folder meanwhile (whoever can write there could have it choose the
            # sandbox, policy and teacher factories the stages build, an `mcp:` server's command) is written over
            copy_config(config.config_path, run.folder / CONFIG_COPY)
            config = config.model_copy(update={"config_path": run.folder / CONFIG_COPY})
        deadline = started + 60 * config.budgets.max_minutes if config.budgets.max_minutes else None
        if on_start is not None:
            on_start(run)
        ctx = StageContext(config, run, runs, say, deadline)
        try:
            _run_stages(ctx, force=force or bool(run.data.get("force")))
        except BudgetExhausted as exc:
            _cut(run, {"budget": "max_minutes", "limit": config.budgets.max_minutes, "stage": _current(run), "cut": str(exc)})
            run.update(status=STOPPED, stopped_at=now(), error=str(exc))
        except KeyboardInterrupt as exc:
            # Ctrl-C, or SIGTERM/SIGHUP (a CronJob's deadline, `kill`): stopped, as max_minutes stops it, not failed; the
            # next call continues it. (A full disk may refuse run.json: the run then reads as killed while running.) A run
            # that had finished when the signal came stays as it finished: nothing of it is left to continue.
            if run.data.get("status") not in FINISHED:
                with contextlib.suppress(OSError):
                    run.update(status=STOPPED, stopped_at=now(), error=error_text(exc))
            raise
        except BaseException as exc:
            stop = stop_for(exc)
            if stop is not None:
                # a SIGTERM that a library turned into its own error on the way out (transformers' lazy import of the
                # model's classes: "Could not import module 'LlamaConfig'"): stopped, as the signal did it, not failed
                # with an error that blames the base model
                with contextlib.suppress(OSError):
                    run.update(status=STOPPED, stopped_at=now(), error=f"KeyboardInterrupt: {stop} ({error_text(exc)})")
                raise stop from exc
            # A full disk may refuse run.json too: the stage's own error still goes out (the run then reads as killed
            # while running, and is continued all the same).
            with contextlib.suppress(OSError):
                run.update(status=FAILED, failed_at=now(), error=error_text(exc), traceback=traceback.format_exc(limit=8))
            raise
        finally:
            if report:
                # a signal while the report is written is held until it is (a second one is not: the report is a second
                # or two): cut off, the run had no report, and no later call writes one
                with second_signal_ends(_nothing, first=_nothing):
                    _write_report(run, say)
    if config.keep_runs is not None:
        _prune_old_runs(run, runs, config.keep_runs, say, registry=str(config.registry))
    return run


RESELECT = ("select", "replay")
"""The stages a continued run whose selection held nothing runs again (see :func:`_selection_to_redo`)."""


def _selection_to_redo(run: Run) -> str | None:
    """Why the continued ``run`` selects again, or None. A run whose select stage selected nothing (no trajectory approved
    since the watermark, nothing to replay: it went on under ``--force``) and whose datasets stage has not finished
    selects again, and replays what it then selects: the datasets it builds are of every approved trajectory of the app,
    so trajectories approved since (the usual fix of a forced run that failed for want of approved trajectories) would
    be learned from unreplayed, reported as awaiting review, and selected and trained on again by the next run. Once its
    datasets are built, a run keeps its selection: what was approved since is the next run's."""
    select = run.stage("select")
    if select is None or select.get("status") != "done" or not (select.get("outputs") or {}).get("nothing_new"):
        return None
    if run.stage_done("datasets"):
        return None
    return (
        f"its select stage (attempt {select.get('attempt', 1)}, {select.get('finished_at') or '?'}) selected nothing and its "
        "datasets are not built yet: select runs again, and replay with it, so that trajectories approved since are replayed "
        "and learned from by this run"
    )


def _redo_selection(run: Run, why: str, say: Progress) -> None:
    """Mark the run's finished select and replay stages ``superseded`` (so that they run again; each keeps its attempt
    count and time) and record the reselection in run.json's ``reselected``."""
    for name in RESELECT:
        manifest = run.stage(name)
        if manifest is not None and manifest.get("status") == "done":
            run.write_stage(name, {**manifest, "status": "superseded", "superseded": why})
    run.update(reselected=[*run.data.get("reselected", []), {"attempt": run.data.get("attempts"), "at": now(), "why": why}])
    say.info(f"run {run.id}: {why}")


def _prune_old_runs(run: Run, runs: RunsDir, keep: int, say: Progress, *, registry: str) -> None:
    """``[improve] keep_runs``: remove old runs once the run is done (and the folder's lock released); what went is
    recorded in the run's ``pruned`` (``ee runs show``, ``--json``). The night's run is what the exit status reports: a
    prune that fails (another process holds the lock, a disk error) is recorded and left for the next night or ``ee runs
    prune``."""
    try:
        pruned = runs.prune(keep, registry=registry)
    except (EEError, OSError) as exc:
        say.info(f"old runs not pruned (keep_runs = {keep}): {exc}")
        with contextlib.suppress(OSError):
            run.update(pruned={"keep": keep, "error": str(exc)})
        return
    removed = [entry["id"] for entry in pruned["removed"]]
    with contextlib.suppress(OSError):
        run.update(pruned={"keep": keep, "removed": removed, "bytes_freed": pruned["bytes_freed"]})
    if removed:
        say.info(f"pruned {len(removed)} old run(s) (keep_runs = {keep}; {pruned['bytes_freed'] / 1e6:.1f} MB freed): {', '.join(removed)}")


def _take_changes(run: Run, config: ImproveConfig, config_hash: str, say: Progress) -> None:
    """Continue ``run`` with ``config``, whose changes are all to settings of stages not yet run (see
    :meth:`ImproveConfig.refused_changes`): the run records them (``config_changes`` in run.json, the file it ran with
    until now kept as ``config.attempt-N.toml``) and its stages read the new file from here on. A complete adapter an
    unfinished train stage left behind was trained with the old [train] settings: it goes, so that the stage trains again."""
    import shutil

    from ee_middleware.jobs.runs import changed_lines
    from ee_middleware.jobs.stages import ADAPTER_DIR

    changed = config.changed_settings(run.data.get("config") or {}, neutral=True)
    attempt = int(run.data.get("attempts", 1))
    copy, kept = run.folder / CONFIG_COPY, run.folder / f"config.attempt-{attempt}.toml"
    if copy.is_file():
        copy.replace(kept)
        if config.config_path is not None:  # one a version before copies kept the file's permissions wrote as 0644
            with contextlib.suppress(OSError):
                os.chmod(kept, stat.S_IMODE(kept.stat().st_mode) & _copy_mode(config.config_path))
    if config.config_path is not None:
        copy_config(config.config_path, copy)
    if any(table == "train" for table, *_ in changed) and not run.stage_done("train"):
        shutil.rmtree(run.folder / ADAPTER_DIR, ignore_errors=True)
    settings = [line for table, key, old, new in changed for line in changed_lines(table, key, old, new)]
    change = {"at": now(), "attempt": attempt + 1, "settings": settings, "config_hash_before": run.data.get("config_hash")}
    if kept.is_file():
        change["config_file_before"] = kept.name
    run.update(config=config.describe(), config_hash=config_hash, config_changes=[*run.data.get("config_changes", []), change])
    say.info(f"run {run.id} goes on with settings of stages it has not finished changed: {'; '.join(settings)}")


def copy_config(source: Path, destination: Path) -> None:
    """Copy the config file ``source`` into a run folder as ``destination``, as UTF-8 (the stages read the copy, and a
    run is reproduced from it: it is the file verbatim, secrets included), created with no more permission than the
    source has (:func:`_copy_mode`: a private file's copy is 0600 at most), so that a secret kept in a 0600 file
    (``[replay.sandbox_settings]``, an ``api_key``) is not world-readable in a runs folder on shared storage."""
    from ee_middleware._files import atomic_path

    text = read_config_text(source)
    mode = _copy_mode(source)
    with atomic_path(destination) as tmp:
        # created with the mode (and the umask), never readable by others even for a moment
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, stat.S_IMODE(tmp.stat().st_mode) & mode)  # a file system that ignored the mode at creation


def _copy_mode(source: Path) -> int:
    """The permission bits of a copy of ``source``: the source's read and write bits, with the owner's always (the job
    reads and replaces its copy); a source that its group and others cannot read (private) gives 0600 at most."""
    bits = stat.S_IMODE(source.stat().st_mode) & 0o666 | 0o600
    if not bits & (stat.S_IRGRP | stat.S_IROTH):
        bits &= 0o600
    return bits


def _refuse_after_later_stages(run: Any, name: str) -> None:
    """Stage ``name`` is to run (its manifest is missing, or it did not finish) while a stage after it finished with what
    it gave before: refused. A train manifest removed by hand had the job train again, then skip register, evaluate and
    promote as done: the adapter gated and promoted was the earlier one, while the run and its report described the new."""
    later = [stage for stage in STAGES[STAGES.index(name) + 1 :] if run.stage_done(stage)]
    if later:
        raise JobError(
            f"Run {run.id}'s stage {name} has not finished (its manifest {run.stage_path(name)} is missing or says so) while "
            f"the stage(s) after it, {', '.join(later)}, finished with what it gave before: running {name} again would not "
            f"change what they did. Restore {name}'s manifest from a backup, or start a new run: ee improve --new-run."
        )


def _run_stages(ctx: StageContext, *, force: bool) -> None:
    run = ctx.run
    for index, name in enumerate(STAGES, 1):
        if name == "evaluate" and run.outputs("register").get("unchanged"):
            _finish(run, unchanged=True)  # the trained weights are the live adapter's: nothing to evaluate or promote
            return
        if run.stage_done(name):
            manifest = run.stage(name) or {}
            ctx.progress.stage_done(name, float(manifest.get("seconds", 0.0)), "finished earlier", skipped=True)
            continue
        _refuse_after_later_stages(run, name)
        ctx.check_deadline(f"stage {name}")
        if name == "train" and ctx.config.serving.servers:
            from ee_middleware.jobs.deploy import check_replicas

            check_replicas(ctx)  # before hours of training that a server which is down would waste
        ctx.progress.stage(name, index, len(STAGES))
        result = _run_stage(ctx, name)
        if name == "select" and result.outputs.get("nothing_new") and not force:
            reason = "no trajectory approved since the last successful run, nothing to replay"
            if result.outputs.get("pending_review"):
                from ee_middleware.jobs.stages import awaiting_review

                reason += f"; {awaiting_review(result.outputs['pending_review'], ctx.config)}"
            if result.outputs.get("app_unrecorded_apps"):
                from ee_middleware.jobs.stages import app_unrecorded

                reason += f"; {app_unrecorded(result.outputs['app_unrecorded_apps'], ctx.config)}"
            run.update(status=NOTHING_NEW, finished_at=now(), outcome={"promoted": False, "reason": reason})
            return
    _finish(run)


def _finish(run: Run, *, unchanged: bool = False) -> None:
    """Mark ``run`` succeeded, with its watermark and outcome. ``unchanged``: its training reproduced the live adapter's
    weights (the register stage's ``unchanged``): it ends after its register stage, nothing evaluated, gated or promoted,
    its outcome's ``unchanged`` saying why (its watermark moves: the trajectories it selected were learned from)."""
    outputs = {name: run.outputs(name) for name in ("select", "register", "evaluate", "gate", "promote")}
    promote = outputs["promote"]
    before = (run.stage("select") or {}).get("inputs", {}).get("watermark")
    watermark = {"before": before, "after": outputs["select"].get("watermark_after")}
    read_around = run.data.get("incomplete_reads") or []
    if read_around:  # what the damage hid was not learned from: the next run selects this run's trajectories again
        watermark.update(
            after=before,
            held=f"{len(read_around)} read(s) of the store were incomplete (allow_partial); the next run selects these trajectories again",
        )
    live = outputs["register"].get("candidate") if unchanged else promote.get("live")
    if unchanged:
        extra = {"unchanged": outputs["register"]["unchanged"]}
    else:
        extra = {"not_promoted": promote["reasons"]} if promote.get("turned_down") else {}
    run.update(
        status=SUCCEEDED,
        finished_at=now(),
        watermark=watermark,
        outcome={
            "candidate": outputs["register"].get("candidate"),
            "baseline": outputs["evaluate"].get("baseline"),
            "gate_passed": outputs["gate"].get("passed"),
            "promoted": promote.get("promoted", False),
            "live": live,
            "reasons": outputs["gate"].get("reasons", []),
            "moved": outputs["gate"].get("moved", []),
            **extra,
        },
    )


def _run_stage(ctx: StageContext, name: str) -> StageResult:
    run = ctx.run
    previous = run.stage(name)
    attempt = int(previous.get("attempt", 0)) + 1 if previous else 1
    # Earlier attempts' own time (an attempt killed outright recorded none): the report counts the stage's whole work.
    earlier = float(previous.get("seconds_earlier_attempts") or 0.0) + float(previous.get("seconds") or 0.0) if previous else 0.0
    untimed = int(previous.get("untimed_attempts") or 0) + ("seconds" not in previous) if previous else 0
    manifest: dict[str, Any] = {"stage": name, "status": "running", "attempt": attempt, "started_at": now(), "pid": os.getpid()}
    if earlier:
        manifest["seconds_earlier_attempts"] = round(earlier, 3)
    if untimed:
        manifest["untimed_attempts"] = untimed
    started = time.perf_counter()
    memory = PeakMemory()
    read_around: list[str] = []
    try:
        # in the try: a SIGTERM while this write ends (the file renamed, the folder not yet synced) marks it stopped too
        run.write_stage(name, manifest)
        with memory, _reading_store(ctx, name, read_around):
            try:
                result = _stage_function(name)(ctx)
            except OSError as exc:
                unnamed = _unnamed_write_error(ctx, name, exc)
                if unnamed is None:
                    raise
                raise unnamed from exc
    except BaseException as exc:
        # (a SIGTERM a library turned into its own error stopped the stage too: see run_improve)
        failed = isinstance(exc, Exception) and not isinstance(exc, BudgetExhausted) and stopping_signal() is None
        manifest.update(
            status="failed" if failed else "stopped",
            finished_at=now(),
            seconds=round(time.perf_counter() - started, 3),
            peak_rss_mb=memory.result(),
            peak_rss_per_stage=memory.per_stage,
            error=error_text(exc),
        )
        if isinstance(exc, LiveAdapterChangedError):
            manifest["live_changed"] = exc.details
        run.write_stage(name, manifest)
        raise
    seconds = round(time.perf_counter() - started, 3)
    if previous and previous.get("status") == "superseded":  # a continued run that selects again (see _selection_to_redo)
        result.decisions.insert(0, f"run again in attempt {run.data.get('attempts')}: {previous.get('superseded')}")
    manifest.update(
        status="done",
        finished_at=now(),
        seconds=seconds,
        peak_rss_mb=memory.result(),
        peak_rss_per_stage=memory.per_stage,
        inputs=result.inputs,
        summary=result.summary,
        outputs=result.outputs,
        decisions=result.decisions,
        budget_cuts=result.budget_cuts,
    )
    if read_around:
        manifest["incomplete_reads"] = read_around
        manifest["decisions"] = [
            *result.decisions,
            f"read around damage in the store (allow_partial): {len(read_around)} read(s) incomplete; the run keeps its watermark",
        ]
        earlier = run.data.get("incomplete_reads") or []
        run.update(incomplete_reads=[*earlier, *(text for text in read_around if text not in earlier)])
    run.write_stage(name, manifest)
    for cut in result.budget_cuts:
        _cut(run, cut)
    ctx.progress.stage_done(name, seconds, result.summary)
    return result


@contextlib.contextmanager
def _reading_store(ctx: StageContext, stage: str, read_around: list[str]) -> Iterator[None]:
    """A stage's reads of the store under the rule of every ``ee`` command that reads one: a read that damage made
    incomplete (:class:`~ee_middleware.errors.IncompleteReadWarning`) fails the stage with
    :class:`~ee_middleware.errors.StoreDamagedError` naming the file, the repair and ``allow_partial`` (the run fails and
    keeps its watermark), unless ``allow_partial``; then the messages of such reads are added to ``read_around``. The
    warnings are shown again once the stage ends, for the caller's own filters (``ee improve`` lists them on stderr)."""
    from ee_middleware.errors import IncompleteReadWarning, StoreDamagedError

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if not ctx.config.allow_partial:
                warnings.simplefilter("error", IncompleteReadWarning)
            try:
                yield
            except Exception as exc:
                damage = _incomplete_read(exc)
                if damage is None:
                    raise
                raise StoreDamagedError(
                    f"{damage} The {stage} stage of run {ctx.run.id} stopped there: learning from part of the store would "
                    "skip what the damage hides for good. The run keeps its watermark; once the store is repaired, `ee improve` "
                    "with the same config continues it. To learn from the rest now, pass --allow-partial (or set allow_partial "
                    "= true in [improve])."
                ) from exc
    finally:
        # After the recording has stopped (re-shown inside it, a warning would be recorded again).
        for w in caught:
            if issubclass(w.category, IncompleteReadWarning) and str(w.message) not in read_around:
                read_around.append(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _incomplete_read(exc: BaseException) -> BaseException | None:
    """The :class:`~ee_middleware.errors.IncompleteReadWarning` raised as an error that ``exc`` is or was caused by."""
    from ee_middleware.errors import IncompleteReadWarning

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, IncompleteReadWarning):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def error_text(exc: BaseException) -> str:
    """How a run or stage records what ended it: ``Type: message``. Ctrl-C's KeyboardInterrupt carries no message (it
    read 'KeyboardInterrupt: '): it is named SIGINT as SIGTERM and SIGHUP are (see termination_as_interrupt)."""
    if isinstance(exc, KeyboardInterrupt):
        return f"KeyboardInterrupt: {str(exc) or 'SIGINT (Ctrl-C)'}"
    return f"{type(exc).__name__}: {exc}"


UNNAMED_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _unnamed_write_error(ctx: StageContext, stage: str, exc: OSError) -> JobError | None:
    """A full or read-only disk met by a write to an already open file (a journal's flush, a library's writer) raises
    an OSError that names no file, which read 'a path: No space left on device'. The stage's places are then named
    with their free space (a read-only one says so), so that the disk to free is known; None for any other error."""
    if exc.filename is not None or exc.errno not in UNNAMED_WRITE_ERRORS:
        return None
    config = ctx.config
    places = [("the runs folder", str(ctx.runs.root))]
    places += [
        (what, str(value)) for what, value in (("the store", config.store), ("the registry", config.registry)) if ":" not in str(value)
    ]
    described = []
    for what, where in places:
        try:
            stat = os.statvfs(where)
        except OSError:
            continue
        state = "read-only" if stat.f_flag & os.ST_RDONLY else f"{stat.f_bavail * stat.f_frsize / 2**20:,.1f} MiB free"
        described.append(f"{what} {where} ({state})")
    return JobError(
        f"The {stage} stage of run {ctx.run.id} could not write: {exc.strerror or exc} (the error names no file). It writes "
        f"to {', '.join(described) or 'its run folder ' + str(ctx.run.folder)}. Free some space (or make it writable), then run "
        "`ee improve` with the same config: it continues from this stage."
    )


def _cut(run: Run, cut: dict[str, Any]) -> None:
    cuts = [c for c in run.data.get("budget_cuts", []) if c != cut]
    run.update(budget_cuts=[*cuts, cut])


def _current(run: Run) -> str | None:
    for name in STAGES:
        if not run.stage_done(name):
            return name
    return None


def _say_damaged_runs(runs: RunsDir, config: ImproveConfig, say: Progress) -> None:
    """A warning for each run newer than this job's last readable run whose run.json cannot be read: a new run starts
    instead of continuing it (no job continues such a run), and a candidate it registered stays registered. It was
    passed over without a word (an improve sweep: a run.json cut short by a full disk)."""
    listed = runs.list()
    mine = [r.id for r in runs._of(config.scope(), listed) if r.status != DAMAGED]  # (a damaged run's scope cannot be read)
    after = max(mine, default="")
    for damaged in (r for r in listed if r.status == DAMAGED and r.id > after):
        watermark = runs.last_successful(config.scope())  # (what the select stage reads: the last run that succeeded)
        since = (
            f"the watermark of run {watermark.id}, the last that succeeded"
            if watermark is not None
            else "the start (no run of this job succeeded)"
        )
        warning = (
            f"run {damaged.id}'s run.json cannot be read ({damaged.damage}): whether it finished is not known, and neither "
            f"is what it selected. This call starts a new run, which selects the approved trajectories after {since}: "
            f"those run {damaged.id} learnt from again, if it finished. To continue it or keep its watermark instead, stop "
            f"this run and restore its run.json from a backup; or remove its folder. A candidate it registered stays "
            f"registered (ee adapters list -r {config.registry} --status candidate shows it; ee adapters retire NAME retires it)."
        )
        say.info(f"warning: {warning}")
        warnings.warn(f"ee improve: {warning}", UserWarning, stacklevel=3)


def _nothing() -> None:
    """What a signal does while the report is written (:func:`~ee_middleware._lifetime.second_signal_ends`): nothing."""


def _write_report(run: Run, say: Progress) -> None:
    from ee_middleware.jobs.report import write_report

    try:
        paths = write_report(run)
    except Exception as exc:  # noqa: BLE001 - a report problem must not hide the run's own outcome
        with contextlib.suppress(OSError):  # a full disk that stopped the report may refuse run.json too
            run.data.pop("report", None)  # (an earlier attempt's report is not this one's: it was shown as if it were)
            run.update(report_error=error_text(exc))
        problem = f"the report could not be written: {type(exc).__name__}: {exc}"
        say.info(problem)
        warnings.warn(f"ee improve: {problem}", UserWarning, stacklevel=2)  # said also without progress (--no-progress)
        return
    run.data.pop("report_error", None)
    run.update(report={k: str(v) for k, v in paths.items()})
    say.info(f"report: {paths['markdown']} and {paths['html']}")
