"""A conformance failure on long observations shows where the texts part (S14 D2), with replay's own diff
(:func:`ee_middleware.replay.fidelity.describe_mismatch`), instead of the same first 300 characters of both."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest

from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.testing import check_sandbox

_LEAKED: list[dict[str, Any]] = []
"""Tickets a leaky tool keeps outside the world (as a sandbox keeping a throwaway copy's path does)."""
_SERIALS = itertools.count(1)


def _tickets(world: dict[str, Any]) -> list[dict[str, Any]]:
    return [*world["tickets"], *_LEAKED]


def create_ticket(world: dict[str, Any], title: str) -> str:
    _LEAKED.append({"ticket_id": f"T-{1000 + len(_tickets(world)) + 1}", "title": title, "status": "open"})
    return "created"


def create_ticket_with_serial(world: dict[str, Any], title: str) -> str:
    world["tickets"].append({"ticket_id": f"T-{1000 + len(world['tickets']) + 1}", "title": title, "status": "open"})
    return json.dumps({"tickets": world["tickets"], "serial": next(_SERIALS)})  # a fresh id on every call


def search_tickets(world: dict[str, Any], limit: int = 20) -> str:
    return json.dumps(_tickets(world)[:limit])


def _build(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"tickets": [{"ticket_id": f"T-{1001 + i}", "title": f"Laptop fan loud {i}", "status": "resolved"} for i in range(6)]}


def _probe() -> dict[str, Any]:
    return {
        "environment": {},
        "mutate": ToolCall(id="m", name="create_ticket", arguments={"title": "VPN down"}),
        "read": ToolCall(id="r", name="search_tickets", arguments={"limit": 20}),
    }


def test_a_restore_failure_on_a_long_read_shows_where_the_texts_part() -> None:
    _LEAKED.clear()
    expected = search_tickets(_build(None))
    make = lambda: PythonSandbox(_build, tools={"create_ticket": create_ticket, "search_tickets": search_tickets})  # noqa: E731
    with pytest.raises(AssertionError) as failed:
        check_sandbox(make, **_probe())
    message = str(failed.value)
    assert len(expected) > 300
    assert f"search_tickets(limit=20) differs from what it should show at character {len(expected) - 1}" in message, message
    assert "--- expected\n" in message and "+++ showed\n" in message, message
    assert re.search(r'^\s*\+\s*"ticket_id": "T-1007",$', message, re.MULTILINE), message  # the leaked ticket, in the diff
    assert "state outside the world" in message, message


def test_a_call_that_answers_differently_on_a_long_text_shows_where_the_answers_part() -> None:
    make = lambda: PythonSandbox(_build, tools={"create_ticket": create_ticket_with_serial, "search_tickets": search_tickets})  # noqa: E731
    with pytest.raises(AssertionError) as failed:
        check_sandbox(make, **_probe())
    message = str(failed.value)
    assert "create_ticket(title='VPN down') gave two answers that part at character" in message, message
    assert re.search(r'^\s*-\s*"serial": \d+$', message, re.MULTILINE), message
    assert re.search(r'^\s*\+\s*"serial": \d+$', message, re.MULTILINE), message
    assert "--- first\n" in message and "+++ then\n" in message, message
    assert "the clock, random numbers" in message, message
