"""The proposer compares calls as the tool receives them, as the mutation policy does (``ToolSchemas.call_key``).

A model's alternatives (a chat policy's) often write optional arguments out at their defaults (``"fields": null``,
``"verbose": false``) or a number as a float (``"timeout": 30.0``): such a call is the expert's call, or an earlier
alternative, again, and is rejected as ``expert_action`` or ``duplicate``; the refill does not add a call equal to one
accepted either.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import DecisionPoint

from .test_proposer import TextPolicy


@tool
def get_order(order_id: str, fields: list[str] | None = None, verbose: bool = False, timeout: float = 30) -> dict:
    """Get one order."""
    return {}


@tool
def list_orders(status: str = "open") -> list:
    """List orders."""
    return []


TOOLS = [convert_to_openai_tool(t) for t in (get_order, list_orders)]
STATE = [{"role": "user", "content": "Show order O-1, or else O-2 or O-3; open orders too."}]
EXPERT = ToolCall(id="e", name="get_order", arguments={"order_id": "O-1"})


def received(call: ToolCall) -> str:
    """The call as the LangChain tool's function receives it (its own pydantic schema fills in the defaults)."""
    langchain_tool = {"get_order": get_order, "list_orders": list_orders}[call.name]
    return call.name + langchain_tool.args_schema.model_validate(call.arguments).model_dump_json()


def text(name: str, arguments: dict[str, Any]) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def test_a_models_call_with_defaults_written_out_is_the_experts_call_or_a_duplicate() -> None:
    """Before the fix the proposer compared raw JSON: the first two calls were accepted as alternatives to the expert's
    ``get_order(order_id="O-1")``, and the fourth and fifth next to the third."""
    script = [
        text("get_order", {"order_id": "O-1", "fields": None}),  # the expert's call
        text("get_order", {"order_id": "O-1", "verbose": False, "timeout": 30.0}),  # the expert's call
        text("get_order", {"order_id": "O-2", "verbose": False}),  # accepted
        text("get_order", {"order_id": "O-2"}),  # duplicate
        text("get_order", {"timeout": 30, "order_id": "O-2", "fields": None}),  # duplicate
        text("get_order", {"order_id": "O-2", "timeout": 30.5}),  # accepted
    ]
    point = DecisionPoint("t", 0, list(STATE), TOOLS, EXPERT)
    result = Proposer(TextPolicy(script), k=4, refill=None).propose(point, seed=0)
    assert [c.call.arguments for c in result.accepted if c.call] == [
        {"order_id": "O-2", "verbose": False},
        {"order_id": "O-2", "timeout": 30.5},
    ]
    assert result.counts == {"expert_action": 2, "duplicate": 2}
    details = {r.reason: r.detail for r in result.rejected}
    assert "as the tool receives them" in details["expert_action"] and "default" in details["duplicate"]


@pytest.mark.parametrize("seed", range(12))
def test_the_refill_adds_no_call_the_tool_receives_like_an_accepted_one(seed: int) -> None:
    """The policy's own alternatives write defaults out; the refill (the mutation policy) tops the list up to k with calls
    none of which the tool receives like an accepted one or the expert's."""
    script = [
        text("get_order", {"order_id": "O-2", "verbose": False}),
        text("get_order", {"order_id": "O-3", "fields": None, "timeout": 30.0}),
        text("list_orders", {"status": "open"}),
    ]
    point = DecisionPoint(f"t{seed}", 0, list(STATE), TOOLS, EXPERT)
    result = Proposer(TextPolicy(script), k=8, refill=MutationPolicy()).propose(point, seed=seed)
    calls = [c.call for c in result.accepted if c.call]
    assert len(calls) == 8 and result.refilled == 5
    as_received = [received(c) for c in calls]
    assert received(EXPERT) not in as_received
    assert len(set(as_received)) == len(as_received), [c.arguments for c in calls]
