"""A tiny sandbox with a dict world, for the subprocess sandbox tests.

It lives in an importable module (not a test file) because spawned child processes import the
factory by name. Tools: ``add(key, n)``, ``get(key)``, ``sleep(seconds)``, ``crash(code)``
(``os._exit``), ``kill_self(signal_name)``, ``hog(mb)`` (allocates a bytearray), ``boom()`` (raises
ValueError), ``vm_size_kb()`` (the process's address space), ``spawn_and_hang(pid_file)``,
``spawn_and_return(pid_file)`` (leaves a process running), ``fork_and_exit(pid_file, code)`` (a
forked process keeps the pipe open while the child calls ``os._exit``) and
``send_pickle_to_parent(marker)`` (writes a pickle that touches ``marker`` when unpickled onto the
pipe to the parent) and ``answer_once_orphaned()`` (returns once the parent process is gone). Unlike a well-behaved sandbox, ``execute`` lets tool exceptions escape, so the
tests see how the subprocess sandbox copes with that.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
import threading
import time
from typing import Any

from ee_middleware.errors import EnvironmentUnavailableError, SandboxError
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.python import PythonSandbox


class CounterSandbox:
    """A dict of counters; ``reset`` reads ``{"counts": {...}}`` from the environment."""

    kind = "counter"

    def __init__(self, reset_sleep: float = 0.0) -> None:
        self.world: dict[str, int] = {}
        self.ready = False
        self.reset_sleep = reset_sleep

    def covers(self, tool_name: str) -> bool:
        return tool_name in TOOLS

    def reset(self, environment: dict[str, Any] | None) -> None:
        environment = environment or {}
        if environment.get("unavailable"):
            raise EnvironmentUnavailableError(f"counter world {environment['unavailable']!r} is gone")
        if environment.get("broken"):
            raise RuntimeError(f"reset exploded: {environment['broken']}")
        if environment.get("hang"):
            time.sleep(float(environment["hang"]))
        self.world = dict(environment.get("counts", {}))
        self.ready = True

    def execute(self, call: ToolCall) -> Observation:
        if not self.ready:
            raise SandboxError("counter sandbox: call reset() first")
        tool = TOOLS.get(call.name)
        if tool is None:
            return Observation(content=f"Error: unknown tool {call.name!r}", is_error=True)
        return Observation(content=str(tool(self.world, **call.arguments)))

    def snapshot(self) -> dict[str, int]:
        return copy.deepcopy(self.world)

    def restore(self, snapshot: dict[str, int]) -> None:
        self.world = copy.deepcopy(snapshot)
        self.ready = True

    def close(self) -> None:
        self.world = {}


def add(world: dict[str, int], key: str, n: int = 1) -> int:
    world[key] = world.get(key, 0) + n
    return world[key]


def get(world: dict[str, int], key: str) -> int:
    return world.get(key, 0)


def sleep(world: dict[str, int], seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def crash(world: dict[str, int], code: int = 3) -> str:
    os._exit(code)


def kill_self(world: dict[str, int], signal_name: str = "SIGKILL") -> str:
    os.kill(os.getpid(), getattr(signal, signal_name))
    time.sleep(10)
    return "still alive"


def hog(world: dict[str, int], mb: int) -> str:
    block = bytearray(mb * 1024 * 1024)
    return f"allocated {len(block) // (1024 * 1024)} MB"


def boom(world: dict[str, int]) -> str:
    raise ValueError("boom went the tool")


def vm_size_kb(world: dict[str, int]) -> int:
    """The child's current address-space size (VmSize), to pick a memory limit in tests."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1])
    return -1


def spawn_and_hang(world: dict[str, int], pid_file: str) -> str:
    """Start a grandchild process, write its pid to ``pid_file``, then hang."""
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    with open(pid_file, "w") as out:
        out.write(str(child.pid))
    time.sleep(60)
    return "unreachable"


def spawn_and_return(world: dict[str, int], pid_file: str) -> str:
    """Start a long-lived process, write its pid to ``pid_file`` and return without stopping it."""
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    with open(pid_file, "w") as out:
        out.write(str(child.pid))
    return "started"


def fork_and_exit(world: dict[str, int], pid_file: str, code: int = 5) -> str:
    """Fork (the forked process inherits the pipe to the parent and keeps it open), then ``os._exit(code)``."""
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    with open(pid_file, "w") as out:
        out.write(str(pid))
    os._exit(code)


def answer_once_orphaned(world: dict[str, int]) -> str:
    """Return as soon as this process's parent is gone (its parent pid changes), so that the answer is sent to a dead
    parent; polled far more often than the child's orphan watchdog looks."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.001)
    return "answered after the parent died"


def start_once_orphaned(pid_file: str) -> CounterSandbox:
    """A factory that writes the child's pid to ``pid_file``, then builds the sandbox once the parent is gone (its
    first answer, the child's start, goes to a dead parent)."""
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
    answer_once_orphaned({})
    return CounterSandbox()


class _TouchOnUnpickle:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def send_pickle_to_parent(world: dict[str, int], marker: str) -> str:
    """Write, onto the pipe to the parent, a pickle that creates ``marker`` wherever it is unpickled."""
    import gc
    from multiprocessing.connection import Connection

    for conn in [o for o in gc.get_objects() if isinstance(o, Connection) and not o.closed]:
        conn.send(_TouchOnUnpickle(marker))
    return "sent"


TOOLS = {
    "add": add,
    "get": get,
    "sleep": sleep,
    "crash": crash,
    "kill_self": kill_self,
    "hog": hog,
    "boom": boom,
    "vm_size_kb": vm_size_kb,
    "spawn_and_hang": spawn_and_hang,
    "spawn_and_return": spawn_and_return,
    "fork_and_exit": fork_and_exit,
    "send_pickle_to_parent": send_pickle_to_parent,
    "answer_once_orphaned": answer_once_orphaned,
}


def make_counter_sandbox() -> CounterSandbox:
    """The factory handed to SubprocessSandbox (module-level, so it pickles by name)."""
    return CounterSandbox()


def build_world(environment: dict[str, Any] | None) -> dict[str, int]:
    """World builder for wrapping the same tools in a PythonSandbox."""
    return dict((environment or {}).get("counts", {}))


PYTHON_SANDBOX_FACTORY = functools.partial(PythonSandbox, build_world, tools=TOOLS)
"""The usual case, as a functools.partial: a PythonSandbox (it turns tool exceptions into observations itself)."""


def broken_factory() -> CounterSandbox:
    raise RuntimeError("factory failed on purpose")


def build_world_with_a_local_function(environment: dict[str, Any] | None) -> dict[str, Any]:
    """A world that deep-copies (in process it replays fine) but does not pickle: it holds a lambda."""
    return {**build_world(environment), "pricing": lambda quantity: quantity * 2}


LAMBDA_WORLD_FACTORY = functools.partial(PythonSandbox, build_world_with_a_local_function, tools=TOOLS, kind="priced")
"""A PythonSandbox whose snapshots cannot leave a subprocess sandbox's child (they must pickle there)."""


class LockSnapshotSandbox(CounterSandbox):
    """A sandbox whose snapshots hold a lock: fine in process, but they cannot leave a subprocess sandbox's child."""

    kind = "locked"

    def snapshot(self) -> Any:
        return (copy.deepcopy(self.world), threading.Lock())

    def restore(self, snapshot: Any) -> None:
        super().restore(snapshot[0])


class DictAnswerSandbox(CounterSandbox):
    """A sandbox with a bug: ``get`` of the key ``odd`` answers a dict instead of an :class:`Observation`."""

    kind = "dict-answer"

    def execute(self, call: ToolCall) -> Any:
        if call.name == "get" and call.arguments.get("key") == "odd":
            return {"content": "oops"}
        return super().execute(call)


def make_dict_answer_sandbox() -> DictAnswerSandbox:
    return DictAnswerSandbox()
