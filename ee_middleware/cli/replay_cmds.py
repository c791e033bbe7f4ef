"""``ee replay``: run the replay job, and inspect the rollouts it stored."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from ee_middleware._lifetime import interrupt_name
from ee_middleware._limits import INT64_MAX, MAX_ALTERNATIVES
from ee_middleware.cli.common import (
    STORE_HELP,
    AllowPartialOption,
    JsonOption,
    StoreOption,
    check_replay_id,
    console,
    escape,
    examples,
    interrupted,
    key_value_settings,
    observation_cell,
    open_existing_store,
    open_job_store,
    print_json,
    print_json_interrupted,
    progress_console,
    reading_store,
    sampling_temperature,
    say_capped,
    short,
    short_ids,
    store_origin,
    terminal_cap,
    user_output_to_stderr,
)
from ee_middleware.errors import EEError

app = typer.Typer(help="Replay recorded states with K alternative tool calls in a sandbox; inspect rollouts.", no_args_is_help=True)


class ExecutorChoice(StrEnum):
    local = "local"
    ray = "ray"


class IsolationChoice(StrEnum):
    none = "none"
    subprocess = "subprocess"


@app.command(
    "run",
    epilog=examples(
        "ee replay run --store ./experience --sandbox bfcl --policy mutate --k 8 --workers 2",
        "ee replay run --store ./experience --policy openai:http://127.0.0.1:8000/v1#my-model --isolation subprocess --tool-timeout 30",
    ),
)
def run(
    ctx: typer.Context,
    store: str | None = typer.Option(None, "--store", "-s", envvar="EE_STORE", help=STORE_HELP, show_envvar=True),
    sandbox: str | None = typer.Option(
        None, "--sandbox", help="Sandbox: 'bfcl', 'package.module:factory' or an entry point. [default: bfcl]"
    ),
    policy: str | None = typer.Option(
        None,
        "--policy",
        help="Policy: 'mutate', 'local:MODEL_DIR', 'openai:BASE_URL#MODEL' or 'package.module:factory'. [default: mutate]",
    ),
    k: int | None = typer.Option(None, "--k", "-k", min=1, max=MAX_ALTERNATIVES, help="Alternatives per recorded state. [default: 8]"),
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-w",
        min=1,
        help="Worker processes (or Ray actors), at most 1024: a local job starts at most 8 per CPU core (more are capped, "
        "with a warning), and never more than the trajectories to replay. [default: 1]",
    ),
    executor: ExecutorChoice | None = typer.Option(None, "--executor", help="local worker processes, or a Ray cluster. [default: local]"),
    requests_in_flight: int | None = typer.Option(
        None,
        "--requests-in-flight",
        min=1,
        help="Proposal requests per worker at once, for a policy behind a server that batches them (vLLM). "
        "[default: 8 for openai: policies, else 1]",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the proposals. [default: 0]"),
    temperature: float | None = typer.Option(
        None, "--temperature", callback=sampling_temperature, help="Sampling temperature of model policies. [default: 1.0]"
    ),
    policy_setting: list[str] | None = typer.Option(
        None,
        "--policy-setting",
        help="KEY=VALUE option of the policy (repeatable; VALUE is read as JSON when it parses), e.g. invalid_share=0.1 for mutate.",
    ),
    sandbox_setting: list[str] | None = typer.Option(
        None,
        "--sandbox-setting",
        help="KEY=VALUE option of the sandbox's factory (repeatable; VALUE is read as JSON when it parses), e.g. root=/data.",
    ),
    isolation: IsolationChoice | None = typer.Option(
        None, "--isolation", help="'subprocess' runs the sandbox in a child process with time and memory limits. [default: none]"
    ),
    tool_timeout: float | None = typer.Option(
        None, "--tool-timeout", help="Seconds per tool call with --isolation subprocess. [default: 30]"
    ),
    memory_mb: int | None = typer.Option(None, "--memory-mb", help="Memory limit of the sandbox process with --isolation subprocess."),
    allow_network: bool | None = typer.Option(
        None,
        "--allow-network/--no-allow-network",
        help=(
            "Let the sandbox run tools that send real network requests, where it tells them apart (BFCL's network tools and an MCP server's "
            "openWorldHint tools are refused by default). Your own sandbox's tools are not stopped from reaching the "
            "network: isolation is no security boundary."
        ),
        show_default=False,
    ),
    app_name: str | None = typer.Option(None, "--app", help="Only trajectories of this app."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Replay at most this many trajectories in this run."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local one)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML file with a [replay] table; flags override it."),
    again: bool = typer.Option(
        False,
        "--again",
        help="Replay every trajectory again as this configuration's next attempt (its sandbox's or policy's code fixed since): a new "
        "replay id, which later runs continue and dataset builds use instead of the earlier attempts.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Replay every approved trajectory not yet replayed with this configuration (resumable).

    A finished configuration is not replayed again by a re-run: after fixing the sandbox's or the policy's code (a
    fidelity mismatch, a policy error), run with --again; a skipped trajectory is finished too. Exit code 1 when a
    trajectory failed, when every trajectory the run selected was skipped (nothing was replayed), or when an
    experience-model sandbox gave no usable prediction at all.

    Settings come from the [replay] table of --config; flags override it. Only in the table: top_p and max_new_tokens
    (a model policy's sampling: none and 160), check_fidelity (true: a sandbox answer to an expert call that differs from
    the recorded one is counted and shown as a fidelity mismatch), max_observation_chars (200000: a longer observation is
    stored cut) and trajectory_ids (only these approved trajectories).
    """
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay, with_attempt

    cfg = ReplayConfig.load(
        config,
        store=store,
        sandbox=sandbox,
        policy=policy,
        k=k,
        workers=workers,
        requests_in_flight=requests_in_flight,
        executor=executor.value if executor else None,
        seed=seed,
        temperature=temperature,
        policy_settings=_policy_settings(policy_setting) if policy_setting else None,
        sandbox_settings=key_value_settings(sandbox_setting, "--sandbox-setting", "root=/data") if sandbox_setting else None,
        isolation=isolation.value if isolation else None,
        tool_timeout_s=tool_timeout,
        memory_mb=memory_mb,
        allow_network=allow_network,  # None: the TOML file (or the default, off) decides
        app=app_name,
        limit=limit,
        ray_address=ray_address,
        again=again or None,
    )
    opened = open_job_store(cfg.store, store_origin(ctx, config, "replay"))  # a clear error before any worker starts
    try:
        with reading_store(allow_partial=allow_partial):
            cfg = with_attempt(opened, cfg)  # the attempt the job replays as (--again: the next), for the bar's replay id
    finally:
        opened.close()
    out = console()
    bar: dict[str, Any] = {}
    counted: list[int] = []  # the trajectories to replay, then how many are stored (for the line an interrupt prints)

    def on_start(total: int) -> None:
        counted[:] = [total, 0]
        if progress and total and not as_json:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            bar["progress"] = Progress(
                TextColumn("[bold]replay[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("trajectories · {task.fields[branches]} branches"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=progress_console(),
                transient=False,
            )
            bar["progress"].start()
            bar["task"] = bar["progress"].add_task(cfg.replay_id, total=total, branches=0)

    branches = 0

    def on_outcome(outcome: Any, n: int, total: int) -> None:
        nonlocal branches
        branches += outcome.record.branches
        counted[1] = n
        if "progress" in bar:
            bar["progress"].update(bar["task"], completed=n, branches=branches)

    try:
        try:
            # what the tools print (here, in the workers and in the sandbox's children) goes to stderr: stdout holds the summary
            with user_output_to_stderr(), reading_store(allow_partial=allow_partial):
                summary = run_replay(cfg, on_start=on_start, on_outcome=on_outcome)
                shown = _shown_trajectory_ids(cfg.store, summary) if not as_json else {}
                idle = _why_nothing_to_replay(cfg) if not (summary.selected or summary.already_done) else None
        finally:
            if "progress" in bar:
                bar["progress"].stop()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (termination_as_interrupt): exit 130
        line = interrupted(_interrupted_text(cfg, interrupt_name(exc), counted))
        partial = getattr(exc, "replay_summary", None)
        if as_json and partial is not None:  # what was stored before the stop
            print_json_interrupted(partial.to_dict(), line)
        raise line from exc
    except EEError as exc:  # the job stopped (a policy's server down, say): with --json, what it did before, and why
        partial = getattr(exc, "replay_summary", None)
        if not as_json or partial is None:
            raise
        print_json({**partial.to_dict(), "error": str(exc)})
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    errors = _run_errors(summary)
    if as_json:  # the stderr lines' text (one a line), as `ee experience eval --json` and `ee curriculum run --json` say it
        print_json({**summary.to_dict(), "error": "\n".join(errors) or None})
    else:
        _print_summary(summary, out, shown)
    if idle:
        typer.secho(f"note: {idle}", err=True, fg="yellow")
    elif not summary.selected and summary.already_done and not as_json:
        typer.secho(
            f"note: this configuration (replay {summary.replay_id}) has replayed every approved trajectory already; after "
            "changing the sandbox's or the policy's code (the same spec), replay them again with --again.",
            err=True,
            fg="yellow",
        )
    elif _fixable_skips(summary) and not errors and not as_json:
        typer.secho(f"note: {SKIPPED_ARE_DONE}", err=True, fg="yellow")
    for error in errors:
        typer.secho(f"error: {error}", err=True, fg="red")
    if errors:
        raise typer.Exit(1)


def _run_errors(summary: Any) -> list[str]:
    """Why ``ee replay run`` exits 1 (none when it does not): its ``error:`` lines on stderr, which its ``--json`` summary
    holds as ``error`` (joined by newlines). A run fails when an experience model gave no usable prediction
    at all, or when a trajectory failed (the policy's model gave no usable proposal anywhere, or something else its
    reason under ``failed`` names: each one is retried by the next run), or when every trajectory it selected was
    skipped (nothing was replayed) for something to fix (not only trajectories that called no tool)."""
    from ee_middleware.messages import one_line

    errors = []
    if summary.no_usable_prediction:
        errors.append(summary.no_usable_prediction_error())
    if summary.no_usable_proposal:
        errors.append(summary.no_usable_proposal_error())
    elif summary.failed:
        n = len(summary.failed)
        first = one_line(next(iter(summary.failed.values())) or "no reason recorded", 300)
        why = f"its reason: {first}" if n == 1 else f"each one's reason is listed under failed; the first: {first}"
        errors.append(
            f"{n} {'trajectory' if n == 1 else 'trajectories'} failed ({why}). A failed trajectory is not done for this "
            "configuration: the next run of the same command retries it."
        )
    elif summary.selected and len(summary.skipped) == summary.selected and (fixable := _fixable_skips(summary)):
        n = len(summary.skipped)
        first = one_line(fixable[0] or "no reason recorded", 300)
        why = f"its reason: {first}" if n == 1 else f"each one's reason is listed under skipped; the first: {first}"
        errors.append(
            f"nothing was replayed: {'the one trajectory' if n == 1 else f'every one of the {n} trajectories'} this run "
            f"selected was skipped ({why}). {SKIPPED_ARE_DONE}"
        )
    return errors


def _fixable_skips(summary: Any) -> list[str]:
    """The reasons of the run's skipped trajectories that name something to fix (an environment the sandbox cannot
    rebuild, a tool it lacks, no tool schemas): not a trajectory that called no tool (a plain answer)."""
    from ee_middleware.replay.runner import NO_TOOL_CALLS

    return [reason for reason in summary.skipped.values() if reason != NO_TOOL_CALLS]


SKIPPED_ARE_DONE = (
    "A skipped trajectory is done for this configuration: after fixing what its reason names (an environment its sandbox "
    "can rebuild again, a tool added to the sandbox), replay with --again."
)


def _print_fewer_answers(summary: Any, out: Any) -> None:
    """What the summary counts of a policy's model answering fewer alternatives than asked (summed over every worker),
    and how many stored alternatives the refill supplied: more than half of them a warning."""
    if summary.refilled_branches and summary.policy != "mutate":
        share = f"{summary.refilled_branches} of the {summary.branches} stored alternatives"
        if summary.mostly_refilled:
            out.print(
                f"[yellow]mostly refilled[/]: {share} were proposed by the refill (schema mutations), not by the policy: it "
                "gave too few usable proposals (see rejected by reason below). Its rollouts are marked "
                "(proposer.settings.refill_for); fix the policy's answers and replay with --again for rollouts of its own",
                highlight=False,
            )
        else:
            out.print(f"refilled: {share} were proposed by the refill (schema mutations), not by the policy", highlight=False)
    if summary.server_short_answers:
        failed = f", {summary.failed_extra_requests} of which failed" if summary.failed_extra_requests else ""
        out.print(
            f"[yellow]fewer choices than asked[/]: the policy's server answered {summary.server_short_answers} request(s) with "
            f"fewer than n={summary.k} choices (it ignores or refuses n, as Ollama and llama.cpp do), so its client asked again "
            f"in {summary.extra_requests} further request(s){failed}",
            highlight=False,
        )
    if summary.short_answers:
        out.print(
            f"[yellow]fewer alternatives than K[/]: the policy's model answered {summary.short_answers} state(s) with fewer than "
            f"K={summary.k} ({summary.missing_answers} missing in all); the refill (schema mutations) supplied the rest",
            highlight=False,
        )


def _interrupted_text(cfg: Any, signal_name: str, counted: list[int]) -> str:
    """What the line of a replay stopped by a signal says (:func:`~ee_middleware.cli.common.interrupted`): what is
    stored, and that the same command continues."""
    if not counted:
        kept = "before replaying any trajectory"
    else:
        total, stored = counted
        if cfg.executor == "ray":  # an actor is only cancelled between trajectories: it stores the one it is on
            kept = (
                f"with {stored} of {total} trajectories replayed and stored, and each Ray actor stores the trajectory it "
                "was replaying (so a few more may be stored)"
            )
        else:
            more = " (its workers may have stored a few more)" if cfg.workers > 1 else ""
            kept = f"with {stored} of {total} trajectories replayed and stored{more}; those it was replaying are not stored"
    if cfg.again and not (counted and counted[1]):
        # the new attempt is made by its first stored trajectory: none was, so without --again there is nothing to go on with
        return (
            f"the replay stopped ({signal_name}) {kept}, so its new attempt holds nothing yet. The same command, with --again, starts it."
        )
    again = " without --again" if cfg.again else ""  # with it, a run starts the next attempt instead
    said = f"the replay stopped ({signal_name}) {kept}. The same command{again} continues where it stopped"
    limit = getattr(cfg, "limit", None)
    if limit is not None and counted and counted[1] < counted[0]:
        # --limit counts each run's trajectories (oldest not done first): run again, it takes those left, then more
        left = counted[0] - counted[1]
        return f"{said}: --limit counts each run's trajectories, so it replays the {left} left first, then more up to {limit}."
    return said + "."


def _policy_settings(pairs: list[str]) -> dict[str, Any]:
    """``["invalid_share=0.1", "name=x"]`` -> ``{"invalid_share": 0.1, "name": "x"}``."""
    return key_value_settings(pairs, "--policy-setting", "invalid_share=0.1")


def _shown_trajectory_ids(store: Any, summary: Any) -> dict[str, str]:
    """How the summary's lines show the trajectories they name: unique prefixes among every trajectory of the store,
    so that each one pastes back into ``ee replay show`` (none is looked up when no line names one)."""
    from ee_middleware.store.registry import trajectory_columns

    if not (summary.skipped or summary.failed or summary.fidelity_examples or summary.policy_error_examples):
        return {}
    named = [
        *summary.skipped,
        *summary.failed,
        *(example["trajectory_id"] for example in [*summary.fidelity_examples, *summary.policy_error_examples]),
    ]
    return short_ids(named, among=trajectory_columns(open_existing_store(store), ["id"])["id"].to_list())


def _why_nothing_to_replay(cfg: Any) -> str:
    """Why a run found no trajectory to replay, nor any replayed before: the store (or its --app) has none, none approved,
    or none of the approved ones is among ``trajectory_ids`` (a list the configuration gives)."""
    import polars as pl

    from ee_middleware.errors import hide_credentials
    from ee_middleware.store.registry import trajectory_columns

    trajectories = trajectory_columns(open_existing_store(cfg.store), ["id", "app"])
    store = hide_credentials(str(cfg.store))  # a store spec may hold user:password@
    mine = trajectories if cfg.app is None else trajectories.filter(pl.col("app") == cfg.app)
    if mine.is_empty() and not trajectories.is_empty():
        apps = sorted(set(trajectories["app"].to_list()))
        listed = ", ".join(apps[:10]) + (f" and {len(apps) - 10} more" if len(apps) > 10 else "")
        return f"no trajectories of app {cfg.app!r} in {store} (its apps: {listed}); check --app."
    where = "" if cfg.app is None else f" of app {cfg.app!r}"
    if mine.is_empty():
        return f"no trajectories{where} in {store} to replay: record some first."
    counts = dict(mine.group_by("approval").len().iter_rows())
    if counts.get("approved") and cfg.trajectory_ids is not None:  # the approved ones are there: the id list chose none
        shown = ", ".join(map(repr, cfg.trajectory_ids[:5])) + (
            f" and {len(cfg.trajectory_ids) - 5} more" if len(cfg.trajectory_ids) > 5 else ""
        )
        return (
            f"none of the trajectory_ids given ({shown or 'an empty list'}) is an approved trajectory{where} in {store}, which holds "
            f"{counts['approved']} approved: check the ids (ee traces list --store {store} --status approved), or leave "
            "trajectory_ids out to replay them all."
        )
    held = ", ".join(f"{counts[status]} {status}" for status in ("pending", "rejected") if counts.get(status))
    return (
        f"no approved trajectories{where} in {store} to replay ({held}): replay takes approved ones only; "
        "approve some with `ee traces approve`, then run again."
    )


def _experience_rows(summary: Any) -> list[tuple[str, Any]]:
    """The summary's rows about an experience model's predictions, for a run that asked one (none otherwise)."""
    unusable = sum(summary.synthetic_failures.values())
    if not (unusable or summary.synthetic_branches or summary.sandbox.strip().startswith("experience:")):
        return []
    return [("  of them predicted by the experience model", summary.synthetic_branches), ("predictions unusable (not stored)", unusable)]


def _print_summary(summary: Any, out: Any, shown: dict[str, str]) -> None:
    from rich import box
    from rich.table import Table

    from ee_middleware.messages import unusable_reasons
    from ee_middleware.replay.job import FINAL_CALLS_NOT_REPLAYED, UNCOVERED_CALLS_NOT_EXECUTED, refused_tool_text

    attempt = f" (attempt {summary.attempt})" if summary.attempt > 1 else ""
    table = Table(
        title=escape(f"replay {summary.replay_id}{attempt}: sandbox={summary.sandbox} policy={summary.policy} k={summary.k}"),
        box=box.SIMPLE_HEAD,
    )
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("trajectories replayed", summary.done),
        ("skipped (see reasons below)", len(summary.skipped)),
        ("failed (retried next run)", len(summary.failed)),
        ("already replayed earlier", summary.already_done),
        ("states", summary.states),
        ("branches stored", summary.branches),
        *_experience_rows(summary),
        ("error observations", summary.errors),
        ("  of them the sandbox's own failures (left out of datasets)", sum(summary.sandbox_failures.values())),
        ("proposals rejected", summary.rejected),
        ("proposals refused (no sandbox)", sum(summary.refused_tools.values())),
        ("fidelity mismatches", summary.fidelity_mismatches),
        ("expert steps not restorable (redacted values)", summary.unrestorable),
        ("branches with unrestored arguments", summary.unrestored_branches),
        ("time", f"{summary.duration_s:.1f} s"),
        ("branches / s", f"{summary.branches_per_s:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    out.print(table)

    if summary.sandbox_failures:
        kinds = ", ".join(f"{kind}={count}" for kind, count in sorted(summary.sandbox_failures.items()))
        out.print(
            f"[yellow]sandbox failures[/]: {kinds}: alternatives that timed out, crashed the sandbox or ran out of memory "
            "(--tool-timeout, --memory-mb under --isolation subprocess; an MCP sandbox's own timeout_s; ee replay show gives each "
            "one's reason); their observations describe the sandbox, not the tool"
        )
    if summary.synthetic_failures:
        colour = "red" if summary.no_usable_prediction else "yellow"
        out.print(
            f"[{colour}]unusable predictions[/]: {sum(summary.synthetic_failures.values())} alternative(s) the experience model gave "
            f"no usable observation for (nothing stored for them): {escape(unusable_reasons(summary.synthetic_failures))}",
            highlight=False,
        )
    _print_fewer_answers(summary, out)
    if summary.states_short_of_k:
        out.print(
            f"[yellow]fewer than K[/]: {summary.states_short_of_k} of {summary.states} state(s) got fewer than k={summary.k} "
            f"alternatives ({summary.alternatives_short_of_k} in all): the policy found fewer distinct calls the tools' schemas "
            "accept there (tools with few arguments or values, or none it could make), the sandbox refused some (below) or "
            "predictions failed (above)",
            highlight=False,
        )
    if summary.rejected_by_reason:
        out.print("rejected by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.rejected_by_reason.items())))
    for example in summary.policy_error_examples:
        where = f"{shown.get(example['trajectory_id'], example['trajectory_id'])} step {example['step']}"
        out.print(f"[yellow]policy error[/] {escape(where)}: {escape(example['error'])}", highlight=False)
    for tool, count in sorted(summary.refused_tools.items()):
        hint = refused_tool_text(tool, summary.sandbox, summary.refused_hints)
        out.print(f"[yellow]refused[/] {count} call(s) of [bold]{escape(tool)}[/]: {escape(hint)}", highlight=False)
    if summary.final_calls_not_replayed:
        calls = ", ".join(f"{escape(tool)}={count}" for tool, count in sorted(summary.final_calls_not_replayed.items()))
        out.print(f"[yellow]not executed[/] at a trajectory's last tool call: {calls}: {FINAL_CALLS_NOT_REPLAYED}", highlight=False)
    if summary.uncovered_calls_not_executed:
        calls = ", ".join(f"{escape(tool)}={count}" for tool, count in sorted(summary.uncovered_calls_not_executed.items()))
        out.print(f"[yellow]not executed[/] (declared outside the world): {calls}: {UNCOVERED_CALLS_NOT_EXECUTED}", highlight=False)
    if summary.unanswered_calls_not_executed:
        calls = ", ".join(f"{escape(tool)}={count}" for tool, count in sorted(summary.unanswered_calls_not_executed.items()))
        out.print(
            f"[yellow]not executed[/]: {calls}: calls a paused or cancelled run ended on without a result (in a turn paused for a "
            "review, which may reject them, or cut off); the alternatives at their state ran, and the "
            f"{summary.states_not_reached} state(s) after them were not branched from (a resumed run's trajectory, where there "
            "is one, replays the turn as the reviewer decided it)",
            highlight=False,
        )
    if summary.final_call_sandbox_failures:
        calls = ", ".join(f"{escape(tool)}={count}" for tool, count in sorted(summary.final_call_sandbox_failures.items()))
        out.print(
            f"[yellow]sandbox failed[/] on the expert's call at a trajectory's last tool call: {calls}: it timed out, crashed "
            "the sandbox or ran out of memory (--tool-timeout, --memory-mb under --isolation subprocess; an MCP sandbox's own "
            "timeout_s; ee replay show says which); no later state "
            "depends on it, so the alternatives at its state were kept",
            highlight=False,
        )
    for trajectory_id, reason in list(summary.skipped.items())[:10]:
        out.print(f"[yellow]skipped[/] {escape(shown.get(trajectory_id, trajectory_id))}: {escape(reason)}")
    for trajectory_id, reason in list(summary.failed.items())[:10]:
        out.print(f"[red]failed[/] {escape(shown.get(trajectory_id, trajectory_id))}: {escape(reason)}")
    for example in summary.fidelity_examples:
        trajectory_id = example["trajectory_id"]
        _print_mismatch(out, example, f"{shown.get(trajectory_id, trajectory_id)} step {example['step']}")
    if summary.fidelity_mismatches > len(summary.fidelity_examples):
        out.print(f"({summary.fidelity_mismatches - len(summary.fidelity_examples)} more fidelity errors: ee replay show TRAJECTORY_ID)")
    if summary.unrestorable or summary.unrestored_branches:
        reasons = sorted({r for e in summary.unrestorable_examples for r in e.get("reasons", [])})
        out.print(
            f"[yellow]{summary.unrestorable} expert step(s) and {summary.unrestored_branches} branch(es) were replayed with redaction "
            f"placeholders for arguments or the environment reference[/] ({escape('; '.join(reasons) or 'no vault')}): their observations are not checked, and "
            "dataset builders leave those branches out. Record with vault=True to replay the real values (docs/sandboxes.md)."
        )


def _redacted_mismatch(mismatch: dict[str, Any], redactor: Any) -> dict[str, Any]:
    """A fidelity mismatch with the observations it quotes redacted: each line of its diff after its marker (a ``+``
    before a date would read as a phone number's), the texts it kept whole."""
    redacted = {k: redactor.redact_value(v) if k in ("recorded", "replayed") else v for k, v in mismatch.items()}
    if isinstance(mismatch.get("diff"), str):
        redacted["diff"] = "\n".join(
            line[:1] + redactor.redact_value(line[1:]) if line[:1] in ("-", "+", " ") and line[:3] not in ("---", "+++") else line
            for line in mismatch["diff"].split("\n")
        )
    return redacted


def _print_mismatch(out: Any, mismatch: dict[str, Any], where: str) -> None:
    """A fidelity error: where the sandbox's observation parts from the recorded one, and a short diff."""

    from ee_middleware.replay.fidelity import describe_mismatch

    if "diff" not in mismatch:  # recorded by a version that kept only the first 300 characters of both
        mismatch = {**describe_mismatch(mismatch.get("recorded", ""), mismatch.get("replayed", "")), **mismatch}
    out.print(
        f"[red]fidelity error[/] {escape(where)} ({escape(str(mismatch.get('tool')))}): differs at character {mismatch['position']} "
        f"(line {mismatch['line']}, column {mismatch['column']}); recorded {mismatch['recorded_chars']} chars, "
        f"sandbox gave {mismatch['replayed_chars']}"
    )
    if mismatch.get("hint"):  # only the order of the same items differs: a set's, most likely
        out.print(f"    [yellow]{escape(mismatch['hint'])}[/]", highlight=False)
    if mismatch.get("redacted_arguments"):
        out.print(
            f"    [yellow]the expert's {escape(', '.join(mismatch['redacted_arguments']))} argument(s) were redacted at capture: the sandbox "
            "received the placeholder, not the value (docs/sandboxes.md, 'Redaction and replay')[/]"
        )
    styles = {"-": "red", "+": "green", "@": "cyan"}
    for line in mismatch["diff"].splitlines():
        style = "bold" if line.startswith(("---", "+++")) else styles.get(line[:1], "")
        out.print(f"    [{style}]{escape(line)}[/]" if style else f"    {escape(line)}", soft_wrap=True, highlight=False)


def _rollout_json(rollout: Any) -> dict[str, Any]:
    return rollout.model_dump(mode="json")


@app.command("list", epilog=examples("ee replay list --store ./experience --errors --limit 20"))
def list_rollouts(
    store: str = StoreOption,
    trajectory: str | None = typer.Option(
        None, "--trajectory", "-t", help="Only rollouts of this trajectory (a unique id prefix is enough)."
    ),
    replay_id: str | None = typer.Option(None, "--replay-id", help="Only rollouts of this replay configuration."),
    errors_only: bool = typer.Option(False, "--errors", help="Only rollouts whose observation is an error."),
    limit: int | None = typer.Option(None, "--limit", min=1, max=INT64_MAX, help="At most this many rollouts."),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """List stored rollouts (alternative actions and their real observations)."""
    import polars as pl

    from ee_middleware.capture.store_redaction import current_redactor, redacted_rollout
    from ee_middleware.store.registry import rollout_ids, trajectory_columns
    from ee_middleware.store.tables import rollout_from_row

    with reading_store(allow_partial=allow_partial):
        opened = open_existing_store(store)
        redactor = current_redactor(opened)  # the store's rules as they are now, as ee traces list applies them
        only = opened.resolve_id(trajectory) if trajectory else None
        if replay_id is not None:
            check_replay_id(opened, replay_id, store, given=f"--replay-id {replay_id}", without="leave --replay-id out to list them all")
        # the rollouts --trajectory and --replay-id pick, read alone; the table shows ids as prefixes unique among every
        # rollout and trajectory id, read as those columns alone
        frame = opened.rollouts([only] if only is not None else None, replay_id=replay_id)
        trajectory_ids = trajectory_columns(opened, ["id"])["id"].to_list() if not as_json else []
        every_rollout_id = rollout_ids(opened) if not as_json else []
    if errors_only:
        frame = frame.filter(pl.col("is_error"))
    if limit is not None:
        frame = frame.head(limit)
    matching = frame.height
    if (cap := terminal_cap(matching, limit, as_json)) is not None:
        frame = frame.head(cap)
    rollouts = [redacted_rollout(rollout_from_row(row), redactor) for row in frame.iter_rows(named=True)]
    if as_json:
        print_json([_rollout_json(r) for r in rollouts])
        return
    # Unique among every id of the store, so that each one resolves: trajectory ids with ``ee traces show`` and
    # --trajectory, rollout ids with ``ee replay show``, which tries trajectories first (so rollouts are told apart from
    # trajectories too).
    shown_trajectories = short_ids((r.trajectory_id for r in rollouts), among=trajectory_ids)
    shown_rollouts = short_ids((r.id for r in rollouts), among=[*every_rollout_id, *trajectory_ids])
    from rich import box
    from rich.table import Table

    counted = f"the first {len(rollouts)} of {matching}" if len(rollouts) < matching else str(len(rollouts))
    table = Table(title=escape(f"{counted} rollouts in {store}"), box=box.SIMPLE_HEAD, pad_edge=False)
    for column, kwargs in (
        ("id", {"no_wrap": True, "overflow": "fold"}),  # on one line, or folded (never cut) in a narrow terminal
        ("trajectory", {"no_wrap": True, "overflow": "fold"}),
        ("step", {"justify": "right"}),
        ("branch", {"justify": "right"}),
        ("proposer", {"no_wrap": True}),
        ("call", {"ratio": 1, "overflow": "fold"}),
        ("observation", {"ratio": 1, "overflow": "fold"}),
    ):
        table.add_column(column, **kwargs)
    for r in rollouts:
        call = r.action.tool_call
        table.add_row(
            escape(shown_rollouts.get(r.id, r.id)),
            escape(shown_trajectories.get(r.trajectory_id, r.trajectory_id)),
            str(r.step_index),
            str(r.branch_index),
            escape(r.proposer.policy),
            escape(short(f"{call.name}({json.dumps(call.arguments, ensure_ascii=False)})" if call else "", 80)),
            observation_cell(r.observation.content, r.is_error, 100),
        )
    console().print(table)
    if len(rollouts) < matching:
        say_capped(len(rollouts), matching, "rollouts", "first")


@app.command("show", epilog=examples("ee replay show 3f2a9c1b --store ./experience"))
def show(
    item_id: str = typer.Argument(..., help="A trajectory id (all its rollouts) or a rollout id; a unique prefix is enough."),
    store: str = StoreOption,
    replay_id: str | None = typer.Option(None, "--replay-id", help="Only rollouts of this replay configuration."),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Show the rollouts of a trajectory, state by state, beside the expert's action.

    When they come from more than one replay (another --seed, an --again), each row names its replay and the header
    lists them: --replay-id ID shows one."""
    from ee_middleware.capture.store_redaction import current_redactor, redacted_rollout, redacted_trajectory
    from ee_middleware.errors import TrajectoryNotFoundError

    with reading_store(allow_partial=allow_partial):
        opened = open_existing_store(store)
        if replay_id is not None:
            check_replay_id(opened, replay_id, store, given=f"--replay-id {replay_id}", without="leave --replay-id out to show them all")
        redactor = current_redactor(opened)  # the store's rules as they are now, as ee traces show applies them
        trajectory = None
        try:
            trajectory = opened.get(item_id)
            rollouts = list(opened.iter_rollouts([trajectory.id], replay_id=replay_id))
        except TrajectoryNotFoundError as no_trajectory:
            try:
                rollouts = [opened.get_rollout(item_id)]
            except TrajectoryNotFoundError as no_rollout:
                for said in (no_trajectory, no_rollout):
                    if "ambiguous" in str(said):  # a prefix of several ids: the store's own words say how many
                        raise said from None
                raise TrajectoryNotFoundError(
                    f"No trajectory or rollout {item_id!r} in {store}. List them with: ee replay list --store {store}"
                ) from None
            if replay_id is not None and rollouts[0].replay_id != replay_id:
                raise TrajectoryNotFoundError(
                    f"Rollout {rollouts[0].id} is of replay {rollouts[0].replay_id}, not {replay_id}: leave --replay-id out to show it."
                ) from None
        rollouts = [redacted_rollout(r, redactor) for r in rollouts]
        if as_json:
            print_json([_rollout_json(r) for r in rollouts])
            return
        from rich.table import Table

        out = console()
        if trajectory is None:
            r = rollouts[0]
            trajectory = opened.get(r.trajectory_id)
        trajectory = redacted_trajectory(trajectory, redactor, states=False)  # (its states are not shown)
        # Rollouts of several replays (another --seed, an --again, ee improve after a manual run): each row names its
        # replay, and a state's rows come replay by replay; one replay's rows are shown as they always were.
        replays = _replays_shown(opened, trajectory.id, rollouts)
        labels = _replay_labels(list(replays)) if len(replays) > 1 else {}
        order = {rid: n for n, rid in enumerate(replays)}
        by_step: dict[int, list[Any]] = {}
        for r in sorted(rollouts, key=lambda r: order[r.replay_id]):  # stable: each replay's branches stay in order
            by_step.setdefault(r.step_index, []).append(r)
        mismatches, unrestorable, unlisted = _replay_notes_by_step(opened, trajectory.id, replay_id)
        if redactor is not None:  # their texts quote the recorded and the sandbox's observations
            for notes in mismatches.values():
                notes[:] = [(replay, _redacted_mismatch(note, redactor)) for replay, note in notes]
        out.print(f"[bold]{escape(trajectory.id)}[/]  app={escape(trajectory.app)}  task: {escape(short(trajectory.task, 160))}")
        if labels:
            out.print(
                f"[yellow]{len(replays)} replays shown[/], each row names its replay; --replay-id ID shows one "
                f"(e.g. --replay-id {escape(next(iter(replays)))}):"
            )
            for rid, described in replays.items():
                out.print(f"  replay {escape(rid)}: {escape(described)}")
        if not (rollouts or mismatches or unrestorable):
            out.print(f"[yellow]{escape(_why_no_rollouts(opened, trajectory, replay_id))}[/]")
        for step in trajectory.steps:
            if step.index not in by_step and step.index not in mismatches and step.index not in unrestorable:
                continue
            table = Table(title=f"step {step.index}", show_lines=False, title_justify="left")
            table.add_column("", no_wrap=True)
            table.add_column("call", ratio=1, overflow="fold")
            table.add_column("observation", ratio=1, overflow="fold")
            call = step.action.tool_call
            obs = step.observation
            table.add_row(
                "[green]expert[/]",
                escape(f"{call.name}({json.dumps(call.arguments, ensure_ascii=False)})" if call else short(step.action.content, 200)),
                observation_cell(obs.content, obs.is_error, 300) if obs else "",
            )
            for r in by_step.get(step.index, []):
                alt = r.action.tool_call
                table.add_row(
                    escape(f"#{r.branch_index} {r.proposer.policy}")
                    + (f"\n[cyan]replay {escape(labels[r.replay_id])}[/]" if labels else "")
                    + ("\n[magenta]synthetic[/]" if r.synthetic else ""),
                    escape(f"{alt.name}({json.dumps(alt.arguments, ensure_ascii=False)})") if alt else "",
                    observation_cell(r.observation.content, r.is_error, 300) + _synthetic_note(r),
                )
            out.print(table)
            for replay, mismatch in mismatches.get(step.index, []):
                _print_mismatch(out, mismatch, f"step {step.index}, replay {replay}")
            for replay, note in unrestorable.get(step.index, []):
                _print_unrestorable(out, note, f"step {step.index}, replay {replay}")
        if unlisted:
            out.print(f"[yellow]{unlisted} more unrestorable step(s) were counted but not listed (a replay record lists the first few).[/]")


def _replays_shown(opened: Any, trajectory_id: str, rollouts: list[Any]) -> dict[str, str]:
    """The replays ``rollouts`` (of ``trajectory_id``) come from, the first replayed first, each described by its
    configuration as its newest record of the trajectory says (policy, K, seed, sandbox) and how many rollouts it has."""
    import polars as pl

    from ee_middleware.models.urls import shown_spec

    counts: dict[str, int] = {}
    policies: dict[str, str] = {}
    for r in rollouts:
        counts[r.replay_id] = counts.get(r.replay_id, 0) + 1
        policies.setdefault(r.replay_id, r.proposer.policy)
    if len(counts) < 2:  # nothing to tell apart: no need to read the records
        return dict.fromkeys(counts, "")
    records = opened.replays().filter(pl.col("trajectory_id") == trajectory_id).filter(pl.col("replay_id").is_in(list(counts)))
    first: dict[str, Any] = {}
    newest: dict[str, dict[str, Any]] = {}
    for row in records.sort("finished_at").iter_rows(named=True):
        first.setdefault(row["replay_id"], row["finished_at"])
        newest[row["replay_id"]] = row
    # a replay without a record (its job stopped before writing it) comes last; ids break ties, so the order is stable
    ordered = sorted(counts, key=lambda rid: (rid not in first, str(first.get(rid, "")), rid))
    described = {}
    for rid in ordered:
        row = newest.get(rid)
        how = (
            # the specs with their URLs' credentials masked (a store replayed before they were masked holds them)
            f"policy {shown_spec(str(row['policy']))}, k={row['k']}, seed {row['seed']}, sandbox {shown_spec(str(row['sandbox']))}"
            if row is not None
            else f"policy {policies[rid]}, no replay record"
        )
        details = json.loads(row.get("details_json") or "{}") if row is not None else {}
        if details.get("attempt_of"):  # the same configuration replayed again (--again): its ids differ, not its settings
            how += f", attempt {details.get('attempt')} of replay {details['attempt_of']}"
        described[rid] = f"{how}; {counts[rid]} rollout(s) of this trajectory"
    return described


def _replay_labels(replay_ids: list[str], least: int = 6) -> dict[str, str]:
    """Each replay id as its shortest start of at least ``least`` characters that tells it apart from the others (the
    whole id when it is the start of another): the label its rows carry, beside the full ids the header lists."""

    def shared(a: str, b: str) -> int:
        return next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    labels = {}
    for rid in replay_ids:
        common = max((shared(rid, other) for other in replay_ids if other != rid), default=0)
        labels[rid] = rid[: max(least, common + 1)]
    return labels


def _why_no_rollouts(opened: Any, trajectory: Any, replay_id: str | None) -> str:
    """Why a trajectory has no rollouts to show: other replays have them, a replay skipped or failed it, or none ran yet."""
    import polars as pl

    if replay_id is not None:
        others = sorted(set(opened.rollouts([trajectory.id])["replay_id"].to_list()))
        if others:
            return f"No rollouts of {trajectory.id} under replay {replay_id}; it has rollouts under replay {', '.join(others)}."
    records = opened.replays(replay_id=replay_id).filter(pl.col("trajectory_id") == trajectory.id)
    verbs = {"done": "replayed it and kept no branch", "skipped": "skipped it", "failed": "failed on it"}
    ran = [
        f"replay {row['replay_id']} {verbs.get(row['status'], row['status'])}"
        + (f" ({row['reason']})" if row["reason"] else "")
        + (", and its next run retries it" if row["status"] == "failed" else "")
        for row in records.sort("finished_at").iter_rows(named=True)
    ]
    if ran:
        return f"No rollouts of {trajectory.id}: {'; '.join(ran)}."
    under = "" if replay_id is None else f" under replay {replay_id}"
    return (
        f"No rollouts of {trajectory.id}: it has not been replayed{under} (its approval: {trajectory.approval.status}; "
        "ee replay run replays approved trajectories)."
    )


def _synthetic_note(rollout: Any) -> str:
    """Under a synthetic observation: which experience model wrote it, from which real transitions, and why."""
    source = rollout.synthetic_source
    if source is None:
        return ""

    note = f"\n[magenta]by {escape(source.model)}[/]; retrieved: {escape(', '.join(source.retrieved) or 'none')}"
    if source.reasoning:
        note += f"\n[dim]reasoning: {escape(short(source.reasoning, 300))}[/]"
    return note


def _replay_notes_by_step(
    opened: Any, trajectory_id: str, replay_id: str | None
) -> tuple[dict[int, list[tuple[str, dict[str, Any]]]], dict[int, list[tuple[str, dict[str, Any]]]], int]:
    """What the replay records of a trajectory kept, by step: fidelity errors (one per distinct diff),
    unrestorable expert steps (one per step and reason), and how many unrestorable steps went unlisted."""
    import polars as pl

    records = opened.replays(replay_id=replay_id).filter(pl.col("trajectory_id") == trajectory_id)
    mismatches: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    unrestorable: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    seen: set[tuple[Any, ...]] = set()
    unlisted = 0
    for row in records.sort("finished_at", descending=True).iter_rows(named=True):
        details = json.loads(row["details_json"] or "{}")
        for mismatch in details.get("fidelity_mismatches", []):
            key = ("mismatch", mismatch["step"], str(mismatch.get("recorded")), str(mismatch.get("replayed")))
            if key not in seen:
                seen.add(key)
                mismatches.setdefault(mismatch["step"], []).append((row["replay_id"], mismatch))
        listed = details.get("unrestorable_steps", [])
        unlisted += max(0, int(row.get("unrestorable") or 0) - len(listed))
        for step in listed:
            key = ("unrestorable", step["step"], tuple(step.get("arguments", [])), tuple(step.get("reasons", [])))
            if key not in seen:
                seen.add(key)
                unrestorable.setdefault(step["step"], []).append((row["replay_id"], step))
    return mismatches, unrestorable, unlisted


def _print_unrestorable(out: Any, step: dict[str, Any], where: str) -> None:
    """An expert step whose redacted arguments replay could not give back to the sandbox."""

    arguments = ", ".join(step.get("arguments") or []) or "some"
    held = f"the expert's {arguments} argument(s)"
    if step.get("environment"):  # the environment reference kept placeholders: the step ran in a world built with them
        world = f"the environment reference's {', '.join(step['environment'])} (the sandbox's world was built with them)"
        held = f"{held} and {world}" if step.get("arguments") else world
    reasons = "; ".join(step.get("reasons") or []) or "no reason recorded"
    matched = step.get("observation_matched")
    verdict = "" if matched is None else (" It happened to match the recorded one." if matched else " It differed from the recorded one.")
    out.print(
        f"[yellow]unrestorable[/] {escape(where)} ({escape(str(step.get('tool')))}): {escape(held)} "
        f"were redacted at capture and could not be restored ({escape(reasons)}), so the sandbox received "
        f"{escape(', '.join(step.get('placeholders') or []))}; its observation was not checked.{verdict} "
        "Keep the values in a vault to replay them (docs/sandboxes.md, 'Redaction and replay')."
    )
