"""A files app whose tools answer text holding lone surrogates, as real tools produce them, for the replay tests:
recorded through a real ``create_agent`` graph (:func:`record_files`), replayed in a real :class:`PythonSandbox` named
by spec (``tests.replay.surrogate_world:make_sandbox``).

- ``list_dir(folder)`` gives names as ``os.listdir`` gives them for files whose names are not UTF-8
  (``b"caf\\xe9.txt"`` is ``"caf\\udce9.txt"``);
- ``preview(post)`` gives a title a JavaScript backend cut by UTF-16 units inside an emoji (``"Great day \\ud83d"``).

Capture stores each lone surrogate as U+FFFD.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ee_middleware.replay.sandboxes.python import PythonSandbox

NAMES = [os.fsdecode(name) for name in (b"notes.md", b"caf\xe9.txt", b"r\xe9sum\xe9 2026.pdf")]
TITLE = json.loads('{"title": "Great day \\ud83d"}')["title"]
LISTED = "notes.md\ncaf\ufffd.txt\nr\ufffdsum\ufffd 2026.pdf"
"""``list_dir``'s answer as capture stores it."""
PREVIEWED = "Great day \ufffd"
"""``preview``'s answer as capture stores it."""


def build_world(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"files": list(NAMES)}


def list_dir(world: dict[str, Any], folder: str) -> str:
    return "\n".join(world["files"])


def preview(world: dict[str, Any], post: int) -> str:
    return TITLE


def make_sandbox(**options: Any) -> PythonSandbox:
    return PythonSandbox(build_world, tools={"list_dir": list_dir, "preview": preview}, kind="files")


def record_files(store: Path) -> Any:
    """Record one run that lists a folder and previews a post; its trajectory, approved."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel, tool_call
    from tests.conftest import record_once

    world = build_world(None)

    @tool("list_dir")
    def list_dir_tool(folder: str) -> str:
        """List a folder."""
        return list_dir(world, folder)

    @tool("preview")
    def preview_tool(post: int) -> str:
        """Preview a post."""
        return preview(world, post)

    script = [
        AIMessage("", tool_calls=[tool_call("list_dir", folder=".")]),
        AIMessage("", tool_calls=[tool_call("preview", post=7)]),
        AIMessage("Three files; the post is about a great day."),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [list_dir_tool, preview_tool]), app="files", store=store)
    trajectory = record_once(agent, store, {"messages": [("user", "What is here, and what is post 7 about?")]})
    opened = LocalExperienceStore(store)
    try:
        opened.approve([trajectory.id], by="tests", reason="recorded for replay")
    finally:
        opened.close()
    return trajectory
