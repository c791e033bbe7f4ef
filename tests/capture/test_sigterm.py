"""SIGTERM, the way service managers stop a process (Kubernetes, systemd, ``docker stop``, uvicorn's and gunicorn's
supervisors), no longer loses recorded runs. Left at its default it ended the process without the exit flush: the runs
capture was still finishing (deferred on its threads, queued for the capture process) were lost, and the runs in flight
never recorded (a sweep of a uvicorn service lost 391 of 918 answered runs in thread mode, 77 of 425 in process mode).
Now capture's handler writes them, then the process still ends killed by SIGTERM.

Real processes running a real ``create_agent`` graph under load, sent a real SIGTERM; a plain Python asyncio server
stands in for uvicorn, doing what uvicorn does at SIGTERM (graceful shutdown that cancels the requests still running,
then its original handler put back and the signal raised again); the real local store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.store import LocalExperienceStore
from tests.capture.test_fork_children import run_script
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.processes import ended

pytestmark = [
    pytest.mark.usefixtures("no_child_left"),
    pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM does not stop a process on Windows"),
]

AGENT = textwrap.dedent(
    """
    import os, sys, threading
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call

    stuck = threading.Event()

    def say(line):  # one write per line: threads' lines never interleave
        os.write(1, (line + "\\n").encode())

    @tool
    def lookup(order_id: str) -> str:
        \"\"\"Look an order up.\"\"\"
        if order_id == "SLOW":
            say("in flight")
            stuck.wait()
        return f"order {order_id}: shipped"

    def policy(messages, tools):
        if isinstance(messages[-1], ToolMessage):
            return AIMessage(content=f"Done: {messages[-1].content}")
        return AIMessage(content="", tool_calls=[tool_call("lookup", order_id=messages[-1].content.split()[-1])])

    def build(store, offload="thread"):
        graph = create_agent(ScriptedChatModel(policy=policy), [lookup])
        return record_experience(graph, app="shop", store=store, offload=offload)

    def ask(agent, thread_id, order="A-1"):
        return agent.invoke({"messages": [("user", f"where is {order}")]}, {"configurable": {"thread_id": thread_id}})
    """
)

UNDER_LOAD = textwrap.dedent(
    """
    import sys, threading, time
    from agent import ask, build, say

    agent = build(sys.argv[1], sys.argv[2])
    ask(agent, "first")
    if agent.recorder.offload is not None:
        say(f"capture process {agent.recorder.offload.pid}")
    threading.Thread(target=ask, args=(agent, "in-flight", "SLOW"), daemon=True).start()

    def client(c):
        k = 0
        while True:
            ask(agent, f"{c}-{k}")
            say(f"answered {c}-{k}")
            k += 1

    for c in range(4):
        threading.Thread(target=client, args=(c,), daemon=True).start()
    while True:
        time.sleep(1)
    """
)


def _script(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / "agent.py").write_text(AGENT)
    path = tmp_path / name
    path.write_text(text)
    return path


def _stored(store: Path) -> pl.DataFrame:
    return LocalExperienceStore(store).trajectories().select("id", "thread_id", "status", "error")


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_sigterm_to_a_process_recording_under_load_stores_every_answered_run_and_the_one_in_flight(tmp_path: Path, offload: str) -> None:
    store = tmp_path / "experience"
    script = _script(tmp_path, "serve.py", UNDER_LOAD)
    agent = subprocess.Popen([sys.executable, str(script), str(store), offload], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    answered, in_flight, capture_pid = ["first"], False, None
    try:
        assert agent.stdout is not None
        for line in agent.stdout:
            answered += [line.split()[1]] if line.startswith("answered") else []
            in_flight = in_flight or line.startswith("in flight")
            capture_pid = int(line.split()[-1]) if line.startswith("capture process") else capture_pid
            if in_flight and len(answered) > 20:
                break
        agent.send_signal(signal.SIGTERM)  # while 4 clients keep asking
        answered += [line.split()[1] for line in agent.stdout.read().splitlines() if line.startswith("answered")]
        assert agent.wait(timeout=60) == -signal.SIGTERM  # still ended by SIGTERM, as a supervisor expects
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    stored = _stored(store)
    assert stored["id"].n_unique() == stored.height
    done = stored.filter(pl.col("thread_id").is_in(answered))
    assert sorted(done["thread_id"]) == sorted(answered)  # every run whose caller got its answer (was: most lost)
    assert set(done["status"]) == {"completed"}
    [[trajectory_id, status, error]] = stored.filter(pl.col("thread_id") == "in-flight").select("id", "status", "error").rows()
    assert (status, error) == ("interrupted", "terminated: SIGTERM")  # was: not recorded at all
    [step] = LocalExperienceStore(store).get(trajectory_id).steps
    assert (step.action.tool_call.name, step.observation) == ("lookup", None)  # type: ignore[union-attr]
    if offload == "process":
        assert capture_pid is not None and ended(capture_pid, 30)  # it wrote what it was sent, and ended


UVICORN_LIKE = textwrap.dedent(
    """
    import asyncio, signal, sys
    from agent import ask, build, say

    store, order = sys.argv[1], sys.argv[2]

    class Server:
        \"\"\"What uvicorn's Server does with SIGTERM (uvicorn/server.py: capture_signals, handle_exit, shutdown).\"\"\"

        def __init__(self):
            self.should_exit = asyncio.Event()
            self.captured = []

        def handle_exit(self, sig, frame):
            self.captured.append(sig)
            asyncio.get_running_loop().call_soon_threadsafe(self.should_exit.set)

        async def serve(self, app):
            original = signal.signal(signal.SIGTERM, self.handle_exit)
            try:
                agent = app() if callable(app) else app
                if order == "app imported by the server":
                    say(f"handler kept: {signal.getsignal(signal.SIGTERM) == self.handle_exit}")
                for i in range(5):  # answered requests
                    await agent.ainvoke({"messages": [("user", "where is A-1")]}, {"configurable": {"thread_id": f"done-{i}"}})
                slow = asyncio.create_task(agent.ainvoke({"messages": [("user", "where is SLOW")]}, {"configurable": {"thread_id": "in-flight"}}))
                say("serving")
                await self.should_exit.wait()
                slow.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")  # graceful shutdown's time-out
                await asyncio.gather(slow, return_exceptions=True)
                if order == "app imported by the server":
                    await asyncio.to_thread(agent.flush)  # the app's own lifespan shutdown, as the README says
            finally:
                signal.signal(signal.SIGTERM, original)
            for sig in reversed(self.captured):
                signal.raise_signal(sig)

    if order == "app imported first":  # uvicorn app:app, uvicorn.run(app): the app module is loaded before serve()
        app = build(store)
    else:  # uvicorn --workers/--reload: each worker imports the app inside serve(), its own handler installed already
        app = lambda: build(store)
    asyncio.run(Server().serve(app))
    say("not ended by SIGTERM")
    """
)


@pytest.mark.parametrize("order", ["app imported first", "app imported by the server"])
def test_a_server_that_puts_the_default_handler_back_and_raises_sigterm_again_as_uvicorn_does(tmp_path: Path, order: str) -> None:
    """``app imported first``: capture's handler was the one there before the server, so the server puts it back and
    it writes the runs (the request the server cancelled is ``interrupted``, ``cancelled: CancelledError``). ``app imported
    by the server``: the server's handler is the app's, never replaced; the app's own shutdown flushes."""
    store = tmp_path / "experience"
    script = _script(tmp_path, "server.py", UVICORN_LIKE)
    server = subprocess.Popen([sys.executable, str(script), str(store), order], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        lines = []
        for line in server.stdout:
            lines.append(line.strip())
            if line.startswith("serving"):
                break
        server.send_signal(signal.SIGTERM)
        lines += server.stdout.read().splitlines()
        assert server.wait(timeout=60) == -signal.SIGTERM, lines
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if order == "app imported by the server":
        assert "handler kept: True" in lines
    stored = dict(_stored(store).select("thread_id", "status").rows())
    assert stored == {**{f"done-{i}": "completed" for i in range(5)}, "in-flight": "interrupted"}
    [error] = _stored(store).filter(pl.col("thread_id") == "in-flight")["error"]
    assert error == "cancelled: CancelledError"


FORKED = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from agent import ask, build, say

    agent = build(sys.argv[1])
    threading.Thread(target=ask, args=(agent, "parent-in-flight", "SLOW"), daemon=True).start()
    for i in range(3):
        ask(agent, f"parent-{i}")  # deferred: a run is in flight, so they wait on the finisher when the process forks
    pid = os.fork()  # gunicorn --preload, multiprocessing's fork: the recorder and its SIGTERM handler are inherited
    if pid == 0:
        for i in range(3):
            ask(agent, f"child-{i}")
        say(f"child {os.getpid()} ready")
        while True:
            time.sleep(1)
    _, status = os.waitpid(pid, 0)
    say(f"child ended by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}")
    while True:
        time.sleep(1)
    """
)


def test_a_forked_process_writes_its_own_runs_at_sigterm_and_not_its_parents(tmp_path: Path) -> None:
    store = tmp_path / "experience"
    script = _script(tmp_path, "forked.py", FORKED)
    parent = subprocess.Popen([sys.executable, str(script), str(store)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = next(int(line.split()[1]) for line in parent.stdout if line.startswith("child"))
        os.kill(child, signal.SIGTERM)
        assert parent.stdout.readline().strip() == f"child ended by signal {int(signal.SIGTERM)}"
        forked = _stored(store)  # what the child wrote: its own runs, not the parent's queued ones
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == -signal.SIGTERM
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert sorted(forked["thread_id"]) == ["child-0", "child-1", "child-2"]  # was: none (and never the parent's)
    stored = _stored(store)
    assert sorted(stored["thread_id"]) == sorted(["parent-in-flight", *(f"{who}-{i}" for who in ("parent", "child") for i in range(3))])
    in_flight = stored.filter(pl.col("thread_id") == "parent-in-flight")  # ended once, by its own process
    assert in_flight.select("status", "error").rows() == [("interrupted", "terminated: SIGTERM")]


HOLDING_A_LOCK = textwrap.dedent(
    """
    import os, signal, sys
    from agent import ask, build

    agent = build(sys.argv[1])
    ask(agent, "first")
    with agent.recorder.processor._lock:  # the writer's lock, which the flush waits on
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, in this thread, the lock held
        signal.pause()
    """
)


def test_sigterm_while_the_main_thread_holds_a_capture_lock_still_ends_the_process(tmp_path: Path) -> None:
    """The handler waits on a thread of its own, for a bounded time: a flush that needs a lock the interrupted main
    thread holds (here the span processor's, taken by the test's script itself) cannot finish, and the process still
    ends, killed by SIGTERM, instead of waiting for ever."""
    script = _script(tmp_path, "locked.py", HOLDING_A_LOCK)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "experience")], cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stderr


HANDLER_AFTER_BUILD = textwrap.dedent(
    """
    import signal, sys
    from agent import build

    build(sys.argv[1])
    handler = signal.getsignal(signal.SIGTERM)
    print("default" if handler is signal.SIG_DFL else getattr(handler, "__module__", repr(handler)))
    """
)


def _run_with_switch(tmp_path: Path, name: str, text: str, switch: str | None) -> subprocess.CompletedProcess[str]:
    """The script ``text`` run as ``name`` on a store in ``tmp_path``, with ``EE_CAPTURE_SIGTERM`` set to ``switch``
    (unset for ``None``)."""
    env = {k: v for k, v in os.environ.items() if k != "EE_CAPTURE_SIGTERM"}
    if switch is not None:
        env["EE_CAPTURE_SIGTERM"] = switch
    script = _script(tmp_path, name, text)
    return subprocess.run([sys.executable, str(script), str(tmp_path / "store")], cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(("switch", "expected"), [(None, "ee_middleware.capture.shutdown"), ("0", "default"), ("off", "default")])
def test_ee_capture_sigterm_off_leaves_sigterm_at_its_default(tmp_path: Path, switch: str | None, expected: str) -> None:
    """EE_CAPTURE_SIGTERM=0 (or off) switches the handler off for the process: SIGTERM stays at its default."""
    out = _run_with_switch(tmp_path, "check.py", HANDLER_AFTER_BUILD, switch)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected


UVICORN_WORKER = textwrap.dedent(
    """
    import signal, sys
    import uvicorn
    from agent import build

    server = uvicorn.Server(uvicorn.Config("agent:build"))
    signal.signal(signal.SIGTERM, server.handle_exit)  # as uvicorn's serve() does before a --workers worker imports the app
    build(sys.argv[1])
    build(sys.argv[1] + "-2")  # said once per process
    print("uvicorn's" if signal.getsignal(signal.SIGTERM) == server.handle_exit else "replaced")
    """
)


@pytest.mark.parametrize("switch", [None, "0"])
def test_a_recorder_built_where_uvicorn_owns_sigterm_says_to_flush_in_the_lifespan(tmp_path: Path, switch: str | None) -> None:
    """Sweep J: under `uvicorn --workers 2` without a lifespan flush, 15 of 22 answered runs were lost at SIGTERM, and
    nothing said so: capture rightly leaves a handler the server installed before importing the app, and uvicorn ends
    the process at once after its graceful shutdown. Now a recorder built there says what to do, once; with
    EE_CAPTURE_SIGTERM=0 (SIGTERM left to the app on purpose) it says nothing."""
    out = _run_with_switch(tmp_path, "worker.py", UVICORN_WORKER, switch)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "uvicorn's"  # left as it was
    said = out.stderr.count("uvicorn handles SIGTERM in this process")
    assert said == (0 if switch else 1), out.stderr
    if not switch:
        assert "await asyncio.to_thread(agent.flush)" in out.stderr and "EE_CAPTURE_SIGTERM=0" in out.stderr


def test_a_misspelt_ee_capture_sigterm_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "EE_CAPTURE_SIGTERM": "of"}
    script = _script(tmp_path, "check.py", HANDLER_AFTER_BUILD)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "EE_CAPTURE_SIGTERM='of' is neither on nor off" in out.stderr, out.stderr[-2000:]


STUCK_IN_C = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys, threading, time
    from agent import ask, build, say

    agent = build(sys.argv[1])

    def stuck():
        ask(agent, "before")
        other = threading.Thread(target=threading.Event().wait, daemon=True)
        other.start()

        def deliver():
            time.sleep(0.5)  # the main thread is blocked in the lock's C wait by now
            signal.pthread_kill(other.ident, signal.SIGTERM)  # the C handler runs on that thread; the main one sleeps on

        threading.Thread(target=deliver, daemon=True).start()
        lock = multiprocessing.Lock()  # a POSIX semaphore, as a multiprocessing.Pool worker's task queue lock
        lock.acquire()
        lock.acquire()  # blocked for ever, as a Pool worker idle when the pool's terminate() sends it SIGTERM

    if __name__ == "__main__":
        child = multiprocessing.get_context("fork").Process(target=stuck)
        child.start()
        child.join(50)
        say(f"child exit code {child.exitcode}")
    """
)


def test_sigterm_taken_while_a_multiprocessing_workers_main_thread_is_blocked_in_c_ends_it(tmp_path: Path) -> None:
    """A Python handler runs only when the main thread runs Python code again: a SIGTERM taken by another thread (or
    just before the main thread's wait) left a ``multiprocessing`` worker's main thread blocked in a semaphore for ever,
    where the default disposition ends the process (a ``Pool``'s ``with`` block then waited for its worker for ever: a CI
    run hung on it). Capture's watcher of the worker's signal wakeup fd sends it again to the main thread, whose wait
    is interrupted; the handler writes the worker's runs and it ends killed by SIGTERM. The signal is delivered to the
    other thread with ``pthread_kill``, making the race deterministic; the script's processes are killed if it outlives
    its time limit."""
    _script(tmp_path, "stuck.py", STUCK_IN_C)
    store = tmp_path / "experience"
    done = run_script(STUCK_IN_C, str(store), "child", timeout=60, cwd=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (0, f"child exit code {-int(signal.SIGTERM)}"), done.stderr[-2000:]
    assert _stored(store)["thread_id"].to_list() == ["before"]


OWN_WAKEUP_FD = textwrap.dedent(
    """
    import multiprocessing, signal, socket, sys
    from agent import build

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    if sys.argv[2] == "set":
        signal.set_wakeup_fd(writer.fileno())  # as asyncio's add_signal_handler does

    def report():
        current = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(current)  # as it was
        print("app's" if current == writer.fileno() else "none" if current == -1 else "capture's", flush=True)

    if __name__ == "__main__":
        build(sys.argv[1])
        report()
        worker = multiprocessing.get_context("fork").Process(target=report)
        worker.start()
        worker.join(30)
    """
)


@pytest.mark.parametrize(("app", "expected"), [("set", ["app's", "app's"]), ("none", ["none", "capture's"])])
def test_capture_sets_a_wakeup_fd_only_in_multiprocessing_workers_and_only_where_there_is_none(
    tmp_path: Path, app: str, expected: list[str]
) -> None:
    """The app's own process keeps its signal wakeup fd as it is (none, or the app's: Trio warns when it finds one taken,
    and a daemonizer closing every file would leave signal bytes written into another); a worker ``multiprocessing``
    forks gets capture's, unless it has the app's."""
    _script(tmp_path, "wakeup.py", OWN_WAKEUP_FD)
    out = run_script(OWN_WAKEUP_FD, str(tmp_path / "store"), app, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == expected, out.stdout


STARVED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from agent import ask, build, say

    from ee_middleware.capture import offload as offload_module
    from ee_middleware.capture.offload import ProcessOffload

    offload_module.PIPE_BYTES = 64 * 1024  # Linux's default pipe, not the 1 MiB asked for: 80 small runs overflow it
    withdraw = ProcessOffload.withdraw_unsent

    def withdraw_then_resume(offload, timeout):  # the child runs again once the runs it never read are taken back (a
        taken = withdraw(offload, timeout)      # stopped child whose parent dies is killed by SIGHUP: its group is orphaned)
        os.kill(offload.pid, signal.SIGCONT)
        return taken

    ProcessOffload.withdraw_unsent = withdraw_then_resume
    agent = build(sys.argv[1], "process")
    ask(agent, "first")
    os.kill(agent.recorder.offload.pid, signal.SIGSTOP)  # a capture process that gets no CPU: it reads nothing more
    say(f"capture process {agent.recorder.offload.pid}")
    for k in range(80):  # more than its pipe holds: the last ones wait in this process's queue
        ask(agent, f"later-{k}")
    say(f"queued {len(agent.recorder.offload._queue)}")
    signal.raise_signal(signal.SIGTERM)
    """
)


def test_sigterm_takes_back_the_runs_a_starved_capture_process_had_not_read_and_writes_them_once(tmp_path: Path) -> None:
    """Sweep J: a uvicorn service recording with offload="process" lost answered runs at SIGTERM on a busy machine. The
    capture process (nice 19) got almost no CPU, its pipe was full, and the runs still queued in the agent's process died
    with it, while the flush waited the whole 5 s for the child's answer; nothing was said. Here the child is stopped
    (SIGSTOP) until the agent's process has taken back the runs it never read: those are written by the agent's process,
    the ones in its pipe by the child, each once, and a warning says so."""
    store = tmp_path / "experience"
    script = _script(tmp_path, "starved.py", STARVED_CHILD)
    agent = subprocess.Popen(
        [sys.executable, str(script), str(store)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    capture_pid = None
    try:
        out, err = agent.communicate(timeout=120)
        assert agent.returncode == -signal.SIGTERM, err
        lines = out.splitlines()
        capture_pid = int(next(line for line in lines if line.startswith("capture process")).split()[-1])
        assert int(next(line for line in lines if line.startswith("queued")).split()[-1]) > 0, "some runs never reached the pipe"
        assert "the capture process had not taken the last" in err and "recorded by this process instead" in err, err
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if capture_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(capture_pid, signal.SIGCONT)  # (the script failed before it did)
    assert capture_pid is not None and ended(capture_pid, 30)  # it read what its pipe held, then its end: wrote that, exited
    stored = _stored(store)
    assert stored["id"].n_unique() == stored.height
    assert sorted(stored["thread_id"]) == sorted(["first", *(f"later-{k}" for k in range(80))])  # each run once
    assert set(stored["status"]) == {"completed"}
