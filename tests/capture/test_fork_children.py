"""Runs recorded in processes forked from the recording one are stored, and such a process never waits for ever.

``multiprocessing`` ends a process it forked with ``os._exit``, which runs no ``atexit`` hook: capture's exit flush never
ran there, so a ``Process``, ``Pool`` or ``ProcessPoolExecutor`` worker (fork, the default start method on Linux up to
Python 3.13) that recorded runs and returned lost them (0 of 15 stored; a ``Pool`` kept only the runs of the workers its
SIGTERM happened to reach, and that SIGTERM, arriving in the middle of a worker's exit flush, lost a worker's runs too).
Each script runs in a process group of its own, killed whole if it outlives its time limit: no process is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore

ROOT = Path(__file__).resolve().parents[2]

WORKERS = textwrap.dedent(
    """
    import concurrent.futures, json, multiprocessing, os, sys
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call

    @tool
    def lookup(order_id: str) -> str:
        \"\"\"Look an order up by its id.\"\"\"
        return f"order {order_id} is shipped"

    def policy(messages, tools):
        last = messages[-1]
        if last.type == "human":
            return AIMessage(content="", tool_calls=[tool_call("lookup", order_id=last.content.split()[-1])])
        return AIMessage(content=f"Answer: {last.content}")

    store, offload, kind = sys.argv[1:4]
    agent = record_experience(create_agent(ScriptedChatModel(policy=policy), [lookup]), app="mp", store=store, offload=offload)

    def work(worker):
        answers = [agent.invoke({"messages": [("user", f"where is W-{worker}-{i}")]})["messages"][-1].content for i in range(3)]
        return worker, answers  # no flush(): the process's end writes its runs

    if __name__ == "__main__":
        fork = multiprocessing.get_context("fork")
        if kind == "process":
            workers = [fork.Process(target=work, args=(w,)) for w in range(3)]
            for p in workers:
                p.start()
            for p in workers:
                p.join(60)
            done = [p.exitcode for p in workers]
        elif kind == "pool":
            with fork.Pool(3) as pool:  # its end terminates the workers (SIGTERM), in the middle of their exit flush
                done = [w for w, _ in pool.map(work, range(3), chunksize=1)]
        else:
            with concurrent.futures.ProcessPoolExecutor(3, mp_context=fork) as executor:
                done = [w for w, _ in executor.map(work, range(3))]
        print(json.dumps({"done": done, "pid": os.getpid()}))
    """
)


def run_script(source: str, *args: str, timeout: float = 180, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -c source args`` in ``cwd``, in a process group of its own; the whole group is killed if it is not done
    in time."""
    proc = subprocess.Popen(
        [sys.executable, "-c", source, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the script did not end within {timeout} s (killed with its processes):\n{err[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a worker left behind by a failing script
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("kind", ["process", "pool", "executor"])
def test_runs_recorded_in_multiprocessing_fork_workers_are_stored_without_flush(kind: str, offload: str, tmp_path: Path) -> None:
    store = tmp_path / "experience"
    done = run_script(WORKERS, str(store), offload, kind)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["done"] == ([0, 0, 0] if kind == "process" else [0, 1, 2])
    stored = LocalExperienceStore(store).trajectories()
    expected = sorted(f"where is W-{w}-{i}" for w in range(3) for i in range(3))
    assert sorted(stored["task"].to_list()) == expected, done.stderr[-3000:]
    assert stored["final_answer"].to_list() == [f"Answer: order {t.split()[-1]} is shipped" for t in stored["task"].to_list()]


def test_a_process_forked_while_the_vault_syncs_records_and_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``vault=True`` the vault's lock is held while a flush syncs it: a process forked meanwhile inherited it held,
    and its first redacted value (its finisher thread) and its flush waited on it for ever. The child now has a lock of
    its own. The child is killed if it outlives its time limit."""
    import threading
    import time

    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel

    graph = create_agent(ScriptedChatModel(policy=lambda messages, tools: AIMessage(content="Noted.")), [])
    store = tmp_path / "experience"
    agent = record_experience(graph, app="shop", store=store, vault=True)
    agent.invoke({"messages": [("user", "Write to carol@example.org")]})
    assert agent.flush(30)
    vault_path = agent.recorder.vault.path
    in_sync, go_on = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # the parent's vault sync takes a while (a busy disk)
        if threading.current_thread().name == "syncer" and os.readlink(f"/proc/self/fd/{fd}") == str(vault_path):
            in_sync.set()
            go_on.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    syncer = threading.Thread(target=agent.recorder.vault.flush, name="syncer")
    syncer.start()
    assert in_sync.wait(10)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            worker = threading.Thread(
                target=lambda: (agent.invoke({"messages": [("user", "Write to dave@example.org")]}), agent.flush(10)), daemon=True
            )
            worker.start()
            worker.join(20)
            code = 3 if worker.is_alive() else 0
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 40
        while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        if not done[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        go_on.set()
        syncer.join(10)
    assert done[0] and os.waitstatus_to_exitcode(done[1]) == 0, "the child waited on the vault's lock"
    agent.recorder.close()
    tasks = sorted(LocalExperienceStore(store).trajectories()["task"].to_list())
    assert len(tasks) == 2 and "dave@example.org" not in " ".join(tasks)


RELOADED = textwrap.dedent(
    """
    import importlib, json, multiprocessing, multiprocessing.util as mu, os
    from ee_middleware.capture import recorder, shutdown

    def hooks():
        names = ("_flush_at_multiprocessing_exit", "_watch_in_multiprocessing_child")
        return sorted(k[2].__name__ for k in list(mu._afterfork_registry) if k[2].__name__ in names)

    def exit_flushes(queue):
        finalizers = [f for f in mu._finalizer_registry.values() if getattr(f._callback, "__name__", "") == "_flush_at_exit"]
        queue.put(len(finalizers))

    class Counted(list):  # stands in for the live recorders: counts the passes of the recorder's after-fork hook
        def __iter__(self):
            os.write(write_end, b"x")
            return super().__iter__()

    # stands in for IPython's autoreload.superreload (%autoreload; IPython is not installed here), as it reloads: the
    # module's __dict__ cleared but for its name and loader, reloaded, then the old functions given the new code
    def superreload_stand_in(module):
        old = dict(module.__dict__)
        module.__dict__.clear()
        module.__dict__.update(__name__=old["__name__"], __loader__=old["__loader__"])
        importlib.reload(module)
        for name, new in module.__dict__.items():
            if type(old.get(name)) is type(new) and hasattr(new, "__code__") and old[name] is not new:
                old[name].__code__, old[name].__defaults__, old[name].__doc__ = new.__code__, new.__defaults__, new.__doc__

    reload = {"importlib": importlib.reload, "superreload": superreload_stand_in}[RELOAD]
    before = hooks()
    for _ in range(2):  # Jupyter's autoreload, twice
        reload(shutdown)
        reload(recorder)
    read_end, write_end = os.pipe()
    recorder._live_recorders = Counted()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write_end)
    passes = len(os.read(read_end, 100))
    recorder._live_recorders = []
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=exit_flushes, args=(queue,))
    child.start()
    print(json.dumps({"before": before, "after": hooks(), "fork_hook_passes": passes, "exit_flushes": queue.get(timeout=20)}))
    child.join(20)
    parent = os.getpid()
    # the atexit hooks look this name up when they run: each one registered prints once
    recorder._flush_every_recorder = lambda: print("exit flush") if os.getpid() == parent else None
    """
)


@pytest.mark.parametrize("how", ["importlib", "superreload"])
def test_reloading_capture_registers_its_fork_and_exit_hooks_once(how: str) -> None:
    """``importlib.reload`` of capture's recorder and shutdown modules ran their module code again, registering each
    after-fork hook once more (on the module object, which survives a reload): a forked child then ran the recorder's
    hook twice and registered two exit flushes, and the process's exit flush ran twice. Jupyter's ``%autoreload``
    (``superreload``, a stand-in here) clears the module's ``__dict__`` first: a first-load flag kept in it was lost, and
    every hook registered again."""
    done = run_script(f"RELOAD = {how!r}\n" + RELOADED, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    seen = json.loads(lines[0])
    assert seen["before"] == seen["after"] == ["_flush_at_multiprocessing_exit", "_watch_in_multiprocessing_child"]
    assert seen["fork_hook_passes"] == 1
    assert seen["exit_flushes"] == 1
    assert lines[1:] == ["exit flush"]
