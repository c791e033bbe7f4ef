"""``ee curriculum``: variants of the tasks whose outcome varies most (DreamGym's task generator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ee_middleware.cli.common import (
    AllowPartialOption,
    JsonOption,
    StoreOption,
    examples,
    open_existing_store,
    print_json,
    reading_store,
    user_output_to_stderr,
)
from ee_middleware.cli.experience_cmds import TIMEOUT_KNOB, timeout_option

if TYPE_CHECKING:
    from ee_middleware.replay.curriculum import Proposal, TaskScore

app = typer.Typer(help="The curriculum: new tasks like the ones the policy solves about half the time.", no_args_is_help=True)


@app.command(
    "propose",
    epilog=examples("ee curriculum propose --from ./eval/base --model local:./models/smollm2 --store ./experience --out tasks.jsonl"),
)
def propose_cmd(
    results: Path = typer.Option(..., "--from", help="An eval run's folder (or its results.jsonl / results.parquet)."),
    model: str = typer.Option(
        ..., "--model", "-m", help="The model that writes variants: local:DIR, openai:BASE_URL#MODEL or module:factory."
    ),
    store: str = StoreOption,
    n: int = typer.Option(10, "--n", min=1, help="Variants to write."),
    out: Path = typer.Option(Path("tasks.jsonl"), "--out", help="Where the variants go (JSON lines)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed of MODEL (variant k uses seed + k)."),
    max_tokens: int = typer.Option(
        200, "--max-tokens", min=1, help="Tokens MODEL may write per variant (raise it for a model that reasons first)."
    ),
    timeout_s: float = timeout_option("MODEL"),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Have MODEL write variants of the tasks the policy solves about half the time.

    Scores each task by the variance p(1-p) of its outcomes in an eval run, and has MODEL write variants of
    the highest-scoring ones (same tools and environment, validated against the tool schemas)."""
    from ee_middleware.evals.results import read_results
    from ee_middleware.replay.curriculum import propose, score_tasks
    from ee_middleware.replay.sandboxes.experience import build_model_client

    scores = score_tasks(read_results(results))
    opened = open_existing_store(store)
    client = build_model_client(model, timeout_s=timeout_s, timeout_knob=TIMEOUT_KNOB)
    try:
        # what the model's code prints (module:factory) goes to stderr: stdout holds the answer alone
        with user_output_to_stderr(), reading_store(allow_partial=allow_partial):
            proposal = propose(client, scores, opened.iter_trajectories(), n=n, max_tokens=max_tokens, seed=seed)
    finally:
        client.close()
    problem = None if proposal.variants else _why_no_variant(scores, proposal, model, max_tokens)
    if problem is None:  # an earlier tasks.jsonl is never replaced by an empty one
        _write_variants(out, proposal.variants)
    summary = {
        "out": str(out),
        "variants": len(proposal.variants),  # distinct: a repeat is rejected as a duplicate
        "requested": n,
        "attempts": proposal.attempts,
        "rejected": proposal.rejected,
        "unmatched": proposal.unmatched,
        "top_tasks": [{"task_id": s.task_id, "n": s.n, "p": s.p, "variance": s.variance} for s in scores[:10]],
        "error": problem,
    }
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary, scores, proposal)
    if problem is not None:
        typer.secho(f"error: no variant written ({out} left as it was): {problem}", err=True, fg="red")
        raise typer.Exit(1)


def _why_no_variant(scores: list[TaskScore], proposal: Proposal, model: str, max_tokens: int) -> str:
    """Why ``propose`` wrote nothing, and what to do about it (``max_tokens``: what MODEL was asked to write at most)."""
    if not scores:
        return "the eval run has no results rows."
    if all(s.variance == 0 for s in scores):
        return (
            "every task was always or never solved (p(1-p) = 0), so none is worth varying: evaluate more trials "
            "(ee eval run --trials) or other tasks."
        )
    if not proposal.rejected:
        return (
            "no task with varying outcomes has a stored trajectory (matched by the environment's entry_id or the task text): "
            "record those tasks into --store, or point --store at the store they were recorded in."
        )
    if proposal.cut:
        return (
            f"{model} wrote no usable variant (rejected: {proposal.rejected}): {proposal.cut} of its {proposal.attempts} "
            f"answer(s) were cut off at max_tokens before a whole variant. Raise --max-tokens (now {max_tokens}), e.g. "
            f"--max-tokens {max_tokens * 4} for a model that reasons first."
        )
    return f"{model} wrote no usable variant (rejected: {proposal.rejected}); try another model or a larger --n."


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
    for s in scores[:5]:
        typer.echo(f"  {s.task_id}: p={s.p:.2f} p(1-p)={s.variance:.3f} over {s.n} trials")
    if proposal.rejected:
        typer.echo(f"rejected: {proposal.rejected}")
    if proposal.unmatched:
        typer.echo(f"no stored trajectory for (cannot validate): {', '.join(proposal.unmatched[:10])}")


@app.command(
    "run",
    epilog=examples(
        "ee curriculum run tasks.jsonl --policy local:./models/smollm2 --sandbox bfcl --judge local:./models/smollm2 --store ./experience"
    ),
)
def run_cmd(
    tasks: Path = typer.Argument(..., help="tasks.jsonl from 'ee curriculum propose'."),
    policy: str = typer.Option(
        ..., "--policy", help="The policy to roll out: local:DIR[@ADAPTER], openai:BASE_URL#MODEL or module:factory."
    ),
    sandbox: str = typer.Option(
        ...,
        "--sandbox",
        help=(
            "Sandbox of the real tools (bfcl, module:factory); rollouts whose observations an experience model wrote, or that "
            "call a tool it does not cover (refused_tools), are not kept."
        ),
    ),
    judge: str = typer.Option(..., "--judge", help="The model that verifies each outcome (e.g. the experience model's spec)."),
    judge_max_tokens: int = typer.Option(
        1024,  # evals.curriculum.JUDGE_MAX_TOKENS (not imported here: the CLI imports evals lazily)
        "--judge-max-tokens",
        min=1,
        help=(
            "Tokens the judge may write per verdict, its reasoning included (a reasoning judge cut off while thinking gives "
            "none); fewer where its server refuses them as more than the model's context leaves after the prompt."
        ),
    ),
    store: str = StoreOption,
    k: int = typer.Option(1, "--k", min=1, help="Rollouts per task."),
    approve_if: str | None = typer.Option(None, "--approve-if", help="module:function(trajectory) -> bool; others stay pending."),
    timeout_s: float = timeout_option("the policy and the judge"),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Roll the policy out K times on each task and store the successes a judge verifies.

    They are stored as trajectories with source=curriculum, pending for approval unless --approve-if
    accepts them. A rollout that calls a tool the sandbox does not cover is ended there and not kept
    (refused_tools counts those calls by tool; exit 1 when no rollout was kept). Run again, it stores the new rollouts; one the store already holds (the same
    conversation) is counted as already stored, not stored twice."""
    import functools
    import importlib

    from ee_middleware.evals.curriculum import (
        JUDGE_CONTEXT_BOUND,
        JUDGE_CUT,
        JUDGE_FAILED,
        JUDGE_NO_VERDICT,
        POLICY_FAILED,
        SYNTHETIC_DROPPED,
        UNCOVERED_TOOL_DROPPED,
        is_context_refusal,
        read_tasks,
        run_curriculum,
    )
    from ee_middleware.models.protocol import CUT_WHILE_REASONING
    from ee_middleware.models.spec import endpoint_problem
    from ee_middleware.replay.sandboxes.experience import build_model_client
    from ee_middleware.replay.sandboxes.registry import build_sandbox

    if not tasks.exists():
        raise typer.BadParameter(f"{tasks} does not exist: write it with 'ee curriculum propose'.", param_hint="TASKS")
    todo = read_tasks(tasks.read_text(encoding="utf-8").splitlines())
    predicate = None
    if approve_if:
        module, _, name = approve_if.partition(":")
        try:
            predicate = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise typer.BadParameter(f"cannot import {approve_if!r} ({exc}); write module:function.", param_hint="--approve-if") from None
    opened = open_existing_store(store)
    build_sandbox(sandbox).close()  # a sandbox that cannot be built fails here, before any rollout
    policy_client, judge_client = (build_model_client(spec, timeout_s=timeout_s, timeout_knob=TIMEOUT_KNOB) for spec in (policy, judge))
    try:
        # a policy or judge endpoint that is down fails here, before any rollout
        for client, spec, flag in ((policy_client, policy, "--policy"), (judge_client, judge, "--judge")):
            problem = endpoint_problem(client)
            if problem is not None:
                raise typer.BadParameter(f"the {flag[2:]} {spec} cannot be reached: {problem}", param_hint=flag)
        # what the policy's and the sandbox's code prints goes to stderr: stdout holds the answer alone
        with user_output_to_stderr(), reading_store(allow_partial=allow_partial):
            result = run_curriculum(
                todo,
                policy_client,
                policy,
                functools.partial(build_sandbox, sandbox),
                judge_client,
                opened,
                k=k,
                approve_if=predicate,
                judge_max_tokens=judge_max_tokens,
            )
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
    if policy_failed and policy_failed == sum(result.dropped.values()) and not result.kept:
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
    kept = len(result.kept)  # each trajectory once, as `trajectories` lists them (two trials may give one rollout)
    summary = {
        "rollouts": result.rollouts,
        "kept": kept,
        "stored": len(result.stored),
        "already_stored": len(result.already_stored),
        "approved": result.approved,
        "dropped": dict(result.dropped),
        "refused_tools": dict(result.refused_tools),  # calls of tools the sandbox does not cover, by tool (as ee replay run's)
    }
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
        for reason, count in result.dropped.most_common():
            typer.echo(f"  dropped {count}: {reason}")
        _print_refused(result.refused_tools, sandbox)
    if problem is not None:
        typer.secho(f"error: {problem}", err=True, fg="red")
        raise typer.Exit(1)


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
