"""Replay for agents whose tools come from MCP servers: :class:`McpSandbox` runs the app's own MCP server.

Many LangGraph agents get their tools from MCP servers (langchain-mcp-adapters' ``MultiServerMCPClient`` /
``load_mcp_tools``). Capture records their calls like any other tool's; replay needs a world to run alternatives in,
and the server *is* that world. :class:`McpSandbox` starts the user's server itself, as MCP client configs name it
(``command`` + ``args`` + ``env``; or a streamable-HTTP server's command, started on a free local port), one fresh
process per trajectory, and talks to it with the ``mcp`` package's own client (``pip install 'ee-middleware[mcp]'``).

- **The world at step 0.** The trajectory's environment reference (what ``record_experience(..., environment=...)``
  recorded) is handed to every server it starts as JSON (its keys in the recorded order) in the environment variable
  ``EE_ENVIRONMENT`` (``null`` when the trajectory has none). The server builds its world from it, so replay starts
  where production did.
- **Branching.** An MCP server cannot snapshot, so a snapshot is the list of calls that changed the server since it
  started, and a restore starts a fresh server and runs those calls again (the "naive" strategy of
  ``benchmarks/replay_throughput.py``), each sent exactly as it was (its arguments' keys in the order given), checking
  that every call answers as it did the first time. A fresh server is
  kept warm (started in the background for the same environment) so that a restore waits only for the calls. Tools
  whose MCP annotations say ``readOnlyHint: true`` change nothing: they are not remembered, and a restore after them
  is free. A server that has tools ``ee_snapshot`` (no arguments, answers a token as text) and ``ee_restore``
  (``token``) is branched with them instead: the fast path.
- **Safety.** A tool whose annotations say ``openWorldHint: true`` reaches the world outside the server, and so does one
  that says nothing of it (the MCP spec's default), unless it says ``readOnlyHint: true`` (and not ``destructiveHint:
  true`` as well: contradicting annotations are read the safe way); replay never calls such a
  tool unless allowed by name (``allow_open_world``), with ``--allow-network``, or, for a server whose unannotated tools
  act only on its own world, ``open_world_default=False``: proposals to call it are refused and counted, and
  :meth:`McpSandbox.refusal_hint` says how to allow it.
- **Tools that act only outside the world** (they page on-call, send an e-mail), served by a server or tools of the
  app's own that no server lists, may be declared (``outside_world_tools``): replay never calls them, the expert's
  recorded results stand for their calls (:meth:`McpSandbox.acts_outside_world`), and proposals of them are refused.
- **Observations** are the text the model saw in production: langchain-mcp-adapters makes a tool result's content
  blocks the ``ToolMessage`` content (text blocks; images and files as blocks that capture stores as the project's
  media placeholders), ``isError`` results an error ``ToolMessage`` with the same blocks, and keeps
  ``structuredContent`` as the message's artifact, which the model never sees (:func:`result_observation`).
- **Processes.** Every server runs under a small guard (:mod:`ee_middleware.replay.sandboxes.mcp_guard`) that leads
  its own process group and kills it when the replay's process dies, even by ``SIGKILL``. A server replay is done
  with (a restore's old world, the last trajectory's, ``close()``) is let end cleanly, as MCP clients end one: an
  stdio server's standard input is closed, a streamable-HTTP server gets ``SIGTERM``, and only one still running
  :data:`SHUTDOWN_GRACE_S` later is killed, so its own clean-up (temporary files, connections) runs; a restore does
  not wait for it. A server that failed (it timed out, crashed, or did not start) is killed at once. Either way the
  whole group goes, so processes the server started go too.

On the command line: ``ee replay run --sandbox mcp:CONFIG.json`` (see :func:`load_mcp_config` for the file), or a
factory of your own returning ``McpSandbox(...)``, named as ``package.module:make_sandbox``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ee_middleware._lifetime import kill_process_group, result_with_signal_checks
from ee_middleware._optional import import_optional
from ee_middleware.errors import EnvironmentUnavailableError, SandboxError
from ee_middleware.messages import content_to_text
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.protocol import ClosedOnExit

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "McpSandbox",
    "McpServer",
    "McpSnapshot",
    "load_mcp_config",
    "result_observation",
]

ENVIRONMENT_VARIABLE = "EE_ENVIRONMENT"
"""The variable that hands a server the trajectory's environment reference, as JSON (``null`` when it has none)."""
PORT_VARIABLE = "EE_MCP_PORT"
"""The variable that gives a streamable-HTTP server the port to listen on (``{port}`` in its args and env too)."""
SNAPSHOT_TOOL = "ee_snapshot"
"""A server tool that takes no arguments and answers a token (text) for its current world: the fast path."""
RESTORE_TOOL = "ee_restore"
"""A server tool that takes ``token`` (from :data:`SNAPSHOT_TOOL`) and puts that world back."""
EMPTY_ERROR = "MCP tool returned an error with empty content."
"""What langchain-mcp-adapters shows the model for an ``isError`` result without content."""

Transport = Literal["stdio", "streamable_http"]
_TRANSPORTS: dict[str, Transport] = {
    "stdio": "stdio",
    "streamable_http": "streamable_http",
    "streamable-http": "streamable_http",
    "http": "streamable_http",
}
_STOP_WAIT_S = 5.0
SHUTDOWN_GRACE_S = 2.0
"""How long a server replay is done with has to end by itself (its standard input closed, or ``SIGTERM``), as MCP's own
stdio client gives it, before it is killed."""
_ENDING_AT_ONCE = 8
"""How many servers may be ending cleanly in the background at once; a restore waits for one to end past that."""
_TOOLS_SHOWN = 20
"""How many of the servers' tools a hint about a tool they do not list names."""
_PORT_POLL_S = 0.05


@dataclass(frozen=True)
class McpServer:
    """How to start one MCP server, as MCP client configs name it.

    Args:
        command: the executable (``python``, ``npx``, ``uv``, an absolute path; looked up on ``PATH``).
        args: its arguments. For a streamable-HTTP server, ``{port}`` in an argument (or an ``env`` value) becomes the
            free local port the sandbox chose (also in ``EE_MCP_PORT``).
        env: variables added to what MCP's stdio client passes every server (``HOME``, ``PATH``, ``USER``, ...: the
            same as in production with langchain-mcp-adapters), plus ``EE_ENVIRONMENT``.
        cwd: the working directory (default: this process's).
        transport: ``stdio`` (the server speaks MCP on its standard input and output) or ``streamable_http`` (the
            sandbox starts the command and connects to ``http://127.0.0.1:PORT`` + ``path``).
        path: the MCP endpoint of a streamable-HTTP server.
    """

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    transport: Transport = "stdio"
    path: str = "/mcp"

    def __post_init__(self) -> None:
        if not isinstance(self.command, str) or not self.command.strip():
            raise SandboxError("An MCP server needs a command (the executable that starts it), e.g. McpServer('python', ('server.py',)).")
        if self.transport not in ("stdio", "streamable_http"):
            raise SandboxError(f"MCP server transport {self.transport!r} is not known: use 'stdio' or 'streamable_http'.")
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))
        object.__setattr__(self, "env", {str(k): str(v) for k, v in dict(self.env or {}).items()})


@dataclass(frozen=True)
class McpSnapshot:
    """The calls that changed each server since it started (and the fast path's tokens): what a restore rebuilds.

    Plain data, so it pickles (``--isolation subprocess`` sends snapshots out of the child).
    """

    owner: str
    environment: str
    calls: Mapping[str, tuple[_Done, ...]]
    tokens: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"McpSnapshot({', '.join(f'{name}: {len(calls)} calls' for name, calls in self.calls.items())})"


@dataclass(frozen=True)
class _Done:
    """One call that may have changed a server, and what it answered (checked when it is run again).

    ``arguments`` is the JSON text of the arguments as they were sent, their keys in the order given (:func:`_sent_text`):
    a restore sends exactly that again, since a tool may act on the order (tags merged into the world as they come).
    Logs are compared as that text, so calls whose arguments differ only in key order count as different calls (a
    server started again, never a world taken for the recorded one)."""

    tool: str
    arguments: str
    content: str
    is_error: bool


# -- observations: as langchain-mcp-adapters gives a tool result to the model ---------------------------------------


def _block(content: Mapping[str, Any]) -> dict[str, Any]:
    """One MCP content block as the LangChain content block langchain-mcp-adapters makes of it."""
    kind = content.get("type")
    if kind == "text":
        return {"type": "text", "text": str(content.get("text", ""))}
    if kind in ("image", "audio"):
        # The adapters refuse audio (NotImplementedError, the run fails); a replayed branch shows its placeholder.
        return {"type": kind, "base64": content.get("data", ""), "mime_type": content.get("mimeType")}
    if kind == "resource_link":
        mime = content.get("mimeType") or None
        block_kind = "image" if mime and str(mime).startswith("image/") else "file"
        return {"type": block_kind, "url": str(content.get("uri", "")), "mime_type": mime}
    if kind == "resource":
        resource = content.get("resource") or {}
        if isinstance(resource.get("text"), str):
            return {"type": "text", "text": resource["text"]}
        mime = resource.get("mimeType") or None
        block_kind = "image" if mime and str(mime).startswith("image/") else "file"
        return {"type": block_kind, "base64": resource.get("blob", ""), "mime_type": mime}
    return {"type": "text", "text": json.dumps(content, ensure_ascii=False, sort_keys=True)}


def result_observation(result: Mapping[str, Any]) -> Observation:
    """An MCP ``CallToolResult`` (its JSON form: ``content``, ``structuredContent``, ``isError``) as the observation the
    model saw through langchain-mcp-adapters: its content blocks as :func:`~ee_middleware.messages.content_to_text`
    gives a ``ToolMessage``'s content (text joined, an image as its placeholder, never its bytes); ``isError`` an error
    observation with the same text (:data:`EMPTY_ERROR` without content). ``structuredContent`` is the message's
    artifact, which the model never sees, so it is not in the text."""
    blocks = [_block(c) for c in result.get("content") or [] if isinstance(c, Mapping)]
    is_error = bool(result.get("isError"))
    if is_error and not blocks:
        blocks = [{"type": "text", "text": EMPTY_ERROR}]
    return Observation(content=content_to_text(blocks), is_error=is_error)


# -- the config file --------------------------------------------------------------------------------------------------

_SERVER_KEYS = {"command", "args", "env", "cwd", "transport", "type", "path"}
_OPTION_KEYS = {
    "allow_open_world",
    "outside_world_tools",
    "timeout_s",
    "start_timeout_s",
    "spare_servers",
    "kind",
    "tool_name_prefix",
    "open_world_default",
}


def load_mcp_config(path: str | os.PathLike[str]) -> tuple[dict[str, McpServer], dict[str, Any]]:
    """The servers and sandbox options of an MCP sandbox config file (JSON), for ``--sandbox mcp:CONFIG.json``.

    The servers as MCP client configs write them: ``{"mcpServers": {"notes": {"command": "python", "args":
    ["notes_server.py"], "env": {...}}}}`` (``"servers"`` is taken too, and so is one server's entry on its own, named
    after the file). A server entry may say ``"transport": "streamable_http"`` (with ``"path"``, default ``/mcp``);
    its ``args`` then take ``{port}``. A relative ``cwd`` is relative to the file's folder, which is also the default.
    Beside the servers, :class:`McpSandbox`'s options: ``allow_open_world`` (tool names), ``outside_world_tools`` (tool
    names), ``timeout_s``, ``start_timeout_s``, ``spare_servers``, ``kind``, ``tool_name_prefix``, ``open_world_default``.
    """
    if not str(path).strip():  # (Path("") is the working folder: "not readable JSON: Is a directory")
        raise SandboxError("Give the MCP sandbox's config file: --sandbox mcp:CONFIG.json (see docs/sandboxes.md).")
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SandboxError(f"MCP sandbox config {str(file)!r} does not exist; give the JSON file that names your MCP servers.") from None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"MCP sandbox config {str(file)!r} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SandboxError(f"MCP sandbox config {str(file)!r} must be a JSON object, got a {type(data).__name__}.")
    servers_key = next((k for k in ("mcpServers", "servers") if k in data), None)
    if servers_key is not None:
        entries = data[servers_key]
        rest = {k: v for k, v in data.items() if k != servers_key}
        if not isinstance(entries, dict) or not entries:
            raise SandboxError(
                f'{servers_key} in {str(file)!r} must be an object naming at least one server: {{"notes": {{"command": ...}}}}.'
            )
    elif "command" in data:
        entries = {file.stem: {k: v for k, v in data.items() if k in _SERVER_KEYS or k == "url"}}
        rest = {k: v for k, v in data.items() if k not in _SERVER_KEYS and k != "url"}
    else:
        raise SandboxError(
            f'MCP sandbox config {str(file)!r} names no server: give {{"mcpServers": {{"NAME": {{"command": ..., "args": [...]}}}}}}, '
            "as MCP client configs do."
        )
    unknown = sorted(set(rest) - _OPTION_KEYS)
    if unknown:
        raise SandboxError(
            f'MCP sandbox config {str(file)!r}: unknown key(s) {unknown}; the servers go under "mcpServers", and the sandbox takes '
            f"{sorted(_OPTION_KEYS)}."
        )
    servers = {str(name): _server_entry(file, str(name), entry) for name, entry in entries.items()}
    for name, value in rest.items():
        try:
            _checked_option(name, value)
        except SandboxError as exc:
            raise SandboxError(f"MCP sandbox config {str(file)!r}: {exc}") from None
    return servers, rest


def _server_entry(file: Path, name: str, entry: Any) -> McpServer:
    where = f"server {name!r} in {str(file)!r}"
    if not isinstance(entry, dict):
        raise SandboxError(f"{where} must be an object with a command, got a {type(entry).__name__}.")
    if "url" in entry and "command" not in entry:
        raise SandboxError(
            f"{where} gives a url: McpSandbox starts each server itself (a fresh world per trajectory), so give the command "
            'that starts it, with {port} where it takes its port, and "transport": "streamable_http".'
        )
    unknown = sorted(set(entry) - _SERVER_KEYS - {"url"})
    if unknown:
        raise SandboxError(f"{where}: unknown key(s) {unknown}; a server takes {sorted(_SERVER_KEYS)}.")
    transport = str(entry.get("transport", entry.get("type", "stdio")))
    if transport not in _TRANSPORTS:
        raise SandboxError(f"{where}: transport {transport!r} is not known; use 'stdio' or 'streamable_http'.")
    args = entry.get("args", [])
    env = entry.get("env", {})
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise SandboxError(f"{where}: args must be a list of strings, got {args!r:.200}.")
    if not isinstance(env, dict):
        raise SandboxError(f"{where}: env must be an object of variable names and values, got {env!r:.200}.")
    cwd = Path(str(entry["cwd"])) if entry.get("cwd") else None
    cwd = cwd if cwd is not None and cwd.is_absolute() else (file.parent / cwd if cwd else file.parent)
    return McpServer(
        command=str(entry.get("command", "")),
        args=tuple(str(a) for a in args),
        env={str(k): str(v) for k, v in env.items()},
        cwd=str(cwd.resolve()),
        transport=_TRANSPORTS[transport],
        path=str(entry.get("path", "/mcp")),
    )


# -- one server process and its MCP session (lives on the sandbox's event loop) ---------------------------------------


class _ServerFailed(Exception):
    """A server could not be started or stopped answering."""


def _guard_code() -> str:
    root = str(Path(__file__).resolve().parents[3])
    return f"import sys; sys.path.insert(0, {root!r}); from ee_middleware.replay.sandboxes.mcp_guard import main; sys.exit(main())"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_SERVER: contextvars.ContextVar[_Instance] = contextvars.ContextVar("ee_mcp_server")
"""The server whose stdio client runs in this task (its reader tasks inherit it): whose output a log record is about."""
_STRAY_LINE_LOGGED = "Failed to parse JSONRPC message"
"""How MCP's stdio client logs (with a traceback) each line a server writes to its standard output that is not MCP."""


class _StrayOutputFilter(logging.Filter):
    """Keeps the first line a sandbox's server wrote to its standard output that is not an MCP message, and drops MCP's
    traceback for it and every later one (the sandbox warns once per server instead: :meth:`McpSandbox._tell_stray`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        instance = _SERVER.get(None)
        if instance is None or not str(record.msg).startswith(_STRAY_LINE_LOGGED):
            return True
        instance.stray_lines += 1
        if instance.first_stray_line is None:
            error = record.exc_info[1] if record.exc_info else None
            found = getattr(error, "errors", None)
            try:
                line = found()[0]["input"] if callable(found) else str(error)
            except Exception:  # noqa: BLE001 - some other error: its text
                line = str(error)
            instance.first_stray_line = str(line)
        return False


_STRAY_OUTPUT_FILTER = _StrayOutputFilter()


class _Instance:
    """One process of one server, started for one environment, with the calls that changed it since."""

    def __init__(self, name: str, spec: McpServer, environment: str, serial: int, workdir: Path, variable: str) -> None:
        self.name = name
        self.spec = spec
        self.environment = environment
        self.serial = serial
        self.log: list[_Done] = []
        self.tools: dict[str, dict[str, Any]] = {}
        self.broken: str | None = None
        self.session: Any = None
        self.pgid: int | None = None
        self.stray_lines = 0
        self.first_stray_line: str | None = None
        self._variable = variable
        self._pid_file = workdir / f"{name}-{serial}.pid"
        self._stderr = self._pid_file.with_suffix(".stderr")  # the guard finds it by this name when orphaned
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stopping = asyncio.Event()
        self._clean_end = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    # life

    def _environment_variables(self, port: int | None = None) -> dict[str, str]:
        values = {**self.spec.env, self._variable: self.environment}
        if port is not None:
            values = {k: v.replace("{port}", str(port)) for k, v in values.items()}
            values[PORT_VARIABLE] = str(port)
        return values

    async def _run(self) -> None:
        try:
            if self.spec.transport == "stdio":
                await self._run_stdio()
            else:
                await self._run_http()
        except BaseException as exc:  # the caller learns it from ready() or the next call
            self._fail_ready(exc)
            self.broken = self.broken or f"{type(exc).__name__}: {exc}"
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.session = None
            self.kill()
            self._fail_ready(None)

    def _fail_ready(self, exc: BaseException | None) -> None:
        if not self._ready.done():
            self._ready.set_exception(_ServerFailed(self._failure_text(exc)))
            self._ready.exception()  # retrieved: a spare nobody waits for must not log it at collection

    async def _run_stdio(self) -> None:
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(
            command=sys.executable,
            args=["-c", _guard_code(), str(os.getpid()), str(self._pid_file), "--", self.spec.command, *self.spec.args],
            env=self._environment_variables(),
            cwd=self.spec.cwd,
        )
        logging.getLogger("mcp.client.stdio").addFilter(_STRAY_OUTPUT_FILTER)  # the same filter once, however often added
        _SERVER.set(self)
        with open(self._stderr, "w", encoding="utf-8") as errlog:
            async with stdio_client(params, errlog=errlog) as streams:
                await self._session(streams)

    async def _run_http(self) -> None:
        from mcp.client.stdio import get_default_environment
        from mcp.client.streamable_http import streamable_http_client

        port = _free_port()
        argv = [sys.executable, "-c", _guard_code(), str(os.getpid()), str(self._pid_file), "--", self.spec.command]
        argv += [a.replace("{port}", str(port)) for a in self.spec.args]
        with open(self._stderr, "w", encoding="utf-8") as errlog:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=errlog,
                stderr=errlog,
                env=get_default_environment() | self._environment_variables(port),
                cwd=self.spec.cwd,
                start_new_session=True,
            )
        self.pgid = proc.pid
        try:
            while True:  # until the server listens (or exits)
                if proc.poll() is not None:
                    raise _ServerFailed(f"it exited with code {proc.returncode} before it listened on port {port}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(_PORT_POLL_S)
                    continue
                writer.close()
                await writer.wait_closed()
                break
            async with streamable_http_client(f"http://127.0.0.1:{port}{self.spec.path}") as streams:
                await self._session(streams)
            if self._clean_end:  # as a process manager ends a server: SIGTERM (the guard passes it over), then SIGKILL
                kill_process_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, proc.wait), SHUTDOWN_GRACE_S)
                except TimeoutError:
                    pass
        finally:
            self.kill()
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)

    async def _session(self, streams: Sequence[Any]) -> None:
        from mcp import ClientSession

        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            cursor: str | None = None
            while True:  # every page of tools, as langchain-mcp-adapters lists them
                page = (await _list_tools(session, cursor)).model_dump(by_alias=True, mode="json")
                self.tools.update({t["name"]: t for t in page.get("tools") or []})
                cursor = page.get("nextCursor")
                if not cursor:
                    break
            self.session = session
            self._ready.set_result(None)
            await self._stopping.wait()

    async def ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self.kill()
            raise _ServerFailed(f"it did not answer MCP's initialize within {timeout:g} s (start_timeout_s){self._stderr_tail()}") from None

    def _failure_text(self, exc: BaseException | None) -> str:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # anyio's task groups: say what went wrong inside
            exc = exc.exceptions[0]
        what = "it stopped before it answered MCP's initialize" if exc is None else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, _ServerFailed):
            what = str(exc)
        return f"{what}{self._stderr_tail()}"

    def _stderr_tail(self, chars: int = 2000) -> str:
        text = self.stderr_end(chars)
        return f"; its standard error ends with:\n{text}" if text else ""

    def stderr_end(self, chars: int) -> str:
        """The last ``chars`` characters the server wrote on its standard error ("" for none, or once it is stopped)."""
        try:
            return self._stderr.read_text(encoding="utf-8", errors="replace").strip()[-chars:]
        except OSError:
            return ""

    @property
    def group(self) -> int | None:
        """The process group of the guard and the server (the guard's id, from its pid file), once known."""
        if self.pgid is None:
            try:
                self.pgid = int(self._pid_file.read_text())
            except (OSError, ValueError):
                return None
        return self.pgid

    def kill(self) -> None:
        """Kill the server's whole process group at once (it is a throwaway world: nothing to save)."""
        group = self.group
        if group is not None:
            kill_process_group(group)

    async def stop(self, *, clean: bool = False, terminate: bool = False) -> bool:
        """End the server: at once (``SIGKILL``), or, ``clean``, as MCP clients end one (its standard input closed, for a
        streamable-HTTP server ``SIGTERM``; ``terminate``: ``SIGTERM`` to an stdio server too, as its input closes),
        killed only if it still runs :data:`SHUTDOWN_GRACE_S` later. Whether it ended within that time."""
        if clean and self.broken is None and self.session is None and not self.task.done():  # a spare still starting
            try:
                await asyncio.wait_for(asyncio.shield(self._ready), SHUTDOWN_GRACE_S)
            except BaseException:  # noqa: BLE001 - it did not start in time (or at all): killed below
                pass
        self._clean_end = clean and self.broken is None and self.session is not None
        if not self._clean_end:
            self.kill()
        elif terminate and self.group is not None:
            kill_process_group(self.group, signal.SIGTERM)  # the guard passes it over to the server
        began = asyncio.get_running_loop().time()
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), _STOP_WAIT_S)
        except BaseException:  # noqa: BLE001 - a transport that does not wind down: cancel it (the group is dead already)
            self.task.cancel()
            try:
                await asyncio.wait_for(self.task, _STOP_WAIT_S)
            except BaseException:  # noqa: BLE001
                pass
        ended = asyncio.get_running_loop().time() - began < SHUTDOWN_GRACE_S
        self.kill()  # anything the server started while we waited
        for path in (self._pid_file, self._stderr):
            path.unlink(missing_ok=True)
        return ended

    # calls

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.session is None:
            raise _ServerFailed(self.broken or "the server is not running")
        result = await asyncio.wait_for(self.session.call_tool(tool, arguments), timeout)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)


# -- the sandbox --------------------------------------------------------------------------------------------------------


_SECONDS_OPTIONS = frozenset({"timeout_s", "start_timeout_s"})
_NAMES_OPTIONS = frozenset({"allow_open_world", "outside_world_tools"})


def _checked_option(name: str, value: Any) -> Any:
    """One :class:`McpSandbox` option checked for its type (a config file's ``"timeout_s": "5"`` or
    ``"outside_world_tools": 5`` is refused naming the option, not met later as a ``TypeError``): tool names come back
    as a list (one name on its own taken as a list of it), any other option as it is."""
    if name in _NAMES_OPTIONS:
        names = [value] if isinstance(value, str) else value
        if isinstance(names, (Mapping, bytes)) or not isinstance(names, Iterable):
            raise SandboxError(f'{name} must be a list of tool names (strings), e.g. ["page_oncall"]; got {value!r:.200}.')
        listed = list(names)
        if not all(isinstance(tool, str) and tool.strip() for tool in listed):
            raise SandboxError(f'{name} must be tool names (non-empty strings), e.g. ["page_oncall"]; got {listed!r:.200}.')
        return listed
    if name in _SECONDS_OPTIONS:
        # bool is an int; NaN fails the comparison; inf would fail every call's wait
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise SandboxError(
                f"{name} must be a finite number of seconds > 0, got {value!r:.100} "
                "(e.g. timeout_s = 600 for a slow tool; there is no 'no limit')."
            )
    elif name == "kind":
        if not isinstance(value, str) or not value.strip():
            raise SandboxError(
                f'kind (the sandbox name stored in rollout records) must be a non-empty string, got {value!r:.100}, e.g. "notes-mcp".'
            )
    elif not isinstance(value, bool):  # allow_network, spare_servers, tool_name_prefix, open_world_default
        raise SandboxError(f"{name} must be true or false, got {value!r:.100} (a {type(value).__name__}).")
    return value


class McpSandbox(ClosedOnExit):
    """The app's own MCP servers, started fresh per trajectory, as a replay sandbox (see the module docstring).

    Args:
        servers: server name -> :class:`McpServer` (one server on its own is named ``mcp``); the name is the one the
            app gave ``MultiServerMCPClient``.
        allow_open_world: tools whose annotations say ``openWorldHint: true`` that replay may call all the same
            (they act only on the server's own throwaway world).
        allow_network: allow every ``openWorldHint`` tool (what ``ee replay run --allow-network`` passes).
        outside_world_tools: tools that act only outside the world the servers rebuild (they page on-call, send an
            e-mail), as the recording names them: never called, whether a server lists them or not (a tool of the app's
            own); replay leaves the expert's calls of them unexecuted, their recorded results standing for them
            (:meth:`acts_outside_world`), and refuses proposals of them. A name here may not be in ``allow_open_world``.
        timeout_s: how long one tool call may take; past it the call is a ``timeout`` sandbox failure and the server
            is restarted with the world as it was before the call.
        start_timeout_s: how long a server may take to start and answer MCP's ``initialize``.
        spare_servers: keep a fresh server warm for the next restore (one process per server more).
        kind: the name stored in rollout records.
        tool_name_prefix: tools are named ``SERVER_TOOL``, as ``MultiServerMCPClient(..., tool_name_prefix=True)`` names them.
        open_world_default: treat a tool without an ``openWorldHint`` annotation (and not ``readOnlyHint: true``) as
            reaching the world outside the server, as the MCP spec does (the default: refused unless allowed); ``False``
            for a server whose unannotated tools act only on its own world.
    """

    def __init__(
        self,
        servers: Mapping[str, McpServer] | McpServer,
        *,
        allow_open_world: Iterable[str] = (),
        allow_network: bool = False,
        outside_world_tools: Iterable[str] = (),
        timeout_s: float = 30.0,
        start_timeout_s: float = 30.0,
        spare_servers: bool = True,
        kind: str = "mcp",
        tool_name_prefix: bool = False,
        open_world_default: bool = True,
    ) -> None:
        import_optional("mcp", extra="mcp", purpose="replay agents whose tools come from MCP servers (--sandbox mcp:CONFIG.json)")
        if isinstance(servers, McpServer):
            servers = {"mcp": servers}
        if not isinstance(servers, Mapping) or not servers:
            raise SandboxError("McpSandbox needs at least one server: McpSandbox({'notes': McpServer('python', ('notes_server.py',))}).")
        for name, spec in servers.items():
            if not isinstance(spec, McpServer):
                raise SandboxError(f"McpSandbox server {name!r} is a {type(spec).__name__}, not an McpServer(command, args, env, ...).")
        allowed = _checked_option("allow_open_world", allow_open_world)
        outside = _checked_option("outside_world_tools", outside_world_tools)
        both = sorted(set(outside) & set(allowed))
        if both:
            raise SandboxError(
                f"Tools {both} are listed both in outside_world_tools (never called: they act only outside the world) and in "
                "allow_open_world (called: they act only on the server's own world); list each once."
            )
        settings = {"timeout_s": timeout_s, "start_timeout_s": start_timeout_s, "kind": kind, "allow_network": allow_network}
        settings |= {"spare_servers": spare_servers, "tool_name_prefix": tool_name_prefix, "open_world_default": open_world_default}
        for name, value in settings.items():
            _checked_option(name, value)
        self.kind = kind
        self.servers = dict(servers)
        self.allow_open_world = frozenset(allowed)
        self.allow_network = allow_network
        self.outside_world_tools = frozenset(outside)
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.spare_servers = spare_servers
        self.tool_name_prefix = tool_name_prefix
        self.open_world_default = open_world_default
        self.variable = ENVIRONMENT_VARIABLE
        self.restarts = 0
        """How many servers were started again to restore a world (the naive strategy's cost)."""
        self._id = uuid.uuid4().hex
        self._lock = threading.RLock()
        self._serials = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._workdir: Path | None = None
        self._environment: str | None = None
        self._active: dict[str, _Instance] = {}
        self._spares: dict[str, _Instance] = {}
        self._ending: dict[concurrent.futures.Future[None], _Instance] = {}  # servers let go, ending cleanly
        self._outlive_input: set[str] = set()  # stdio servers seen running on after their standard input closed
        self._told_stray: set[str] = set()  # servers warned of for writing other lines than MCP's to standard output
        self._tools: dict[str, tuple[str, str, dict[str, Any]]] | None = None  # sandbox tool name -> (server, MCP name, tool)
        self._closed = False
        self._close_at_exit()

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **options: Any) -> McpSandbox:
        """The sandbox a config file describes (:func:`load_mcp_config`); ``options`` override the file's."""
        servers, settings = load_mcp_config(path)
        return cls(servers, **{**settings, **options})

    # -- the protocol ---------------------------------------------------------------------------------------------------

    def covers(self, tool_name: str) -> bool:
        """Whether a server has the tool and replay may call it (not open-world, not declared outside the world, not the
        fast path's own tools)."""
        if tool_name in self.outside_world_tools:
            return False
        tools = self._tools
        return tools is not None and tool_name in tools and self.refusal_hint(tool_name) is None

    def acts_outside_world(self, tool_name: str) -> bool:
        """Whether ``tool_name`` is one of ``outside_world_tools``: never called, the expert's recorded result standing for
        it (see :func:`~ee_middleware.replay.sandboxes.protocol.acts_outside_world`)."""
        return tool_name in self.outside_world_tools

    def refusal_hint(self, tool_name: str) -> str | None:
        """Why replay does not call ``tool_name`` and what to do: a tool declared in ``outside_world_tools``, a tool a
        server has but replay may not call (``openWorldHint``, or the fast path's own tools), or one no server lists
        (renamed or removed since the recording, named without or with the server's prefix, or no MCP tool at all).
        ``None`` when replay calls it, or when the servers could not be started to ask them."""
        if tool_name in self.outside_world_tools:  # known without asking the servers
            return (
                f"tool '{tool_name}': it is declared in the MCP sandbox's outside_world_tools (it acts only outside the world), "
                "so replay never calls it; the expert's recorded result stands for its calls"
            )
        tools = self._tools if self._tools is not None else self._probe_tools()
        if tools is None:
            return None
        found = tools.get(tool_name)
        if found is None:
            return self._missing_hint(tool_name, tools)
        server, mcp_name, tool = found
        if mcp_name in (SNAPSHOT_TOOL, RESTORE_TOOL):
            return f"tool '{tool_name}': it is the MCP sandbox's own {mcp_name[3:]} tool (server '{server}'), not one of the app's"
        if not self._open_world(tool) or self.allow_network or tool_name in self.allow_open_world:
            return None
        said = (
            "say openWorldHint: true (it reaches the world outside the server)"
            if (tool.get("annotations") or {}).get("openWorldHint")
            else "say nothing of openWorldHint, which the MCP spec takes as reaching the world outside the server"
        )
        return (
            f"tool '{tool_name}' (MCP server '{server}'): its MCP annotations {said}, so "
            f"replay never calls it. If it acts only on the server's own throwaway world, allow it by name: "
            f'McpSandbox(allow_open_world=[\'{tool_name}\']) or "allow_open_world": ["{tool_name}"] in the MCP sandbox\'s config '
            'file, or annotate it openWorldHint: false in the server ("open_world_default": false takes every unannotated '
            "tool for one; --allow-network allows every such tool). If it does act outside the world (it sends an e-mail, "
            f'pages someone), declare it instead: "outside_world_tools": ["{tool_name}"] in the config file '
            f"(McpSandbox(outside_world_tools=['{tool_name}'])), and replay leaves the expert's calls of it unexecuted, their "
            "recorded results standing for them"
        )

    def _missing_hint(self, tool_name: str, tools: Mapping[str, tuple[str, str, dict[str, Any]]]) -> str:
        """What to do about a tool no server lists: the servers' names and tools, and the likely reason."""
        names = ", ".join(repr(name) for name in self.servers)
        several = len(self.servers) > 1
        listed = sorted(tools)
        shown = ", ".join(listed[:_TOOLS_SHOWN]) + (f" and {len(listed) - _TOOLS_SHOWN} more" if len(listed) > _TOOLS_SHOWN else "")
        said = (
            f"tool '{tool_name}': MCP server{'s' if several else ''} {names} list{'' if several else 's'} no such tool "
            f"({'they list' if several else 'it lists'} {shown or 'no tools'})"
        )
        by_mcp_name = {(server, mcp_name) for server, mcp_name, _ in tools.values()}
        prefixed = any(
            tool_name.startswith(f"{server}_") and (server, tool_name[len(server) + 1 :]) in by_mcp_name for server in self.servers
        )
        if prefixed and not self.tool_name_prefix:
            return (
                f"{said}. The app named its tools after their server, as MultiServerMCPClient(..., tool_name_prefix=True) does: "
                'say "tool_name_prefix": true in the MCP sandbox\'s config file (McpSandbox(..., tool_name_prefix=True))'
            )
        if self.tool_name_prefix and any(mcp_name == tool_name for _, mcp_name in by_mcp_name):
            return (
                f'{said}. The app did not name its tools after their server: leave out "tool_name_prefix" (or say false) '
                "in the MCP sandbox's config file"
            )
        return (
            f"{said}. Renamed or removed since the recording? Replay with the server as the app ran it then; a tool the app "
            "did not get from an MCP server cannot run in the MCP sandbox. If it acts only outside the world (it pages "
            f'someone, sends an e-mail), declare it: "outside_world_tools": ["{tool_name}"] in the config file '
            f"(McpSandbox(outside_world_tools=['{tool_name}'])), and replay leaves the expert's calls of it unexecuted, their "
            "recorded results standing for them"
        )

    def reset(self, environment: dict[str, Any] | None) -> None:
        """Start every server fresh with ``environment`` in ``EE_ENVIRONMENT``; a server that does not start skips the trajectory."""
        try:  # keys in the recorded order: a server may build its world in that order (tags, a queue keyed by id)
            text = json.dumps(environment, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise EnvironmentUnavailableError(
                f"{self.kind} sandbox: the environment reference is not JSON, which MCP servers get: {exc}"
            ) from exc
        with self._lock:
            self._open()
            self._let_go(*self._detach(keep_spares_of=text))
            self._environment = text
            self._tools = None
            started = {name: self._take(name) for name in self.servers}
            for name, instance in started.items():
                try:
                    self._run(instance.ready(self.start_timeout_s), self.start_timeout_s + _STOP_WAIT_S)
                except _ServerFailed as exc:
                    self._active = started
                    self._run(self._drop_all())
                    raise EnvironmentUnavailableError(f"{self.kind} sandbox: MCP server {name!r} did not start: {exc}") from None
                finally:
                    self._tell_stray(instance)
            self._active = started
            self._tools = self._tool_table(started)

    def execute(self, call: ToolCall) -> Observation:
        with self._lock:
            self._check_ready()
            assert self._tools is not None
            if call.name in self.outside_world_tools:  # never called, served or not
                return Observation(content=f"Error: replay does not call {self.refusal_hint(call.name)}", is_error=True)
            found = self._tools.get(call.name)
            if found is None:
                return Observation(content=f"Error: tool '{call.name}' is not available in this sandbox.", is_error=True)
            refused = self.refusal_hint(call.name)
            if refused is not None:
                return Observation(content=f"Error: replay does not call {refused}", is_error=True)
            server, mcp_name, tool = found
            instance = self._live(server)
            try:
                wire = self._run(instance.call(mcp_name, dict(call.arguments), self.timeout_s), self.timeout_s + _STOP_WAIT_S)
            except TimeoutError:
                return self._failed(
                    instance,
                    call,
                    "timeout",
                    f"timed out after {self.timeout_s:g} s",
                    ' If the tool is only slow, raise the MCP sandbox\'s own limit: "timeout_s" in its config file, '
                    "McpSandbox(timeout_s=...) in code.",
                )
            except Exception as exc:  # noqa: BLE001 - the server's answer, or its death
                answered = _json_rpc_error(exc)
                if answered is None:  # (what the server wrote on its way out is read before its files go with it)
                    said = instance.stderr_end(600)
                    said = f" The server's standard error ends with:\n{said}" if said else ""
                    return self._failed(instance, call, "crash", f"lost its MCP server '{server}' ({type(exc).__name__}: {exc})", said)
                observation = Observation(content=f"Error: {answered}", is_error=True)
            else:
                observation = result_observation(wire)
            if not self._read_only(tool):
                instance.log.append(_Done(mcp_name, _sent_text(call.arguments), observation.content, observation.is_error))
            self._tell_stray(instance)  # (a server that prints inside its tools)
            return observation

    def snapshot(self) -> McpSnapshot:
        with self._lock:
            self._check_ready()
            tokens: dict[str, tuple[int, str]] = {}
            for name, instance in self._active.items():
                if instance.broken is None and self._fast(instance):
                    token = self._fast_call(instance, SNAPSHOT_TOOL, {})
                    if token is not None:
                        tokens[name] = (instance.serial, token)
            assert self._environment is not None
            return McpSnapshot(
                owner=self._id,
                environment=self._environment,
                calls={name: tuple(instance.log) for name, instance in self._active.items()},
                tokens=tokens,
            )

    def restore(self, snapshot: McpSnapshot) -> None:
        if not isinstance(snapshot, McpSnapshot):
            raise SandboxError(f"McpSandbox.restore() needs a snapshot from McpSandbox.snapshot(), got {type(snapshot).__name__}.")
        with self._lock:
            self._check_ready()
            if snapshot.environment != self._environment or set(snapshot.calls) != set(self._active):
                self._restart_all(snapshot.environment)
            for name, calls in snapshot.calls.items():
                self._restore_server(name, list(calls), snapshot.tokens.get(name) if snapshot.owner == self._id else None)

    def close(self) -> None:
        """Stop every server (its whole process group) and the sandbox's event loop. Idempotent; :meth:`reset` reopens."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            self._closed = True
            self._tools = None
            self._environment = None
            loop, thread = self._loop, self._thread
            if thread is threading.current_thread():  # collected on its own loop: kill, never wait on the loop from it
                for instance in [*self._active.values(), *self._spares.values(), *self._ending.values()]:
                    instance.kill()
                loop.call_soon(loop.stop)  # type: ignore[union-attr]
                if self._workdir is not None:
                    shutil.rmtree(self._workdir, ignore_errors=True)
                    self._workdir = None
                return
            if loop is not None and thread is not None and thread.is_alive():
                try:
                    self._run(self._drop_all(), 2 * _STOP_WAIT_S + 1)
                except Exception:  # noqa: BLE001 - whatever is left is killed below
                    pass
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=_STOP_WAIT_S)
                if not thread.is_alive():
                    loop.close()
            for instance in [*self._active.values(), *self._spares.values(), *self._ending.values()]:
                instance.kill()
            self._active, self._spares, self._ending = {}, {}, {}
            self._loop = self._thread = None
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    @property
    def server_pids(self) -> list[int]:
        """The process groups of the servers running now, spares included (for tests and debugging)."""
        return [g for i in [*self._active.values(), *self._spares.values()] if (g := i.group) is not None]

    # -- internals ------------------------------------------------------------------------------------------------------

    def _open(self) -> None:
        """The event loop thread and working folder, made again after a close."""
        self._closed = False
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="ee-mcp-sandbox-"))
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=f"ee-mcp-sandbox-{self._id[:8]}", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return result_with_signal_checks(future, timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _check_ready(self) -> None:
        if self._closed:
            raise SandboxError(f"{self.kind} sandbox is closed; call reset(environment) to use it again.")
        if self._environment is None or self._tools is None:
            raise SandboxError(f"{self.kind} sandbox: call reset(environment) before execute(), snapshot() or restore().")

    def _start(self, name: str) -> _Instance:
        assert self._environment is not None and self._workdir is not None
        environment, workdir, serial = self._environment, self._workdir, next(self._serials)

        async def start() -> _Instance:
            return _Instance(name, self.servers[name], environment, serial, workdir, self.variable)

        return self._run(start(), _STOP_WAIT_S)

    def _take(self, name: str) -> _Instance:
        """A fresh server for the current environment: the warm spare when there is one, and a new spare started."""
        spare = self._spares.pop(name, None)
        if spare is not None and (spare.environment != self._environment or spare.broken is not None or spare.task.done()):
            self._let_go(spare)
            spare = None
        instance = spare if spare is not None else self._start(name)
        if self.spare_servers:
            self._spares[name] = self._start(name)
        return instance

    def _detach(self, keep_spares_of: str | None = None) -> list[_Instance]:
        """Take every running server off the sandbox (and the spares, unless they are for ``keep_spares_of``)."""
        detached = list(self._active.values())
        self._active = {}
        if keep_spares_of is None or any(s.environment != keep_spares_of for s in self._spares.values()):
            detached += list(self._spares.values())
            self._spares = {}
        return detached

    async def _drop_all(self) -> None:
        """End every server, those let go before included, each cleanly when it is healthy; wait till all have ended."""
        ending = [asyncio.wrap_future(future) for future in list(self._ending)]
        stops = [self._end(instance) for instance in self._detach()]
        await asyncio.gather(*stops, *ending, return_exceptions=True)

    def _let_go(self, *instances: _Instance) -> None:
        """End ``instances`` cleanly in the background (:meth:`_Instance.stop`): replay goes on with a fresh server the
        while; past :data:`_ENDING_AT_ONCE` ending at once, wait for one to end first."""
        assert self._loop is not None
        for instance in instances:
            while len(self._ending) >= _ENDING_AT_ONCE:
                concurrent.futures.wait(list(self._ending), timeout=2 * _STOP_WAIT_S + 1, return_when=concurrent.futures.FIRST_COMPLETED)
            future = asyncio.run_coroutine_threadsafe(self._end(instance), self._loop)
            self._ending[future] = instance
            future.add_done_callback(lambda done: self._ending.pop(done, None))

    async def _end(self, instance: _Instance) -> None:
        """End ``instance`` cleanly; an stdio server that did not end once its input closed gets ``SIGTERM`` at once
        after (servers that outlive their input would hold a restore up by :data:`SHUTDOWN_GRACE_S` each)."""
        stdio = instance.spec.transport == "stdio"
        ended = await instance.stop(clean=True, terminate=stdio and instance.name in self._outlive_input)
        if stdio and not ended:
            self._outlive_input.add(instance.name)

    def _restart_all(self, environment: str) -> None:
        self._let_go(*self._detach(keep_spares_of=environment))
        self._environment = environment
        self._active = {name: self._take(name) for name in self.servers}
        for name, instance in self._active.items():
            self._ready(instance, f"restart MCP server {name!r}")

    def _ready(self, instance: _Instance, doing: str) -> None:
        try:
            self._run(instance.ready(self.start_timeout_s), self.start_timeout_s + _STOP_WAIT_S)
        except _ServerFailed as exc:
            raise SandboxError(f"{self.kind} sandbox could not {doing}: {exc}") from None
        finally:
            self._tell_stray(instance)

    def _tell_stray(self, instance: _Instance) -> None:
        """Warn, once per server, that it writes lines that are not MCP messages to its standard output, at its start or
        in a tool call (MCP's client logged a traceback for every one of them)."""
        if instance.first_stray_line is None or instance.name in self._told_stray:
            return
        self._told_stray.add(instance.name)
        warnings.warn(
            f"MCP server {instance.name!r} writes lines that are not MCP messages to its standard output (the first: "
            f"{instance.first_stray_line!r:.200}; {instance.stray_lines} so far). MCP's stdio client skips them, and "
            "replay says this once; but standard output is the MCP channel, and such a line can break a message: have the "
            "server print (and log) to standard error instead.",
            stacklevel=2,
        )

    def _tool_table(self, instances: Mapping[str, _Instance]) -> dict[str, tuple[str, str, dict[str, Any]]]:
        table: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for server, instance in instances.items():
            for mcp_name, tool in instance.tools.items():
                name = f"{server}_{mcp_name}" if self.tool_name_prefix else mcp_name
                if name in table:
                    raise SandboxError(
                        f"MCP servers {table[name][0]!r} and {server!r} both have a tool {name!r}; name tools apart with "
                        "tool_name_prefix=True, as MultiServerMCPClient(..., tool_name_prefix=True) does."
                    )
                table[name] = (server, mcp_name, tool)
        return table

    def _probe_tools(self) -> dict[str, tuple[str, str, dict[str, Any]]] | None:
        """The servers' tools on a sandbox never reset (a refusal hint asked in the job's parent): servers started with
        ``EE_ENVIRONMENT=null`` and stopped; ``None`` when a server cannot start so."""
        with self._lock:
            if self._tools is not None:
                return self._tools
            try:
                self.reset(None)
            except SandboxError:
                return None
            tools = self._tools or {}
            self.close()
            return tools

    def _open_world(self, tool: Mapping[str, Any]) -> bool:
        hint = (tool.get("annotations") or {}).get("openWorldHint")
        if hint is None:  # a lookup reaches out only to read, which replay may do; anything else as the spec says
            return not self._read_only(tool) and self.open_world_default
        return bool(hint)

    @staticmethod
    def _read_only(tool: Mapping[str, Any]) -> bool:
        """Whether the tool says ``readOnlyHint: true`` and not ``destructiveHint: true`` too: annotations that contradict
        each other are read the safe way (the spec reads ``destructiveHint`` only where a tool is not read-only)."""
        annotations = tool.get("annotations") or {}
        return bool(annotations.get("readOnlyHint")) and not annotations.get("destructiveHint")

    @staticmethod
    def _fast(instance: _Instance) -> bool:
        return SNAPSHOT_TOOL in instance.tools and RESTORE_TOOL in instance.tools

    def _fast_call(self, instance: _Instance, tool: str, arguments: dict[str, Any]) -> str | None:
        """The fast path's tool answered as text, or ``None`` when it failed (the naive way is taken instead)."""
        try:
            wire = self._run(instance.call(tool, arguments, self.timeout_s), self.timeout_s + _STOP_WAIT_S)
        except Exception:  # noqa: BLE001 - the naive way still works
            return None
        observation = result_observation(wire)
        return None if observation.is_error else observation.content

    def _live(self, name: str) -> _Instance:
        """The server ``name`` runs on, started again (its calls re-run) when its process failed."""
        instance = self._active[name]
        if instance.broken is None and not instance.task.done():
            return instance
        return self._rebuild(name, list(instance.log))

    def _restore_server(self, name: str, calls: list[_Done], token: tuple[int, str] | None) -> None:
        instance = self._active[name]
        healthy = instance.broken is None and not instance.task.done()
        if healthy and instance.log == calls:
            return  # nothing changed it since (read-only calls, or none)
        fast = healthy and token is not None and token[0] == instance.serial
        if fast and token is not None and self._fast_call(instance, RESTORE_TOOL, {"token": token[1]}) is not None:
            instance.log = list(calls)
            return
        if healthy and instance.log == calls[: len(instance.log)]:
            self._replay(instance, calls[len(instance.log) :])  # a later snapshot of the same line: only the calls since
            return
        self._rebuild(name, calls)

    def _rebuild(self, name: str, calls: list[_Done]) -> _Instance:
        """Replace server ``name`` by a fresh process brought to ``calls`` (the naive strategy)."""
        old = self._active[name]
        self._let_go(old)
        fresh = self._take(name)
        self._active[name] = fresh
        self.restarts += 1
        self._ready(fresh, f"start MCP server {name!r} again to restore a snapshot")
        self._replay(fresh, calls)
        return fresh

    def _replay(self, instance: _Instance, calls: list[_Done]) -> None:
        """Run ``calls`` again on ``instance``, each answering as it first did, or :class:`SandboxError`."""
        for done in calls:
            try:
                wire = self._run(instance.call(done.tool, json.loads(done.arguments), self.timeout_s), self.timeout_s + _STOP_WAIT_S)
                observation = result_observation(wire)
                content, is_error = observation.content, observation.is_error
            except Exception as exc:  # noqa: BLE001 - said below
                answered = _json_rpc_error(exc)
                if answered is None:
                    instance.broken = f"{type(exc).__name__}: {exc}"
                    raise SandboxError(
                        f"{self.kind} sandbox could not restore MCP server {instance.name!r}: re-running {done.tool}({done.arguments}) "
                        f"failed ({type(exc).__name__}: {exc})."
                    ) from None
                content, is_error = f"Error: {answered}", True
            instance.log.append(done)
            if (content, is_error) != (done.content, done.is_error):
                instance.broken = "a re-run call answered differently"
                raise SandboxError(
                    f"{self.kind} sandbox could not restore MCP server {instance.name!r}: re-running {done.tool}({done.arguments}) on a "
                    f"fresh server answered {content!r:.300}, the first time {done.content!r:.300}. A restore starts the server "
                    "again and re-runs the calls since the trajectory's start, so every tool must answer the same from the same "
                    f"world: take the time, random numbers and ids from the world the server builds from {self.variable}, and "
                    "keep no state outside it (files, other services) that a fresh server does not start from."
                )

    def _failed(self, instance: _Instance, call: ToolCall, kind: Literal["timeout", "crash"], problem: str, advice: str) -> Observation:
        """The server got no answer for ``call``: kill it; the next use starts it again, the world as before the call."""
        instance.broken = problem
        self._run(instance.stop(), 2 * _STOP_WAIT_S + 1)
        return Observation(
            content=(
                f"Error: tool '{call.name}' {problem} in the MCP sandbox; the server is restarted with the world as it was "
                f"before the call.{advice}"
            ),
            is_error=True,
            sandbox_failure=kind,
        )


async def _list_tools(session: Any, cursor: str | None) -> Any:
    """One page of tools: the first without arguments, the next by ``params`` (mcp 2 and recent 1.x) or ``cursor`` (older 1.x)."""
    if cursor is None:
        return await session.list_tools()
    from mcp import types

    try:
        return await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
    except TypeError:
        return await session.list_tools(cursor=cursor)


def _sent_text(arguments: Mapping[str, Any]) -> str:
    """``arguments`` as JSON text, every object's keys in the order given: what a restore sends again (no ``sort_keys``:
    a tool may act on the order, and the MCP client sends a call's keys as given)."""
    return json.dumps(arguments, ensure_ascii=False, default=str)


def _json_rpc_error(exc: BaseException) -> str | None:
    """The message of an error the server answered (a JSON-RPC error), or ``None`` when the server did not answer."""
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None)
    code = getattr(error, "code", None)
    if not isinstance(message, str) or type(exc).__name__ not in ("McpError", "MCPError"):
        return None
    if code == -32000 or "connection closed" in message.lower():  # the transport's own error: the server is gone
        return None
    return message


def build_mcp_sandbox(spec: str, **options: Any) -> McpSandbox:
    """The sandbox of ``mcp:CONFIG.json`` (the registry's spec), ``options`` over the file's own."""
    return McpSandbox.from_config(spec.strip()[len("mcp:") :], **options)  # (an empty path is refused there)
