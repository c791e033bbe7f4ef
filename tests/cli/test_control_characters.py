"""Terminal control characters in recorded and replayed text are shown, not acted on, by the commands that print it
for a person; ``--json`` answers are left as they were.

A tool's observation, the model's arguments and answer, or the task can hold ESC sequences (a tool wrapping a CLI with
colours, any untrusted text) and bidi overrides. ``ee traces show``, ``ee replay show`` and ``ee replay list`` printed
them raw: they could recolour, clear or overwrite what a reviewer reads before ``ee traces approve``, set the window
title or write the clipboard (OSC 52), or reorder the text shown. Real parts: a LangGraph ReAct graph recorded with
``record_experience``, the real ``ee replay run`` in a ``PythonSandbox`` on it, the real local store and CLI.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.cli.app import app
from ee_middleware.replay import PythonSandbox
from ee_middleware.testing import ScriptedChatModel

# Clear the screen, colour, set the title (OSC 0), write the clipboard (OSC 52), a C1 CSI, a right-to-left override
# and an isolate: what a tool wrapping a CLI, or a hostile page, can return. Then characters that show as nothing: bidi
# marks, line and paragraph separators, a zero-width space, BOM, word joiner, a ZWJ that joins nothing, and one that
# joins an emoji (kept).
HOSTILE = (
    "\x1b[2J\x1b[31mred\x1b[0m \x1b]0;pwned\x07 \x1b]52;c;aGk=\x07 \x9b1A \u202eevil\u202c \u2066iso\u2069"
    " ad\u200bmin \u200eLRM\u200f\u061c \u2028\u2029 \ufeffBOM x\u2060y ad\u200dmin \U0001f469\u200d\U0001f4bb"
)
TASK = "check \x1b[8mhidden\x1b[0m and \u202etxt.exe\u202c"
ANSWER = "all good \x1b[1A\x1b[2K\u202edone"
ARGUMENT = "hi \u202eoverride\u202c \x9b"
RAW = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
    "|(?<![^\x00-\x7f])[\u200c\u200d]|[\u200c\u200d](?![^\x00-\x7f])"
)
"""What must not reach a person's terminal raw (newline and tab are layout; a ZWJ between two emoji is text)."""

_ticks = itertools.count()


@tool
def echo(text: str) -> str:
    """Echo text back as a coloured CLI would."""
    return f"{text} {HOSTILE}"


@tool
def clock() -> str:
    """The time, as a coloured CLI would show it (differs on replay: a fidelity error whose diff is printed)."""
    return f"\x1b[32mtick {next(_ticks)}\x1b[0m \u202e{next(_ticks)}"


PLAN = [("echo", {"text": ARGUMENT}), ("clock", {})]


def _expert(messages: list[Any], tools: Any) -> AIMessage:
    last_user = max(i for i, m in enumerate(messages) if m.type == "human")
    seen = [m for m in messages[last_user + 1 :] if m.type == "tool"]
    if len(seen) < len(PLAN):
        name, args = PLAN[len(seen)]
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"c{len(seen)}", "type": "tool_call"}])
    return AIMessage(content=ANSWER)


def _graph() -> Any:
    model = ScriptedChatModel(policy=_expert, model_name="expert").bind_tools([echo, clock])

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([echo, clock], handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def make_sandbox() -> PythonSandbox:
    """The replay sandbox (``--sandbox tests.cli.test_control_characters:make_sandbox``): both tools are read-only."""
    return PythonSandbox(lambda environment: {}, tools={}, read_only_tools={"echo": echo, "clock": clock})


runner = CliRunner()
WIDE = {"COLUMNS": "400", "NO_COLOR": "1"}


def _ee(*args: str) -> str:
    result = runner.invoke(app, list(args), env=WIDE)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def replayed(tmp_path: Path) -> tuple[Path, str, str]:
    """A store holding one recorded, approved and replayed run whose tools, arguments, task and answer hold control
    characters; the trajectory's id, and what ``ee replay run`` printed."""
    store_path = tmp_path / "experience"
    agent = record_experience(_graph(), app="ansi", store=store_path)
    agent.invoke({"messages": [("user", TASK)]}, {"configurable": {"thread_id": "t"}})
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    (trajectory_id,) = store.trajectories()["id"].to_list()
    store.approve([trajectory_id], by="alice", reason="looked \x1b[8mfine\x1b[0m")
    store.close()
    spec = "tests.cli.test_control_characters:make_sandbox"
    run = runner.invoke(app, ["replay", "run", "--store", str(store_path), "--sandbox", spec, "--policy", "mutate", "--k", "2"], env=WIDE)
    assert run.exit_code == 0, run.output
    return store_path, trajectory_id, run.stdout


def test_stored_control_characters_are_shown_escaped_by_every_command_for_people(replayed: tuple[Path, str, str], tmp_path: Path) -> None:
    store_path, trajectory_id, replay_run = replayed
    store = str(store_path)
    rollouts = json.loads(_ee("replay", "list", "--store", store, "--json"))
    assert rollouts and any(HOSTILE in r["observation"]["content"] for r in rollouts), "the sandbox's echo returned the text"
    data = tmp_path / "data"
    _ee("datasets", "build", "--store", store, "--out", str(data), "--kinds", "il,iwm", "--include-fidelity-mismatches")
    outputs = {
        "replay run": replay_run,
        "traces list": _ee("traces", "list", "--store", store),
        "traces show": _ee("traces", "show", trajectory_id, "--store", store),
        "replay list": _ee("replay", "list", "--store", store),
        "replay show": _ee("replay", "show", trajectory_id, "--store", store),
        "replay show rollout": _ee("replay", "show", rollouts[0]["id"], "--store", store),
        "datasets show": _ee("datasets", "show", str(data), "--examples", "3"),
    }
    raw = {command: RAW.findall(text) for command, text in outputs.items() if RAW.search(text)}
    assert not raw, f"printed raw: {raw!r}"
    assert "\\x1b[8mhidden\\x1b[0m" in outputs["traces list"]  # the task, in a table cell
    shown = outputs["traces show"]
    for escaped in (
        "task: check \\x1b[8mhidden\\x1b[0m and \\u202etxt.exe\\u202c",  # the task
        "\\x1b[2J\\x1b[31mred\\x1b[0m \\x1b]0;pwned\\x07 \\x1b]52;c;aGk=\\x07 \\u009b1A \\u202eevil\\u202c",  # the observation
        "hi \\u202eoverride\\u202c \\u009b",  # the arguments: JSON writes C0 controls as \u001b, not C1 or bidi
        "all good \\x1b[1A\\x1b[2K\\u202edone",  # the answer
        "looked \\x1b[8mfine\\x1b[0m",  # the approval's reason
    ):
        assert escaped in shown, escaped
    for command in ("replay list", "replay show"):
        assert "\\x1b[31mred\\x1b[0m" in outputs[command] and "\\u202eevil" in outputs[command], command
    for command in ("replay run", "replay show"):
        assert "fidelity error" in outputs[command] and "\\x1b[32mtick" in outputs[command], "the clock's diff, on replay"
    assert "tool: hi \\u202eoverride\\u202c \\u009b \\x1b[2J\\x1b[31mred" in outputs["datasets show"], "a rendered example"


def test_json_answers_keep_the_stored_text_as_it_is(replayed: tuple[Path, str, str]) -> None:
    """``--json`` is a contract: the stored text, byte for byte as ``print_json`` writes the store's records."""
    store_path, trajectory_id, _ = replayed
    store = str(store_path)
    opened = LocalExperienceStore(store_path)
    trajectory = opened.get(trajectory_id)
    replayed_rollouts = [r.model_dump(mode="json") for r in opened.iter_rollouts([trajectory_id])]

    def written(data: Any) -> str:
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"

    shown = _ee("replay", "show", trajectory_id, "--store", store, "--json")
    assert shown == written(replayed_rollouts)
    trace = _ee("traces", "show", trajectory_id, "--store", store, "--json")
    data = json.loads(trace)
    assert trace == written(data) and data == {**trajectory.model_dump(mode="json"), "approval_history": data["approval_history"]}
    assert data["task"] == TASK and data["final_answer"] == ANSWER
    assert data["steps"][0]["observation"]["content"] == f"{ARGUMENT} {HOSTILE}"
    assert data["approval_history"][0]["reason"] == "looked \x1b[8mfine\x1b[0m"
    assert "\u202e" in trace and "\\u001b" in trace, "C1 and bidi characters as they are, C0 as JSON escapes them"
    listed = _ee("traces", "list", "--store", store, "--json")
    assert listed == written(json.loads(listed)) and json.loads(listed)[0]["task"] == TASK
    rollouts = _ee("replay", "list", "--store", store, "--json")
    assert sorted(json.loads(rollouts), key=lambda r: r["id"]) == sorted(replayed_rollouts, key=lambda r: r["id"])
    assert rollouts == written(json.loads(rollouts))


def test_visible_writes_out_what_a_terminal_would_act_on() -> None:
    from ee_middleware.cli.common import escape, visible

    assert visible("a\tb\nc") == "a\tb\nc", "tabs and newlines are layout"
    assert visible("line\r\nnext") == "line\nnext", "a CRLF line end is a line end"
    assert visible("50%\rdone") == "50%\\x0ddone", "a lone carriage return would overwrite the line"
    assert visible("\x00\x07\x08\x1b\x7f") == "\\x00\\x07\\x08\\x1b\\x7f"
    assert visible("\x85\x9b\x9d") == "\\u0085\\u009b\\u009d"
    assert visible("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069") == (
        "\\u202a\\u202b\\u202c\\u202d\\u202e\\u2066\\u2067\\u2068\\u2069"
    )
    assert visible("ü 日本 ✓ C:\\path") == "ü 日本 ✓ C:\\path", "other text is left as it is"
    assert escape("\x1b[31m[bold]x[/]") == "\\x1b[31m\\[bold]x\\[/]", "and markup is escaped after"


def test_visible_writes_out_characters_that_show_as_nothing_and_keeps_joiners_that_join() -> None:
    """Was: bidi marks, line and paragraph separators, zero-width space, word joiner and BOM passed raw (a reader saw
    ``admin`` for ``ad\\u200bmin``, a line break for U+2028)."""
    from ee_middleware.cli.common import visible

    assert visible("a\u200eb\u200fc\u061cd") == "a\\u200eb\\u200fc\\u061cd", "LRM, RLM, ALM"
    assert visible("one\u2028two\u2029") == "one\\u2028two\\u2029", "line and paragraph separators"
    assert visible("\ufeffad\u200bmin x\u2060y a\u2062b") == "\\ufeffad\\u200bmin x\\u2060y a\\u2062b"
    assert visible("ad\u200dmin ad\u200cmin \u200d") == "ad\\u200dmin ad\\u200cmin \\u200d", "joining nothing: hidden"
    for text in ("\U0001f469\u200d\U0001f4bb", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\u0915\u094d\u200d\u0937"):
        assert visible(text) == text, "an emoji sequence, a Persian word, a Devanagari conjunct: the joiner is their text"
