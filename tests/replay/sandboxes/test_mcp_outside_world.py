"""McpSandbox's ``outside_world_tools``: tools that act only outside the world the servers rebuild (they page on-call,
send an e-mail), served by an MCP server or not, are never called by replay; the expert's recorded results stand for
their calls, and proposals of them are refused with a hint naming the option.

The MCP sandbox lacked the option that :class:`~ee_middleware.replay.sandboxes.python.PythonSandbox` has (93d82bd): an
expert call of such a tool before the trajectory's last tool call skipped the trajectory, and the skip reason (the MCP
sandbox's own hint: "Renamed or removed since the recording?", or "allow it by name: allow_open_world") never named a
way to keep the trajectory without calling the tool.

Real parts: a real FastMCP server written here (a helpdesk: its users are its world; ``send_email`` appends to an outbox
file, the outside world), started by the sandbox; a real ``create_agent`` graph whose tools come from that server
through langchain-mcp-adapters plus a tool of the app's own (``page_oncall``, no MCP tool), recorded by
``record_experience`` into a real store and replayed by the real ``run_replay`` job with ``--sandbox mcp:CONFIG.json``.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("mcp")
psutil = pytest.importorskip("psutil")

from ee_middleware.errors import SandboxError  # noqa: E402
from ee_middleware.replay.sandboxes.mcp import McpSandbox, McpServer, load_mcp_config  # noqa: E402
from ee_middleware.replay.sandboxes.protocol import acts_outside_world  # noqa: E402
from ee_middleware.testing import check_sandbox  # noqa: E402
from tests.replay.policies_for_tests import FixedCallsPolicy  # noqa: E402
from tests.replay.sandboxes.test_mcp import (  # noqa: E402
    BAD,
    ENVIRONMENT,
    READS,
    assert_no_server_left,
    call,
    no_server_before_or_after,  # noqa: F401 - the autouse fixture: no notes server before or after each test
    notes_server,
)

pytestmark = pytest.mark.timeout(180)

HERE = "tests.replay.sandboxes.test_mcp_outside_world"
USERS = {"users": {"u101": {"name": "Grace", "password_version": 1}, "u102": {"name": "Alan", "password_version": 4}}}

HELPDESK_SERVER = textwrap.dedent(
    """
    import json, os
    try:
        from mcp.server.fastmcp import FastMCP as Server
    except ModuleNotFoundError:
        from mcp.server.mcpserver import MCPServer as Server
    from mcp.types import ToolAnnotations

    environment = json.loads(os.environ.get("EE_ENVIRONMENT") or "null") or {}
    users = {k: dict(v) for k, v in (environment.get("users") or {}).items()}
    server = Server("helpdesk")

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False))
    def get_user(user_id: str) -> str:
        user = users[user_id]
        return f"{user_id}: {user['name']}, password version {user['password_version']}"

    @server.tool(annotations=ToolAnnotations(openWorldHint=False))
    def reset_password(user_id: str) -> str:
        users[user_id]["password_version"] += 1
        return f"reset {user_id}'s password"

    @server.tool(annotations=ToolAnnotations(openWorldHint=True))
    def send_email(to: str, body: str) -> str:
        with open(os.environ["OUTBOX"], "a", encoding="utf-8") as fh:
            fh.write(f"{to}: {body}\\n")
        return f"sent to {to}"

    server.run()
    """
)


def helpdesk(tmp_path: Path) -> tuple[McpServer, Path]:
    """The helpdesk server (written into ``tmp_path``) and its outbox, where every e-mail it sends lands."""
    script = tmp_path / "helpdesk_server.py"
    script.write_text(HELPDESK_SERVER, encoding="utf-8")
    outbox = tmp_path / "outbox.txt"
    return McpServer(sys.executable, (str(script),), env={"OUTBOX": str(outbox)}), outbox


def helpdesk_processes(tmp_path: Path) -> list[Any]:
    script = str(tmp_path / "helpdesk_server.py")
    return [
        p
        for p in psutil.process_iter(["cmdline", "status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE and script in " ".join(p.info["cmdline"] or [])
    ]


def assert_no_helpdesk_left(tmp_path: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while helpdesk_processes(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not helpdesk_processes(tmp_path), "helpdesk servers left running"


def write_helpdesk_config(tmp_path: Path, **options: Any) -> Path:
    script = tmp_path / "helpdesk_server.py"
    script.write_text(HELPDESK_SERVER, encoding="utf-8")
    config = tmp_path / "helpdesk-mcp.json"
    server = {"command": sys.executable, "args": [str(script)], "env": {"OUTBOX": str(tmp_path / "outbox.txt")}}
    config.write_text(json.dumps({"mcpServers": {"helpdesk": server}, **options}), encoding="utf-8")
    return config


# -- the option -----------------------------------------------------------------------------------------------------------


def test_a_served_tool_declared_outside_the_world_is_never_called_and_its_refusal_names_the_option(tmp_path: Path) -> None:
    server, outbox = helpdesk(tmp_path)
    with McpSandbox({"helpdesk": server}, outside_world_tools=["send_email", "page_oncall"]) as sandbox:
        for name in ("send_email", "page_oncall"):  # asked on a sandbox never reset, as the job asks: no server started
            hint = sandbox.refusal_hint(name)
            assert hint is not None and "outside_world_tools" in hint and "never calls it" in hint, hint
        assert sandbox.server_pids == [] and not helpdesk_processes(tmp_path)
        sandbox.reset(USERS)
        for name in ("send_email", "page_oncall"):  # one the server serves, one of the app's own
            assert sandbox.acts_outside_world(name) and acts_outside_world(sandbox, name)
            assert not sandbox.covers(name)
            refused = sandbox.execute(call(name, to="u101", body="hi"))
            assert refused.is_error and f"replay does not call tool '{name}'" in refused.content, refused
            assert "outside_world_tools" in refused.content, refused
        assert not sandbox.acts_outside_world("get_user") and sandbox.covers("get_user") and sandbox.covers("reset_password")
        assert sandbox.execute(call("get_user", user_id="u101")).content == "u101: Grace, password version 1"
    assert not outbox.exists(), "replay reached the outside world"
    assert_no_helpdesk_left(tmp_path)


def test_a_single_name_is_one_tool_and_a_tool_also_allowed_open_world_is_refused(tmp_path: Path) -> None:
    server, _ = helpdesk(tmp_path)
    sandbox = McpSandbox({"helpdesk": server}, outside_world_tools="send_email")
    try:
        assert sandbox.outside_world_tools == {"send_email"} and sandbox.acts_outside_world("send_email")
        assert not sandbox.acts_outside_world("s")
    finally:
        sandbox.close()
    with pytest.raises(SandboxError, match=r"\['send_email'\] are listed both in outside_world_tools .* and in allow_open_world"):
        McpSandbox({"helpdesk": server}, outside_world_tools=["send_email", "page_oncall"], allow_open_world=["send_email"])
    with pytest.raises(SandboxError, match=r"outside_world_tools must be tool names"):
        McpSandbox({"helpdesk": server}, outside_world_tools=[3])  # type: ignore[list-item]


def test_the_config_file_takes_outside_world_tools(tmp_path: Path) -> None:
    config = write_helpdesk_config(tmp_path, outside_world_tools=["send_email", "page_oncall"])
    _, settings = load_mcp_config(config)
    assert settings == {"outside_world_tools": ["send_email", "page_oncall"]}
    sandbox = McpSandbox.from_config(config)
    try:
        assert sandbox.outside_world_tools == {"send_email", "page_oncall"}
    finally:
        sandbox.close()
    both = write_helpdesk_config(tmp_path, outside_world_tools=["send_email"], allow_open_world="send_email")
    with pytest.raises(SandboxError, match="listed both in outside_world_tools"):
        McpSandbox.from_config(both)
    assert "outside_world_tools" in (load_mcp_config.__doc__ or "")


def test_the_conformance_kit_passes_with_tools_declared_outside_the_world() -> None:
    """publish_note (openWorldHint: true, served) and page_oncall (no MCP tool) declared: not covered, refused with a
    hint, never executed; the notes world still branches and restores."""
    check_sandbox(
        lambda: McpSandbox({"notes": notes_server()}, outside_world_tools=["publish_note", "page_oncall"]),
        environment=ENVIRONMENT,
        mutate=call("create_note", title="Call mom"),
        read=READS,
        bad_calls=BAD,
        outside_world_tools=["publish_note", "page_oncall"],
    )


# -- a recorded agent, replayed -------------------------------------------------------------------------------------------


class EmailAndRead(FixedCallsPolicy):
    """``tests.replay.sandboxes.test_mcp_outside_world:EmailAndRead``: at every state, an e-mail (declared outside the
    world: refused) and a read."""

    name = "email-and-read"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [
        ("send_email", {"to": "u102", "body": "alternative"}),
        ("get_user", {"user_id": "u102"}),
    ]


async def record_helpdesk_agent(tmp_path: Path) -> tuple[Path, str, list[str]]:
    """A real create_agent graph: page on-call (a tool of the app's own), e-mail Grace and reset her password (MCP tools
    of the helpdesk server, through langchain-mcp-adapters), read her account, answer. Recorded and approved: the store,
    the trajectory's id and what production paged."""
    lma = pytest.importorskip("langchain_mcp_adapters.client")
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langchain_mcp_adapters.tools import load_mcp_tools

    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel, tool_call

    server, outbox = helpdesk(tmp_path)
    pager: list[str] = []

    @tool
    def page_oncall(team: str, message: str) -> str:
        """Page a team's on-call engineer."""
        pager.append(f"{team}: {message}")
        return f"paged {team}"

    script = [
        AIMessage(content="", tool_calls=[tool_call("page_oncall", team="identity", message="identity flapping")]),
        AIMessage(content="", tool_calls=[tool_call("send_email", to="u101", body="resetting your password")]),
        AIMessage(content="", tool_calls=[tool_call("reset_password", user_id="u101")]),
        AIMessage(content="", tool_calls=[tool_call("get_user", user_id="u101")]),
        AIMessage(content="Paged identity, told Grace and reset her password."),
    ]
    root = tmp_path / "experience"
    client = lma.MultiServerMCPClient(
        {
            "helpdesk": {
                "command": server.command,
                "args": list(server.args),
                "transport": "stdio",
                "env": {**server.env, "EE_ENVIRONMENT": json.dumps(USERS)},
            }
        }
    )
    async with client.session("helpdesk") as session:
        tools = [*await load_mcp_tools(session), page_oncall]
        agent = record_experience(create_agent(ScriptedChatModel(script=script), tools), app="helpdesk", store=root, environment=USERS)
        await agent.ainvoke({"messages": [("user", "Identity is flapping: page on-call, then reset Grace's password.")]})
        agent.flush()
    store = LocalExperienceStore(root)
    (trajectory,) = list(store.iter_trajectories())
    store.approve([trajectory.id], by="test")
    recorded = [(s.action.tool_call.name, s.observation.content) for s in trajectory.steps if s.action.tool_call]
    store.close()
    assert recorded == [
        ("page_oncall", "paged identity"),
        ("send_email", "sent to u101"),
        ("reset_password", "reset u101's password"),
        ("get_user", "u101: Grace, password version 2"),
    ], recorded
    assert outbox.read_text(encoding="utf-8") == "u101: resetting your password\n"
    return root, trajectory.id, pager


@pytest.mark.parametrize("isolation", ["none", "subprocess"])  # the subprocess sandbox forwards acts_outside_world
async def test_an_expert_call_of_a_tool_declared_outside_the_world_stands_as_recorded_and_never_reaches_the_server(
    tmp_path: Path, isolation: str
) -> None:
    """Declared in the config file: the expert's page and e-mail are left unexecuted (their recorded results stand), every
    later state is branched from with no fidelity error, and neither the expert's e-mail nor any alternative's reaches
    the server: the outbox holds production's e-mail only."""
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.store import LocalExperienceStore

    root, _, pager = await record_helpdesk_agent(tmp_path)
    outbox = tmp_path / "outbox.txt"
    config = write_helpdesk_config(tmp_path, outside_world_tools=["send_email", "page_oncall"])
    extra = {"tool_timeout_s": 60} if isolation == "subprocess" else {}
    summary = run_replay(
        ReplayConfig.load(store=root, sandbox=f"mcp:{config}", policy=f"{HERE}:EmailAndRead", k=2, isolation=isolation, **extra)
    )
    assert (summary.done, summary.skipped, summary.failed) == (1, {}, {}), summary.to_dict()
    assert summary.states == 4 and summary.fidelity_mismatches == 0, summary.fidelity_examples
    assert summary.uncovered_calls_not_executed == {"page_oncall": 1, "send_email": 1}, summary.to_dict()
    assert summary.refused_tools == {"send_email": 4}, "proposed at each of the 4 states, never executed"
    assert "outside_world_tools" in summary.refused_hints["send_email"], summary.refused_hints
    assert outbox.read_text(encoding="utf-8") == "u101: resetting your password\n", "replay sent an e-mail"
    assert pager == ["identity: identity flapping"]
    store = LocalExperienceStore(root)
    try:
        rollouts = store.rollouts(replay_id=summary.replay_id)
    finally:
        store.close()
    assert sorted(set(rollouts["step_index"])) == [0, 1, 2, 3], "the states before and after the page and the e-mail"
    assert not {"send_email", "page_oncall"} & set(rollouts["tool_name"])
    assert_no_helpdesk_left(tmp_path)


async def test_without_the_declaration_the_skip_reason_names_outside_world_tools(tmp_path: Path) -> None:
    """Undeclared, the expert's page (no MCP tool) and e-mail (openWorldHint: true) skip the trajectory as before, and the
    reason, the MCP sandbox's own hints, says how to keep it: declare them in "outside_world_tools"."""
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay

    root, trajectory_id, _ = await record_helpdesk_agent(tmp_path)
    config = write_helpdesk_config(tmp_path)
    summary = run_replay(ReplayConfig.load(store=root, sandbox=f"mcp:{config}", policy=f"{HERE}:EmailAndRead", k=1))
    assert summary.done == 0 and summary.branches == 0, summary.to_dict()
    reason = summary.skipped[trajectory_id]
    assert "the expert calls page_oncall, send_email, which sandbox 'mcp' does not provide" in reason, reason
    assert reason.count('"outside_world_tools": [') == 2, reason  # one hint per tool, each naming the option
    assert "\"outside_world_tools\": ['page_oncall']" not in reason, "JSON in the config file, not a Python list"
    assert (tmp_path / "outbox.txt").read_text(encoding="utf-8") == "u101: resetting your password\n"
    assert_no_helpdesk_left(tmp_path)
    assert_no_server_left()
