"""``ee datasets``: build IL/IWM/SR datasets from a store, inspect them, export them."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from ee_middleware._files import file_above
from ee_middleware._limits import INT32_MAX, INT64_MAX, MAX_ALTERNATIVES
from ee_middleware.cli.common import (
    STORE_HELP,
    AllowPartialOption,
    JsonOption,
    ProgressBars,
    ProgressOption,
    check_replay_id,
    console,
    escape,
    examples,
    key_value_settings,
    library_bars_off,
    number_between,
    open_job_store,
    output_file,
    path_given,
    plural,
    print_json,
    reading_store,
    short,
    store_origin,
    visible,
)

app = typer.Typer(help="IL, IWM and SR datasets: build from a store, show, export.", no_args_is_help=True)


@app.command("build", epilog=examples("ee datasets build --store ./experience --kinds il,iwm,sr --out ./data --heldout-share 0.2"))
def build(
    ctx: typer.Context,
    store: str | None = typer.Option(None, "--store", "-s", envvar="EE_STORE", help=STORE_HELP, show_envvar=True),
    out_text: str | None = typer.Option(None, "--out", "-o", help="Output folder for il.parquet, iwm.parquet, sr.parquet.", metavar="PATH"),
    kinds: list[str] | None = typer.Option(
        None,
        "--kinds",
        help="Comma-separated: il,iwm,sr (repeatable: --kinds il --kinds sr builds both). [default: il,iwm,sr]",
        metavar="KINDS",
    ),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        help="SR teacher: template | local:MODEL_DIR | openai:BASE_URL#MODEL | package.module:factory (your own) | the name "
        "of an ee_middleware.teachers entry point. [default: template]",
    ),
    teacher_setting: list[str] | None = typer.Option(
        None,
        "--teacher-setting",
        help="KEY=VALUE option of the teacher (repeatable; VALUE is read as JSON when it parses), e.g. max_tokens=512 or "
        "timeout_s=300 for openai:, or your factory's own.",
    ),
    app_name: str | None = typer.Option(None, "--app", help="Only trajectories of this app."),
    replay_id: str | None = typer.Option(None, "--replay-id", help="Only rollouts of this replay configuration. [default: every replay's]"),
    include_synthetic: bool | None = typer.Option(
        None,
        "--include-synthetic/--no-include-synthetic",
        help="Also use experience-model (synthetic) rollouts: their rows are marked (column synthetic) and counted in datasets.json; "
        "with a held-out rule, those whose model was shown a held-out trajectory are left out.",
        show_default=False,
    ),
    include_sandbox_failures: bool | None = typer.Option(
        None,
        "--include-sandbox-failures/--no-include-sandbox-failures",
        help="Also use rollouts whose observation is the sandbox's own time-out, crash or memory error (left out by default).",
        show_default=False,
    ),
    include_fidelity_mismatches: bool | None = typer.Option(
        None,
        "--include-fidelity-mismatches/--no-include-fidelity-mismatches",
        help="Also use the rollouts of a replay whose sandbox answered the expert's own call unlike production "
        "(fidelity mismatches; left out by default).",
        show_default=False,
    ),
    max_synthetic_share: float | None = typer.Option(
        None,
        "--max-synthetic-share",
        callback=number_between(0, 1),
        help="Cap the share of synthetic-task trajectories (source=curriculum) in the datasets; which stay is seeded. [default: no cap]",
    ),
    chunk_mb: float | None = typer.Option(
        None,
        "--chunk-mb",
        callback=number_between(0, 1_000_000, low_open=True),
        help="Build and write about this many MB of prompt text at a time (bounds memory; same rows). [default: 32]",
    ),
    max_error_share: float | None = typer.Option(None, "--max-error-share", help="Cap on IWM rows with error observations. [default: 0.5]"),
    max_observation_tokens: int | None = typer.Option(
        None, "--max-observation-tokens", max=INT32_MAX, help="IWM observation budget. [default: 512]"
    ),
    sr_k: int | None = typer.Option(
        None, "--sr-k", min=1, max=MAX_ALTERNATIVES, help="Alternatives shown to the SR teacher per state. [default: 3]"
    ),
    heldout_share: float | None = typer.Option(
        None,
        "--heldout-share",
        help="Hold out this share of units (trajectories sharing a thread or a task; seeded, stable as the store grows) into OUT/heldout/.",
    ),
    heldout_ids: Path | None = typer.Option(None, "--heldout-ids", help="Hold out the trajectory ids listed in this file (one per line)."),
    heldout_app: str | None = typer.Option(None, "--heldout-app", help="Hold out every trajectory of this app."),
    heldout_after: str | None = typer.Option(None, "--heldout-after", help="Hold out trajectories started at or after this ISO time."),
    heldout_before: str | None = typer.Option(None, "--heldout-before", help="Hold out trajectories started before this ISO time."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling and the held-out share. [default: 0]"),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML file with a [datasets] table; flags override it."),
    as_json: bool = JsonOption,
    progress: bool = ProgressOption,
    allow_partial: bool = AllowPartialOption,
) -> None:
    """Build datasets from the approved trajectories and their rollouts (optionally with a held-out split that keeps threads and tasks on one side).

    Settings come from the [datasets] table of --config; flags override it. Some keys are named otherwise than their
    flags: iwm_max_error_share (--max-error-share), iwm_max_observation_tokens (--max-observation-tokens),
    heldout_started_after and heldout_started_before (--heldout-after, --heldout-before). Only in the table:
    iwm_include_expert_steps (true: the experts' own steps are IWM rows too, beside the rollouts')."""
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

    cfg = DatasetConfig.load(
        config,
        store=store,
        out=path_given(out_text) if out_text is not None else None,  # (empty or blank: a usage error)
        kinds=",".join(kinds) if kinds else None,  # (--kinds il --kinds sr: both, as --kinds il,sr)
        teacher=teacher,
        teacher_settings=key_value_settings(teacher_setting, "--teacher-setting", "max_tokens=512") if teacher_setting else None,
        app=app_name,
        replay_id=replay_id,
        include_synthetic=include_synthetic,
        include_sandbox_failures=include_sandbox_failures,
        include_fidelity_mismatches=include_fidelity_mismatches,
        max_synthetic_share=max_synthetic_share,
        chunk_mb=chunk_mb,
        iwm_max_error_share=max_error_share,
        iwm_max_observation_tokens=max_observation_tokens,
        sr_k=sr_k,
        heldout_share=heldout_share,
        heldout_ids=heldout_ids,
        heldout_app=heldout_app,
        heldout_started_after=heldout_after,
        heldout_started_before=heldout_before,
        seed=seed,
    )
    opened = open_job_store(cfg.store, store_origin(ctx, config, "datasets"))  # names where a missing store came from
    try:
        if cfg.replay_id is not None:
            with reading_store(allow_partial=allow_partial):
                check_replay_id(
                    opened,
                    cfg.replay_id,
                    cfg.store,
                    given=f"--replay-id {cfg.replay_id} (or replay_id in [datasets])",
                    without="leave --replay-id out to use every replay's rollouts (none would be used)",
                )
    finally:
        opened.close()
    out_console = console()
    # the bars start with the first stage, not before the work: an early error is then the only line on stderr
    with ProgressBars(enabled=progress and not as_json) as bars:

        def on_stage(kind: str) -> None:
            bars.complete()  # the stage before is done
            bars.update(f"building {kind}", 0)

        def on_sr(done: int, total: int) -> None:
            bars.update("building sr", done, total)

        # (a local teacher's own bars, transformers' "Loading weights", are off where the command draws none)
        with reading_store(allow_partial=allow_partial), library_bars_off(enabled=not progress or as_json):
            summary = build_datasets(cfg, on_stage=on_stage, on_sr_progress=on_sr, refuse_out_in_store=True)
        bars.complete()
    for line in _warning_lines(summary):  # on stderr, --json or not (stdout holds the JSON alone)
        typer.secho(f"warning: {line}", err=True, fg="yellow")
    if as_json:
        print_json(summary)
        return
    from rich.table import Table

    table = Table(
        title=f"datasets in {cfg.out} (source {summary['source_hash']}: {summary['trajectories']} trajectories, {summary['rollouts']} rollouts)"
    )
    for column in ("dataset", "rows", "seconds", "notes"):
        table.add_column(column, justify="right" if column in ("rows", "seconds") else "left")
    split = summary.get("split", {})
    rows = [(Path(i["path"]).name, i) for i in summary["datasets"].values()]
    rows += [(f"heldout/{Path(i['path']).name}", i) for i in split.get("datasets", {}).values()]
    for name, info in rows:
        notes = {k: v for k, v in info.items() if k not in ("path", "rows", "seconds")}
        table.add_row(name, str(info["rows"]), f"{info['seconds']:.2f}", escape(", ".join(f"{k}={v}" for k, v in notes.items())))
    out_console.print(table)
    _print_replays(out_console, summary)
    failures = summary.get("sandbox_failures_left_out") or {}
    if failures.get("total"):
        kinds_left = ", ".join(f"{n} {kind}" for kind, n in failures.items() if kind != "total" and n)
        out_console.print(
            f"left out {failures['total']} rollout(s) whose observation is the sandbox's own failure ({kinds_left}), not a tool's "
            "answer; --include-sandbox-failures keeps them"
        )
    grounded = (summary.get("rollouts_left_out") or {}).get("synthetic_grounded_on_held_out")
    if grounded:
        out_console.print(
            f"left out {grounded} synthetic rollout(s) of training trajectories whose experience model was shown real "
            "transitions of held-out trajectories as examples: their predictions could carry held-out observations into training"
        )
    stale = summary.get("stale_removed") or []
    if stale:
        out_console.print(
            f"removed {len(stale)} file(s) of an earlier build in {cfg.out} that this build does not write "
            f"({', '.join(stale)}): the folder holds this build only"
        )
    synthetic = summary.get("synthetic_tasks")
    if synthetic and synthetic["max_share"] is None:
        out_console.print(
            f"synthetic tasks (source={synthetic['source']}): {synthetic['synthetic_trajectories']} trajectories rolled out on "
            f"generated tasks beside {synthetic['real_trajectories']} real ones"
            + (" in training" if synthetic.get("heldout") else "")
            + ", all used (cap them with --max-synthetic-share)"
        )
    elif synthetic:
        out_console.print(
            f"synthetic tasks (source={synthetic['source']}): kept {synthetic['kept']} of {synthetic['synthetic_trajectories']} "
            f"trajectories beside {synthetic['real_trajectories']} real ones (max share {synthetic['max_share']}), "
            f"left out {synthetic['left_out']}" + (" in training" if synthetic.get("heldout") else "")
        )
    if split:
        out_console.print(
            f"held out: {len(split['heldout_trajectories'])} trajectories (never trained on: ee train refuses heldout/ files), "
            f"{len(split['train_trajectories'])} for training"
        )
        added = split.get("added") or {}
        if added.get("trajectories"):
            out_console.print(
                f"  of them {added['trajectories']} added to keep held-out targets out of training: {added['same_task']} ask the "
                f"task of a held-out trajectory, {added['later_in_thread']} continue a held-out run's thread, "
                f"{added.get('nested_run', 0)} run within a held-out run or hold one (an agent invoked in a tool), "
                f"{added.get('variant_of_task', 0)} are curriculum rollouts on a variant of a held-out task (split.added in "
                "datasets.json lists them)"
            )


def _warning_lines(summary: dict[str, Any]) -> list[str]:
    """The build's warnings (``summary``: :func:`build_datasets`'s), each a ``warning:`` line's text: tool schemas
    missing, rollouts left out for fidelity mismatches, a held-out rule that holds out nothing, a held-out unit grown
    large."""
    lines = []
    missing = summary.get("tool_schemas_missing")
    if missing:
        lines.append(visible(missing["warning"]))
    left = _fidelity_warning(summary)
    if left:
        lines.append(left)
    split = summary.get("split") or {}
    moved = (summary.get("heldout_moved_to_training") or {}).get("warning")
    for warning in (split.get("nothing_held_out"), (split.get("units") or {}).get("warning"), moved):
        if warning:
            lines.append(warning)
    return lines


def _print_replays(out_console: Any, summary: dict[str, Any]) -> None:
    """The line naming the replays whose rollouts were used."""
    replays = summary.get("replays") or {}
    used = replays.get("used") or []
    if used:

        def named(replay: dict[str, Any]) -> str:
            how = [f"{key} {replay[key]}" for key in ("policy", "sandbox") if replay.get(key)]
            how += [f"K={replay['k']}"] if replay.get("k") is not None else []
            counts = f"{plural(replay['trajectories'], 'trajectory', 'trajectories')}, {plural(replay['rollouts'], 'rollout', 'rollouts')}"
            return f"{replay['replay_id']} ({', '.join(how) + ': ' if how else ''}{counts})"

        several = replays.get("trajectories_with_several") or 0
        line = f"rollouts from {plural(len(used), 'replay', 'replays')}: {'; '.join(named(r) for r in used)}"
        if several:
            line += (
                f". {plural(several, 'trajectory has', 'trajectories have')} rollouts of more than one replay: all are used "
                "(every replay's rollouts by default; --replay-id ID uses one)"
            )
        out_console.print(escape(line), highlight=False)


def _fidelity_warning(summary: dict[str, Any]) -> str | None:
    """The warning for the rollouts left out for fidelity mismatches, or ``None``."""
    left = summary.get("fidelity_mismatches_left_out") or {}
    if not left.get("rollouts"):
        return None
    listed = [
        f"replay {r['replay_id']} of {r['trajectory_id']}"
        + (f": {r['tool']} at step {r['first_step']}" if r.get("tool") is not None else "")
        for r in left["replays"]
    ]
    more = len(listed) + left.get("replays_not_listed", 0) - 3
    where = "; ".join(listed[:3]) + (f"; {more} more" if more > 0 else "")
    own = sum(r["rollouts"] for r in left["replays"])
    wrong_tools = left.get("wrong_tools") or []
    elsewhere = ""
    if wrong_tools:
        calls = sum(t["rollouts"] for t in wrong_tools)
        tools = ", ".join(sorted({t["tool"] for t in wrong_tools}))
        elsewhere = f", and {plural(calls, 'call', 'calls')} to {tools} the same sandbox answered in other trajectories"
    return (
        f"left out {plural(left['rollouts'], 'rollout', 'rollouts')} of replays whose sandbox answered the expert's "
        f"own recorded call otherwise than production (fidelity mismatches: {visible(where)}): "
        f"{'their' if len(listed) != 1 else 'its'} {plural(own, 'rollout', 'rollouts')} from that step on{visible(elsewhere)}. "
        "Fix the sandbox and replay again (ee replay show TRAJECTORY_ID shows the diff; a tool whose answer holds the time "
        "or a fresh id never matches: docs/sandboxes.md says how to keep those in the world); --include-fidelity-mismatches "
        "uses them."
    )


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    hf = "hf"


EXAMPLE_CHARS = 8000
"""How much of a rendered example ``ee datasets show`` prints without ``--full``: its head and its tail."""


def example_excerpt(text: str, limit: int = EXAMPLE_CHARS) -> str:
    """``text`` whole, or longer than ``limit`` characters its first and last halves of ``limit`` with a line saying how
    much of the middle was left out (a rendered example holding a tool result of megabytes filled the terminal)."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit // 2], text[-(limit // 2) :]
    return f"{head}\n[... {len(text) - len(head) - len(tail):,} characters of this example left out: --full prints it whole ...]\n{tail}"


def _png_path(given: str) -> Path:
    """``--plot``'s file: a PNG, so a path without a suffix gets ``.png`` (the file written is the one reported); another
    suffix, a folder (or a path ending in ``/``), or a path under a file is a usage error before any work."""
    plot = output_file(given, "lengths.png", "--plot")
    if plot.is_dir():
        raise typer.BadParameter(f"{plot} is a folder: give the file to write, e.g. --plot {plot / 'lengths.png'}.")
    if plot.suffix == "":
        plot = plot.with_name(plot.name + ".png")
    if plot.suffix.lower() != ".png":
        raise typer.BadParameter(f"{plot}: the histograms are a PNG; give a path ending in .png, e.g. --plot {plot.with_suffix('.png')}.")
    if plot.is_dir():
        raise typer.BadParameter(f"{plot} is a folder: give the file to write, e.g. --plot {plot / 'lengths.png'}.")
    blocking = file_above(plot)
    if blocking is not None:
        raise typer.BadParameter(f"{blocking} is a file, not a folder, so {plot} cannot be written under it: choose another --plot.")
    return plot


@app.command("show", epilog=examples("ee datasets show ./data --tokenizer ./models/smollm2 --max-length 2048"))
def show(
    folder: Path = typer.Argument(..., help="A folder written by ee datasets build (or one .parquet file)."),
    examples: int = typer.Option(2, "--examples", "-n", min=0, max=INT64_MAX, help="Rendered examples per dataset."),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="A local tokenizer folder: real token counts and chat-template rendering."
    ),
    plot_text: str | None = typer.Option(
        None, "--plot", help="Also write the token-length histograms as a PNG here (missing folders are made).", metavar="FILE.png"
    ),
    max_length: int | None = typer.Option(
        None, "--max-length", min=8, help="With --tokenizer: what training at this many tokens per row would cut, per row kind."
    ),
    full: bool = typer.Option(
        False, "--full", help=f"Print each example whole (longer than {EXAMPLE_CHARS:,} characters, its middle is left out)."
    ),
    as_json: bool = JsonOption,
    progress: bool = ProgressOption,
) -> None:
    """Counts, token-length histograms, a few rendered examples, and (with --max-length) what truncation would cut.

    Rows are read as ee train reads them: an unreadable file, or a row that is not a chat prompt/completion pair, is an
    error naming it and the command that writes the file again."""
    from ee_middleware.models.chat_template import probe_template
    from ee_middleware.trainers.datasets.build import read_dataset
    from ee_middleware.trainers.datasets.summary import (
        budget_report,
        describe_dataset,
        histogram_lines,
        render_example,
        write_histogram_png,
    )

    plot = _png_path(plot_text) if plot_text is not None else None  # refused before any counting, which may take minutes
    files = [folder] if folder.suffix == ".parquet" else sorted(folder.glob("*.parquet"))
    if not files:
        from ee_middleware.errors import ConfigError

        if folder.is_file():  # (datasets.json, a JSONL export): the build's folder is what to give, or one of its files
            raise ConfigError(
                f"{folder} is not a dataset file (a .parquet file of ee datasets build): give the build's folder "
                f"(ee datasets show {folder.parent}) or one of its .parquet files."
            )
        raise ConfigError(f"No datasets in {folder}. Build them with: ee datasets build --store DIR --out {folder}")
    tok = None
    if tokenizer is not None:
        from ee_middleware.models.local import load_tokenizer

        tok = load_tokenizer(tokenizer)
        if not getattr(tok, "chat_template", None):
            from ee_middleware.errors import ConfigError

            raise ConfigError(
                f"The tokenizer in {tokenizer} has no chat template, so rows cannot be rendered as ee train renders them "
                "(ee train refuses such a base model). Give the base model's own folder (an instruct model), or give this "
                "tokenizer a template: tokenizer.chat_template = TEMPLATE; tokenizer.save_pretrained(DIR)."
            )
    if max_length is not None and tok is None:
        from ee_middleware.errors import ConfigError

        raise ConfigError("--max-length needs --tokenizer DIR: token counts depend on the model's tokenizer and chat template.")
    # counting tokens renders every row through the chat template: minutes for a large dataset (no bar for the estimate)
    with ProgressBars(enabled=progress and not as_json and tok is not None) as bars:
        described = {}
        for f in files:
            frame = read_dataset(f)
            described[f.stem] = describe_dataset(frame, tok, f, on_row=_bar(bars, f"counting tokens {f.name}", frame.height))
        if max_length is not None:
            for f in files:
                frame = read_dataset(f)
                on_row = _bar(bars, f"fitting {f.name} to {max_length} tokens", frame.height)
                described[f.stem]["budget"] = budget_report(frame, f, tok, max_length, on_row=on_row)
    if plot is not None:
        write_histogram_png(described, plot)
    if as_json:
        print_json({name: {k: v for k, v in d.items() if k != "lengths"} for name, d in described.items()})
        return
    out = console()
    for file in files:
        d = described[file.stem]
        out.rule(f"[bold]{escape(file.name)}[/]: {d['rows']} rows")
        out.print(", ".join(f"{k}={v}" for k, v in d["counts"].items()))
        out.print(f"prompt+completion {d['unit']}: min {d['min']}, median {d['median']}, max {d['max']}")
        out.print(f"[dim]lengths: {escape(d['rendering'])}[/]")
        for line in histogram_lines(d["lengths"]):
            out.print(line, highlight=False)
        if "budget" in d:
            out.print(budget_line(d["budget"]), highlight=False)
        frame = read_dataset(file)
        support = probe_template(tok) if tok is not None and examples else None
        for row in frame.head(examples).iter_rows(named=True):
            out.print(
                f"[dim]--- {escape(row['id'])} (trajectory {escape(short(row['trajectory_id'], 12))}, step {row['step_index']}, branch {row['branch_index']})[/]"
            )
            shown = render_example(row, tok, support)
            out.print(visible(shown if full else example_excerpt(shown)), markup=False, highlight=False)
    if plot is not None:
        out.print(f"histograms: {plot}")


def budget_line(budget: dict[str, Any]) -> str:
    """What ``ee datasets show --max-length N`` says of a file's budget report (``budget_report``): the rows over budget
    and what fitting does to them, each way counted (a row fitted in several ways counts under each, but "older turns
    only")."""
    b = budget
    return (
        f"at max_length {b['max_length']}: {b['over_budget']} of {b['rows']} rows over budget ({b['over_budget_share']:.0%}); "
        f"{b['older_turns_dropped_only']} lose older turns only; {b['lost_more_than_older_turns']} lose more "
        f"({b['lost_more_than_older_turns_share']:.0%} of the rows kept): {b['compact_tools']} get compact tool listings, "
        f"{b['messages_shortened']} have a tool result or user message shortened in its middle, "
        f"{b['completion_cut']} keep only the head of their target, "
        f"{b['cut_from_left']} are cut from the left (losing system message, tools or task); "
        f"{b['dropped_completion_too_long']} dropped (completion alone too long)"
        + (
            f"; {b['dropped_control_tokens']} dropped (the tokenizer's control tokens in a message's text)"
            if b.get("dropped_control_tokens")
            else ""
        )
    )


def _bar(bars: ProgressBars, label: str, rows: int) -> Callable[[int], None]:
    """The bar of ``label`` over ``rows`` rows, drawn now at 0, and a callback moving it to the rows done."""
    bars.update(label, 0, rows)
    return lambda done: bars.update(label, done, rows)


@app.command("export", epilog=examples("ee datasets export ./data/il.parquet --out il.jsonl"))
def export(
    dataset: Path = typer.Argument(..., help="A .parquet dataset file."),
    out_text: str = typer.Option(..., "--out", "-o", help="Output file (jsonl) or folder (hf).", metavar="PATH"),
    fmt: ExportFormat = typer.Option(ExportFormat.jsonl, "--format", help="OpenAI chat JSONL, or a Hugging Face dataset saved to disk."),
    heldout: bool = typer.Option(
        False,
        "--heldout",
        help="Export a held-out file (OUT/heldout/*.parquet) too: the export loses the mark that keeps trainers off it, so "
        "use it for evaluation only.",
    ),
) -> None:
    """Export a dataset to OpenAI chat JSONL or a Hugging Face dataset."""
    import polars as pl

    from ee_middleware.trainers.datasets.build import export_chat_jsonl, read_dataset, to_hf_dataset
    from ee_middleware.trainers.datasets.privacy import dataset_redactor
    from ee_middleware.trainers.datasets.rows import SYNTHETIC
    from ee_middleware.trainers.datasets.split import is_heldout_file
    from ee_middleware.trainers.datasets.summary import dataset_kind
    from ee_middleware.trainers.training.data import check_rows

    out = output_file(out_text, f"{dataset.stem}.jsonl") if fmt is ExportFormat.jsonl else path_given(out_text)
    if fmt is ExportFormat.jsonl and out.resolve() == dataset.resolve():
        raise typer.BadParameter(
            f"{out} is the dataset itself: the export would replace the Parquet file with JSONL. Give another file, e.g. "
            f"--out {dataset.with_suffix('.jsonl')}.",
            param_hint="--out",
        )
    frame = read_dataset(dataset)
    # every row read as ee train and ee datasets show read them: one that is no chat prompt/completion pair is named (with
    # the command that writes the file again), never exported as a line no fine-tuning service takes
    check_rows(frame, dataset, dataset_kind(frame, dataset))
    if not heldout and is_heldout_file(pl.read_parquet_metadata(dataset)):
        raise typer.BadParameter(
            f"{dataset} is a held-out file (ee.split=heldout in its metadata, which ee train refuses): its export would carry "
            "no such mark, and a trainer given it would learn the very targets evaluation scores. To export it for "
            "evaluation, pass --heldout.",
            param_hint="DATASET",
        )
    redactor = dataset_redactor(dataset)  # the redaction rules the dataset was built with
    synthetic = int(frame[SYNTHETIC].fill_null(False).sum()) if SYNTHETIC in frame.columns else 0
    if fmt is ExportFormat.jsonl:
        n = export_chat_jsonl(frame, out, redactor=redactor)
        if synthetic:
            typer.echo(
                f"warning: {synthetic} of the {frame.height} rows were built from experience-model predictions (the synthetic "
                "column: observations a model wrote, not a tool), and OpenAI chat JSONL has no place to mark them. Export "
                "with --format hf to keep the column, or rebuild without --include-synthetic.",
                err=True,
            )
    else:
        to_hf_dataset(frame, redactor=redactor).save_to_disk(str(out))
        n = frame.height
    console().print(f"Wrote {n} examples to {out}")
