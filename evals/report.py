"""What a run leaves behind: ``results.parquet``, ``summary.json``, ``report.md``, ``report.html``, ``success.png``."""

from __future__ import annotations

import html
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_path, atomic_write_parquet, atomic_write_text
from ee_middleware.errors import hide_credentials
from ee_middleware.models.protocol import clip_middle

SUMMARY = "summary.json"


def gated_rate(suite: dict[str, Any]) -> float | None:
    """A suite summary's task success as the gate compares it (:mod:`~ee_middleware.evals.gate`: a task passes when
    every trial did): ``pass_hat_k`` for a run of several trials, else ``success_rate``; None for a suite with no task."""
    return suite.get("pass_hat_k") if (suite.get("trials") or 1) > 1 else suite.get("success_rate")


def gated_rate_name(suites: list[dict[str, Any]]) -> str:
    """What :func:`gated_rate` of ``suites`` measures, in words: ``task success``, or ``pass^k (k trials, every one
    passed)`` where they ran several trials."""
    trials = max((int(s.get("trials") or 1) for s in suites), default=1)
    return f"pass^{trials} ({trials} trials, every one passed)" if trials > 1 else "task success"


def summarize(rows: list[dict[str, Any]], suites: list[str], excluded: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """One summary per suite: ``suite``, ``tasks``, ``trials``, ``success_rate`` (0..1), ``pass_hat_k``, failures by type.

    A suite that scored no task (it loaded none, or left every one out) has ``success_rate`` and ``pass_hat_k``
    ``None`` (``null`` in ``summary.json`` and ``--json``): 0.0 would read as a model that failed every task.

    ``pass_hat`` maps each k up to the trials run to tau-bench's pass^k estimate (per task
    C(successes, k) / C(trials, k), averaged); ``pass_hat_k`` is its value at k = trials. Every suite has every key
    below, 0 (or empty, or ``None``) where nothing happened, so that a script reads them the same in every run:
    ``excluded`` and ``excluded_reasons``, the tasks a suite left out when it was built (``traces:``);
    ``no_answer``, the task trials the model server gave no answer to (down, timed out), of which ``worker_deaths``
    were task trials whose worker process died (the same command runs them again once); ``server_refused``, the task
    trials whose request the server refused to render (its chat template failed on it), and ``server_refused_reason``,
    the first one's reason; ``cut_answers``, the model's answers that ended because they reached ``max_tokens`` (finish
    reason ``length``; 0 for rows of runs from before it was recorded); ``text_calls``, the answers whose calls were read
    from their text, not from structured ``tool_calls`` (0 likewise); ``served_models``, each model that answered (as
    the responses name it) -> its task trials: more than one means the run mixes models (:func:`mixed_models_warning`);
    ``uncovered_calls_checked`` (``traces:`` suites), the tasks whose expert called tools the sandbox does not provide,
    checked as calls instead of by the world; ``never_answered``, the first task trial's reason where the model answered
    none of the suite's (:func:`~ee_middleware.evals.runner.never_answered`), else ``None``.
    """
    from ee_middleware.evals.runner import never_answered

    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_suite[row["suite"]].append(row)
    silent = never_answered(rows)
    out = []
    for name in suites:
        items = by_suite.get(name, [])
        per_task: dict[str, list[bool]] = defaultdict(list)
        for row in items:
            per_task[row["task_id"]].append(bool(row["success"]))
        trials = max((len(v) for v in per_task.values()), default=0)
        successes = sum(1 for r in items if r["success"])
        out.append(
            {
                "suite": name,
                "tasks": len(per_task),
                "trials": trials,
                "runs": len(items),
                "successes": successes,
                "success_rate": successes / len(items) if items else None,
                "pass_hat_k": sum(all(v) for v in per_task.values()) / len(per_task) if per_task else None,
                "pass_hat": _pass_hat(per_task, trials),
                "failures": _by_count(r["error_type"] or "unknown" for r in items if not r["success"]),
                "cut_answers": sum(int(r.get("cut_answers") or 0) for r in items),
                "text_calls": sum(int(r.get("text_calls") or 0) for r in items),
            }
        )
        refused = [r for r in items if r.get("server_refused")]
        first = min(refused, key=lambda r: (str(r["task_id"]), int(r.get("trial") or 0))) if refused else None
        checked = {r["task_id"] for r in items if '"uncovered_calls":' in (r.get("details") or "") and _uncovered_calls(r)}
        left_out = (excluded or {}).get(name) or {}
        out[-1].update(
            {
                "no_answer": sum(1 for r in items if r.get("no_answer")),
                "worker_deaths": sum(1 for r in items if r.get("no_answer") and r.get("error_type") == "worker_died"),
                "server_refused": len(refused),
                "server_refused_reason": str(first.get("reason") or "no reason recorded") if first else None,
                "served_models": served_models(items),
                "uncovered_calls_checked": len(checked),
                "excluded": len(left_out),
                "excluded_reasons": _by_count(left_out.values()),
                "never_answered": silent[name][1] if name in silent else None,
            }
        )
    return out


def _uncovered_calls(row: dict[str, Any]) -> int:
    """How many expert calls of tools the sandbox does not provide a ``traces:`` row checked as calls (its
    ``details.uncovered_calls``; 0 when none or the details are not JSON)."""
    try:
        details = json.loads(row.get("details") or "{}")
    except ValueError:
        return 0
    return int(details.get("uncovered_calls") or 0) if isinstance(details, dict) else 0


def served_models(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Each model the rows' ``served_model`` names (the model the server said answered) -> how many rows it answered
    in, most first (a row whose conversation two models answered counts for both); empty when no row names one."""
    from ee_middleware.evals.runner import SERVED_SEPARATOR

    return _by_count(name for row in rows if row.get("served_model") for name in str(row["served_model"]).split(SERVED_SEPARATOR))


def run_served_models(summary: list[dict[str, Any]]) -> dict[str, int]:
    """The ``served_models`` of a run's suites (:func:`summarize`) added up."""
    total: Counter[str] = Counter()
    for suite in summary:
        total.update(suite.get("served_models") or {})
    return _by_count(total.elements())


def mixed_models_warning(summary: list[dict[str, Any]]) -> str:
    """A warning when the run's answers came from more than one served model ("" otherwise): a run through a router's
    alias that was resumed (or ran on) after a promote switched the alias holds two adapters' answers."""
    served = run_served_models(summary)
    if len(served) < 2:
        return ""
    listed = ", ".join(f"{name} ({n} task trial(s))" for name, n in served.items())
    return (
        f"Warning: the answers of this run come from {len(served)} served models: {listed}. The model behind the name it "
        "asked for changed while it ran, or between the command and its resume (a promote behind a router's alias), so its "
        "scores mix them; `ee eval gate` refuses such a run (unless --allow-mixed-models). Evaluate one model: ask for it "
        "by its own name (--model ADAPTER_NAME), or run again in a new --out folder while the alias stays put."
    )


def _by_count(values: Iterable[str]) -> dict[str, int]:
    """How often each value occurs, most frequent first and ties by name: the same summary whatever order rows came in."""
    return dict(sorted(Counter(values).items(), key=lambda item: (-item[1], item[0])))


def _pass_hat(per_task: dict[str, list[bool]], trials: int) -> dict[str, float]:
    """tau-bench's pass^k for k = 1..trials (tasks with fewer trials than k are left out of that k)."""
    from fractions import Fraction
    from math import comb

    result = {}
    for k in range(1, trials + 1):  # exact fractions, rounded once: 3/4 is 0.75, not 0.7499999999999999
        values = [Fraction(comb(sum(v), k), comb(len(v), k)) for v in per_task.values() if len(v) >= k]
        result[str(k)] = float(sum(values) / len(values)) if values else 0.0
    return result


def write_outputs(
    out: Path,
    rows: list[dict[str, Any]],
    job: Any,
    excluded: dict[str, dict[str, str]] | None = None,
    names: list[str] | None = None,
) -> None:
    """Results Parquet, summary JSON, markdown and HTML reports and the bar chart, each written atomically (the model
    spec with the credentials of its URL hidden).

    ``names``: every suite's name, those that scored no task included (default: the suites of ``rows``)."""
    import polars as pl

    rows = sorted(
        (
            {
                "no_answer": False,
                "request_refused": False,
                "server_refused": False,
                "cut_answers": 0,
                "text_calls": 0,
                "served_model": None,
                **r,
            }
            for r in rows
        ),
        key=lambda r: (r["suite"], r["task_id"], r["trial"]),
    )
    names = names or list(dict.fromkeys(r["suite"] for r in rows)) or list(job.suites)
    frame = pl.DataFrame(rows, schema=_SCHEMA) if rows else pl.DataFrame(schema=_SCHEMA)
    atomic_write_parquet(frame, out / "results.parquet")
    summary = summarize(rows, names, excluded)
    cut = sum(s["cut_answers"] for s in summary)
    model = hide_credentials(job.model)  # an endpoint's user:password@ stays out of every file
    text_calls = sum(s["text_calls"] for s in summary)
    record = {"model": model, "trials": job.trials, "seed": job.seed, "cut_answers": cut, "text_calls": text_calls}
    record["served_models"] = run_served_models(summary)
    record["suites"] = summary
    atomic_write_text(out / SUMMARY, json.dumps(record, indent=2))
    chart = _bar_chart(out / "success.png", summary)
    max_tokens = getattr(job, "max_tokens", None)
    atomic_write_text(out / "report.md", markdown_report(summary, rows, model, chart, max_tokens=max_tokens))
    atomic_write_text(out / "report.html", html_report(summary, rows, model, chart, max_tokens=max_tokens))


_SCHEMA = {
    "suite": str,
    "category": str,
    "task_id": str,
    "trial": int,
    "success": bool,
    "reason": str,
    "error_type": str,
    "model": str,
    "served_model": str,
    "turns": int,
    "steps": int,
    "tool_calls": int,
    "duration_s": float,
    "no_answer": bool,
    "request_refused": bool,
    "server_refused": bool,
    "conversation": str,
    "details": str,
    "cut_answers": int,
    "text_calls": int,
    "task_digest": str,
}


def chart_figure(summary: list[dict[str, Any]]) -> Any:
    """The success-rate chart: one horizontal bar per suite, top to bottom in the run's order, so that many suites
    (the 15 BFCL categories) keep a page's width and names that do not run into each other."""
    from ee_middleware._plots import quiet_matplotlib_config

    quiet_matplotlib_config()  # a home it cannot write: no warnings in every log
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["suite"] for s in summary]
    fig, ax = plt.subplots(figsize=(8.0, 1.3 + 0.32 * max(1, len(summary))))
    bars = ax.barh(range(len(names)), [100 * (s["success_rate"] or 0.0) for s in summary], color="#4C72B0", height=0.7)
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    ax.invert_yaxis()
    ax.bar_label(bars, labels=[rate_cell(s, "success_rate") for s in summary], fontsize=8, padding=3)
    ax.set_xlim(0, 140 if any(s.get("no_answer") for s in summary) else 115)  # room for "(N unanswered)"
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("success (%)")
    ax.set_title("Success rate per suite")
    fig.tight_layout()
    return fig


def _bar_chart(path: Path, summary: list[dict[str, Any]]) -> str | None:
    try:
        fig = chart_figure(summary)  # (which imports matplotlib first, its config folder set)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path.name


REASON_CHARS = 600


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """``text`` as a sort key that orders the numbers in it by value (``t2`` before ``t10``)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)


def _failures(rows: list[dict[str, Any]], suites: list[str] | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Failed tasks, one row each: its first failed trial, with ``trial`` saying how many of the task's trials failed
    and which (``2 of 3 (0, 2)``; a bare ``0`` read as "no failed trial").

    Suite by suite in ``suites``' order (the run's), each suite's first ones: ``limit`` shared among the suites that
    have failures, at least 3 each, so that every suite's failures show however many suites ran."""
    totals = Counter((r["suite"], r["task_id"]) for r in rows)
    failing = list(dict.fromkeys(r["suite"] for r in rows if not r["success"]))
    order = [name for name in suites or [] if name in failing] + sorted(set(failing) - set(suites or []))
    per_suite = max(3, limit // max(1, len(order)))
    by_task: dict[tuple[str, str], dict[str, Any]] = {}
    failed: dict[tuple[str, str], list[str]] = defaultdict(list)
    shown: Counter[str] = Counter()
    # in the tasks' order, numbers as numbers: sorted as text, simple_python_14 came before simple_python_4, and the
    # first failures shown were not the first
    for r in sorted(rows, key=lambda r: (r["suite"], _natural(str(r["task_id"])), r["trial"])):
        if r["success"]:
            continue
        key = (r["suite"], r["task_id"])
        if key not in by_task:
            if shown[r["suite"]] >= per_suite:
                continue
            shown[r["suite"]] += 1
        by_task.setdefault(key, dict(r))
        failed[key].append(str(r["trial"]))
    for key, row in by_task.items():
        row["trial"] = f"{len(failed[key])} of {totals[key]} ({', '.join(failed[key])})"
    rank = {name: i for i, name in enumerate(order)}
    return sorted(by_task.values(), key=lambda row: rank[row["suite"]])  # stable: each suite's rows keep their order


def failures_left_out(rows: list[dict[str, Any]], shown: list[dict[str, Any]]) -> str:
    """The line under the "First failures" table of ``shown`` (:func:`_failures`) that counts the failed tasks it leaves
    out, per suite when more than one suite has some (``... and 30 more failed tasks (see results.parquet)``); "" when
    it lists every failed task."""
    listed = {(r["suite"], r["task_id"]) for r in shown}
    rank = {suite: i for i, suite in enumerate(dict.fromkeys(r["suite"] for r in shown))}  # the table's order of suites
    more = Counter(suite for suite, task in {(r["suite"], r["task_id"]) for r in rows if not r["success"]} - listed)
    if not more:
        return ""
    total = sum(more.values())
    suites = sorted(more.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))
    where = ", ".join(f"{suite}: {n}" for suite, n in suites) + "; " if len(more) > 1 else ""
    return f"... and {total} more failed task{'s' if total > 1 else ''} ({where}see results.parquet)"


def rate_text(suite: dict[str, Any], key: str) -> str:
    """A summary's rate as a percentage; ``no task`` for a suite that scored none (0.0% would read as all failed)."""
    return f"{100 * suite[key]:.1f}%" if suite["tasks"] and suite.get(key) is not None else "no task"


def rate_cell(suite: dict[str, Any], key: str) -> str:
    """:func:`rate_text` as the report tables and chart show it: with how many task trials the model server gave no
    answer to, where it gave none to some (``no_answer``: counted as failed until the same command has run them again),
    so that an outage does not read as a model that failed them."""
    unanswered = suite.get("no_answer") or 0
    return f"{rate_text(suite, key)} ({unanswered} unanswered)" if unanswered else rate_text(suite, key)


def no_task_warning(summary: list[dict[str, Any]]) -> str:
    """A warning naming the suites that scored no task ("" when every suite scored one): those that loaded none (an
    empty tasks file or split, a filter that matches nothing) and those that left every task out (``traces:``,
    with the reasons). Their rates are null, and ``ee eval gate`` refuses a run with such a suite."""
    empty = [s for s in summary if not s["tasks"]]
    if not empty:
        return ""
    said = []
    for s in empty:
        reasons = s.get("excluded_reasons") or {}
        if s.get("excluded"):
            why = "; ".join(f"{n}: {reason}" for reason, n in reasons.items())
            said.append(f"{s['suite']} left out every one of its {s['excluded']} task(s) ({why})")
        else:
            said.append(f"{s['suite']} loaded no task (check its tasks or split: an empty tasks file, a split or filter that matches none)")
    return (
        f"Warning: {len(empty)} suite(s) scored no task, so their success_rate and pass_hat_k are null and "
        f"`ee eval gate` refuses this run: {'; '.join(said)}."
    )


def _cell(text: Any) -> str:
    """A markdown table cell: pipes escaped and lines joined, so a task name or reason cannot break the table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


_UNANSWERED = (
    (
        "the model server gave no answer on {total} task trial(s) (down or timed out; {where})",
        " once the server is up: it runs only those again.",
    ),
    (
        "the worker process running {total} task trial(s) died ({where}; killed out of memory, or a crash in the model's "
        "library: see each one's reason), which says nothing of the model",
        ", with fewer --workers if memory ran short: it runs only those again, once (a task whose worker dies again keeps "
        "that as its failure).",
    ),
)
"""The two kinds of unanswered trials :func:`unanswered_warning` names: what happened (``{total}`` trials, ``{where}``
per suite), and what to add to 'run the same command again'."""


def unanswered_warning(summary: list[dict[str, Any]], limit: int = 300) -> str:
    """A warning when the model server gave no answer on some tasks, the worker process running some died, or the server
    refused to render some tasks' requests (its chat template failed on them: ``server_refused``) ("" when none of
    these), naming the suites (a run may hold suites several commands added: the command to run again is the one with
    those suites)."""
    server = {s["suite"]: s.get("no_answer", 0) - s.get("worker_deaths", 0) for s in summary}
    deaths = {s["suite"]: s.get("worker_deaths", 0) for s in summary}
    said = []
    for counts, (what, again) in zip((server, deaths), _UNANSWERED, strict=True):
        if total := sum(counts.values()):
            where = ", ".join(f"{suite}: {n}" for suite, n in counts.items() if n)
            said.append(
                f"Warning: {what.format(total=total, where=where)}; they count as failures here. "
                f"Run the same `ee eval run` command (with those suites) again{again}"
            )
    refused = [s for s in summary if s.get("server_refused")]
    if refused:
        where = "; ".join(
            f"{s['suite']}: {s['server_refused']} of {s['runs']}, the first: " + clip_middle(s["server_refused_reason"], limit)
            for s in refused
        )
        said.append(
            f"Warning: the model server refused to render the request of {sum(s['server_refused'] for s in refused)} task "
            f"trial(s) before the model answered it ({where}). That is the server, not the model's answer (its reason, "
            "quoted: most often its chat template (--chat-template, or the model's own) failing on the conversation, "
            "else its check of the request, such as a tool name or schema it does not take): they count as failures "
            "here, and `ee eval gate` refuses this run. Fix what it names (serve a template that renders these "
            "conversations, or a server that takes these tools) and run the same `ee eval run` command (with those "
            "suites) again: it runs only those again."
        )
    return "\n".join(said)


CUT_COLUMN = "cut at max_tokens"
"""The report tables' column of answers cut off at ``max_tokens`` (``cut_answers``)."""


def cut_warning(summary: list[dict[str, Any]], max_tokens: int | None = None) -> str:
    """A warning naming how many of the model's answers, in which suites, ended at ``max_tokens`` (finish reason
    ``length``) and how to raise it ("" when none did). ``max_tokens``: the run's limit, to name it."""
    cut = [(s["suite"], int(s.get("cut_answers") or 0)) for s in summary if s.get("cut_answers")]
    if not cut:
        return ""
    total = sum(n for _, n in cut)
    where = ", ".join(f"{n} in {suite}" for suite, n in cut)
    limit = f"={max_tokens}" if max_tokens else ""
    bfcl = (
        " BFCL's own runners send no max_tokens (OpenAI-compatible function calling) or up to 4096."
        if any(suite.startswith("bfcl:") for suite, _ in cut)
        else ""
    )
    return (
        f"Warning: {total} model answer(s) were cut off at max_tokens{limit} (finish_reason 'length'): {where}. "
        "A cut answer (a long list of parallel calls, a reasoning model's thinking) is usually unreadable or incomplete "
        "and scores as a failure, so these scores may show the token limit rather than the model. Raise it with "
        "`ee eval run --max-tokens N` (or `max_tokens` in the [eval] table of the --config file) and run again in a new --out folder."
        + bfcl
    )


def text_calls_note(summary: list[dict[str, Any]]) -> str:
    """A note naming the BFCL suites' answers whose calls were read from their text, not from ``tool_calls`` ("" when
    none was): bfcl-eval's function-calling runner reads only ``tool_calls``, so its numbers would differ."""
    counts = [(s["suite"], int(s.get("text_calls") or 0)) for s in summary if s["suite"].startswith("bfcl:") and s.get("text_calls")]
    if not counts:
        return ""
    where = ", ".join(f"{n} in {suite}" for suite, n in counts)
    return (
        f"Note: {sum(n for _, n in counts)} answers' calls were read from text, not tool_calls ({where}): the model wrote "
        "them in its answer's text (a local model, or a server without a tool parser), and each such answer was wholly "
        "calls. bfcl-eval's function-calling runner reads only tool_calls and fails such an answer "
        "(ast_decoder:decoder_failed), so these scores are not comparable with its FC numbers."
    )


def markdown_report(
    summary: list[dict[str, Any]], rows: list[dict[str, Any]], model: str, chart: str | None, *, max_tokens: int | None = None
) -> str:
    """The markdown report; ``max_tokens``: the run's limit, named in the warning about answers cut off at it."""
    lines = [f"# Evaluation of `{model}`", ""]
    served = run_served_models(summary)
    if served:
        lines += ["Answered by: " + ", ".join(f"`{_cell(name)}` ({n} task trial(s))" for name, n in served.items()), ""]
    lines += [
        f"| suite | tasks | trials | success | pass^k | failures | {CUT_COLUMN} |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for s in summary:
        failures = ", ".join(f"{k}: {v}" for k, v in s["failures"].items()) or "-"
        lines.append(
            f"| {_cell(s['suite'])} | {s['tasks']} | {s['trials']} | {rate_cell(s, 'success_rate')} | {rate_cell(s, 'pass_hat_k')} | {failures} "
            f"| {s.get('cut_answers', 0)} |"
        )
    for warning in _report_warnings(summary, max_tokens):
        lines += ["", warning]
    if chart:
        lines += ["", f"![success rate per suite]({chart})"]
    failed = _failures(rows, [s["suite"] for s in summary])
    if failed:
        lines += [
            "",
            "## First failures",
            "",
            "| suite | task | failed trials | reason (first failed trial) |",
            "| --- | --- | ---: | --- |",
        ]
        for r in failed:
            lines.append(f"| {_cell(r['suite'])} | {_cell(r['task_id'])} | {r['trial']} | {_cell((r['reason'] or '')[:REASON_CHARS])} |")
        more = failures_left_out(rows, failed)
        if more:
            lines += ["", _cell(more)]
    return "\n".join(lines) + "\n"


def _report_warnings(summary: list[dict[str, Any]], max_tokens: int | None) -> list[str]:
    """The warnings and notes both reports show under their table, in order (those that apply)."""
    found = (
        no_task_warning(summary),
        mixed_models_warning(summary),
        unanswered_warning(summary),
        cut_warning(summary, max_tokens),
        text_calls_note(summary),
    )
    return [warning for warning in found if warning]


def html_report(
    summary: list[dict[str, Any]], rows: list[dict[str, Any]], model: str, chart: str | None, *, max_tokens: int | None = None
) -> str:
    """The HTML report; ``max_tokens``: the run's limit, named in the warning about answers cut off at it."""
    e = html.escape
    body = [f"<h1>Evaluation of <code>{e(model)}</code></h1>"]
    served = run_served_models(summary)
    if served:
        body.append("<p>Answered by: " + ", ".join(f"<code>{e(name)}</code> ({n} task trial(s))" for name, n in served.items()) + "</p>")
    body += [
        "<table><tr><th>suite</th><th>tasks</th><th>trials</th><th>success</th><th>pass^k</th><th>failures</th>"
        f"<th>{e(CUT_COLUMN)}</th></tr>",
    ]
    for s in summary:
        failures = ", ".join(f"{k}: {v}" for k, v in s["failures"].items()) or "-"
        body.append(
            f"<tr><td>{e(s['suite'])}</td><td>{s['tasks']}</td><td>{s['trials']}</td><td>{rate_cell(s, 'success_rate')}</td>"
            f"<td>{rate_cell(s, 'pass_hat_k')}</td><td>{e(failures)}</td><td>{s.get('cut_answers', 0)}</td></tr>"
        )
    body.append("</table>")
    for warning in _report_warnings(summary, max_tokens):
        body.append(f"<p><strong>{e(warning)}</strong></p>")
    if chart:
        body.append(f'<p><img src="{e(chart)}" alt="success rate per suite"></p>')
    failed = _failures(rows, [s["suite"] for s in summary])
    if failed:
        body.append(
            "<h2>First failures</h2><table><tr><th>suite</th><th>task</th><th>failed trials</th><th>reason (first failed trial)</th></tr>"
        )
        body += [
            f"<tr><td>{e(r['suite'])}</td><td>{e(r['task_id'])}</td><td>{r['trial']}</td><td>{e((r['reason'] or '')[:REASON_CHARS])}</td></tr>"
            for r in failed
        ]
        body.append("</table>")
        more = failures_left_out(rows, failed)
        if more:
            body.append(f"<p>{e(more)}</p>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
