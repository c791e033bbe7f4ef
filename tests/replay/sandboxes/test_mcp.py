"""McpSandbox: replay for agents whose tools come from MCP servers.

Real parts: a real MCP server (``mcp_notes_server.py``, the ``mcp`` package's FastMCP, over stdio and streamable HTTP)
started by the sandbox; a real ``create_agent`` graph whose tools come from that server through langchain-mcp-adapters,
recorded by ``record_experience`` into a real store and replayed by the real ``run_replay`` job with ``--sandbox
mcp:CONFIG.json``; processes checked with psutil.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("mcp")
psutil = pytest.importorskip("psutil")

from ee_middleware.errors import EnvironmentUnavailableError, SandboxError  # noqa: E402
from ee_middleware.records import ToolCall  # noqa: E402
from ee_middleware.replay.sandboxes.mcp import McpSandbox, McpServer, load_mcp_config, result_observation  # noqa: E402
from ee_middleware.replay.sandboxes.registry import build_sandbox  # noqa: E402
from ee_middleware.testing import check_sandbox  # noqa: E402
from tests.replay.policies_for_tests import FixedCallsPolicy  # noqa: E402

pytestmark = pytest.mark.timeout(180)

SERVER = str(Path(__file__).with_name("mcp_notes_server.py"))
ENVIRONMENT = {"notes": {"1": {"title": "Groceries", "body": "milk, eggs"}, "2": {"title": "Ideas", "body": "a notes app"}}}


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=f"call-{name}", name=name, arguments=arguments)


def notes_server(**env: str) -> McpServer:
    return McpServer(sys.executable, (SERVER,), env=env)


def http_server(**env: str) -> McpServer:
    return McpServer(sys.executable, (SERVER, "--http", "{port}"), env=env, transport="streamable_http")


def _another_sessions(proc: Any) -> bool:
    """Whether ``proc`` descends from a pytest process other than this one (another test session, or another xdist
    worker of this one, whose servers are its own business). A server this process started descends from it; one it
    leaked has been handed to init (or a subreaper) and descends from no pytest: both count."""
    try:
        for parent in proc.parents():
            if parent.pid == os.getpid():
                return False
            if any(Path(arg).name in {"pytest", "py.test"} for arg in parent.cmdline()[:4]):  # `pytest`, `-m pytest`
                return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return False


def server_processes() -> list[Any]:
    """Every process running the notes server (or a helper it started) that this test session started or leaked."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        matches = SERVER in cmdline or "time.sleep(300)" in cmdline
        if matches and proc.info["status"] != psutil.STATUS_ZOMBIE and not _another_sessions(proc):
            found.append(proc)
    return found


def assert_no_server_left(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while server_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(p.pid, " ".join(p.info["cmdline"] or [])) for p in server_processes()]
    assert not left, f"processes left running: {left}"


@pytest.fixture(autouse=True)
def no_server_before_or_after() -> Any:
    assert_no_server_left()
    yield
    assert_no_server_left()


# -- the sandbox protocol ------------------------------------------------------------------------------------------------

READS = [call("list_notes"), call("read_note", note_id="1")]
BAD = [ToolCall(id="bad", name="create_note", arguments={})]  # no title: FastMCP's validation error, as in production


def test_the_conformance_kit_passes_on_a_real_stdio_server() -> None:
    made: list[McpSandbox] = []

    def make() -> McpSandbox:
        made.append(McpSandbox({"notes": notes_server()}))
        return made[-1]

    reads = [call("list_notes"), call("read_note", note_id="2")]
    check_sandbox(make, environment=ENVIRONMENT, mutate=call("delete_note", note_id="1"), read=reads, bad_calls=BAD)
    assert made[0].restarts > 0, "the naive strategy restores by starting the server again"


def test_the_fast_path_restores_with_the_servers_own_snapshot_tools() -> None:
    made: list[McpSandbox] = []

    def make() -> McpSandbox:
        made.append(McpSandbox({"notes": notes_server(NOTES_FAST="1")}))
        return made[-1]

    check_sandbox(make, environment=ENVIRONMENT, mutate=call("create_note", title="Call mom"), read=READS, bad_calls=BAD)
    # (its one restart: restoring a snapshot of the server a reset replaced, whose token means nothing to the new one)
    sandbox = McpSandbox({"notes": notes_server(NOTES_FAST="1")})
    try:
        sandbox.reset(ENVIRONMENT)
        assert not sandbox.covers("ee_snapshot") and not sandbox.covers("ee_restore"), "the fast path's tools are no actions"
        start = sandbox.snapshot()
        for title in ("a", "b", "c"):
            sandbox.restore(start)
            assert sandbox.execute(call("create_note", title=title)).content == f"created note 3: {title}"
        sandbox.restore(start)
        assert sandbox.execute(call("list_notes")).content == "1: Groceries\n2: Ideas"
        assert sandbox.restarts == 0, "a server with ee_snapshot/ee_restore is never started again to restore"
    finally:
        sandbox.close()


def test_the_conformance_kit_passes_on_a_streamable_http_server_it_starts() -> None:
    check_sandbox(
        lambda: McpSandbox({"notes": http_server()}),
        environment=ENVIRONMENT,
        mutate=call("create_note", title="Call mom"),
        read=READS,
        bad_calls=BAD,
    )


def test_read_only_calls_need_no_restore() -> None:
    with McpSandbox({"notes": notes_server()}) as sandbox:
        sandbox.reset(ENVIRONMENT)
        start = sandbox.snapshot()
        for _ in range(3):
            sandbox.restore(start)
            assert not sandbox.execute(call("list_notes")).is_error
            assert not sandbox.execute(call("note_image", note_id="1")).is_error
        sandbox.restore(start)
        assert sandbox.restarts == 0
        sandbox.execute(call("create_note", title="x"))
        sandbox.restore(start)
        assert sandbox.restarts == 1
        assert sandbox.execute(call("list_notes")).content == "1: Groceries\n2: Ideas"


# -- observations as the model saw them through langchain-mcp-adapters ---------------------------------------------------


async def test_observations_are_what_langchain_mcp_adapters_gave_the_model() -> None:
    """Each call through the adapters' real tools (a real session with the same server and world) against the sandbox:
    same text (content blocks joined, the image as its placeholder, FastMCP's errors) and the same error flag."""
    lma = pytest.importorskip("langchain_mcp_adapters.client")
    from langchain_mcp_adapters.tools import load_mcp_tools

    from ee_middleware.messages import content_to_text

    calls = [
        call("list_notes"),
        call("read_note", note_id="2"),
        call("note_image", note_id="1"),
        call("read_note", note_id="9"),
        call("create_note", title="Call mom", body="Sunday"),
        call("delete_note", note_id="7"),
        call("create_note"),
    ]
    client = lma.MultiServerMCPClient(
        {"notes": {"command": sys.executable, "args": [SERVER], "transport": "stdio", "env": {"EE_ENVIRONMENT": json.dumps(ENVIRONMENT)}}}
    )
    production = []
    async with client.session("notes") as session:
        tools = {t.name: t for t in await load_mcp_tools(session)}
        for c in calls:
            message = await tools[c.name].ainvoke({"type": "tool_call", "name": c.name, "args": c.arguments, "id": c.id})
            production.append((content_to_text(message.content), message.status == "error"))
    sandbox = McpSandbox({"notes": notes_server()})
    try:
        sandbox.reset(ENVIRONMENT)
        replayed = [(o.content, o.is_error) for o in map(sandbox.execute, calls)]
    finally:
        sandbox.close()
    assert replayed == production
    assert replayed[2] == ("[image: image/png, 70 bytes]", False)
    assert replayed[3][1] and "no note 9" in replayed[3][0]


def test_result_observation_reads_every_content_kind() -> None:
    """The MCP content kinds the adapters convert (with what they make of them), structuredContent and isError."""
    blob = "aGVsbG8="
    result = {
        "content": [
            {"type": "text", "text": "two"},
            {"type": "text", "text": "blocks"},
            {"type": "resource_link", "uri": "https://x.example/a.pdf", "name": "a", "mimeType": "application/pdf"},
            {"type": "resource", "resource": {"uri": "file:///n.txt", "text": "embedded text"}},
            {"type": "resource", "resource": {"uri": "file:///p.png", "blob": blob, "mimeType": "image/png"}},
        ],
        "structuredContent": {"never": "shown to the model"},
    }
    observation = result_observation(result)
    assert observation.content == (
        "two\nblocks\n[file: application/pdf, https://x.example/a.pdf]\nembedded text\n[image: image/png, 5 bytes]"
    )
    assert not observation.is_error and "never" not in observation.content
    assert (
        result_observation({"content": [], "isError": True}).model_dump()
        == result_observation(
            {"content": [{"type": "text", "text": "MCP tool returned an error with empty content."}], "isError": True}
        ).model_dump()
    )


# -- safety: openWorldHint ----------------------------------------------------------------------------------------------


def test_an_open_world_tool_is_refused_unless_allowed_by_name() -> None:
    with McpSandbox({"notes": notes_server()}) as sandbox:
        sandbox.reset(ENVIRONMENT)
        assert sandbox.covers("create_note") and not sandbox.covers("publish_note")
        hint = sandbox.refusal_hint("publish_note")
        assert hint is not None and "openWorldHint" in hint and "allow_open_world=['publish_note']" in hint
        refused = sandbox.execute(call("publish_note", note_id="1"))
        assert refused.is_error and "replay does not call tool 'publish_note'" in refused.content
    with McpSandbox({"notes": notes_server()}, allow_open_world=["publish_note"]) as allowed:
        allowed.reset(ENVIRONMENT)
        assert allowed.covers("publish_note")
        assert allowed.execute(call("publish_note", note_id="1")).content == "published note 1 at https://notes.example/1"
    with McpSandbox({"notes": notes_server()}) as default:
        default.reset(ENVIRONMENT)
        assert default.covers("create_note") and default.covers("list_notes"), "annotated as acting on the server's own world"


# -- processes: none is left --------------------------------------------------------------------------------------------


def test_close_stops_every_process_the_server_started() -> None:
    sandbox = McpSandbox({"notes": notes_server()})
    sandbox.reset(ENVIRONMENT)
    helper = int(sandbox.execute(call("spawn_helper")).content)
    assert psutil.pid_exists(helper) and len(sandbox.server_pids) == 2, "the server and its warm spare run"
    sandbox.close()
    sandbox.close()
    assert_no_server_left()
    with pytest.raises(SandboxError):
        sandbox.execute(call("list_notes"))


@pytest.mark.parametrize("transport", ["stdio", "streamable_http", "stdio, running on after its input closed"])
def test_every_server_is_let_end_cleanly_on_restores_and_close(tmp_path: Path, transport: str) -> None:
    """A server's own clean-up on its way out (a temporary database, a connection) runs for every server a replay
    starts: stdio servers get their standard input closed, HTTP servers SIGTERM, before any SIGKILL (they were all
    SIGKILLed at once, their clean-up never run: an MCP sweep)."""
    said = tmp_path / "said"
    said.mkdir()
    outlives = {"NOTES_OUTLIVE_INPUT": "1"} if "running on" in transport else {}
    server = (http_server if transport == "streamable_http" else notes_server)(NOTES_GOODBYE=str(said), **outlives)
    with McpSandbox({"notes": server}) as sandbox:
        sandbox.reset(ENVIRONMENT)
        start = sandbox.snapshot()
        for title in ("Call mom", "Buy milk"):
            sandbox.execute(call("create_note", title=title))
            sandbox.restore(start)  # a fresh server; the one that made the note is let go
            assert sandbox.execute(call("list_notes")).content == "1: Groceries\n2: Ideas"
        sandbox.reset({"notes": {}})  # the next trajectory's world: every server of the last one is let go
        assert sandbox.execute(call("list_notes")).content == "no notes"
    assert_no_server_left()
    started = {p.name.partition("-")[2] for p in said.glob("hello-*")}
    ended = {p.name.partition("-")[2] for p in said.glob("goodbye-*")}
    assert len(started) >= 4 and ended == started, f"{len(started - ended)} of {len(started)} servers were killed"


def test_a_server_printing_other_lines_than_mcp_on_its_output_is_warned_of_once(caplog: pytest.LogCaptureFixture) -> None:
    """MCP's stdio client logged a traceback for every non-MCP line of every server start (two per restore here: a
    banner), flooding a nightly job's log; the sandbox says it once, with what to do."""
    with McpSandbox({"notes": notes_server(NOTES_BANNER="1")}) as sandbox, pytest.warns(UserWarning) as warned:
        sandbox.reset(ENVIRONMENT)
        start = sandbox.snapshot()
        for title in ("Call mom", "Buy milk", "Walk the dog"):
            sandbox.execute(call("create_note", title=title))
            sandbox.restore(start)
        assert sandbox.execute(call("list_notes")).content == "1: Groceries\n2: Ideas"
        assert sandbox.restarts == 3
    said = [str(w.message) for w in warned if "standard output" in str(w.message)]
    assert len(said) == 1 and "'notes server 1.0 starting'" in said[0] and "standard error" in said[0], said
    assert not [r for r in caplog.records if "JSONRPC" in r.getMessage()], "MCP's tracebacks for the banner are not logged"


def test_a_server_printing_inside_a_tool_is_warned_of_too() -> None:
    """A print left in a tool: its line was dropped from MCP's log and never warned of, the warning given only at a
    server's start (a review)."""
    with McpSandbox({"notes": notes_server()}) as sandbox, pytest.warns(UserWarning) as warned:
        sandbox.reset(ENVIRONMENT)
        assert sandbox.execute(call("chatty_note", note_id="1")).content == "Groceries"
        assert sandbox.execute(call("chatty_note", note_id="2")).content == "Ideas"
    said = [str(w.message) for w in warned if "standard output" in str(w.message)]
    assert len(said) == 1 and "'DEBUG looking up note 1'" in said[0], said


def test_a_server_that_cannot_build_the_world_skips_the_trajectory_and_leaves_nothing() -> None:
    sandbox = McpSandbox({"notes": notes_server()})
    try:
        with pytest.raises(EnvironmentUnavailableError, match="notes server: no such customer") as raised:
            sandbox.reset({"refuse": "no such customer"})
        assert "did not start" in str(raised.value)
        assert_no_server_left()
        sandbox.reset(ENVIRONMENT)  # the same sandbox goes on with the next trajectory
        assert sandbox.execute(call("list_notes")).content == "1: Groceries\n2: Ideas"
    finally:
        sandbox.close()


def test_a_crash_or_a_time_out_is_a_sandbox_failure_and_the_world_is_rebuilt() -> None:
    with McpSandbox({"notes": notes_server()}, timeout_s=2) as sandbox:
        sandbox.reset(ENVIRONMENT)
        sandbox.execute(call("create_note", title="Call mom"))
        crashed = sandbox.execute(call("crash"))
        assert crashed.is_error and crashed.sandbox_failure == "crash", crashed
        # what the server said on its way out (the crash said only "Connection closed": an MCP sweep)
        said = crashed.content.partition("The server's standard error ends with:\n")[2]
        assert said.endswith("notes server: the crash tool ends this server (exit code 7)"), crashed
        assert sandbox.execute(call("list_notes")).content == "1: Groceries\n2: Ideas\n3: Call mom", "rebuilt to before the call"
        slow = sandbox.execute(call("slow_note", seconds=30))
        assert slow.is_error and slow.sandbox_failure == "timeout", slow
        assert sandbox.execute(call("list_notes")).content == "1: Groceries\n2: Ideas\n3: Call mom"
    assert_no_server_left()


def test_a_killed_job_leaves_no_server(tmp_path: Path) -> None:
    """The replay's process killed with SIGKILL (no clean-up runs): the guard kills the server's group within a second,
    and the guards remove the sandbox's working folder (their pid files, the servers' stderr)."""
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from ee_middleware.records import ToolCall
            from ee_middleware.replay.sandboxes.mcp import McpSandbox, McpServer
            sandbox = McpSandbox({{"notes": McpServer(sys.executable, ({SERVER!r},))}})
            sandbox.reset({ENVIRONMENT!r})
            print(sandbox.execute(ToolCall(id="h", name="spawn_helper", arguments={{}})).content, flush=True)
            print(sandbox._workdir, flush=True)
            time.sleep(300)
            """
        )
    )
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[3])
    try:
        helper = int(job.stdout.readline())  # type: ignore[union-attr]
        workdir = Path(job.stdout.readline().strip())  # type: ignore[union-attr]
        assert (
            psutil.pid_exists(helper)
            and server_processes()
            and sorted(p.suffix for p in workdir.iterdir()) == [".pid", ".pid", ".stderr", ".stderr"]
        )
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert_no_server_left(timeout=10)
    deadline = time.monotonic() + 10
    while workdir.exists() and time.monotonic() < deadline:  # the guards remove their files, the last one the folder
        time.sleep(0.1)
    assert not workdir.exists(), f"the sandbox's working folder was left: {sorted(p.name for p in workdir.iterdir())}"


# -- configuration and the registry -------------------------------------------------------------------------------------


def write_config(tmp_path: Path, **options: Any) -> Path:
    config = tmp_path / "notes-mcp.json"
    config.write_text(json.dumps({"mcpServers": {"notes": {"command": sys.executable, "args": [SERVER]}}, **options}))
    return config


def test_mcp_config_spec_builds_the_sandbox(tmp_path: Path) -> None:
    config = write_config(tmp_path, allow_open_world=["publish_note"], timeout_s=10)
    sandbox = build_sandbox(f"mcp:{config}")
    try:
        assert isinstance(sandbox, McpSandbox) and sandbox.timeout_s == 10 and sandbox.allow_open_world == {"publish_note"}
        assert sandbox.servers["notes"].cwd == str(tmp_path.resolve())
        sandbox.reset(ENVIRONMENT)
        assert sandbox.covers("publish_note")
    finally:
        sandbox.close()


def test_it_runs_under_subprocess_isolation(tmp_path: Path) -> None:
    """--isolation subprocess: the sandbox lives in a child process, its snapshots pickled out of it."""
    from ee_middleware.replay.sandboxes.registry import sandbox_factory

    factory = sandbox_factory(f"mcp:{write_config(tmp_path)}", isolation="subprocess", timeout_s=30)
    check_sandbox(factory, environment=ENVIRONMENT, mutate=call("create_note", title="Call mom"), read=READS, bad_calls=BAD)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"mcpServers": {"notes": {"url": "http://localhost:8000/mcp"}}}, "starts each server itself"),
        ({"mcpServers": {"notes": {"command": "python", "argz": []}}}, "unknown key(s) ['argz']"),
        ({"mcpServers": {"notes": {"command": "python"}}, "allow_openworld": []}, "unknown key(s) ['allow_openworld']"),
        ({"tools": []}, "names no server"),
        ({"mcpServers": {"notes": {"command": "python", "transport": "sse"}}}, "transport 'sse' is not known"),
    ],
)
def test_a_bad_config_says_what_is_wrong(tmp_path: Path, content: dict[str, Any], message: str) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(content))
    with pytest.raises(SandboxError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        load_mcp_config(config)


@pytest.mark.parametrize("spec", ["mcp:", "mcp: "])
def test_a_spec_without_a_config_file_asks_for_one(spec: str) -> None:
    """``--sandbox mcp:`` said "config '.' is not readable JSON: Is a directory": the registry checked the spec before the
    builder's own message could say what is missing (an MCP sweep)."""
    from ee_middleware.replay.sandboxes.registry import check_sandbox_spec

    with pytest.raises(SandboxError, match=r"Give the MCP sandbox's config file: --sandbox mcp:CONFIG.json"):
        check_sandbox_spec(spec)


def test_importing_the_package_and_the_sandbox_module_imports_no_mcp() -> None:
    code = (
        "import sys, ee_middleware, ee_middleware.replay.sandboxes.registry, ee_middleware.replay.sandboxes.mcp; "
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.strip() == "[]"


# -- a recorded agent, replayed ------------------------------------------------------------------------------------------


AGENT_TOOLS = {"list_notes", "read_note", "note_image", "create_note", "delete_note", "publish_note"}


class NotesPolicy(FixedCallsPolicy):
    """A replay policy (``tests.replay.sandboxes.test_mcp:NotesPolicy``) proposing at every state, in order: publishing
    note 1 (open-world: refused), creating a note, deleting note 2, listing the notes, reading note 1."""

    name = "notes-alternatives"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [
        ("publish_note", {"note_id": "1"}),
        ("create_note", {"title": "Dentist"}),
        ("delete_note", {"note_id": "2"}),
        ("list_notes", {}),
        ("read_note", {"note_id": "1"}),
    ]


async def test_a_recorded_agent_with_mcp_tools_replays_with_no_fidelity_mismatch(tmp_path: Path) -> None:
    """A real create_agent graph whose tools come from the notes server through langchain-mcp-adapters (one session, as
    an app keeps it), recorded; then ``run_replay`` with ``mcp:CONFIG.json`` and K=5: every expert call re-executed
    gives what the model saw (text, an image, an error), the open-world tool is refused and counted, and the
    alternatives' observations come from the world of their own state."""
    lma = pytest.importorskip("langchain_mcp_adapters.client")
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_mcp_adapters.tools import load_mcp_tools

    from ee_middleware import record_experience
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel, tool_call

    root = tmp_path / "experience"
    script = [
        AIMessage(content="", tool_calls=[tool_call("create_note", title="Call mom", body="Sunday")]),
        AIMessage(content="", tool_calls=[tool_call("list_notes")]),
        AIMessage(content="", tool_calls=[tool_call("note_image", note_id="1")]),
        AIMessage(content="", tool_calls=[tool_call("delete_note", note_id="1")]),
        AIMessage(content="", tool_calls=[tool_call("read_note", note_id="1")]),
        AIMessage(content="", tool_calls=[tool_call("list_notes")]),
        AIMessage(content="Added 'Call mom' and deleted Groceries."),
    ]
    client = lma.MultiServerMCPClient(
        {"notes": {"command": sys.executable, "args": [SERVER], "transport": "stdio", "env": {"EE_ENVIRONMENT": json.dumps(ENVIRONMENT)}}}
    )
    async with client.session("notes") as session:
        tools = [t for t in await load_mcp_tools(session) if t.name in AGENT_TOOLS]  # not the failure tests' tools
        agent = record_experience(create_agent(ScriptedChatModel(script=script), tools), app="notes", store=root, environment=ENVIRONMENT)
        await agent.ainvoke({"messages": [("user", "Add a note to call mom, then delete my groceries note.")]})
        agent.flush()
    store = LocalExperienceStore(root)
    (trajectory,) = list(store.iter_trajectories())
    store.approve([trajectory.id], by="test")
    recorded = [(s.action.tool_call.name, s.observation.content, s.observation.is_error) for s in trajectory.steps if s.action.tool_call]
    store.close()
    assert [r[0] for r in recorded] == ["create_note", "list_notes", "note_image", "delete_note", "read_note", "list_notes"]
    assert recorded[2][1] == "[image: image/png, 70 bytes]" and recorded[4][2], recorded

    config = write_config(tmp_path)
    summary = run_replay(ReplayConfig.load(store=root, sandbox=f"mcp:{config}", policy="tests.replay.sandboxes.test_mcp:NotesPolicy", k=5))
    assert summary.done == 1 and not summary.failed, summary.to_dict()
    assert summary.fidelity_mismatches == 0, summary.fidelity_examples
    assert summary.refused_tools == {"publish_note": 6}, "proposed at each of the 6 states, never executed"
    assert "allow_open_world" in summary.refused_hints["publish_note"]

    store = LocalExperienceStore(root)
    rollouts = store.rollouts().sort(["step_index", "branch_index"])
    store.close()
    assert set(rollouts["sandbox"]) == {"mcp"}
    by_step: dict[tuple[int, str], list[str]] = {}
    for row in rollouts.iter_rows(named=True):
        by_step.setdefault((row["step_index"], row["tool_name"]), []).append(row["observation"])
    assert "1: Groceries\n2: Ideas" in by_step[(0, "list_notes")], "state 0: before the expert's create_note"
    assert "created note 4: Dentist" in by_step[(1, "create_note")], "state 1: after the expert's create_note"
    assert "1: Groceries\n2: Ideas\n3: Call mom" in by_step[(2, "list_notes")]
    assert "2: Ideas\n3: Call mom" in by_step[(4, "list_notes")], "state 4: after the expert deleted note 1"
    assert "Error executing tool read_note: no note 1" in by_step[(5, "read_note")]
    assert not any(kind in {"crash", "slow_note", "spawn_helper"} for _, kind in by_step), "only the tools the agent had"
    assert_no_server_left()


def test_a_tool_that_says_nothing_of_the_outside_world_is_refused_as_the_mcp_spec_reads_it(tmp_path: Path) -> None:
    """FastMCP's plain @server.tool() writes no annotations, and the MCP spec reads a missing openWorldHint as true:
    such a tool may send e-mail or drop a table in a real system. The sandbox called every tool that did not say
    openWorldHint: true, so replay sent the e-mail on every alternative proposed (found by review). Now only a
    tool that says openWorldHint: false, or readOnlyHint: true, or that the user allows, is called."""
    outside = tmp_path / "outside.log"
    server = tmp_path / "mail_server.py"
    server.write_text(
        textwrap.dedent(
            f"""
            try:
                from mcp.server.fastmcp import FastMCP as Server
            except ModuleNotFoundError:
                from mcp.server.mcpserver import MCPServer as Server
            from mcp.types import ToolAnnotations

            server = Server("mail")

            @server.tool()
            def send_email(to: str, body: str) -> str:
                with open({str(outside)!r}, "a") as fh:
                    fh.write(f"EMAIL to={{to}}\\n")
                return "sent"

            @server.tool(annotations=ToolAnnotations(readOnlyHint=True))
            def search_inbox(query: str) -> str:
                return "no mail"

            @server.tool(annotations=ToolAnnotations(readOnlyHint=True, destructiveHint=True))
            def wipe_remote(target: str) -> str:
                with open({str(outside)!r}, "a") as fh:
                    fh.write(f"WIPED {{target}}\\n")
                return "wiped"

            server.run()
            """
        )
    )
    mail = McpServer(sys.executable, (str(server),))
    with McpSandbox({"mail": mail}) as sandbox:
        sandbox.reset(None)
        assert not sandbox.covers("send_email") and sandbox.covers("search_inbox")
        hint = sandbox.refusal_hint("send_email")
        assert hint is not None and "say nothing of openWorldHint" in hint and "allow_open_world=['send_email']" in hint
        assert sandbox.execute(call("send_email", to="ceo@example.com", body="x")).is_error
        assert sandbox.execute(call("search_inbox", query="x")).content == "no mail"
        # sweep S5: read-only and destructive at once (the spec reads destructiveHint only where a tool is not read-only):
        # it was taken as read-only, so its missing openWorldHint as a lookup's, and replay called it
        assert not sandbox.covers("wipe_remote") and sandbox.execute(call("wipe_remote", target="a")).is_error
    assert not outside.exists(), "replay reached the outside world"
    with McpSandbox({"mail": mail}, allow_open_world=["send_email"]) as allowed:
        allowed.reset(None)
        assert allowed.execute(call("send_email", to="me@example.com", body="x")).content == "sent"
    assert outside.read_text() == "EMAIL to=me@example.com\n"
    assert_no_server_left()


def test_without_the_mcp_extra_the_sandbox_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the mcp package, every server failed to start inside the sandbox, each trajectory was skipped as 'cannot
    be rebuilt' and `ee replay run` exited 0 with no branch (found by review). Now building the sandbox names the extra,
    before any worker starts (run_replay builds one first)."""
    from ee_middleware.errors import MissingExtraError

    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"mcpServers": {"notes": {"command": sys.executable, "args": [str(SERVER)]}}}))
    monkeypatch.setitem(sys.modules, "mcp", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"ee-middleware\[mcp\]"):
        build_sandbox(f"mcp:{config}")


def _notes_sandbox() -> McpSandbox:
    """An McpSandbox of the notes server (module level: a subprocess sandbox's factory)."""
    return McpSandbox({"notes": notes_server()})


def test_closing_one_forked_sandbox_leaves_the_others_servers_running() -> None:
    """Two subprocess sandboxes (forked children) each holding an McpSandbox: the second one's child inherited the
    parent's registry of open sandboxes, holding the first, and closed it at its exit, killing the first's servers
    (found by review: the first answered with a crash). A forked process closes at exit only the sandboxes it opened."""
    from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox

    # no memory limit: a forked child starts with the test process's address space, which other tests grew
    first = SubprocessSandbox(_notes_sandbox, start_method="fork", timeout_s=60, memory_mb=None)
    second = SubprocessSandbox(_notes_sandbox, start_method="fork", timeout_s=60, memory_mb=None)
    try:
        first.reset(ENVIRONMENT)
        second.reset(ENVIRONMENT)
        assert second.execute(call("list_notes")).content.startswith("1: Groceries")
        second.close()
        observation = first.execute(call("list_notes"))
        assert observation.sandbox_failure is None and not observation.is_error, observation
        assert observation.content.startswith("1: Groceries")
    finally:
        first.close()
        second.close()


# -- restores send the calls as they were sent; failures and missing tools say what to do in the MCP sandbox's terms -----


async def record_notes_agent(
    root: Path, script: list[Any], tool_names: set[str], extra_tools: list[Any] | None = None, environment: dict[str, Any] = ENVIRONMENT
) -> str:
    """A real create_agent graph whose tools ``tool_names`` come from the notes server through langchain-mcp-adapters (with
    ``extra_tools``: tools of the app's own), run on ``script`` in the world of ``environment``, recorded into ``root``
    and approved; its id."""
    lma = pytest.importorskip("langchain_mcp_adapters.client")
    from langchain.agents import create_agent
    from langchain_mcp_adapters.tools import load_mcp_tools

    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel

    client = lma.MultiServerMCPClient(
        {"notes": {"command": sys.executable, "args": [SERVER], "transport": "stdio", "env": {"EE_ENVIRONMENT": json.dumps(environment)}}}
    )
    async with client.session("notes") as session:
        tools = [t for t in await load_mcp_tools(session) if t.name in tool_names] + list(extra_tools or [])
        agent = record_experience(create_agent(ScriptedChatModel(script=script), tools), app="notes", store=root, environment=environment)
        await agent.ainvoke({"messages": [("user", "Tidy up my notes.")]})
        agent.flush()
    store = LocalExperienceStore(root)
    (trajectory,) = list(store.iter_trajectories())
    store.approve([trajectory.id], by="test")
    store.close()
    return trajectory.id


class CreateNote(FixedCallsPolicy):
    """``tests.replay.sandboxes.test_mcp:CreateNote``: creating a note at every state (so every state is restored)."""

    name = "create-note"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [("create_note", {"title": "Dentist"})]


def test_a_restore_sends_each_call_again_with_its_arguments_in_the_order_given() -> None:
    """tag_note merges tags into the world in the order given. A restore re-ran the logged calls with their arguments'
    keys sorted (found by a sweep), so the fresh server got {"alpha", "zeta"} where the model sent {"zeta", "alpha"}: the
    restore raised a SandboxError blaming the tool (its answer showed the order), and a tool answering only "ok" would
    have left every later branch a world the recording never had. Each call is now sent again exactly as it was."""
    with McpSandbox({"notes": notes_server()}) as sandbox:
        sandbox.reset(ENVIRONMENT)
        tagged = sandbox.execute(call("tag_note", note_id="1", new_tags={"zeta": "1", "alpha": "2"}))
        assert tagged.content == '{"zeta": "1", "alpha": "2"}', tagged
        start = sandbox.snapshot()
        sandbox.execute(call("create_note", title="Dentist"))
        sandbox.restore(start)  # a fresh server, tag_note sent to it again
        assert sandbox.restarts == 1
        assert sandbox.execute(call("note_tags", note_id="1")).content == '{"zeta": "1", "alpha": "2"}'
        assert sandbox.execute(call("list_notes")).content == "1: Groceries\n2: Ideas"


async def test_a_recorded_agent_whose_tool_acts_on_the_order_of_a_dict_replays_with_no_fidelity_mismatch(tmp_path: Path) -> None:
    """The end-to-end form of the above: a recorded agent tags a note ({"zeta", "alpha"}, in that order) and reads the tags
    back; `run_replay` with an alternative at every state restores each state on a fresh server. Before, the restore
    raised on tag_note's answer; its quiet form gave one fidelity mismatch per trajectory on note_tags. The world at
    step 0 holds tags in an order too (note 2's "zeta" before "alpha"), which the server got from EE_ENVIRONMENT with
    its keys sorted: the first note_tags was a fidelity mismatch."""
    from langchain_core.messages import AIMessage

    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.testing import tool_call

    root = tmp_path / "experience"
    script = [
        AIMessage(content="", tool_calls=[tool_call("note_tags", note_id="2")]),
        AIMessage(content="", tool_calls=[tool_call("tag_note", note_id="1", new_tags={"zeta": "1", "alpha": "0"})]),
        AIMessage(content="", tool_calls=[tool_call("note_tags", note_id="1")]),
        AIMessage(content="", tool_calls=[tool_call("tag_note", note_id="1", new_tags={"beta": "2"})]),
        AIMessage(content="", tool_calls=[tool_call("note_tags", note_id="1")]),
        AIMessage(content="Tagged."),
    ]
    environment = {**ENVIRONMENT, "tags": {"2": {"zeta": "z", "alpha": "a"}}}
    trajectory_id = await record_notes_agent(root, script, {"tag_note", "note_tags", "create_note"}, environment=environment)
    policy = "tests.replay.sandboxes.test_mcp:CreateNote"
    summary = run_replay(ReplayConfig.load(store=root, sandbox=f"mcp:{write_config(tmp_path)}", policy=policy, k=1))
    assert (summary.done, summary.failed, summary.skipped) == (1, {}, {}), summary.to_dict()
    assert summary.fidelity_mismatches == 0, summary.fidelity_examples
    assert summary.branches == 5, f"an alternative from each of {trajectory_id}'s 5 states"
    assert_no_server_left()


async def test_a_time_out_on_the_experts_path_names_the_mcp_sandboxs_own_limit(tmp_path: Path) -> None:
    """The expert's slow_note takes 2 s; the MCP sandbox's timeout_s is 1. The trajectory's failed reason ended "raise
    the time limit, --tool-timeout": alone that flag is a config error, and with --isolation subprocess the MCP config's
    timeout_s still applied (found by a sweep). The reason now names "timeout_s" in the MCP sandbox's config file, with
    or without isolation, and raising it there is what lets the trajectory replay."""
    from langchain_core.messages import AIMessage

    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.testing import tool_call

    root = tmp_path / "experience"
    script = [
        AIMessage(content="", tool_calls=[tool_call("slow_note", seconds=2)]),
        AIMessage(content="", tool_calls=[tool_call("list_notes")]),
        AIMessage(content="Done."),
    ]
    trajectory_id = await record_notes_agent(root, script, {"slow_note", "list_notes", "create_note"})
    policy = "tests.replay.sandboxes.test_mcp:CreateNote"
    config = write_config(tmp_path, timeout_s=1)
    for isolation in ({}, {"isolation": "subprocess", "tool_timeout_s": 60}):
        summary = run_replay(ReplayConfig.load(store=root, sandbox=f"mcp:{config}", policy=policy, k=1, **isolation))
        reason = summary.failed[trajectory_id]
        assert "(slow_note): timeout: Error: tool 'slow_note' timed out after 1 s in the MCP sandbox" in reason, reason
        assert '"timeout_s" in its config file' in reason and "--tool-timeout" not in reason, reason
    write_config(tmp_path, timeout_s=10)  # what the reason says to do
    summary = run_replay(ReplayConfig.load(store=root, sandbox=f"mcp:{config}", policy=policy, k=1))
    assert (summary.done, summary.failed, summary.fidelity_mismatches) == (1, {}, 0), summary.to_dict()
    assert_no_server_left()


async def test_a_tool_no_mcp_server_lists_is_reported_in_the_mcp_sandboxs_terms(tmp_path: Path) -> None:
    """The app's expert calls archive_note, a tool of the app's own that no MCP server serves (or one renamed since). The
    trajectory was skipped advising "list read-only ones in read_only_tools", a PythonSandbox option the MCP sandbox does
    not have (found by a sweep). Now the MCP sandbox says which servers it asked, what they list, and what to do; a tool
    named after its server (MultiServerMCPClient(..., tool_name_prefix=True)) points to tool_name_prefix."""
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.replay.sandboxes.registry import refusal_hints
    from ee_middleware.testing import tool_call

    @tool
    def archive_note(note_id: str) -> str:
        """Archive a note."""
        return f"archived note {note_id}"

    root = tmp_path / "experience"
    script = [
        AIMessage(content="", tool_calls=[tool_call("archive_note", note_id="2")]),
        AIMessage(content="", tool_calls=[tool_call("list_notes")]),
        AIMessage(content="Archived."),
    ]
    trajectory_id = await record_notes_agent(root, script, {"list_notes", "create_note"}, extra_tools=[archive_note])
    config = write_config(tmp_path)
    summary = run_replay(ReplayConfig.load(store=root, sandbox=f"mcp:{config}", policy="tests.replay.sandboxes.test_mcp:CreateNote", k=1))
    reason = summary.skipped[trajectory_id]
    assert "the expert calls archive_note, which sandbox 'mcp' does not provide" in reason, reason
    assert (
        "tool 'archive_note': MCP server 'notes' lists no such tool (it lists chatty_note, crash, create_note, delete_note, list_notes, "
        in reason
    )
    assert "Renamed or removed since the recording?" in reason and "read_only_tools" not in reason, reason
    # asked on a sandbox never reset, as the job asks for the alternatives it refused
    assert "MCP server 'notes' lists no such tool" in refusal_hints(f"mcp:{config}", ["archive_note"])["archive_note"]

    with McpSandbox({"notes": notes_server()}) as sandbox:
        sandbox.reset(ENVIRONMENT)
        assert not sandbox.covers("notes_create_note")
        assert '"tool_name_prefix": true' in (sandbox.refusal_hint("notes_create_note") or "")
        assert sandbox.refusal_hint("create_note") is None, "a tool it calls needs no hint"
    with McpSandbox({"notes": notes_server()}, tool_name_prefix=True) as prefixed:
        prefixed.reset(ENVIRONMENT)
        assert prefixed.covers("notes_create_note")
        assert 'leave out "tool_name_prefix"' in (prefixed.refusal_hint("create_note") or "")
    # servers that do not start without an environment cannot be asked: no hint is made up
    assert McpSandbox({"notes": notes_server()}).refusal_hint("archive_note") is not None
    refusing = McpSandbox({"broken": McpServer(sys.executable, ("-c", "import sys; sys.exit(3)"))})
    try:
        assert refusing.refusal_hint("archive_note") is None
    finally:
        refusing.close()
    assert_no_server_left()
