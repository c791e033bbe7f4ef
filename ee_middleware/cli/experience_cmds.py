"""``ee experience``: the experience model (DreamGym) — how far it can be trusted, per tool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ee_middleware.cli.common import (
    STORE_HELP,
    AllowPartialOption,
    JsonOption,
    ProgressBars,
    ProgressOption,
    console,
    escape,
    examples,
    key_value_settings,
    library_bars_off,
    number_between,
    open_job_store,
    other_apps_hint,
    output_folder,
    path_given,
    positive_seconds,
    print_json,
    progress_console,
    reading_store,
    store_origin,
    user_output_to_stderr,
)

RetrieverOption = typer.Option(
    None,
    "--retriever",
    help="How the replay buffer is searched: bm25 (built in), bm25s (pip install 'ee-middleware[experience]'), module:factory or "
    "an entry point. [default: bm25]",
)
RetrieverSettingOption = typer.Option(
    None,
    "--retriever-setting",
    help="KEY=VALUE option of the retriever (repeatable; VALUE is read as JSON when it parses), e.g. k1=1.2 for bm25, or your "
    "factory's own.",
)

AppOption = typer.Option(
    None,
    "--app",
    help="Only trajectories of this app (a store holding several): held out, indexed and built from, as 'ee datasets build "
    "--app' and 'ee replay run --app' read them.",
)

OptionalStoreOption = typer.Option(None, "--store", "-s", envvar="EE_STORE", help=STORE_HELP, show_envvar=True)
"""``--store``, which the command's config file may give instead (``store`` in its table)."""

TIMEOUT_KNOB = "`--timeout N`"
"""How these commands' user sets the model client's ``timeout_s`` (what the advice after a timeout names)."""


def timeout_option(who: str, *, default: float | None = 60.0) -> Any:
    """A ``--timeout`` option: seconds per request to ``who`` (an ``openai:`` model; others have no request timeout).
    ``default`` ``None``: a config file may give it (its help then shows the default, 60)."""
    return typer.Option(
        default,
        "--timeout",
        callback=positive_seconds,
        help=f"Seconds per request to {who} when it is an openai: model (one served on CPU takes seconds per answer, more behind a queue)."
        + (" [default: 60]" if default is None else ""),
    )


def config_option(table: str) -> Any:
    """A ``--config/-c`` option: the TOML file whose ``[table]`` holds the command's settings, which flags override."""
    article = "an" if table[0] in "aeiou" else "a"
    return typer.Option(None, "--config", "-c", help=f"TOML file with {article} [{table}] table; flags override it.")


def out_folder(value: Path | None) -> Path | None:
    """An ``--out FOLDER`` option's callback that may be left out (a config file gives it): see :func:`output_folder`."""
    return None if value is None else output_folder(value)


def check_out_folder(ctx: typer.Context, cfg: Any, config: Path | None, table: str, writes: tuple[str, ...]) -> None:
    """``cfg.out`` refused before any work where it cannot be a folder (where the ``--out`` flag did not give it: its
    callback checked that), naming the key and the file that gave it; or where a folder stands at one of the names the
    command writes in it (``writes``), which it could only find out once its work is done."""
    source = ctx.get_parameter_source("out")
    from_flag = source is not None and source.name == "COMMANDLINE"
    try:
        if not from_flag:
            output_folder(cfg.out)
        if in_the_way := [name for name in writes if (cfg.out / name).is_dir()]:
            raise typer.BadParameter(
                f"{cfg.out / in_the_way[0]} is a folder, where this command writes its {in_the_way[0]} once its work is done: "
                "move that folder away, or choose another output folder."
            )
    except typer.BadParameter as exc:
        if from_flag:
            raise typer.BadParameter(exc.message, param_hint="--out") from None
        if "out" not in cfg.model_fields_set or config is None:  # the default
            raise typer.BadParameter(exc.message, param_hint="--out") from None
        from ee_middleware.errors import ConfigError

        raise ConfigError(f"out = {str(cfg.out)!r} in [{table}] of {config}: {exc.message}") from None


app = typer.Typer(help="The experience model: a language model standing in for tools that cannot be replayed.", no_args_is_help=True)


@app.command(
    "eval",
    epilog=examples(
        "ee experience eval --model local:./models/smollm2 --store ./experience --out ./experience-eval",
        "ee experience eval --config experience.toml --retriever-setting k1=1.2",
    ),
)
def eval_cmd(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None, "--model", "-m", help="The experience model: local:DIR[@ADAPTER], openai:BASE_URL#MODEL or module:factory."
    ),
    trained: str | None = typer.Option(
        None,
        "--trained",
        help="A trained experience model (e.g. local:BASE_DIR@ADAPTER_DIR from 'ee train --schedule experience-model', or its "
        "served alias): adds the 'retrieval+trained' variant.",
    ),
    store: str | None = OptionalStoreOption,
    app_name: str | None = AppOption,
    held_out: float | None = typer.Option(
        None,
        "--held-out",
        callback=number_between(0, 1),
        help="Share of the approved trajectories held out: predicted, never indexed, never retrieved. At least one is held out, "
        "also at 0 (the eval needs something to predict), and at least one must stay to be retrieved from: a share that "
        "holds out every trajectory (1.0) is refused. [default: 0.2]",
    ),
    retriever: str | None = RetrieverOption,
    retriever_setting: list[str] | None = RetrieverSettingOption,
    top_k: int | None = typer.Option(
        None, "--top-k", min=1, help="Retrieved real transitions per prediction in the 'retrieval' variant. [default: 3]"
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the held-out split. [default: 0]"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many held-out transitions."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="Tokens the model may write per prediction. [default: 256]"),
    timeout_s: float | None = timeout_option("the model", default=None),
    out: Path | None = typer.Option(
        None,
        "--out",
        parser=path_given,
        metavar="PATH",
        callback=out_folder,
        help="Folder for report.json and fidelity.png; an eval that ends in an error writes neither (a report already there is "
        "kept). [default: experience-eval]",
    ),
    config: Path | None = config_option("experience_eval"),
    as_json: bool = JsonOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Measure how well the experience model predicts held-out real tool answers, per tool.

    Predicts held-out real transitions without retrieval, with retrieval and (with --trained) with retrieval
    and the trained experience model; per tool: exact match, token F1, error/success agreement and reward
    agreement. Writes OUT/report.json (a replay config's fidelity gate reads it) and OUT/fidelity.png.

    Settings come from the [experience_eval] table of --config (the same keys as the flags: model, store, held_out,
    retriever, retriever_settings, top_k, ...), flags override them.

    A model that stops answering (its server down: failing after the client's retries and not answering GET /models
    either) stops the eval at that prediction with an error, as it stops a replay; an eval that ends in an error writes
    no report, so one already in OUT is kept. A prediction the server fails on while it still answers (a per-input
    crash) is counted as a model error, and the eval goes on."""
    from ee_middleware._files import atomic_write_text
    from ee_middleware.errors import ModelError, hide_credentials
    from ee_middleware.replay.experience_config import EVAL_TABLE, ExperienceEvalConfig
    from ee_middleware.replay.experience_eval import split_store, unanswered, variant_plan, write_chart
    from ee_middleware.replay.sandboxes.experience import ExperienceSandbox

    cfg = ExperienceEvalConfig.load(
        config,
        model=model,
        trained=trained,
        store=store,
        app=app_name,
        held_out=held_out,
        retriever=retriever,
        retriever_settings=_retriever_settings(retriever_setting),
        top_k=top_k,
        seed=seed,
        limit=limit,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
        out=out,
    )
    check_out_folder(ctx, cfg, config, EVAL_TABLE, ("report.json", "fidelity.png"))
    model, trained, app_name, held_out, top_k, out = cfg.model, cfg.trained, cfg.app, cfg.held_out, cfg.top_k, cfg.out
    max_tokens, timeout_s = cfg.max_tokens, cfg.timeout_s
    opened = open_job_store(cfg.store, store_origin(ctx, config, EVAL_TABLE))
    # a split of part of the store would measure the model on part of it; what a retriever's code prints goes to stderr
    with user_output_to_stderr(), reading_store(allow_partial=allow_partial):
        split = split_store(
            opened,
            share=held_out,
            seed=cfg.seed,
            limit=cfg.limit,
            retriever=cfg.retriever,
            retriever_settings=cfg.retriever_settings,
            app=app_name,
        )
    if not split.held_out:
        raise typer.BadParameter(
            "No held-out transition: the store needs at least two approved trajectories with tool calls"
            + (f" of the app {app_name!r}{other_apps_hint(opened, app_name)}." if app_name is not None else "."),
            param_hint="--app" if app_name is not None else "--store",
        )
    if not len(split.index):
        raise all_held_out(
            held_out,
            len(split.held_out_ids),
            "nothing is left in the replay buffer, so the 'retrieval' variant would be the model without retrieval (and a "
            "replay's fidelity gate reads that variant)",
            app_name,
        )
    sandboxes = []  # an endpoint that is down fails here, before any prediction
    done = [0]  # predictions made, to say where a model that stopped answering stopped the eval
    # what the model's code prints (a module:factory, a local model) goes to stderr: stdout holds the answer alone
    with user_output_to_stderr():
        try:
            timing = {"timeout_s": timeout_s, "timeout_knob": TIMEOUT_KNOB}
            sandboxes.append(ExperienceSandbox(model, max_tokens=max_tokens, index=split.index, **timing))
            if trained is not None:
                sandboxes.append(ExperienceSandbox(trained, max_tokens=max_tokens, index=split.index, **timing))
            try:
                report = _run(sandboxes[0], sandboxes[1] if trained else None, split, top_k, quiet=as_json, done=done)
            except ModelError as exc:
                # the model gave no answer after the client's retries and its server does not answer GET /models (it
                # died), or it refuses every request: the predictions left would all fail alike, so the eval stopped
                # there, as a replay does, and writes no report
                if len(exc.args) == 1:
                    plan = variant_plan(sandboxes[0], sandboxes[1] if trained else None, top_k)
                    variant, variant_sandbox, _ = plan[min(done[0] // len(split.held_out), len(plan) - 1)]
                    stopped = (
                        f"the evaluation stopped at prediction {done[0] + 1} of {len(split.held_out) * len(plan)} "
                        f"({variant!r} variant, {hide_credentials(variant_sandbox.model)})"
                    )
                    exc.args = (f"{exc} ({stopped}; {_not_written(out)}; re-run the same command once the model answers.)",)
                raise
        finally:
            for sandbox in sandboxes:
                sandbox.close()
    import json

    report["app"] = app_name
    report["advice"] = prediction_advice(report, max_tokens)
    error = None  # or: a model that answered no prediction (each request refused, or each answer no completion)
    down = unanswered(report)
    if down is not None:
        error = (
            f"{down}: a report would measure nothing for it, so {_not_written(out)}; fix what the reason names and re-run the same command."
        )
        report["chart"] = report["report"] = None
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        report["chart"] = str(out / "fidelity.png") if write_chart(report, out / "fidelity.png") else None
        report["report"] = str(out / "report.json")
    report["error"] = error
    if as_json:
        print_json(report)
    else:
        _print_table(report)
    if report["error"] is not None:
        typer.secho(f"error: {report['error']}", err=True, fg="red")
        raise typer.Exit(1)


@app.command(
    "dataset",
    epilog=examples("ee experience dataset --store ./experience --out ./em-data", "ee experience dataset --config experience.toml"),
)
def dataset_cmd(
    ctx: typer.Context,
    store: str | None = OptionalStoreOption,
    app_name: str | None = AppOption,
    out: Path | None = typer.Option(
        None,
        "--out",
        parser=path_given,
        metavar="PATH",
        callback=out_folder,
        help="Folder for em.parquet (train on it with 'ee train --schedule experience-model').",
    ),
    teacher: str | None = typer.Option(
        None, "--teacher", help="Who writes the reasoning: template, local:DIR, openai:BASE_URL#MODEL. [default: template]"
    ),
    held_out: float | None = typer.Option(
        None,
        "--held-out",
        callback=number_between(0, 1),
        help="Share of the approved trajectories held out, as 'ee experience eval' holds them out (at least one, also at 0). "
        "[default: 0.2]",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the held-out split (as 'ee experience eval'). [default: 0]"),
    top_k: int | None = typer.Option(None, "--top-k", min=0, help="Retrieved real transitions in each prompt. [default: 3]"),
    retriever: str | None = RetrieverOption,
    retriever_setting: list[str] | None = RetrieverSettingOption,
    timeout_s: float | None = timeout_option("the teacher", default=None),
    config: Path | None = config_option("experience_dataset"),
    as_json: bool = JsonOption,
    progress: bool = ProgressOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Build the experience model's training rows (em.parquet) from the real transitions of the store's approved trajectories.

    Each row: the serving prompt (task, state, retrieved transitions, call) -> reasoning, real observation, reward.
    The held-out share is left out, so 'ee experience eval' with the same share and seed measures
    transitions never trained on. Settings come from the [experience_dataset] table of --config (the same keys as the
    flags: store, out, teacher, held_out, retriever, retriever_settings, ...), flags override them."""
    from ee_middleware._files import atomic_write_parquet
    from ee_middleware.replay.experience_config import DATASET_TABLE, TEMPLATE_TEACHER, ExperienceDatasetConfig
    from ee_middleware.replay.experience_eval import split_store
    from ee_middleware.trainers.datasets.em import build_em

    cfg = ExperienceDatasetConfig.load(
        config,
        store=store,
        app=app_name,
        out=out,
        teacher=teacher,
        held_out=held_out,
        seed=seed,
        top_k=top_k,
        retriever=retriever,
        retriever_settings=_retriever_settings(retriever_setting),
        timeout_s=timeout_s,
    )
    check_out_folder(ctx, cfg, config, DATASET_TABLE, ("em.parquet",))
    app_name, out, teacher, held_out, seed = cfg.app, cfg.out, cfg.teacher, cfg.held_out, cfg.seed
    opened = open_job_store(cfg.store, store_origin(ctx, config, DATASET_TABLE))
    show = progress and not as_json
    client = None

    def on_progress(done: int, total: int) -> None:
        if total:  # none to build is an error below, the only line on stderr
            bars.update("building em", done, total)

    # a local teacher's own loading bars ("Loading weights") are off where the command draws none
    with library_bars_off(enabled=not show), ProgressBars(enabled=show) as bars:
        if teacher != TEMPLATE_TEACHER:
            from ee_middleware.replay.sandboxes.experience import build_model_client

            client = build_model_client(teacher, timeout_s=cfg.timeout_s, timeout_knob=TIMEOUT_KNOB)
        try:
            # what a local teacher or a retriever's code prints goes to stderr: stdout holds the answer alone
            with user_output_to_stderr(), reading_store(allow_partial=allow_partial):
                # the split eval makes (same share and seed): to tell a share that holds out everything from a bare store
                split = split_store(
                    opened,
                    share=held_out,
                    seed=seed,
                    retriever=cfg.retriever,
                    retriever_settings=cfg.retriever_settings,
                    app=app_name,
                )
                frame = build_em(
                    opened,
                    held_out=held_out,
                    seed=seed,
                    top_k=cfg.top_k,
                    teacher=client or "template",
                    teacher_name=teacher,
                    retriever=split.index.retriever,
                    on_progress=on_progress,
                    split=split,
                    app=app_name,
                )
        finally:
            if client is not None:
                client.close()
    if frame.height == 0 and split.held_out_ids:  # every trajectory with a transition to build from is held out
        raise all_held_out(
            held_out,
            len(split.held_out_ids),
            "no real transition is left to build em rows from (the held-out ones are what 'ee experience eval' measures the "
            "model on, never trained on)",
            app_name,
        )
    if frame.height == 0:
        raise typer.BadParameter(
            "No real transition of an approved trajectory"
            + (f" of the app {app_name!r}" if app_name is not None else "")
            + " outside the held-out share: record or approve more trajectories (pending ones wait for 'ee traces approve')"
            + (f"{other_apps_hint(opened, app_name)}." if app_name is not None else "."),
            param_hint="--app" if app_name is not None else "--store",
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(frame, out / "em.parquet")  # a full disk, a file-size limit: an OSError naming em.parquet
    flagged = frame.filter(frame["quality_flags"] != "{}").height
    summary = {
        "path": str(out / "em.parquet"),
        "rows": frame.height,
        "teacher": teacher,
        "held_out": held_out,
        "seed": seed,
        "app": app_name,
        "retriever": split.index.retriever_name,
        "retriever_settings": split.shown_retriever_settings,
        "flagged": flagged,
    }
    if as_json:
        print_json(summary)
        return
    typer.echo(f"{frame.height} em rows written to {summary['path']} (teacher {teacher}; {flagged} reasoning(s) replaced by the template)")


def _retriever_settings(pairs: list[str] | None) -> dict[str, Any] | None:
    """``--retriever-setting KEY=VALUE`` flags as the retriever's keyword options (``None``: none given)."""
    return key_value_settings(pairs, "--retriever-setting", "k1=1.2") if pairs else None


def prediction_advice(report: dict[str, Any], max_tokens: int) -> list[str]:
    """What to do about the failed predictions of ``report`` beyond what each reason says (``advice`` in the report and
    the table): answers cut off at ``max_tokens`` before any JSON object began (:data:`~ee_middleware.replay.sandboxes.
    experience.CUT_BEFORE_JSON`) get the model advice beside the max_tokens one their reason gives, as ``ee replay
    run``'s error does: prose runs to any max_tokens, so more tokens alone do not make a model that writes prose
    answer the JSON asked for."""
    from ee_middleware.replay.sandboxes.experience import CUT_BEFORE_JSON

    prose = sum(
        count
        for data in report["variants"].values()
        for reason, count in (data["overall"].get("failure_reasons") or {}).items()
        if reason.startswith(CUT_BEFORE_JSON)
    )
    if not prose:
        return []
    return [
        f"{prose} answer(s) were cut off at max_tokens before any JSON object began: more tokens help an answer on its way "
        f"to the JSON object (raise --max-tokens (now {max_tokens})), but prose runs to any max_tokens, so the model may "
        "not be answering in the required JSON shape. It must answer one JSON object with an 'observation' field (an "
        "untrained base model rarely does: train one on `ee experience dataset`'s rows with `ee train --schedule "
        "experience-model`, and measure it with --trained)."
    ]


def all_held_out(share: float, held: int, consequence: str, app: str | None) -> typer.BadParameter:
    """The refusal of a ``--held-out`` share that holds out all ``held`` approved trajectories with tool calls (of the
    ``--app`` ``app``, where one is given), saying what that leaves (``consequence``) and what to do: ``ee experience
    eval`` and ``ee experience dataset`` share the split, and say the same."""
    of_app = f" of the app {app!r}" if app is not None else ""
    if held == 1:  # the one held out at any share, and the only one
        holder = f"the app {app!r} has" if app is not None else "the store has"
        return typer.BadParameter(
            f"{holder} one approved trajectory with tool calls, and one is always held out (also at --held-out 0: "
            f"ee experience eval measures the model on it, so no dataset may train on it): {consequence}. Record and "
            "approve more trajectories" + (" of it, or choose another --app." if app is not None else "."),
            param_hint="--app" if app is not None else "--store",
        )
    return typer.BadParameter(
        f"a share of {share:g} holds out all {held} approved trajectories with tool calls{of_app}: {consequence}. Hold out a "
        "smaller share (e.g. --held-out 0.2) or record and approve more trajectories.",
        param_hint="--held-out",
    )


def _not_written(out: Path) -> str:
    """What a failed eval left in ``out``: nothing new, and the report of an earlier run, if any, as it was."""
    if (out / "report.json").is_file():
        return f"no report was written, and {out / 'report.json'} from an earlier run is kept"
    return f"no report was written to {out}"


def _run(sandbox: Any, trained: Any, split: Any, top_k: int, *, quiet: bool, done: list[int]) -> dict[str, Any]:
    """:func:`~ee_middleware.replay.experience_eval.evaluate`, with a progress bar unless ``quiet``; ``done[0]`` counts
    the predictions made."""
    from ee_middleware.replay.experience_eval import evaluate, variant_plan

    def made(n: int) -> None:
        done[0] += n

    if quiet:
        return evaluate(sandbox, split, top_k=top_k, trained=trained, progress=made)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = len(split.held_out) * len(variant_plan(sandbox, trained, top_k))
    with Progress(
        TextColumn("[bold]predict[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=progress_console()
    ) as bar:
        task = bar.add_task("predict", total=total)

        def advance(n: int) -> None:
            made(n)
            bar.advance(task, n)

        return evaluate(sandbox, split, top_k=top_k, trained=trained, progress=advance)


def _print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"experience-model fidelity: {report['held_out_transitions']} held-out transitions, {report['indexed_transitions']} "
        f"indexed ({report['retriever']}, top-{report['top_k']})",
        caption=escape("; ".join(f"{name}: {data['model']}" for name, data in report["variants"].items())),
    )
    model_errors = bool(report.get("model_errors"))  # a column only when the model failed on some prediction
    columns = (
        "variant",
        "tool",
        "n",
        "failed",
        *(("model err.",) if model_errors else ()),
        "exact",
        "token F1",
        "error agr.",
        "reward agr.",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "tool") else "right")
    for variant, data in report["variants"].items():
        for tool, row in [*data["tools"].items(), ("(all)", data["overall"])]:
            reward = "-" if row["reward_agreement"] is None else f"{row['reward_agreement']:.2f}"
            table.add_row(
                escape(variant),
                escape(tool),
                str(row["n"]),
                str(row["failed"]),
                *((str(row["model_errors"]),) if model_errors else ()),
                f"{row['exact']:.2f}",
                f"{row['token_f1']:.3f}",
                f"{row['error_agreement']:.2f}",
                reward,
            )
    out = console()
    out.print(table)
    for variant, data in report["variants"].items():
        overall = data["overall"]
        if overall["failed"]:
            reasons = "; ".join(f"{count} x {reason}" for reason, count in (overall.get("failure_reasons") or {}).items())
            more = overall["failed"] - sum((overall.get("failure_reasons") or {}).values())
            out.print(
                escape(
                    f"{variant}: {overall['failed']} failed: {reasons}"
                    + (f"; {more} for other reasons (report.json, per tool)" if more else "")
                )
            )
    for advice in report.get("advice") or []:
        out.print(escape(advice))
    if model_errors:
        out.print(
            f"{report['model_errors']} prediction(s) got no answer from the model (the request refused, or failed after retries "
            "while the server answered others, or an answer that is no completion): counted as failed, the metrics are over "
            "the answered ones"
        )
    if report["report"] is not None:  # (none written when every prediction of a model failed: see its error line)
        out.print(f"report: {report['report']}" + (f"  chart: {report['chart']}" if report["chart"] else ""))
