"""``ee curriculum``: variants of the tasks whose outcome varies most (DreamGym's task generator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ee_middleware._files import file_above
from ee_middleware.cli.common import (
    STORE_HELP,
    AllowPartialOption,
    JsonOption,
    ProgressBars,
    ProgressOption,
    examples,
    interrupted,
    key_value_settings,
    open_job_store,
    other_apps_hint,
    output_file,
    print_json,
    print_json_interrupted,
    reading_store,
    store_origin,
    user_output_to_stderr,
)
from ee_middleware.cli.experience_cmds import TIMEOUT_KNOB, config_option, timeout_option

if TYPE_CHECKING:
    from ee_middleware.evals.curriculum import CurriculumRun
    from ee_middleware.replay.curriculum import Proposal, TaskScore

app = typer.Typer(help="The curriculum: new tasks like the ones the policy solves about half the time.", no_args_is_help=True)


@app.command(
    "propose",
    epilog=examples(
        "ee curriculum propose --from ./eval/base --model local:./models/smollm2 --store ./experience --out tasks.jsonl",
        "ee curriculum propose --config curriculum.toml --n 20",
    ),
)
def propose_cmd(
    ctx: typer.Context,
    results: Path | None = typer.Option(
        None,
        "--from",
        help="An eval run's folder (or its results.jsonl / results.parquet). Required: here, or results in "
        "[curriculum_propose] of --config.",
        show_default=False,
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="The model that writes variants: local:DIR, openai:BASE_URL#MODEL or module:factory."
    ),
    store: str | None = typer.Option(None, "--store", "-s", envvar="EE_STORE", help=STORE_HELP, show_envvar=True),
    app_name: str | None = typer.Option(
        None,
        "--app",
        help="Match the eval's tasks only to this app's trajectories (a store holding several apps that ask alike): their "
        "tools, world and system prompt go into the variants.",
    ),
    n: int | None = typer.Option(
        None,
        "--n",
        min=1,
        help=(
            "Variants to write, allotted to the tasks in proportion to p(1-p): the highest-variance tasks get the most, "
            "a task whose share rounds to nothing gets none. [default: 10]"
        ),
    ),
    out_text: str | None = typer.Option(
        None, "--out", help="The file the variants go to (JSON lines; not a folder). [default: tasks.jsonl]", metavar="PATH"
    ),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed of MODEL (variant k uses seed + k). [default: 0]"),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Tokens MODEL may write per variant (raise it for a model that reasons first). [default: 200]"
    ),
    timeout_s: float | None = timeout_option("MODEL", default=None),
    config: Path | None = config_option("curriculum_propose"),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Have MODEL write variants of the tasks the policy solves about half the time.

    Scores each task by the variance p(1-p) of its outcomes in an eval run (trials the model server gave no answer to
    are left out of p, and counted), and has MODEL write variants of the highest-scoring ones: --n is allotted to the
    tasks in proportion to p(1-p). A variant keeps its parent's tools, environment, app and system prompt, and is
    validated against the tool schemas. A writer that fails part-way keeps the variants written before it (exit 1).
    Settings come from the [curriculum_propose] table of --config (results, model, store, app, n, out, seed,
    max_tokens, timeout_s); flags override them."""
    from ee_middleware.evals.results import read_results
    from ee_middleware.models.urls import shown_spec
    from ee_middleware.replay.curriculum import propose, score_tasks
    from ee_middleware.replay.curriculum_propose_config import TABLE, CurriculumProposeConfig
    from ee_middleware.replay.sandboxes.experience import build_model_client

    cfg = CurriculumProposeConfig.load(
        config,
        results=results,
        model=model,
        store=store,
        app=app_name,
        n=n,
        out=output_file(out_text, "tasks.jsonl") if out_text is not None else None,  # (a path ending in / names a folder)
        seed=seed,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
    )
    results, model, app_name, n, out, seed, max_tokens = cfg.results, cfg.model, cfg.app, cfg.n, cfg.out, cfg.seed, cfg.max_tokens
    _check_propose_out(ctx, cfg, config, TABLE)
    scores = score_tasks(read_results(results))
    opened = open_job_store(cfg.store, store_origin(ctx, config, TABLE))
    client = build_model_client(model, timeout_s=cfg.timeout_s, timeout_knob=TIMEOUT_KNOB)
    try:
        # what the model's code prints (module:factory) goes to stderr: stdout holds the answer alone
        with user_output_to_stderr(), reading_store(allow_partial=allow_partial):
            # a rejected trajectory never feeds training: a variant of it would carry its task, tools and world there
            trajectories = (
                t for t in opened.iter_trajectories() if (app_name is None or t.app == app_name) and t.approval.status != "rejected"
            )
            proposal = propose(client, scores, trajectories, n=n, max_tokens=max_tokens, seed=seed)
    finally:
        client.close()
    if proposal.failed is not None and not proposal.variants:
        raise proposal.failed  # nothing written before it: the writer's own error, as before any variant
    shown = shown_spec(model)  # a credential in its URL is not printed
    problem = None if proposal.variants else _why_no_variant(scores, proposal, shown, max_tokens, results, opened, app_name)
    if problem is None:  # an earlier tasks.jsonl is never replaced by an empty one
        _write_variants(out, proposal.variants)
    if proposal.failed is not None:
        problem = (
            f"{shown} failed at request {proposal.attempts} ({proposal.failed}): the {len(proposal.variants)} variant(s) it "
            f"wrote before are in {out}, of {n} asked for. Run the command again once the model answers (the same --seed "
            "writes the same variants first), or use these."
        )
    unanswered = [s for s in scores if s.unanswered]
    summary = {
        "out": str(out),
        "variants": len(proposal.variants),  # distinct: a repeat is rejected as a duplicate
        "requested": n,
        "attempts": proposal.attempts,
        "rejected": proposal.rejected,
        "unmatched": proposal.unmatched,
        "allotted": proposal.allotted,
        "unanswered": sum(s.unanswered for s in scores),  # trials left out of p: the model server gave no answer
        "unanswered_tasks": [s.task_id for s in unanswered],
        "top_tasks": [
            {"task_id": s.task_id, "n": s.n, "p": s.p, "variance": s.variance, "unanswered": s.unanswered} for s in scores[:10] if s.n
        ],
        "error": problem,
    }
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary, scores, proposal)
    if unanswered and any(s.n for s in scores):
        typer.secho(f"warning: {_unanswered_note(scores, results)}", err=True, fg="yellow")
    if problem is not None:
        written = "" if proposal.variants else f"no variant written ({out} left as it was): "  # else the problem says what was
        typer.secho(f"error: {written}{problem}", err=True, fg="red")
        raise typer.Exit(1)


def _check_propose_out(ctx: typer.Context, cfg: Any, config: Path | None, table: str) -> None:
    """:func:`_check_out`, its error naming ``out`` in the config file where the file gave it (not ``--out``)."""
    out, source = cfg.out, getattr(ctx.get_parameter_source("out_text"), "name", None)
    try:
        _check_out(out)
    except typer.BadParameter as exc:
        if source == "COMMANDLINE" or config is None or "out" not in cfg.model_fields_set:
            raise
        from ee_middleware.errors import ConfigError

        raise ConfigError(
            f"out = {str(out)!r} in [{table}] of {config}: {exc.message.replace('e.g. --out ', 'e.g. out = ').replace('--out', 'out')}"
        ) from None


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot be the tasks file, before any model work: a folder (a file goes there, not into
    it), or a path under a file (where a folder would go)."""
    if out.is_dir():
        raise typer.BadParameter(
            f"{out} is a folder: --out names the tasks file to write, e.g. --out {out / 'tasks.jsonl'}.", param_hint="--out"
        )
    blocking = file_above(out)
    if blocking is not None:
        raise typer.BadParameter(
            f"{blocking} is a file, not a folder, so {out} cannot be written under it: choose another --out.", param_hint="--out"
        )


def _unanswered_note(scores: list[TaskScore], results: Path) -> str:
    """What the scores left out: trials the model server gave no answer to, and how to complete them."""
    left = [s for s in scores if s.unanswered]
    total = sum(s.unanswered for s in left)
    named = ", ".join(f"{s.task_id} ({s.unanswered})" for s in left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return (
        f"{total} trial(s) of the eval run in {results} got no answer from the model server (no_answer: it was down, timed out "
        f"or failed; server_refused: its chat template failed on the request), so they say nothing of the tasks and were left "
        f"out of p: {named}. The eval is incomplete: run the same `ee eval run ... --out` command again (it runs those "
        "trials again), then propose from it."
    )


def _why_no_variant(
    scores: list[TaskScore], proposal: Proposal, model: str, max_tokens: int, results: Path, store: Any, app: str | None
) -> str:
    """Why ``propose`` wrote nothing, and what to do about it (``max_tokens``: what MODEL was asked to write at most;
    ``store`` and ``app``: where the tasks' trajectories were looked for)."""
    if not scores:
        return "the eval run has no results rows."
    if not any(s.n for s in scores):
        trials = sum(s.unanswered for s in scores)
        return (
            f"the model server answered none of the {trials} trial(s) of the eval run in {results} (no_answer / "
            "server_refused: it was down, timed out, failed, or its chat template failed on the requests), so no task was "
            "evaluated. Once the server answers, run the same `ee eval run ... --out` command again (it runs those trials "
            "again), then propose from it."
        )
    if all(s.variance == 0 for s in scores):
        incomplete = f" ({_unanswered_note(scores, results)})" if any(s.unanswered for s in scores) else ""
        return (
            "every task was always or never solved (p(1-p) = 0), so none is worth varying: evaluate more trials "
            f"(ee eval run --trials) or other tasks.{incomplete}"
        )
    if not proposal.rejected:
        of_app = "" if app is None else f" of the app {app!r}{other_apps_hint(store, app, approved=False)}"
        return (
            f"no task with varying outcomes has a stored trajectory{of_app} that is not rejected (matched by the trajectory "
            "id a traces: task is, the environment's entry_id, or the task text): record those tasks into --store, or point --store at the "
            "store they were recorded in" + (", or give the --app they were recorded under." if app is not None else ".")
        )
    if proposal.cut:
        return (
            f"{model} wrote no usable variant (rejected: {proposal.rejected}): {proposal.cut} of its {proposal.attempts} "
            f"answer(s) were cut off at max_tokens before a whole variant. Raise --max-tokens (now {max_tokens}), e.g. "
            f"--max-tokens {max_tokens * 4} for a model that reasons first."
        )
    from ee_middleware.replay.curriculum import DUPLICATE, EXISTING_TASK

    if any(reason in (DUPLICATE, EXISTING_TASK) for reason in proposal.rejected):  # more tries may give new ones
        return f"{model} wrote no usable variant (rejected: {proposal.rejected}); try another model, or a larger --n (three tries per variant)."
    return f"{model} wrote no usable variant (rejected: {proposal.rejected}): none was a variant as the prompt asks for one; try another model."


def _write_variants(out: Path, variants: list[dict[str, Any]]) -> None:
    """The variants as JSON lines in ``out`` (its folder made), replaced whole or not at all; a file that cannot be
    written is an :class:`~ee_middleware.errors.OutputError` naming it and what to do."""
    from ee_middleware._files import atomic_write_text
    from ee_middleware.errors import OutputError, os_error_advice

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in variants))
    except OSError as exc:
        raise OutputError(f"Cannot write {out}: {exc.strerror or exc}. Nothing was written. {os_error_advice(exc, output=True)}") from exc


def _print_summary(summary: dict[str, Any], scores: list[TaskScore], proposal: Proposal) -> None:
    out = summary["out"]
    if summary["error"] is None:
        short = (
            f" (of {summary['requested']} asked for, in {proposal.attempts} attempts)"
            if len(proposal.variants) < summary["requested"]
            else ""
        )
        typer.echo(f"{len(proposal.variants)} distinct variants written to {out}{short}")
    from ee_middleware.replay.curriculum import allotment_key, ids_in_several_suites

    shared = ids_in_several_suites((s.suite, s.task_id) for s in scores)
    written = [(s, proposal.allotted.get(allotment_key(s.suite, s.task_id, shared))) for s in scores]
    given = [(s, n) for s, n in written if n]  # every task varied
    shown = given + [(s, n) for s, n in written if s.n and not n][: max(0, 5 - len(given))]
    for s, allotted in shown:
        share = f", {allotted} variant(s) written" if allotted else ""
        left_out = f" ({s.unanswered} unanswered left out)" if s.unanswered else ""
        typer.echo(f"  {s.task_id}: p={s.p:.2f} p(1-p)={s.variance:.3f} over {s.n} trials{left_out}{share}")
    if proposal.rejected:
        typer.echo(f"rejected: {proposal.rejected}")
    if proposal.unmatched:
        typer.echo(f"no stored trajectory for (cannot validate): {', '.join(proposal.unmatched[:10])}")


@app.command(
    "run",
    epilog=examples(
        "ee curriculum run tasks.jsonl --policy local:./models/smollm2 --sandbox bfcl --judge local:./models/smollm2 --store ./experience",
        "ee curriculum run --config curriculum.toml --k 4",
    ),
)
def run_cmd(
    ctx: typer.Context,
    tasks: Path | None = typer.Argument(
        None, help="tasks.jsonl from 'ee curriculum propose' (or tasks in the [curriculum] table of --config).", show_default=False
    ),
    policy: str | None = typer.Option(
        None, "--policy", help="The policy to roll out: local:DIR[@ADAPTER], openai:BASE_URL#MODEL or module:factory."
    ),
    sandbox: str | None = typer.Option(
        None,
        "--sandbox",
        help=(
            "Sandbox of the real tools (bfcl, module:factory); rollouts whose observations an experience model wrote, or that "
            "call a tool it does not cover (refused_tools), are not kept."
        ),
    ),
    sandbox_setting: list[str] | None = typer.Option(
        None,
        "--sandbox-setting",
        help="KEY=VALUE option of the sandbox's factory (repeatable; VALUE is read as JSON when it parses), e.g. region=eu; "
        "over [curriculum.sandbox_settings] key by key.",
    ),
    judge: str | None = typer.Option(None, "--judge", help="The model that verifies each outcome (e.g. the experience model's spec)."),
    judge_max_tokens: int | None = typer.Option(
        None,
        "--judge-max-tokens",
        min=1,
        help=(
            "Tokens the judge may write per verdict, its reasoning included (a reasoning judge cut off while thinking gives "
            "none); fewer where its server refuses them as more than the model's context leaves after the prompt. [default: 1024]"
        ),
    ),
    store: str | None = typer.Option(None, "--store", "-s", envvar="EE_STORE", help=STORE_HELP, show_envvar=True),
    k: int | None = typer.Option(None, "--k", min=1, help="Rollouts per task. [default: 1]"),
    approve_if: str | None = typer.Option(
        None,
        "--approve-if",
        help=(
            "module:function(trajectory) -> bool; others stay pending, and so does one it raises on (the run goes on, then "
            "exits 1 naming the function and the line that raised)."
        ),
    ),
    app_name: str | None = typer.Option(
        None,
        "--app",
        help=(
            "The app to store the trajectories of tasks that name none under (tasks from 'ee curriculum propose' carry "
            "their parent's app and are stored under it, so that app's datasets and 'ee improve' train on them). "
            "[default: curriculum]"
        ),
    ),
    timeout_s: float | None = timeout_option("the policy and the judge", default=None),
    config: Path | None = config_option("curriculum"),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
    progress: bool = ProgressOption,
) -> None:
    """Roll the policy out K times on each task and store the successes a judge verifies.

    They are stored as trajectories with source=curriculum under their parent task's app (--app for a task that names
    none), pending for approval unless --approve-if accepts them. A rollout that calls a tool the sandbox does not
    cover is ended there and not kept (refused_tools counts those calls by tool; exit 1 when no rollout was kept). A
    task whose world the sandbox cannot rebuild is skipped with its reason (skipped_tasks), the others run. Run again, it
    stores the new rollouts; one the store already holds (the same conversation) is counted as already stored, not
    stored twice. Settings come from the [curriculum] table of --config (tasks, policy, sandbox, judge, store, k,
    approve_if, app, judge_max_tokens, timeout_s; the sandbox's own options in [curriculum.sandbox_settings], or
    --sandbox-setting); TASKS and the flags override them."""
    import functools

    from ee_middleware._lifetime import interrupt_name
    from ee_middleware._text import read_user_text
    from ee_middleware.errors import ConfigError
    from ee_middleware.evals.curriculum import (
        JUDGE_CONTEXT_BOUND,
        JUDGE_CUT,
        JUDGE_FAILED,
        JUDGE_NO_VERDICT,
        POLICY_FAILED,
        SYNTHETIC_DROPPED,
        UNCOVERED_TOOL_DROPPED,
        UNKNOWN_TOOL_DROPPED,
        UNPARSABLE_DROPPED,
        CurriculumRun,
        is_context_refusal,
        read_tasks,
        run_curriculum,
    )
    from ee_middleware.models.protocol import CUT_WHILE_REASONING
    from ee_middleware.models.spec import endpoint_problem
    from ee_middleware.plugins import load_named
    from ee_middleware.replay.curriculum_config import TABLE, CurriculumRunConfig
    from ee_middleware.replay.sandboxes.experience import build_model_client
    from ee_middleware.replay.sandboxes.registry import build_sandbox

    cfg = CurriculumRunConfig.load(
        config,
        tasks=tasks,
        policy=policy,
        sandbox=sandbox,
        sandbox_settings=key_value_settings(sandbox_setting, "--sandbox-setting", "region=eu") if sandbox_setting else None,
        judge=judge,
        judge_max_tokens=judge_max_tokens,
        store=store,
        k=k,
        approve_if=approve_if,
        app=app_name,
        timeout_s=timeout_s,
    )
    tasks_hint = "TASKS" if tasks is not None else f"tasks in [{TABLE}] of {config}"
    approve_if_hint = "--approve-if" if approve_if is not None else f"approve_if in [{TABLE}] of {config}"
    tasks, policy, sandbox, judge, approve_if = cfg.tasks, cfg.policy, cfg.sandbox, cfg.judge, cfg.approve_if
    judge_max_tokens, k, app_name, timeout_s = cfg.judge_max_tokens, cfg.k, cfg.app, cfg.timeout_s
    if not tasks.exists():
        raise typer.BadParameter(f"{tasks} does not exist: write it with 'ee curriculum propose'.", param_hint=tasks_hint)
    try:
        text = read_user_text(
            tasks, "The tasks file", "the tasks.jsonl that 'ee curriculum propose' wrote", "Tasks files are UTF-8 JSON lines."
        )
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint=tasks_hint) from None
    todo = read_tasks(text)
    if not todo:  # (propose never writes an empty file: one that holds no task was not written by it)
        raise typer.BadParameter(
            f"{tasks} holds no task (only blank lines): nothing to roll out. Write tasks with 'ee curriculum propose'.",
            param_hint=tasks_hint,
        )
    predicate = None
    if approve_if:
        try:
            predicate = load_named(approve_if, "approval function")
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint=approve_if_hint) from exc
        if not callable(predicate):  # (every kept trajectory's approval would fail on it, after the rollouts)
            raise typer.BadParameter(
                f"{approve_if!r} is a {type(predicate).__name__}, not a function trajectory -> bool; name the function.",
                param_hint=approve_if_hint,
            )
    opened = open_job_store(cfg.store, store_origin(ctx, config, TABLE))
    build_sandbox(sandbox, **cfg.sandbox_settings).close()  # a sandbox that cannot be built fails here, before any rollout
    policy_client, judge_client = (build_model_client(spec, timeout_s=timeout_s, timeout_knob=TIMEOUT_KNOB) for spec in (policy, judge))
    try:
        # a policy or judge endpoint that is down fails here, before any rollout
        for client, spec, flag in ((policy_client, policy, "--policy"), (judge_client, judge, "--judge")):
            problem = endpoint_problem(client)
            if problem is not None:
                raise typer.BadParameter(f"the {flag[2:]} {spec} cannot be reached: {problem}", param_hint=flag)
        result = CurriculumRun()
        total = len(todo) * k

        def advance(n: int) -> None:
            bars.update("rollouts", result.rollouts, total)

        try:
            # what the policy's and the sandbox's code prints goes to stderr: stdout holds the answer alone
            with (
                user_output_to_stderr(),
                reading_store(allow_partial=allow_partial),
                ProgressBars(enabled=progress and not as_json) as bars,
            ):
                run_curriculum(
                    todo,
                    policy_client,
                    policy,
                    functools.partial(build_sandbox, sandbox, **cfg.sandbox_settings),
                    judge_client,
                    opened,
                    k=k,
                    approve_if=predicate,
                    judge_max_tokens=judge_max_tokens,
                    app=app_name,
                    describe_approve_if_error=functools.partial(_approve_if_failed, approve_if),
                    progress=advance,
                    run=result,
                )
                bars.complete()
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (termination_as_interrupt): exit 130
            line = interrupted(_interrupted_text(result, total, interrupt_name(exc)))
            if as_json:  # what was stored before the stop
                print_json_interrupted({**_summary(result), "trajectories": result.kept, "stored_trajectories": result.stored}, line)
            raise line from exc
    finally:
        policy_client.close()
        judge_client.close()
    no_verdicts = {r: n for r, n in result.dropped.items() if r == JUDGE_NO_VERDICT or r.startswith(f"{JUDGE_NO_VERDICT}: ")}
    no_verdict = sum(no_verdicts.values())
    cut = sum(n for r, n in no_verdicts.items() if CUT_WHILE_REASONING in r or JUDGE_CUT in r)
    reasoning = sum(n for r, n in no_verdicts.items() if CUT_WHILE_REASONING in r)
    context_bound = sum(n for r, n in no_verdicts.items() if JUDGE_CONTEXT_BOUND in r)
    failures = {reason: count for reason, count in result.dropped.items() if reason.startswith(f"{JUDGE_FAILED}: ")}
    judge_failed = sum(failures.values())
    too_long = sum(count for reason, count in failures.items() if is_context_refusal(reason))
    problem = None
    policy_failed = sum(n for reason, n in result.dropped.items() if reason.startswith(POLICY_FAILED))
    no_call = {r: n for r, n in result.dropped.items() if r in ("no tool call", UNKNOWN_TOOL_DROPPED, UNPARSABLE_DROPPED)}
    if result.skipped and not result.rollouts:
        first_id, first = next(iter(result.skipped.items()))
        problem = (
            f"no task could be rolled out: the sandbox {sandbox} could not run any of the {len(result.skipped)} task(s) (see "
            f"'skipped_tasks'; {first_id}: {first}). Give each task the environment its sandbox rebuilds the world from, or "
            "pass the sandbox its app's trajectories were recorded for."
        )
    elif policy_failed and policy_failed == sum(result.dropped.values()) and not result.kept:
        first = next(reason for reason in result.dropped if reason.startswith(POLICY_FAILED))
        said = first[len(POLICY_FAILED) :].strip()
        said = said[1:-1] if said.startswith("(") and said.endswith(")") else said
        problem = f"the policy {policy} answered none of the {policy_failed} rollout(s) (see 'dropped'): {said or 'it gave no answer'}"
    elif result.dropped.get(SYNTHETIC_DROPPED) and not result.kept:
        problem = f"no rollout was kept from the sandbox {sandbox}: {SYNTHETIC_DROPPED}."
    elif result.dropped.get(UNCOVERED_TOOL_DROPPED) and not result.kept:
        # nothing stored, and no later run stores a rollout that calls these tools until the sandbox covers them
        tools = ", ".join(f"{tool} ({count} call(s))" for tool, count in sorted(result.refused_tools.items()))
        it, acts = ("them", "they act") if len(result.refused_tools) > 1 else ("it", "it acts")
        problem = (
            f"no rollout was kept: in {result.dropped[UNCOVERED_TOOL_DROPPED]} rollout(s) the policy called a tool the sandbox "
            f"{sandbox} does not cover ({tools}; see 'refused_tools'), and a rollout is stored only with observations the "
            f"tools gave (the sandbox's refusal is none). To keep such rollouts, add {it} to the sandbox's tools with the world "
            f"{acts} on (docs/sandboxes.md); a tool declared in outside_world_tools is never called, so a task that needs "
            "it cannot be rolled out."
        )
    elif no_call and not result.kept and sum(no_call.values()) + policy_failed == sum(result.dropped.values()):
        # nothing reached the judge: the policy made no call the sandbox could run, as a run of such a policy always will
        causes = _no_call_causes(no_call, result.unknown_tools)
        problem = (
            f"no rollout was kept: in none of the {sum(no_call.values())} rollout(s) did the policy {policy} make a usable "
            f"tool call ({causes})."
        )
    elif too_long and not result.kept and not no_verdict and not result.dropped.get("judged unsuccessful"):
        problem = (
            f"the judge {judge} failed on every one of the {judge_failed} rollout(s) it was shown (see 'dropped'): on {too_long} "
            "of them its server refused the request as longer than the model's context (the prompt and the tokens for the "
            f"verdict). Lower --judge-max-tokens (now {judge_max_tokens}), or serve the judge with a longer context (its "
            "prompt holds the task and up to 6000 characters of the conversation)."
        )
    elif judge_failed and not result.kept and not no_verdict and not result.dropped.get("judged unsuccessful"):
        problem = (
            f"the judge {judge} failed on every one of the {judge_failed} rollout(s) it was shown (see 'dropped'): check that "
            f"its server is up and answers in time (raise --timeout, now {timeout_s:g} s, for a slow one), or pass another --judge."
        )
    elif cut and not result.kept and not result.dropped.get("judged unsuccessful"):
        fix = (
            "Serve the judge with a longer context: after the prompt, its context left fewer tokens than --judge-max-tokens "
            f"(now {judge_max_tokens})."
            if context_bound == cut
            else f"Raise --judge-max-tokens (now {judge_max_tokens})."
        )
        problem = (
            f"the judge {judge} gave no verdict on any of the {no_verdict} rollout(s) it was shown: on {cut} of them it was cut "
            f"off at max_tokens{' while still reasoning' if reasoning == cut else ''}. {fix}"
        )
    elif no_verdict and not result.kept and not result.dropped.get("judged unsuccessful"):
        problem = (
            f"the judge {judge} gave no verdict on any of the {no_verdict} rollout(s) it was shown: it must answer one JSON "
            'object such as {"reasoning": "...", "reward": 1}. Check --judge (a chat model that follows instructions).'
        )
    if problem is None and result.approve_if_failed:
        n = len(result.approve_if_failed)
        problem = (
            f"{result.approve_if_error} It raised or returned no True/False on {n} of the {len(result.kept)} kept trajectories: "
            "they are stored and stay "
            "pending (see 'approve_if_failed'); review them (ee traces approve ID ... --store) once the function is fixed."
        )
    kept = len(result.kept)  # each trajectory once, as `trajectories` lists them (two trials may give one rollout)
    summary = _summary(result)
    if as_json:
        print_json({**summary, "trajectories": result.kept, "stored_trajectories": result.stored, "error": problem})
    else:
        typer.echo(
            f"{result.rollouts} rollouts: {kept} kept as source=curriculum trajectories, {len(result.stored)} of them stored now "
            f"({result.approved} approved)"
        )
        if result.already_stored:
            typer.echo(
                f"  already stored {len(result.already_stored)}: the store held the same rollout (the same conversation), "
                "from an earlier run or trial; not stored again"
            )
        if result.repeats:
            typer.echo(f"  repeats {result.repeats}: another trial gave the same conversation as one kept (one trajectory)")
        for reason, count in result.dropped.most_common():
            typer.echo(f"  dropped {count}: {reason}")
        for task_id, reason in result.skipped.items():
            typer.echo(f"  skipped task {task_id}: {reason}")
        _print_refused(result.refused_tools, sandbox)
    if problem is not None:
        typer.secho(f"error: {problem}", err=True, fg="red")
        raise typer.Exit(1)


def _no_call_causes(no_call: dict[str, int], unknown_tools: dict[str, int]) -> str:
    """Why the policy's rollouts held no usable call, by cause, each with what to check."""
    from ee_middleware.evals.curriculum import UNKNOWN_TOOL_DROPPED, UNPARSABLE_DROPPED

    causes = []
    if no_call.get("no tool call"):
        causes.append(
            f"{no_call['no tool call']} answered without calling a tool: check that --policy is a tool-calling model and that "
            "its server offers it the tools (vLLM: --enable-auto-tool-choice with a --tool-call-parser for the model)"
        )
    if no_call.get(UNKNOWN_TOOL_DROPPED):
        tools = ", ".join(f"{tool} ({count})" for tool, count in sorted(unknown_tools.items()))
        causes.append(f"{no_call[UNKNOWN_TOOL_DROPPED]} called a tool the task does not offer ({tools})")
    if no_call.get(UNPARSABLE_DROPPED):
        causes.append(f"{no_call[UNPARSABLE_DROPPED]} wrote a tool call that could not be read: {UNPARSABLE_DROPPED.partition(': ')[2]}")
    return "; ".join(causes)


def _summary(result: CurriculumRun) -> dict[str, Any]:
    """The counts of ``ee curriculum run --json`` (the ids are added beside them)."""
    return {
        "rollouts": result.rollouts,
        "kept": len(result.kept),  # each trajectory once, as `trajectories` lists them (two trials may give one rollout)
        "stored": len(result.stored),
        "already_stored": len(result.already_stored),
        "repeats": result.repeats,  # successful rollouts repeating one kept by this run (the same conversation)
        "approved": result.approved,
        "dropped": dict(result.dropped),
        "refused_tools": dict(result.refused_tools),  # calls of tools the sandbox does not cover, by tool (as ee replay run's)
        "skipped_tasks": result.skipped,  # task id -> why it was not rolled out (its world cannot be rebuilt)
        "approve_if_failed": result.approve_if_failed,  # kept trajectories --approve-if raised on: stored, pending
    }


def _interrupted_text(result: CurriculumRun, total: int, signal_name: str) -> str:
    """What the line of a curriculum run stopped by a signal says: how far it got, what it stored, how to go on."""
    approved = f", {result.approved} of them approved" if result.approved else ""
    return (
        f"the curriculum run stopped ({signal_name}) in rollout {result.rollouts} of its {total}, with {len(result.stored)} "
        f"trajectories stored (source=curriculum, pending for review{approved}); a rollout not yet judged is not stored. "
        "The same command rolls every task out again: a rollout the store already holds (the same conversation) is counted "
        "as already stored, not stored twice."
    )


def _approve_if_failed(spec: str, exc: Exception) -> str:
    """What an --approve-if function that raised is told as: the function, its error and the line of its code that
    raised it (the whole traceback goes to the log: `ee --verbose`)."""
    import logging

    from ee_middleware.plugins import _where_raised

    logging.getLogger(__name__).info("--approve-if %s raised", spec, exc_info=exc)
    where = _where_raised(exc)
    return (
        f"The --approve-if function {spec!r} raised {type(exc).__name__}: {exc}" + (f" (at {where})" if where else "") + ". "
        "The error was raised in its own code, not in ee-middleware: fix it there (`ee --verbose ...` logs the whole traceback)."
    )


def _print_refused(refused_tools: dict[str, int], sandbox: str) -> None:
    """A line per tool the sandbox refused (``refused_tools``): why, in the sandbox's own words where it gives them
    (``refusal_hint``), and that its rollouts were not kept."""
    if not refused_tools:
        return
    from ee_middleware.replay.sandboxes.registry import refusal_hints

    hints = refusal_hints(sandbox, refused_tools)
    for tool, count in sorted(refused_tools.items()):
        why = hints.get(tool) or f"sandbox {sandbox!r} does not provide it (add it to its tools with the world it acts on)"
        typer.echo(f"  refused {count} call(s) of {tool}: {why}; the rollouts that called it were not kept")
