"""``ee traces``: list, inspect, approve, reject, export and ingest recorded trajectories."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from ee_middleware._limits import INT64_MAX
from ee_middleware.cli.common import (
    AllowPartialOption,
    JsonOption,
    ProgressBars,
    ProgressOption,
    StoreOption,
    actor_name,
    console,
    escape,
    examples,
    observation_cell,
    open_existing_store,
    output_file,
    print_json,
    reading_store,
    say_capped,
    short,
    short_ids,
    terminal_cap,
    time_bound,
    utc_clock,
    warnings_as_lines,
)

app = typer.Typer(help="Recorded trajectories: list, show, approve, reject, export, ingest.", no_args_is_help=True)

LIST_COLUMNS = (
    "id", "app", "app_version", "approval", "approval_by", "approval_at", "approval_reason", "status",
    "num_steps", "task", "model", "thread_id", "started_at", "ended_at", "source",
)  # fmt: skip


class StatusFilter(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    all = "all"


class RunStatus(StrEnum):
    completed = "completed"
    error = "error"
    interrupted = "interrupted"
    stopped = "stopped"


LIST_CHUNK_ROWS = 1000
"""Rows of ``ee traces list`` drawn as one table; a longer listing (to a pipe or a file) goes out a table of this many at a
time, its columns as wide in each."""


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


@app.command(
    "list",
    epilog=examples(
        "ee traces list --store ./experience --status pending",
        "ee traces list -s ./experience --json --limit 20",
        "ee traces list -s ./experience --since 24h --run-status error",
    ),
)
def list_traces(
    store: str = StoreOption,
    status: StatusFilter = typer.Option(StatusFilter.all, "--status", help="Only trajectories with this approval."),
    app_name: str | None = typer.Option(None, "--app", help="Only trajectories of this app."),
    run_status: RunStatus | None = typer.Option(None, "--run-status", help="Only runs that ended so."),
    since: str | None = typer.Option(
        None,
        "--since",
        metavar="TIME",
        help="Only runs started at or after TIME: an ISO date or time (2026-12-01, 2026-12-01T06:00+01:00; UTC without a "
        "zone) or a span back from now (30m, 24h, 7d).",
    ),
    until: str | None = typer.Option(None, "--until", metavar="TIME", help="Only runs started before TIME (as --since)."),
    thread: str | None = typer.Option(None, "--thread", help="Only runs of this conversation (its thread id, as listed)."),
    model: str | None = typer.Option(None, "--model", help="Only runs of this model."),
    # polars counts rows in 64 bits: a larger --limit failed inside it as an OverflowError
    limit: int | None = typer.Option(None, "--limit", min=1, max=INT64_MAX, help="Show at most this many (newest)."),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """List trajectories, oldest first, with their approval."""
    import polars as pl

    from ee_middleware.capture.store_redaction import current_redactor
    from ee_middleware.store.registry import trajectory_columns

    since_at = time_bound(since, "--since") if since is not None else None  # (a mistyped time: before any read)
    until_at = time_bound(until, "--until") if until is not None else None
    with reading_store(allow_partial=allow_partial):
        opened = open_existing_store(store)
        # the listed columns alone (a store's conversations and tools, most of its table, are not read)
        frame = trajectory_columns(opened, [c for c in (*LIST_COLUMNS, "final_answer", "error") if not c.startswith("approval")])
        redact = _redact_fn(current_redactor(opened))
    every_id = frame["id"].to_list()
    if status is not StatusFilter.all:
        frame = frame.filter(pl.col("approval") == status.value)
    if app_name is not None:
        frame = frame.filter(pl.col("app") == app_name)
    if run_status is not None:
        frame = frame.filter(pl.col("status") == run_status.value)
    if model is not None:
        frame = frame.filter(pl.col("model") == model)
    if thread is not None:  # as stored, or as listed (the store's rules redact thread ids as they redact the task)
        frame = frame.filter(
            pl.Series([t is not None and thread in (t, redact(t)) for t in frame["thread_id"].to_list()], dtype=pl.Boolean)
        )
    for bound, keep in ((since_at, operator.ge), (until_at, operator.lt)):
        if bound is not None:
            frame = frame.filter(keep(_utc(frame, "started_at"), bound))
    frame = frame.sort("started_at")
    if limit is not None:
        frame = frame.tail(limit)
    matching = frame.height
    if (cap := terminal_cap(matching, limit, as_json)) is not None:
        frame = frame.tail(cap)
    rows = [
        # the thread id too: capture redacts it as the task (ids are often e-mail addresses or customer numbers)
        {**row, **{key: redact(row[key]) for key in ("task", "thread_id", "approval_by", "approval_reason")}}
        for row in frame.select(LIST_COLUMNS).to_dicts()
    ]
    if as_json:  # with the run's answer and its error (why a stopped run stopped), as `ee traces show` has them
        extra = [c for c in ("final_answer", "error") if c in frame.columns]
        for row, more in zip(rows, frame.select(extra).to_dicts() if extra else [{}] * len(rows), strict=True):
            row.update({key: redact(value) if value is not None else None for key, value in more.items()})
        print_json([{k: _jsonable(v) for k, v in row.items()} for row in rows])
        return
    shown_ids = short_ids((row["id"] for row in rows), among=every_id)  # unique among every id in the store, so each one resolves
    from rich import box
    from rich.table import Table

    apps = sorted({row["app"] for row in rows})
    counted = f"the newest {len(rows)} of {matching}" if len(rows) < matching else str(len(rows))
    title = escape(f"{counted} trajectories in {store}" + (f" (app {apps[0]})" if len(apps) == 1 else ""))
    out = console()
    # The id is what `ee traces show/approve` take: whole on any terminal (rich took a folding id down to nothing at 40
    # columns). On a narrow one the start time, the task and the app are left out, in that order, rather than squeezed
    # to a character a line; approval and status may be cut with an ellipsis.
    id_width = max((len(i) for i in shown_ids.values()), default=2)
    wanted = {"id": id_width, "app": min(16, max(map(len, apps), default=3)) if len(apps) > 1 else 0}
    # month and day where every run is of this year; else the year too (1970-01-01 and 2027-01-01 both read "01-01 00:00")
    this_year = datetime.now(UTC).year
    with_year = any(r["started_at"] is not None and utc_clock(r["started_at"], "%Y") != str(this_year) for r in rows)
    started_format = "%Y-%m-%d %H:%M" if with_year else "%m-%d %H:%M"
    wanted |= {"approval": 8, "status": 9, "steps": 5, "task": 12, "started UTC": 16 if with_year else 11}
    left_out = [name for name, width in wanted.items() if not width]
    for name in ("started UTC", "task", "app"):
        shown = {k: w for k, w in wanted.items() if k not in left_out}
        if sum(shown.values()) + 2 * len(shown) <= out.width or name in left_out:
            continue
        left_out.append(name)
    # A long listing goes out a chunk of rows at a time, each chunk a table whose columns have the widths the whole
    # table's widest cells need: a pipe or a file gets its first lines at once (rich laid out a table of 20,000 rows for
    # 11 s before writing a line). Only where every column has the width it wants (else rich shares the shortfall out by
    # what all rows hold).
    chunk, widths = max(len(rows), 1), {}
    if len(rows) > LIST_CHUNK_ROWS:
        from rich.cells import cell_len

        def widest(header: str, cells: Iterable[str]) -> int:
            return max(cell_len(header), *map(cell_len, cells))

        widths = {
            "id": widest("id", (shown_ids[r["id"]] for r in rows)),
            "app": min(16, widest("app", apps)),
            "approval": widest("approval", (r["approval"] for r in rows)),
            "status": widest("status", (str(r["status"]) for r in rows)),
            "steps": widest("steps", (str(r["num_steps"]) for r in rows)),
            "started UTC": widest("started UTC", (utc_clock(r["started_at"], started_format) for r in rows)),
            "task": max(12, widest("task", (short(r["task"], 120) for r in rows))),
        }
        shown_widths = [w for name, w in widths.items() if name not in left_out]
        if sum(shown_widths) + 2 * (len(shown_widths) + 1) <= out.width:
            chunk = LIST_CHUNK_ROWS
    chunked = chunk < len(rows)

    def new_table(first: bool) -> Table:
        fixed = (lambda name: {"width": widths[name]}) if chunked else (lambda name: {})
        table = Table(title=title if first else None, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_header=first)
        table.add_column("id", min_width=id_width, no_wrap=True, **fixed("id"))
        if "app" not in left_out:
            table.add_column("app", max_width=16, overflow="ellipsis", no_wrap=True, **fixed("app"))
        table.add_column("approval", overflow="ellipsis", **fixed("approval"))
        table.add_column("status", overflow="ellipsis", **fixed("status"))
        table.add_column("steps", justify="right", no_wrap=True, **fixed("steps"))
        if "task" not in left_out:
            table.add_column("task", ratio=1, min_width=12, overflow="fold", **fixed("task"))
        if "started UTC" not in left_out:
            table.add_column("started UTC", min_width=wanted["started UTC"], no_wrap=True, **fixed("started UTC"))
        return table

    colours = {"approved": "green", "rejected": "red", "pending": "yellow"}
    dropped = [name for name in left_out if wanted[name]]
    for start in range(0, max(len(rows), 1), chunk):
        table = new_table(first=start == 0)
        for row in rows[start : start + chunk]:
            cells = {
                "id": escape(shown_ids[row["id"]]),
                "app": escape(row["app"]),
                "approval": f"[{colours[row['approval']]}]{row['approval']}[/]",
                "status": row["status"],
                "steps": str(row["num_steps"]),
                "task": escape(short(row["task"], 120)),
                "started UTC": utc_clock(row["started_at"], started_format),
            }
            table.add_row(*(cell for name, cell in cells.items() if name not in left_out))
        last = start + chunk >= len(rows)
        if dropped and last:
            table.caption = f"not shown at {out.width} columns: {', '.join(dropped)} (--json has them)"
        if not chunked:
            out.print(table)
            continue
        with out.capture() as captured:
            out.print(table)
        lines = captured.get().splitlines(keepends=True)
        # one table's lines: the blank edge above (for the title's, the first chunk's) and below (the last chunk's) kept
        out.file.write("".join(lines[(0 if start == 0 else 1) : (None if last else -1)]))
        out.file.flush()
    if len(rows) < matching:
        say_capped(len(rows), matching, "trajectories", "newest")


@app.command("show", epilog=examples("ee traces show 3f2a9c1b --store ./experience"))
def show(
    trajectory_id: str = typer.Argument(..., help="Trajectory id (a unique prefix is enough)."),
    store: str = StoreOption,
    as_json: bool = JsonOption,
    states: bool = typer.Option(
        True,
        "--states/--no-states",
        help="With --json: each step's state, the conversation before it (--no-states leaves the key out: a long run's "
        "states are most of its size, every step holding the conversation so far). The table shows none.",
    ),
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Show one trajectory with every step (tool call, arguments, observation) and its approval history."""
    from ee_middleware.capture.store_redaction import current_redactor, redacted_trajectory
    from ee_middleware.store.registry import get_trajectory

    if not states and not as_json:
        raise typer.BadParameter(
            "--no-states is for --json: the table shows no states (they are not read for it).", param_hint="'--no-states'"
        )
    shown_states = as_json and states  # (the table shows none: they are not read where the store can leave them)
    with reading_store(allow_partial=allow_partial):
        opened = open_existing_store(store)
        redactor = current_redactor(opened)
        trajectory = redacted_trajectory(get_trajectory(opened, trajectory_id, states=shown_states), redactor, states=shown_states)
        history = opened.approvals([trajectory.id])
    redact = _redact_fn(redactor)
    decisions = [
        {k: redact(v) if k in _DECISION_TEXT else _jsonable(v) for k, v in row.items() if k != "trajectory_id"}
        for row in history.to_dicts()
    ]
    if as_json:
        shown = trajectory.model_dump(mode="json", exclude=None if states else {"steps": {"__all__": {"state"}}})
        print_json({**shown, "approval_history": decisions})
        return
    from rich.panel import Panel
    from rich.table import Table

    out = console()
    approval = trajectory.approval
    details = escape(
        f"  app={trajectory.app} version={trajectory.app_version or '-'} model={trajectory.model or '-'}\n"
        f"status={trajectory.status}  approval={approval.status}"
        + (f" by {approval.by} at {utc_clock(approval.at)} UTC" if approval.by and approval.at else "")
        + (f" ({approval.reason})" if approval.reason else "")
        + (f"\nwhy: {short(trajectory.error, 300)}" if trajectory.error else "")  # an error, or what stopped the run
        + f"\nthread={trajectory.thread_id or '-'}  started={utc_clock(trajectory.started_at)} UTC  tools={', '.join(_tool_names(trajectory.tools)) or '-'}\n"
        # what replay rebuilds the world from: the first thing to check when replay skips a trajectory
        + f"environment={short(_environment_text(trajectory.environment), 300) if trajectory.environment is not None else '-'}\n"
    )
    header = f"[bold]{escape(trajectory.id)}[/]{details}[bold]task:[/] {escape(trajectory.task or '-')}"
    out.print(Panel(header, title="trajectory"), width=out.section_width)  # (a log's panel: 80 columns, its tables wider)
    table = Table(show_lines=True)
    for column in ("#", "action", "arguments / answer", "observation", "ms"):
        table.add_column(column, overflow="fold")
    for step in trajectory.steps:
        call = step.action.tool_call
        obs = step.observation
        observation = "" if obs is None else observation_cell(obs.content, obs.is_error, 300)
        if obs is not None and obs.truncated_chars:  # the stored text carries no marker of the cut
            observation += f"\n[dim]({obs.truncated_chars:,} more chars cut at capture: max_observation_chars)[/]"
        action = escape(call.name) if call else "[bold]answer[/]"
        if step.tools is not None:  # the tools offered at this decision, where they were not the run's (schema 1.4)
            action += f"\n[dim]offered: {escape(', '.join(step.tools)) or 'no tool'}[/]"
        said = escape(json.dumps(call.arguments, ensure_ascii=False) if call else short(step.action.content, 300))
        if step.action.reasoning:
            said += f"\n[dim]reasoning: {escape(short(step.action.reasoning, 200))}[/]"
        table.add_row(
            str(step.index),
            action,
            said,
            observation,
            f"{step.latency_ms:.1f}" if step.latency_ms is not None else "",
        )
    out.print(table)
    if trajectory.error:
        out.print(f"[red]run error:[/] {escape(trajectory.error)}")  # (not "error:", which the CLI writes for its own failures)
    if decisions:
        out.print(_history_table(decisions))


def _redact_fn(redactor: Any) -> Any:
    return redactor.redact_value if redactor is not None else (lambda value: value)


_DECISION_TEXT = frozenset({"by", "reason", "overrides_by", "overrides_reason"})
"""The columns of a decision (the approval history) that people wrote: redacted when shown, as stored decisions made
before ``ee traces approve/reject`` redacted them may hold a customer's data."""


def _history_table(decisions: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="approval history (oldest first)", title_justify="left")
    for column in ("at UTC", "decision", "by", "reason", "overrode"):
        table.add_column(column, overflow="fold")
    for d in decisions:
        overrode = ""
        if d["overrides_status"]:
            overrode = f"{d['overrides_status']} by {d['overrides_by'] or '?'}" + (
                f" ({d['overrides_reason']})" if d["overrides_reason"] else ""
            )
        cells = (utc_clock(d["at"]), d["status"], d["by"] or "", d["reason"] or "", overrode)
        table.add_row(*(escape(cell) for cell in cells))
    return table


@app.command("approve", epilog=examples("ee traces approve 3f2a9c1b 77d0e4aa --store ./experience --by alice --reason 'checked by hand'"))
def approve(
    trajectory_ids: list[str] = typer.Argument(..., help="Trajectory ids (unique prefixes are enough)."),
    store: str = StoreOption,
    by: str = typer.Option(
        ..., "--by", callback=actor_name, help="Who approves (stored with the decision, redacted: an e-mail becomes its pseudonym)."
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why (stored with the decision, redacted by the store's rules)."),
    force: bool = typer.Option(False, "--force", help="Overturn a rejection (the history keeps both decisions)."),
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Approve trajectories for training. A rejected one needs --force."""
    _decide(store, trajectory_ids, "approved", by, reason, force=force, allow_partial=allow_partial)


@app.command("reject", epilog=examples("ee traces reject 3f2a9c1b --store ./experience --by alice --reason 'wrong refund amount'"))
def reject(
    trajectory_ids: list[str] = typer.Argument(..., help="Trajectory ids (unique prefixes are enough)."),
    store: str = StoreOption,
    by: str = typer.Option(
        ..., "--by", callback=actor_name, help="Who rejects (stored with the decision, redacted: an e-mail becomes its pseudonym)."
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why (stored with the decision, redacted by the store's rules)."),
    force: bool = typer.Option(False, "--force", help="Overturn an approval (the history keeps both decisions)."),
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Reject trajectories: they never feed training. An approved one needs --force."""
    _decide(store, trajectory_ids, "rejected", by, reason, force=force, allow_partial=allow_partial)


def _decide(store_path: Path, ids: list[str], status: str, by: str, reason: str | None, *, force: bool, allow_partial: bool) -> None:
    from ee_middleware.store.approvals import decide
    from ee_middleware.store.registry import trajectory_columns

    with reading_store(allow_partial=allow_partial):
        opened = open_existing_store(store_path)
        events = decide(opened, ids, status, by=by, reason=reason, force=force)  # type: ignore[arg-type]
        shown = short_ids((e.trajectory_id for e in events), among=trajectory_columns(opened, ["id"])["id"].to_list())
    typer.echo(f"{status.capitalize()} {len(events)} trajectory(ies): {', '.join(shown[e.trajectory_id] for e in events)}")
    for e in events:
        if e.overrides is not None:
            typer.echo(f"  {shown[e.trajectory_id]}: overturned {e.overrides.status} by {e.overrides.by or '?'} (both kept in the history)")


@app.command("export", epilog=examples("ee traces export --store ./experience --format jsonl --out train.jsonl"))
def export(
    store: str = StoreOption,
    fmt: ExportFormat = typer.Option(..., "--format", "-f", help="jsonl: OpenAI chat fine-tuning lines; parquet: one row per trajectory."),
    out_text: str = typer.Option(
        ..., "--out", "-o", help="Output file (a path: the file is written whole, so not '-' for stdout).", metavar="PATH"
    ),
    status: StatusFilter = typer.Option(StatusFilter.approved, "--status", help="Which trajectories (default: approved only)."),
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Export trajectories for fine-tuning (OpenAI chat JSONL with messages and tools, or Parquet).

    Each example teaches what its own run decided: assistant messages it did not (earlier runs' replies given as
    history, calls awaiting a human review, calls a reviewer changed or rejected) carry weight 0, and a trajectory
    that decided nothing is left out. A run whose model calls were offered different tools is one JSONL example per
    stretch of decisions offered the same tools, each offering exactly those; a run holding several conversations
    (parallel Send branches) one per conversation, and the command lists such runs. The file is written whole or not at all: on any failure, no partial or
    temporary file is left and an existing one is kept as it was. A failure names its cause: the store's file that
    cannot be read (and the fix), or the output file that cannot be written. An export that selects nothing (no
    trajectory of --status, or none that decided anything) writes nothing, keeps an existing file as it was, and exits 1.
    """
    from ee_middleware.export import export_jsonl, export_parquet

    out = output_file(out_text, f"train.{fmt.value}")
    if str(out) == "-":
        raise typer.BadParameter(
            "'-' is not stdout here: the export is written whole or not at all, to a file. Give a file's path, e.g. "
            f"--out train.{fmt.value} (then `cat train.{fmt.value}` for a pipe).",
            param_hint="'--out'",
        )
    selected = None if status is StatusFilter.all else status.value
    skipped: list[tuple[str, str]] = []
    split: list[str] = []
    with reading_store(allow_partial=allow_partial):
        source = open_existing_store(store)
        writer = export_jsonl if fmt is ExportFormat.jsonl else export_parquet
        count = writer(
            source,
            out,
            status=selected,
            on_skipped=lambda trajectory_id, reason: skipped.append((trajectory_id, reason)),
            on_split=lambda trajectory_id, what: split.append(f"{trajectory_id} ({what})"),
        )
        held = _approvals(source) if count == 0 and not skipped else {}
    # JSONL: one example per trajectory, per stretch of decisions offered the same tools, or per conversation of a run
    # that held several (see ee_middleware.export)
    if count:
        typer.echo(f"Wrote {count} {'examples' if fmt is ExportFormat.jsonl else 'trajectories'} to {out}")
    if split:
        how = "each conversation is an example" if fmt is ExportFormat.jsonl else "each row keeps the last one"
        typer.echo(f"{len(split)} trajectories hold several conversations ({how}):")
        for line in split[:5]:
            typer.echo(f"  {line}")
        if len(split) > 5:
            typer.echo(f"  and {len(split) - 5} more")
    by_reason: dict[str, list[str]] = {}
    for trajectory_id, reason in skipped:
        by_reason.setdefault(reason, []).append(trajectory_id)
    for reason, ids in by_reason.items():
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        typer.echo(f"Left out {len(ids)} that teach nothing (each: {reason}): {shown}")
    if not count:
        _nothing_exported(store, out, status, skipped, held)


# What gives a store trajectories of each --status, for an export that found none
_STATUS_HINTS = {
    StatusFilter.approved: "approve some with `ee traces approve`",
    StatusFilter.rejected: "reject some with `ee traces reject`",
    StatusFilter.pending: "record more: a run is pending until `ee traces approve` or `ee traces reject` decides it",
}
_RECORD_HINT = "record some first (record_experience, or `ee traces ingest` for OTLP files)"


def _utc(frame: Any, column: str) -> Any:
    """``column`` of ``frame`` as UTC times (a plug-in's store may keep them without a zone, or in another one)."""
    import polars as pl

    zone = getattr(frame.schema[column], "time_zone", None)
    expression = pl.col(column)
    return expression.dt.replace_time_zone("UTC") if zone is None else expression.dt.convert_time_zone("UTC")


def _approvals(store: Any) -> dict[str, int]:
    """How many trajectories ``store`` holds of each approval status."""
    from ee_middleware.store.registry import trajectory_columns

    return dict(trajectory_columns(store, ["id"]).group_by("approval").len().iter_rows())


def _nothing_exported(store: str, out: Path, status: StatusFilter, skipped: list[tuple[str, str]], held: dict[str, int]) -> None:
    """End an export that wrote nothing: say why, what to do, and that ``out`` was left as it was (an earlier export
    is never replaced by an empty one); exit 1, as nothing was exported."""
    from ee_middleware.errors import hide_credentials

    where = hide_credentials(str(store))  # a store spec may hold user:password@
    which = "" if status is StatusFilter.all else f"{status.value} "
    if skipped:
        why = f"every {which}trajectory in {where} was left out (its run decided nothing)"
    elif not held:
        why = f"no trajectories in {where}; {_RECORD_HINT}"
    else:
        counts = ", ".join(f"{held[s]} {s}" for s in ("approved", "pending", "rejected") if held.get(s))
        why = f"no {which}trajectories in {where} (it holds {counts}); {_STATUS_HINTS.get(status, _RECORD_HINT)}"
    kept = f"{out} was left as it was" if out.exists() else f"{out} was not written"
    typer.secho(f"error: nothing exported: {why}. {kept}.", err=True, fg="red")
    raise typer.Exit(1)


@app.command("ingest", epilog=examples("ee traces ingest otel/traces.json --store ./experience --app support-bot"))
def ingest(
    files: list[Path] = typer.Argument(
        ...,
        help="OTLP JSON files (a Collector's file exporter output), or folders of them (their *.json, *.jsonl and gzip'd files).",
        exists=False,
    ),
    store: str = StoreOption,
    app_name: str | None = typer.Option(
        None,
        "--app",
        help=(
            "App name for runs whose spans name none. A run's root span names it: its ee.app, else its agent's name "
            "(gen_ai.agent.name, OpenLLMetry's workflow name), else the resource's service.name."
        ),
    ),
    approve_by: str | None = typer.Option(
        None, "--approve-by", callback=actor_name, help="Approve every ingested trajectory in this name."
    ),
    as_json: bool = JsonOption,
    progress: bool = ProgressOption,
    allow_partial: bool = typer.Option(
        False,
        "--allow-partial",
        help="When part of the store is damaged, ingest all the same (the damage is listed on stderr): a run stored in "
        "the part that cannot be read is taken as new and stored again. Without it, a damaged store is an error (exit 1).",
    ),
) -> None:
    """Turn OTLP JSON spans that follow the GenAI conventions into trajectories.

    Spans from any instrumentation are read (ee-middleware, OpenLLMetry, OpenInference); one graph
    run becomes one trajectory. Files, requests and spans are checked against the OTLP shapes: each
    bad file, span, trace or run gets one line (at most 20 per file, the rest counted), the good ones
    are still ingested, and the exit code is 1 if any problem was found. Ingesting the same file
    twice adds nothing.
    """

    from ee_middleware.ingest import ingest_files

    # the spec, not an open store: a store that does not exist yet is created only when a run is found; the store's
    # warnings (a spool to compact) as warning lines, progress as bars on stderr (a 400 MB export takes minutes)
    # A damaged part hides the runs stored in it: ingest would take them as new and store them again.
    with warnings_as_lines(), reading_store(allow_partial=allow_partial), ProgressBars(enabled=progress and not as_json) as bars:
        report = ingest_files(files, store, app=app_name, approve_by=approve_by, on_progress=bars.update)
        bars.complete()
    if as_json:
        print_json(report.as_dict())
    else:
        out = console()
        out.print(
            f"Read {report.spans} spans from {report.files} file(s): {report.runs} agent run(s), "
            f"[green]{len(report.ingested)} ingested[/], {len(report.already_stored)} already stored, "
            f"[{'red' if report.problems else 'green'}]{report.problems} problem(s)[/]."
        )
        for error in report.errors:
            out.print(f"  [red]x[/] {escape(error)}", highlight=False)
        if report.unlisted_problems:
            out.print(f"  ... and {report.unlisted_problems} more problem(s) not listed.", highlight=False)
        if report.traces_without_runs:
            out.print(f"  note: {report.traces_without_runs} trace(s) held no agent run (e.g. only a create_agent span) and were skipped.")
        for line in [*report.unfinished, *report.notes]:
            out.print(f"  note: {escape(line)}", highlight=False)
    if report.problems:
        raise typer.Exit(1)


def _environment_text(environment: dict[str, Any]) -> str:
    """A trajectory's environment reference as compact JSON, keys in their recorded order."""
    return json.dumps(environment, ensure_ascii=False, separators=(", ", ": "), default=str)


def _tool_names(tools: list[dict[str, Any]]) -> list[str]:
    """The trajectory's tools as its steps' ``offered:`` lines name them (``NAME#K``: another schema of a tool)."""
    from ee_middleware.records import ToolCatalog

    catalog = ToolCatalog()
    return [catalog.ref(t) or "?" for t in tools]


def _jsonable(value: Any) -> Any:
    """A listed or decided value as ``--json`` gives it: a time as the trajectory's own times are (pydantic's ISO 8601,
    ``Z`` for UTC), so one instant reads the same in a listing, a trajectory and its approval history."""
    if isinstance(value, (datetime, date)):
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(value)
    return value
