"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import bisect
import json
import math
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ee_middleware._console import is_terminal
from ee_middleware._files import file_above
from ee_middleware._lifetime import termination_as_interrupt as termination_as_interrupt  # the commands' import
from ee_middleware.messages import one_line
from ee_middleware.models.urls import server_url_problem, shown_url

if TYPE_CHECKING:
    from ee_middleware.store.protocol import ExperienceStore

STORE_HELP = "Experience store: a folder, or a store spec (local:PATH, NAME:LOCATION for a store plug-in)."
StoreOption = typer.Option(..., "--store", "-s", envvar="EE_STORE", help=STORE_HELP, show_envvar=True)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
AllowPartialOption = typer.Option(
    False,
    "--allow-partial",
    help="When part of the store is damaged, answer from what can be read (the damage is listed on stderr). "
    "Without it, an answer that would be incomplete is an error (exit 1).",
)


INTERRUPTED_PREFIX = "interrupted: "
"""How a command stopped by a signal starts the line that says what it kept (:func:`interrupted`); raised again as the
``KeyboardInterrupt``'s text, the rest is its ``--json`` error's ``message``."""


def interrupted(text: str) -> KeyboardInterrupt:
    """Say on stderr that the command stopped (``text``: by what, what it kept, how to go on), and return the
    ``KeyboardInterrupt`` to raise again (exit 130), whose text is the line: ``--json``'s error message."""
    line = INTERRUPTED_PREFIX + text
    typer.secho(line, err=True, fg="yellow")
    return KeyboardInterrupt(line)


def print_json_interrupted(answer: dict[str, Any], line: KeyboardInterrupt) -> None:
    """A stopped command's ``--json`` answer: what it did before the stop (``answer``), with the error object every
    ``--json`` failure has, its message the :func:`interrupted` line's text. A stdout closed by its reader takes nothing:
    the stderr line says it."""
    error = {"type": "KeyboardInterrupt", "message": str(line).removeprefix(INTERRUPTED_PREFIX), "exit_code": 130}
    with suppress(OSError, ValueError):
        print_json({**answer, "error": error})


def open_existing_store(spec: str | Path) -> ExperienceStore:
    """The store ``spec`` names, which must exist already (a CLI command never creates one by mistake). When ``spec`` is
    the command's ``--store`` and ``EE_STORE`` gave it, an error about it names the variable (:func:`_store_from_env`)."""
    from ee_middleware.errors import StoreError
    from ee_middleware.store.registry import open_store, said_where_set

    try:
        return open_store(spec, create=False)
    except StoreError as exc:
        origin = _store_from_env(spec)
        if origin is None:
            raise
        raise StoreError(said_where_set(str(exc), origin)) from exc


def _store_from_env(spec: str | Path) -> str | None:
    """``EE_STORE=VALUE`` when ``spec`` is the value of the running command's store option (the one read from
    ``EE_STORE``) and that variable, not the flag nor a default, gave it; ``None`` otherwise."""
    from ee_middleware._toml import _click_context  # (typer's own copy of click, or click)

    ctx = _click_context()
    if ctx is None:
        return None
    from ee_middleware.errors import hide_credentials

    for param in ctx.command.params:
        if param.name and param.envvar == "EE_STORE" and str(ctx.params.get(param.name)) == str(spec):
            from_env = getattr(ctx.get_parameter_source(param.name), "name", None) == "ENVIRONMENT"
            return f"EE_STORE={hide_credentials(str(spec))}" if from_env else None
    return None


def store_origin(ctx: typer.Context, config: Path | None, table: str) -> str:
    """Where a job's store came from, as its errors name it: ``--store``, ``EE_STORE=VALUE`` or ``store in [TABLE] of
    FILE``. The precedence is the same for every job (``[improve]`` too): flags, then their ``EE_*`` variables, then the
    config file. An ``EE_STORE`` that overrides a different ``store`` in the file is said on stderr: it is easily
    forgotten in a shell's environment, and the job would run on another store than its file names."""
    return setting_origin(ctx, config, table, "store", envvar="EE_STORE")


def setting_origin(
    ctx: typer.Context,
    config: Path | None,
    table: str,
    key: str,
    *,
    envvar: str | None = None,
    flag: str | None = None,
) -> str:
    """Where the setting ``key`` (the command's parameter of that name, ``[TABLE] KEY`` in the config file) came from:
    ``--FLAG``, ``ENVVAR=VALUE`` or ``KEY in [TABLE] of FILE`` (flags, then their ``EE_*`` variables, then the file).
    An ``ENVVAR`` that overrides a different value in the file gets a ``note:`` line on stderr (a variable left in a
    crontab or a systemd unit would otherwise send the job to another store, registry or runs folder than its file
    names, without a word); two values that name the same place (:func:`same_path`) are no override."""
    flag = flag or f"--{key.replace('_', '-')}"
    source = getattr(ctx.get_parameter_source(key), "name", None)
    value = ctx.params.get(key)
    if source == "COMMANDLINE":
        return flag
    from ee_middleware.errors import hide_credentials

    in_file = _file_value(config, table, key)
    if source == "ENVIRONMENT" and envvar:
        shown = hide_credentials(str(value))
        if in_file is not None and not same_path(in_file, value):
            typer.secho(
                f"note: {envvar}={shown} overrides {key} = {hide_credentials(repr(in_file))} in [{table}] of {config} "
                f"(flags, then EE_* variables, then the file); unset {envvar} to use the file's.",
                err=True,
                fg="yellow",
            )
        return f"{envvar}={shown}"
    return f"{key} in [{table}] of {config}" if in_file is not None else flag


def same_path(a: Any, b: Any) -> bool:
    """Two path settings (a store spec, a registry or runs folder) name the same place: the same text, or local folders
    (``local:PATH`` too, read as store specs are) that resolve to the same one; a plug-in's ``NAME:LOCATION`` only as
    written."""
    if str(a) == str(b):
        return True
    from ee_middleware.store.registry import store_config_value

    a, b = store_config_value(str(a)), store_config_value(str(b))
    return isinstance(a, Path) and isinstance(b, Path) and a.expanduser().resolve() == b.expanduser().resolve()


def _file_value(config: Path | None, table: str, key: str) -> Any:
    if config is None:
        return None
    from ee_middleware._toml import read_toml_table

    try:
        return read_toml_table(config, table).get(key)
    except Exception:  # noqa: BLE001 - the job's own loading names a file it cannot read
        return None


def open_job_store(spec: str | Path, origin: str) -> ExperienceStore:
    """:func:`open_existing_store`, its error naming where ``spec`` came from (:func:`store_origin`) when that was not
    ``--store`` (a store set by ``EE_STORE`` or a config file read 'check the --store path')."""
    from ee_middleware.errors import StoreError
    from ee_middleware.store.registry import open_store, said_where_set

    try:
        return open_store(spec, create=False)
    except StoreError as exc:
        if origin == "--store":
            raise
        raise StoreError(said_where_set(str(exc), origin)) from exc


@dataclass
class DamageReport:
    """Store damage seen while a command read: ``incomplete`` when it hid stored records."""

    messages: list[str] = field(default_factory=list)
    incomplete: bool = False


@contextmanager
def reading_store(*, allow_partial: bool, fix: str = "pass --allow-partial to answer from the rest") -> Iterator[DamageReport]:
    """Read a store with its damage (and a spool too large to keep decoded) reported as plain lines on stderr, not Python
    warnings.

    Damage that hides stored records (an unreadable part, a damaged record) makes the command fail
    with :class:`~ee_middleware.errors.StoreDamagedError` naming the file and the fix, before it
    prints or writes anything, unless ``allow_partial``; then it answers from the rest. ``fix``: what the error says to
    do (a command that cannot answer from part of a store names the repair instead).
    """
    from ee_middleware.errors import IncompleteReadWarning, LargeSpoolWarning, StoreCorruptionWarning, StoreDamagedError

    report = DamageReport()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if not allow_partial:
                warnings.simplefilter("error", IncompleteReadWarning)
            try:
                yield report
            except IncompleteReadWarning as exc:
                raise StoreDamagedError(f"{exc} The answer would be incomplete, so none was given; {fix}.") from None
    finally:
        # After the recording has stopped: re-emitted inside it, a warning was recorded again, and re-emitted, forever.
        for w in caught:
            if not issubclass(w.category, (StoreCorruptionWarning, LargeSpoolWarning)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # the user's filters apply
            elif str(w.message) not in report.messages:
                report.messages.append(str(w.message))
                report.incomplete |= issubclass(w.category, IncompleteReadWarning)
                typer.secho(f"warning: {w.message}", err=True, fg="yellow")


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """The warnings a command gives (its own checks', ``ContextBudgetWarning``, the libraries') as one ``warning: ...``
    line each on stderr, as the other commands say theirs, without Python's file name, line number and source line (an
    internal line the user can do nothing with), each text once. Python's filters still decide which are shown (``-W``,
    ``PYTHONWARNINGS``); both are put back on the way out."""
    said: set[str] = set()

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = " ".join(str(message).split())
        if text not in said:
            said.add(text)
            typer.secho(f"warning: {text}", err=True, fg="yellow")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextmanager
def user_output_to_stderr(*, enabled: bool = True) -> Iterator[None]:
    """While a command runs the user's code (tools in a sandbox, a policy, a model factory) and the processes it starts
    (replay workers, sandbox children, servers), what they print goes to stderr, so that stdout holds the command's
    answer alone (``--json | jq``). File descriptor 1 points at stderr (``os.dup2``: child processes started meanwhile
    and C code inherit it, which ``contextlib.redirect_stdout`` alone would not reach) and ``sys.stdout`` is
    ``sys.stderr``; both are restored on the way out, after an error or Ctrl-C too. Print the answer after it.
    ``enabled=False`` (a command that draws its progress on stdout, when not asked for ``--json``) changes nothing.

    Process-wide and counted: uses that overlap (nested, or commands run from several threads of one process) redirect
    once, and the last to end restores stdout, whatever order they end in."""
    if not enabled:
        yield
        return
    _redirect_stdout()
    try:
        yield
    finally:
        _restore_stdout()


_redirected: list[Any] = []
"""The one redirection of stdout in effect: [stdout as it was, the saved fd 1 (or None), how many uses hold it]."""
_redirect_lock = threading.Lock()


def _redirect_stdout() -> None:
    import os

    with _redirect_lock:
        if _redirected:
            _redirected[2] += 1
            return
        before = sys.stdout
        _flush(before)
        saved: int | None = None
        try:
            saved = os.dup(1)
            os.dup2(2, 1)
        except OSError:  # no fd 1 or 2 (a daemon's closed descriptors): sys.stdout is still redirected
            if saved is not None:
                os.close(saved)
                saved = None
        sys.stdout = sys.stderr
        _redirected[:] = [before, saved, 1]


def _restore_stdout() -> None:
    import os

    with _redirect_lock:
        _redirected[2] -= 1
        if _redirected[2]:
            return
        before, saved, _ = _redirected
        _redirected.clear()
        for stream in (before, sys.__stdout__):  # what code holding the old stdout buffered goes where it was printed
            _flush(stream)
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
        sys.stdout = before


def _flush(stream: Any) -> None:
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):  # None, closed, or a reader that has gone
        pass


def print_json(data: Any) -> None:
    """A command's ``--json`` answer: strict JSON (a value that could not be computed, NaN, is ``null``) in valid UTF-8: a
    lone surrogate in a text (a file name ``os.listdir`` decoded, a string cut inside an emoji) is U+FFFD, as capture
    stores it, where stdout would have written it as an invalid byte or failed."""
    from ee_middleware.messages import clean_text, finite_or_null

    ascii_only = not stream_is_utf8(sys.stdout)  # a stdout in another encoding gets JSON's escapes (\u00e9), valid there
    text = json.dumps(finite_or_null(data), ensure_ascii=ascii_only, indent=2, default=str, allow_nan=False)
    _json_answers[0] += 1
    write_all(sys.stdout, clean_text(text) + "\n")


def write_all(stream: Any, text: str) -> None:
    """Write ``text`` to ``stream`` whole: through its binary layer in a loop where it has one, as a raw layer may take
    part of it (a stdout without buffering, ``python -u`` or ``PYTHONUNBUFFERED``, writes straight to the pipe, and its
    text layer drops what a write did not take: a reader that closed early then cost the rest of the answer without
    the broken pipe that says so)."""
    binary = getattr(stream, "buffer", None)
    if binary is None:
        stream.write(text)
        return
    stream.flush()
    data = memoryview(text.encode(getattr(stream, "encoding", None) or "utf-8", errors="replace"))
    while data:
        written = binary.write(data)
        if written is None:  # a non-blocking stdout that takes nothing now: wait until it can
            import select

            select.select([], [binary], [], 1.0)
            continue
        data = data[written:]
    binary.flush()


def stream_is_utf8(stream: Any) -> bool:
    """Whether ``stream`` encodes text as UTF-8 (a stream that says no encoding counts as one)."""
    import codecs

    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str) or not encoding:
        return True
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return True


_json_answers = [0]
"""How many ``--json`` answers :func:`print_json` has printed in this process."""


def json_answers() -> int:
    """How many ``--json`` answers :func:`print_json` has printed in this process: a failed command that printed none
    gets its error as JSON (``ee_middleware.cli.app``); one that printed its own (``ee improve``, ``ee traces ingest``)
    keeps it alone."""
    return _json_answers[0]


def console() -> Any:
    """The console every command prints to (see :func:`ee_middleware._console.make_console`: no emoji codes, and off a
    terminal a wide page instead of 80 columns, so that tables in a job's log keep their ids whole)."""
    from ee_middleware._console import make_console

    return make_console()


TERMINAL_ROWS = 1000
"""The most rows a listing draws on a terminal without ``--limit`` (a table of 100k rows took 83 s to appear)."""


def terminal_cap(total: int, limit: int | None, as_json: bool) -> int | None:
    """How many rows a listing of ``total`` draws when it goes to a terminal without ``--limit`` or ``--json`` and holds
    more than :data:`TERMINAL_ROWS`; ``None`` for all (a pipe, a file and ``--json`` get every row, as scripts expect)."""
    if limit is not None or as_json or total <= TERMINAL_ROWS or not _stdout_is_terminal():
        return None
    return TERMINAL_ROWS


def _stdout_is_terminal() -> bool:
    """Whether standard output is a terminal (not rich's ``is_terminal``, which ``FORCE_COLOR`` makes true for a pipe)."""
    return is_terminal(sys.stdout)


def say_capped(shown: int, total: int, what: str, which: str) -> None:
    """The line under a listing :func:`terminal_cap` cut: how many of how many, and how to see more."""
    typer.secho(
        f"showing the {which} {shown} of {total} {what} (a terminal gets at most {TERMINAL_ROWS} without --limit): "
        "--limit N shows N, and a pipe or --json gets them all",
        err=True,
        fg="yellow",
    )


def progress_console() -> Any:
    """The console progress bars draw on: stderr, so that stdout holds the command's answer alone
    (``ee ... > out.txt`` or ``| jq`` get no bar, even when it is drawn once at the end off a terminal)."""
    from ee_middleware._console import make_console

    return make_console(stderr=True)


ProgressOption = typer.Option(True, "--progress/--no-progress", help="Show progress bars (on stderr; none with --json).")


class ProgressBars:
    """A command's progress bars on stderr (:func:`progress_console`), one per label: ``update(label, done, total)``
    draws the label's bar (``done`` of ``total``, the elapsed time; ``total`` None: not known yet), the first update
    starting the display, so that an error before any work is the only line on stderr. ``enabled=False`` (``--json``,
    ``--no-progress``) draws nothing. Use it as a context manager: the bars stop on the way out (after an error or
    Ctrl-C too, as they were); :meth:`complete` first marks each done. Updates may come from several threads."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def update(self, label: str, done: int, total: int | None = None) -> None:
        """Show ``done`` of ``total`` on the bar of ``label`` (added, below the others, at its first update)."""
        if not self.enabled:
            return
        with self._lock:
            if self._progress is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

                self._progress = Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=progress_console(),
                )
                self._progress.start()
            task = self._tasks.get(label)
            if task is None:
                task = self._tasks[label] = self._progress.add_task(escape(label), total=total)
            self._progress.update(task, completed=done, total=total)

    def complete(self) -> None:
        """Mark every bar done: at its total, or 1 of 1 for one whose total was never known."""
        with self._lock:
            if self._progress is None:
                return
            for task in self._tasks.values():
                total = self._progress.tasks[task].total or 1
                self._progress.update(task, completed=total, total=total)

    def stop(self) -> None:
        """Stop the display (off a terminal, rich then draws the bars once); updates after it draw nothing."""
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
            self.enabled = False


_NO_HUB_BARS = "HF_HUB_DISABLE_PROGRESS_BARS"


@contextmanager
def library_bars_off(*, enabled: bool = True) -> Iterator[None]:
    """While a command told not to draw progress (``--no-progress``, ``--json``) loads models, transformers' and
    huggingface_hub's own tqdm bars ("Loading weights", downloads) are off too: on stderr, off a terminal, each is a run
    of carriage returns in a cron log. The variable ``HF_HUB_DISABLE_PROGRESS_BARS`` is set for the duration (the
    processes started meanwhile, replay and evaluation workers, inherit it; a first import of transformers reads it),
    and transformers' switch is turned off where it is imported already; both are put back on the way out (a library
    first imported meanwhile keeps its bars off in this process). Off a terminal (stderr a file: a nightly job's log)
    they are off whatever the flags: ee's own progress is written as lines there. ``enabled=False`` on a terminal
    changes nothing."""
    import os

    if not enabled and is_terminal(sys.stderr):
        yield
        return
    before = os.environ.get(_NO_HUB_BARS)
    os.environ[_NO_HUB_BARS] = "1"
    hf_logging = sys.modules.get("transformers.utils.logging")
    was_on = bool(hf_logging is not None and hf_logging.is_progress_bar_enabled())
    if was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_NO_HUB_BARS, None)
        else:
            os.environ[_NO_HUB_BARS] = before
        if was_on:
            hf_logging.enable_progress_bar()


def examples(*commands: str) -> str:
    """A command's help epilog: each example on its own line (shown after the options), never re-wrapped
    (click's ``\\b`` marker), so that it can be copied whole."""
    return "Examples:\n\n" + "\n\n".join(f"\b\n  {command}" for command in commands)


short = one_line
"""Text on one line, cut to a width (for table cells)."""


def key_value_settings(pairs: list[str], flag: str, example: str) -> dict[str, Any]:
    """A repeatable ``KEY=VALUE`` flag's values as keyword options, each VALUE read as JSON when it parses (``0.1``,
    ``true``, ``[1, 2]``) and as text otherwise: ``["invalid_share=0.1", "name=x"]`` -> ``{"invalid_share": 0.1, "name":
    "x"}``. ``flag`` and ``example`` (``invalid_share=0.1``) show how to write one in the error for a pair without ``=``."""
    from ee_middleware.errors import ConfigError

    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: write KEY=VALUE, e.g. {flag} {example}")
        try:
            settings[key.strip()] = json.loads(value)
        except ValueError:
            settings[key.strip()] = value
    return settings


def actor_name(param: typer.CallbackParam, value: str | None) -> str | None:
    """A ``--by`` option's callback: who is acting, stored with what they did, without surrounding blanks (``None``:
    not given); an empty or blank name is a usage error naming the flag and a name to give."""
    if value is None:
        return None
    if not value.strip():
        flag = max(param.opts, key=len) if param.opts else "--by"
        raise typer.BadParameter(f"an empty name: say who is acting (it is stored with the decision), e.g. {flag} alice.")
    return value.strip()


def server_urls(values: list[str], flag: str = "--server") -> list[str]:
    """Model servers' API roots from a repeatable, comma-separated ``flag`` (``EE_SERVER_URLS``), each an http(s) URL
    with a host (a name, an IPv4 address or an IPv6 one in brackets) and, if given, a port 1-65535; any other value is a
    usage error naming it, what is wrong with it (:func:`server_url_problem`) and the form to write."""
    urls = [u.strip() for entry in values for u in entry.split(",") if u.strip()]
    for url in urls:
        problem = server_url_problem(url, flag)
        if problem:
            raise typer.BadParameter(
                f"{shown_url(url)!r} is not a model server's URL: {problem}. Write http(s)://host:port, e.g. http://127.0.0.1:8000/v1 "
                "(the replica's OpenAI API root).",
                param_hint=f"'{flag}'",
            )
    return urls


def number_between(low: float, high: float, *, low_open: bool = False) -> Callable[[float | None], float | None]:
    """A number option's callback: ``low`` <= value <= ``high`` (``low`` < value with ``low_open``), else a usage error
    that says so, also of NaN (typer's own ``min``/``max`` call NaN "not <= 1": it compares false with every number)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        above = value > low if low_open else value >= low
        if not (above and value <= high):  # (NaN fails both)
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            raise typer.BadParameter(f"must be a number {bound} and <= {high:g}, got {value:g}")
        return value

    return check


def sampling_temperature(value: float | None) -> float | None:
    """A ``--temperature`` option's callback: a finite number >= 0 (``None``: not given). Said of NaN as of ``-1``, where
    a ``min=0`` bound would call NaN "not >= 0" (it compares false with every number) and let ``inf`` through to the
    request, whose JSON cannot carry it."""
    if value is not None and not 0 <= value < math.inf:
        raise typer.BadParameter(f"must be a finite number >= 0 (0: greedy), got {value:g}")
    return value


def positive_seconds(value: float | None) -> float | None:
    """A ``--timeout`` option's callback: a finite number of seconds > 0 (``None``: not given, the configuration's or
    the default), else a usage error naming the flag and a value to use."""
    if value is not None and not 0 < value < math.inf:  # (NaN too; inf would pass "> 0", then fail every request)
        raise typer.BadParameter(
            f"must be a finite number of seconds > 0, got {value:g}; e.g. --timeout 120 for a model served on CPU, or "
            "--timeout 3600 for one that may take very long (there is no 'no limit')."
        )
    return value


def other_apps_hint(store: Any, app: str, *, approved: bool = True) -> str:
    """The apps ``store`` holds (``approved``) trajectories of, when ``app`` (a command's ``--app``) is none of them: a
    misspelt ``--app`` is told the names it could be; "" otherwise."""
    from ee_middleware.store.registry import trajectory_columns

    frame = trajectory_columns(store, ["app"], status="approved" if approved else None)
    apps = sorted({str(a) for a in frame["app"].to_list() if a is not None})
    if app in apps or not apps:
        return ""
    which = "approved trajectories" if approved else "trajectories"
    return f" (the store's {which} are of: {', '.join(apps[:10])}{', ...' if len(apps) > 10 else ''})"


def path_given(value: str, flag: str = "--out", what: str = "the output folder") -> Path:
    """A path option as typed (``typer.Option(parser=path_given)`` for a ``Path`` option: a ``Path`` option alone reads
    ``--out ""`` as ``.``): an empty or blank value is a usage error (``--out "$OUT"`` with the variable unset would have
    written into the working directory), as ``out = ""`` in a config file is (:func:`~ee_middleware._toml.named_path`)."""
    from ee_middleware._toml import BLANK_PATH

    if not value.strip():
        raise typer.BadParameter(f"{value!r} {BLANK_PATH.format(what=what)}", param_hint=flag)
    return Path(value)


_SPAN_BACK = re.compile(r"(\d+)\s*([smhdw])")
_SPAN_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def time_bound(value: str, flag: str) -> datetime:
    """A time option as typed (``--since``, ``--until``): an ISO 8601 date or time (UTC where it names no zone), a date
    written without dashes (``20261201``, what ``date +%Y%m%d`` prints), or a span back from now (``30m``, ``24h``,
    ``7d``, ``2w``); anything else is a usage error naming the flag and these forms. An aware UTC ``datetime``."""
    text = value.strip()
    span = _SPAN_BACK.fullmatch(text)
    try:
        if span:
            return datetime.now(UTC) - timedelta(**{_SPAN_UNITS[span.group(2)]: int(span.group(1))})
        when = datetime.strptime(text, "%Y%m%d") if text.isdigit() and len(text) == 8 else datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise typer.BadParameter(
            f"{value!r} is no time: write an ISO date or time (2026-12-01, 2026-12-01T06:00:00+01:00; UTC without a zone) "
            "or a span back from now (30m, 24h, 7d)",
            param_hint=flag,
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def utc_clock(when: datetime | str | None, form: str = "%Y-%m-%d %H:%M:%S") -> str:
    """``when`` (a ``datetime``, or its ISO text) as a UTC clock time in ``form``, for a column or line that says "UTC":
    a time with another offset (a plug-in store's or registry's) is converted, a time with none is UTC (the local
    store's rule); "" for none; a text that is no ISO time as it is."""
    if when is None or when == "":
        return ""
    try:
        moment = datetime.fromisoformat(when) if isinstance(when, str) else when
    except ValueError:  # a plug-in's text that is no ISO time ('2026-12-01 10:00 UTC'): shown as it is
        return str(when)
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).strftime(form)
    except OverflowError:  # a time at the calendar's edge has no UTC reading: as it was given
        return moment.strftime(form)


def output_file(value: str, example: str, flag: str = "--out") -> Path:
    """The path of an ``--out FILE`` option given as typed: empty or blank, or ending in ``/`` (which names a folder), a
    usage error (before, ``--out exports/`` wrote a file named ``exports``, and ``--out notes.jsonl/`` replaced the file
    ``notes.jsonl``, where a shell says "Not a directory"); ``example`` is the file name the error suggests."""
    path_given(value, flag, "the file to write")
    if value.endswith("/"):
        folder = value.rstrip("/") or "/"
        raise typer.BadParameter(
            f"{value} ends in '/', which names a folder: {flag} names the file to write, e.g. {flag} {Path(folder) / example}.",
            param_hint=flag,
        )
    return Path(value)


def output_folder(value: Path) -> Path:
    """An ``--out FOLDER`` option's callback: a path that is, or can become, a folder; a file there (or a file where
    a folder above it should be) is a usage error before any work, not after it (an eval's predictions, a teacher's
    answers: minutes to hours on CPU)."""
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is no folder; choose another path, or move the file away.")
    blocking = file_above(value)
    if blocking is not None:
        raise typer.BadParameter(f"{value} is no folder: {blocking} above it is a file; choose another path, or move the file away.")
    return value


_HIDDEN_EFFECT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
"""Characters a terminal acts on rather than shows, or shows as nothing: C0 and C1 controls but newline and tab (ESC
starts sequences that recolour, clear or overwrite the screen, set the window title or write the clipboard; C1 CSI and
OSC do the same on some terminals); the bidi embeddings, overrides and isolates, which reorder the text shown around
them, and the bidi marks (LRM, RLM, ALM), which move neutral characters such as ``,`` or ``-`` across it; the line and
paragraph separators (U+2028/9), shown as a line break by some terminals and pagers; the zero-width space, word joiner
and invisible operators (U+2060-2064) and the BOM (U+FEFF), which hide inside a word (``ad\u200bmin`` looks like
``admin``).

The zero-width joiner and non-joiner (U+200D, U+200C) are kept where they do their work, between two non-ASCII
characters: emoji sequences (a ZWJ joins the emoji of 👩‍💻), Persian, Urdu and Indic words. Next to an ASCII character
or at either end of the text they change nothing shown, and only hide, so they are written out there."""


def visible(text: str) -> str:
    """``text`` as a terminal may show it: each character it would act on instead of showing (:data:`_HIDDEN_EFFECT`)
    written out, ``\\x1b`` for a C0 control or DEL and ``\\u009b``, ``\\u202e`` for a C1 control, a bidi override or mark, or an
    invisible character that hides in a word (a zero-width joiner only where it joins nothing: see the constant);
    newlines and tabs are kept, and a CRLF line end is a newline. Every text a command prints for a person that comes
    from records, tools, models or files goes through it (:func:`escape` does, for rich markup); ``--json`` answers do
    not: they are a contract, and a program reads them (JSON writes C0 controls as ``\\u001b``, and keeps the others
    as stored)."""
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return _HIDDEN_EFFECT.sub(_written_out, text)


_JOINERS = ("\u200c", "\u200d")


def _written_out(found: re.Match[str]) -> str:
    char = found.group()
    if char in _JOINERS:  # kept between two non-ASCII characters shown as they are (see _HIDDEN_EFFECT)
        text, at = found.string, found.start()
        before, after = text[at - 1 : at], text[at + 1 : at + 2]
        if before > "\x7f" and after > "\x7f" and not _HIDDEN_EFFECT.search(before + after):
            return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` for rich markup: its brackets printed as they are (``rich.markup.escape``) and the characters a terminal
    would act on written out (:func:`visible`). Use it, not ``rich.markup.escape``, for any text a command did not write
    itself."""
    from rich.markup import escape as escape_markup

    return escape_markup(visible(text))


_SAYS_ERROR = re.compile(r"\s*error\b:?", re.IGNORECASE)


def observation_cell(content: str | None, is_error: bool, width: int) -> str:
    """A tool's observation as a table cell (rich markup, the text escaped): an error marked ``error:`` (or, where its own
    text begins with the word, ``Error: no ticket T-404`` as LangGraph's ToolNode and many apps write them, that word in
    red, once), and an empty one (a tool that returned nothing, ``[]`` as LangChain stores it) as a dim ``(empty)``,
    told apart from no observation (``content`` None: a blank cell)."""
    if content is None:
        return ""
    if not content:
        return ("[red]error:[/] " if is_error else "") + "[dim](empty)[/]"
    text = short(content, width)
    said = _SAYS_ERROR.match(text) if is_error else None
    if said is not None:
        return f"[red]{escape(text[: said.end()])}[/]{escape(text[said.end() :])}"
    return ("[red]error:[/] " if is_error else "") + escape(text)


SHORT_ID = 12
"""How many characters of an id a table shows at least."""

_NAMED_ID = re.compile(r"[A-Za-z_]*[g-zG-Z_][A-Za-z_]*-(?=[0-9a-f]+$)")
"""A name before an id's hex digits (``curriculum-9f3a...``): the digits, not the name, tell such ids apart."""

_ID_DIGITS = 8
"""How many of such an id's hex digits a table shows at least (a prefix that stays unique as the store grows)."""


def short_ids(ids: Iterable[str], *, among: Iterable[str] = ()) -> dict[str, str]:
    """Each of ``ids`` as its shortest prefix of at least :data:`SHORT_ID` characters that no other id (of ``ids`` and
    ``among``) starts with, or the whole id where it is the start of another: what a person copies from a table and a
    command that takes an id (``ee traces show``, ``ee replay show``) resolves. Give ``among`` every id of the store,
    not only those shown. Ids that share their first characters (``bfcl-simple_python_0``, ``bfcl-simple_python_1``)
    are shown as long as it takes, and an id of a name and hex digits (``curriculum-9f3a0c1d2e4b5a6f``) with at least
    eight of its digits: ``curriculum-9`` is unique today, and the next curriculum run makes it ambiguous."""
    wanted = set(ids)
    ordered = sorted(wanted.union(among))
    shown = {}
    for current in wanted:
        n = bisect.bisect_left(ordered, current)
        named = _NAMED_ID.match(current)
        length = max(SHORT_ID, named.end() + _ID_DIGITS) if named else SHORT_ID
        for neighbour in ordered[max(n - 1, 0) : n + 2]:
            if neighbour != current:
                length = max(length, _common_prefix(current, neighbour) + 1)
        shown[current] = current[:length]
    return shown


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def check_replay_id(store: Any, replay_id: str, where: Any, *, given: str, without: str) -> None:
    """Raise :class:`~ee_middleware.errors.ConfigError` for a replay id ``store`` holds no replay of (a typo gave an empty
    answer, exit 0, which reads as a replay that stored nothing), naming the replays it holds and the one meant. ``where``:
    the store as the user gave it (shown with a URL's credentials masked); ``given``: how the id was given (``--replay-id
    ID``); ``without``: what leaving it out does."""
    import polars as pl

    from ee_middleware._toml import _closest
    from ee_middleware.errors import ConfigError, hide_credentials
    from ee_middleware.models.urls import shown_spec

    where = hide_credentials(str(where))  # a store spec may hold user:password@
    records = store.replays()
    if replay_id in set(records["replay_id"].to_list()):
        return
    if records.is_empty():
        raise ConfigError(f"{given}: {where} holds no replay yet. Run `ee replay run --store {where}` first, or {without}.")
    replays = (
        records.group_by("replay_id")
        .agg(pl.col("policy").first(), pl.col("sandbox").first(), pl.col("k").first(), pl.len().alias("trajectories"))
        .sort("replay_id")
    )
    listed = "; ".join(  # the specs with their URLs' credentials masked (a store replayed before they were masked holds them)
        f"{r['replay_id']} (policy {shown_spec(str(r['policy']))}, sandbox {shown_spec(str(r['sandbox']))}, K={r['k']}, "
        f"{plural(r['trajectories'], 'trajectory', 'trajectories')})"
        for r in replays.head(10).iter_rows(named=True)
    ) + (f"; and {replays.height - 10} more" if replays.height > 10 else "")
    ids = replays["replay_id"].to_list()
    starting = [r for r in ids if r.startswith(replay_id)]
    close = _closest(replay_id, ids)
    meant = (
        f" Did you mean {starting[0]}? A replay id is given whole."
        if len(starting) == 1 and replay_id
        else f" Did you mean {close}?"
        if close
        else ""
    )
    raise ConfigError(f"{given}: {where} holds no replay of that id.{meant} Its replays: {listed}. {without[0].upper()}{without[1:]}.")


def plural(n: int, one: str, many: str) -> str:
    """``n`` and the word for it: ``1 trajectory``, ``2 trajectories``."""
    return f"{n} {one if n == 1 else many}"
