"""``ee bfcl``: BFCL as a real environment (expert trajectories for replay and training)."""

from __future__ import annotations

from typing import Any

import typer

from ee_middleware.cli.common import (
    JsonOption,
    StoreOption,
    console,
    escape,
    examples,
    interrupted,
    print_json,
    print_json_interrupted,
    progress_console,
    reading_store,
)

app = typer.Typer(help="BFCL multi-turn tasks as a real executable environment.", no_args_is_help=True)


@app.command("record-experts", epilog=examples("ee bfcl record-experts --store ./experience --category multi_turn_base --limit 20"))
def record_experts_cmd(
    store: str = StoreOption,
    category: str = typer.Option(
        "multi_turn_base", "--category", help="BFCL multi-turn category (multi_turn_base, multi_turn_miss_func, ...)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N entries."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = JsonOption,
    allow_partial: bool = typer.Option(False, "--allow-partial", hidden=True, help="Refused: see the message."),
) -> None:
    """Record approved expert trajectories: a LangGraph agent replays BFCL's ground-truth calls turn by turn."""
    from ee_middleware._lifetime import interrupt_name
    from ee_middleware.bfcl.experts import RecordReport, record_experts
    from ee_middleware.errors import hide_credentials

    if allow_partial:  # (it recorded the entries of an unreadable part again: once restored, each was taught twice)
        raise typer.BadParameter(
            "record-experts writes, and from a store read in part it cannot tell which entries the damaged part holds: "
            "they would be recorded again, each taught twice once the part is restored. Repair the store first (ee store "
            "repair --store STORE), then record.",
            param_hint="'--allow-partial'",
        )

    out = console()
    bar: Any = None
    report = RecordReport(category=category)
    seen = [0, 0]  # entries done, of how many (the progress callback's)

    def tick(n: int, total: int) -> None:
        # Started at the first tick (the total, once the entries are read): an error before it is the only line on stderr.
        nonlocal bar
        seen[:] = [n, total]
        if not progress or as_json:
            return
        if bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(
                TextColumn(f"[bold]record[/] {category}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=progress_console(),
            )
            bar.start()
            bar.add_task(category, total=None)
        bar.update(bar.task_ids[0], completed=n, total=total)

    try:
        # (what the damaged part holds cannot be told apart from what was never recorded: never recorded around)
        repair = f"repair the store first (ee store repair --store {hide_credentials(store)}), then record"
        with reading_store(allow_partial=False, fix=repair):
            record_experts(store, category, limit=limit, progress=tick, report=report)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (termination_as_interrupt): exit 130
        if bar is not None:
            bar.stop()
            bar = None
        signal_name = interrupt_name(exc)
        done, total = seen
        line = interrupted(
            f"recording {category}'s experts stopped ({signal_name}) after {done} of {total or 'its'} entries: "
            f"{len(report.recorded)} recorded into {hide_credentials(store)} now ({len(report.already)} were already there, "
            f"{len(report.failed)} failed). The same command goes on: the entries recorded are left alone, and a recording "
            "the stop cut off is rejected once its entry is recorded whole."
        )
        if as_json:  # what was recorded before the stop
            print_json_interrupted(_report_json(report), line)
        raise line from exc
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        print_json(_report_json(report))
    else:
        out.print(
            f"{category}: recorded {len(report.recorded)} expert trajectories into {store} "
            f"({len(report.already)} were already there, {len(report.failed)} failed)."
        )
        if report.cut_off_rejected:
            out.print(
                f"rejected {report.cut_off_rejected} recording(s) a stopped run had left, of entries now recorded whole "
                "(they would have waited for a review)."
            )
        for entry_id, reason in report.failed.items():
            out.print(f"[red]failed[/] {escape(entry_id)}: {escape(reason)}")
    if report.failed:
        raise typer.Exit(1)


def _report_json(report: Any) -> dict[str, Any]:
    """``ee bfcl record-experts --json``'s answer."""
    return {
        "category": report.category,
        "recorded": report.recorded,
        "already_recorded": report.already,
        "failed": report.failed,
        "cut_off_rejected": report.cut_off_rejected,
    }
