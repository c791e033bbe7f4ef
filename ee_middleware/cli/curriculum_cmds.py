"""``ee curriculum``: variants of the tasks whose outcome varies most (DreamGym's task generator)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ee_middleware.cli.common import JsonOption, StoreOption, open_existing_store, print_json

app = typer.Typer(help="The curriculum: new tasks like the ones the policy solves about half the time.", no_args_is_help=True)


@app.command("propose")
def propose_cmd(
    results: Path = typer.Option(..., "--from", help="An eval run's folder (or its results.jsonl / results.parquet)."),
    model: str = typer.Option(
        ..., "--model", "-m", help="The model that writes variants: local:DIR, openai:BASE_URL#MODEL or module:factory."
    ),
    store: str = StoreOption,
    n: int = typer.Option(10, "--n", min=1, help="Variants to write."),
    out: Path = typer.Option(Path("tasks.jsonl"), "--out", help="Where the variants go (JSON lines)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JsonOption,
) -> None:
    """Score each task by the variance p(1-p) of its outcomes, and have MODEL write variants of the
    highest-scoring ones (same tools and environment, validated against the tool schemas)."""
    from ee_middleware._files import atomic_write_text
    from ee_middleware.models.spec import build_chat_client
    from ee_middleware.replay.curriculum import propose, read_results, score_tasks

    scores = score_tasks(read_results(results))
    opened = open_existing_store(store)
    client = build_chat_client(model)
    try:
        proposal = propose(client, scores, opened.iter_trajectories(), n=n, seed=seed)
    finally:
        client.close()
    atomic_write_text(out, "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in proposal.variants))
    summary = {
        "out": str(out),
        "variants": len(proposal.variants),
        "rejected": proposal.rejected,
        "unmatched": proposal.unmatched,
        "top_tasks": [{"task_id": s.task_id, "n": s.n, "p": s.p, "variance": s.variance} for s in scores[:10]],
    }
    if as_json:
        print_json(summary)
        return
    typer.echo(f"{len(proposal.variants)} variants written to {out}")
    for s in scores[:5]:
        typer.echo(f"  {s.task_id}: p={s.p:.2f} p(1-p)={s.variance:.3f} over {s.n} trials")
    if proposal.rejected:
        typer.echo(f"rejected: {proposal.rejected}")
    if proposal.unmatched:
        typer.echo(f"no stored trajectory for (cannot validate): {', '.join(proposal.unmatched[:10])}")
