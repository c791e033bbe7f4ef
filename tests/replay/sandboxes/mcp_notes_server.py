"""A small, real MCP server with a stateful world: notes. Written with the ``mcp`` package's FastMCP (MCPServer in mcp 2).

The world comes from ``EE_ENVIRONMENT`` (what McpSandbox hands a server: the trajectory's environment reference as
JSON): ``{"notes": {"1": {"title": ..., "body": ...}}, "tags": {"1": {"tag": "value"}}}`` (tags optional); ``{"refuse": "why"}`` makes the server exit at start with
that message on its standard error (a world it cannot build). Tools, with their MCP annotations:

- ``list_notes`` (readOnlyHint), ``read_note`` (readOnlyHint), ``note_image`` (readOnlyHint; an image block);
- ``create_note`` and ``delete_note`` change the world (``openWorldHint: false``: only the server's own);
- ``tag_note`` merges tags into a note in the order given and answers them in their order (a tool that acts on the
  order of a dict), ``note_tags`` (readOnlyHint) shows them;
- ``publish_note`` (openWorldHint: it would post the note to the web);
- ``slow_note`` (sleeps), ``crash`` (the server dies), ``spawn_helper`` (starts a process that would outlive it): for
  the sandbox's failure and process tests;
- with ``NOTES_FAST=1`` also ``ee_snapshot`` / ``ee_restore``, McpSandbox's fast path;
- with ``NOTES_GOODBYE=FOLDER`` it writes ``hello-PID`` there as it starts and ``goodbye-PID`` once it has shut down
  cleanly (its standard input closed, or ``SIGTERM`` to a streamable-HTTP server): the clean-up a server does on its
  way out (temporary files, a database connection), which a ``SIGKILL`` never lets run; with ``NOTES_OUTLIVE_INPUT=1``
  too it runs on after its standard input closed, until ``SIGTERM`` (as some servers do);
- with ``NOTES_BANNER=1`` it prints a banner on its standard output as it starts (lines that are not MCP messages, as
  careless servers do); ``chatty_note`` prints on its standard output while it runs (a debugging print in a tool).

Run: ``python mcp_notes_server.py`` (stdio) or ``python mcp_notes_server.py --http PORT`` (streamable HTTP).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import subprocess
import sys
import time

try:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as Server
    from mcp.server.fastmcp import Image
except ModuleNotFoundError:  # mcp 2.x: FastMCP is MCPServer
    from mcp.server.mcpserver import Image
    from mcp.server.mcpserver import MCPServer as Server
from mcp.types import ToolAnnotations

READ_ONLY = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
OPEN_WORLD = ToolAnnotations(openWorldHint=True)
OWN_WORLD = ToolAnnotations(openWorldHint=False)  # changes only the server's own world
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")

if os.environ.get("NOTES_BANNER") == "1":
    print("notes server 1.0 starting", flush=True)
    print("ready for requests", flush=True)
environment = json.loads(os.environ.get("EE_ENVIRONMENT") or "null") or {}
if environment.get("refuse"):
    print(f"notes server: {environment['refuse']}", file=sys.stderr, flush=True)
    sys.exit(3)
notes: dict[str, dict[str, str]] = {k: dict(v) for k, v in (environment.get("notes") or {}).items()}
tags: dict[str, dict[str, str]] = {k: dict(v) for k, v in (environment.get("tags") or {}).items()}
snapshots: dict[str, tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]] = {}

port = int(sys.argv[sys.argv.index("--http") + 1]) if "--http" in sys.argv else None
server = Server("notes", **({"host": "127.0.0.1", "port": port} if port is not None else {}))


@server.tool(annotations=READ_ONLY)
def list_notes() -> str:
    """List every note: id and title."""
    return "\n".join(f"{k}: {v['title']}" for k, v in sorted(notes.items(), key=lambda kv: int(kv[0]))) or "no notes"


@server.tool(annotations=READ_ONLY)
def read_note(note_id: str) -> str:
    """A note's title and body."""
    if note_id not in notes:
        raise ValueError(f"no note {note_id}")
    return f"{notes[note_id]['title']}\n\n{notes[note_id]['body']}"


@server.tool(annotations=READ_ONLY)
def note_image(note_id: str) -> Image:
    """A picture of the note."""
    return Image(data=PNG, format="png")


@server.tool(annotations=OWN_WORLD)
def create_note(title: str, body: str = "") -> str:
    """Create a note; answers its id."""
    note_id = str(max((int(k) for k in notes), default=0) + 1)
    notes[note_id] = {"title": title, "body": body}
    return f"created note {note_id}: {title}"


@server.tool(annotations=OWN_WORLD)
def delete_note(note_id: str) -> str:
    """Delete a note by id."""
    if note_id not in notes:
        raise ValueError(f"no note {note_id}")
    title = notes.pop(note_id)["title"]
    return f"deleted note {note_id}: {title}"


@server.tool(annotations=OWN_WORLD)
def tag_note(note_id: str, new_tags: dict[str, str]) -> str:
    """Merge tags into a note, in the order given; answers the note's tags, in their order."""
    if note_id not in notes:
        raise ValueError(f"no note {note_id}")
    tags.setdefault(note_id, {}).update(new_tags)
    return json.dumps(tags[note_id])


@server.tool(annotations=READ_ONLY)
def note_tags(note_id: str) -> str:
    """A note's tags, in their order."""
    return json.dumps(tags.get(note_id, {}))


@server.tool(annotations=OPEN_WORLD)
def publish_note(note_id: str) -> str:
    """Publish a note on the web."""
    return f"published note {note_id} at https://notes.example/{note_id}"


@server.tool(annotations=OWN_WORLD)
def slow_note(seconds: float) -> str:
    """Take a while."""
    time.sleep(seconds)
    return "done"


@server.tool(annotations=READ_ONLY)
def chatty_note(note_id: str) -> str:
    """A note's title, printing on standard output on the way (a print left in a tool)."""
    print(f"DEBUG looking up note {note_id}", flush=True)
    return notes[note_id]["title"] if note_id in notes else f"no note {note_id}"


@server.tool(annotations=OWN_WORLD)
def crash() -> str:
    """End the server at once, saying why on its standard error."""
    print("notes server: the crash tool ends this server (exit code 7)", file=sys.stderr, flush=True)
    os._exit(7)


@server.tool(annotations=OWN_WORLD)
def spawn_helper() -> str:
    """Start a process that sleeps for a long time; answers its id."""
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    return str(helper.pid)


if os.environ.get("NOTES_FAST") == "1":

    @server.tool()
    def ee_snapshot() -> str:
        """McpSandbox's fast path: a token for the current world."""
        token = str(len(snapshots) + 1)
        snapshots[token] = copy.deepcopy((notes, tags))
        return token

    @server.tool()
    def ee_restore(token: str) -> str:
        """McpSandbox's fast path: put the world of a token back."""
        kept_notes, kept_tags = copy.deepcopy(snapshots[token])
        notes.clear()
        notes.update(kept_notes)
        tags.clear()
        tags.update(kept_tags)
        return "restored"


if __name__ == "__main__":
    goodbye = os.environ.get("NOTES_GOODBYE")
    if goodbye:
        with open(os.path.join(goodbye, f"hello-{os.getpid()}"), "w"):
            pass
        # uvicorn puts this handler back once it has shut down on SIGTERM and raises the signal again: exit cleanly
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run(transport="streamable-http" if port is not None else "stdio")
        if os.environ.get("NOTES_OUTLIVE_INPUT") == "1":
            time.sleep(300)
    finally:
        if goodbye:
            with open(os.path.join(goodbye, f"goodbye-{os.getpid()}"), "w"):
                pass
