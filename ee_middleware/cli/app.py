"""The ``ee`` command line. Heavy imports happen inside commands, so ``ee --help`` stays fast."""

from __future__ import annotations

import logging
from typing import Any

import typer
from typer.core import TyperGroup

from ee_middleware._version import __version__
from ee_middleware.cli import (
    adapters_cmds,
    bfcl_cmds,
    curriculum_cmds,
    datasets_cmds,
    eval_cmds,
    experience_cmds,
    improve_cmds,
    replay_cmds,
    serve_cmds,
    store_cmds,
    traces,
    train_cmds,
)
from ee_middleware.errors import EEError


class _Root(TyperGroup):
    """Turns library errors into one red line on stderr and exit code 1 (no traceback)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EEError as exc:
            typer.secho(f"error: {exc}", err=True, fg="red")
            raise typer.Exit(1) from exc


app = typer.Typer(
    cls=_Root,
    name="ee",
    help="ee-middleware: make LangGraph agents learn from their own tool-use traces.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
app.add_typer(traces.app, name="traces")
app.add_typer(store_cmds.app, name="store")
app.add_typer(replay_cmds.app, name="replay")
app.add_typer(bfcl_cmds.app, name="bfcl")
app.add_typer(datasets_cmds.app, name="datasets")
app.add_typer(eval_cmds.app, name="eval")
train_cmds.register(app)
app.add_typer(adapters_cmds.app, name="adapters")
app.add_typer(serve_cmds.app, name="serve")
app.add_typer(experience_cmds.app, name="experience")
app.add_typer(curriculum_cmds.app, name="curriculum")
improve_cmds.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ee-middleware {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail to stderr."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Entry point of the ``ee`` script."""
    app()
