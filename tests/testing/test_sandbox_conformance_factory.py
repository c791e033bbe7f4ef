"""The sandbox conformance kit's second sandbox from the factory (the restarted-child check, the state digest check): a
factory that allows one open sandbox at a time passes, one that cannot build a second fails with the reason named (a
warning by default), one that hands back the sandbox under test fails saying so without the kit closing it, and a
snapshot that is a key into a module-level or class-level store fails with ``subprocess_isolation=True``, as a
restarted ``--isolation subprocess`` child fails it.

The sandboxes live in this module so that the child process the kit builds a sandbox in imports them by name.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import pickle
import re
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ee_middleware.errors import SandboxError
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox, SubprocessSnapshot
from ee_middleware.testing import SubprocessIsolationWarning, check_sandbox

COUNTS = {
    "environment": {"counts": {"a": 1, "b": 5}},
    "mutate": ToolCall(id="m", name="add", arguments={"key": "a", "n": 2}),
    "read": [ToolCall(id="r1", name="get", arguments={"key": "a"}), ToolCall(id="r2", name="get", arguments={"key": "b"})],
}


class DictSandbox:
    """A correct sandbox written against the protocol: a dict of counters, snapshots deep copies of it."""

    kind = "dict-counters"

    def __init__(self, digest: bool = False) -> None:
        self.world: dict[str, int] | None = None
        self.closed = False
        if digest:
            self.state_digest = self._digest

    def _live(self) -> dict[str, int]:
        if self.closed:
            raise SandboxError(f"the {self.kind} sandbox is closed")
        assert self.world is not None, "reset first"
        return self.world

    def covers(self, tool_name: str) -> bool:
        return tool_name in ("add", "get")

    def reset(self, environment: dict[str, Any] | None) -> None:
        if self.closed:
            raise SandboxError(f"the {self.kind} sandbox is closed")
        self.world = dict((environment or {}).get("counts", {}))

    def execute(self, call: ToolCall) -> Observation:
        world = self._live()
        if call.name not in ("add", "get") or set(call.arguments) - {"key", "n"}:
            return Observation(content=f"Error: bad call {call.name}({call.arguments})", is_error=True)
        key = call.arguments["key"]
        if call.name == "add":
            world[key] = world.get(key, 0) + call.arguments["n"]
        return Observation(content=str(world.get(key, 0)))

    def snapshot(self) -> Any:
        return copy.deepcopy(self._live())

    def restore(self, snapshot: Any) -> None:
        self._live()
        self.world = copy.deepcopy(snapshot)

    def _digest(self) -> str:
        return hashlib.sha256(json.dumps(self._live(), sort_keys=True).encode()).hexdigest()

    def close(self) -> None:
        self.closed = True


# --- a factory that allows one open sandbox at a time ------------------------------------------------------------


class FixedPortSandbox(DictSandbox):
    """Serves its world on a fixed port (as a sandbox fronting a local server does): a second one cannot be built while
    the first is open, and can once it is closed, as a restarted --isolation subprocess child is built once the old one
    is gone."""

    kind = "fixed-port"

    def __init__(self, port: int, digest: bool = False) -> None:
        super().__init__(digest)
        self.server = socket.socket()
        try:
            self.server.bind(("127.0.0.1", port))  # OSError EADDRINUSE while another one is open
            self.server.listen()
        except BaseException:
            self.server.close()
            raise

    def close(self) -> None:
        self.server.close()
        super().close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("digest", [False, True], ids=["no-digest", "digest"])
def test_a_factory_allowing_one_open_sandbox_at_a_time_passes(digest: bool) -> None:
    """The kit built its second sandbox (the restarted-child check's, and the state digest check's) while the first was
    open, and raised the factory's bare OSError (Address already in use) out of check_sandbox, though by default the
    pickling check only warns. A restarted child is built once the old one is gone: the kit now builds it once the
    sandbox under test is closed, and the sandbox passes."""
    factory = functools.partial(FixedPortSandbox, _free_port(), digest=digest)
    first = factory()
    try:
        with pytest.raises(OSError):  # what the kit met: one open at a time
            factory()
    finally:
        first.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sandbox(factory, **copy.deepcopy(COUNTS))
        check_sandbox(factory, **copy.deepcopy(COUNTS), subprocess_isolation=True)  # its child, too, once it is closed


# --- a factory that cannot build a second sandbox ----------------------------------------------------------------


class OneBuildSandbox(DictSandbox):
    """Claims ``token`` (a file created exclusively) when built and never gives it back: a second one cannot be built at
    all (FileExistsError)."""

    kind = "one-build"

    def __init__(self, token: str, digest: bool = False) -> None:
        super().__init__(digest)
        os.close(os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY))


def test_a_factory_that_cannot_build_a_second_sandbox_is_named_a_warning_by_default_and_a_failure_when_required(
    tmp_path: Path,
) -> None:
    """The factory's FileExistsError came out of check_sandbox bare. It is now what the restarted-child check found: a
    SubprocessIsolationWarning by default, an AssertionError naming the cause with subprocess_isolation=True; a failure
    for a sandbox with a state digest (whose check needs a second sandbox too); and nothing with subprocess_isolation=False."""
    with pytest.warns(SubprocessIsolationWarning) as warned:
        check_sandbox(functools.partial(OneBuildSandbox, str(tmp_path / "default")), **copy.deepcopy(COUNTS))
    [warning] = warned.list
    message = str(warning.message)
    assert "the factory could not build a second sandbox" in message and "FileExistsError" in message, message
    assert "the restarted-child check needs one" in message, message
    assert warning.filename == __file__, "the warning points at the caller's line"
    with pytest.raises(AssertionError) as failed:
        check_sandbox(functools.partial(OneBuildSandbox, str(tmp_path / "required")), **copy.deepcopy(COUNTS), subprocess_isolation=True)
    message = str(failed.value)
    assert "the factory could not build a second sandbox" in message and "FileExistsError" in message, message
    assert "the restarted-child check needs one" in message, message
    with pytest.raises(AssertionError, match=r"could not build a second sandbox .*\(FileExistsError.*the state digest check needs one"):
        check_sandbox(
            functools.partial(OneBuildSandbox, str(tmp_path / "digest"), digest=True), **copy.deepcopy(COUNTS), subprocess_isolation=False
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sandbox(functools.partial(OneBuildSandbox, str(tmp_path / "off")), **copy.deepcopy(COUNTS), subprocess_isolation=False)


# --- a factory that hands back the same sandbox, or sandboxes sharing what close() closes ---------------------------


class SharedClient:
    """A connection several sandboxes may share; ``close()`` ends it for all of them."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class ClientSandbox(DictSandbox):
    """A sandbox over a client it is given, which its ``close()`` closes (as ExperienceSandbox closes its ``client=``)."""

    kind = "client"

    def __init__(self, client: SharedClient) -> None:
        super().__init__()
        self.client = client

    def reset(self, environment: dict[str, Any] | None) -> None:
        if self.client.closed:
            raise SandboxError("the client is closed")
        super().reset(environment)

    def close(self) -> None:
        self.client.close()
        super().close()


@functools.cache
def cached_sandbox() -> DictSandbox:
    """A factory handing back one sandbox, built on the first call."""
    return DictSandbox()


@pytest.mark.parametrize("subprocess_isolation", [None, True], ids=["default", "required"])
def test_a_factory_handing_back_the_sandbox_under_test_fails_saying_it_must_build_a_new_one(subprocess_isolation: bool | None) -> None:
    """A factory returning one instance (functools.lru_cache) had the sandbox under test closed by the kit (it closed its
    fresh sandbox, the same one), and the next check failed with 'SandboxError: closed', naming nothing. Replay closes a
    sandbox that failed and builds another, so such a factory fails, by default too, saying what the factory must do."""
    assert cached_sandbox() is cached_sandbox()
    cached_sandbox.cache_clear()
    with pytest.raises(AssertionError, match=r"make_sandbox must build a new, independent sandbox on each call") as failed:
        check_sandbox(cached_sandbox, **copy.deepcopy(COUNTS), subprocess_isolation=subprocess_isolation)
    assert "SandboxError" not in str(failed.value), failed.value


def test_sandboxes_sharing_a_client_that_close_closes_are_told_to_be_independent() -> None:
    """Sandboxes sharing a client their close() closes: the kit closed its fresh sandbox, and with it the client of the
    sandbox under test, whose next check failed with 'SandboxError: the client is closed'. Now the second sandbox is
    built once the first is closed, and its failed reset says the factory must build independent sandboxes."""
    client = SharedClient()
    with pytest.warns(SubprocessIsolationWarning, match=r"could not be reset .*the client is closed.*independent sandbox"):
        check_sandbox(functools.partial(ClientSandbox, client), **copy.deepcopy(COUNTS))


# --- a snapshot that is a key into a module-level or class-level store ----------------------------------------------

SNAPSHOTS: dict[int, dict[str, int]] = {}
"""A module-level store of snapshots: each process's starts empty."""


class ModuleStoreSandbox(DictSandbox):
    """Keeps its snapshots in the module-level :data:`SNAPSHOTS` and hands out their keys: a fresh sandbox in this process
    finds them, a restarted --isolation subprocess child does not."""

    kind = "module-store"

    def snapshot(self) -> Any:
        SNAPSHOTS[len(SNAPSHOTS)] = copy.deepcopy(self._live())
        return len(SNAPSHOTS) - 1

    def restore(self, snapshot: Any) -> None:
        self._live()
        self.world = copy.deepcopy(SNAPSHOTS[snapshot])


class ClassStoreSandbox(DictSandbox):
    """Keeps its snapshots in a class attribute, shared by every instance in the process."""

    kind = "class-store"
    kept: ClassVar[dict[int, dict[str, int]]] = {}

    def snapshot(self) -> Any:
        self.kept[len(self.kept)] = copy.deepcopy(self._live())
        return len(self.kept) - 1

    def restore(self, snapshot: Any) -> None:
        self._live()
        self.world = copy.deepcopy(self.kept[snapshot])


@pytest.mark.parametrize("make", [ModuleStoreSandbox, ClassStoreSandbox], ids=["module-level", "class-level"])
def test_a_snapshot_that_is_a_key_into_a_store_shared_in_the_process_fails_as_a_restarted_subprocess_child_fails_it(
    make: Callable[[], DictSandbox],
) -> None:
    """The restarted-child check built its fresh sandbox in the kit's own process, where a module-level (or class-level)
    store of snapshots survives, so such a sandbox passed with subprocess_isolation=True; replay's restarted child has an
    empty store. With subprocess_isolation=True the kit now restores the pickled snapshot in a sandbox built in a child
    process too (a SubprocessSandbox, as --isolation subprocess builds it), and fails it there."""
    here = make()
    here.reset(COUNTS["environment"])
    key = here.snapshot()
    here.close()
    sandbox = SubprocessSandbox(make, timeout_s=30)  # what replay meets: a restarted child given the snapshot's pickle
    try:
        sandbox.reset(COUNTS["environment"])
        with pytest.raises(SandboxError, match=r"KeyError"):
            sandbox.restore(SubprocessSnapshot("a-child-gone", 1, pickle.dumps(key)))
    finally:
        sandbox.close()
    with pytest.raises(AssertionError) as failed:
        check_sandbox(make, **copy.deepcopy(COUNTS), subprocess_isolation=True)
    message = str(failed.value)
    assert (
        "restore() of an unpickled copy of the snapshot taken at step 0, in a sandbox from the factory built in a child process" in message
    ), message
    assert re.search(r"raised KeyError: \d+\. A snapshot must hold the world itself", message), message
    assert "module-level or class-level" in message, message
    assert "\n" not in message, "the child's traceback is left out"
    check_sandbox(make, **copy.deepcopy(COUNTS), subprocess_isolation=False)


def test_a_correct_sandbox_passes_the_check_in_a_child_process_and_a_factory_that_does_not_pickle_is_checked_here() -> None:
    """The child-process check passes a sandbox whose snapshots hold the world, and is left out (not failed) for a factory
    that does not pickle (a lambda: replay builds its sandbox from a spec, which the kit cannot see from a lambda)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sandbox(DictSandbox, **copy.deepcopy(COUNTS), subprocess_isolation=True)
        check_sandbox(lambda: DictSandbox(), **copy.deepcopy(COUNTS), subprocess_isolation=True)


GUARDLESS_SCRIPT = '''
"""A user's script with no `if __name__ == "__main__":` guard, whose own sandbox keeps snapshots in a module-level dict."""
import copy
import os
from ee_middleware.records import ToolCall
from ee_middleware.testing import check_sandbox
from tests.testing.test_sandbox_conformance_factory import COUNTS, DictSandbox

STORE = {}

class ScriptStoreSandbox(DictSandbox):
    def snapshot(self):
        STORE[len(STORE)] = copy.deepcopy(self._live())
        return len(STORE) - 1

    def restore(self, snapshot):
        self._live()
        self.world = copy.deepcopy(STORE[snapshot])

try:
    check_sandbox(ScriptStoreSandbox, **copy.deepcopy(COUNTS), subprocess_isolation=True)
    verdict = "PASS"
except Exception as exc:  # the script goes on whatever happens, as a survey of several sandboxes does
    verdict = f"{type(exc).__name__}: {exc}"
print(f"[{os.getpid()}] {verdict}", flush=True)
'''


def test_a_script_without_a_main_guard_gets_no_false_pass_from_its_re_run_in_the_child(tmp_path: Path) -> None:
    """The child the kit builds a sandbox in (spawned, as --isolation subprocess spawns its child) imports the parent's
    __main__. A script without the main guard ran its checks again there, whose snapshots filled the module-level store,
    and the broken sandbox passed. check_sandbox now refuses to run while a child process is starting, so the child's
    store stays empty and the parent fails the sandbox; the child's refusal says to add the guard."""
    import subprocess
    import sys

    script = tmp_path / "survey.py"
    script.write_text(GUARDLESS_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # [pid] verdict: the child's, printed while it starts, then the parent's
    (child_pid, child), (parent_pid, parent) = [line[1:].split("] ", 1) for line in done.stdout.splitlines() if line.startswith("[")]
    assert child_pid != parent_pid
    assert parent.startswith("AssertionError: restore() of an unpickled copy of the snapshot taken at step 0, in a sandbox"), parent
    assert "built in a child process" in parent and "KeyError" in parent, parent
    assert child.startswith("RuntimeError: check_sandbox was called while a child process imports the script"), child
    assert "if __name__ == '__main__':" in child, child
