"""Running an eval job: every task of every suite, ``trials`` times, in one or more workers.

Results go to ``OUT/results.jsonl`` as each task finishes (one line per task and trial, flushed;
fsync-ed once a second),
so an interrupted run resumes where it stopped: the same command skips every (suite, task, trial)
already there, except those the model server gave no answer to (``no_answer``: it was down, timed
out or failing) or whose worker process died (once: :data:`WORKER_DIED`), which run again, so a server
that went down halfway costs a re-run, not a score, and those of a suite the model never answered at
all (:func:`never_answered`). At the end
the lines become ``OUT/results.parquet`` (written atomically) and the summary and report are
written (:mod:`ee_middleware.evals.report`). A command naming other suites adds them to the run:
the results, summary and reports hold every suite of it. A resumed command keeps only the results of
tasks its suites still have, unchanged: each line records its task's :func:`task_digest`; the lines
of tasks changed since are dropped (they run again), and those of tasks removed (a smaller ``:N``, a trajectory a
rebuilt split no longer holds out) are left out of the command's results but kept in the journal, for a later command
naming them again, saying so (:func:`_without_stale`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_write_text
from ee_middleware._lifetime import SIGNAL_CHECK_S, die_with_parent
from ee_middleware._locks import holder_lock
from ee_middleware._version import __version__
from ee_middleware.errors import ConfigError, EEError, ModelRequestError
from ee_middleware.evals.clients import build_eval_client
from ee_middleware.evals.job import EvalJob, adapter_identity, same_split, unresolved_split_text
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.suites import load_suite
from ee_middleware.evals.tasks import EvalTask, Message, TaskResult
from ee_middleware.models.protocol import CUT_WHILE_REASONING
from ee_middleware.records import utcnow
from ee_middleware.replay.config import LOCAL_WORKERS_PER_CORE, max_workers

RUN_FILE = "run.json"
JOURNAL = "results.jsonl"
LOCK = ".lock"
RESULTS = "results.parquet"
SYNC_EVERY_S = 1.0
"""The journal is flushed after every row and fsync-ed at most this often."""
logger = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
"""``progress(suite, done, total)``."""


SERVED_SEPARATOR = ", "
"""Between the names in a row's ``served_model`` when the model behind the name changed during one conversation."""


def result_row(result: TaskResult, model: str) -> dict[str, Any]:
    """One results row: the score, the reason, and the full conversation as JSON text.

    ``model`` is the name the run asked for (the spec's); ``served_model`` the one the server said answered (the
    responses' ``model``: behind a router's alias, the live adapter's own name; None when the client does not say)."""
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
        "served_model": SERVED_SEPARATOR.join(conversation.served_models) or None,
        "turns": len(conversation.turns),
        "steps": sum(len(t.steps) for t in conversation.turns),
        "tool_calls": len(conversation.calls),
        "duration_s": round(result.duration_s, 6),
        "no_answer": bool(result.conversation.no_answer),
        "request_refused": False,
        "server_refused": False,
        "cut_answers": conversation.cut_answers,
        "text_calls": conversation.text_calls,
        "conversation": json.dumps(conversation.messages, ensure_ascii=False, default=str),
        "details": json.dumps(result.details, ensure_ascii=False, default=str),
    }


def _reason(result: TaskResult, limit: int = 2) -> str | None:
    """The suite's reason, plus the calls the model tried that could not be read, the answers cut off at ``max_tokens``
    while still reasoning (they hold no call to read) and the other answers cut off at ``max_tokens`` (else a failure
    would not say why)."""
    problems = result.conversation.problems
    cut = result.conversation.cut_answers
    if result.success or not (problems or cut):
        return result.reason
    notes = [result.reason] if result.reason else []
    unread = [problem for problem in problems if CUT_WHILE_REASONING not in problem]
    if unread:
        listed = "; ".join(unread[:limit]) + (f"; and {len(unread) - limit} more" if len(unread) > limit else "")
        notes.append(f"{len(unread)} call(s) the model tried could not be read, so they were never made ({listed})")
    reasoning = [problem for problem in problems if CUT_WHILE_REASONING in problem]
    if reasoning and reasoning[0] not in (result.reason or ""):
        notes.append(f"{len(reasoning)} model answer(s) held no call and no text: {reasoning[0]}")
    if cut and not any("cut off at max_tokens" in problem for problem in problems):
        notes.append(f"{cut} model answer(s) were cut off at max_tokens (finish_reason 'length')")
    return "; ".join(notes) or None


def run_eval(job: EvalJob, *, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run ``job`` (resuming a run in ``job.out`` with the same settings); the summary per suite of the whole run.

    A run folder grows by suites: a command naming other suites than the run's earlier ones adds them, and the
    results, summary and reports hold every suite of the run. ``OUT/.lock`` is held meanwhile: a second run on the
    same folder is refused at once. Nothing is written into ``job.out`` before its suites and model spec are checked."""
    job = _workers_this_machine_takes(job)
    out = Path(job.out)
    settings = job.suite_settings()
    suites = {spec: load_suite(spec, settings) for spec in job.suites}  # a misspelled suite claims no folder
    _check_distinct(suites)
    # nor does a suite whose tasks cannot be loaded (a typo'd traces: store, a split whose ids it lacks, a tau loader raising)
    tasks = {spec: suite.tasks() for spec, suite in suites.items()}
    _warn_turns_beyond_the_step_limit(suites, tasks, job.loop_config())
    _warn_fewer_tasks_than_asked(suites, tasks)
    worker = _Worker(job)  # nor a model spec that cannot be built (a typo'd local: folder, a missing factory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _run_lock(out):
            return _run_claimed(job, out, suites, tasks, progress, worker)
    finally:
        worker.close()


def answers_to_follow(reference: list[Message]) -> int:
    """The model answers a turn takes when each answer with calls is one of its ``reference`` messages (as the oracle
    answers), then a reply: what a model that makes the ground truth's calls one answer at a time needs."""
    return sum(1 for message in reference if message.get("tool_calls")) + 1


def _warn_fewer_tasks_than_asked(suites: Mapping[str, Any], tasks: Mapping[str, list[EvalTask]]) -> None:
    """Warn, per suite, where its spec asks for more tasks (``bfcl:multi_turn_base:500``, its ``limit``) than the suite
    holds: all of them run, fewer than asked, which a report compared with another run's would not say."""
    for spec, suite in suites.items():
        limit = getattr(suite, "limit", None)
        if isinstance(limit, int) and len(tasks[spec]) < limit:
            warnings.warn(
                f"ee eval: the suite {spec} asks for {limit} tasks, but {suite.name} holds {len(tasks[spec])}: all {len(tasks[spec])} run.",
                UserWarning,
                stacklevel=3,
            )


def _warn_turns_beyond_the_step_limit(suites: Mapping[str, Any], tasks: Mapping[str, list[EvalTask]], base: LoopConfig) -> None:
    """Warn, per suite, about the tasks with a turn whose ground truth takes more answers (its calls one answer at a
    time, then the reply) than a turn may have (``max_steps_per_turn`` as the suite's loop reads it): a model that calls
    as the ground truth does (the ``oracle`` included) is cut off before the turn ends, whatever it would have done."""
    for spec, suite in suites.items():
        loop_config = getattr(suite, "loop_config", None)
        config = loop_config(base) if callable(loop_config) else base
        if not config.execute_tools:
            continue
        longest: dict[str, tuple[int, int]] = {}  # task id -> (its turn taking the most answers, that many)
        for task in tasks[spec]:
            needed = [answers_to_follow(turn) for turn in task.reference]
            if needed and max(needed) > config.max_steps_per_turn:
                longest[task.id] = (needed.index(max(needed)) + 1, max(needed))
        if not longest:
            continue
        added = config.max_steps_per_turn - base.max_steps_per_turn  # answers the suite's loop adds (BFCL's force-quit one)
        flag = max(answers for _, answers in longest.values()) - added
        example = ", ".join(f"{task_id} turn {turn}: {answers}" for task_id, (turn, answers) in list(longest.items())[:3])
        example += f", and {len(longest) - 3} more" if len(longest) > 3 else ""
        warnings.warn(
            f"ee eval: {len(longest)} task(s) of {suite.name} have a turn whose ground truth takes more model answers, its "
            f"calls one answer at a time and then the reply ({example}), than --max-steps-per-turn {base.max_steps_per_turn} "
            "lets a turn have: a model that calls as the ground truth does (the oracle included) is cut off before the "
            f"turn ends. Raise --max-steps-per-turn (max_steps_per_turn) to at least {flag}.",
            UserWarning,
            stacklevel=3,
        )


def _workers_this_machine_takes(job: EvalJob) -> EvalJob:
    """``job`` with at most the worker processes this machine's cores take (a replay job's rule, :func:`max_workers`),
    saying so when it asked for more: a job file written for a larger machine runs here with what this one takes."""
    most = max_workers("local")
    if job.workers <= most:
        return job
    warnings.warn(
        f"ee eval: workers={job.workers} is more than the {most} worker processes this machine's {os.cpu_count() or 1} CPU "
        f"core(s) take ({LOCAL_WORKERS_PER_CORE} per core); starting {most}.",
        UserWarning,
        stacklevel=3,
    )
    return job.model_copy(update={"workers": most})


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
    journal_rows = _without_silent_suites(out, read_journal(out / JOURNAL), {suite.name for suite in suites.values()})
    digests = {suite.name: {task.id: task_digests(task) for task in tasks_of[spec]} for spec, suite in suites.items()}
    journal_rows = _without_stale(out, journal_rows, digests)
    # the server gave no answer, a worker died, the server refused to render the request (its template): run again
    done = [r for r in journal_rows if not _run_again(r)]
    seen = {(r["suite"], r["task_id"], r["trial"]) for r in done}
    died = {(r["suite"], r["task_id"], r["trial"]) for r in journal_rows if r.get("no_answer") and r.get("error_type") == WORKER_DIED}
    todo: list[tuple[str, EvalTask, int]] = []
    totals = {}
    for spec, suite in suites.items():
        tasks = tasks_of[spec]
        totals[suite.name] = len(tasks) * job.trials
        todo += [(spec, t, k) for t in tasks for k in range(job.trials) if (suite.name, t.id, k) not in seen]
    counts = {name: sum(1 for r in done if r["suite"] == name) for name in totals}
    with open(out / JOURNAL, "a", encoding="utf-8") as journal:
        if _ends_inside_a_line(out / JOURNAL):  # a line a crash cut off: the next result starts on a line of its own
            journal.write("\n")
        for name in totals:
            if progress:
                progress(name, counts[name], totals[name])
        synced = time.monotonic()
        for row in _execute(job, todo, worker, died):
            row["task_digest"] = digests[row["suite"]][row["task_id"]][0]  # what a later command checks its task against
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
    done += [r for r in journal_rows if _run_again(r) and r["suite"] not in totals and (r["suite"], r["task_id"], r["trial"]) not in seen]
    excluded.update({suite.name: dict(getattr(suite, "excluded", None) or {}) for suite in suites.values()})
    names += [name for name in dict.fromkeys(r["suite"] for r in done) if name not in names]
    write_outputs(out, done, job, excluded, names)
    _mark_finished(out, excluded, job)
    return summarize(done, names, excluded)


WORKER_DIED = "worker_died"
"""The error type of a task whose worker process died while running it (killed, out of memory, a native crash). Such a
death says nothing of the model's answers: the first one is counted as ``no_answer`` (the next command runs the task
again); a task whose worker dies again, on that command, keeps it as its failure."""
NO_MODEL_ANSWER = ("model_error", "client_error", WORKER_DIED)
"""The error types of a task trial that failed on a request to the model (refused, failing, its client raising, its
worker process killed)."""
SETUP_STATUSES = (401, 403, 404, 405)
"""The HTTP statuses of a refusal that every request to that server and model gets alike (the API key, the served
model's name, the endpoint's path), whatever its messages: a refusal with another status (400 for a prompt longer than
the context) is about the request it answers, unless the server's text names its setup (``ModelRequestError.setup``)."""


def refused_for_its_messages(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a model server refusing one request for that request's own messages (a prompt longer than the
    context, a chat template failing on them): :class:`ModelRequestError` not about the server's setup nor with a
    :data:`SETUP_STATUSES` status. That task's failure says something of the task, not that the model cannot answer."""
    return isinstance(exc, ModelRequestError) and not exc.setup and exc.status not in SETUP_STATUSES


CONTEXT_REFUSAL = re.compile(
    r"context (?:length|size|window)|too long|too many (?:input )?tokens|max_new_tokens|input tokens|"
    r"maximum (?:sequence|input|prompt) length|exceeds the (?:model's )?(?:maximum|limit)",
    re.IGNORECASE,
)
"""The wording of a server refusing a request as longer than the model's context (vLLM's and the local server's
"This model's maximum context length is N tokens", llama.cpp's "exceeds the available context size", TGI's
"`inputs` tokens + `max_new_tokens` must be <= N", "prompt is too long")."""


def refused_by_server(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a model server refusing a request for its own messages (:func:`refused_for_its_messages`)
    for a cause other than their length: its chat template failing on them (vLLM answers a template's error with 400
    and the template's own text; the local server names the template), a prompt it cannot render. The model never saw
    that request, so the trial measures the server's template, not the model: it is counted apart (``server_refused``),
    warned about, run again by the next command, and refused by the gate. A prompt longer than the context
    (:data:`CONTEXT_REFUSAL`) stays that task's failure."""
    return refused_for_its_messages(exc) and not CONTEXT_REFUSAL.search(str(exc))


def _run_again(row: Mapping[str, Any]) -> bool:
    """Whether the next command runs a journal row's task trial again: the server gave no answer, its worker process
    died, or the server refused to render its request (``server_refused``: a template fixed since renders it)."""
    return bool(row.get("no_answer") or row.get("server_refused"))


def got_no_model_answer(row: Mapping[str, Any]) -> bool:
    """Whether a results row failed before the model's first answer for a cause that says nothing of the model: a
    request the model (its server, its client) could not answer, or its worker process dying, with no step of the
    model's in the conversation. A request refused for its own messages (``request_refused``: a prompt too long) is
    not one: that is the task's failure."""
    return not row.get("success") and row.get("error_type") in NO_MODEL_ANSWER and not row.get("steps") and not row.get("request_refused")


def never_answered(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, str]]:
    """suite -> (its task trials, the first one's reason) for each suite of ``rows`` in which the model never answered:
    every task trial failed before the model's first answer (:func:`got_no_model_answer`: a wrong served-model name
    refused with 404 on every request, an adapter whose weights cannot load, a client raising on every request, a worker
    process killed on every task).

    Such a suite's 0% measures the model's setup, not the model. One refused request beside answered ones stays a plain
    task failure, and so does a request refused for its own messages (a one-task suite's prompt too long); a suite whose
    every trial got no answer from a server that was down (``no_answer``) is not named here (those trials are run again
    anyway), but one whose every task's worker process died is."""
    by_suite: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_suite.setdefault(str(row["suite"]), []).append(row)
    out = {}
    for suite, items in by_suite.items():
        refused = [r for r in items if not r.get("no_answer") or r.get("error_type") == WORKER_DIED]
        if refused and all(got_no_model_answer(r) for r in items):
            first = min(refused, key=lambda r: (str(r["task_id"]), int(r.get("trial") or 0)))
            out[suite] = (len(items), str(first.get("reason") or "no reason recorded"))
    return out


def _without_silent_suites(out: Path, rows: list[dict[str, Any]], suites: set[str]) -> list[dict[str, Any]]:
    """``rows`` (the journal's) but those of this command's ``suites`` in which the model never answered
    (:func:`never_answered`): they run again, as after a fix outside the run's settings (the adapter's files copied
    again, the server's model loaded). The journal is rewritten without them (it keeps a task's first line)."""
    silent = set(never_answered(rows)) & suites
    if not silent:
        return rows
    kept = [r for r in rows if r["suite"] not in silent]
    atomic_write_text(out / JOURNAL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return kept


def task_digest(task: EvalTask) -> str:
    """A digest of what a task is: its inputs (user turns, tools, system prompt) and what it is scored against (its
    reference and payload: expected outputs and actions, ground truth, the expert's calls and world; a tau task's
    database digest). A journal row records its task's digest, so a resumed run keeps a result only while its task is
    unchanged. Where a task is run from is not part of it (:data:`LOCATION_FIELDS`): a store or vault moved keeps its
    tasks' digests.

    Read from the task's fields as they are (no copy: a suite of thousands of tasks is digested on every command); the
    same text ``dataclasses.asdict`` gives, so digests written by the version that copied still match."""
    return _digest(_located_nowhere(_fields(task)))


def task_digests(task: EvalTask) -> tuple[str, ...]:
    """The digests a journal row of ``task`` may record and still be of this task: :func:`task_digest` first, then the
    digest an earlier version wrote for it where that included where the task was run from (a vault's path), while that
    place is unchanged."""
    fields = _fields(task)
    current = _digest(_located_nowhere(fields))
    legacy = _digest(fields)
    return (current,) if legacy == current else (current, legacy)


LOCATION_FIELDS = (("privacy", "vault"),)
"""Payload entries that say where a task runs from, not what it is (a ``traces:`` task's redaction vault path, which
``EE_VAULT``, a copied or moved store, or a vault missing for a night changes): left out of :func:`task_digest`."""


def _fields(task: EvalTask) -> dict[str, Any]:
    return {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}


def _located_nowhere(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with each of :data:`LOCATION_FIELDS` the payload holds set to None (copies made only where one is set)."""
    payload = fields.get("payload")
    for outer, inner in LOCATION_FIELDS:
        part = payload.get(outer) if isinstance(payload, dict) else None
        if isinstance(part, dict) and part.get(inner) is not None:
            payload = {**payload, outer: {**part, inner: None}}
    return fields if payload is fields.get("payload") else {**fields, "payload": payload}


def _digest(fields: dict[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """JSON for what ``json`` cannot write, the same in every process (a set's order is not); a dataclass held in a task
    as ``dataclasses.asdict`` writes it (its fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) if isinstance(v, (set, frozenset)) else v for v in value), key=repr)
    if isinstance(value, bytes):
        return value.hex()
    return repr(value) if not isinstance(value, str) else value


def _without_stale(out: Path, rows: list[dict[str, Any]], digests: dict[str, dict[str, tuple[str, ...]]]) -> list[dict[str, Any]]:
    """``rows`` (the journal's) but those of this command's suites (``digests``: suite -> task id -> the digests a row of
    that task may record, :func:`task_digests`) whose task the suite does not have (a smaller ``:N``, a task removed, a
    trajectory the split no longer holds out) or whose task changed since it ran (its digest differs): they would be
    counted for tasks that are not this run's. Each is said on stderr.

    The rows of tasks the suite does not have stay in the journal (a result the model was paid for: a later command
    naming the bigger suite, or a store approving the trajectory again, uses them again while their task is unchanged);
    those of changed tasks are removed from it (their tasks run again). A row written before rows recorded their task's
    digest is kept while its task is in the suite (said too: its task cannot be checked)."""
    gone: dict[str, list[str]] = {}
    changed: dict[str, list[str]] = {}
    unchecked: dict[str, int] = {}
    kept, journal = [], []
    for row in rows:
        current = digests.get(row["suite"])
        if current is None:  # a suite of an earlier command, not loaded by this one
            kept.append(row)
        elif row["task_id"] not in current:
            gone.setdefault(row["suite"], []).append(row["task_id"])
        elif row.get("task_digest") is None:
            unchecked[row["suite"]] = unchecked.get(row["suite"], 0) + 1
            kept.append(row)
        elif row["task_digest"] not in current[row["task_id"]]:
            changed.setdefault(row["suite"], []).append(row["task_id"])
            continue
        else:
            kept.append(row)
        journal.append(row)
    for suite in sorted(gone):
        why = (
            "trajectories the split no longer holds out, or the store no longer approves, or a smaller :N"
            if suite.startswith("traces:")
            else "tasks removed, or a smaller :N"
        )
        logger.warning(
            "%s: %d earlier result(s) in %s are of task(s) the suite does not have now (%s: %s): they are left out of this "
            "command's results, summary and reports, and kept in its %s, so a command naming a suite that has those tasks "
            "again (unchanged) uses them without running them.",
            suite,
            len(gone[suite]),
            out,
            _some(gone[suite]),
            why,
            JOURNAL,
        )
    for suite in sorted(changed):
        logger.warning(
            "%s: %d earlier result(s) in %s were dropped: they are of task(s) whose definition changed since they ran (%s: "
            "their inputs, expected answers or world, as the suite's data gives them or as this version of ee-middleware "
            "builds them; they run again).",
            suite,
            len(changed[suite]),
            out,
            _some(changed[suite]),
        )
    for suite, n in sorted(unchecked.items()):
        logger.warning(
            "%s: %d earlier result(s) in %s were written by a version that did not record their task's definition: they are "
            "kept, as their tasks are still in the suite, but a change of those tasks since cannot be seen. Run into a new "
            "--out to score every task anew.",
            suite,
            n,
            out,
        )
    if changed:
        atomic_write_text(out / JOURNAL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in journal))
    return kept


def _some(ids: list[str], limit: int = 3) -> str:
    shown = list(dict.fromkeys(ids))
    return ", ".join(shown[:limit]) + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


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

    A run with other settings is refused, naming them, unless it holds no result the model answered (a typo'd
    endpoint or served-model name, a start that failed): then this command takes the folder over, and that run's
    journal is emptied."""
    run_file = out / RUN_FILE
    settings = job.run_settings()
    adapter = adapter_identity(job.model)
    record: dict[str, Any] = {"job": job.record(), "run_key": job.run_key(), "settings": settings, "version": __version__}
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
        # The split is checked task by task (_without_stale): a rebuilt split keeps the results of trajectories it still
        # holds out, unchanged, and drops the others; a run record from before "settings" has its split as typed.
        changed = job.changed_settings(previous["job"], previous.get("settings"), ignore=("split",))
        retrained = _adapter_change(previous.get("adapter"), adapter)  # retrained or copied into the same folder
        # rows with no answer of the model (a typo'd endpoint or served-model name, a killed worker) are no result to keep
        if changed or retrained:
            answered = [r for r in read_journal(out / JOURNAL) if not _run_again(r) and not got_no_model_answer(r)]
            if answered and retrained:
                raise ConfigError(
                    f"{out} holds {len(answered)} result(s) of the adapter {adapter['path'] if adapter else job.model} as it was when the run "
                    f"evaluated it, and its files changed since ({retrained}: the run's -> now; retrained or copied into the "
                    "same folder?), so the run cannot be resumed with it: its results would be of two sets of weights. "
                    "Evaluate the adapter as it is now into another --out, or delete that folder to start over."
                    + (f" (Other settings changed too: {'; '.join(changed)}.)" if changed else "")
                )
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
    if previous:
        _check_split_kept(out, settings["split"], previous, earlier, names)
    names = [*earlier, *(name for name in names if name not in earlier)]
    if previous:
        record["job"]["suites"] = sorted(set(previous["job"].get("suites") or []) | set(record["job"]["suites"]))
    record["adapter"] = _resumed_adapter(out, previous, adapter)
    record["suite_names"] = names
    record["excluded"] = excluded
    record["started"] = utcnow().isoformat(timespec="seconds")  # UTC, as every time ee writes
    record["finished"] = None  # until the results and reports of this invocation are written: the gate refuses the run
    atomic_write_text(run_file, json.dumps(record, indent=2))
    return list(names), excluded


def _check_split_kept(out: Path, after: Any, previous: dict[str, Any], earlier: list[str], names: list[str]) -> None:
    """Refuse a split (``after``: this command's, as :func:`~ee_middleware.evals.job.split_identity` says) other than
    the run's while the run holds ``traces:`` suites this command does not name: their results would stay those of the
    other split's held-out trajectories (this command checks only its own suites).

    An older run record's relative split text that names nothing from the current folder is another split here: what it
    named depended on the folder the run was made in, and no task of the suites this command does not name is checked."""
    before = EvalJob.recorded_settings(previous["job"], previous.get("settings"))["split"]
    if before is None or same_split(before, after):
        return
    others = [name for name in earlier if name.startswith("traces:") and name not in names]
    if others:
        from ee_middleware.evals.job import settings_changes

        [change] = settings_changes({"split": before}, {"split": after})
        recorded = before.get("path") if isinstance(before, dict) else before
        unresolved = unresolved_split_text(before)
        if unresolved:
            held = (
                f"{out} holds results of {', '.join(others)}, evaluated with the split its run.json records as typed, "
                f"relative to the folder the run was made in ({change}: the run's -> this command's), and {before!r} names "
                f"nothing from this folder ({Path.cwd()}), so whether the two splits hold out the same trajectories cannot "
                "be checked"
            )
            where = f"--split {recorded}, from the folder the run was made in"
        else:
            held = f"{out} holds results of {', '.join(others)}, evaluated with another split than this command's ({change}: the run's -> this command's)"
            where = f"--split {recorded}, the run.json's {'settings.split.path' if isinstance(before, dict) else 'job.split'}"
        if not (isinstance(after, dict) and after.get("digest")):  # no split, or none readable: naming the suites fails too
            raise ConfigError(
                f"{held}. A traces: suite is evaluated only on the trajectories its split holds out: give this command the "
                f"run's split ({where}), or use another --out."
            )
        name_them = f"name them too ({' '.join('--suite ' + n for n in others)})"
        raise ConfigError(
            f"{held}, and this command does not name them, so their results would stay those of the trajectories "
            f"{'that' if unresolved else 'the other'} split held out. "
            + (
                f"Run this command from the folder the run was made in (where {before!r} names its split: the two splits' "
                f"ids are then compared), or {name_them}"
                if unresolved
                else name_them[0].upper() + name_them[1:]
            )
            + ": their results are then checked against this split, and those of trajectories it no longer holds out are "
            "left out; or use another --out."
        )


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


def _adapter_change(before: Any, after: dict[str, Any] | None) -> str | None:
    """``adapter content hash: BEFORE -> AFTER`` when a run recorded its local adapter's content (``before``: its
    ``run.json``'s ``adapter``) and the adapter's folder now holds other content (``after``: :func:`adapter_identity`)."""
    if not (isinstance(before, dict) and before.get("content_hash") and after and after.get("content_hash")):
        return None
    if before["content_hash"] == after["content_hash"]:
        return None
    return f"adapter content hash: {before['content_hash'][:12]} -> {after['content_hash'][:12]}"


UNRECORDED_ADAPTER = (
    "the run was resumed from results an older version made, which did not record the adapter's content, so they may be of other weights"
)


def _resumed_adapter(out: Path, previous: dict[str, Any], adapter: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``adapter`` a run's ``run.json`` records (:func:`adapter_identity`): this command's, unless results the run
    keeps may be of other weights, since an earlier command recorded none (an older version's run) or could not tell
    (``content_hash`` None): then ``content_hash`` stays None, ``unknown`` saying why, as long as those results do."""
    if adapter is None or not previous:
        return adapter
    if not any(not _run_again(r) for r in read_journal(out / JOURNAL)):
        return adapter
    if "adapter" not in previous:
        return {**adapter, "content_hash": None, "unknown": UNRECORDED_ADAPTER}
    before = previous["adapter"]
    if isinstance(before, dict) and before.get("content_hash") is None:
        return {**adapter, "content_hash": None, "unknown": before.get("unknown") or UNRECORDED_ADAPTER}
    return adapter


def _mark_finished(out: Path, excluded: dict[str, dict[str, str]], job: EvalJob) -> None:
    record = json.loads((out / RUN_FILE).read_text())
    recorded = record.get("adapter")
    if isinstance(recorded, dict) and recorded.get("content_hash"):  # hashed again: written into while it ran?
        now = adapter_identity(job.model)
        if not now or now.get("content_hash") != recorded["content_hash"]:
            seen = (now or {}).get("content_hash") or "unreadable"
            why = f"the adapter's files changed while the run evaluated it (content hash {recorded['content_hash'][:12]} at its start, {seen[:12]} at its end)"
            record["adapter"] = {**recorded, "content_hash": None, "unknown": why}
            logger.warning("%s: %s, so its results may be of either: evaluate it again into another --out once it is written.", out, why)
    record["excluded"] = excluded
    record["finished"] = utcnow().isoformat(timespec="seconds")
    atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2))


def _result_keys(path: Path) -> set[tuple[str, str, int]] | None:
    """The (suite, task, trial) of a results.parquet, or None when it cannot be read (the gate names it then)."""
    import polars as pl

    try:
        frame = pl.read_parquet(path, columns=["suite", "task_id", "trial"])
    except (pl.exceptions.PolarsError, OSError):
        return None
    return set(frame.iter_rows())


def unfinished(out: str | os.PathLike[str]) -> str | None:
    """Why the run in ``out`` is unfinished (it was stopped before its results were written), or None.

    A run folder from before ``finished`` was recorded counts as finished when it has results."""
    path = Path(out)
    try:
        record = json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        record = {}
    rows = read_journal(path / JOURNAL)
    if (path / RESULTS).exists() and (not isinstance(record, dict) or record.get("finished", "") is not None):
        if isinstance(record, dict) and "finished" in record:
            return None
        # no record saying it finished (an older run's, or run.json removed or damaged): finished when its results hold
        # every result its journal does (a run stopped after more results than results.parquet holds passed the gate)
        written = _result_keys(path / RESULTS)
        if written is None or {(r["suite"], r["task_id"], r["trial"]) for r in rows} <= written:
            return None
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


def _ends_inside_a_line(path: Path) -> bool:
    """Whether the file at ``path`` ends without a newline (a write cut off by a crash): appended to it as it is, the next
    result joined that broken line and was lost (its task ran again on every later command)."""
    with open(path, "rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


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
                key = (row["suite"], row["task_id"], row["trial"], bool(row.get("no_answer")), bool(row.get("server_refused")))
                if key not in keys:
                    keys.add(key)
                    rows.append(row)
    return rows


def _execute(
    job: EvalJob, todo: list[tuple[str, EvalTask, int]], worker: _Worker, died_before: set[tuple[str, str, int]]
) -> Iterator[dict[str, Any]]:
    """The rows of ``todo``: in this process with ``worker`` (its caller closes it), or in ``job.workers`` processes
    (``died_before``: the (suite, task, trial) whose worker process died on an earlier command)."""
    if not todo:
        return
    if job.workers == 1:  # (a single task too goes to a worker process: its death must not end the run)
        for spec, task, trial in todo:
            yield worker.run(spec, task, trial)
        return
    yield from _in_processes(job, todo, worker.client.model, died_before)


class _Watched:
    """The worker's client as a suite gets it: the same client, remembering what its last request raised (None after an
    answer), so that a task's row can say whether the server refused that task's own request
    (:func:`refused_for_its_messages`); a task-aware client (``for_task``) is watched once bound."""

    def __init__(self, client: Any, last: list[BaseException | None]) -> None:
        self._client = client
        self._last = last

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        try:
            choices = self._client.complete(*args, **kwargs)
        except BaseException as exc:
            self._last[0] = exc
            raise
        self._last[0] = None
        return choices

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if name == "for_task" and callable(value):
            return lambda task: _Watched(value(task), self._last)
        return value


EVAL_TIMEOUT_KNOB = "`--timeout N`, or timeout_s under [eval]"
"""How an eval's user sets the model client's ``timeout_s`` (what the advice after a timeout names)."""


class _Worker:
    """A client built once, reused for every task this worker runs."""

    def __init__(self, job: EvalJob) -> None:
        self.job = job
        self.client = build_eval_client(job.model, **job.client_options())
        if getattr(self.client, "timeout_knob", False) is None:  # a served model's client: its timeout advice names the flag
            self.client.timeout_knob = EVAL_TIMEOUT_KNOB  # type: ignore[attr-defined]
        self.config: LoopConfig = job.loop_config()
        self._last: list[BaseException | None] = [None]
        self._watched = _Watched(self.client, self._last)

    def run(self, spec: str, task: EvalTask, trial: int) -> dict[str, Any]:
        suite = load_suite(spec, self.job.suite_settings())
        self._last[0] = None
        try:
            result = suite.run(self._watched, task, trial, self.config)
        except Exception as exc:  # noqa: BLE001 - a harness bug on one task is that task's failure, with the reason
            result = _crashed(suite.name, task, trial, exc)
        row = result_row(result, self.client.model)
        # the error that ended the task is its last request's: a refusal of that request's own messages is the task's
        # failure, which never_answered() does not count as "the model never answered"
        row["request_refused"] = result.error_type == "model_error" and refused_for_its_messages(self._last[0])
        row["server_refused"] = row["request_refused"] and refused_by_server(self._last[0])
        return row

    def close(self) -> None:
        self.client.close()


def _crashed(suite: str, task: EvalTask, trial: int, exc: Exception) -> TaskResult:
    from ee_middleware.evals.tasks import Conversation

    reason = f"the harness failed on this task: {type(exc).__name__}: {exc}"
    return TaskResult(suite, task.category, task.id, trial, False, reason, "harness_error", Conversation(error=reason), 0.0)


_Item = tuple[str, EvalTask, int]
_PROCESS_WORKER: _Worker | None = None
AHEAD_MAX_BYTES = 32 * 1024
"""A task is sent to a busy worker process ahead of its turn (so that it starts it without waiting for the parent) only
when it pickles to at most this many bytes: it then fits the pipe's empty buffer, and sending it never blocks the parent
while that worker writes a large row back. A larger task waits until a worker is idle."""
STOP_WAIT_S = 10.0
"""How long an idle worker process may take to end when told to (closing its model client)."""
TERMINATE_WAIT_S = 5.0
"""How long a worker process may take to end after SIGTERM (closing its model client) before it is killed."""


def _init_process(job_data: dict[str, Any], parent_pid: int) -> None:
    global _PROCESS_WORKER
    # `ee eval run` killed (SIGTERM, SIGKILL) runs no clean-up: the kernel ends this worker with it, the watchdog elsewhere.
    die_with_parent(parent_pid, _end_orphaned, death_signal=signal.SIGKILL)
    # Ctrl-C (and a hang-up) stops the run in the parent, which ends its workers. A handler that does nothing, not
    # SIG_IGN: an ignored signal stays ignored in every program this process starts (exec keeps it), so the helper
    # processes of a model client (a local server, an engine) would not get Ctrl-C; a handled one is reset there.
    signal.signal(signal.SIGINT, _ignore_signal)
    signal.signal(signal.SIGHUP, _ignore_signal)
    signal.signal(signal.SIGTERM, _end_on_signal)  # how the parent ends a busy worker: its client is closed first
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _PROCESS_WORKER = _Worker(EvalJob(**job_data))


def _ignore_signal(signum: int, frame: Any) -> None:
    """A worker's SIGINT and SIGHUP: the parent stops the run."""


def _end_on_signal(signum: int, frame: Any) -> None:
    """A worker's SIGTERM: end as after the last task, its model client closed (the processes it started with it)."""
    raise SystemExit(128 + signum)


def _end_orphaned() -> None:
    os._exit(1)


def _process_main(conn: Connection, job_data: dict[str, Any], parent_pid: int) -> None:
    """A worker process: builds its client, says it is ready, then runs one task per message until told to stop."""
    try:
        _init_process(job_data, parent_pid)
    except SystemExit:  # told to end while it started: the parent reads that as the process ending
        raise
    except BaseException as exc:  # noqa: BLE001 - the parent raises it
        _send_error(conn, exc)
        return
    assert _PROCESS_WORKER is not None
    try:
        conn.send(("ready", None))
        while (item := conn.recv()) is not None:
            try:
                row = _PROCESS_WORKER.run(*item)
            except Exception as exc:  # noqa: BLE001 - the parent raises it
                _send_error(conn, exc)
                return
            conn.send(("row", row))
    except (EOFError, OSError):  # the parent closed the pipe or is gone
        return
    finally:
        _PROCESS_WORKER.close()


def _send_error(conn: Connection, exc: BaseException) -> None:
    import pickle
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling goes as its text
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        conn.send(("error", (exc, text)))


class _RemoteTraceback(Exception):
    """Where a worker process raised (the cause of the exception the run raises for it)."""


class _WorkerDied(Exception):
    def __init__(self, exitcode: int | None) -> None:
        super().__init__(exitcode)
        self.exitcode = exitcode


class _Queued:
    """A task waiting for a worker process, pickled once (its size decides whether it may be sent ahead)."""

    __slots__ = ("_payload", "item")

    def __init__(self, item: _Item) -> None:
        self.item = item
        self._payload: bytes | None = None

    def payload(self) -> bytes:
        if self._payload is None:
            from multiprocessing.reduction import ForkingPickler

            self._payload = bytes(ForkingPickler.dumps(self.item))  # what Connection.send would send
        return self._payload


class _ProcessSlot:
    """One worker process, sent its tasks over a pipe: the one it runs and at most one ahead, which it runs next, in
    order. When it dies, the task it was running is known (the first whose row has not come back; only that one is
    lost, the one sent ahead runs elsewhere), and so is its exit status."""

    def __init__(self, context: Any, job_data: dict[str, Any], parent_pid: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_process_main, args=(child, job_data, parent_pid), name="ee-eval-worker")
        self.process.start()
        child.close()  # else the pipe would not read as closed when the process dies
        self.ready = False
        self.items: deque[_Item] = deque()
        """The tasks sent whose row has not come back: the first is running."""
        self.started = 0.0
        """When the first of ``items`` started (about: when the row before it came back)."""
        self.stop_deadline = 0.0
        """When the process, asked to end (:meth:`begin_stop`), is terminated, then killed."""
        self._terminated = False

    def give(self, queued: _Queued) -> bool:
        """Send ``queued``'s task to the process (it runs it after those it has); False when the process is gone (its
        death is read next)."""
        try:
            self.conn.send_bytes(queued.payload())
        except OSError:
            return False
        if not self.items:
            self.started = time.monotonic()
        self.items.append(queued.item)
        return True

    def receive(self) -> dict[str, Any] | None:
        """The row the process sent (None for its 'ready'); raises what it raised, or :class:`_WorkerDied` once it ended."""
        if self.conn.poll():  # what it sent before it ended comes first
            try:
                kind, value = self.conn.recv()
            except (EOFError, OSError):
                kind, value = None, None
            if kind == "ready":
                self.ready = True
                return None
            if kind == "row":
                self.items.popleft()
                self.started = time.monotonic()
                return value  # type: ignore[no-any-return]
            if kind == "error":
                exc, text = value
                raise exc from _RemoteTraceback(text)
        self.process.join(5)
        raise _WorkerDied(self.process.exitcode)

    def begin_stop(self) -> None:
        """Ask the process to end: told to stop when idle (it closes its client), else (a task still running: the run is
        stopping) terminated (SIGTERM: it closes its client too); :meth:`end_stop` waits for it."""
        now = time.monotonic()
        if self.process.is_alive() and self.ready and not self.items:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.stop_deadline = now + STOP_WAIT_S
        elif self.process.is_alive():
            self.process.terminate()
            self._terminated, self.stop_deadline = True, now + TERMINATE_WAIT_S

    def stopped(self, now: float) -> bool:
        """Whether the process has ended; one past its time is terminated, then killed."""
        if not self.process.is_alive():
            return True
        if now >= self.stop_deadline:
            if self._terminated:
                self.process.kill()
                self.process.join()
                return True
            self.process.terminate()
            self._terminated, self.stop_deadline = True, now + TERMINATE_WAIT_S
        return False

    def close(self) -> None:
        self.process.join()
        self.conn.close()


def _stop_all(slots: list[_ProcessSlot]) -> None:
    """End every worker process, all at once: a run with N hung workers stops within one wait, not N."""
    for slot in slots:
        slot.begin_stop()
    waiting = list(slots)
    while waiting:
        now = time.monotonic()
        waiting = [slot for slot in waiting if not slot.stopped(now)]
        if waiting:
            timeout = max(0.0, min(slot.stop_deadline for slot in waiting) - now)
            connection_wait([slot.process.sentinel for slot in waiting], timeout)
    for slot in slots:
        slot.close()


def _hand_out(slots: list[_ProcessSlot], queued: deque[_Queued]) -> None:
    """Give the queued tasks to the worker processes: first one to each idle process, then one ahead to each busy one
    while more tasks wait than there are processes (the last ones go to whichever process is idle first, not behind a
    long task)."""
    for ahead in (False, True):
        for slot in slots:
            if not queued or not slot.ready or len(slot.items) != int(ahead):
                continue
            if ahead and (len(queued) <= len(slots) or len(queued[0].payload()) > AHEAD_MAX_BYTES):
                return
            if slot.give(queued[0]):
                queued.popleft()


def _in_processes(
    job: EvalJob,
    todo: list[_Item],
    model: str,
    died_before: set[tuple[str, str, int]],
) -> Iterator[dict[str, Any]]:
    """The rows of ``todo`` run in ``job.workers`` processes. A process that dies running a task (killed out of memory, a
    crash in a model library's native code) fails that task (:data:`WORKER_DIED`, saying so; as ``no_answer`` unless it
    died on it before: ``died_before``), and a new process takes its place while tasks are left: the other tasks go on,
    and the same command does not die at that task again more than once."""
    context = multiprocessing.get_context("spawn")  # nothing of the parent's state (threads, caches) leaks in
    data, parent = job.model_dump(), os.getpid()
    queued = deque(_Queued(item) for item in todo)
    slots = [_ProcessSlot(context, data, parent) for _ in range(min(job.workers, len(todo)))]
    rows: list[dict[str, Any]] = []
    try:
        while True:
            _hand_out(slots, queued)  # before the rows are yielded: their caller's journal write keeps no process waiting
            for row in rows:
                yield row
            if not queued and not any(slot.items for slot in slots):
                return
            rows = []
            handles = [handle for slot in slots for handle in (slot.conn, slot.process.sentinel)]
            ready: set[Any] = set()
            while not ready:  # woken to run the signal handlers: a Ctrl-C another thread took still stops a hung run
                ready = set(connection_wait(handles, SIGNAL_CHECK_S))
            for slot in list(slots):
                if slot.conn not in ready and slot.process.sentinel not in ready:
                    continue
                try:
                    row = slot.receive()
                except _WorkerDied as death:
                    if not slot.ready:
                        raise EEError(
                            f"A worker process of the run ended while it started ({_exit_text(death.exitcode)}), before "
                            "running any task: the model client could not be built in it (see what it printed above), or "
                            "it ran out of memory. Run with fewer --workers (each builds its own model), or with --workers "
                            "1 to see the error."
                        ) from None
                    if slot.items:
                        running = slot.items.popleft()
                        rows.append(_died(job, running, death.exitcode, model, time.monotonic() - slot.started, died_before))
                        queued.extendleft(_Queued(item) for item in reversed(slot.items))  # sent ahead, never started
                        slot.items.clear()
                    slot.close()
                    slots.remove(slot)
                    if queued:  # a new process only for tasks still to run (a local: model loads in each)
                        slots.append(_ProcessSlot(context, data, parent))
                    continue
                if row is not None:
                    rows.append(row)
    finally:
        _stop_all(slots)


def _died(
    job: EvalJob, item: _Item, exitcode: int | None, model: str, duration_s: float, died_before: set[tuple[str, str, int]]
) -> dict[str, Any]:
    """The failed row of the task a worker process died running, said as a warning too: ``no_answer`` the first time (the
    next command runs it again), the task's failure when it died on it before."""
    from ee_middleware.evals.tasks import Conversation

    spec, task, trial = item
    suite = load_suite(spec, job.suite_settings()).name
    how = _exit_text(exitcode)
    again = (suite, task.id, trial) in died_before
    if again:
        reason = (
            f"the worker process running this task died ({how}) before it finished, as one did on the command before: "
            "killed (out of memory?) or crashed in native code (the model's library) on this task"
        )
        then = "it counts as failed, as it did on the command before"
    else:
        reason = (
            f"the worker process running this task died ({how}) before it finished: killed (out of memory?) or crashed in "
            "native code (the model's library); the run went on with a new worker process, and the same command runs this "
            "task again (once)"
        )
        then = "it says nothing of the model, so the same command runs it again (once)"
    logger.warning(
        "%s: task %s (trial %d): the worker process running it died (%s); %s, and the run goes on. Out of memory? Run with "
        "fewer --workers.",
        suite,
        task.id,
        trial,
        how,
        then,
    )
    conversation = Conversation(error=reason, error_type=WORKER_DIED, no_answer=not again)
    result = TaskResult(suite, task.category, task.id, trial, False, reason, WORKER_DIED, conversation, duration_s)
    return result_row(result, model)


def _exit_text(exitcode: int | None) -> str:
    """How a process ended, from its ``exitcode`` (negative: the signal that ended it)."""
    if exitcode is None:
        return "its exit status is unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        oom = ", as the kernel's out-of-memory killer does" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{oom}"
    if exitcode == 128 + signal.SIGTERM:
        return f"exit code {exitcode}: it was sent SIGTERM"
    return f"exit code {exitcode}"


__all__ = [
    "EvalJob",
    "got_no_model_answer",
    "never_answered",
    "read_journal",
    "refused_by_server",
    "refused_for_its_messages",
    "result_row",
    "run_eval",
]
