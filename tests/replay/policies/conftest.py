"""Fixtures for the policy tests: a hand-written tool set, real BFCL function docs, decision points."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.protocol import DecisionPoint


def function_tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-form tool schema."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


SHOP_TOOLS = [
    function_tool(
        "check_stock",
        "How many of an item are in stock.",
        {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]},
    ),
    function_tool(
        "order_item",
        "Order more of an item.",
        {
            "type": "object",
            "properties": {
                "item": {"type": "string", "minLength": 2},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                "note": {"type": "string"},
            },
            "required": ["item", "quantity"],
        },
    ),
    function_tool(
        "set_priority",
        "Set the priority of an order.",
        {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "level": {"type": "string", "enum": ["low", "normal", "high"]}},
            "required": ["order_id", "level"],
        },
    ),
    function_tool(
        "ship",
        "Ship an order to an address.",
        {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["street", "city"],
                },
                "express": {"type": "boolean"},
                "items": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "weight_kg": {"type": "number", "exclusiveMinimum": 0},
            },
            "required": ["order_id", "address"],
        },
    ),
]

SHOP_STATE = [
    {"role": "system", "content": "You run the stock room of a fruit shop."},
    {"role": "user", "content": "Are pears in stock? If not, order 5 and ship order A-1017 to 12 Elm Street, Springfield."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "check_stock", "arguments": '{"item": "pear"}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "0 pear in stock; apple: 3, banana: 12"},
]


@pytest.fixture
def shop_point() -> DecisionPoint:
    """The shop agent about to order pears (the expert's action)."""
    expert = ToolCall(id="c2", name="order_item", arguments={"item": "pear", "quantity": 5})
    return DecisionPoint(trajectory_id="traj-shop", step_index=1, state=list(SHOP_STATE), tools=list(SHOP_TOOLS), expert=expert)


def bfcl_func_doc_dir() -> Path | None:
    """The installed ``bfcl_eval`` package's multi-turn function docs (read as files, not imported)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "multi_turn_func_doc"
    return folder if folder.is_dir() else None


def load_bfcl_tools(file_name: str) -> list[dict[str, Any]]:
    """One BFCL API's function docs (JSON lines), wrapped as OpenAI tools with the original types."""
    folder = bfcl_func_doc_dir()
    if folder is None:
        pytest.skip("bfcl-eval is not installed")
    tools = []
    for line in (folder / file_name).read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            tools.append(function_tool(doc["name"], doc["description"], doc["parameters"]))
    return tools


BFCL_FILE_STATE = [
    {"role": "user", "content": "Move final_report.pdf into the temp folder, then show me what is in notes.txt."},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "b1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "b1", "content": '{"current_directory_content": ["final_report.pdf", "temp", "notes.txt"]}'},
]


@pytest.fixture
def bfcl_file_point() -> DecisionPoint:
    """A Gorilla file-system state from BFCL's multi-turn docs, the expert moving a file."""
    expert = ToolCall(id="b2", name="mv", arguments={"source": "final_report.pdf", "destination": "temp"})
    return DecisionPoint("traj-bfcl", 1, list(BFCL_FILE_STATE), load_bfcl_tools("gorilla_file_system.json"), expert)
