"""``ee experience``: the experience model (DreamGym) — how far it can be trusted, per tool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ee_middleware.cli.common import JsonOption, StoreOption, console, open_existing_store, print_json

app = typer.Typer(help="The experience model: a language model standing in for tools that cannot be replayed.", no_args_is_help=True)


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="The experience model: local:DIR[@ADAPTER], openai:BASE_URL#MODEL or module:factory."
    ),
    store: str = StoreOption,
    held_out: float = typer.Option(
        0.2, "--held-out", min=0.0, max=1.0, help="Share of trajectories held out (never indexed, never retrieved)."
    ),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Retrieved real transitions per prediction in the 'retrieval' variant."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many held-out transitions."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Tokens the model may write per prediction."),
    out: Path = typer.Option(Path("experience-eval"), "--out", help="Folder for report.json and fidelity.png."),
    as_json: bool = JsonOption,
) -> None:
    """Predict held-out real transitions without and with retrieval; per tool: exact match, token F1,
    error/success agreement and reward agreement. Writes OUT/report.json (a replay config's fidelity
    gate reads it) and OUT/fidelity.png."""
    from ee_middleware._files import atomic_write_text
    from ee_middleware.replay.experience_eval import split_store, write_chart
    from ee_middleware.replay.sandboxes.experience import ExperienceSandbox

    opened = open_existing_store(store)
    split = split_store(opened, share=held_out, seed=seed, limit=limit)
    if not split.held_out:
        raise typer.BadParameter("No held-out transition: the store needs at least two trajectories with tool calls.", param_hint="--store")
    sandbox = ExperienceSandbox(model, max_tokens=max_tokens)  # an endpoint that is down fails here, before any prediction
    try:
        report = _run(sandbox, split, top_k, quiet=as_json)
    finally:
        sandbox.close()
    import json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    report["chart"] = str(out / "fidelity.png") if write_chart(report, out / "fidelity.png") else None
    report["report"] = str(out / "report.json")
    if as_json:
        print_json(report)
        return
    _print_table(report)


def _run(sandbox: Any, split: Any, top_k: int, *, quiet: bool) -> dict[str, Any]:
    from ee_middleware.replay.experience_eval import VARIANTS, evaluate

    if quiet:
        return evaluate(sandbox, split, top_k=top_k)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = len(split.held_out) * len(VARIANTS)
    with Progress(TextColumn("[bold]predict[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console()) as bar:
        task = bar.add_task("predict", total=total)
        return evaluate(sandbox, split, top_k=top_k, progress=lambda n: bar.advance(task, n))


def _print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"experience-model fidelity: {report['held_out_transitions']} held-out transitions, {report['indexed_transitions']} indexed"
    )
    for column in ("variant", "tool", "n", "failed", "exact", "token F1", "error agr.", "reward agr."):
        table.add_column(column, justify="left" if column in ("variant", "tool") else "right")
    for variant, data in report["variants"].items():
        for tool, row in [*data["tools"].items(), ("(all)", data["overall"])]:
            reward = "-" if row["reward_agreement"] is None else f"{row['reward_agreement']:.2f}"
            table.add_row(
                variant,
                tool,
                str(row["n"]),
                str(row["failed"]),
                f"{row['exact']:.2f}",
                f"{row['token_f1']:.3f}",
                f"{row['error_agreement']:.2f}",
                reward,
            )
    out = console()
    out.print(table)
    out.print(f"report: {report['report']}" + (f"  chart: {report['chart']}" if report["chart"] else ""))
