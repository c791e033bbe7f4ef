"""``ee eval``: run the BFCL, tau-style and ``traces:`` suites against a model, and gate a deploy on the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ee_middleware._lifetime import interrupt_name
from ee_middleware._limits import MAX_EVAL_TRIALS
from ee_middleware.cli.common import (
    AllowPartialOption,
    JsonOption,
    console,
    escape,
    examples,
    interrupted,
    library_bars_off,
    path_given,
    positive_seconds,
    print_json,
    progress_console,
    reading_store,
    sampling_temperature,
    user_output_to_stderr,
    warnings_as_lines,
)
from ee_middleware.models.urls import server_url_problem, shown_url

app = typer.Typer(help="Evaluate a model on BFCL, tau-style and traces: suites; gate a deploy on the results.", no_args_is_help=True)


MAX_TRIALS = MAX_EVAL_TRIALS
"""The most trials per task ``ee eval run --trials`` takes (the eval job's bound, ``[eval] trials``'s too)."""


def _model_spec(endpoint: str | None, model: str | None, model_spec: str | None) -> str | None:
    if model_spec and (endpoint or model):
        raise typer.BadParameter("give either --model-spec, or --endpoint with --model, not both")
    if endpoint or model:
        if not (endpoint and model):
            raise typer.BadParameter("--endpoint and --model go together (the OpenAI-compatible base URL and the served model name)")
        problem = server_url_problem(endpoint)
        if problem:
            raise typer.BadParameter(
                f"{shown_url(endpoint)!r} is not an OpenAI-compatible base URL: {problem}. Write http(s)://host:port/v1, e.g. http://127.0.0.1:8000/v1.",
                param_hint="'--endpoint'",
            )
        return f"openai:{endpoint}#{model}"
    return model_spec


@app.command("run", epilog=examples("ee eval run --suite bfcl:multi_turn_base:20 --model-spec local:./models/smollm2 --out ./eval/base"))
def run_cmd(
    suite: list[str] | None = typer.Option(
        None,
        "--suite",
        help="bfcl:CATEGORY[:N], tau:DOMAIN[:SPLIT][:N] or traces:STORE[:APP][:N] (e.g. bfcl:multi_turn_base:50); repeat for several "
        "(or suites under [eval]).",
        show_default=False,
    ),
    endpoint: str | None = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."),
    model: str | None = typer.Option(None, "--model", help="Served model or adapter name at --endpoint."),
    model_spec: str | None = typer.Option(
        None, "--model-spec", help="oracle, noop, local:DIR[@ADAPTER], openai:URL#MODEL or module:factory."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        parser=path_given,
        metavar="PATH",
        help="Run folder: results.parquet, report.md/html, success.png (or out under [eval]). Re-run to resume.",
    ),
    trials: int | None = typer.Option(
        None, "--trials", min=1, max=MAX_TRIALS, help=f"Trials per task (pass^k over them), at most {MAX_TRIALS}. [default: 1]"
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes. [default: 1]"),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed (trial k uses seed + k). [default: 0]"),
    temperature: float | None = typer.Option(
        None, "--temperature", callback=sampling_temperature, help="Sampling temperature (0: greedy). [default: 0.0]"
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Tokens the model may write per answer; answers cut at it are counted. [default: 512]"
    ),
    max_steps: int | None = typer.Option(None, "--max-steps-per-turn", min=1, help="Model answers per user turn. [default: 20]"),
    timeout_s: float | None = typer.Option(None, "--timeout", callback=positive_seconds, help="Seconds per model request. [default: 60]"),
    user_model: str | None = typer.Option(None, "--user-model", help="tau suites: an openai:URL#MODEL user simulator (default: scripted)."),
    tau_bench_dir: str | None = typer.Option(
        None, "--tau-bench-dir", envvar="EE_TAU_BENCH_DIR", help="tau suites: a tau-bench checkout (for tau:retail and tau:airline)."
    ),
    split: Path | None = typer.Option(
        None, "--split", help="traces suites: the datasets.json (or its folder) whose held-out trajectories are evaluated."
    ),
    sandbox: str | None = typer.Option(
        None, "--sandbox", help="traces suites: the trajectories' sandbox spec (default: bfcl for BFCL expert apps)."
    ),
    config: Path | None = typer.Option(None, "--config", help="TOML file with an [eval] table; flags override it."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Run suites against a model; a task the model fails (garbage, a tool raising) is a failure with a reason.

    Exits 1 when the model server gave no answer on some tasks (down, timing out), or the worker process running
    some died (killed out of memory): the run is incomplete, and the same command run again runs only those tasks
    (a task whose worker dies again then counts as failed). Exits 1 too when in a suite the model never answered
    (every task failed on its first request: a wrong --model name, an adapter that cannot load, every worker
    killed; not a prompt the server refused as too long): fix that and run again.
    Answers the model could not finish within --max-tokens (finish_reason 'length') are counted per suite
    (cut_answers) with a warning; the run still counts as done. So does a suite that scored no task (it loaded none, or
    left every one out): a warning on stderr names it, its success_rate and pass_hat_k are null, and the gate refuses it.

    Settings come from the [eval] table of --config; flags override it. Only in the table: retries (2: the model
    client's retries of a failed request), max_user_turns (10: the tau-style user simulator's messages at most),
    feed_back_parse_errors (false: tell the model when its answer looks like a call that cannot be read, and let it try
    again) and api_key_env (the variable whose value is sent as the API key: EE_OPENAI_API_KEY, then OPENAI_API_KEY).
    """
    from ee_middleware.errors import ModelError
    from ee_middleware.evals.job import EvalJob, is_bare_model_name
    from ee_middleware.evals.report import cut_warning, mixed_models_warning, no_task_warning, text_calls_note, unanswered_warning
    from ee_middleware.evals.runner import run_eval

    overrides: dict[str, Any] = {
        "suites": suite or None,  # none given: the file's
        "model": _model_spec(endpoint, model, model_spec),
        "out": str(out) if out is not None else None,
        "trials": trials,
        "workers": workers,
        "seed": seed,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "max_steps_per_turn": max_steps,
        "timeout_s": timeout_s,
        "user_model": user_model,
        "tau_bench_dir": tau_bench_dir,
        "split": str(split) if split else None,
        "sandbox": sandbox,
    }
    _check_needed(config, overrides)
    job = EvalJob.load(config, **overrides)
    out_console = console()
    bars = _Bars(progress_console()) if progress and not as_json else None
    counted: dict[str, tuple[int, int]] = {}  # suite -> (task trials done, its task trials), for the line an interrupt prints

    def on_progress(name: str, done: int, total: int) -> None:
        counted[name] = (done, total)
        if bars:
            bars.update(name, done, total)

    try:
        try:
            # what the model's or the sandbox's code prints goes to stderr (stdout holds the answer alone); a traces:
            # suite on a damaged store is refused unless --allow-partial
            # its warnings (a step limit shorter than a task's turn, more workers than cores) as warning: lines
            with warnings_as_lines(), user_output_to_stderr(), reading_store(allow_partial=allow_partial):
                summary = run_eval(job, progress=on_progress)
        finally:
            if bars:
                bars.stop()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (termination_as_interrupt): exit 130
        raise interrupted(_interrupted_text(job, interrupt_name(exc), counted)) from exc
    except ModelError as exc:  # the model could not be built: the file's model may be a served model's bare name
        if config is None or overrides["model"] is not None or not is_bare_model_name(job.model):
            raise
        raise ModelError(
            f"{exc} In the [eval] table of {config}, model is a whole model spec, not the served model's name that --model "
            f"gives: for a model an OpenAI-compatible server serves as {job.model!r}, write model = "
            f'"openai:URL#{job.model}" (what --endpoint URL --model {job.model} give).'
        ) from exc
    warnings = [line for text in (unanswered_warning(summary), never_answered_warning(summary)) for line in text.splitlines() if line]
    cut = cut_warning(summary, job.max_tokens)
    text_calls = text_calls_note(summary)
    mixed = mixed_models_warning(summary)
    no_task = no_task_warning(summary)
    if no_task:  # on stderr in both forms: the table reads "no task", --json null; a script should hear why
        typer.echo(no_task, err=True)
    if as_json:
        print_json(summary[0] if len(summary) == 1 else summary)
        for text in (mixed, cut, text_calls):  # stdout stays the JSON alone
            if text:
                typer.echo(text, err=True)
    else:
        _print_summary(out_console, summary, Path(job.out), "", cut, text_calls, mixed)
    if warnings:  # an incomplete run, or one that measured no model: a script or CI step must not read it as done
        for text in warnings:  # (the table's form too: a CI log that keeps stderr alone shows why it failed)
            typer.secho(f"error: {text.removeprefix('Warning: ')}", err=True, fg="red")
        raise typer.Exit(1)


def _interrupted_text(job: Any, signal_name: str, counted: dict[str, tuple[int, int]]) -> str:
    """What the line of a run stopped by a signal says (:func:`~ee_middleware.cli.common.interrupted`): how many task
    trials are done and where their results are, and that the same command resumes it (``counted``: each suite's task
    trials done and in all, as last reported)."""
    from ee_middleware.evals.runner import JOURNAL

    unit = "tasks" if job.trials == 1 else "task trials"
    if not counted:
        return f"the evaluation stopped ({signal_name}) before it ran any task. Run the same command again to run it."
    done, total = (sum(numbers) for numbers in zip(*counted.values(), strict=True))
    running = ""
    if done < total:
        running = " (those its workers were running included)" if job.workers > 1 else " (the one it was running included)"
    return (
        f"the evaluation stopped ({signal_name}) with {done} of {total} {unit} done; their results are in "
        f"{Path(job.out) / JOURNAL}. Run the same command again to resume: it runs only the {unit} not done{running}. "
        f"`ee eval gate` refuses this run ({job.out}) until it is complete."
    )


def never_answered_warning(summary: list[dict[str, Any]], limit: int = 600) -> str:
    """A warning naming the suites in which the model never answered (``never_answered`` in the summary of
    :func:`~ee_middleware.evals.runner.run_eval`), with each one's first reason; "" when it answered in every suite. A
    reason over ``limit`` characters keeps its start and its end (where it says what to fix), cut in the middle (a
    server's long answer quoted)."""
    silent = [s for s in summary if s.get("never_answered")]
    if not silent:
        return ""
    from ee_middleware.models.protocol import clip_middle

    where = "; ".join(f"{s['suite']}: all {s['runs']} task trial(s), the first: " + clip_middle(s["never_answered"], limit) for s in silent)
    return (
        f"Warning: the model never answered in {len(silent)} suite(s): every task trial failed before its first answer "
        f"({where}). These scores measure the model's setup, not the model, and `ee eval gate` refuses them. Fix what the "
        "error says (the served model's name, the adapter's files, the model client; for worker processes that died, the "
        "memory each needs: fewer --workers) and run `ee eval run` again with this --out: those trials run again (a "
        "corrected model spec takes the folder over)."
    )


NEEDED = {
    "model": "no model to evaluate: give --model-spec SPEC (oracle, noop, local:DIR[@ADAPTER], openai:URL#MODEL or module:factory), "
    "or --endpoint URL with --model NAME (or model under [eval] in the --config file)",
    "suites": 'no suite to run: give --suite SPEC, repeated for several (or suites = ["SPEC", ...] under [eval] in the --config file)',
    "out": 'no run folder: give --out DIR (or out = "DIR" under [eval] in the --config file)',
}
"""The settings ``ee eval run`` cannot do without, and what says each is missing: the flag and the key that give it."""


def _check_needed(config: Path | None, overrides: dict[str, Any]) -> None:
    """A usage error naming the flag and the key of each :data:`NEEDED` setting that neither the flags nor the file's
    [eval] give. The file's other problems come first: a key spelled as its flag (``suite``) gets its 'did you mean
    suites?', which the missing setting would hide, so the configuration is checked with stand-ins for the missing ones
    before they are named."""
    from ee_middleware._toml import layered_values
    from ee_middleware.evals.job import EvalJob

    given = layered_values(config, "eval", overrides, job="eval job")
    missing = [key for key in NEEDED if given.get(key) is None]
    if not missing:
        return
    stand_ins = {"model": "noop", "suites": ["(not given)"], "out": "(not given)"}
    EvalJob.load(config, **{**overrides, **{key: stand_ins[key] for key in missing}})  # raises on the file's own problems
    raise typer.BadParameter("; ".join(NEEDED[key] for key in missing))


class _Bars:
    def __init__(self, out: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=out,
        )
        self._progress.start()
        self._tasks: dict[str, Any] = {}

    def update(self, suite: str, done: int, total: int) -> None:
        if suite not in self._tasks:
            self._tasks[suite] = self._progress.add_task(suite, total=total)
        self._progress.update(self._tasks[suite], completed=done, total=total)

    def stop(self) -> None:
        self._progress.stop()


def _print_summary(
    out: Any, summary: list[dict[str, Any]], folder: Path, warning: str, cut: str = "", text_calls: str = "", mixed: str = ""
) -> None:
    from rich.table import Table

    from ee_middleware.evals.report import CUT_COLUMN, rate_cell, run_served_models

    table = Table(title=f"Results in {folder}")
    for column in ("suite", "tasks", "trials", "success", "pass^k", "failures", CUT_COLUMN):
        table.add_column(column, overflow="fold")
    for s in summary:
        failures = ", ".join(f"{k}: {v}" for k, v in s["failures"].items()) or "-"
        table.add_row(
            escape(s["suite"]),
            str(s["tasks"]),
            str(s["trials"]),
            rate_cell(s, "success_rate"),
            rate_cell(s, "pass_hat_k"),
            escape(failures),
            str(s.get("cut_answers", 0)),
        )
    out.print(table)
    served = run_served_models(summary)
    if served:
        out.print(escape("Answered by: " + ", ".join(f"{name} ({n} task trial(s))" for name, n in served.items())))
    for s in summary:
        if s.get("excluded"):
            reasons = "; ".join(f"{n}: {why}" for why, n in s["excluded_reasons"].items())
            out.print(escape(f"{s['suite']}: {s['excluded']} trajectories left out ({reasons})"))
    for text in (mixed, warning, cut, text_calls):  # on stderr, as every command's warnings (a log keeping stderr has them)
        if text:
            typer.secho(text, err=True, fg="yellow")
    out.print(f"Report: {folder / 'report.md'} and {folder / 'report.html'}")


@app.command("gate", epilog=examples("ee eval gate --candidate ./eval/candidate --baseline ./eval/base --policy gate.toml"))
def gate_cmd(
    candidate: Path = typer.Option(..., "--candidate", help="Run folder of the candidate (ee eval run --out)."),
    baseline: Path = typer.Option(..., "--baseline", help="Run folder of the baseline (the live model) on the same suites."),
    policy: Path | None = typer.Option(
        None, "--policy", help="TOML file with a [gate] table (min_improvement, max_regression, min_tasks, alpha, ...)."
    ),
    min_tasks: int | None = typer.Option(None, "--min-tasks", min=1, help="Override the policy's min_tasks."),
    adapter: str | None = typer.Option(None, "--adapter", help="Record the result on this registered adapter (with --registry)."),
    registry: str | None = typer.Option(
        None, "--registry", "-r", envvar="EE_ADAPTER_REGISTRY", show_envvar=True, help="The adapter registry --adapter is in."
    ),
    allow_mixed_models: bool = typer.Option(
        False,
        "--allow-mixed-models",
        help="Gate a run whose answers came from more than one served model (refused by default: a router alias moved by a promote).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Compare two runs task by task (McNemar exact, Newcombe CIs); exit 1 when the policy fails.

    Each suite both runs scored needs min_tasks paired tasks (default 20) and may lose at most max_regression (0.02).

    A loss of exactly max_regression passes.

    The delta pooled over the suites must be at least min_improvement (0): equal scores pass, a pooled loss fails.

    block_significant_regression and require_significant add McNemar tests at alpha.

    A missing or unfinished run folder is an error (exit 1 too, with its reason), and so is a run whose answers came
    from more than one served model, unless --allow-mixed-models.

    With --adapter, the candidate run must be a run of that adapter (its answers, or its model spec, name it) and the
    baseline another run folder; the record keeps both folders' absolute paths. A local:BASE@DIR run must have
    evaluated the adapter's registered weights: the content hash its run.json records is the adapter's content_hash
    (a folder retrained after the run is refused).
    """
    from ee_middleware.errors import ConfigError
    from ee_middleware.evals.gate import GatePolicy, check_runs_of_adapter, gate, same_run_folder

    if (adapter is None) != (registry is None):
        raise typer.BadParameter("--adapter and --registry go together: the adapter the gate decides on, and its registry")
    for flag, path in (("--candidate", candidate), ("--baseline", baseline)):
        if path.is_file():
            raise typer.BadParameter(
                f"{path} is a file: {flag} takes a run folder, the --out of `ee eval run` (the folder holding results.parquet"
                + (f", here {path.parent}" if (path.parent / "results.parquet").is_file() else "")
                + ")",
                param_hint=flag,
            )
    if adapter is None and candidate.resolve() == baseline.resolve():  # (with --adapter: the adapter check says it)
        raise ConfigError(same_run_folder(candidate, "the candidate"))
    adapters = None
    if adapter is not None and registry is not None:
        from ee_middleware.adapters.registry import open_registry

        adapters = open_registry(registry, create=False)
        registered = adapters.get(adapter)  # an unknown name is refused before anything is compared
        versions = {r.content_hash: r.name for r in adapters.list(app=registered.app)}  # to name the version a run evaluated
        check_runs_of_adapter(candidate, baseline, adapter, registered=registered, versions=versions)
    result = gate(candidate, baseline, GatePolicy.load(policy, min_tasks=min_tasks), allow_mixed_models=allow_mixed_models)
    if adapters is not None and adapter is not None:
        runs = {"candidate_run": str(candidate.resolve()), "baseline_run": str(baseline.resolve())}  # found again from any folder
        adapters.add_eval(adapter, {"kind": "gate", **runs, **result.to_dict()})
    if as_json:
        print_json(result.to_dict())
    else:
        _print_gate(console(), result)
    if not result.passed:
        raise typer.Exit(1)


def _print_gate(out: Any, result: Any) -> None:
    from rich.table import Table

    table = Table(title="Gate: candidate vs baseline")
    for column in ("suite", "tasks", "candidate", "baseline", "delta", "95% CI", "McNemar p"):
        table.add_column(column, overflow="fold")
    for s in [*result.suites, *([result.overall] if result.overall else [])]:
        table.add_row(
            escape(s.suite),
            str(s.tasks),
            f"{100 * s.candidate_rate:.1f}%",
            f"{100 * s.baseline_rate:.1f}%",
            f"{100 * s.delta:+.1f}",
            f"[{100 * s.ci_low:+.1f}, {100 * s.ci_high:+.1f}]",
            f"{s.p_value:.3g}",
        )
    out.print(table)
    cut = [s for s in result.suites if s.candidate_cut_answers or s.baseline_cut_answers]
    if cut:
        listed = ", ".join(f"{s.suite} {s.candidate_cut_answers} / {s.baseline_cut_answers}" for s in cut)
        out.print(f"[yellow]Answers cut off at max_tokens (candidate / baseline): {escape(listed)}[/]")
    _print_moved(out, result.suites)
    for note in result.notes:
        out.print(f"[yellow]Note: {escape(note)}[/]")
    out.print("[green]PASS[/]" if result.passed else "[red]FAIL[/]: " + escape("; ".join(result.reasons)))


def _print_moved(out: Any, suites: list[Any], limit: int = 10) -> None:
    """Which tasks regressed (with the candidate's reason) and which improved, per suite."""
    for s in suites:
        if s.regressed:
            out.print(f"[red]{escape(s.suite)}: {len(s.regressed)} task(s) the baseline passed and the candidate failed[/]")
            for item in s.regressed[:limit]:
                out.print(f"  {escape(item['task_id'])}: {escape(item['reason'] or 'no reason recorded')}")
            if len(s.regressed) > limit:
                out.print(f"  and {len(s.regressed) - limit} more (--json lists them all)")
        if s.improved:
            shown = ", ".join(s.improved[:limit]) + (f" and {len(s.improved) - limit} more" if len(s.improved) > limit else "")
            out.print(f"[green]{escape(s.suite)}: {len(s.improved)} task(s) improved[/]: {escape(shown)}")


@app.command(
    "likelihood",
    epilog=examples(
        "ee eval likelihood --data ./data --base ./models/smollm2 --adapter ./adapters/il",
        "ee eval likelihood -c likelihood.toml --limit 50",
    ),
)
def likelihood_cmd(
    ctx: typer.Context,
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Held-out states: DATA/heldout (from ee datasets build --heldout-...), DATA, or a held-out il.parquet (a training one is "
        "refused). Required: here, or data in [likelihood] of --config.",
        show_default=False,
    ),
    base_model: Path | None = typer.Option(
        None,
        "--base",
        help="The base model: a save_pretrained folder or a .gguf file. Required: here, or base_model in [likelihood] of --config.",
        show_default=False,
    ),
    adapters: list[Path] = typer.Option(
        [], "--adapter", help="A LoRA adapter folder to score against the base; repeat for several (replaces adapters of --config)."
    ),
    max_length: int | None = typer.Option(
        None, "--max-length", min=8, help="Tokens per state, fitted as training fits them. [default: 1024]"
    ),
    decode: int | None = typer.Option(
        None, "--decode", min=0, help="Also decode greedily on the first N states: parse rate, name and exact match. [default: 0]"
    ),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Tokens per greedy answer. [default: 128]"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Score only the first N held-out states. [default: all]"),
    num_threads: int | None = typer.Option(
        None, "--threads", min=1, max=1024, help="torch threads, 1-1024 (1 is often fastest on a shared CPU). [default: 1]"
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda. [default: cpu]"),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML file with a [likelihood] table; flags override it."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    as_json: bool = JsonOption,
) -> None:
    """Per-token NLL of the expert's action on held-out states, base vs adapters, paired per state.

    The table shows as many decimals as the paired differences need. --json prints one object per model; a value that
    cannot be computed is null (paired_se with a single held-out state).

    A state whose expert action alone takes --max-length tokens or more is left out, as training leaves it out: stderr
    says how many and the --max-length that keeps them (--json: left_out_too_long, longest_action_tokens). Exits 1 when
    no state could be scored. Two adapters with the same folder name are told apart by their paths' tails (a/adapter).

    Settings come from the [likelihood] table of --config (data, base_model, adapters, max_length, decode,
    max_new_tokens, limit, num_threads, device); flags override them."""
    from ee_middleware.errors import ConfigError
    from ee_middleware.evals.likelihood import fitted_text, left_out_text, load_heldout, report, score_likelihood
    from ee_middleware.evals.likelihood_config import TABLE, LikelihoodConfig

    cfg = LikelihoodConfig.load(
        config,
        data=data,
        base_model=base_model,
        adapters=adapters,
        max_length=max_length,
        decode=decode,
        max_new_tokens=max_new_tokens,
        limit=limit,
        num_threads=num_threads,
        device=device,
    )
    # the messages that name --max-length (states left out, a base with a shorter context) name the key the file gave
    from_file = config is not None and getattr(ctx.get_parameter_source("max_length"), "name", None) != "COMMANDLINE"
    length_flag = f"max_length in [{TABLE}] of {config}" if from_file and "max_length" in cfg.model_fields_set else "--max-length"
    max_length = cfg.max_length
    states = load_heldout(cfg.data)[: cfg.limit]
    out_console = console()
    bar: Any = None
    if progress and not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=progress_console()
        )
        bar.start()
    tasks: dict[str, Any] = {}

    def on_progress(name: str, done: int, total: int) -> None:
        if bar is not None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"scoring {name}", total=total)
            bar.update(tasks[name], completed=done)

    try:
        with library_bars_off(enabled=not progress or as_json):  # (transformers' "Loading weights")
            scores = score_likelihood(
                states,
                cfg.base_model,
                cfg.adapters,
                max_length=max_length,
                decode_sample=cfg.decode,
                max_new_tokens=cfg.max_new_tokens,
                num_threads=cfg.num_threads,
                device=cfg.device,
                on_progress=on_progress,
            )
    except ConfigError as exc:
        if length_flag == "--max-length" or "--max-length" not in str(exc):
            raise
        raise ConfigError(str(exc).replace("--max-length", length_flag)) from exc
    finally:
        if bar is not None:
            bar.stop()
    left_out = left_out_text(scores[0], max_length).replace("--max-length", length_flag)  # the same states for every model
    if not scores[0].nll:
        raise ConfigError(f"No held-out state could be scored. {left_out}")
    if left_out:
        typer.echo(f"Warning: {left_out}", err=True)
    if fitted := fitted_text(scores[0], max_length).replace("--max-length", length_flag):
        typer.echo(f"{'Warning' if scores[0].cut_from_the_left else 'Note'}: {fitted}", err=True)
    from ee_middleware.messages import finite_or_null

    rows = finite_or_null(report(scores))
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    from ee_middleware.jobs.deploy import nll_decimals, nll_text, paired_text

    d = nll_decimals(*(row.get(key) for row in rows for key in ("paired_diff", "paired_se")))  # shows what was measured
    scored = len(scores[0].nll)
    of_given = f"{scored} of {scored + scores[0].left_out}" if scores[0].left_out else str(scored)
    table = Table(title=f"Expert-action NLL per token on {of_given} held-out states (lower is better)")
    for column in ("model", "mean NLL", "vs base (± s.e.)", "improved", "parse", "name match", "exact"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        paired = paired_text(row["paired_diff"], row.get("paired_se"), d) if row.get("paired_diff") is not None else ""
        improved = f"{row['improved_share']:.0%}" if "improved_share" in row else ""
        decoded = [f"{row[k]:.0%}" if k in row else "" for k in ("parse_rate", "name_match", "exact_match")]
        table.add_row(escape(row["model"]), nll_text(row.get("mean_nll"), d), paired, improved, *decoded)
    out_console.print(table)
