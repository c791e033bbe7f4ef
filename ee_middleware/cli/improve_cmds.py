"""``ee improve`` (the nightly job) and ``ee runs list|show|prune`` (what its runs did; old ones removed).

Wire them into the root app with ``register(app)``. The job lives in :mod:`ee_middleware.jobs`,
imported inside the commands.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from ee_middleware.cli.common import (
    JsonOption,
    console,
    escape,
    examples,
    library_bars_off,
    path_given,
    print_json,
    progress_console,
    reading_store,
    setting_origin,
    short,
    store_origin,
    termination_as_interrupt,
    user_output_to_stderr,
    warnings_as_lines,
)

EXIT_STOPPED = 3
"""Exit status of a run stopped by its ``max_minutes`` budget (the next call continues it)."""

runs_app = typer.Typer(help="Runs of `ee improve`: what each stage did, with manifests and reports.", no_args_is_help=True)

ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="TOML file with an [improve] table and the stage tables ([replay], [train], ...); relative paths in it are read "
    "from the working directory.",
)


class ScheduleChoice(StrEnum):
    il = "il"
    iwm = "iwm"
    sr = "sr"


def _print_example_config(value: bool) -> None:
    if value:
        from ee_middleware.jobs.config import example_config

        typer.echo(example_config(), nl=False)
        raise typer.Exit()


def improve(
    ctx: typer.Context,
    config: Path | None = ConfigOption,
    store: str | None = typer.Option(None, "--store", "-s", envvar="EE_STORE", help="Experience store (overrides [improve] store)."),
    app_name: str | None = typer.Option(None, "--app", "-a", help="Learn from this app's approved trajectories."),
    registry: str | None = typer.Option(None, "--registry", "-r", envvar="EE_ADAPTER_REGISTRY", help="Adapter registry."),
    runs: str | None = typer.Option(None, "--runs", envvar="EE_RUNS", help="Runs folder (one folder per run).", metavar="PATH"),
    base_model: str | None = typer.Option(None, "--base-model", help="Base model folder or .gguf (used when no adapter is live)."),
    schedule: ScheduleChoice | None = typer.Option(
        None,
        "--schedule",
        help="il, iwm (world modeling then imitation) or sr (self-reflection mixed with imitation); overrides [improve] schedule. "
        "[default: iwm]",
    ),
    new_run: bool = typer.Option(False, "--new-run", help="Mark an unfinished run abandoned and start a new one."),
    force: bool = typer.Option(False, "--force", help="Run every stage even when nothing new was approved."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show stage progress and bars."),
    allow_partial: bool | None = typer.Option(
        None,
        "--allow-partial/--no-allow-partial",
        help="When part of the store is damaged, learn from what can be read (the damage is listed on stderr; the run keeps "
        "its watermark, so the next run selects its trajectories again); overrides [improve] allow_partial (--no-allow-partial "
        "turns the file's off). Without it, a read the damage made incomplete fails the run, which keeps its watermark (exit 1).",
        show_default=False,
    ),
    keep_runs: int | None = typer.Option(
        None,
        "--keep-runs",
        min=1,
        help="After the run, remove all but the N newest runs and those still needed, as `ee runs prune --keep N` does; "
        "overrides [improve] keep_runs. [default: keep every run]",
        show_default=False,
    ),
    as_json: bool = JsonOption,
    example: bool = typer.Option(
        False,
        "--example-config",
        is_eager=True,
        callback=_print_example_config,
        help="Print a commented improve.toml with every table the job reads, and exit (ee improve --example-config > improve.toml).",
    ),
) -> None:
    """Select newly approved trajectories, replay, build datasets, train, evaluate, gate and promote; resumes an unfinished run.

    Flags and their EE_* variables override the file's [improve] table. Exit status: 0 the run finished (promoted or not:
    `ee runs show latest` says which), 1 it failed (the next call continues it), 3 max_minutes stopped it, 130 a signal
    stopped it (Ctrl-C, SIGTERM, SIGHUP; the next call continues either).
    """
    from ee_middleware.jobs.config import ImproveConfig
    from ee_middleware.jobs.improve import run_improve
    from ee_middleware.jobs.stages import QuietProgress

    # where each path came from (flag, EE_* variable or the file), recorded in run.json; an EE_* variable that overrides
    # a different value in the file is said on stderr
    settings_from = {
        "store": store_origin(ctx, config, "improve"),
        "registry": setting_origin(ctx, config, "improve", "registry", envvar="EE_ADAPTER_REGISTRY"),
        "runs": setting_origin(ctx, config, "improve", "runs", envvar="EE_RUNS"),
        "base_model": setting_origin(ctx, config, "improve", "base_model"),
    }
    with warnings_as_lines():  # a config's unknown table, the promote's unchecked history: warning lines
        try:
            job = ImproveConfig.load(
                config,
                store=store,
                app=app_name,
                registry=registry,
                runs=runs,
                base_model=base_model,
                schedule=schedule.value if schedule else None,
                allow_partial=allow_partial,
                keep_runs=keep_runs,
            )
            job.store_set_by(settings_from["store"])  # an error about the store names the flag, variable or file that set it
        except Exception as exc:
            if as_json:  # no run: stdout still says why, as JSON
                print_json(_failure_json(exc))
            raise
        # stage rules, info lines and bars on stderr: stdout holds the summary (or the JSON) alone
        display = RichProgress(progress_console()) if progress and not as_json else QuietProgress()
        started: list[Any] = []

        def on_start(run: Any) -> None:
            run.update(settings_from=settings_from)
            started.append(run)

        try:
            # a CronJob's SIGTERM stops the run as Ctrl-C does: marked, reported, continued next time; what the sandbox's
            # tools, policies and models print goes to stderr (stdout holds the answer alone), and so, without progress,
            # do none of the libraries' own bars (transformers' "Loading weights")
            # (a store read that damage made incomplete fails the run unless allow_partial; the damage is listed on stderr)
            with (
                termination_as_interrupt(),
                user_output_to_stderr(),
                library_bars_off(enabled=not progress or as_json),
                reading_store(allow_partial=job.allow_partial),
            ):
                run = run_improve(job, progress=display, new_run=new_run, force=force, on_start=on_start)
        except (Exception, KeyboardInterrupt) as exc:  # KeyboardInterrupt: Ctrl-C, or SIGTERM/SIGHUP (termination_as_interrupt)
            if as_json and started:  # the run is marked failed or stopped: stdout still says which run, where, how far it got
                print_json(run_json(started[0]))
            elif as_json and isinstance(exc, Exception):  # no run of its own (refused, or stopped before one started): why, as JSON
                print_json(_failure_json(exc, job.runs))
            if isinstance(exc, KeyboardInterrupt) and started:  # an error line says the rest; an interrupt said nothing
                _say_interrupted(started[0])
            raise
        finally:
            if isinstance(display, RichProgress):
                display.close()
        if as_json:
            print_json(run_json(run))
        else:
            print_summary(console(), run)
        if run.status == "stopped":
            raise typer.Exit(EXIT_STOPPED)


def _failure_json(exc: Exception, runs: Path | None = None) -> dict[str, Any]:
    """What ``--json`` prints for an error that left no run of this call's: ``status`` ``refused`` (another run holds
    the runs folder, or the unfinished run cannot be continued with this configuration) or ``failed`` (the config, a
    preflight check), the ``error`` as stderr says it, and the runs folder when known."""
    from ee_middleware.cli.app import _describe_os_error, _is_file_error
    from ee_middleware.errors import EEError
    from ee_middleware.jobs.errors import RunConfigChangedError, RunLockedError
    from ee_middleware.jobs.improve import error_text

    refused = isinstance(exc, (RunLockedError, RunConfigChangedError))
    if isinstance(exc, EEError):
        said = str(exc)
    elif isinstance(exc, OSError) and _is_file_error(exc):  # as the stderr line says it ("is a file, not a folder")
        said = _describe_os_error(exc)
    else:
        said = error_text(exc)
    data: dict[str, Any] = {"status": "refused" if refused else "failed", "error": said}
    if runs is not None:
        data["runs"] = str(runs)
    return data


def _say_interrupted(run: Any) -> None:
    """One line on stderr for a run stopped by a signal: which, where, and that the next call continues it; for a run
    that had finished when the signal came, that it had (it was said stopped, to be continued, with nothing left)."""
    from ee_middleware.jobs.runs import FINISHED

    status = run.data.get("status")
    if status in FINISHED:
        report = (run.data.get("report") or {}).get("markdown")
        typer.secho(
            f"interrupted: run {run.id} had finished ({status}) when the signal came; nothing of it is left to do"
            + (f" (its report: {report})." if report else "."),
            err=True,
            fg="yellow",
        )
        return
    stopped = next((m["stage"] for m in run.stages() if m.get("status") == "stopped"), None)
    where = f" in its {stopped} stage" if stopped else ""
    typer.secho(
        f"interrupted: run {run.id} stopped{where} ({run.data.get('error') or 'KeyboardInterrupt'}); `ee improve` with the "
        "same config continues it.",
        err=True,
        fg="yellow",
    )


class RichProgress:
    """Stage rules, one line per finished stage, and progress bars for long steps."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}

    def stage(self, name: str, index: int, total: int) -> None:
        self._stop_bars()
        self.out.rule(f"[bold magenta]ee improve [{index}/{total}] {name}")

    def stage_done(self, name: str, seconds: float, summary: str, *, skipped: bool = False) -> None:
        self._stop_bars()
        if skipped:
            self.out.print(f"[dim]= {name}: finished in an earlier attempt ({seconds:.1f} s), not redone[/]")
        else:
            self.out.print(f"[green]done[/] {name} in {seconds:.1f} s: {escape(summary)}")

    def info(self, text: str) -> None:
        self.out.print(f"[dim]  {escape(text)}[/]", highlight=False)

    def bar(self, name: str, done: int, total: int | None) -> None:
        if self._bars is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bars = Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.out,
            )
            self._bars.start()
        if name not in self._tasks:
            self._tasks[name] = self._bars.add_task(name, total=total)
        self._bars.update(self._tasks[name], completed=done, total=total)

    def _stop_bars(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars, self._tasks = None, {}

    def close(self) -> None:
        self._stop_bars()


def run_json(run: Any) -> dict[str, Any]:
    """A run as JSON: run.json with every stage's manifest."""
    return {**run.data, "folder": str(run.folder), "stages": run.stages()}


def print_summary(out: Any, run: Any, *, status: str | None = None) -> None:
    """The run's stages and results as tables, and where the report is (``status``: the run's, as shown)."""
    from rich.table import Table

    from ee_middleware.jobs.report import peak_rss_text

    table = Table(title=f"ee improve run {run.id}: {status or run.status}")
    for column in ("stage", "status", "seconds", "peak RSS MiB (own / children)", "result"):
        table.add_column(column, justify="right" if column.startswith(("seconds", "peak")) else "left")
    manifests = {m["stage"]: m for m in run.stages()}
    for name in run.data.get("stage_order", []):
        m = manifests.get(name)
        if m is None:
            table.add_row(name, "not run", "-", "-", "")
            continue
        result = m.get("error") or m.get("summary") or "; ".join(m.get("decisions") or [])
        seconds = f"{m['seconds']:.1f}" if isinstance(m.get("seconds"), int | float) else "-"  # not while it runs, or if killed
        table.add_row(name, escape(str(m["status"])), seconds, peak_rss_text(m), escape(short(result, 90)))
    out.print(table)
    evaluation = (manifests.get("evaluate") or {}).get("outputs") or {}
    if evaluation.get("runs"):
        out.print(results_table(evaluation))
    gate = (manifests.get("gate") or {}).get("outputs") or {}
    for line in gate.get("moved", []):
        out.print(f"- {escape(line)}")
    if gate and not gate.get("passed"):  # in full: the table cuts its result column
        for reason in gate.get("reasons") or []:
            out.print(f"[red]gate failed[/]: {escape(reason)}")
    promote = (manifests.get("promote") or {}).get("outputs") or {}
    if promote.get("turned_down"):  # the gate passed; in full: the table cuts it
        for reason in promote.get("reasons") or []:
            out.print(escape(f"not promoted: {reason}"), style="yellow")
    register = (manifests.get("register") or {}).get("outputs") or {}
    if register.get("unchanged"):  # the live adapter's weights, nothing evaluated or promoted; in full: the table cuts it
        out.print(escape(f"unchanged: {register['unchanged']}"), style="yellow")
    if run.status == "nothing-new" and (run.data.get("outcome") or {}).get("reason"):  # in full: the table cuts it
        out.print(f"nothing new: {escape(str(run.data['outcome']['reason']))}")
    datasets = (manifests.get("datasets") or {}).get("outputs") or {}
    if datasets.get("left_out"):  # in full: the table cuts its result column
        from ee_middleware.jobs.stages import left_out_text

        out.print(escape(f"left out of the datasets: {left_out_text(datasets['left_out'])} (why and the fix: the report)"), style="yellow")
    for tool in datasets.get("tools_without_examples") or []:
        from ee_middleware.jobs.stages import lost_tool_text

        out.print(escape(f"WARNING: {lost_tool_text(tool)}"), style="yellow")
    for cut in run.data.get("budget_cuts") or []:
        out.print(escape(f"budget {cut['budget']} ({cut.get('limit')}): {cut['cut']}"), style="yellow")
    held = (run.data.get("watermark") or {}).get("held")
    if held:
        out.print(escape(f"watermark kept: {held}"), style="yellow")
    if run.data.get("error"):
        colour = "yellow" if run.status == "stopped" else "red"  # stopped (max_minutes, a signal): the next call continues it
        out.print(f"[{colour}]{run.status}[/]: {escape(str(run.data['error']))}")
    report = run.data.get("report") or {}
    if report:
        missing = [str(path) for path in (report.get("markdown"), report.get("html")) if path and not Path(path).is_file()]
        if missing:  # (removed since, or the folder was moved: named as if they were there)
            out.print(escape(f"Report: {', '.join(missing)} not found (removed or moved since the run wrote it)"), style="yellow")
        else:
            out.print(f"Report: {report.get('markdown')} and {report.get('html')}")
    if run.data.get("report_error"):
        out.print(escape(f"the report could not be written: {run.data['report_error']}"), style="yellow")


def results_table(evaluation: dict[str, Any]) -> Any:
    """Baseline vs candidate: task success per suite, then the held-out action NLL."""
    from rich.table import Table

    table = Table(title=f"held-out evaluation: {evaluation['baseline']} (baseline) vs {evaluation['candidate']} (candidate)")
    for column in ("metric", "tasks/states", "baseline", "candidate"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    from ee_middleware.evals.report import gated_rate, gated_rate_name

    baseline = {s["suite"]: s for s in evaluation["runs"]["baseline"]["suites"]}
    # with several trials, pass^k: what the gate compared (the per-trial rate contradicted its delta)
    measured = gated_rate_name([*evaluation["runs"]["candidate"]["suites"], *baseline.values()])
    for s in evaluation["runs"]["candidate"]["suites"]:
        b, c = gated_rate(baseline.get(s["suite"], {})), gated_rate(s)
        table.add_row(
            escape(f"{measured} {short(s['suite'], 50)}"),
            str(s["tasks"]),
            f"{100 * b:.1f}%" if b is not None else "no task",
            f"{100 * c:.1f}%" if c is not None else "no task",
        )
    like = evaluation.get("likelihood")
    if like:
        from ee_middleware.jobs.deploy import compare_likelihood, nll_decimals, nll_text

        nll = {m["model"]: m["mean_nll"] for m in like["models"]}
        versus = compare_likelihood(like)
        d = nll_decimals(*((versus["diff"], versus["se"]) if versus else ()))
        table.add_row(
            "expert-action NLL/token (lower is better)",
            str(like["states"]),
            nll_text(nll.get(like["baseline"]), d),
            nll_text(nll.get("candidate"), d),
        )
    return table


def register(app: typer.Typer) -> None:
    """Add ``ee improve`` and ``ee runs`` to the root app."""
    app.command(
        "improve",
        epilog=examples(
            "ee improve --example-config > improve.toml",
            "ee improve --config improve.toml",
            "ee improve --config improve.toml --app support-bot --new-run",
        ),
    )(improve)
    app.add_typer(runs_app, name="runs")


def _runs_dir(ctx: typer.Context, given: str | None, config: Path | None) -> Any:
    from ee_middleware.errors import ConfigError
    from ee_middleware.jobs.runs import RunsDir

    setting_origin(ctx, config, "improve", "runs", envvar="EE_RUNS")  # an EE_RUNS that overrides the file's is said
    # (blank, read as a path, is the working directory: listed, or pruned, as runs)
    runs = path_given(given, "--runs / EE_RUNS", "the runs folder") if given is not None else None
    if runs is None and config is not None:
        from ee_middleware._toml import read_toml_table

        value = read_toml_table(config, "improve").get("runs")
        if not value or not str(value).strip():
            raise ConfigError(f'{config} names no runs folder: add runs = "DIR" to its [improve] table, or pass --runs DIR.')
        runs = Path(value)
    if runs is None:
        raise typer.BadParameter("say which runs: --runs DIR, --config improve.toml, or EE_RUNS")
    if not runs.is_dir():
        what = "is not a folder" if runs.exists() else "does not exist: `ee improve` makes it on its first run"
        raise ConfigError(f"No runs folder at {runs} (it {what}). Check --runs, EE_RUNS or the [improve] runs of --config.")
    return RunsDir(runs)


def _config_app(config: Path | None) -> dict[str, str] | None:
    """The app of ``--config``'s ``[improve]`` table, as a scope of runs: ``latest`` is that app's newest run where jobs of
    several apps share the runs folder (it was the folder's newest, of whichever app)."""
    if config is None:
        return None
    from ee_middleware._toml import read_toml_table

    app = read_toml_table(config, "improve").get("app")
    return {"app": app.strip()} if isinstance(app, str) and app.strip() else None


def _configured_registry(config: Path | None) -> str | None:
    """The adapter registry the job's configuration names (``EE_ADAPTER_REGISTRY``, else ``--config``'s ``[improve]
    registry``): a registry a run records as ``module:factory`` is opened only where it is this one."""
    import os

    if os.environ.get("EE_ADAPTER_REGISTRY"):
        return os.environ["EE_ADAPTER_REGISTRY"]
    if config is None:
        return None
    from ee_middleware._toml import read_toml_table

    value = read_toml_table(config, "improve").get("registry")
    return str(value) if value else None


RunsOption = typer.Option(None, "--runs", envvar="EE_RUNS", help="Runs folder (or --config improve.toml).", metavar="PATH")


@runs_app.command("list", epilog=examples("ee runs list --config improve.toml"))
def list_runs(ctx: typer.Context, runs: str | None = RunsOption, config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every run, oldest first: app, status, stages finished, candidate, gate, promotion."""
    folder = _runs_dir(ctx, runs, config)
    records = folder.list()
    held = folder.locked_by_other()
    if as_json:  # a run whose stage manifests cannot be read is damaged here too, its recorded status kept beside
        print_json([{**r.data, **_stages_damage(r), "folder": str(r.folder), "lock_held": held and r.status == "running"} for r in records])
        return
    from rich import box
    from rich.table import Column, Table

    from ee_middleware.jobs.runs import DAMAGED

    # The id is what `ee runs show ID` takes: never cut to "202611..." in a narrow terminal; it is also the start time
    # (UTC). Short values stay whole; the candidate's name (and the app, when runs of several apps share the folder)
    # fold, never cut.
    width = max((len(r.id) for r in records), default=3)
    apps = {r.app or "-" for r in records}
    title = f"{len(records)} runs in {folder.root}" + (f" (app {next(iter(apps))})" if len(apps) == 1 else "")
    columns = [Column("run (started, UTC)", no_wrap=True, min_width=width)]
    if len(apps) > 1:
        columns.append(Column("app", overflow="fold", ratio=1))
    # a long status ('running (killed?)') wraps at its space, so that the candidate keeps room for its header
    stages = [_finished_stages(r) for r in records]
    statuses = [folder.shown_status(r, held=held) if done is not None else DAMAGED for r, (done, *_) in zip(records, stages, strict=True)]
    status_width = max((len(word) for status in statuses for word in status.split()), default=6)
    columns += [Column("status", min_width=status_width), Column("stages", no_wrap=True)]
    columns += [Column("candidate", overflow="fold", ratio=2, min_width=len("candidate"))]
    columns += [Column(name, no_wrap=True) for name in ("gate", "promoted")] + [Column("new", no_wrap=True, justify="right")]
    table = Table(*columns, title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for r, status, (done, select, register) in zip(records, statuses, stages, strict=True):
        outcome = r.data.get("outcome") or {}
        gate = "-" if outcome.get("gate_passed") is None else ("pass" if outcome["gate_passed"] else "fail")
        promoted = "yes" if outcome.get("promoted") else "unchanged" if outcome.get("unchanged") else "no"
        table.add_row(
            r.id,
            *([escape(r.app or "-")] if len(apps) > 1 else []),
            status,
            f"{'?' if done is None else len(done)}/{len(r.data.get('stage_order', []))}",
            # an unfinished run (stopped, failed, running) has no outcome yet: the candidate its register stage registered
            escape(outcome.get("candidate") or register.get("candidate") or "-"),
            gate,
            promoted,
            str(select.get("new", "-")),
        )
    console().print(table)


def _stages_damage(run: Any) -> dict[str, Any]:
    """For ``ee runs list --json``: a run whose stage manifests cannot be read (as the table shows it) with
    ``status: "damaged"``, the reason as its ``error`` and the status run.json records as ``recorded_status``; else
    nothing to change."""
    from ee_middleware.jobs.errors import JobError
    from ee_middleware.jobs.runs import DAMAGED

    if run.status == DAMAGED:
        return {}
    try:
        run.stages()
    except JobError as exc:
        return {"status": DAMAGED, "recorded_status": run.status, "error": str(exc)}
    return {}


def _finished_stages(run: Any) -> tuple[list[str] | None, dict[str, Any], dict[str, Any]]:
    """A run's finished stages and its select and register stages' outputs, as ``ee runs list`` shows them; ``(None, {},
    {})`` for a run with a stage manifest that cannot be read (listed as damaged, as a run whose run.json cannot be read
    is: ``ee runs show`` names the file and the fix)."""
    from ee_middleware.jobs.errors import JobError

    try:
        return [m["stage"] for m in run.stages() if m.get("status") == "done"], run.outputs("select"), run.outputs("register")
    except JobError:
        return None, {}, {}


@runs_app.command("show", epilog=examples("ee runs show latest --runs ./runs"))
def show_run(
    ctx: typer.Context,
    run_id: str = typer.Argument("latest", help="A run id, an unambiguous prefix, or 'latest'."),
    runs: str | None = RunsOption,
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """One run: every stage's manifest (inputs with hashes, outputs, timings, decisions) and the report's path."""
    folder = _runs_dir(ctx, runs, config)
    run = folder.get(run_id, scope=_config_app(config))
    if as_json:  # lock_held as `ee runs list --json` has it: a "running" run is really running (else it was killed)
        print_json({**run_json(run), "lock_held": run.status == "running" and folder.locked_by_other()})
        return
    out = console()
    try:
        print_summary(out, run, status=folder.shown_status(run))
        for manifest in run.stages():
            inputs = ", ".join(f"{k}={short(str(_hash_or_value(v)), 40)}" for k, v in (manifest.get("inputs") or {}).items())
            out.print(
                f"[bold]{manifest['stage']}[/] ({manifest['status']}, {manifest.get('started_at', '')}): inputs {escape(inputs or '-')}"
            )
    except (TypeError, AttributeError, KeyError, ValueError) as exc:  # a value inside a manifest of another shape than written
        from ee_middleware.jobs.errors import JobError

        raise JobError(
            f"The run in {run.folder} holds a stage manifest (in {run.folder / 'stages'}) or run.json value of a shape this "
            f"version does not write ({type(exc).__name__}: {exc}): edited by hand, or written by another version. "
            f"`ee runs show {run.id} --json` prints them as they are; restore the run's files from a backup to see it here."
        ) from exc


@runs_app.command(
    "prune",
    epilog=examples(
        "ee runs prune --config improve.toml --keep 14 --dry-run",
        "ee runs prune --config improve.toml --keep 14   # e.g. weekly, after ee improve",
    ),
)
def prune_runs(
    ctx: typer.Context,
    keep: int = typer.Option(..., "--keep", min=0, help="How many of the newest runs to keep, besides those still needed."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed and what is kept, and why."),
    runs: str | None = RunsOption,
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Remove old run folders, keeping the --keep newest and every run still needed.

    Each run folder holds its datasets, a copy of its adapter (the registry keeps its own) and its evaluations. Kept
    whatever --keep says: an unfinished run (the next `ee improve` continues it), each app's watermark (the newest
    succeeded run, where the next run starts), and the run of a live adapter or of the one `ee adapters rollback`
    returns to. Refused while a run holds the folder's lock.
    """
    folder = None
    try:
        folder = _runs_dir(ctx, runs, config)
        result = folder.prune(keep, dry_run=dry_run, registry=_configured_registry(config))
    except Exception as exc:
        if as_json:  # refused (a run holds the folder's lock) or failed: stdout still says why, as JSON
            print_json(_failure_json(exc, folder.root if folder is not None else None))
        raise
    if as_json:
        print_json(result)
        return
    from rich import box
    from rich.table import Column, Table

    from ee_middleware.messages import _human_size

    out = console()
    verb = "would be removed" if dry_run else "removed"
    table = Table(
        Column("run (started, UTC)", no_wrap=True),
        Column("status"),
        Column("what", overflow="fold"),
        title=escape(f"runs in {result['root']}"),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for entry in result["removed"]:
        table.add_row(entry["id"], escape(entry["status"]), f"{verb} ({_human_size(entry['bytes'])})")
    for entry in result["kept"]:
        table.add_row(entry["id"], escape(entry["status"]), escape(f"kept: {entry['why']}"))
    if result["removed"] or result["kept"]:
        out.print(table)
    out.print(
        f"{len(result['removed'])} run(s) {verb} ({_human_size(result['bytes_freed'])}), {len(result['kept'])} kept"
        + (" (dry run: nothing was removed)" if dry_run else ""),
        highlight=False,
    )


def _hash_or_value(value: Any) -> Any:
    if isinstance(value, dict) and "sha256" in value:
        return f"{value.get('path', '')} sha256:{value['sha256'][:12]}"
    return value
