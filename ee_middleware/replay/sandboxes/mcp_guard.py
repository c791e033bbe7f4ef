"""The small process that stands between :class:`~ee_middleware.replay.sandboxes.mcp.McpSandbox` and an MCP server.

An MCP server is a command of the user's (``python notes_server.py``, ``npx some-server``, ``uv run ...``): code that
cannot be asked to die with the replay job. The sandbox therefore starts this guard, which

- leads a process group of its own (the sandbox kills the group, so processes the server started go with it);
- writes its process id to a file the sandbox names (the group's id, for the sandbox to kill it without waiting);
- starts the server as its child, in its group, with the same standard input, output, error and environment (so an
  stdio server talks to the sandbox's MCP client directly, through the pipes the guard was given);
- watches the process that started it (:func:`~ee_middleware._lifetime.die_with_parent`): once that is gone, even
  killed with ``SIGKILL``, it kills the whole group within a second;
- when the server exits (its standard input closed, as when the sandbox's process died), kills what is left of the
  group (processes the server started) and exits with the server's exit code;
- once orphaned, removes its files from the sandbox's working folder (``NAME.pid`` and the server's ``NAME.stderr``
  beside it), and the folder once it is empty: the sandbox removes them itself when it closes, which a job killed
  with ``SIGKILL`` never does.

Run as ``python -c "<import and call main>" PARENT_PID PID_FILE -- COMMAND [ARGS...]`` (see ``McpSandbox``); it imports
nothing but the standard library and :mod:`ee_middleware._lifetime`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ee_middleware._lifetime import die_with_parent, kill_process_group

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Start the server named after ``--`` and stay with it; its exit code (or 2 for a bad command line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[2] != "--":
        print("usage: mcp_guard PARENT_PID PID_FILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    parent, pid_file, command = int(args[0]), args[1], args[3:]
    if os.getpgid(0) != os.getpid():
        os.setsid()  # lead a group of our own (the sandbox's stdio client already made us a session leader)
    group = os.getpid()
    written = f"{pid_file}.tmp"
    with open(written, "w") as out:
        out.write(str(group))
    os.replace(written, pid_file)

    def orphaned() -> None:
        _remove_own_files(pid_file)
        kill_process_group(group)  # the server, what it started, and this guard
        os._exit(1)

    die_with_parent(parent, orphaned)
    try:
        server = subprocess.Popen(command)  # inherits our stdin/stdout/stderr, environment, working directory and group
    except OSError as exc:
        print(f"could not start the MCP server {command!r}: {exc}", file=sys.stderr)
        return 127
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the group's signals reach the server itself
        signal.signal(sig, lambda *_: None)
    code = server.wait()
    _kill_group_but_me(group)
    if os.getppid() != parent:  # the server ended because the sandbox's process died (its pipes closed)
        _remove_own_files(pid_file)
    return code if code >= 0 else 128 - code


def _remove_own_files(pid_file: str) -> None:
    """Remove this guard's pid file and its server's stderr file, then their folder if nothing else is left in it (of
    several guards orphaned at once, the last to get here removes it)."""
    stem, _ = os.path.splitext(pid_file)
    for path in (pid_file, f"{stem}.stderr", f"{pid_file}.tmp"):
        try:
            os.unlink(path)
        except OSError:
            pass
    try:
        os.rmdir(os.path.dirname(pid_file) or ".")
    except OSError:  # another guard's files are still there, or it is gone already
        pass


def _kill_group_but_me(group: int) -> None:
    """``SIGKILL`` every other process of ``group`` (read from ``/proc``); ``SIGTERM`` to the group where there is none."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        kill_process_group(group, signal.SIGTERM)  # this guard ignores it
        return
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) == group:  # the fields after the name: state, ppid, pgrp
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


if __name__ == "__main__":  # pragma: no cover - started with -c by McpSandbox
    sys.exit(main())
