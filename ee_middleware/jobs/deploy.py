"""The improve job's deploy stages: register, evaluate, gate, promote.

The candidate is registered under its immutable name, evaluated beside the app's live adapter (the
base model when none is live) on the configured suites and on the held-out action likelihood,
gated, and promoted (loaded and verified on every replica, then the alias switched) or retired with
the gate's reasons. With servers configured the evaluation goes through them (the candidate is
loaded under its registry name first, so a promote only verifies and switches); without, both
models are evaluated in-process (``local:BASE@ADAPTER``) and a promote switches the registry's alias.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import warnings
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ee_middleware._files import atomic_write_text
from ee_middleware.errors import hide_credentials
from ee_middleware.jobs.errors import JobError, LiveAdapterChangedError
from ee_middleware.jobs.runs import file_entry
from ee_middleware.jobs.stages import ADAPTER_DIR, DATA_DIR, StageContext, StageResult
from ee_middleware.messages import finite_or_null

if TYPE_CHECKING:
    from ee_middleware.jobs.config import ImproveConfig, Serving
    from ee_middleware.jobs.runs import Run

BASE = "base"
LIKELIHOOD_FILE = "likelihood.json"


def _registry(ctx: StageContext) -> Any:
    from ee_middleware.adapters.registry import open_registry

    return open_registry(ctx.config.registry, create=True)


def _replicas(ctx: StageContext) -> list[Any]:
    return _replicas_of(ctx.config)


def _replicas_of(config: ImproveConfig) -> list[Any]:
    return _serving_replicas(config.serving)


def _serving_replicas(serving: Serving) -> list[Any]:
    if not serving.servers:
        return []
    from ee_middleware.adapters.serving.backend import BACKENDS, build_backends

    options: dict[str, Any] = {"max_lora_rank": serving.max_lora_rank}
    if serving.backend in BACKENDS.builtins:  # (a plug-in backend takes what its factory takes)
        # each request to the servers (a load, the smoke request, an unload) may take [improve.serving] timeout_s
        options.update(timeout_s=serving.timeout_s, timeout_knob="[improve.serving] timeout_s")
    return build_backends(list(serving.servers), kind=serving.backend, **options)


def _silent_replicas(config: ImproveConfig) -> tuple[list[str], int]:
    """What each configured model server that did not list its models said, and how many are configured."""
    from ee_middleware.adapters.errors import ServingError

    replicas = _replicas_of(config)
    silent = []
    for replica in replicas:
        try:
            replica.list()
        except ServingError as exc:
            silent.append(str(exc))
        finally:
            close = getattr(replica, "close", None)
            if close is not None:
                close()
    return silent, len(replicas)


def check_replicas(ctx: StageContext) -> None:
    """Every configured model server answers (lists its models), asked before training: one that is down would fail
    the evaluate stage only after the whole training, so the run stops before it instead, naming each server and
    what it said (the next call continues the run). Nothing to ask when the evaluation runs in-process."""
    silent, total = _silent_replicas(ctx.config)
    if silent:
        raise JobError(
            f"{len(silent)} of {total} model server(s) in [improve.serving] did not answer, so the run stops before "
            f"training (the evaluation goes through them); start them or fix servers, then run again: the run continues. "
            + " ".join(silent)
        )


def check_servers(config: ImproveConfig, stages: Collection[str] | None = None) -> None:
    """Every server the file names answers, asked when the job starts, before a run is started or continued: the
    ``[improve.serving]`` servers (they list their models) and an ``openai:`` ``[replay] policy`` or ``[datasets]
    teacher`` (asked for ``/models``; an answer of any kind, a refusal included, counts: the stage that sends the
    requests says what a refusal means). A wrong port or host is then named with its setting at once, not after the
    stages before the one that needs the server (hours of replay at scale), as a failed run. ``stages``: those still to
    run (default: all); a server only stages already done used is not asked (a run continued past its replay)."""
    import tempfile

    remaining = set(stages) if stages is not None else {"replay", "datasets", "evaluate"}
    problems = []
    silent, total = _silent_replicas(config) if remaining & {"evaluate", "gate", "promote"} else ([], 0)
    if silent:
        problems.append(f"{len(silent)} of {total} model server(s) in [improve.serving] servers did not answer: " + " ".join(silent))
    data = config.dataset_config(Path(tempfile.gettempdir()) / "ee-improve-check" / "data", None)
    endpoints = [("[replay] policy", config.replay_config().policy)] if "replay" in remaining else []
    if "sr" in data.kinds and "datasets" in remaining:
        endpoints.append(("[datasets] teacher", data.teacher))
    for setting, spec in endpoints:
        problem = _endpoint_problem(spec, timeout_s=min(30.0, config.serving.timeout_s))
        if problem:
            problems.append(hide_credentials(f"{setting} = {spec!r} did not answer: {problem}"))
    if problems:
        where = f" in {config.config_path}" if config.config_path else ""
        raise JobError(
            f"ee improve stops before a run starts: {' '.join(problems)} Start the server(s), or fix the URL{where}, then run again."
        )


def _endpoint_problem(spec: str, *, timeout_s: float) -> str | None:
    """Why the OpenAI-compatible server an ``openai:URL#MODEL`` spec names gives no answer (down, timing out, failing
    with 5xx); None when it answers or ``spec`` names no server."""
    from ee_middleware.models.openai_compat import OpenAIChatClient
    from ee_middleware.models.spec import endpoint_problem, is_model_spec, parse_model_spec

    if not isinstance(spec, str) or not is_model_spec(spec):
        return None
    parsed = parse_model_spec(spec)
    if parsed.kind != "openai" or not parsed.base_url or not parsed.model:
        return None
    try:
        client = OpenAIChatClient(parsed.base_url, parsed.model, retries=1, timeout_s=timeout_s)
    except ValueError:
        return None  # a URL the stage refuses with its own message
    try:
        return endpoint_problem(client)
    finally:
        client.close()


def _by(ctx: StageContext) -> str:
    return _by_run(ctx.run.id)


_IMPROVE = "ee improve"
"""How the job signs what it does in the registry's history (``by``), before the run's id."""


def _by_run(run_id: str) -> str:
    return f"{_IMPROVE} (run {run_id})"


# --- register ----------------------------------------------------------------------------------------------


def register(ctx: StageContext) -> StageResult:
    """The candidate under an immutable versioned name (the same weights again return the same record)."""
    adapter = Path(ctx.run.outputs("train")["adapter_dir"])
    registry = _registry(ctx)
    record = registry.register(adapter, ctx.config.alias_name, by=_by(ctx), max_lora_rank=ctx.config.serving.max_lora_rank)
    result = StageResult(
        inputs={"adapter_dir": str(adapter), "weights": file_entry(adapter / "adapter_model.safetensors")},
        outputs={
            "candidate": record.name,
            "version": record.version,
            "content_hash": record.content_hash,
            "path": record.path,
            "status": record.status,
            "base_model": record.base_model,
            "registry": str(ctx.config.registry),
            "alias": ctx.config.alias_name,
        },
    )
    if record.status != "candidate":
        result.decisions.append(f"the registry already had these weights as {record.name} ({record.status})")
    result.summary = f"{record.name} ({record.status})"
    if registry.resolve(ctx.config.alias_name) == record.name:
        from ee_middleware.adapters.records import check_registered_files

        # no evaluate stage reads the live adapter's registered copy now: a damaged one is named here, with the fix
        check_registered_files(record, str(ctx.config.registry))
        result.outputs["unchanged"] = unchanged_text(record.name, ctx.config.alias_name)
        result.decisions.append(result.outputs["unchanged"])
        result.summary += ": the live adapter's weights, nothing to evaluate or promote"
        ctx.progress.info(result.outputs["unchanged"])
    return result


def unchanged_text(name: str, alias: str) -> str:
    """Why a run whose training reproduced the live adapter's weights ends after its register stage (``unchanged`` in
    the register stage's outputs and the run's outcome): the registry handed back the live record (the same data and
    seed train the same weights: ``--force`` on the same data, or new trajectories that all went to the held-out split)."""
    return (
        f"the trained weights are those of the live adapter {name} ({alias} serves them already): nothing to evaluate, gate "
        f"or promote, so the run finishes unchanged; {alias} still serves {name}"
    )


# --- evaluate ----------------------------------------------------------------------------------------------


def evaluate(ctx: StageContext) -> StageResult:
    """Suites for the live model (or the base) and the candidate, then the held-out action likelihood."""
    from ee_middleware.adapters.records import check_registered_files
    from ee_middleware.evals.runner import run_eval

    registry = _registry(ctx)
    candidate = registry.get(ctx.run.outputs("register")["candidate"])
    live_name = registry.resolve(ctx.config.alias_name)
    live = registry.get(live_name) if live_name and live_name != candidate.name else None
    for record in (candidate, live):
        if record is not None:
            check_registered_files(record, str(ctx.config.registry))
    base_folder = ctx.run.outputs("train")["base_folder"]
    specs, served = _model_specs(ctx, candidate, live, base_folder)
    split = ctx.path(DATA_DIR, "datasets.json")
    result = StageResult(
        inputs={
            "candidate": candidate.name,
            "candidate_hash": candidate.content_hash,
            "baseline": live.name if live else BASE,
            "base_folder": base_folder,
            "split": file_entry(split),
            "suites": ctx.config.suite_specs(),
        },
        outputs={"baseline": live.name if live else BASE, "candidate": candidate.name, "models": specs, "served_by": served, "runs": {}},
    )
    for side in ("baseline", "candidate"):
        ctx.check_deadline(f"evaluating the {side}")
        job = ctx.config.eval_job(specs[side], ctx.path("eval", side), split)
        ctx.progress.info(f"evaluating the {side} ({specs[side]}) on {', '.join(job.suites)}")
        summary = run_eval(job, progress=lambda suite, done, total, side=side: ctx.progress.bar(f"{side}: {suite}", done, total))
        result.outputs["runs"][side] = {"dir": str(job.out), "suites": summary}
        _refuse_unanswered(summary, side, specs[side], served, timeout_s=ctx.config.serving.timeout_s if served else None)
    if ctx.config.likelihood:
        ctx.check_deadline("scoring the held-out likelihood")
        result.outputs["likelihood"] = _likelihood(ctx, base_folder, live, candidate)
        if result.outputs["likelihood"].get("left_out"):  # the longest expert actions: the mean leans to short calls
            result.decisions.append(_unchecked(f"likelihood: {result.outputs['likelihood']['left_out']}"))
        if result.outputs["likelihood"].get("cut_from_the_left"):  # states that lost their start: the NLL measures less
            result.decisions.append(_unchecked(f"likelihood: {result.outputs['likelihood']['fitted']}"))
    result.summary = _eval_line(result.outputs)
    return result


def _refuse_unanswered(summary: list[dict[str, Any]], side: str, model: str, served: list[str], *, timeout_s: float | None = None) -> None:
    """Trials the model server gave no answer to (down, timed out, failing) say nothing of the model: gated, they would
    fail the candidate and retire it for an outage. The stage fails instead; the next call runs only those again. A
    server that answers, but slower than ``timeout_s``, would fail every night the same way: the error says which
    setting lets it finish (it is not part of the run's configuration, so the run still continues). A baseline that
    never answered on a suite (every trial refused on its first request: its adapter cannot load, the server does not
    serve its name) fails the stage too, naming it: gated against it, the candidate would be refused for the live
    model's fault."""
    silent = {s["suite"]: s["never_answered"] for s in summary if s.get("never_answered")}
    if silent and side == "baseline":  # a candidate that cannot answer fails its gate; the live one's failure is not its
        named = "; ".join(f"{suite}: {reason}" for suite, reason in sorted(silent.items()))
        raise JobError(
            f"The {side} ({model}) never answered on {', '.join(sorted(silent))}: every task trial failed on its first request "
            f"({named}). That measures its setup (a served-model name the server does not know, an adapter whose weights "
            "cannot load), not the model, so the candidate is not gated against it. Fix the live adapter (`ee adapters "
            "show`) or the server, then run `ee improve` with the same config: it runs those trials again."
        )
    unanswered = sum(int(s.get("no_answer") or 0) for s in summary)
    if unanswered:
        where = f"The model server {', '.join(served)}" if served else "The model"
        slow = (
            f" If it is up but slow (a CPU server, long answers), raise [improve.serving] timeout_s (now {timeout_s:g} s)."
            if timeout_s
            else ""
        )
        raise JobError(
            f"{where} gave no answer on {unanswered} task trial(s) of the {side} ({model}): down, timed out or failing, so "
            "they say nothing of the model and are not gated. Once it answers, run `ee improve` with the same config: it "
            f"continues the evaluation and runs only those trials again.{slow}"
        )


def _model_specs(ctx: StageContext, candidate: Any, live: Any, base_folder: str) -> tuple[dict[str, str], list[str]]:
    replicas = _replicas(ctx)
    if not replicas:
        baseline = f"local:{base_folder}" + (f"@{live.path}" if live else "")
        return {"baseline": baseline, "candidate": f"local:{base_folder}@{candidate.path}"}, []
    _check_rendering(candidate, replicas)
    for replica in replicas:
        for record in (candidate, live):
            if record is not None and record.name not in replica.list():
                ctx.progress.info(f"loading {record.name} on {replica.url}")
                replica.load(record.name, record.path)
    url = replicas[0].url
    base_name = ctx.config.serving.base_name or _served_base(replicas[0], _registry(ctx))
    return {"baseline": f"openai:{url}#{live.name if live else base_name}", "candidate": f"openai:{url}#{candidate.name}"}, [
        r.url for r in replicas
    ]


def _check_rendering(candidate: Any, replicas: list[Any]) -> None:
    """The candidate would be refused at the promote stage by a replica that renders prompts unlike its training rows
    (:func:`~ee_middleware.adapters.promote.rendering_checks`): found before it is loaded and evaluated there, where its
    scores would say nothing of it."""
    from ee_middleware.adapters.errors import ChatTemplateMismatchError
    from ee_middleware.adapters.promote import rendering_checks

    differing = [check for check in rendering_checks(candidate, replicas) if check.differs]
    if differing:
        raise ChatTemplateMismatchError(
            " ".join(check.message for check in differing) + " Nothing was loaded or evaluated; once the server is fixed, run "
            "`ee improve` with the same config: it continues (a retrained adapter comes from a new run).",
            url=differing[0].server,
            checks=differing,
        )


def _served_base(replica: Any, registry: Any) -> str:
    adapters = {r.name for r in registry.list()}
    names = [n for n in replica.list() if n not in adapters]
    if not names:
        raise JobError(f"{replica.url} lists no base model besides registered adapters; set base_name in [improve.serving].")
    return str(names[0])


def _likelihood(ctx: StageContext, base_folder: str, live: Any, candidate: Any) -> dict[str, Any]:
    path = ctx.path("eval", LIKELIHOOD_FILE)
    if path.is_file():
        return json.loads(path.read_text())
    from ee_middleware.evals.likelihood import fitted_text, left_out_text, load_heldout, report, score_likelihood

    states = load_heldout(ctx.path(DATA_DIR))[: ctx.config.likelihood_states]
    # Scored under their role's name (peft adapter names cannot hold the dots of registry names).
    links = ctx.path("eval", "adapters")
    links.mkdir(parents=True, exist_ok=True)
    adapters = []
    for role, record in (("live", live), ("candidate", candidate)):
        if record is not None:
            link = links / role
            link.unlink(missing_ok=True)
            link.symlink_to(Path(record.path).resolve(), target_is_directory=True)
            adapters.append(link)
    max_length = ctx.config.train_config(ctx.path(DATA_DIR), ctx.path(ADAPTER_DIR), max_steps=None).max_length
    ctx.progress.info(f"scoring the expert action's likelihood on {len(states)} held-out states (max_length {max_length})")
    scores = score_likelihood(
        states,
        base_folder,
        adapters,
        max_length=max_length,
        decode_sample=ctx.config.likelihood_decode,
        on_progress=lambda name, done, total: ctx.progress.bar(f"likelihood: {name}", done, total),
    )
    # the same states are left out for every model: their expert action alone takes max_length tokens or more
    left_out = left_out_text(scores[0], max_length).replace("--max-length", "[train] max_length")
    if left_out:
        ctx.progress.info(left_out)
    fitted = fitted_text(scores[0], max_length).replace("--max-length", "[train] max_length")
    data = {
        "states": len(scores[0].nll),
        "given": len(states),
        "left_out": left_out or None,
        "fitted": fitted or None,
        "cut_from_the_left": scores[0].cut_from_the_left,
        "max_length": max_length,
        "models": report(scores),
        "per_state_nll": {score.name: score.nll for score in scores},
        "names": {BASE: BASE, **({"live": live.name} if live else {}), "candidate": candidate.name},
        "baseline": "live" if live else BASE,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    data = finite_or_null(data)  # a value that cannot be computed (the spread of one state) is null, not NaN
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False))
    return data


def _eval_line(outputs: dict[str, Any]) -> str:
    from ee_middleware.evals.report import gated_rate, gated_rate_name
    from ee_middleware.jobs.report import suite_labels

    parts = []
    every = [s for side in ("baseline", "candidate") for s in outputs["runs"].get(side, {}).get("suites", [])]
    measured = gated_rate_name(every)
    for side in ("baseline", "candidate"):
        suites = outputs["runs"].get(side, {}).get("suites", [])
        labels = suite_labels([s["suite"] for s in suites])
        rates = ", ".join(
            f"{label} " + (f"{100 * rate:.0f}%" if (rate := gated_rate(s)) is not None else "no task")  # null: no task
            for label, s in zip(labels, suites, strict=True)
        )
        parts.append(f"{side} {rates}")
    if measured != "task success":
        parts[0] = f"{measured.split(' ')[0]}: {parts[0]}"
    like = outputs.get("likelihood")
    if like:
        nll = {m["model"]: m["mean_nll"] for m in like["models"]}
        given = like.get("given") or like["states"]  # a likelihood.json from before "given": every state was scored
        on = f" (on {like['states']} of {given} held-out states)" if like["states"] != given else ""
        parts.append(f"NLL {like['baseline']} {nll_text(nll.get(like['baseline']))} -> candidate {nll_text(nll.get('candidate'))}{on}")
    return "; ".join(parts)


# --- gate --------------------------------------------------------------------------------------------------


def gate(ctx: StageContext) -> StageResult:
    """The deploy gate on task success (``[gate]`` policy) and, when configured, on the held-out likelihood."""
    from ee_middleware.evals.gate import gate as run_gate

    evaluation = ctx.run.outputs("evaluate")
    runs = evaluation["runs"]
    policy = ctx.config.gate_policy()
    outcome = run_gate(runs["candidate"]["dir"], runs["baseline"]["dir"], policy)
    likelihood = compare_likelihood(evaluation.get("likelihood"))
    reasons = [*outcome.reasons, *likelihood_reasons(outcome.to_dict(), likelihood, required=ctx.config.gate_on_likelihood)]
    passed = not reasons
    moved = metrics_moved(outcome.to_dict(), likelihood)
    result = StageResult(
        inputs={"candidate_run": runs["candidate"]["dir"], "baseline_run": runs["baseline"]["dir"], "policy": policy.model_dump()},
        outputs={
            "passed": passed,
            "reasons": reasons,
            "task_success": outcome.to_dict(),
            "likelihood": likelihood,
            "gate_on_likelihood": ctx.config.gate_on_likelihood,
            "moved": moved,
        },
    )
    result.decisions.append(
        ("PASS" if passed else "FAIL: " + "; ".join(reasons)) + f" (candidate {evaluation['candidate']} vs {evaluation['baseline']})"
    )
    result.decisions += moved
    result.summary = "pass" if passed else "fail: " + "; ".join(reasons)
    return result


def likelihood_reasons(task_gate: dict[str, Any], likelihood: dict[str, Any] | None, *, required: bool) -> list[str]:
    """Why the held-out likelihood refuses the candidate (``task_gate``: the task gate's ``to_dict()``, ``likelihood``:
    :func:`compare_likelihood`'s).

    With ``required`` (``gate_on_likelihood``) its NLL must be lower than the baseline's. Otherwise the likelihood only
    breaks a tie: when no task changed outcome (the runs cannot tell the models apart), a candidate whose held-out NLL
    is higher beyond 2 standard errors is not promoted, since the one measurement that tells them apart says it is
    worse."""
    if required:
        if likelihood is None:
            return ["likelihood: gate_on_likelihood is set but the likelihood was not scored (likelihood = false)"]
        if not likelihood["diff"] < 0:
            # as many decimals as show the difference: at 3, a +0.0003 refusal read "(+0.000)", a tie
            decimals = nll_decimals(likelihood["diff"], likelihood.get("se"))
            return [
                f"likelihood: the candidate's held-out action NLL is not lower than the baseline's ({likelihood['diff']:+.{decimals}f})"
            ]
        return []
    overall = task_gate.get("overall") or {}
    tie = bool(overall.get("tasks")) and overall.get("candidate_only") == overall.get("baseline_only") == 0
    if not tie or likelihood is None:
        return []
    diff, se = likelihood["diff"], likelihood["se"]
    if math.isfinite(se) and se > 0 and diff > 2 * se:
        decimals = nll_decimals(se)
        return [
            f"likelihood: no task changed outcome, and the candidate's held-out action NLL is higher than the baseline's by "
            f"{diff:.{decimals}f} (± {se:.{decimals}f} s.e., beyond 2 s.e.): the tie is broken against it "
            "(gate_on_likelihood is off: the likelihood decides only such ties; on, it would decide every time)"
        ]
    return []


def compare_likelihood(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Candidate vs baseline (the live adapter, else the base) held-out NLL, paired per state: mean
    difference, standard error, share of states improved."""
    if not data:
        return None
    per_state = data["per_state_nll"]
    candidate, baseline = "candidate", data["baseline"]
    cand, base = per_state.get(candidate), per_state.get(baseline)
    if not cand or not base:
        return None
    diffs = [c - b for c, b in zip(cand, base, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else math.nan
    return {
        "candidate": data["names"][candidate],
        "baseline": data["names"][baseline],
        "states": n,
        "candidate_nll": sum(cand) / n,
        "baseline_nll": sum(base) / n,
        "diff": mean,
        "se": se,
        "improved_share": sum(d < 0 for d in diffs) / n,
        "significant": bool(n > 1 and se > 0 and abs(mean) > 2 * se),
    }


def nll_decimals(*spreads: float | None) -> int:
    """Decimals that show NLL values and their paired difference apart: 3, or enough for two significant digits of the
    smallest non-zero ``spreads`` (a standard error, a difference; at most 6). At 3 decimals a small run's
    ``5.898 -> 5.898 (-0.000 ± 0.000 s.e.)`` hid a difference the gate had measured."""
    finite = [abs(v) for v in spreads if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return 3
    return min(6, max(3, 1 - math.floor(math.log10(min(finite)))))


def nll_text(value: float | None, digits: int = 3) -> str:
    """An NLL to ``digits`` decimals, or ``-`` where none was scored (NaN in memory, null in a run's files)."""
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "-"


def paired_text(diff: float, se: float | None, digits: int) -> str:
    """A paired difference and its standard error: ``+0.012 ± 0.004``, or ``± n/a (one state)`` where there is none
    (NaN in memory, null in a run's files)."""
    spread = f"{se:.{digits}f}" if se is not None and math.isfinite(se) else "n/a (one state)"
    return f"{diff:+.{digits}f} ± {spread}"


def metrics_moved(task: dict[str, Any], likelihood: dict[str, Any] | None) -> list[str]:
    """Plain sentences: which metric moved, and whether beyond its noise."""
    lines = []
    overall = task.get("overall")
    if overall:
        delta = overall["delta"]
        significant = overall["p_value"] < 0.05
        if overall["candidate_only"] == 0 and overall["baseline_only"] == 0:
            lines.append(
                f"task success did not move: {100 * overall['candidate_rate']:.0f}% vs {100 * overall['baseline_rate']:.0f}% "
                f"on {overall['tasks']} held-out tasks (no task changed outcome)"
            )
        else:
            lines.append(
                f"task success moved {100 * delta:+.0f} points ({overall['candidate_only']} tasks gained, {overall['baseline_only']} lost; "
                f"McNemar p = {overall['p_value']:.2g}, {'significant' if significant else 'not significant'} at 0.05, "
                f"{overall['tasks']} tasks)"
            )
    if likelihood:
        direction = "fell (better)" if likelihood["diff"] < 0 else "rose (worse)" if likelihood["diff"] > 0 else "did not move"
        d = nll_decimals(likelihood["se"], likelihood["diff"])
        lines.append(
            f"held-out action NLL per token {direction}: {likelihood['baseline_nll']:.{d}f} -> {likelihood['candidate_nll']:.{d}f} "
            f"({paired_text(likelihood['diff'], likelihood['se'], d)} s.e., {100 * likelihood['improved_share']:.0f}% of "
            f"{likelihood['states']} states improved; {'beyond' if likelihood['significant'] else 'within'} 2 s.e.)"
        )
    return lines


# --- promote -----------------------------------------------------------------------------------------------


def promote(ctx: StageContext) -> StageResult:
    """Promote on a passed gate (every replica, then the alias); otherwise unload and retire the candidate with the reasons."""
    from ee_middleware.adapters.promote import promote as run_promote
    from ee_middleware.adapters.promote import retire

    gate_out = ctx.run.outputs("gate")
    name = ctx.run.outputs("register")["candidate"]
    registry = _registry(ctx)
    _record_eval(ctx, registry, name, gate_out)
    replicas = _replicas(ctx)
    result = StageResult(inputs={"candidate": name, "gate_passed": gate_out["passed"], "replicas": [r.url for r in replicas]})
    live_before = registry.resolve(ctx.config.alias_name)
    if gate_out["passed"]:
        # The check and the switch under one hold of the registry's operation lease (run_promote takes it again, as its
        # holder may): no other promote or rollback can make another adapter live between them.
        with _operation_lease(registry, f"promote of {name}", by=_by(ctx), say=ctx.progress.info):
            live_before = registry.resolve(ctx.config.alias_name)
            unchecked = _refuse_unseen_live(ctx, name, live_before, registry)
            turned_down = _turned_down_by_a_person(registry, name) if live_before != name else None
            turned_down = turned_down or _failed_before(registry, name)
            if turned_down is not None:
                return _declined(ctx, result, name, live_before, turned_down, unchecked)
            made_live_by = _made_live_by(registry, name) if live_before == name else None
            switched = run_promote(registry, name, replicas, by=_by(ctx), progress=ctx.progress.info)
        if made_live_by is not None and made_live_by.startswith(_IMPROVE) and made_live_by != _by(ctx):
            # live already, promoted by another run (the same weights: one record): not by this one. (Promoted by a person,
            # as a refusal of this run offers, it is this run's promote, done by hand.)
            where = "" if not replicas else f"; loaded again on {len(replicas)} replica(s) where it was missing"
            result.outputs = {"promoted": False, "live": name, "reasons": [], "already_live_by": made_live_by, "unload_problems": []}
            result.decisions.append(f"not promoted: {name} was live already, made so by {made_live_by}{where}")
            result.decisions.extend(unchecked)
            result.summary = f"{name} was live already ({made_live_by})"
            return result
        replaced = switched.replaced or live_before
        if replaced == name:  # an earlier attempt switched the alias and was stopped before this manifest: what was live then
            baseline = ctx.run.outputs("evaluate").get("baseline")
            replaced = None if baseline in (None, BASE) else baseline
        result.outputs = {**switched.to_json(), "promoted": True, "replaced": replaced}
        where = f"on {len(replicas)} replica(s)" if replicas else "in the registry only (no servers configured; the router serves it)"
        result.decisions.append(f"promoted {name} {where}; {ctx.config.alias_name} was {replaced or 'the base model'}")
        result.decisions.extend(unchecked)
        result.decisions.extend(check.message for check in switched.rendering if check.status != "same")  # chat template unchecked
        result.summary = f"{ctx.config.alias_name} -> {name}"
        return result
    reason = f"did not pass the gate in run {ctx.run.id}: " + "; ".join(gate_out["reasons"])
    problems: list[str] = []
    if registry.get(name).status == "candidate":  # retired and unloaded from every replica
        _, problems = retire(registry, name, replicas, by=_by(ctx), reason=reason)
    result.outputs = {"promoted": False, "live": live_before, "reasons": gate_out["reasons"], "unload_problems": problems}
    result.decisions.append(f"not promoted: {reason}; {ctx.config.alias_name} still serves {live_before or 'the base model'}")
    result.summary = f"not promoted; {ctx.config.alias_name} still serves {live_before or 'the base model'}"
    return result


def _made_live_by(registry: Any, name: str) -> str | None:
    """Who made the live adapter ``name`` live: the ``by`` of the last applied promote or rollback to it in ``registry``'s
    history (``ee improve (run ID)`` for a run); ``None`` when the registry keeps no history, cannot read it, or it does
    not say. Two runs with the same settings train the same weights, one registry record: the one that did not promote
    them is told."""
    history = getattr(registry, "history", None)
    try:
        events = list(history(adapter=name) or ()) if callable(history) else []
    except Exception:  # noqa: BLE001 - a registry whose history cannot be read (a remote one down): not known, as before
        return None
    found = None
    for event in events:
        applied = isinstance(event, dict) and event.get("applied") is not False and event.get("adapter") == name
        if applied and event.get("action") in ("promote", "rollback"):
            found = str(event.get("by") or "") or None
    return found


def _turned_down_by_a_person(registry: Any, name: str) -> dict[str, Any] | None:
    """The event by which someone other than ``ee improve`` last took the weights ``name`` off (``ee adapters rollback``
    from it) or retired them (``ee adapters retire``), unless it was promoted again after that; ``None`` when there is
    none, or the registry keeps no history. The same weights trained again (the same data and seed) come back as that
    record, and a gate that passes against what is live now does not undo a person's verdict on them: the job leaves
    promoting them again to a person."""
    history = getattr(registry, "history", None)
    try:
        events = list(history(adapter=name) or ()) if callable(history) else []
    except NotImplementedError:
        return None
    verdict = None
    for event in events:
        if not isinstance(event, dict) or event.get("applied") is False:
            continue
        action, by = event.get("action"), str(event.get("by") or "")
        rolled_back = action == "rollback" and event.get("replaced") == name
        if rolled_back or (action == "retire" and event.get("adapter") == name and not by.startswith(_IMPROVE)):
            verdict = event
        elif action == "promote" and event.get("adapter") == name:
            verdict = None
    return verdict


def _failed_before(registry: Any, name: str) -> dict[str, Any] | None:
    """The ``fail`` event of the weights ``name`` when the registry holds them as ``failed`` (a promote refused them: a
    server could not load them, or they failed the smoke request), which the registry never serves again; the same
    weights trained again come back as that record, and promoting them would fail the stage at every call. ``None`` for
    any other status, and for one failed for a server's ``--max-lora-rank`` (the promote reinstates it: the servers'
    setting, not the adapter's fault). Without a history, the record's reason stands in for the event."""
    from ee_middleware.adapters.promote import failed_for_rank

    record = registry.get(name)
    if str(record.status) != "failed" or failed_for_rank(record):
        return None
    history = getattr(registry, "history", None)
    try:
        events = list(history(adapter=name) or ()) if callable(history) else []
    except NotImplementedError:
        events = []
    fails = [
        e
        for e in events
        if isinstance(e, dict) and e.get("action") == "fail" and e.get("adapter") == name and e.get("applied") is not False
    ]
    return fails[-1] if fails else {"action": "fail", "adapter": name, "reason": record.reason, "at": record.updated_at}


def _declined(
    ctx: StageContext, result: StageResult, name: str, live: str | None, event: dict[str, Any], unchecked: list[str]
) -> StageResult:
    """The promote stage's outcome for a candidate whose weights a person took off or retired (see
    :func:`_turned_down_by_a_person`): not promoted, the record left as it is, with who and when and how to promote it."""
    alias = ctx.config.alias_name
    who, when = str(event.get("by") or "someone"), _moment_text(event.get("at"))
    action = str(event.get("action"))
    if action == "rollback":
        did, why = "took off", f" (rolled back to {event.get('adapter') or 'an earlier adapter'})"
    else:
        did = "marked failed" if action == "fail" else "retired"
        why = f" ({event['reason']})" if event.get("reason") else ""
    turned_down = f"{name} holds the same weights as an adapter {who} {did} at {when}{why}"
    if action == "fail":  # a failed adapter is never served again, by hand neither
        reason = (
            f"{turned_down}; the registry never serves a failed adapter again, so it is not promoted even though it passed the "
            "gate: fix the cause and train new weights (other data, settings or seed)"
        )
    else:
        reason = (
            f"{turned_down}; ee improve does not promote weights a person took off, even when they pass the gate: promote "
            f"them by hand if they should be live (`{promote_command(ctx.config, name)}`)"
        )
    result.outputs = {"promoted": False, "live": live, "reasons": [reason], "turned_down": event, "unload_problems": []}
    result.decisions.append(f"not promoted: {reason}; {alias} still serves {live or 'the base model'}")
    result.decisions.extend(unchecked)
    result.summary = f"not promoted: {who} {did} these weights{why}; {alias} still serves {live or 'the base model'}"
    ctx.progress.info(f"not promoted: {reason}")
    return result


def ee_program() -> list[str]:
    """How a command printed for the user runs this installation's ``ee``: ``ee`` when that is the ``ee`` on ``PATH``;
    else the ``ee`` script beside the running Python (a virtualenv's ``bin/``, not on ``PATH`` without activating it), by
    its full path; else ``python -m ee_middleware.cli`` with the running Python (no script installed beside it)."""
    import os
    import shutil
    import sys

    on_path = shutil.which("ee")
    beside = Path(sys.executable).parent / ("ee.exe" if os.name == "nt" else "ee")
    if beside.is_file():
        return ["ee"] if on_path and os.path.samefile(on_path, beside) else [str(beside)]
    if on_path and _script_python(Path(on_path)) == sys.executable:
        return ["ee"]  # a script installed elsewhere for this Python (pip install --user: ~/.local/bin)
    return [sys.executable, "-m", "ee_middleware.cli"]


def _script_python(script: Path) -> str | None:
    """The interpreter a console script's ``#!`` line names, ``None`` when it has none (or cannot be read)."""
    try:
        with script.open("rb") as file:
            first = file.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else None


def promote_command(config: ImproveConfig, name: str) -> str:
    """A shell command that promotes ``name`` by hand as ``config``'s promote stage would, runnable as written:
    ``ee adapters promote NAME -r REGISTRY`` (the registry as the config names it: a folder, or a registry plug-in's
    ``NAME:LOCATION`` or ``package.module:factory``), then the ``[improve.serving]`` servers with their backend (a
    built-in name or a serving-backend plug-in's spec) and ``max_lora_rank``; without servers ``--registry-only``: the
    promote is then the registry's alias switch alone, as the stage's is. ``ee`` is this installation's
    (:func:`ee_program`): a run from cron or systemd often has no ``ee`` on its ``PATH``, or another one."""
    serving = config.serving
    words = [*ee_program(), "adapters", "promote", name, "-r", config.registry]
    if not serving.servers:
        return shlex.join([*words, "--registry-only"])
    for url in serving.servers:
        words += ["--server", url]
    words += ["--backend", serving.backend]
    if serving.max_lora_rank is not None:
        words += ["--max-lora-rank", str(serving.max_lora_rank)]
    return shlex.join(words)


def _operation_lease(registry: Any, doing: str, *, by: str, say: Callable[[str], None]) -> contextlib.AbstractContextManager[Any]:
    """The registry's operation lease (``operation(doing, by=, on_wait=)``, the one promote, rollback and retire hold),
    or nothing for a plug-in registry without one."""
    operation = getattr(registry, "operation", None)
    return operation(doing, by=by, on_wait=say) if callable(operation) else contextlib.nullcontext()


def _refuse_unseen_live(ctx: StageContext, candidate: str, live: str | None, registry: Any) -> list[str]:
    """The gate compared ``candidate`` with the adapter live at the evaluate stage (its ``baseline``): when another one
    is live now (``live``: promoted or rolled back since, by another ``ee improve`` run on the same registry or by
    hand), promoting would replace an adapter no gate compared it with, so the stage fails with
    :class:`LiveAdapterChangedError`. The candidate live already (an earlier attempt switched the alias and was stopped
    before its manifest) goes on: the promote only loads it again where a replica lacks it.

    A candidate that was live since this run registered it and was taken off again (``ee adapters rollback``, or
    another adapter promoted over it: ``registry``'s history says so) is refused the same way, even when the adapter
    live now is the one its gate measured: someone took it off, and promoting it again would undo that without a word.

    Returns what the history could not tell (each said in a warning too), for the stage's decisions."""
    if live == candidate:
        return []
    unchecked = _refuse_taken_off(ctx, candidate, live, registry)
    gated = ctx.run.outputs("evaluate").get("baseline")
    if gated is None:
        return unchecked  # an evaluate manifest without a baseline says nothing to compare with
    gated_live = None if gated == BASE else gated
    if live == gated_live:
        return unchecked
    alias, registry = ctx.config.alias_name, ctx.config.registry
    gated_text = f"the live adapter then, {gated}" if gated_live else "the base model (no adapter was live then)"
    now_text = f"{live} is live now" if live else "no adapter is live now (the base model serves it)"
    back = (
        f" Or, if {gated} should be live, promote it again (`{promote_command(ctx.config, gated)}`) and run `ee "
        "improve` with the same config: the run continues and promotes its candidate over the adapter it was gated against."
        if gated_live
        else ""
    )
    raise LiveAdapterChangedError(
        f"{alias}'s live adapter changed since run {ctx.run.id} evaluated {candidate}: its gate compared {candidate} with "
        f"{gated_text}, but {now_text} (switched by another `ee improve` run on this registry, or by `ee adapters promote` / "
        f"`rollback`; `ee adapters show {live or gated} -r {registry}` shows who switched it, and when). {candidate} was never compared "
        f"with it, so it is not promoted: {alias} still serves {live or 'the base model'}, and {candidate} stays a "
        f"candidate. To gate a candidate against what is live now, start a new run: `ee improve --new-run` with the "
        f"same config (this run is abandoned and {candidate} retired; the new run trains and evaluates again).{back}",
        details={"alias": alias, "candidate": candidate, "gated_against": gated, "live": live},
    )


def _refuse_taken_off(ctx: StageContext, candidate: str, live: str | None, registry: Any) -> list[str]:
    """:class:`LiveAdapterChangedError` when ``registry``'s history holds an event, since this run registered
    ``candidate``, that took it off as live (a ``rollback`` from it, a ``promote`` of another adapter over it): an
    earlier attempt of this promote switched the alias and was stopped before its manifest, or someone promoted it by
    hand, and then it was taken off. Returns what could not be checked (see :func:`_taken_off`)."""
    event, unchecked = _taken_off(ctx, registry, candidate)
    if event is None:
        return unchecked
    alias, location = ctx.config.alias_name, ctx.config.registry
    raw_at = event.get("at")
    who, when, action = str(event.get("by") or "someone"), _moment_text(raw_at), str(event.get("action") or "")
    after = event.get("adapter")
    if action == "rollback":
        how = f"rolled back to {after} by {who} at {when} (`ee adapters rollback`)"
    else:
        how = f"replaced by {after or 'another adapter'}, {action or 'switched'} by {who} at {when}"
    if event_moment(raw_at) is None:
        how += f" (the registry gives no readable time for it, so it may be older than run {ctx.run.id}'s register stage)"
    elif names_no_zone(raw_at):
        how += (
            f" (a time without a zone, so it may be older than run {ctx.run.id}'s register stage: it is taken as older only "
            f"when it is more than {_hours(_WIDEST_UTC_OFFSET)} hours older)"
        )
    try:
        record = registry.get(candidate)
        state = f"{candidate} stays {record.status}" + (f" ({record.reason})" if record.reason else "")
    except Exception:  # noqa: BLE001 - what it is now only adds to the message
        state = f"{candidate} is left as it is"
    raise LiveAdapterChangedError(
        f"{alias}: {candidate}, the candidate of run {ctx.run.id}, went live after the run registered it and was taken off "
        f"again: {how}. Promoting it again would undo that without a word, so it is not promoted: {alias} still serves "
        f"{live or 'the base model'}, and {state} (`ee adapters show {candidate} -r {location}` shows its history). If "
        f"{candidate} should be live after all, promote it by hand (`{promote_command(ctx.config, candidate)}`): "
        "the next `ee improve` with the same config finds it live and finishes the run. Otherwise start a new run: `ee improve "
        "--new-run` with the same config (this run is abandoned; the new run trains and evaluates again).",
        details={
            "alias": alias,
            "candidate": candidate,
            "gated_against": ctx.run.outputs("evaluate").get("baseline"),
            "live": live,
            "taken_off": action or None,
            "taken_off_by": event.get("by"),
            "taken_off_at": None if raw_at is None else when,
            "replaced_by": after,
        },
    )


def _taken_off(ctx: StageContext, registry: Any, candidate: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest event of ``registry``'s history (applied: in its index) that took ``candidate`` off as live
    (``replaced``: it), from the start of the run's register stage on (else of the run): the same weights registered
    before, and taken off then, are another matter. ``None`` when there is none. And what could not be checked, each
    said in a warning (a ``UserWarning`` naming the registry): the whole check when the registry keeps no history (no
    ``history``, or one that raises ``NotImplementedError`` or returns ``None``: it cannot tell, and is not refused),
    and each such event whose ``at`` is not a time :func:`event_moment` reads (it counts: whether it is older than the run
    cannot be told, and undoing an operator's rollback is the harm the check is there for), or is a time without a zone
    (a naive datetime or ISO string: a plug-in's ``datetime.now()`` is local time, not UTC) that is not older than the
    register stage in every zone (it counts the same way; one older by more than :data:`_WIDEST_UTC_OFFSET` does not).

    A history that fails otherwise (a remote registry's transient error, a plug-in's bug) fails the stage with a
    :class:`JobError` naming the registry and its error, rather than skipping the check: the check keeps a promote from
    undoing someone's rollback, and the next ``ee improve`` with the same config only asks again."""
    run, location = ctx.run, ctx.config.registry
    kind = f"{type(registry).__module__}.{type(registry).__qualname__}"
    what = (
        f"whether {candidate} went live since run {run.id} registered it and was taken off again (`ee adapters rollback`, or "
        "another adapter promoted over it) was not checked"
    )
    history = getattr(registry, "history", None)
    try:
        events = history(adapter=candidate) if callable(history) else None
        if events is not None:
            events = list(events)
    except NotImplementedError as exc:
        events, reason = None, f"its history() raised NotImplementedError{f': {exc}' if str(exc) else ''}"
    except Exception as exc:
        detail = hide_credentials(f"{type(exc).__name__}: {exc}")
        raise JobError(
            f"The adapter registry {location} ({kind}) could not give {candidate}'s history: {detail}. The promote stage of run "
            f"{run.id} reads it to check that nobody took {candidate} off as live since the run registered it (a rollback "
            f"that a promote would undo without a word), so {candidate} is not promoted and nothing was switched. Run `ee "
            "improve` with the same config again once the registry answers: the run continues at its promote stage. A "
            "registry that keeps no history should raise NotImplementedError from history() (the check is then skipped, "
            f"with a warning); to promote {candidate} now, promote it by hand (`{promote_command(ctx.config, candidate)}`) "
            "and run `ee improve` again: it finds it live and finishes the run."
        ) from exc
    else:
        reason = "it has no history()" if not callable(history) else "its history() returned None"
    if events is None:
        return None, [_unchecked(f"The adapter registry {location} ({kind}) keeps no history ({reason}): {what}.")]
    register = run.stage("register") or {}
    since = event_moment(register.get("started_at")) or event_moment(run.data.get("started_at"))
    found, unchecked = None, []
    for event in events:
        if not isinstance(event, dict) or event.get("replaced") != candidate or event.get("applied") is False:
            continue
        raw_at = event.get("at")
        at = event_moment(raw_at)
        zoneless = at is not None and names_no_zone(raw_at)
        event_text = f"its {event.get('action') or 'unnamed'} event that took {candidate} off (by {event.get('by') or 'someone'})"
        if since is None:
            pass
        elif at is None:
            given = f"the time {raw_at!r}" if raw_at is not None else "no time (`at`)"
            unchecked.append(
                _unchecked(
                    f"The adapter registry {location} ({kind}) gives {given} for {event_text}; the promote reads an ISO 8601 "
                    f"string, a datetime or epoch seconds. Whether that event came after run {run.id}'s register stage could "
                    "not be told, so it is taken as having come after it."
                )
            )
        # the run's times are whole seconds, the registry's milliseconds: an event in the second the stage started counts.
        # A time without a zone is older only when it is older read in every zone (a plug-in's datetime.now() is local).
        elif (at + _WIDEST_UTC_OFFSET if zoneless else at) < since:
            continue
        elif zoneless and at - _WIDEST_UTC_OFFSET < since:
            unchecked.append(
                _unchecked(
                    f"The adapter registry {location} ({kind}) gives the time {raw_at!r}, which names no zone, for "
                    f"{event_text}; run {run.id}'s register stage started at {since.isoformat()}. Read in some zones that "
                    "event came before it, in others after, so it is taken as having come after it (a time without a zone "
                    f"is only taken as older when it is more than {_hours(_WIDEST_UTC_OFFSET)} hours older, older in every "
                    "zone). The registry should give `at` with its zone, e.g. datetime.now(UTC).isoformat()."
                )
            )
        found = event
    return found, unchecked


def _unchecked(message: str) -> str:
    """``message``, said in a warning (``ee improve`` shows it on stderr), for the stage's decisions too."""
    warnings.warn(message, UserWarning, stacklevel=3)
    return message


_WIDEST_UTC_OFFSET = timedelta(hours=14)
"""How far local time may be from UTC (UTC-12:00 to UTC+14:00): a registry's event time that names no zone is that
moment within this much either way."""


def _hours(span: timedelta) -> int:
    return int(span.total_seconds() // 3600)


def names_no_zone(value: Any) -> bool:
    """Whether ``value``, a time :func:`event_moment` reads, is a wall-clock time without a zone (a naive datetime, or an ISO
    string without an offset): a registry plug-in's ``datetime.now()`` gives local time there, not UTC."""
    if isinstance(value, datetime):
        return value.tzinfo is None or value.utcoffset() is None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).tzinfo is None
        except ValueError:
            return False
    return False


def event_moment(value: Any) -> datetime | None:
    """A time from a registry's history (``at``) or a run's files, as an aware datetime, or ``None`` when it is none of
    these: an ISO 8601 string, a :class:`datetime`, or a number of seconds since the epoch. A time that names no zone
    is read as UTC, as the runs write their times; a registry's may be local time (see :func:`names_no_zone`)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (ValueError, OverflowError, OSError):  # NaN, or beyond the calendar (milliseconds taken for seconds)
            return None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def _moment_text(value: Any) -> str:
    """A history event's ``at`` for a message: as the registry wrote it when an ISO string, the time it reads as when
    another form, quoted when it is no time."""
    if value is None:
        return "an unrecorded time"
    moment = event_moment(value)
    if moment is None:
        return repr(value)
    if isinstance(value, str):
        return value
    return value.isoformat() if isinstance(value, datetime) else moment.isoformat()  # a naive datetime stays zone-less


def retire_abandoned(run: Run, reason: str, config: ImproveConfig) -> dict[str, Any]:
    """Retire the candidate of ``run``, an improve run being abandoned (``--new-run``), and unload it from its replicas,
    with the promote stage's :func:`~ee_middleware.adapters.promote.retire` (as for a failed gate): the adapter its
    register stage recorded, and any other its attempts registered (``created_by`` this run: one killed before the
    register manifest was written), while its status is still ``candidate`` (a live or retired one is left as it is).
    The registry is the one the run registered into (one given as ``module:factory`` only where ``config``, the job's
    own configuration, names it too: a runs folder's records choose no code to import); the replicas are ``config``'s
    ``[improve.serving]`` servers, the fleet the job serves now (with their credentials, which run.json hides).

    Returns ``{}`` when there was none, else ``{"candidates": [...], "reason", "unload_problems": [...]}`` (a replica
    that could not unload it, down or refusing, is named there, as the promote stage names it). A registry that is not
    there (yet, or any more) has nothing to retire; one that cannot be read or written raises (the run is not marked
    abandoned, and the next call tries again)."""
    from ee_middleware.adapters.errors import AdapterNotFoundError
    from ee_middleware.adapters.promote import retire
    from ee_middleware.adapters.registry import imports_code, open_registry
    from ee_middleware.jobs.config import _registry_missing
    from ee_middleware.jobs.runs import job_table

    register = run.outputs("register")
    improve = job_table(run)
    location = register.get("registry") or improve.get("registry")
    if not location:
        return {}
    if imports_code(str(location)) and str(location) != str(config.registry):
        why = (
            f"not retired: the run records its registry as {location}, a plug-in factory, which is built only where the "
            f"job's configuration names it (it names {config.registry})"
        )
        return {"candidates": [], "reason": reason, "unload_problems": [why]}
    try:
        registry = open_registry(str(location), create=False)
    except Exception as exc:
        if _registry_missing(exc):
            return {}
        raise
    names = [register["candidate"]] if register.get("candidate") else []
    names += [r.name for r in registry.list(status="candidate") if r.created_by == _by_run(run.id) and r.name not in names]
    candidates = []
    for name in names:
        try:
            if registry.get(name).status == "candidate":
                candidates.append(name)
        except AdapterNotFoundError:
            continue
    if not candidates:
        return {}
    replicas = _replicas_of(config)
    problems: list[str] = []
    try:
        for name in candidates:
            _, unloaded = retire(registry, name, replicas, by=_by_run(run.id), reason=reason)
            problems += unloaded
    finally:
        for replica in replicas:
            close = getattr(replica, "close", None)
            if close is not None:
                close()
    return {"candidates": candidates, "reason": reason, "unload_problems": problems}


def _record_eval(ctx: StageContext, registry: Any, name: str, gate_out: dict[str, Any]) -> None:
    record = registry.get(name)
    if any(e.get("run") == ctx.run.id for e in record.evals or []):
        return
    evaluation = ctx.run.outputs("evaluate")
    registry.add_eval(
        name,
        {
            "run": ctx.run.id,
            "baseline": evaluation["baseline"],
            "suites": evaluation["runs"]["candidate"]["suites"],
            "baseline_suites": evaluation["runs"]["baseline"]["suites"],
            "likelihood": gate_out.get("likelihood"),
            "gate_passed": gate_out["passed"],
            "gate_reasons": gate_out["reasons"],
        },
        by=_by(ctx),
    )


DEPLOY_FUNCTIONS = {"register": register, "evaluate": evaluate, "gate": gate, "promote": promote}
