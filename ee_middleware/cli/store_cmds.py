"""``ee store``: inspect and maintain an experience store."""

from __future__ import annotations

import typer

from ee_middleware.cli.common import JsonOption, StoreOption, console, open_existing_store, print_json

app = typer.Typer(help="Inspect and maintain an experience store.", no_args_is_help=True)


@app.command("info")
def info(store: str = StoreOption, as_json: bool = JsonOption) -> None:
    """Counts of trajectories by approval, spool segments and Parquet parts."""
    data = open_existing_store(store).info()
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    table = Table(title=f"Experience store {data['root']}", show_header=False)
    for key, value in data.items():
        if key != "root":
            table.add_row(key.replace("_", " "), str(value))
    console().print(table)


@app.command("compact")
def compact(store: str = StoreOption) -> None:
    """Fold finished spool segments into Parquet parts (safe while agents are recording)."""
    folded = open_existing_store(store).compact()
    typer.echo(f"Compacted {folded} spool segment(s) into Parquet parts.")
