"""The ``ee`` command line. Heavy imports happen inside commands, so ``ee --help`` stays fast."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any, NoReturn

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
from ee_middleware.messages import one_line


class _Root(TyperGroup):
    """Turns failures into one red line on stderr and exit code 1 (no traceback): library errors as
    they are, file system errors with the path and what to check, anything else as an unexpected
    error (``ee --verbose ...`` lets it through with its traceback)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EEError as exc:
            _fail(str(exc), exc)
        except (typer.TyperException, typer.Exit, typer.Abort):  # usage errors, exits: typer prints them
            raise
        except OSError as exc:
            _fail(_describe_os_error(exc), exc)
        except Exception as exc:
            if ctx.params.get("verbose"):
                raise
            _fail(
                f"unexpected {type(exc).__name__}: {one_line(str(exc), 300)} (a bug in ee-middleware or a case it does not "
                "check yet: run the command again as `ee --verbose ...` for the traceback, and report it)",
                exc,
            )


def _fail(message: str, exc: BaseException) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(1) from exc


def _describe_os_error(exc: OSError) -> str:
    """What went wrong with which path, and what to check (not Python's ``[Errno 17] File exists: 'x'``). An error that
    names no path (a write to an open file on a full disk) says so instead of naming 'a path'."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        unnamed = f"{reason} (the operation that failed names no file)"
        if exc.errno == errno.ENOSPC:
            return f"{unnamed}. Free some space on the disks this command writes to (df -h shows them), or give it other paths."
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            return f"{unnamed}. Check that the folders this command writes to are writable."
        return f"{unnamed}."
    path = exc.filename
    if isinstance(exc, FileExistsError) and not Path(path).is_dir():
        return f"{path} is a file, not a folder: choose another path, or move the file away."
    if isinstance(exc, NotADirectoryError):
        return f"{path}: part of this path is a file, not a folder: choose another path."
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder; a file is expected there. Give a file's path."
    if isinstance(exc, PermissionError):
        return f"{path}: {reason}. Check the permissions of it and its folder, or choose another path."
    if isinstance(exc, FileNotFoundError):
        return f"{path}: {reason}. Check the path."
    if exc.errno == errno.ENOSPC:
        return f"{path}: {reason}. Free some space, or choose another path."
    return f"{path}: {reason}."


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
