"""SubprocessSandbox with real child processes: time-outs, crashes, memory limits, snapshots, cleanup."""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ee_middleware.errors import EnvironmentUnavailableError, SandboxError
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox, SubprocessSnapshot
from ee_middleware.replay.sandboxes.protocol import Sandbox
from tests.replay.sandboxes.counter_world import PYTHON_SANDBOX_FACTORY, broken_factory, make_counter_sandbox, make_dict_answer_sandbox

pytestmark = pytest.mark.timeout(60)

NEVER_HANGS_S = 30.0
"""A generous bound proving a call returned instead of hanging (not a speed test)."""

REPO_ROOT = Path(__file__).resolve().parents[3]


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(id=f"call_{name}", name=name, arguments=arguments)


def value(sandbox: SubprocessSandbox, key: str) -> str:
    observation = sandbox.execute(call("get", key=key))
    assert not observation.is_error, observation.content
    return observation.content


def assert_gone(pid: int) -> None:
    """The process no longer exists (exited and reaped: not even a zombie)."""
    assert not psutil.pid_exists(pid), f"process {pid} still exists: {psutil.Process(pid).status()}"


@pytest.fixture
def sandbox() -> Iterator[SubprocessSandbox]:
    box = SubprocessSandbox(make_counter_sandbox, timeout_s=1.0, memory_mb=300, control_timeout_s=10.0)
    box.reset({"counts": {"a": 1}})
    yield box
    box.close()


# -- normal use -----------------------------------------------------------------------------------


def test_satisfies_the_sandbox_protocol_and_names_the_inner_kind(sandbox: SubprocessSandbox) -> None:
    assert isinstance(sandbox, Sandbox)
    assert sandbox.kind == "subprocess:counter"
    with SubprocessSandbox(make_counter_sandbox, kind="custom", memory_mb=None) as custom:
        assert custom.kind == "custom"


def test_execute_runs_in_the_child(sandbox: SubprocessSandbox) -> None:
    observation = sandbox.execute(call("add", key="a", n=2))
    assert observation == Observation(content="3")
    assert value(sandbox, "a") == "3"
    assert sandbox.pid is not None and sandbox.pid != os.getpid()


def test_covers_is_answered_by_the_inner_sandbox_and_cached(sandbox: SubprocessSandbox) -> None:
    assert sandbox.covers("add") is True
    assert sandbox.covers("delete_everything") is False
    assert sandbox._covers == {"add": True, "delete_everything": False}


def test_branches_from_a_snapshot_do_not_leak(sandbox: SubprocessSandbox) -> None:
    start = sandbox.snapshot()
    assert isinstance(start, SubprocessSnapshot)
    for n in (10, 20, 30):
        sandbox.restore(start)
        assert sandbox.execute(call("add", key="a", n=n)).content == str(1 + n)
    sandbox.restore(start)
    assert value(sandbox, "a") == "1"
    sandbox.reset({"counts": {"a": 7}})  # reset drops the child's handles; the bytes still rebuild it
    assert sandbox._control("stats")["snapshots"] == []
    sandbox.restore(start)
    assert value(sandbox, "a") == "1"


def test_evicted_snapshots_are_rebuilt_from_their_bytes() -> None:
    with SubprocessSandbox(make_counter_sandbox, max_snapshots=2, memory_mb=None) as box:
        box.reset({"counts": {}})
        snapshots = []
        for _ in range(4):
            box.execute(call("add", key="a"))
            snapshots.append(box.snapshot())
        assert len(box._control("stats")["snapshots"]) == 2
        for expected, snap in enumerate(snapshots, start=1):
            box.restore(snap)
            assert value(box, "a") == str(expected)


def test_dropped_snapshots_are_freed_in_the_child(sandbox: SubprocessSandbox) -> None:
    first = sandbox.snapshot()
    second = sandbox.snapshot()
    handle = first.handle
    del first
    gc.collect()
    held = sandbox._control("stats")["snapshots"]
    assert handle not in held and second.handle in held


def test_a_snapshot_from_another_subprocess_sandbox_restores(sandbox: SubprocessSandbox) -> None:
    sandbox.execute(call("add", key="a", n=41))
    snap = sandbox.snapshot()
    with SubprocessSandbox(make_counter_sandbox, memory_mb=None) as other:
        other.reset(None)
        other.restore(snap)
        assert value(other, "a") == "42"


def test_inner_exceptions_become_error_observations(sandbox: SubprocessSandbox) -> None:
    pid = sandbox.pid
    observation = sandbox.execute(call("boom"))
    assert observation == Observation(content="Error: ValueError: boom went the tool", is_error=True)
    assert sandbox.pid == pid
    assert value(sandbox, "a") == "1"


def test_a_sandbox_error_from_the_inner_execute_is_raised_as_in_process() -> None:
    with SubprocessSandbox(make_counter_sandbox, memory_mb=None) as box:
        with pytest.raises(SandboxError, match="call reset"):
            box.execute(call("get", key="a"))
        box.reset(None)
        assert value(box, "a") == "0"


def test_an_inner_execute_answering_no_observation_is_the_sandboxs_error_as_in_process() -> None:
    # Was: an error observation "Error: the inner sandbox returned dict ..." stored as what the tool returned (datasets
    # learned it), where in process the job failed with a bare AttributeError.
    with SubprocessSandbox(make_dict_answer_sandbox, memory_mb=None) as box:
        box.reset({"counts": {"a": 1}})
        message = "the sandbox tests.replay.sandboxes.counter_world.DictAnswerSandbox returned dict from execute() for tool 'get'"
        with pytest.raises(SandboxError, match=re.escape(message)):
            box.execute(call("get", key="odd"))
        assert value(box, "a") == "1"  # the child goes on


def test_forkserver_start_method() -> None:
    with SubprocessSandbox(make_counter_sandbox, start_method="forkserver", memory_mb=None) as box:
        box.reset({"counts": {"a": 1}})
        assert box.execute(call("add", key="a")).content == "2"


# -- time-outs, crashes, memory -------------------------------------------------------------------


def test_a_hang_becomes_an_error_and_the_world_returns_to_the_last_snapshot(sandbox: SubprocessSandbox) -> None:
    sandbox.execute(call("add", key="a", n=1))
    sandbox.snapshot()  # a == 2
    sandbox.execute(call("add", key="a", n=10))  # lost with the killed child
    old_pid = sandbox.pid

    started = time.monotonic()
    observation = sandbox.execute(call("sleep", seconds=60))
    assert time.monotonic() - started < NEVER_HANGS_S

    assert observation.is_error
    assert observation.content.startswith("Error: tool 'sleep' timed out after 1 s in the subprocess sandbox")
    assert "last snapshot" in observation.content
    assert sandbox.pid != old_pid and sandbox.restarts == 1
    assert_gone(old_pid)
    assert value(sandbox, "a") == "2"


def test_a_crash_becomes_an_error_and_the_world_returns_to_the_last_reset(sandbox: SubprocessSandbox) -> None:
    sandbox.execute(call("add", key="a", n=5))
    old_pid = sandbox.pid
    observation = sandbox.execute(call("crash", code=3))
    assert observation.is_error
    assert "crashed the subprocess sandbox (the child exited with code 3)" in observation.content
    assert "right after the last reset" in observation.content
    assert_gone(old_pid)
    assert value(sandbox, "a") == "1"


def test_a_signal_is_named_and_the_world_returns_to_the_last_restored_snapshot(sandbox: SubprocessSandbox) -> None:
    sandbox.execute(call("add", key="a", n=1))
    two = sandbox.snapshot()
    sandbox.execute(call("add", key="a", n=1))
    sandbox.snapshot()  # a == 3
    sandbox.restore(two)  # the last restored snapshot wins over the later one taken
    observation = sandbox.execute(call("kill_self", signal_name="SIGKILL"))
    assert observation.is_error and "killed by signal SIGKILL" in observation.content
    assert value(sandbox, "a") == "2"
    sandbox.restore(two)  # its handle died with the old child: rebuilt from bytes
    assert value(sandbox, "a") == "2"


def test_a_time_out_kills_processes_the_tool_started(sandbox: SubprocessSandbox, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    observation = sandbox.execute(call("spawn_and_hang", pid_file=str(pid_file)))
    assert observation.is_error and "timed out" in observation.content
    grandchild = int(pid_file.read_text())
    # The grandchild was killed with the child's process group; init reaps it shortly after.
    deadline = time.monotonic() + NEVER_HANGS_S
    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the tool's own child outlived the time-out"
        time.sleep(0.05)


def wait_gone(pid: int, what: str) -> None:
    """Wait (bounded) until ``pid`` is gone or a zombie waiting for init to reap it."""
    deadline = time.monotonic() + NEVER_HANGS_S
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_os_exit_is_a_crash_even_while_a_forked_process_holds_the_pipe(sandbox: SubprocessSandbox, tmp_path: Path) -> None:
    pid_file = tmp_path / "forked.pid"
    old_pid = sandbox.pid
    observation = sandbox.execute(call("fork_and_exit", pid_file=str(pid_file), code=5))
    assert observation.is_error
    assert "crashed the subprocess sandbox (the child exited with code 5)" in observation.content, observation.content
    assert_gone(old_pid)
    wait_gone(int(pid_file.read_text()), "the forked process outlived the crashed child")
    assert value(sandbox, "a") == "1"


def test_processes_a_tool_left_running_end_when_the_sandbox_closes(tmp_path: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    with SubprocessSandbox(make_counter_sandbox, memory_mb=None) as box:
        box.reset(None)
        assert box.execute(call("spawn_and_return", pid_file=str(pid_file))).content == "started"
        helper = int(pid_file.read_text())
        assert psutil.pid_exists(helper)
    wait_gone(helper, "the tool's process outlived the closed sandbox")


def test_the_parent_never_unpickles_what_the_child_sends(sandbox: SubprocessSandbox, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled-in-the-parent"
    observation = sandbox.execute(call("send_pickle_to_parent", marker=str(marker)))
    assert not marker.exists(), "a pickle written by a tool ran code in the parent"
    assert observation.is_error and "bytes that are not a reply" in observation.content, observation.content
    assert sandbox.restarts == 1 and value(sandbox, "a") == "1"  # the child was replaced, the world rebuilt


def test_a_memory_hog_hits_the_limit_and_the_child_survives(sandbox: SubprocessSandbox) -> None:
    baseline_mb = int(sandbox.execute(call("vm_size_kb")).content) // 1024
    print(f"child address space before the hog: {baseline_mb} MB")
    assert baseline_mb < 200, f"the child's own address space ({baseline_mb} MB) leaves too little room under 300 MB"
    pid = sandbox.pid
    observation = sandbox.execute(call("hog", mb=1000))
    assert observation.is_error
    assert "memory limit of the subprocess sandbox (300 MB" in observation.content
    assert "memory_mb" in observation.content
    assert sandbox.pid == pid  # MemoryError was caught; no restart
    assert sandbox.execute(call("hog", mb=50)).content == "allocated 50 MB"
    assert value(sandbox, "a") == "1"


def test_a_python_sandbox_inside_reports_the_memory_limit_too() -> None:
    with SubprocessSandbox(PYTHON_SANDBOX_FACTORY, timeout_s=1.0, memory_mb=300) as box:
        assert box.kind == "subprocess:python"
        box.reset({"counts": {"a": 1}})
        assert box.execute(call("add", key="a", n=2)).content == "3"
        observation = box.execute(call("hog", mb=1000))  # PythonSandbox catches the MemoryError itself
        assert observation.is_error
        assert observation.content.startswith("Error: MemoryError")
        assert "memory limit of the subprocess sandbox (300 MB" in observation.content
        assert box.execute(call("boom")) == Observation(content="Error: ValueError: boom went the tool", is_error=True)
        assert "timed out" in box.execute(call("sleep", seconds=60)).content
        assert value(box, "a") == "1"


def test_a_memory_limit_below_the_child_baseline_is_explained() -> None:
    with pytest.raises(SandboxError, match=r"memory_mb=20 leaves no room.*MB of address space"):
        SubprocessSandbox(make_counter_sandbox, memory_mb=20)


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt, raised by a signal handler while the parent waits."""


def test_an_interrupted_call_does_not_desynchronize_the_next_one(sandbox: SubprocessSandbox) -> None:
    sandbox.execute(call("add", key="a", n=1))
    sandbox.snapshot()  # a == 2

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            sandbox.execute(call("sleep", seconds=0.8))  # its late answer must not reach the next call
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(1.0)
    assert sandbox.execute(call("add", key="a", n=1)).content == "3"
    assert sandbox.restarts == 1


# -- control calls --------------------------------------------------------------------------------


def test_environment_errors_keep_their_class_and_message(sandbox: SubprocessSandbox) -> None:
    with pytest.raises(EnvironmentUnavailableError) as info:
        sandbox.reset({"unavailable": "shop-7"})
    assert type(info.value) is EnvironmentUnavailableError
    assert str(info.value) == "counter world 'shop-7' is gone"
    sandbox.reset({"counts": {"a": 9}})
    assert value(sandbox, "a") == "9"


def test_other_reset_failures_are_sandbox_errors_with_the_child_traceback(sandbox: SubprocessSandbox) -> None:
    with pytest.raises(SandboxError) as info:
        sandbox.reset({"broken": "on purpose"})
    assert not isinstance(info.value, EnvironmentUnavailableError)
    assert "RuntimeError: reset exploded: on purpose" in str(info.value)
    assert "counter_world.py" in str(info.value)


def test_a_hanging_reset_raises_instead_of_hanging() -> None:
    # (3 s, not 1: the same limit bounds the fresh child's start, which a loaded machine took over 1 s to make)
    with SubprocessSandbox(make_counter_sandbox, memory_mb=None, control_timeout_s=3.0) as box:
        old_pid = box.pid
        started = time.monotonic()
        with pytest.raises(SandboxError, match=r"reset\(\) did not answer within 3 s"):
            box.reset({"hang": 60})
        assert time.monotonic() - started < NEVER_HANGS_S
        assert_gone(old_pid)
        box.reset({"counts": {"a": 5}})  # a fresh child
        assert value(box, "a") == "5" and box.restarts == 1


def test_a_broken_factory_fails_in_the_constructor() -> None:
    with pytest.raises(SandboxError, match="factory failed on purpose"):
        SubprocessSandbox(broken_factory, memory_mb=None)


def test_an_unpicklable_factory_is_explained() -> None:
    with pytest.raises(SandboxError, match=r"module-level function or a functools\.partial"):
        SubprocessSandbox(lambda: make_counter_sandbox(), memory_mb=None)


# -- cleanup --------------------------------------------------------------------------------------


def test_close_ends_the_child_and_is_idempotent() -> None:
    box = SubprocessSandbox(make_counter_sandbox, memory_mb=None)
    pid = box.pid
    assert pid is not None and psutil.pid_exists(pid)
    box.close()
    box.close()
    assert_gone(pid)
    assert pid not in [child.pid for child in psutil.Process().children()]
    with pytest.raises(SandboxError, match="closed"):
        box.execute(call("get", key="a"))


def test_context_manager_and_garbage_collection_end_the_child() -> None:
    with SubprocessSandbox(make_counter_sandbox, memory_mb=None) as box:
        pid = box.pid
    assert_gone(pid)
    box = SubprocessSandbox(make_counter_sandbox, memory_mb=None)
    pid = box.pid
    del box
    gc.collect()
    assert_gone(pid)


def test_the_child_exits_when_the_parent_is_killed_mid_call(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from ee_middleware.records import ToolCall
        from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
        from tests.replay.sandboxes.counter_world import make_counter_sandbox

        if __name__ == "__main__":
            box = SubprocessSandbox(make_counter_sandbox, timeout_s=None, memory_mb=None)
            box.reset(None)
            print(box.pid, flush=True)
            box.execute(ToolCall(id="1", name="sleep", arguments={"seconds": 60}))
        """
    )
    path = tmp_path / "parent.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    try:
        child_pid = int(parent.stdout.readline())
        time.sleep(0.2)  # the child is now inside the hanging tool
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + NEVER_HANGS_S
        while psutil.pid_exists(child_pid) and psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child outlived its killed parent"
            time.sleep(0.1)
    finally:
        parent.kill()
        parent.stdout.close()


PARENTS_KILLED_MID_ANSWER = {
    "a tool call": """
        box = SubprocessSandbox(make_counter_sandbox, timeout_s=None, memory_mb=None)
        box.reset(None)
        pathlib.Path(sys.argv[1]).write_text(str(box.pid))
        box.execute(ToolCall(id="1", name="answer_once_orphaned", arguments={}))
        """,
    "its start": """
        SubprocessSandbox(functools.partial(counter_world.start_once_orphaned, sys.argv[1]), memory_mb=None)
        """,
}


@pytest.mark.parametrize("answering", list(PARENTS_KILLED_MID_ANSWER))
def test_a_child_answering_a_parent_killed_with_sigkill_ends_quietly(tmp_path: Path, answering: str) -> None:
    """A replay job killed with SIGKILL (--isolation subprocess): its sandbox children finish what they were answering
    and find the parent's end of the pipe gone. They end without a BrokenPipeError traceback on the job's stderr,
    which they share, and leave no process behind."""
    body = textwrap.indent(textwrap.dedent(PARENTS_KILLED_MID_ANSWER[answering]), "    ")
    script = (
        "import functools, pathlib, sys\n"
        "from ee_middleware.records import ToolCall\n"
        "from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox\n"
        "from tests.replay.sandboxes import counter_world\n"
        "from tests.replay.sandboxes.counter_world import make_counter_sandbox\n\n"
        f"if __name__ == '__main__':\n{body}"
    )
    path, pid_file, stderr_file = tmp_path / "parent.py", tmp_path / "child.pid", tmp_path / "stderr"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with stderr_file.open("w") as stderr:
        parent = subprocess.Popen([sys.executable, str(path), str(pid_file)], stderr=stderr, env=env, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + NEVER_HANGS_S
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None, stderr_file.read_text()
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        parent.kill()  # SIGKILL: the child is answering (or about to)
        parent.wait()
        while psutil.pid_exists(child_pid) and psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child outlived its killed parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
    written = stderr_file.read_text()
    assert "Traceback" not in written and "Error" not in written, written


def test_a_world_that_does_not_pickle_is_explained_when_snapshotted_in_the_child() -> None:
    # In process the world is deep-copied and replays fine; a subprocess sandbox must send each snapshot out as bytes.
    from tests.replay.sandboxes.counter_world import LAMBDA_WORLD_FACTORY

    in_process = LAMBDA_WORLD_FACTORY()
    in_process.reset({"counts": {"a": 1}})
    in_process.restore(in_process.snapshot())
    with SubprocessSandbox(LAMBDA_WORLD_FACTORY, memory_mb=None, control_timeout_s=10.0) as box:
        box.reset({"counts": {"a": 1}})
        with pytest.raises(SandboxError) as info:
            box.snapshot()
        message = str(info.value)
        assert "priced sandbox" in message and "--isolation subprocess" in message
        assert "world['pricing']" in message and "function" in message  # where the culprit is
        assert "__getstate__" in message  # and how to fix it
        assert value(box, "a") == "1"  # the sandbox still works


def test_any_snapshot_that_does_not_pickle_is_explained() -> None:
    from tests.replay.sandboxes.counter_world import LockSnapshotSandbox

    with SubprocessSandbox(LockSnapshotSandbox, memory_mb=None, control_timeout_s=10.0) as box:
        box.reset({"counts": {"a": 1}})
        with pytest.raises(SandboxError, match=r"The locked sandbox's snapshot \(tuple\) cannot be pickled.*--isolation subprocess"):
            box.snapshot()
        assert value(box, "a") == "1"
