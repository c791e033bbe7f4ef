"""A meeting-room booking world: the tools of a LangChain agent (:func:`agent_tools`) and two replay sandboxes by name,
``tests.trainers.datasets.booking_world:make_sandbox`` (the tools as production has them) and ``...:make_broken_sandbox``
(``cancel_booking``'s parameter misnamed ``bid``: every call to it answers a validation error, as a user's sandbox with
a typo does).

The world is ``{"bookings": {id: {"room", "slot"}}}`` from the trajectory's environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ee_middleware.replay.sandboxes.python import PythonSandbox
from tests.replay.policies_for_tests import FixedCallsPolicy

if TYPE_CHECKING:
    from ee_middleware.records import Trajectory

BOOKINGS = {"B1": {"room": "Ada", "slot": "10:00"}, "B2": {"room": "Turing", "slot": "14:00"}}
ENVIRONMENT = {"bookings": BOOKINGS}


def build_world(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"bookings": {k: dict(v) for k, v in (environment or {}).get("bookings", {}).items()}}


def list_bookings(world: dict[str, Any]) -> str:
    return json.dumps(world["bookings"], sort_keys=True)


def book_room(world: dict[str, Any], room: str, slot: str) -> str:
    booking_id = f"B{len(world['bookings']) + 1}"
    world["bookings"][booking_id] = {"room": room, "slot": slot}
    return f"booked {booking_id}: {room} at {slot}"


def cancel_booking(world: dict[str, Any], booking_id: str) -> str:
    booking = world["bookings"].pop(booking_id)
    return f"cancelled {booking_id}: {booking['room']} at {booking['slot']}"


def cancel_booking_misnamed(world: dict[str, Any], bid: str) -> str:
    """The sandbox author's typo: production's parameter is ``booking_id``."""
    return cancel_booking(world, bid)


def make_sandbox(**options: Any) -> PythonSandbox:
    return PythonSandbox(build_world, tools={"list_bookings": list_bookings, "book_room": book_room, "cancel_booking": cancel_booking})


def make_broken_sandbox(**options: Any) -> PythonSandbox:
    tools = {"list_bookings": list_bookings, "book_room": book_room, "cancel_booking": cancel_booking_misnamed}
    return PythonSandbox(build_world, tools=tools)


def agent_tools() -> list[Any]:
    """The production tools as LangChain tools over :data:`BOOKINGS` (what the recorded agent calls)."""
    from langchain_core.tools import tool

    world = build_world(ENVIRONMENT)

    @tool("list_bookings")
    def list_bookings_tool() -> str:
        """All bookings by id."""
        return list_bookings(world)

    @tool("book_room")
    def book_room_tool(room: str, slot: str) -> str:
        """Book a room at a slot."""
        return book_room(world, room, slot)

    @tool("cancel_booking")
    def cancel_booking_tool(booking_id: str) -> str:
        """Cancel a booking by id."""
        return cancel_booking(world, booking_id)

    return [list_bookings_tool, book_room_tool, cancel_booking_tool]


def record_trajectory(root: Path, script: list[Any], task: str) -> Trajectory:
    """One run of a real LangGraph agent (a ``ScriptedChatModel`` answering ``script``, the :func:`agent_tools`)
    recorded by ``record_experience`` into the store at ``root`` with :data:`ENVIRONMENT`, approved; the trajectory."""
    from langchain.agents import create_agent

    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel

    agent = record_experience(
        create_agent(ScriptedChatModel(script=script), agent_tools()), app="rooms", store=root, environment=ENVIRONMENT
    )
    agent.invoke({"messages": [("user", task)]})
    agent.flush()
    store = LocalExperienceStore(root)
    known = {t.id for t in store.iter_trajectories() if t.approval.status == "approved"}
    (trajectory,) = [t for t in store.iter_trajectories() if t.id not in known]
    store.approve([trajectory.id], by="test")
    store.close()
    return trajectory


def books_hopper() -> tuple[list[Any], str]:
    """A conversation for :func:`record_trajectory` (its script and task): the agent lists the bookings, then books
    Hopper at 09:00."""
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import tool_call

    script = [
        AIMessage(content="", tool_calls=[tool_call("list_bookings")]),
        AIMessage(content="", tool_calls=[tool_call("book_room", room="Hopper", slot="09:00")]),
        AIMessage(content="Booked Hopper at 09:00."),
    ]
    return script, "Book Hopper at 09:00."


def cancels_b1() -> tuple[list[Any], str]:
    """A conversation for :func:`record_trajectory` (its script and task): the agent lists the bookings, then cancels
    B1 (the 10:00 in Ada)."""
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import tool_call

    script = [
        AIMessage(content="", tool_calls=[tool_call("list_bookings")]),
        AIMessage(content="", tool_calls=[tool_call("cancel_booking", booking_id="B1")]),
        AIMessage(content="Cancelled your 10:00 in Ada."),
    ]
    return script, "Cancel my 10:00 booking in Ada."


class BookingPolicy(FixedCallsPolicy):
    """A replay policy (``tests.trainers.datasets.booking_world:BookingPolicy``) proposing, at every state, in order:
    cancelling B2, booking Babbage at 11:00, listing the bookings (the expert's own call among them is dropped)."""

    name = "booking-alternatives"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [
        ("cancel_booking", {"booking_id": "B2"}),
        ("book_room", {"room": "Babbage", "slot": "11:00"}),
        ("list_bookings", {}),
    ]
