"""An MCP sandbox's options of the wrong type are refused naming the option, in its config file and in code: a string
``"timeout_s": "5"`` crashed as an "unexpected TypeError" ('<' between int and str), ``"outside_world_tools": 5`` as
"'int' object is not iterable", and ``"kind": 5`` failed every trajectory with pydantic's words about a Rollout (stored
as each one's failure, tried again by every run); ``"spare_servers": "no"`` was taken as true (sweep of 2026-12-07)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from ee_middleware.errors import SandboxError
from ee_middleware.replay.sandboxes.mcp import McpSandbox, McpServer, load_mcp_config

SERVER = {"command": sys.executable, "args": ["-c", "pass"]}

WRONG = [
    ("timeout_s", "5", "timeout_s must be a finite number of seconds > 0, got '5'"),
    ("timeout_s", True, "timeout_s must be a finite number of seconds > 0, got True"),
    ("timeout_s", None, "timeout_s must be a finite number of seconds > 0, got None"),
    ("start_timeout_s", "5", "start_timeout_s must be a finite number of seconds > 0"),
    ("outside_world_tools", 5, "outside_world_tools must be a list of tool names"),
    ("outside_world_tools", [1, 2], "outside_world_tools must be tool names (non-empty strings)"),
    ("allow_open_world", {"a": 1}, "allow_open_world must be a list of tool names"),
    ("allow_open_world", [""], "allow_open_world must be tool names (non-empty strings)"),
    ("kind", 5, "kind (the sandbox name stored in rollout records) must be a non-empty string, got 5"),
    ("kind", " ", "kind (the sandbox name stored in rollout records) must be a non-empty string"),
    ("spare_servers", "no", "spare_servers must be true or false, got 'no'"),
    ("open_world_default", "false", "open_world_default must be true or false"),
    ("tool_name_prefix", 1, "tool_name_prefix must be true or false, got 1"),
]


def _config(tmp_path: Path, **options: Any) -> Path:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": {"notes": SERVER}, **options}))
    return path


@pytest.mark.parametrize(("option", "value", "said"), WRONG)
def test_a_config_file_with_an_option_of_the_wrong_type_is_refused_naming_it(tmp_path: Path, option: str, value: Any, said: str) -> None:
    path = _config(tmp_path, **{option: value})
    with pytest.raises(SandboxError) as raised:
        load_mcp_config(path)
    assert str(raised.value).startswith(f"MCP sandbox config {str(path)!r}: "), raised.value
    assert said in str(raised.value), raised.value


@pytest.mark.parametrize(("option", "value", "said"), WRONG)
def test_mcp_sandbox_in_code_refuses_an_option_of_the_wrong_type(option: str, value: Any, said: str) -> None:
    with pytest.raises(SandboxError) as raised:
        McpSandbox({"notes": McpServer(sys.executable, ("-c", "pass"))}, **{option: value})
    assert said in str(raised.value), raised.value


def test_options_of_the_right_types_are_kept(tmp_path: Path) -> None:
    options = {
        "timeout_s": 5,
        "start_timeout_s": 2.5,
        "outside_world_tools": "page_oncall",
        "allow_open_world": ["search"],
        "kind": "notes-mcp",
        "spare_servers": False,
        "open_world_default": False,
        "tool_name_prefix": True,
    }
    servers, read = load_mcp_config(_config(tmp_path, **options))
    assert read == options
    sandbox = McpSandbox(servers, **read)
    try:
        assert sandbox.timeout_s == 5.0 and sandbox.start_timeout_s == 2.5 and sandbox.kind == "notes-mcp"
        assert sandbox.outside_world_tools == frozenset({"page_oncall"}) and sandbox.allow_open_world == frozenset({"search"})
        assert (sandbox.spare_servers, sandbox.open_world_default, sandbox.tool_name_prefix) == (False, False, True)
    finally:
        sandbox.close()
