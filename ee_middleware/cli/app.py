"""The ``ee`` command line. Heavy imports happen inside commands, so ``ee --help`` stays fast."""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
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
from ee_middleware.errors import EEError, MissingSettingError
from ee_middleware.messages import one_line


class _Root(TyperGroup):
    """Turns failures into one red line on stderr and exit code 1 (no traceback): library errors as
    they are, file system errors with the path and what to check, an error raised in a plug-in's
    code (a store's, a sandbox's) with the plug-in and the line, anything else as an unexpected
    error. ``ee --verbose ...`` lets every error but ee's own through with its traceback, and prints
    the traceback of a plug-in's error that ee reports as its own (a teacher's).

    A command given ``--json`` that fails without having printed its own JSON answer prints one JSON object on stdout
    (:func:`_print_json_failure`), besides the line on stderr: usage errors, interrupts and exits too. ``NO_COLOR``
    (set, not empty) and ``TERM=dumb`` turn the colour of ``error:``, ``warning:`` and ``note:`` lines off, as rich
    turns it off for tables."""

    def invoke(self, ctx: Any) -> Any:
        if _colour_off():
            ctx.color = False  # every typer.secho/click.echo under this context (the subcommands' too) strips its colour
        named = _named_commands(self, ctx)  # (before the groups take the arguments)
        as_json = "--json" in _command_line(ctx) and _has_json_option(named[-1][1] if named else self)
        from ee_middleware.cli.common import json_answers

        answered = json_answers()
        try:
            return self._invoke(ctx, named)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                _say_interrupted(exc)
                exc._ee_said = True  # type: ignore[attr-defined]  # (main says one the parse met, before this)
            failure = _json_failure(exc) if as_json and json_answers() == answered else None
            if failure is not None:
                _print_json_failure(*failure)
            raise

    def _invoke(self, ctx: Any, named: list[tuple[str, Any]]) -> Any:
        try:
            return _stop_told_as_stop(lambda: super(_Root, self).invoke(ctx))
        except MissingSettingError as exc:  # a usage error, as a missing option is: the command's usage line, exit 2
            raise typer.BadParameter(str(exc), ctx=_command_context(ctx, named)) from exc
        except EEError as exc:
            if ctx.params.get("verbose") and exc.__cause__ is not None and not isinstance(exc.__cause__, EEError):
                traceback.print_exception(exc, file=sys.stderr)  # a plug-in's own error, told as ee's: where it came from
            fail(str(exc), exc)
        except (typer.TyperException, typer.Exit, typer.Abort):  # usage errors, exits: typer prints them
            raise
        except BrokenPipeError as exc:
            if _stdout_closed():  # `ee ... | head`: the reader has what it wanted; nothing to say
                _end_on_closed_stdout()
            if ctx.params.get("verbose"):
                raise
            fail(_describe_os_error(exc), exc)  # a socket or a child's pipe: an error like any other
        except Exception as exc:
            if ctx.params.get("verbose"):
                raise
            if isinstance(exc, OSError) and _is_file_error(exc) and not _raised_by_a_plugin_naming_no_file(exc):
                fail(_describe_os_error(exc), exc)
            fail(_describe_unexpected(exc), exc)


def _stop_told_as_stop(invoke: Callable[[], Any]) -> Any:
    """``invoke()``; an error raised once a SIGTERM or SIGHUP stopped the command (one a library made of the interrupt on
    its way out, as transformers' lazy imports do: "Could not import module 'LlamaConfig'"; a clean-up's that failed
    because of it) is raised as that stop (``KeyboardInterrupt``: exit 130 and the ``interrupted:`` line), the error as
    its cause: told as an error, a supervisor's stop blamed a base model or a sandbox, exit 1. A command's own exit (it
    said what it kept) stays as it is. (A Ctrl-C a library turned into its own error is not told apart: Python's
    handler records nothing.)"""
    from ee_middleware._lifetime import stop_for

    try:
        return invoke()
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as exc:
        stop = stop_for(exc)
        if stop is None:
            raise
        raise stop from exc


def _colour_off() -> bool:
    """Whether the user asked for no colour: ``NO_COLOR`` set and not empty (https://no-color.org), or ``TERM=dumb``."""
    return bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"


def _command_line(ctx: Any) -> list[str]:
    """The root context's arguments, up to a ``--``."""
    args = [*getattr(ctx, "_protected_args", []), *ctx.args]
    return args[: args.index("--")] if "--" in args else args


def _named_commands(root: TyperGroup, ctx: Any) -> list[tuple[str, Any]]:
    """The groups and the command the command line names, below ``root``, as (name, command), in order (an option's value
    that is a command's name is no harm here: only a group's own commands are looked for)."""
    named: list[tuple[str, Any]] = []
    command: Any = root
    for arg in _command_line(ctx):
        commands = getattr(command, "commands", None)
        if isinstance(commands, dict) and arg in commands:
            command = commands[arg]
            named.append((arg, command))
    return named


def _say_interrupted(exc: KeyboardInterrupt) -> None:
    """The ``interrupted:`` line of a command that a signal stopped and that said nothing itself (one that said what it
    kept raised its line again, :func:`~ee_middleware.cli.common.interrupted`): every stopped command says so on stderr,
    not only its exit status 130."""
    from ee_middleware.cli.common import INTERRUPTED_PREFIX

    if str(exc).startswith(INTERRUPTED_PREFIX):
        return
    try:
        typer.secho(f"{INTERRUPTED_PREFIX}{_stopped_text(exc)}", err=True, fg="yellow")
    except (AttributeError, OSError, ValueError):  # no stderr to write to
        pass


def _stopped_text(exc: KeyboardInterrupt) -> str:
    """What the ``interrupted:`` line says after its prefix, and a ``--json`` failure's message: the same text."""
    return f"stopped by {_stopped_by(exc)} before it finished."


def _stopped_by(exc: KeyboardInterrupt) -> str:
    """The signal that stopped the command: the interrupt's text (``SIGTERM``), else the one
    :func:`~ee_middleware._lifetime.termination_as_interrupt` took, else a Ctrl-C's."""
    from ee_middleware._lifetime import stopping_signal

    return str(exc) or stopping_signal() or "SIGINT"


def _has_json_option(command: Any) -> bool:
    return any("--json" in getattr(param, "opts", ()) for param in command.params)


def _command_context(ctx: Any, named: list[tuple[str, Any]]) -> Any:
    """A context of the command ``named`` (:func:`_named_commands`) below the root context ``ctx``: its usage line and
    its ``-h`` hint, for a usage error raised past it."""
    current = ctx
    for name, command in named:
        current = typer.Context(command, info_name=name, parent=current)
    return current


JSON_FAILURE_KEYS = ("type", "message", "exit_code")
"""What a failed ``--json`` command prints on stdout: ``{"error": {"type", "message", "exit_code"}}``."""


def _json_failure(exc: BaseException) -> tuple[str, str, int] | None:
    """What a failed ``--json`` command prints for ``exc`` (:func:`_print_json_failure`): its kind, message and exit
    code; ``None`` for an exit that is no failure (0, a closed stdout) and for what ends the command otherwise."""
    if isinstance(exc, _Failed):
        return exc.kind, exc.message, exc.exit_code
    if isinstance(exc, typer.Exit):  # a command that said its error itself
        if exc.exit_code in (0, EXIT_CLOSED_STDOUT):
            return None
        return "CommandFailed", f"the command failed (exit {exc.exit_code}); its error: lines on stderr say why", exc.exit_code
    if isinstance(exc, typer.TyperException):  # a usage error (exit 2): typer prints it on stderr
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return type(exc).__name__, message, getattr(exc, "exit_code", 2)
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, SIGTERM/SIGHUP: typer exits 130
        from ee_middleware.cli.common import INTERRUPTED_PREFIX

        said = str(exc)  # a command that said what it kept raises its `interrupted:` line's text again
        message = said.removeprefix(INTERRUPTED_PREFIX) if said.startswith(INTERRUPTED_PREFIX) else None
        return "KeyboardInterrupt", message or _stopped_text(exc), 130
    return None


def _print_json_failure(kind: str, message: str, exit_code: int) -> None:
    """A failed ``--json`` command's answer on stdout: ``{"error": {"type": ..., "message": ..., "exit_code": ...}}``
    (``type``: the error's class, such as ``StoreNotFoundError`` or ``BadParameter``; ``message``: the stderr line's text).
    A stdout that cannot be written (closed by its reader) is left as it is: the stderr line says the rest."""
    from ee_middleware.cli.common import print_json

    try:
        print_json({"error": dict(zip(JSON_FAILURE_KEYS, (kind, message, exit_code), strict=True))})
        sys.stdout.flush()
    except (AttributeError, OSError, ValueError):
        pass


class _Failed(typer.Exit):
    """Exit 1 after the ``error:`` line: what failed (``kind``, the error's class) and the line's text, for ``--json``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(1)
        self.message, self.kind = message, kind


_FILE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENAMETOOLONG", "ELOOP",
        "EMFILE", "ENFILE", "EFBIG", "EXDEV", "ENOTEMPTY", "EIO", "ETXTBSY", "EBADF",
    )
    if hasattr(errno, name)
)  # fmt: skip
"""The errnos of the file system: an ``OSError`` with one of them (or a file name) is about a file or a disk."""


def _is_file_error(exc: OSError) -> bool:
    """Whether ``exc`` is about a file, a folder or a disk (it names a file, has a file system's errno, or is a file's
    error by its class), not a connection, a time-out or another system error (``ConnectionError``, ``TimeoutError``, a
    socket's)."""
    files = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
    return exc.filename is not None or exc.errno in _FILE_ERRNOS or isinstance(exc, files)


def _raised_by_a_plugin_naming_no_file(exc: OSError) -> bool:
    """Whether a plug-in's own code raised ``exc`` naming no file (a store's backend: ``OSError(EIO, "I/O error reading
    rollouts")``): told as the plug-in's failure, at its line, not as a file of the user's to check."""
    from ee_middleware.plugins import plugin_that_raised

    return exc.filename is None and plugin_that_raised(exc) is not None


def _describe_unexpected(exc: Exception) -> str:
    """An error no check of ee's caught: one raised in a plug-in's code (a store's, a sandbox's, a policy's) names the
    plug-in and the line; any other is called a bug in ee-middleware (or a case it does not check yet)."""
    from ee_middleware.plugins import plugin_that_raised

    text = f"{type(exc).__name__}: {one_line(str(exc), 300)}"
    raised = plugin_that_raised(exc)
    if raised is not None:
        kind, spec, where = raised
        return (
            f"The {kind} {spec!r} failed: {text} (at {where}). The error was raised in the {kind}'s own code, not in "
            "ee-middleware: fix it there (run the command again as `ee --verbose ...` for the whole traceback)."
        )
    return (
        f"unexpected {text} (a bug in ee-middleware or a case it does not check yet: run the command again as "
        "`ee --verbose ...` for the traceback, and report it)"
    )


def fail(message: str, exc: BaseException) -> NoReturn:
    """End the command with the ``error:`` line and exit 1; with ``--json``, the error object names ``exc``'s class
    (a command that catches an error itself, for its own standalone app, ends through this too)."""
    typer.secho(f"error: {message}", err=True, fg="red")
    raise _Failed(message, _public_kind(exc)) from exc


def _public_kind(exc: BaseException) -> str:
    """The name of ``exc``'s class for ``--json``'s ``type``, scripts match on: its first public class (a private
    subclass, such as the store's ``_MarkerRefused``, is named by the ``StoreError`` it is)."""
    return next((cls.__name__ for cls in type(exc).__mro__ if not cls.__name__.startswith("_")), type(exc).__name__)


EXIT_CLOSED_STDOUT = 141
"""Exit status of a command whose stdout was closed by its reader (``ee replay show ID | head -1``): 128 + SIGPIPE,
what the shell reports for a command a closed pipe ended."""


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (``poll`` says POLLERR for it). Another broken pipe (a socket, a
    child process's pipe) is an error to report, not this."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.__stdout__.fileno(), select.POLLOUT)  # type: ignore[union-attr]
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real stdout (a test runner's buffer), or one poll cannot read
        return False


def _end_on_closed_stdout() -> NoReturn:
    """End quietly with :data:`EXIT_CLOSED_STDOUT`; stdout points at /dev/null so that the interpreter's last flush of
    what is left in its buffer does not fail again (Python's 'Exception ignored ... BrokenPipeError')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        pass
    raise typer.Exit(EXIT_CLOSED_STDOUT)


def _open_files_advice(number: int) -> str:
    """What to do when the process (EMFILE) or the machine (ENFILE) has no file descriptor left."""
    if number == errno.ENFILE:
        return "The machine has no file descriptor left (fs.file-max): close other programs' files, or raise that limit."
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    allowed = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    return (
        f"This process may open {soft} files at once (ulimit -n; the hard limit is {allowed}): raise it (ulimit -n 4096, or "
        "LimitNOFILE= for a systemd service), or run fewer workers at once."
    )


def _describe_os_error(exc: OSError) -> str:
    """What went wrong with which path, and what to check (not Python's ``[Errno 17] File exists: 'x'``). An error that
    names no path (a write to an open file on a full disk) says so instead of naming 'a path'."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EMFILE, errno.ENFILE):  # not the file's fault, whichever it names: the process's limit
        return f"{reason}{f' ({exc.filename})' if exc.filename is not None else ''}. {_open_files_advice(exc.errno)}"
    if exc.filename is None:
        unnamed = f"{reason} (the operation that failed names no file)"
        if exc.errno == errno.ENOSPC:
            return f"{unnamed}. Free some space on the disks this command writes to (df -h shows them), or give it other paths."
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            return f"{unnamed}. Check that the folders this command writes to are writable."
        return f"{unnamed}."
    path = exc.filename
    if exc.filename2 is not None:  # os.replace/rename/link: the second path is the destination
        from ee_middleware._files import TEMP_NAME

        if TEMP_NAME.fullmatch(Path(os.fsdecode(exc.filename)).name):
            path = exc.filename2  # an atomic write's temporary file, which the user never named: the file it writes
        elif not isinstance(exc, (IsADirectoryError, NotADirectoryError, FileExistsError)) and exc.errno != errno.ENOTEMPTY:
            path = f"{exc.filename} -> {exc.filename2}"  # either path may be the cause
        else:
            path = exc.filename2  # about the destination: a folder, or a file, in its way
    if isinstance(exc, FileExistsError) and not Path(path).is_dir():
        return f"{path} is a file, not a folder: choose another path, or move the file away."
    if isinstance(exc, NotADirectoryError):
        return f"{path}: part of this path is a file, not a folder: choose another path."
    if isinstance(exc, IsADirectoryError) or (exc.errno == errno.ENOTEMPTY and exc.filename2 is not None):
        return (
            f"{path} is a folder; a file is expected there. Give the path of a file to write: a new name, or a file "
            f"inside that folder (such as {Path(os.fsdecode(path)) / 'NAME'})."
        )
    if isinstance(exc, PermissionError):
        return f"{path}: {reason}. Check the permissions of it and its folder, or choose another path."
    if isinstance(exc, FileNotFoundError):
        return f"{path}: {reason}. Check the path."
    if exc.errno == errno.ENOSPC:
        return f"{path}: {reason}. Free some space, or choose another path."
    if exc.errno == errno.EROFS:  # the store's writes say their own error; a path here is one the command writes its output to
        from ee_middleware.errors import os_error_advice

        return f"{path}: {reason}. {os_error_advice(exc, output=True)}"
    return f"{path}: {reason}" + ("" if reason.endswith((".", "!", "?")) else ".")  # (FileTooLargeError's ends on its advice)


app = typer.Typer(
    cls=_Root,
    name="ee",
    help="ee-middleware: make LangGraph agents learn from their own tool-use traces.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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
    """Entry point of the ``ee`` script.

    A stdout its reader closed (``ee ... | head``) ends every command quietly with :data:`EXIT_CLOSED_STDOUT`, wherever
    the write that found it closed was: a table rich printed (rich's own handler exits 1), JSON, the help, or the
    interpreter's last flush. A command that wrote all it had before the reader went keeps its own status.

    SIGTERM and SIGHUP stop every command as Ctrl-C does (:func:`~ee_middleware._lifetime.termination_as_interrupt`):
    its clean-up runs (progress bars give the cursor back, workers and servers are stopped, partial output is removed)
    and it exits 130.

    A standard stream the command was started without (``ee ... >&-``, a daemon's closed descriptors) is /dev/null
    (:func:`_closed_streams_to_devnull`): the command runs as with ``> /dev/null``, with its own exit status."""
    from ee_middleware.cli import say_stopped_while_loading, stopped_while_loading

    try:
        from rich.console import Console

        from ee_middleware._lifetime import termination_as_interrupt
        from ee_middleware.cli.common import warnings_as_lines
    except KeyboardInterrupt as exc:
        stopped_while_loading(str(exc))
    _closed_streams_to_devnull()
    _streams_that_write_any_text()
    Console.on_broken_pipe = _raise_broken_pipe  # type: ignore[method-assign]
    try:
        with termination_as_interrupt(), warnings_as_lines():  # (a warning a command does not say itself: one line too)
            app()
    except KeyboardInterrupt as exc:  # while typer built the command tree, before it handles anything itself
        stopped_while_loading(str(exc))
    except SystemExit as done:
        unsaid = _unsaid_interrupt(done)
        if unsaid is not None:  # while the command line was parsed: typer exits 130 and says nothing
            say_stopped_while_loading(str(unsaid))
        try:
            if sys.stdout is not None:
                sys.stdout.flush()  # what is still buffered goes now, while a closed stdout can be told apart
        except BrokenPipeError:
            _BROKEN_PIPE.append(True)
        if (_BROKEN_PIPE or _click_met_a_broken_pipe()) and _stdout_closed():
            try:
                _end_on_closed_stdout()
            except typer.Exit as closed:
                raise SystemExit(closed.exit_code) from None
        raise done


def _unsaid_interrupt(done: SystemExit) -> KeyboardInterrupt | None:
    """The interrupt behind typer's exit 130 when no ``interrupted:`` line said it: one raised before the command ran
    (while its arguments were parsed), which :meth:`_Root.invoke` never saw. ``None`` for any other exit."""
    if done.code != 130:
        return None
    # typer's `raise Exit(130) from interrupt`, exited on with sys.exit inside its handler: SystemExit <- Exit <- interrupt
    typers_exit = done.__context__
    interrupt = typers_exit.__cause__ if type(typers_exit).__name__ == "Exit" and typers_exit is not None else None
    if isinstance(interrupt, KeyboardInterrupt) and not getattr(interrupt, "_ee_said", False):
        return interrupt
    return None


def _closed_streams_to_devnull() -> None:
    """Open /dev/null on each of file descriptors 0, 1 and 2 that is closed, and give Python's ``sys.stdin``/``stdout``/
    ``stderr`` (None then) a stream on it. Without it, every write to stdout failed on ``None`` (a traceback that buried
    the command's own error), and the first file the command opened took descriptor 1, where a child process's output,
    or the redirection of user code's prints to stderr, would have written into it."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if getattr(sys, name) is None:
                stream = open(fd, "r" if fd == 0 else "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115 - it lives as long as the process
                setattr(sys, name, stream)
        except OSError:  # no /dev/null (a bare chroot): leave the stream as Python made it
            pass


def _streams_that_write_any_text() -> None:
    """Let stdout write a character its encoding lacks as an escape (``\\u2026``), as Python's stderr does: in a locale
    that is not UTF-8 (``PYTHONIOENCODING=ascii``, a Latin-1 terminal) a table's "…" or a task's "é" ended the command
    with an UnicodeEncodeError called a bug. ``--json`` is ASCII with JSON's own escapes there (:func:`print_json`)."""
    from ee_middleware.cli.common import stream_is_utf8

    stream = sys.stdout
    if stream is not None and not stream_is_utf8(stream) and callable(getattr(stream, "reconfigure", None)):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (ValueError, OSError):  # a stream already written to that cannot change its error handler: as it was
            pass


def _click_met_a_broken_pipe() -> bool:
    """Whether click's own handler ended the command on a broken pipe (a write of the help text, outside the command):
    it wraps stdout in its ``PacifyFlushWrapper`` and exits 1."""
    return type(sys.stdout).__name__ == "PacifyFlushWrapper"


_BROKEN_PIPE: list[bool] = []
"""Not empty once a write met a broken pipe (which :func:`main` then checks was stdout's)."""


def _raise_broken_pipe(console: object) -> None:
    """rich's ``Console.on_broken_pipe``, which points stdout at /dev/null and exits 1 (for stderr too): the error goes on
    to :func:`main` instead, which tells a closed stdout apart."""
    _BROKEN_PIPE.append(True)
    raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
