"""Capture demo: a real LangGraph agent answers a few tasks with real tools, and every run is recorded.

    python examples/capture_demo.py --store demo-output/experience

The graph is a hand-built ReAct loop (model node, ``ToolNode``, ``tools_condition``) over real
tools that compute, convert units, read an orders database and write notes into a workspace folder.
The model is an *expert script*: a real LangChain chat model whose replies follow a fixed plan per
task (no weights are downloaded; later examples use a real small model). Runs that finish without a
tool error are approved automatically through ``approve_if``; one is then rejected by hand, as a
reviewer would. The demo ends by showing the store with the ``ee`` CLI and exporting the approved
runs as OpenAI chat JSONL.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import operator
import sys
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.tools import ToolException, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from ee_middleware import LocalExperienceStore, Trajectory, record_experience
from ee_middleware.testing import ScriptedChatModel

ORDERS = {
    "A-1001": {"status": "shipped", "carrier": "DHL", "eta": "2026-11-25"},
    "A-1002": {"status": "processing", "carrier": None, "eta": "2026-11-28"},
}
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}
_UNITS = {("km", "mi"): 0.621371, ("mi", "km"): 1.609344, ("kg", "lb"): 2.204623, ("lb", "kg"): 0.453592}


def build_tools(workspace: Path) -> list[Any]:
    """Real tools: arithmetic, unit conversion, an orders database, and notes on disk."""
    (workspace / "notes").mkdir(parents=True, exist_ok=True)
    (workspace / "orders.json").write_text(json.dumps(ORDERS))

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression with + - * / ** and parentheses."""

        def walk(node: ast.AST) -> float:
            if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
                return node.value
            if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
                return _OPS[type(node.op)](walk(node.left), walk(node.right))
            if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
                return _OPS[type(node.op)](walk(node.operand))
            raise ToolException(f"unsupported expression element: {ast.dump(node)[:40]}")

        return str(walk(ast.parse(expression, mode="eval").body))

    @tool
    def convert_units(value: float, from_unit: str, to_unit: str) -> str:
        """Convert a value between km/mi and kg/lb."""
        factor = _UNITS.get((from_unit, to_unit))
        if factor is None:
            raise ToolException(f"cannot convert {from_unit} to {to_unit}")
        return f"{value * factor:.2f} {to_unit}"

    @tool
    def lookup_order(order_id: str) -> str:
        """Look up an order's status by its id (like A-1001)."""
        orders = json.loads((workspace / "orders.json").read_text())
        if order_id not in orders:
            raise ToolException(f"no order {order_id!r}; ids look like A-1001")
        return json.dumps({"order_id": order_id, **orders[order_id]})

    @tool
    def write_note(title: str, body: str) -> str:
        """Save a note under a title (overwrites a note with the same title)."""
        (workspace / "notes" / f"{title}.txt").write_text(body)
        return f"saved note {title!r} ({len(body)} chars)"

    @tool
    def read_note(title: str) -> str:
        """Read a saved note by title."""
        path = workspace / "notes" / f"{title}.txt"
        if not path.exists():
            raise ToolException(f"no note titled {title!r}")
        return path.read_text()

    return [calculator, convert_units, lookup_order, write_note, read_note]


# Each task: the user's words, the expert's tool calls in order, and how the expert words its answer.
TASKS: list[tuple[str, list[tuple[str, dict[str, Any]]], str]] = [
    ("What is (17 * 23) + 4?", [("calculator", {"expression": "(17 * 23) + 4"})], "(17 * 23) + 4 = {0}."),
    ("How many miles is a 42 km run?", [("convert_units", {"value": 42, "from_unit": "km", "to_unit": "mi"})], "42 km is {0}."),
    (
        "Where is my order A-1001? Reply to jane.doe@example.com",
        [("lookup_order", {"order_id": "A-1001"})],
        "Order A-1001: {0}",
    ),
    (
        "Save a note 'standup' saying 'ship the capture demo', then read it back.",
        [("write_note", {"title": "standup", "body": "ship the capture demo"}), ("read_note", {"title": "standup"})],
        "Saved and checked: the note says '{1}'.",
    ),
    ("What is the status of order Z-9?", [("lookup_order", {"order_id": "Z-9"})], "I could not find that order: {0}"),
    (
        "Convert 80 kg to pounds and add 10.",
        [("convert_units", {"value": 80, "from_unit": "kg", "to_unit": "lb"}), ("calculator", {"expression": "176.37 + 10"})],
        "80 kg is {0}; plus 10 gives {1}.",
    ),
]


def expert_policy(messages: Any, tools: Any) -> AIMessage:
    """Follow the plan of the task in the last user message, one tool call per turn."""
    user_index = max(i for i, m in enumerate(messages) if m.type == "human")
    task = messages[user_index].content
    plan, answer = next((p, a) for t, p, a in TASKS if t == task)
    observations = [m.content for m in messages[user_index + 1 :] if m.type == "tool"]
    if len(observations) < len(plan):
        name, args = plan[len(observations)]
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": None, "type": "tool_call"}])
    return AIMessage(content=answer.format(*observations))


def build_graph(workspace: Path) -> Any:
    """A hand-built ReAct graph: model node -> ToolNode -> model node ... -> END."""
    tools = build_tools(workspace)
    model = ScriptedChatModel(policy=expert_policy, model_name="expert-script").bind_tools(tools)

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def no_tool_errors(trajectory: Trajectory) -> bool:
    """Auto-approval rule of the demo: the run completed and no tool call failed."""
    return trajectory.status == "completed" and not any(s.observation and s.observation.is_error for s in trajectory.steps)


def run_demo(store_path: Path, workspace: Path) -> int:
    from rich.console import Console

    from ee_middleware.cli.app import app as cli

    console = Console()
    agent = record_experience(build_graph(workspace), app="demo-assistant", app_version="1.0", store=store_path, approve_if=no_tool_errors)
    console.rule("[bold]1. The agent answers tasks (every run is recorded)")
    for i, (task, _, _) in enumerate(TASKS):
        config = {"configurable": {"thread_id": f"demo-thread-{i}"}}
        if i == 1:  # the same graph, streamed
            for _ in agent.stream({"messages": [("user", task)]}, config, stream_mode="updates"):
                pass
            answer = agent.unwrap().invoke({"messages": [("user", task)]})["messages"][-1].content
        elif i == 2:  # and awaited
            answer = asyncio.run(agent.ainvoke({"messages": [("user", task)]}, config))["messages"][-1].content
        else:
            answer = agent.invoke({"messages": [("user", task)]}, config)["messages"][-1].content
        console.print(f"[cyan]user:[/] {task}\n[green]agent:[/] {answer}\n")
    agent.flush()
    stats = agent.recorder.stats
    console.print(
        f"Recorded {stats.trajectories_written} runs ({stats.trajectories_auto_approved} auto-approved, {stats.runs_failed} capture failures)."
    )

    store = LocalExperienceStore(store_path)
    first = store.trajectories(status="approved").sort("started_at")["id"][0]
    store.reject([first], by="demo-reviewer", reason="example of a human rejection")

    for title, argv in [
        ("2. What was stored", ["traces", "list", "--store", str(store_path)]),
        ("3. One trajectory, step by step", ["traces", "show", _id_of(store, "A-1001"), "--store", str(store_path)]),
        (
            "4. Export approved runs for fine-tuning",
            ["traces", "export", "--store", str(store_path), "--format", "jsonl", "--out", str(store_path.parent / "approved.jsonl")],
        ),
    ]:
        console.rule(f"[bold]{title}")
        console.print(f"[dim]$ ee {' '.join(argv)}[/]")
        cli(argv, standalone_mode=False)
    if stats.runs_failed or stats.trajectories_written != len(TASKS):
        console.print("[red]Some runs were not recorded; see the errors above.[/]")
        return 1
    console.print(f"\nStore: {store_path}  (try: .venv/bin/ee traces list --store {store_path})")
    return 0


def _id_of(store: LocalExperienceStore, text: str) -> str:
    frame = store.trajectories()
    return next(row["id"] for row in frame.iter_rows(named=True) if text in (row["task"] or ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        type=Path,
        default=Path("demo-output/experience"),
        help="store folder, made by the demo and remade on each run (beside it: the agent's workspace/ and approved.jsonl)",
    )
    args = parser.parse_args(argv)
    from ee_middleware._files import clear_demo_folders, make_demo_folder

    # (a folder the demo did not make is refused, never removed)
    store, workspace = clear_demo_folders(
        (args.store, "--store"), (args.store.expanduser().resolve().parent / "workspace", "the workspace beside --store")
    )
    make_demo_folder(store, lambda folder: LocalExperienceStore(folder).close())
    return run_demo(store, make_demo_folder(workspace))


if __name__ == "__main__":
    sys.exit(main())
