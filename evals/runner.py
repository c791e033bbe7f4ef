"""Running an eval job: every task of every suite, ``trials`` times, in one or more workers.

Results go to ``OUT/results.jsonl`` as each task finishes (one line per task and trial, flushed;
fsync-ed once a second),
so an interrupted run resumes where it stopped: the same command skips every (suite, task, trial)
already there, except those the model server gave no answer to (``no_answer``: it was down, timed
out or failing), which run again, so a server that went down halfway costs a re-run, not a
score. At the end the lines become ``OUT/results.parquet`` (written atomically) and the
summary and report are written (:mod:`ee_middleware.evals.report`). A command naming other suites
adds them to the run: the results, summary and reports hold every suite of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_write_text
from ee_middleware._lifetime import die_with_parent
from ee_middleware._locks import holder_lock
from ee_middleware._version import __version__
from ee_middleware.errors import ConfigError
from ee_middleware.evals.clients import build_eval_client
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.suites import load_suite
from ee_middleware.evals.tasks import EvalTask, TaskResult

RUN_FILE = "run.json"
JOURNAL = "results.jsonl"
LOCK = ".lock"
RESULTS = "results.parquet"
SYNC_EVERY_S = 1.0
"""The journal is flushed after every row and fsync-ed at most this often."""
logger = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
"""``progress(suite, done, total)``."""


def result_row(result: TaskResult, model: str) -> dict[str, Any]:
    """One results row: the score, the reason, and the full conversation as JSON text."""
    conversation = result.conversation
    return {
        "suite": result.suite,
        "category": result.category,
        "task_id": result.task_id,
        "trial": result.trial,
        "success": result.success,
        "reason": _reason(result),
        "error_type": result.error_type,
        "model": model,
        "turns": len(conversation.turns),
        "steps": sum(len(t.steps) for t in conversation.turns),
        "tool_calls": len(conversation.calls),
        "duration_s": round(result.duration_s, 6),
        "no_answer": bool(result.conversation.no_answer),
        "cut_answers": conversation.cut_answers,
        "text_calls": conversation.text_calls,
        "conversation": json.dumps(conversation.messages, ensure_ascii=False, default=str),
        "details": json.dumps(result.details, ensure_ascii=False, default=str),
    }


def _reason(result: TaskResult, limit: int = 2) -> str | None:
    """The suite's reason, plus the calls the model tried that could not be read and the answers cut off at
    ``max_tokens`` (else a failure would not say why)."""
    problems = result.conversation.problems
    cut = result.conversation.cut_answers
    if result.success or not (problems or cut):
        return result.reason
    notes = [result.reason] if result.reason else []
    if problems:
        listed = "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
        notes.append(f"{len(problems)} call(s) the model tried could not be read, so they were never made ({listed})")
    if cut and not any("cut off at max_tokens" in problem for problem in problems):
        notes.append(f"{cut} model answer(s) were cut off at max_tokens (finish_reason 'length')")
    return "; ".join(notes) or None


def run_eval(job: EvalJob, *, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run ``job`` (resuming a run in ``job.out`` with the same settings); the summary per suite of the whole run.

    A run folder grows by suites: a command naming other suites than the run's earlier ones adds them, and the
    results, summary and reports hold every suite of the run. ``OUT/.lock`` is held meanwhile: a second run on the
    same folder is refused at once. Nothing is written into ``job.out`` before its suites and model spec are checked."""
    out = Path(job.out)
    settings = job.suite_settings()
    suites = {spec: load_suite(spec, settings) for spec in job.suites}  # a misspelled suite claims no folder
    _check_distinct(suites)
    # nor does a suite whose tasks cannot be loaded (a typo'd traces: store, a split whose ids it lacks, a tau loader raising)
    tasks = {spec: suite.tasks() for spec, suite in suites.items()}
    worker = _Worker(job)  # nor a model spec that cannot be built (a typo'd local: folder, a missing factory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _run_lock(out):
            return _run_claimed(job, out, suites, tasks, progress, worker)
    finally:
        worker.close()


def _run_claimed(
    job: EvalJob,
    out: Path,
    suites: dict[str, Any],
    tasks_of: dict[str, list[EvalTask]],
    progress: Progress | None,
    worker: _Worker,
) -> list[dict[str, Any]]:
    from ee_middleware.evals.report import summarize, write_outputs

    names, excluded = _claim_run_dir(out, job, [suite.name for suite in suites.values()])
    journal_rows = read_journal(out / JOURNAL)
    done = [r for r in journal_rows if not r.get("no_answer")]  # the server gave no answer: run again
    seen = {(r["suite"], r["task_id"], r["trial"]) for r in done}
    todo: list[tuple[str, EvalTask, int]] = []
    totals = {}
    for spec, suite in suites.items():
        tasks = tasks_of[spec]
        totals[suite.name] = len(tasks) * job.trials
        todo += [(spec, t, k) for t in tasks for k in range(job.trials) if (suite.name, t.id, k) not in seen]
    counts = {name: sum(1 for r in done if r["suite"] == name) for name in totals}
    with open(out / JOURNAL, "a", encoding="utf-8") as journal:
        for name in totals:
            if progress:
                progress(name, counts[name], totals[name])
        synced = time.monotonic()
        for row in _execute(job, todo, worker):
            journal.write(json.dumps(row, ensure_ascii=False) + "\n")
            journal.flush()
            if time.monotonic() - synced >= SYNC_EVERY_S:  # a crash loses at most this much work: those tasks run again
                os.fsync(journal.fileno())
                synced = time.monotonic()
            done.append(row)
            counts[row["suite"]] += 1
            if progress:
                progress(row["suite"], counts[row["suite"]], totals[row["suite"]])
    # The tasks of suites an earlier command added that got no answer stay in the run as such (this one did not run them).
    done += [
        r for r in journal_rows if r.get("no_answer") and r["suite"] not in totals and (r["suite"], r["task_id"], r["trial"]) not in seen
    ]
    excluded.update({suite.name: dict(getattr(suite, "excluded", None) or {}) for suite in suites.values()})
    names += [name for name in dict.fromkeys(r["suite"] for r in done) if name not in names]
    write_outputs(out, done, job, excluded, names)
    _mark_finished(out, excluded)
    return summarize(done, names, excluded)


def _run_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``OUT/.lock`` for the whole run: two runs appending to one journal would run tasks twice (counted as trials)."""
    return holder_lock(
        out / LOCK,
        lambda holder: ConfigError(
            f"Another `ee eval run` is writing to {out} right now ({holder}). Wait for it to finish, or stop it and run "
            "this command again (it resumes); the lock is released when that process exits, even if it is killed."
        ),
    )


def _check_distinct(suites: dict[str, Any]) -> None:
    """Two specs of one suite (``bfcl:simple:5`` and ``bfcl:simple:10``) would run their shared tasks twice, as if trials."""
    by_name: dict[str, list[str]] = {}
    for spec, suite in suites.items():
        by_name.setdefault(suite.name, []).append(spec)
    for name, specs in by_name.items():
        if len(specs) > 1:
            raise ConfigError(
                f"The suites {' and '.join(repr(s) for s in specs)} are all the suite {name!r}: give it once "
                "(with the largest task count you want), or a task would run once per spec and count as several trials."
            )


def _claim_run_dir(out: Path, job: EvalJob, names: list[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Record ``job`` in ``OUT/run.json`` as the run's (new, or resumed with the same settings); the names of the run's
    suites, those of earlier commands first, and the tasks each suite left out (``excluded``) as recorded so far.

    A run with other settings is refused, naming them, unless it holds no result the server answered (a typo'd
    endpoint, a start that failed): then this command takes the folder over, and that run's journal is emptied."""
    run_file = out / RUN_FILE
    record: dict[str, Any] = {"job": job.record(), "run_key": job.run_key(), "version": __version__}
    previous: dict[str, Any] = {}
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
            if not isinstance(previous, dict) or not isinstance(previous.get("job"), dict):
                raise ValueError("not a run record")
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{run_file} is not a run record ({exc}), so the run in {out} cannot be resumed: it records the settings its "
                f"results were made with. Use another --out, or delete {out} to start over."
            ) from exc
        changed = job.changed_settings(previous["job"])
        if changed:
            answered = [r for r in read_journal(out / JOURNAL) if not r.get("no_answer")]
            if answered:
                raise ConfigError(
                    f"{out} holds {len(answered)} result(s) of a run with other settings, so it cannot be resumed with these "
                    f"({'; '.join(changed)}: the run's value -> this command's). Use another --out, run the command with the "
                    "run's settings to resume it, or delete that folder to start over. (--timeout, retries and --workers "
                    "may change on a resume.)"
                )
            atomic_write_text(out / JOURNAL, "")  # only tasks the server never answered: nothing of that run is lost
            previous = {}
    earlier = [str(n) for n in previous.get("suite_names") or []] or list(
        dict.fromkeys(str(r["suite"]) for r in read_journal(out / JOURNAL))  # a record from before suite_names
    )
    excluded = {k: dict(v) for k, v in (previous.get("excluded") or {}).items() if isinstance(v, dict)}
    earlier = _without_phantoms(out, earlier, names, previous)
    names = [*earlier, *(name for name in names if name not in earlier)]
    if previous:
        record["job"]["suites"] = sorted(set(previous["job"].get("suites") or []) | set(record["job"]["suites"]))
    record["suite_names"] = names
    record["excluded"] = excluded
    record["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["finished"] = None  # until the results and reports of this invocation are written: the gate refuses the run
    atomic_write_text(run_file, json.dumps(record, indent=2))
    return list(names), excluded


def _without_phantoms(out: Path, earlier: list[str], names: list[str], previous: dict[str, Any]) -> list[str]:
    """``earlier`` (the suites a run records) but those no command ever ran: recorded by a command that stopped before
    running any of their tasks, as an older version's did when their tasks could not be loaded (a typo'd ``traces:``
    store). They hold no result and would stay in the run as suites that scored no task, failing every gate of it.

    A suite a command ran is in the record's ``excluded`` (written when its results are) or has a result in the journal;
    ``names`` (this command's) stay. A record from before ``excluded`` keeps every suite."""
    if not isinstance(previous.get("excluded"), dict):
        return earlier
    ran = set(previous["excluded"]) | {str(r["suite"]) for r in read_journal(out / JOURNAL)} | set(names)
    phantoms = [name for name in earlier if name not in ran]
    if phantoms:
        logger.warning(
            "%s recorded the suite(s) %s of an earlier command that stopped before running any of their tasks (their tasks "
            "could not be loaded, or it was stopped): they hold no result and are left out of this run. Name them in a "
            "command with --out %s to add them.",
            out,
            ", ".join(phantoms),
            out,
        )
    return [name for name in earlier if name in ran]


def _mark_finished(out: Path, excluded: dict[str, dict[str, str]]) -> None:
    record = json.loads((out / RUN_FILE).read_text())
    record["excluded"] = excluded
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2))


def unfinished(out: str | os.PathLike[str]) -> str | None:
    """Why the run in ``out`` is unfinished (it was stopped before its results were written), or None.

    A run folder from before ``finished`` was recorded counts as finished when it has results."""
    path = Path(out)
    try:
        record = json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        record = {}
    if (path / RESULTS).exists() and (not isinstance(record, dict) or record.get("finished", "") is not None):
        return None
    rows = read_journal(path / JOURNAL)
    if not rows and not record:
        return None
    suites = sorted({str(r.get("suite")) for r in rows})
    return (
        f"{len(rows)} result(s) in {JOURNAL}"
        + (f" ({', '.join(suites)})" if suites else "")
        + f", but it stopped before writing {RESULTS}"
        + (" anew" if (path / RESULTS).exists() else "")
    )


_ROW_KEYS = {"suite": str, "task_id": str, "trial": int, "success": bool, "reason": (str, type(None)), "error_type": (str, type(None))}
"""What a journal line must hold to count as a result (older runs' lines lack the columns added since)."""


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The rows already written; a line that is not a whole result (cut off by a crash, edited) is ignored: its task runs again.

    A (suite, task, trial) written twice (by an older version's overlapping runs) counts once: its first line."""
    if not path.exists():
        return []
    rows = []
    keys: set[tuple[Any, ...]] = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and all(isinstance(row.get(key, ...), kind) for key, kind in _ROW_KEYS.items()):
                key = (row["suite"], row["task_id"], row["trial"], bool(row.get("no_answer")))
                if key not in keys:
                    keys.add(key)
                    rows.append(row)
    return rows


def _execute(job: EvalJob, todo: list[tuple[str, EvalTask, int]], worker: _Worker) -> Iterator[dict[str, Any]]:
    """The rows of ``todo``: in this process with ``worker`` (its caller closes it), or in ``job.workers`` processes."""
    if not todo:
        return
    if job.workers == 1 or len(todo) == 1:
        for spec, task, trial in todo:
            yield worker.run(spec, task, trial)
        return
    yield from _in_processes(job, todo)


class _Worker:
    """A client built once, reused for every task this worker runs."""

    def __init__(self, job: EvalJob) -> None:
        self.job = job
        self.client = build_eval_client(job.model, **job.client_options())
        self.config: LoopConfig = job.loop_config()

    def run(self, spec: str, task: EvalTask, trial: int) -> dict[str, Any]:
        suite = load_suite(spec, self.job.suite_settings())
        try:
            result = suite.run(self.client, task, trial, self.config)
        except Exception as exc:  # noqa: BLE001 - a harness bug on one task is that task's failure, with the reason
            result = _crashed(suite.name, task, trial, exc)
        return result_row(result, self.client.model)

    def close(self) -> None:
        self.client.close()


def _crashed(suite: str, task: EvalTask, trial: int, exc: Exception) -> TaskResult:
    from ee_middleware.evals.tasks import Conversation

    reason = f"the harness failed on this task: {type(exc).__name__}: {exc}"
    return TaskResult(suite, task.category, task.id, trial, False, reason, "harness_error", Conversation(error=reason), 0.0)


_PROCESS_WORKER: _Worker | None = None


def _init_process(job_data: dict[str, Any], parent_pid: int) -> None:
    global _PROCESS_WORKER
    # `ee eval run` killed (SIGTERM, SIGKILL) runs no clean-up: the kernel ends this worker with it, the watchdog elsewhere.
    die_with_parent(parent_pid, _end_orphaned, death_signal=signal.SIGKILL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _PROCESS_WORKER = _Worker(EvalJob(**job_data))


def _end_orphaned() -> None:
    os._exit(1)


def _run_in_process(spec: str, task: EvalTask, trial: int) -> dict[str, Any]:
    assert _PROCESS_WORKER is not None
    return _PROCESS_WORKER.run(spec, task, trial)


def _in_processes(job: EvalJob, todo: list[tuple[str, EvalTask, int]]) -> Iterator[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")  # nothing of the parent's state (threads, caches) leaks in
    pool = ProcessPoolExecutor(
        max_workers=job.workers, mp_context=context, initializer=_init_process, initargs=(job.model_dump(), os.getpid())
    )
    pending: set[Future[dict[str, Any]]] = set()
    source = iter(todo)
    try:
        while True:
            while len(pending) < job.workers * 4:
                item = next(source, None)
                if item is None:
                    break
                pending.add(pool.submit(_run_in_process, *item))
            if not pending:
                return
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["EvalJob", "read_journal", "result_row", "run_eval"]
