"""Capture's work in a child process (``offload="process"`` / ``"auto"``): real LangGraph graphs, the
real OpenTelemetry SDK in the child, the real local store, real child processes (checked with psutil:
none is left behind). The golden of both modes is tests/capture/test_golden.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pydantic
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import offload as offload_module
from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.offload import SPAN_PROCESSOR_ENV
from ee_middleware.capture.vault import Vault
from ee_middleware.errors import CaptureError, ConfigError
from ee_middleware.records import Trajectory
from tests.conftest import USER_TASK

REPO = Path(__file__).resolve().parents[2]


def approve_completed(trajectory: Trajectory) -> bool:
    return trajectory.status == "completed"


def approve_or_fail(trajectory: Trajectory) -> bool:
    raise RuntimeError("approve_if broke")


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def no_child_left():
    before = _children()
    yield
    deadline = time.monotonic() + 10
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"


def _salted(path: Path) -> Path:
    """A new store whose pseudonym salt is fixed, so that two stores' placeholders can be compared."""
    LocalExperienceStore(path).close()
    (path / "redaction.key").write_text("5e" * 32 + "\n")
    return path


def _stable(store_path: Path) -> list[dict[str, Any]]:
    store = LocalExperienceStore(store_path)
    try:
        out = []
        for t in store.iter_trajectories():
            data = t.model_dump(mode="json")
            steps = [{k: v for k, v in s.items() if k not in ("trajectory_id", "latency_ms", "model_latency_ms")} for s in data["steps"]]
            out.append({"status": data["status"], "thread_id": data["thread_id"], "steps": steps, "environment": data["environment"]})
        return sorted(out, key=_mask_call_ids)
    finally:
        store.close()


def _mask_call_ids(data: Any) -> str:
    import re

    return re.sub(r"call_[0-9a-f]{12}", "call_?", json.dumps(data, sort_keys=True))


def test_process_mode_stores_what_thread_mode_stores_and_leaves_no_process(react_graph, inventory, tmp_path, no_child_left):
    agents = {}
    for mode in ("thread", "process"):
        inventory.stock["pear"] = 0
        agent = record_experience(
            react_graph,
            app="shop",
            store=_salted(tmp_path / mode),
            offload=mode,
            approve_if=approve_completed,
            environment={"region": "eu"},
        )
        agent.invoke(USER_TASK, {"configurable": {"thread_id": "bob@example.com"}})
        for _ in range(2):
            inventory.stock["pear"] = 0  # the same world for every run, so that both modes record the same
            agent.invoke(USER_TASK)
        assert agent.flush()
        agents[mode] = agent
    process = agents["process"].recorder
    assert process.offload is not None and psutil.pid_exists(process.offload.pid)
    assert process.stats.trajectories_written == 3 and process.stats.trajectories_auto_approved == 3
    assert process.stats.runs_failed == 0 and process.offload_cpu_s > 0
    assert agents["thread"].recorder.offload is None
    thread_runs, process_runs = _stable(tmp_path / "thread"), _stable(tmp_path / "process")
    assert len(process_runs) == 3
    assert _mask_call_ids(process_runs) == _mask_call_ids(thread_runs)
    assert "bob@example.com" not in json.dumps(process_runs)  # the thread id is redacted in the child too
    pid = process.offload.pid
    for agent in agents.values():
        agent.recorder.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_offload_setting_is_checked(monkeypatch):
    with pytest.raises(ConfigError, match="offload must be one of thread, process, auto"):
        CaptureConfig(offload="fork")
    monkeypatch.setenv("EE_CAPTURE_OFFLOAD", "thread")
    assert CaptureConfig.load().offload == "thread"
    assert CaptureConfig().offload == "thread"  # a child process inside the user's app is opt-in


def test_process_mode_refuses_what_the_child_cannot_have(react_graph, tmp_path, tracer_provider):
    with pytest.raises(ConfigError, match=r"approve_if .*cannot be pickled.*module level.*offload='thread'"):
        record_experience(react_graph, app="shop", store=tmp_path / "a", offload="process", approve_if=lambda t: True)
    with pytest.raises(ConfigError, match=r"redact_fn"):
        record_experience(react_graph, app="shop", store=tmp_path / "b", offload="process", redact_fn=lambda s: s)
    with pytest.raises(ConfigError, match=r"own tracer_provider"):
        record_experience(react_graph, app="shop", store=tmp_path / "c", offload="process", tracer_provider=tracer_provider)
    # auto: the same recorders stay on threads, without a child
    for kwargs in ({"approve_if": lambda t: True}, {"tracer_provider": tracer_provider}):
        agent = record_experience(react_graph, app="shop", store=tmp_path / "d", offload="auto", **kwargs)
        assert agent.recorder.offload is None and agent.recorder._offload_init is None
        agent.recorder.close()


class _Connection(pydantic.BaseModel):
    """A user's environment object that cannot be pickled (it holds a lock) yet has a JSON form (its fields): a live
    object JSON cannot hold is refused before the run instead (tests/capture/test_recorder.py)."""

    db: str = "shop"
    _lock: Any = pydantic.PrivateAttr(default_factory=threading.Lock)


def test_a_run_that_cannot_be_pickled_is_recorded_in_the_agent_process(react_graph, inventory, tmp_path, no_child_left):
    environment = {"db": _Connection(), "region": "eu"}
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", environment=environment)
    agent.invoke(USER_TASK)
    agent.invoke(USER_TASK, {"configurable": {"ee_environment": {"region": "us"}}})  # this one pickles
    agent.flush()
    stats = agent.recorder.stats
    assert (stats.trajectories_written, stats.runs_not_offloaded, stats.runs_failed) == (2, 1, 0)
    environments = sorted(json.dumps(t["environment"], sort_keys=True) for t in _stable(tmp_path / "p"))
    assert environments == ['{"db": {"db": "shop"}, "region": "eu"}', '{"region": "us"}']
    agent.recorder.close()


def test_strict_mode_raises_the_child_failures_on_flush(react_graph, tmp_path, no_child_left):
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", strict=True, approve_if=approve_or_fail)
    agent.invoke(USER_TASK)
    with pytest.raises(CaptureError, match=r"capture process.*approve_if broke"):
        agent.flush()
    stats = agent.recorder.stats
    assert (stats.runs_failed, stats.approve_if_failed, stats.trajectories_written) == (0, 1, 1)  # the run stays, pending
    assert "approve_if raised" in stats.errors[-1]
    agent.flush()  # said once
    agent.recorder.close()


def test_the_vault_and_store_redaction_settings_match_thread_mode(react_graph, inventory, tmp_path, no_child_left):
    task = {"messages": [("user", "Pears for carol@example.org? Call +1 415 555 0134.")]}
    written = {}
    for mode in ("thread", "process"):
        path = _salted(tmp_path / mode / "experience")
        agent = record_experience(react_graph, app="shop", store=path, offload=mode, vault=True)
        inventory.stock["pear"] = 0
        agent.invoke(task, {"configurable": {"thread_id": "carol@example.org"}})
        agent.flush()
        agent.recorder.close()
        vault = Vault(path.with_name("experience.vault"))
        written[mode] = (
            sorted((p, vault.lookup(p)) for p in vault._values),
            json.loads((path / "redaction.json").read_text().replace(str(tmp_path / mode), "<store folder>")),
            _mask_call_ids(_stable(path)),
        )
    assert written["process"] == written["thread"]
    assert ("carol@example.org" in {v for _, v in written["process"][0]}) and "carol@example.org" not in written["process"][2]


def test_auto_moves_to_a_process_under_sustained_load_and_loses_no_run(react_graph, inventory, tmp_path, no_child_left):
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="auto")
    recorder, runs = agent.recorder, 0
    assert recorder.offload is None
    deadline = time.monotonic() + 30
    # back-to-back runs for longer than the 2 s deferral: capture starts its child, and runs go there once it is up
    while (recorder.offload is None or not recorder.offload.ready()) and time.monotonic() < deadline:
        agent.invoke(USER_TASK)
        runs += 1
    for _ in range(5):
        agent.invoke(USER_TASK)
        runs += 1
    assert recorder.offload is not None and recorder.offload.ready()
    agent.flush()
    assert recorder.stats.trajectories_written == runs and recorder.stats.runs_failed == 0
    assert recorder.offload.stats.trajectories_written >= 5  # some were written by the child
    recorder.close()
    store = LocalExperienceStore(tmp_path / "p")
    assert store.trajectories().height == runs
    store.close()


_KILLED_PARENT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from ee_middleware import record_experience
from tests.conftest import USER_TASK, build_multi_node_graph
from tests.capture.test_offload import _graph
agent = record_experience(_graph(), app="shop", store={store!r}, offload="process")
for _ in range(5):
    agent.invoke(USER_TASK)
print(agent.recorder.offload.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _graph(result: str = "0") -> Any:
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware.testing import ScriptedChatModel, tool_call
    from tests.conftest import build_multi_node_graph

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        return result

    script = [AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]), AIMessage(content="None left.")]
    return build_multi_node_graph(ScriptedChatModel(script=script, model_name="scripted"), [check_stock])


def test_the_child_writes_what_it_was_sent_and_ends_when_its_parent_is_killed(tmp_path):
    store = tmp_path / "experience"
    code = textwrap.dedent(_KILLED_PARENT).format(repo=str(REPO), store=str(store))
    parent = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    child = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 20
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, "the capture process outlived its parent"
    reader = LocalExperienceStore(store)
    assert reader.trajectories().height == 5  # the runs in the pipe when the parent died were still written
    reader.close()


_KILLED_PARENT_OF_A_HELD_CHILD = """
import os, pathlib, signal, sys
sys.path.insert(0, {repo!r})
from ee_middleware import record_experience
from tests.capture.test_offload import _graph
agent = record_experience(_graph(result="{{}}" * 2000), app="shop", store={store!r}, offload="process")
agent.invoke({{"messages": [("user", "warm up")]}})
agent.flush()  # the child is up and has written the first run
pathlib.Path({gate!r}).touch()  # from the next run on, it waits: every run sent meanwhile waits in the pipe
for i in range(40):
    agent.invoke({{"messages": [("user", f"task {{i}}")]}})
print(agent.recorder.offload.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

GATE_ENV = "EE_TEST_CAPTURE_GATE"


class _Gate(SpanProcessor):
    """Holds the capture process at each span's end while the file ``$EE_TEST_CAPTURE_GATE`` exists (at most 60 s): a
    child that is busy or starved of CPU, as a capture process at nice 19 on a loaded machine is."""

    def on_end(self, span: ReadableSpan) -> None:
        gate, deadline = Path(os.environ[GATE_ENV]), time.monotonic() + 60
        while gate.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def gate_tap() -> SpanProcessor:
    return _Gate()


def test_a_burst_the_child_has_not_read_outlives_a_sigkill_of_the_agent_in_the_pipe(tmp_path, monkeypatch):
    # found by a concurrency sweep: 30 runs of 1 KiB, SIGKILL right after the last invoke, and 17 were stored: the pipe
    # (64 KiB) held 17 runs, the rest were queued in the killed process. A 1 MiB pipe holds a burst of 40 runs of ~5 KiB.
    store, gate = tmp_path / "experience", tmp_path / "gate"
    monkeypatch.setenv(SPAN_PROCESSOR_ENV, f"{__name__}:gate_tap")
    monkeypatch.setenv(GATE_ENV, str(gate))
    code = textwrap.dedent(_KILLED_PARENT_OF_A_HELD_CHILD).format(repo=str(REPO), store=str(store), gate=str(gate))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:  # files: the child, which outlives the parent, holds pipes open
        parent = subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=stderr, timeout=120, cwd=REPO)
    assert parent.returncode == -signal.SIGKILL, err.read_text()
    child = int(out.read_text().split()[0])
    time.sleep(1.0)
    gate.unlink()  # the child goes on, its parent gone
    deadline = time.monotonic() + 60
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, "the capture process outlived its parent"
    reader = LocalExperienceStore(store)
    tasks = reader.trajectories()["task"].to_list()
    reader.close()
    assert len(tasks) == 41 and set(tasks) == {"warm up", *(f"task {i}" for i in range(40))}, len(tasks)


def test_the_child_runs_below_the_agent_in_its_session_and_out_of_its_process_group(react_graph, tmp_path, no_child_left, monkeypatch):
    monkeypatch.delenv("EE_CAPTURE_OFFLOAD_NICE", raising=False)  # (the test session's is 0: the default here)
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process")
    agent.invoke(USER_TASK)
    agent.flush()
    child = agent.recorder.offload.pid
    try:
        # lowest priority: capture takes CPU time the agent does not want
        assert os.getpriority(os.PRIO_PROCESS, child) == 19
        # the agent's session (Linux's autogroup shares CPU between sessions first), its own process group (no Ctrl-C)
        assert os.getsid(child) == os.getsid(0)
        assert os.getpgid(child) == child != os.getpgid(0)
    finally:
        agent.recorder.close()
    assert len(list(LocalExperienceStore(tmp_path / "p").iter_trajectories())) == 1


@pytest.mark.parametrize("nice", ["7", "0"])
def test_the_childs_nice_value_is_the_one_configured(react_graph, tmp_path, no_child_left, monkeypatch, nice):
    monkeypatch.setenv("EE_CAPTURE_OFFLOAD_NICE", nice)
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process")
    try:
        agent.invoke(USER_TASK)
        assert agent.flush()
        assert os.getpriority(os.PRIO_PROCESS, agent.recorder.offload.pid) == max(int(nice), os.getpriority(os.PRIO_PROCESS, 0))
    finally:
        agent.recorder.close()


def test_a_nice_value_out_of_range_is_refused_naming_the_variable(react_graph, tmp_path, monkeypatch):
    monkeypatch.setenv("EE_CAPTURE_OFFLOAD_NICE", "20")
    with pytest.raises(ConfigError, match=r"EE_CAPTURE_OFFLOAD_NICE='20': a nice value is from 0 to 19"):
        record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process")


def test_import_stays_light_and_the_child_is_started_only_when_asked(react_graph, tmp_path, no_child_left):
    before = _children()
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p")  # default: threads, never a child
    agent.invoke(USER_TASK)
    agent.flush()
    assert _children() == before and agent.recorder.offload is None and agent.recorder._offload_init is None
    agent.recorder.close()
    agent = record_experience(react_graph, app="shop", store=tmp_path / "q", offload="auto")  # auto: no child until sustained load
    agent.invoke(USER_TASK)
    agent.flush()
    assert _children() == before and agent.recorder.offload is None
    agent.recorder.close()
    assert os.environ.get("EE_CAPTURE_OFFLOAD") is None


_FORKED = """
import os, sys
sys.path.insert(0, {repo!r})
from ee_middleware import record_experience
from tests.conftest import USER_TASK
from tests.capture.test_offload import _graph
agent = record_experience(_graph(), app="shop", store={store!r}, offload="process")
offload = agent.recorder.offload
for _ in range(5):
    agent.invoke(USER_TASK)
forks = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:  # a worker forked after the child started (gunicorn --preload, multiprocessing fork)
        for _ in range(30):
            agent.invoke(USER_TASK)
        agent.flush()
        # one write of the whole line (atomic on a pipe): print() may write the text and its newline apart, and the
        # forks' lines then interleave
        os.write(1, f"fork {{agent.recorder.offload is None}} {{agent.recorder.stats.runs_failed}}\\n".encode())
        sys.exit(0)  # through atexit, as a worker ends
    forks.append(pid)
for _ in range(30):
    agent.invoke(USER_TASK)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in forks]
for _ in range(5):  # after the forks ended: the child still takes runs
    agent.invoke(USER_TASK)
agent.flush()
print("parent", codes, offload.alive, agent.recorder.offload is offload, agent.recorder.stats.runs_failed, flush=True)
agent.recorder.close()
"""


def test_a_forked_process_records_in_its_own_threads_and_leaves_the_child_to_the_parent(tmp_path):
    store = tmp_path / "experience"
    code = textwrap.dedent(_FORKED).format(repo=str(REPO), store=str(store))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(result.stdout.split("\n"))
    assert lines[-1] == "parent [0, 0, 0] True True 0", result.stdout + result.stderr[-3000:]
    assert lines[-4:-1] == ["fork True 0"] * 3, result.stdout + result.stderr[-3000:]
    reader = LocalExperienceStore(store)
    assert reader.trajectories().height == 5 + 3 * 30 + 30 + 5  # every run of the parent and of every fork
    reader.close()


_SECRET = "order note: card 4111 1111 1111 1111, " * 500  # about 20 KB of a user's message text


def _rebuild(text: str) -> Any:
    raise ValueError(f"cannot rebuild {text}")


@dataclasses.dataclass
class _Unloadable:
    """Pickles in the agent's process; unpickling it in the child raises with the data in the message. (A dataclass: its
    JSON form is its fields.)"""

    text: str

    def __reduce__(self) -> Any:
        return _rebuild, (self.text,)


def test_a_run_the_child_cannot_read_is_reported_without_its_data(react_graph, tmp_path, capfd, no_child_left):
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", strict=True)
    agent.invoke(USER_TASK, {"configurable": {"ee_environment": {"blob": _Unloadable(_SECRET)}}})
    with pytest.raises(CaptureError) as raised:
        agent.flush()
    stats = agent.recorder.stats
    agent.recorder.close()
    assert stats.runs_failed == 1
    message = stats.errors[-1]
    assert "ValueError" in message and "bytes" in message, message
    reported = [str(raised.value), *stats.errors, capfd.readouterr().err]
    assert not [r for r in reported if "4111" in r or "order note" in r], [r[:300] for r in reported]


def test_a_stopped_child_never_blocks_the_agent_and_no_run_is_lost(react_graph, inventory, tmp_path, no_child_left, monkeypatch):
    monkeypatch.setattr(offload_module, "PIPE_BYTES", 64 * 1024)  # Linux's default pipe, not the 1 MiB asked for: 100 runs overflow it
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process")
    recorder = agent.recorder
    offload = recorder.offload
    offload.max_queued_runs = 10  # (a small queue: the pipe and the queue fill within a few dozen runs)
    agent.invoke(USER_TASK)
    assert agent.flush()
    finished = threading.Event()

    def runs() -> None:
        for _ in range(100):
            agent.invoke(USER_TASK)
        finished.set()

    os.kill(offload.pid, signal.SIGSTOP)
    try:
        worker = threading.Thread(target=runs, daemon=True)
        worker.start()
        worker.join(60)  # a guard against a hang, not a timing check: 100 runs take well under a second
        assert finished.is_set(), "the agent blocked on a stopped capture process"
        assert recorder.stats.runs_not_offloaded > 0  # the runs the queue had no room for were recorded here
        assert recorder.flush(timeout=0.5) is False  # a flush says it is not done, and does not hang
    finally:
        os.kill(offload.pid, signal.SIGCONT)
    assert agent.flush()
    stats = recorder.stats
    assert (stats.trajectories_written, stats.runs_failed) == (101, 0), stats
    assert offload.alive
    recorder.close()
    store = LocalExperienceStore(tmp_path / "p")
    assert store.trajectories().height == 101
    store.close()


def _kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)


# killed mid-write, the child may leave a half-written last record (never acknowledged: the run is recovered), which a
# read then names (a CI run read it so once)
@pytest.mark.filterwarnings("default:Skipped a damaged record.*half-written last record:ee_middleware.errors.StoreCorruptionWarning")
def test_runs_sent_to_a_child_that_is_killed_are_recorded_in_the_agent_process(react_graph, inventory, tmp_path, no_child_left):
    # The OOM killer or an operator's kill: the child was sent runs it had not written yet (it writes in batches). They
    # were lost while flush() returned True (22 of 1,200 in the store sweep); strict mode said only 'Broken pipe'.
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", strict=True)
    recorder = agent.recorder
    assert recorder.offload.ready()
    for _ in range(30):
        agent.invoke(USER_TASK)
    _kill_and_wait(recorder.offload.pid)
    for _ in range(10):  # the first send after the death finds the pipe broken; these take the thread path
        agent.invoke(USER_TASK)
    assert agent.flush()  # nothing is lost: no failure to raise
    stats = recorder.stats
    assert stats.runs_recovered > 0 and stats.runs_failed == 0, stats
    recorder.close()
    store = LocalExperienceStore(tmp_path / "p")
    assert store.trajectories()["id"].n_unique() == store.trajectories().height == 40
    trajectories = list(store.iter_trajectories())
    assert all(t.tools and t.steps for t in trajectories)  # a recovered run has its tool lists back, not their numbers
    store.close()


def test_runs_no_longer_kept_for_a_killed_child_are_counted_as_lost(react_graph, tmp_path, no_child_left):
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", strict=True)
    recorder = agent.recorder
    assert recorder.offload.ready()
    recorder.offload.max_kept_bytes = 1  # keeps only the last run sent
    # stopped, the child answers none of the flushes asked meanwhile: none of the 10 runs is said written (running, it
    # answered some of them first, as its timing allowed: 2 of 10 counted lost in one CI run)
    os.kill(recorder.offload.pid, signal.SIGSTOP)
    for _ in range(10):
        agent.invoke(USER_TASK)
    _kill_and_wait(recorder.offload.pid)
    agent.invoke(USER_TASK)
    with pytest.raises(
        CaptureError, match=r"killed by SIGKILL.*the 1 run it was sent.*recorded in the agent's process.*10 runs sent to it before"
    ):
        agent.flush()
    assert recorder.stats.runs_recovered == 1
    recorder.close()


def test_without_strict_mode_a_flush_after_runs_were_lost_returns_false_once(react_graph, tmp_path, no_child_left, monkeypatch):
    # The child's death was noticed by the sender thread (the next run's write), not by the flush: the flush returned
    # True although runs may not be written (found by review).
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", strict=False)
    recorder = agent.recorder
    assert recorder.offload.ready()
    recorder.offload.max_kept_bytes = 1  # keeps only the last run sent
    # stopped, the child answers none of the flushes asked meanwhile: none of the 10 runs is said written (running, it
    # answered some of them first, as its timing allowed: 2 of 10 counted lost in one CI run)
    os.kill(recorder.offload.pid, signal.SIGSTOP)
    for _ in range(10):
        agent.invoke(USER_TASK)
    _kill_and_wait(recorder.offload.pid)
    agent.invoke(USER_TASK)
    recorder.offload._sender.join(30)  # the sender finds the pipe broken and gives up on the child
    assert agent.flush() is False
    assert agent.flush() is True  # said once
    recorder.close()


def test_large_runs_are_confirmed_by_bytes_so_a_killed_child_loses_none(react_graph, tmp_path, no_child_left):
    # Runs so large that max_kept_bytes holds fewer than max_kept_runs: the child was never asked which runs it wrote,
    # and a killed child had every run since the last flush reported as possibly lost (strict mode raised) although
    # the store held them all (found by review).
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", strict=True)
    offload = agent.recorder.offload
    assert offload.ready()
    for _ in range(3):
        agent.invoke(USER_TASK)
    offload.max_kept_bytes = 20 * offload._kept_bytes // len(offload._kept)  # 20 runs (< max_kept_runs), as 32 MiB of runs over 1.6 MB
    for _ in range(40):
        agent.invoke(USER_TASK)
    runs, deadline = 43, time.monotonic() + 60  # (the child works at nice 19: on a busy machine it confirms later)
    while offload._written_upto < 40 and time.monotonic() < deadline:  # its answers are read by the next sends
        time.sleep(0.1)
        agent.invoke(USER_TASK)
        runs += 1
    assert offload._written_upto >= 40, "the child was never asked which runs it wrote"
    _kill_and_wait(offload.pid)
    assert agent.flush()  # what the child had not confirmed is kept and recorded here; nothing is lost
    agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "p")
    assert store.trajectories()["id"].n_unique() == runs
    store.close()


def test_the_child_says_which_runs_it_wrote_without_the_agent_waiting_so_kept_runs_stay_few(react_graph, tmp_path, no_child_left):
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process")
    offload = agent.recorder.offload
    assert offload.ready()
    offload.max_kept_runs = 5
    for _ in range(40):
        agent.invoke(USER_TASK)
    deadline = time.monotonic() + 30
    while len(offload._kept) > 10 and time.monotonic() < deadline:  # the answers are read by the next runs' sends
        time.sleep(0.05)
        agent.invoke(USER_TASK)
    assert len(offload._kept) <= 10, len(offload._kept)
    assert agent.flush() and not offload._kept  # a flush's answer: everything it was sent is written
    agent.recorder.close()


def test_strict_mode_keeps_a_failure_answered_after_its_flush_timed_out(react_graph, tmp_path, no_child_left):
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", strict=True, approve_if=approve_or_fail)
    recorder = agent.recorder
    pid = recorder.offload.pid
    assert recorder.offload.ready()  # started
    os.kill(pid, signal.SIGSTOP)
    try:
        agent.invoke(USER_TASK)
        assert recorder.flush(timeout=0.2) is False  # the child answers later, with approve_if's failure
    finally:
        os.kill(pid, signal.SIGCONT)
    with pytest.raises(CaptureError, match=r"capture process.*approve_if broke"):
        agent.flush()
    assert agent.flush()  # said once
    recorder.close()


def _binds_tools_every_turn() -> Any:
    """A graph whose model node binds its tools anew at every turn (new schema dicts each time), the
    tool's description naming the run (``configurable.run``)."""
    from langchain_core.messages import AIMessage
    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import START, MessagesState, StateGraph

    from ee_middleware.testing import ScriptedChatModel

    model = ScriptedChatModel(script=[AIMessage(content="Checked.")], model_name="scripted")

    def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        run = config["configurable"]["run"]
        schema = {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}
        tool = {"type": "function", "function": {"name": "check_stock", "description": f"Stock of run {run}", "parameters": schema}}
        return {"messages": [model.bind_tools([tool]).invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_edge(START, "agent")
    return graph.compile()


def test_tool_lists_bound_anew_every_turn_keep_the_table_bounded_and_each_run_its_own_tools(tmp_path, no_child_left):
    agent = record_experience(_binds_tools_every_turn(), app="shop", store=tmp_path / "p", offload="process")
    offload = agent.recorder.offload
    offload.max_tool_lists = 4  # (small, so that numbers are reused many times over)
    for run in range(200):
        configurable: dict[str, Any] = {"run": run}
        if run % 50 == 7:  # a run that cannot be pickled: its numbering (and the slot it took) is undone
            configurable["ee_environment"] = {"db": _Connection()}
        agent.invoke(USER_TASK, {"configurable": configurable})
    assert agent.flush()
    assert len(offload._tool_numbers) <= 4 and agent.recorder.stats.runs_not_offloaded == 4
    agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "p")
    descriptions = sorted(t.tools[0]["function"]["description"] for t in store.iter_trajectories())
    store.close()
    assert descriptions == sorted(f"Stock of run {run}" for run in range(200))  # both sides agree on every number


def test_a_child_that_cannot_start_is_a_warning_not_a_failed_run(react_graph, inventory, tmp_path, caplog, monkeypatch, no_child_left):
    import types

    module = types.ModuleType("made_at_runtime")  # importable here (sys.modules), by no other process
    exec("def approve(trajectory):\n    return True\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "made_at_runtime", module)
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="process", strict=True, approve_if=module.approve)
    agent.invoke(USER_TASK)
    assert agent.flush()  # strict mode: nothing raised, the run was recorded on threads
    stats = agent.recorder.stats
    agent.recorder.close()
    assert (stats.trajectories_written, stats.trajectories_auto_approved, stats.runs_failed) == (1, 1, 0), stats
    assert stats.offload_start_failures == 1
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "could not start" in r.getMessage()]
    assert warned and "made_at_runtime" in warned[0] and "threads" in warned[0], warned


def test_threads_reaching_sustained_load_together_start_one_child(react_graph, tmp_path, monkeypatch, no_child_left):
    import logging

    from ee_middleware.capture import recorder as recorder_module

    started = []
    real = recorder_module.ProcessOffload

    def counted(*args: Any, **kwargs: Any) -> Any:
        started.append(args[0])
        return real(*args, **kwargs)

    class SlowHandler(logging.Handler):  # a user's slow log handler: the threads meet while the start is logged
        def emit(self, record: logging.LogRecord) -> None:
            if "sustained load" in record.getMessage():
                time.sleep(0.2)

    monkeypatch.setattr(recorder_module, "ProcessOffload", counted)
    log = logging.getLogger("ee_middleware.capture")
    handler = SlowHandler(logging.INFO)
    log.addHandler(handler)
    monkeypatch.setattr(log, "level", logging.INFO)
    agent = record_experience(react_graph, app="shop", store=tmp_path / "p", offload="auto")
    recorder = agent.recorder
    recorder.finisher.forced = 1  # the finisher hit its deferral bound: sustained load
    barrier = threading.Barrier(8)

    def reach() -> None:
        barrier.wait()
        recorder._offload_for_run()

    threads = [threading.Thread(target=reach) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(started) == 1, f"{len(started)} capture processes started (settings: {[type(s).__name__ for s in started]})"
        assert recorder.offload is not None and recorder.offload.ready() is not None
        assert recorder.stats.offload_start_failures == 0
    finally:
        log.removeHandler(handler)
        recorder.close()


def test_the_store_is_the_folder_named_when_the_recorder_was_made_whatever_the_cwd_later(
    react_graph, inventory, tmp_path, monkeypatch, no_child_left
):
    from ee_middleware.capture import recorder as recorder_module

    (tmp_path / "app").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "app")
    agent = record_experience(react_graph, app="shop", store="experience", offload="auto")
    recorder = agent.recorder
    monkeypatch.chdir(tmp_path / "elsewhere")  # the app changes directory before load comes
    recorder.finisher.forced = 1  # sustained load: the capture process starts now
    recorder._offload_for_run()
    try:
        deadline = time.monotonic() + 60
        while not recorder.offload.ready() and recorder.offload.alive and time.monotonic() < deadline:
            time.sleep(0.05)  # auto mode does not wait for the start; the test does
        assert recorder.offload.ready(), recorder.stats
        for _ in range(3):
            agent.invoke(USER_TASK)
        assert agent.flush()
        assert recorder.offload.stats.trajectories_written == 3
    finally:
        recorder.close()
    assert not (tmp_path / "elsewhere" / "experience").exists()
    store = LocalExperienceStore(tmp_path / "app" / "experience")
    assert store.trajectories().height == 3
    store.close()

    class AuditedStore(LocalExperienceStore):  # a subclass may write differently: only the base class is opened there
        pass

    with pytest.raises(ConfigError, match=r"AuditedStore"):
        record_experience(react_graph, app="shop", store=AuditedStore(tmp_path / "audited"), offload="process")
    sent = []
    monkeypatch.setattr(recorder_module, "ProcessOffload", lambda init, *a, **k: sent.append(init))
    record_experience(react_graph, app="shop", store=LocalExperienceStore(tmp_path / "nofsync", fsync=False), offload="process")
    assert sent[0]["store"] == {"root": str((tmp_path / "nofsync").resolve()), "fsync": False}


_RUNTIME_PATH = """
import sys
sys.path[:0] = [{repo!r}, {site!r}]  # ee_middleware and its dependencies, importable only through this runtime addition
from ee_middleware import record_experience
from tests.conftest import USER_TASK
from tests.capture.test_offload import _graph
agent = record_experience(_graph(), app="shop", store={store!r}, offload="process")
for _ in range(3):
    agent.invoke(USER_TASK)
agent.flush()
stats = agent.recorder.stats
print(agent.recorder.offload.stats.trajectories_written, stats.offload_start_failures, stats.runs_failed, flush=True)
agent.recorder.close()
"""


def test_the_child_imports_ee_middleware_from_where_the_agent_added_it_at_runtime(tmp_path):
    import sysconfig

    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not base.exists() or sys.base_prefix == sys.prefix:
        pytest.skip("needs a virtual environment over a base interpreter (the CI's and this machine's setup)")
    code = textwrap.dedent(_RUNTIME_PATH).format(repo=str(REPO), site=sysconfig.get_paths()["purelib"], store=str(tmp_path / "p"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(base), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["3", "0", "0"], result.stdout + result.stderr[-3000:]  # written by the child, which started


def test_a_frozen_application_never_starts_the_child(react_graph, tmp_path, monkeypatch, no_child_left):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(ConfigError, match=r"frozen application"):
        record_experience(react_graph, app="shop", store=tmp_path / "a", offload="process")
    agent = record_experience(react_graph, app="shop", store=tmp_path / "b", offload="auto")
    assert agent.recorder._offload_init is None and agent.recorder._offload_blocker
    agent.recorder.close()


SERVICE = '''
"""A web service module as the README has users write it: the recorded agent is built at import time, approve_if
is a module-level function. The capture process imports this module to read approve_if."""
import os

from langgraph.graph import START, MessagesState, StateGraph
from langchain_core.messages import AIMessage

from ee_middleware import record_experience
from ee_middleware.testing import ScriptedChatModel

depth = int(os.environ.get("SERVICE_DEPTH", "0"))
os.environ["SERVICE_DEPTH"] = str(depth + 1)  # bounds the chain of capture processes this test would otherwise start


def approve_completed(trajectory):
    return trajectory.status == "completed"


def build_graph():
    model = ScriptedChatModel(script=[AIMessage(content="ok")])
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_edge(START, "agent")
    return graph.compile()


if depth < 3:
    agent = record_experience(build_graph(), app="svc", store=os.environ["SERVICE_STORE"], approve_if=approve_completed, offload="process")
'''

COUNT_CAPTURE_PROCESSES = """
import json, sys, psutil
sys.path.insert(0, sys.argv[1])
import service
service.agent.invoke({"messages": [("user", "hi")]})
service.agent.flush()
procs = [p for p in psutil.Process().children(recursive=True) if "child_main" in " ".join(p.cmdline())]
print(json.dumps({"capture_processes": len(procs), "stored": service.agent.recorder.stats.trajectories_written}))
"""


def test_a_module_that_builds_its_recorder_at_import_starts_one_capture_process(tmp_path: Path) -> None:
    """The capture process imports the app's module to read approve_if; that module builds its recorder at import time
    (as a web service's does), with offload="process": the recorder built there started a capture process of its own,
    whose import did the same, without end (a service grew to about 50 capture processes in seconds). One is started."""
    (tmp_path / "service.py").write_text(SERVICE)
    env = {**os.environ, "SERVICE_STORE": str(tmp_path / "store")}
    env.pop("SERVICE_DEPTH", None)
    out = subprocess.run(
        [sys.executable, "-c", COUNT_CAPTURE_PROCESSES, str(tmp_path)], env=env, capture_output=True, text=True, timeout=240, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"capture_processes": 1, "stored": 1}, out.stderr[-2000:]


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_an_approve_if_that_raises_leaves_the_run_stored_pending_and_flush_true(react_graph, tmp_path, offload, monkeypatch):
    """A run whose approve_if raised is stored (pending) and logged: it is counted in approve_if_failed, not in
    runs_failed, so flush(), which says False only when a run could not be stored, stays True (it said False since
    38d7de7, an alarm with nothing lost)."""
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    agent = record_experience(react_graph, app="shop", store=tmp_path / "s", offload=offload, approve_if=approve_or_fail, strict=False)
    agent.invoke(USER_TASK)
    assert agent.flush() is True
    stats = agent.recorder.stats
    assert (stats.runs_failed, stats.approve_if_failed) == (0, 1), stats
    assert any("approve_if raised" in error for error in stats.errors)
    assert LocalExperienceStore(tmp_path / "s").trajectories()["approval"].to_list() == ["pending"]
    agent.recorder.close()
