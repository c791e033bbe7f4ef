"""The run report: ``report.md`` and ``report.html`` (same content) with charts, from the stage manifests.

Sections: how big the run was, the outcome (gate decision, what was promoted, which metric moved),
the stages (time, peak memory, decisions), budget cuts, what was learned from (counts by app,
approval source and tool), replay, datasets, training (the loss curve the trainer drew), candidate
vs live on every suite and on the held-out likelihood (tables and a chart), and the lineage from
trajectory ids to the deploy, with the commands that show each one.
"""

from __future__ import annotations

import html
import math
import shlex
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_path, atomic_write_text
from ee_middleware.errors import ConfigError, as_sentence
from ee_middleware.jobs.runs import Run

CHART = "eval.png"


@dataclass(frozen=True)
class Block:
    """One piece of the report: ``kind`` is h1, h2, p, list, table, img or code."""

    kind: str
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()
    header: tuple[str, ...] = ()


def write_report(run: Run) -> dict[str, Path]:
    """Write the run's report and chart; returns their paths."""
    blocks = build_blocks(run)
    markdown, page = run.folder / "report.md", run.folder / "report.html"
    atomic_write_text(markdown, to_markdown(blocks))
    atomic_write_text(page, to_html(blocks, f"ee improve run {run.id}"))
    return {"markdown": markdown, "html": page}


def build_blocks(run: Run) -> list[Block]:
    out = {m["stage"]: m for m in run.stages()}
    done = {name: m.get("outputs") or {} for name, m in out.items() if m.get("status") == "done"}
    blocks = [Block("h1", f"ee improve run {run.id}: {run.status}")]
    blocks += _scale(run, done)
    blocks += _outcome(run, done)
    blocks += _stages(run, out)
    blocks += _cuts(run)
    blocks += _learned_from(run, done)
    blocks += _replay(done)
    blocks += _datasets(done)
    blocks += _training(run, done)
    blocks += _evaluation(run, done)
    blocks += _lineage(run, done)
    return blocks


def _n(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _duration(run: Run) -> str:
    """Wall time from start to finish; for a run continued by later attempts, the stages' own time as well (the time
    between attempts, a night perhaps, is no work of the run's)."""
    try:
        start = datetime.fromisoformat(run.data["started_at"])
        end = datetime.fromisoformat(run.data.get("finished_at") or run.data.get("updated_at"))
    except (TypeError, ValueError, KeyError):
        return "-"
    text = f"{(end - start).total_seconds() / 60:.1f} min"
    if int(run.data.get("attempts", 1)) > 1:
        worked = sum(stage_seconds(m) for m in run.stages())
        text = f"{worked / 60:.1f} min in stages ({text} from the first start to the end, between attempts included)"
    return text


def stage_seconds(manifest: dict[str, Any]) -> float:
    """A stage's own time over all its attempts (those that recorded one: an attempt killed outright did not)."""
    return float(manifest.get("seconds_earlier_attempts") or 0.0) + float(manifest.get("seconds") or 0.0)


def _seconds_text(manifest: dict[str, Any]) -> str:
    """This attempt's seconds, and the stage's total when earlier attempts worked too: ``1.7 (31.7 in 3 attempts)`` (an
    attempt killed outright, SIGKILL, recorded no time: it is said to be left out)."""
    text = _n(manifest.get("seconds"), 1)
    if manifest.get("seconds_earlier_attempts") or manifest.get("untimed_attempts"):
        untimed = int(manifest.get("untimed_attempts") or 0)
        killed = f"; {untimed} killed outright, not timed" if untimed else ""
        text += f" ({stage_seconds(manifest):.1f} in {manifest.get('attempt', 2)} attempts{killed})"
    return text


def _scale(run: Run, done: dict[str, dict[str, Any]]) -> list[Block]:
    select, data, train, ev = done.get("select", {}), done.get("datasets", {}), done.get("train", {}), done.get("evaluate", {})
    improve = run.data.get("config", {}).get("improve", {})
    suites = [s for side in ev.get("runs", {}).values() for s in side.get("suites", [])][: len(improve.get("suites", []))]
    tasks = ", ".join(f"{s['tasks']} tasks of {s['suite']}" for s in suites) or "-"
    like = ev.get("likelihood") or {}
    lines = [
        f"learned from {data.get('trajectories', '-')} approved trajectories of `{improve.get('app')}` "
        f"({select.get('new', '-')} new since the last successful run), {data.get('train_trajectories', '-')} used for training, "
        f"{data.get('heldout_trajectories', '-')} held out",
        f"replay: {select.get('to_replay', '-')} trajectories this run, k = {select.get('k', '-')}",
        f"training: {train.get('steps', '-')} optimizer steps ({train.get('backend', '-')} on {train.get('device', '-')}), "
        f"{train.get('tokens', '-')} tokens, base model `{train.get('base_folder', improve.get('base_model'))}`",
        f"evaluation: {tasks}; likelihood on {like.get('states', '-')} held-out states",
        f"wall time {_duration(run)}, {run.data.get('attempts', 1)} attempt(s)",
    ]
    note = (
        "This is the scale of this run. At this size task success rarely moves and the held-out action likelihood is "
        "the sensitive measure; read the numbers below with their uncertainty."
    )
    blocks = [Block("h2", "How big this run was")]
    if improve.get("notes"):
        blocks.append(Block("p", str(improve["notes"])))
    return [*blocks, Block("list", rows=tuple((line,) for line in lines)), Block("p", note)]


def _outcome(run: Run, done: dict[str, dict[str, Any]]) -> list[Block]:
    blocks = [Block("h2", "Outcome")]
    gate, promote = done.get("gate"), done.get("promote")
    if run.status == "nothing-new":
        return [*blocks, Block("p", run.data.get("outcome", {}).get("reason", "nothing new"))]
    if run.data.get("error"):
        blocks.append(Block("p", _ended_text(run)))
    if done.get("register", {}).get("unchanged"):  # the registry handed back the live adapter: nothing evaluated or promoted
        blocks.append(Block("p", f"Unchanged: {done['register']['unchanged']}."))
    if gate is not None:
        verdict = "PASSED" if gate["passed"] else "FAILED: " + "; ".join(gate["reasons"])
        blocks.append(Block("p", f"Gate {verdict}."))
        blocks.append(Block("list", rows=tuple((line,) for line in gate.get("moved", []))))
    if promote is not None:
        if promote.get("promoted"):
            text = f"Promoted `{promote['live']}` (it replaced {promote.get('replaced') or 'the base model'})."
        else:
            live = promote.get("live")
            text = f"Not promoted; the live model stays {f'`{live}`' if live else 'the base model'}."
            if promote.get("turned_down"):  # the gate passed: why it was not promoted
                text += " " + "; ".join(promote.get("reasons") or []) + "."
        blocks.append(Block("p", text))
    return blocks


def _ended_text(run: Run) -> str:
    """How and where an unfinished run ended, in one sentence, with the advice to continue it said once."""
    error = str(run.data["error"]).strip()
    stage = next((m["stage"] for m in run.stages() if m.get("status") in ("failed", "stopped")), None)
    where = f" in its {stage} stage" if stage else ""
    advice = "`ee improve` with the same config continues it."
    if run.status == "abandoned":  # (--new-run): no call continues it
        retired = (run.data.get("outcome") or {}).get("abandoned_candidate")
        advice = f"It was then abandoned ({(run.data.get('outcome') or {}).get('abandoned', 'by hand')}): no call continues it" + (
            ", and its candidate was retired." if retired else "."
        )
    if error.startswith("KeyboardInterrupt"):  # Ctrl-C, or SIGTERM/SIGHUP from a scheduler (see error_text)
        signal = error.partition(":")[2].strip().split(" ")[0] or "SIGINT"
        return f"The run was interrupted by {signal}{where}; {advice}"
    said = as_sentence(error)
    stopped = run.status == "stopped" or (run.status == "abandoned" and "continues it" in error)  # (max_minutes' words)
    ended = "stopped" if stopped else "failed"
    if "continues it" in error and run.status != "abandoned":  # max_minutes' own words give the advice already
        return f"The run {ended}{where}: {said}"
    return f"The run {ended}{where}: {said} {advice}"


def peak_rss_text(manifest: dict[str, Any]) -> str:
    """A stage's peak resident memory as ``"OWN / CHILDREN"`` MiB; ``(so far)`` where the own peak
    could not be measured per stage (no ``/proc``: it is then the process's peak up to that stage)."""
    rss = manifest.get("peak_rss_mb") or {}
    if not rss:
        return "-"
    text = f"{rss.get('self', 0):.0f} / {rss.get('children', 0):.0f}"
    return text if manifest.get("peak_rss_per_stage") else f"{text} (so far)"


def _stages(run: Run, manifests: dict[str, dict[str, Any]]) -> list[Block]:
    rows = []
    for name in run.data.get("stage_order", []):
        m = manifests.get(name)
        if m is None:
            rows.append((name, "not run", "-", "-", "-", ""))
            continue
        said = list(m.get("decisions") or [])
        summary = m.get("summary")
        if summary and any(d.lower().startswith(summary.lower()) for d in said):  # a decision says it, and more (the gate's)
            summary = None
        decisions = m.get("error") or "; ".join(([summary] if summary else []) + said)
        rows.append((name, m["status"], _seconds_text(m), str(m.get("attempt", 1)), peak_rss_text(m), decisions))
    header = ("stage", "status", "seconds", "attempt", "peak RSS MiB (own / children)", "result and decisions")
    return [Block("h2", "Stages"), Block("table", rows=tuple(rows), header=header), *_earlier_attempts(run)]


def _earlier_attempts(run: Run) -> list[Block]:
    """How each earlier attempt of a continued run ended (run.json's ``earlier_attempts``): its process, where and why."""
    lines = []
    for attempt in run.data.get("earlier_attempts") or []:
        where = f" in its {attempt['stage']} stage" if attempt.get("stage") else ""
        error = f": {attempt['error']}" if attempt.get("error") else ""
        lines.append(
            (
                f"attempt {attempt.get('attempt', '?')} (pid {attempt.get('pid', '?')} on {attempt.get('host') or '?'}, started "
                f"{attempt.get('started_at') or '?'}) {attempt.get('ended', 'ended')}{where} at {attempt.get('ended_at') or '?'}{error}",
            )
        )
    if not lines:
        return []
    return [
        Block("p", "Earlier attempts of this run (each later one continued it from its first unfinished stage):"),
        Block("list", rows=tuple(lines)),
    ]


def _cuts(run: Run) -> list[Block]:
    cuts = run.data.get("budget_cuts") or []
    if not cuts:
        return [Block("h2", "Budgets"), Block("p", "No budget of [improve.budgets] cut anything in this run.")]
    rows = tuple((c["budget"], _n(c.get("limit")), str(c.get("stage")), c["cut"]) for c in cuts)
    return [Block("h2", "Budgets"), Block("table", rows=rows, header=("budget", "limit", "stage", "what it cut"))]


def _counts_table(title: str, counts: dict[str, int], limit: int = 15) -> Block:
    items = list(counts.items())
    rows = [(k, str(v)) for k, v in items[:limit]]
    if len(items) > limit:
        rows.append((f"({len(items) - limit} more)", str(sum(v for _, v in items[limit:]))))
    return Block("table", rows=tuple(rows), header=(title, "count"))


def _learned_from(run: Run, done: dict[str, dict[str, Any]]) -> list[Block]:
    select, data = done.get("select"), done.get("datasets")
    if not select:
        return []
    blocks = [Block("h2", "What was learned from")]
    app = run.app or "the app"
    lead = ""
    if data:  # the datasets are built from every approved trajectory of the app, not only the new ones
        lead = (
            f"The datasets were built from {data.get('trajectories', '-')} approved trajectories of {app} "
            f"({data.get('train_trajectories', '-')} trained on, {data.get('heldout_trajectories', '-')} held out for evaluation). "
        )
    new = int(select.get("new") or 0)
    if not new:
        return [*blocks, Block("p", f"{lead}None of them was approved since the last successful run.")]
    them = "of them were" if data else "trajectories were"
    since = f"{lead}{new} {them} approved since the last successful run"
    blocks.append(Block("p", f"{since}; by app, approval source, and the tool calls recorded in them:"))
    return [
        *blocks,
        _counts_table("app", select.get("by_app", {})),
        _counts_table("approved by", select.get("by_approval_source", {})),
        _counts_table("tool", select.get("by_tool", {})),
    ]


def _replay(done: dict[str, dict[str, Any]]) -> list[Block]:
    replay = done.get("replay")
    if not replay:
        return []
    rows = tuple(
        (k, _n(replay.get(k)))
        for k in ("trajectories", "states", "branches", "errors", "rejected", "fidelity_mismatches", "rollouts", "replay_id")
    )
    blocks = [Block("h2", "Replay"), Block("table", rows=rows, header=("measure", "value"))]
    if replay.get("statuses"):
        blocks.append(_counts_table("trajectory status", replay["statuses"]))
    if replay.get("by_tool"):
        blocks.append(_counts_table("alternative tool", replay["by_tool"]))
    blocks += _not_in_sandbox(replay)
    if replay.get("fidelity_by_tool"):
        blocks.append(
            Block(
                "p",
                "Expert steps whose tool answered differently in the sandbox than in production (fidelity mismatches, "
                "as far as the replay records describe them): the sandbox's world or tools differ from production there.",
            )
        )
        blocks.append(_counts_table("tool (fidelity mismatches)", replay["fidelity_by_tool"]))
        for example in replay.get("fidelity_examples", [])[:1]:
            where = f"trajectory {example['trajectory_id']}, step {example.get('step')}, {example.get('tool')}"
            blocks.append(Block("p", f"First mismatch ({where}), recorded against sandbox:"))
            blocks.append(Block("code", str(example.get("sandbox_failure") or example.get("diff") or "")))
    return blocks


def _not_in_sandbox(replay: dict[str, Any]) -> list[Block]:
    """The tools the replay sandbox does not provide: per tool, the proposals refused and the expert's calls not
    replayed, with what ``ee replay run`` says of each (the stage's ``refused_hints``)."""
    from ee_middleware.replay.job import FINAL_CALLS_NOT_REPLAYED

    refused, final = replay.get("refused_tools") or {}, replay.get("final_calls_not_replayed") or {}
    if not refused and not final:
        return []
    hints = replay.get("refused_hints") or {}
    rows = tuple((tool, str(refused.get(tool, 0)), str(final.get(tool, 0))) for tool in sorted(set(refused) | set(final)))
    blocks = [
        Block("p", "Tools the replay sandbox does not provide: their alternatives were refused (no branch stored for them)."),
        Block("table", rows=rows, header=("tool (not in the sandbox)", "proposals refused", "expert calls not replayed")),
    ]
    blocks += [Block("p", f"{tool}: {hints[tool]}") for tool in sorted(refused) if hints.get(tool)]
    if final:
        blocks.append(Block("p", f"Expert calls not replayed (at a trajectory's last tool call): {FINAL_CALLS_NOT_REPLAYED}."))
    return blocks


def _datasets(done: dict[str, dict[str, Any]]) -> list[Block]:
    data = done.get("datasets")
    if not data:
        return []
    rows = tuple(
        (kind, str(n), str(data.get("heldout_rows", {}).get(kind, 0)), data["files"][kind]["sha256"][:12])
        for kind, n in data["rows"].items()
    )
    text = (
        f"{data['trajectories']} approved trajectories, {data['steps']} steps, {data['rollouts']} rollouts; "
        f"{data['train_trajectories']} trajectories for training, {data['heldout_trajectories']} held out (rule: "
        f"{_describe_rule(data.get('split_rule'))})."
    )
    blocks = [Block("h2", "Datasets"), Block("p", text), Block("table", rows=rows, header=("kind", "rows", "held-out rows", "sha256"))]
    return blocks + _left_out(data)


def _left_out(data: dict[str, Any]) -> list[Block]:
    """The rows the build left out, per kind, split and reason, with the fix; the tools IL lost every example of; the
    trajectories approved after the select stage (in the datasets, not replayed by the run)."""
    from ee_middleware.jobs.stages import approved_after_select_text, lost_tool_text

    blocks: list[Block] = []
    left_out = data.get("left_out") or []
    if left_out:
        rows = tuple((e["kind"], e["split"], str(e["count"]), e["why"], e["fix"]) for e in left_out)
        blocks.append(
            Block("p", "Left out of the datasets (expert steps of IL, rows of IWM and SR, and rollouts before any kind was built):")
        )
        blocks.append(Block("table", rows=rows, header=("kind", "split", "left out", "why", "fix")))
    by_tool = data.get("il_by_tool") or {}
    if by_tool:
        rows = tuple((tool, str(n["expert_calls"]), str(n["taught"])) for tool, n in by_tool.items())
        blocks.append(Block("p", "Tools with expert calls in the training trajectories that IL does not teach:"))
        blocks.append(Block("table", rows=rows, header=("tool", "expert calls", "taught by IL")))
    blocks += [Block("p", f"WARNING: {lost_tool_text(tool)}.") for tool in data.get("tools_without_examples") or []]
    if data.get("approved_after_select"):
        blocks.append(Block("p", approved_after_select_text(data["approved_after_select"]) + "."))
    return blocks


def _describe_rule(rule: Any) -> str:
    """The held-out rule's parts in force, in words (``split_rule`` of datasets.json)."""
    if not isinstance(rule, dict):
        return "-" if rule is None else str(rule)
    parts = []
    if rule.get("share"):
        parts.append(f"a seeded share of {rule['share']:g} of the trajectories (seed {rule.get('seed', 0)})")
    if rule.get("ids"):
        parts.append(f"{rule['ids']} listed ids")
    if rule.get("app"):
        parts.append(f"the app {rule['app']}")
    if rule.get("started_after"):
        parts.append(f"started after {rule['started_after']}")
    if rule.get("started_before"):
        parts.append(f"started before {rule['started_before']}")
    return ", ".join(parts) or "none"


def _describe_models(models: Any) -> str:
    """How the baseline and the candidate were evaluated (their model specs), in words."""
    if not isinstance(models, dict) or not models:
        return "-" if not models else str(models)
    said = [f"{side} as `{spec}`" for side, spec in models.items()]
    return said[0].replace(" as ", " evaluated as ", 1) + "".join(f", {s}" for s in said[1:])


def _training(run: Run, done: dict[str, dict[str, Any]]) -> list[Block]:
    from ee_middleware.trainers.training.report import loss_text

    train = done.get("train")
    if not train:
        return []
    rows = tuple(
        (s["name"], str(s["steps"]), str(s["tokens"]), _n(s.get("first_loss")), _n(s.get("final_loss")), _n(s.get("seconds"), 1))
        for s in train.get("stages", [])
    )
    blocks = [
        Block("h2", "Training"),
        Block(
            "p",
            f"{train['steps']} steps of {train['planned_steps']} planned; {loss_text(train)}; "
            f"{train['train_seconds']:.0f} s on {train['device']}.",
        ),
        Block("table", rows=rows, header=("stage", "steps", "tokens", "first loss", "last loss", "seconds")),
    ]
    loss = Path(train["loss_png"])
    if loss.is_file():
        blocks.append(Block("img", _relative(loss, run.folder), header=("training loss",)))
    return blocks


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def _evaluation(run: Run, done: dict[str, dict[str, Any]]) -> list[Block]:
    ev, gate = done.get("evaluate"), done.get("gate")
    if not ev:
        return []
    baseline, candidate = ev["baseline"], ev["candidate"]
    models = _describe_models(ev.get("models"))
    blocks = [Block("h2", "Candidate vs live"), Block("p", f"Candidate `{candidate}` vs baseline `{baseline}` ({models}).")]
    from ee_middleware.evals.report import gated_rate, gated_rate_name

    comparisons = {c["suite"]: c for c in (gate or {}).get("task_success", {}).get("suites", [])}
    rows = []
    base_suites = {s["suite"]: s for s in ev["runs"]["baseline"]["suites"]}
    measured = gated_rate_name([*ev["runs"]["candidate"]["suites"], *base_suites.values()])
    if measured != "task success":  # the per-trial rate beside a delta of pass^k contradicted it (a report sweep)
        blocks.append(Block("p", f"Task success below is {measured}, as the gate compares it."))
    for s in ev["runs"]["candidate"]["suites"]:
        b = base_suites.get(s["suite"], {})
        c = comparisons.get(s["suite"], {})
        # to a tenth of a point, as the gate's notes give it: whole points showed [-0, +10] for a CI from -0.43 to +9.84
        ci = f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]" if c else "-"
        rows.append(
            (
                s["suite"],
                str(s["tasks"]),
                _pct(gated_rate(b)) if b.get("tasks") else "-",
                _pct(gated_rate(s)) if s["tasks"] else "-",
                f"{100 * c['delta']:+.1f}" if c else "-",
                ci,
                _n(c.get("p_value")),
            )
        )
    header = ("suite", "tasks", "baseline", "candidate", "delta (points)", "95% CI", "McNemar p")
    blocks.append(Block("table", rows=tuple(rows), header=header))
    excluded = [
        f"{s['suite']}: {s['excluded']} task(s) left out: "
        + "; ".join(f"{why} ({count})" for why, count in (s.get("excluded_reasons") or {}).items())
        for s in ev["runs"]["candidate"]["suites"]
        if s.get("excluded")
    ]
    if excluded:
        blocks.append(Block("list", rows=tuple((line,) for line in excluded)))
    like = ev.get("likelihood")
    if like:
        from ee_middleware.jobs.deploy import compare_likelihood, nll_decimals, paired_text

        names = like.get("names", {})
        vs_live = compare_likelihood(like) if like.get("baseline") == "live" else None  # what the gate compares
        spreads = [v for m in like["models"] for v in (m.get("paired_diff"), m.get("paired_se"))]
        d = nll_decimals(*spreads, *((vs_live["diff"], vs_live["se"]) if vs_live else ()))
        lrows = tuple(
            (
                f"{m['model']} ({names.get(m['model'], '')})",
                _n(m["mean_nll"], d),
                paired_text(m["paired_diff"], m.get("paired_se"), d) if m.get("paired_diff") is not None else "-",
                _pct(m.get("improved_share")),
                *(
                    (f"{paired_text(vs_live['diff'], vs_live['se'], d)}, {_pct(vs_live['improved_share'])} improved",)
                    if vs_live and m["model"] == "candidate"
                    else ("-",)
                    if vs_live
                    else ()
                ),
                _pct(m.get("parse_rate")),
                _pct(m.get("exact_match")),
            )
            for m in like["models"]
        )
        paired = "paired against the base" + (
            f" and, as the gate compares, the candidate against the live adapter {names.get('live', '')}" if vs_live else ""
        )
        blocks.append(Block("p", f"Held-out expert-action NLL per token on {like['states']} states (lower is better; {paired}):"))
        header = ("model", "mean NLL", "vs base (± s.e.)", "improved", *(("vs live (± s.e.)",) if vs_live else ()), "parse", "exact call")
        blocks.append(Block("table", rows=lrows, header=header))
    if gate and gate.get("moved"):
        blocks.append(Block("list", rows=tuple((line,) for line in gate["moved"])))
    # what makes the numbers above measure less (answers cut at max_tokens, states cut from the left): the gate's and the
    # likelihood's own words, which only the terminal showed (a report sweep)
    cautions = [*((gate or {}).get("task_success", {}).get("notes") or []), *((like or {}).get("fitted") or "",)]
    if any(cautions):
        blocks.append(Block("p", "Read the numbers above with these notes:"))
        blocks.append(Block("list", rows=tuple((line,) for line in cautions if line)))
    chart = _chart(run.folder / CHART, ev)
    if chart:
        blocks.append(Block("img", CHART, header=("candidate vs baseline",)))
    return blocks


def suite_labels(names: Sequence[str]) -> list[str]:
    """Short names for a run's suites, for a chart's bars and a one-line summary: ``bfcl:CATEGORY``,
    ``tau:DOMAIN:SPLIT`` (a user's ``package.module:factory`` domain by its module's last part), ``traces[:APP]``; a
    suite's full name where two short ones would be the same (every suite is told apart)."""
    short = [_short_suite(name) for name in names]
    counts = Counter(short)
    return [label if counts[label] == 1 else name for label, name in zip(short, names, strict=True)]


def _short_suite(name: str) -> str:
    kind, _, rest = name.partition(":")
    if kind == "tau" and ":" in rest:
        domain, _, split = rest.rpartition(":")
        module = domain.split(":", 1)[0].rsplit(".", 1)[-1]
        return f"tau:{module}:{split}"
    if kind == "traces" and rest:
        from ee_middleware.evals.suites import parse_traces

        try:
            app = parse_traces(rest, name)[1]
        except ConfigError:
            return name
        return f"traces:{app}" if app else "traces"
    return name


def _chart(path: Path, ev: dict[str, Any]) -> bool:
    figure = chart_figure(ev)
    if figure is None:
        return False
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return True


def chart_figure(ev: dict[str, Any]) -> Any:
    """The evaluation chart of an ``evaluate`` stage's outputs (a matplotlib Figure; None without matplotlib): task
    success per suite, candidate beside baseline, and the held-out likelihood where it was measured."""
    from ee_middleware._plots import quiet_matplotlib_config

    quiet_matplotlib_config()  # a home it cannot write: no warnings in every log
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    like = ev.get("likelihood")
    scored_suites = ev["runs"]["candidate"]["suites"]
    # about 1.8 inches per suite: at a fixed width, four or five suites' labels ran into each other
    panel = max(5.0, 1.0 + 1.8 * len(scored_suites))
    figure = Figure(figsize=(panel + 4 if like else panel, 3.6), dpi=100)
    grid = figure.add_gridspec(1, 2, width_ratios=[panel, 4]) if like else figure.add_gridspec(1, 1)
    axes = figure.add_subplot(grid[0])
    labels = suite_labels([s["suite"] for s in scored_suites])
    # a long label on two lines at its first ":" (bfcl:\nmulti_turn_long_context)
    labels = [label.replace(":", ":\n", 1) if len(label) > 16 else label for label in labels]
    suites = [f"{label}\n({s['tasks']} tasks)" for label, s in zip(labels, scored_suites, strict=True)]
    width = 0.38
    from ee_middleware.evals.report import gated_rate, gated_rate_name

    measured = gated_rate_name([*scored_suites, *ev["runs"]["baseline"]["suites"]])
    for offset, side, colour in ((-width / 2, "baseline", "#999999"), (width / 2, "candidate", "#4C72B0")):
        by_suite = {s["suite"]: s for s in ev["runs"][side]["suites"]}  # paired by name, as the table pairs them
        scored = [by_suite.get(s["suite"], {"tasks": 0}) for s in scored_suites]
        rates = [100 * (gated_rate(s) or 0.0) for s in scored]  # null: a suite that scored no task, labelled so
        name = f"{side} ({ev[side]})"
        name = name if len(name) <= 48 else f"{name[:46]}…)"  # a long adapter name: cut visibly, not mid-word silently
        bars = axes.bar([i + offset for i in range(len(rates))], rates, width, label=name, color=colour)
        axes.bar_label(bars, labels=[f"{r:.0f}%" if s["tasks"] else "no task" for r, s in zip(rates, scored, strict=True)], fontsize=8)
    axes.set_xticks(range(len(suites)), suites, fontsize=8)
    axes.set_ylim(0, 110)
    axes.set_ylabel(f"{measured} (%)")
    axes.legend(fontsize=7)
    axes.set_title("held-out task success", fontsize=10)
    if like:
        right = figure.add_subplot(grid[1])
        names = [m["model"] for m in like["models"]]
        values = [m["mean_nll"] for m in like["models"]]
        colours = ["#4C72B0" if n == "candidate" else "#999999" for n in names]
        bars = right.bar(range(len(values)), values, color=colours)
        right.set_xticks(range(len(names)), names, fontsize=8)
        right.set_ylabel("NLL per token (lower is better)")
        from ee_middleware.jobs.deploy import compare_likelihood, nll_decimals, paired_text

        versus = compare_likelihood(like)  # against the gate's baseline: the live adapter, else the base
        d = nll_decimals(*((versus["diff"], versus["se"]) if versus else ()))
        right.bar_label(bars, labels=[f"{v:.{d}f}" for v in values], fontsize=8)
        detail = f"\ncandidate vs {like['baseline']} {paired_text(versus['diff'], versus['se'], d)} (paired)" if versus else ""
        right.set_title(f"held-out expert-action NLL ({like['states']} states){detail}", fontsize=9)
    figure.tight_layout()
    return figure


def _lineage(run: Run, done: dict[str, dict[str, Any]]) -> list[Block]:
    improve = run.data.get("config", {}).get("improve", {})
    store, registry = improve.get("store"), improve.get("registry")
    select, replay, data = done.get("select", {}), done.get("replay", {}), done.get("datasets", {})
    reg, ev, promote = done.get("register", {}), done.get("evaluate", {}), done.get("promote", {})
    rows = []
    sample = select.get("new_ids_sample", [])
    if sample:
        rows.append(
            (
                "trajectories",
                f"{select['new']} new (sha256 of ids {select['new_ids_sha256'][:12]}), e.g. {sample[0]}",
                f"ee traces show {sample[0]} --store {store}",
            )
        )
    if replay:
        rows.append(
            (
                "rollouts",
                f"{replay['rollouts']} under replay id {replay['replay_id']}",
                f"ee replay list --store {store} --replay-id {replay['replay_id']}",
            )
        )
    if data:
        files = ", ".join(f"{k} {v['sha256'][:12]}" for k, v in data["files"].items())
        held = data.get("heldout_ids_sample", [])
        rows.append(("datasets", f"{data['data_dir']} ({files})", f"ee datasets show {data['data_dir']}"))
        if held:
            rows.append(
                ("held-out", f"{data['heldout_trajectories']} trajectories, e.g. {held[0]}", f"ee traces show {held[0]} --store {store}")
            )
    if reg:
        rows.append(
            ("adapter", f"{reg['candidate']} (content {reg['content_hash'][:12]})", f"ee adapters show {reg['candidate']} -r {registry}")
        )
    if ev:
        dirs = ", ".join(v["dir"] for v in ev["runs"].values())
        rows.append(("eval", f"candidate and {ev['baseline']}: {dirs}", _gate_command(run, ev)))
    decided = done.get("gate", {})
    if "passed" in decided:
        rows.append(("gate", _gate_text(decided), shlex.join(["ee", "runs", "show", run.folder.name, "--runs", str(run.folder.parent)])))
    if promote:
        state = (
            f"promoted, {improve.get('alias') or improve.get('app')} -> {promote.get('live')}"
            if promote.get("promoted")
            else "not promoted"
        )
        rows.append(("deploy", state, f"ee adapters list -r {registry}"))
    if not rows:
        return []
    return [Block("h2", "Lineage"), Block("table", rows=tuple(rows), header=("step", "what", "follow it with"))]


def _gate_text(decided: dict[str, Any]) -> str:
    """The run's gate decision for the lineage: passed or failed and why, and where the held-out likelihood took part
    (which ``ee eval gate``, on the eval row, does not take: it decides on task success alone)."""
    reasons = [str(reason) for reason in decided.get("reasons") or []]
    text = "passed" if decided["passed"] else "failed: " + "; ".join(reasons)
    if decided.get("gate_on_likelihood"):
        return text + " (task success, then the held-out likelihood: gate_on_likelihood; ee eval gate takes task success alone)"
    if any(reason.startswith("likelihood:") for reason in reasons):
        return text + " (the held-out likelihood broke a tie that ee eval gate, on task success alone, passes)"
    return text


def _gate_command(run: Run, ev: dict[str, Any]) -> str:
    """The ``ee eval gate`` command that takes the run's own task-success decision again: with ``--policy`` the run's
    configuration file where it set a ``[gate]`` table (else the gate's defaults, which the run used too)."""
    from ee_middleware.jobs.improve import CONFIG_COPY

    words = ["ee", "eval", "gate", "--candidate", ev["runs"]["candidate"]["dir"], "--baseline", ev["runs"]["baseline"]["dir"]]
    config = run.folder / CONFIG_COPY
    if (run.data.get("config") or {}).get("gate") and config.is_file():
        words += ["--policy", str(config)]
    return shlex.join(words)


# --- rendering ---------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Iterable[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            lines += [f"# {b.text}", ""]
        elif b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "list":
            lines += [f"- {row[0]}" for row in b.rows] + [""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "|".join(" --- " for _ in b.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "img":
            lines += [f"![{b.header[0] if b.header else ''}]({b.text})", ""]
        elif b.kind == "code":
            lines += ["```", b.text, "```", ""]
    return "\n".join(lines)


def to_html(blocks: Iterable[Block], title: str) -> str:
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "p"):
            body.append(f"<{b.kind}>{_inline(e(b.text))}</{b.kind}>")
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(e(row[0]))}</li>" for row in b.rows) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b.kind == "img":
            body.append(f'<p><img src="{e(b.text)}" alt="{e(b.header[0] if b.header else "")}"></p>')
        elif b.kind == "code":
            body.append(f"<pre>{e(b.text)}</pre>")
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:0.9em}img{max-width:100%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def _inline(text: str) -> str:
    """Markdown's `code` spans as <code> (the text is already escaped)."""
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
