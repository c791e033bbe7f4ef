"""An app's own LangChain tools in every shape replay meets them: recorded through a real agent, replayed in PythonSandbox.

Each test records a real ``langchain.agents.create_agent`` graph (a scripted model) and checks that replaying the
expert's calls in the sandbox gives exactly the observations capture stored (no fidelity error), and that the rollouts
hold what calling the tool on the recorded state gives.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import warnings
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, StructuredTool, ToolException, tool
from langgraph.types import Command
from pydantic import BaseModel, Field

from ee_middleware import record_experience
from ee_middleware.errors import SandboxError
from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.runner import ReplayOutcome, ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.testing import ScriptedChatModel, check_sandbox, tool_call
from tests.conftest import record_once


def _script(*calls: tuple[str, dict[str, Any]]) -> list[AIMessage]:
    return [*(AIMessage(content="", tool_calls=[tool_call(name, **args)]) for name, args in calls), AIMessage(content="done")]


def _record_async(graph: Any, store: Path) -> Trajectory:
    """Record one run of ``graph`` invoked with ``ainvoke`` (async tools run only so) and read it back."""
    agent = record_experience(graph, app="shop", store=store)
    return record_once(agent, store, {"messages": [("user", "How are the pears?")]}, run_async=True)


def _replay(trajectory: Trajectory, sandbox: PythonSandbox, k: int = 2) -> ReplayOutcome:
    return replay_trajectory(trajectory, sandbox, Proposer(MutationPolicy(), k=k), ReplaySettings("shapes", "mutate", k=k))


def _recorded(trajectory: Trajectory) -> list[str]:
    return [s.observation.content for s in trajectory.steps if s.action.tool_call]


class Model(BaseModel):
    x: int
    y: str = "q"


def flag(item: str) -> bool:
    """Whether an item is sold."""
    return item == "pear"


def nothing(item: str) -> None:
    """Forget an item."""


def not_a_number(item: str) -> float:
    """An item's score."""
    return float("nan")


def when(item: str) -> datetime.datetime:
    """When an item arrives."""
    return datetime.datetime(2024, 1, 2, 3, 4, 5)


def price(item: str) -> decimal.Decimal:
    """An item's price."""
    return decimal.Decimal("1.50")


def record_of(item: str) -> Model:
    """An item's record."""
    return Model(x=len(item))


def test_return_values_that_are_not_text_replay_as_langchain_made_them_text(tmp_path: Path) -> None:
    """LangChain makes any non-string result its JSON when it has one: True is 'true', None is 'null', nan is 'NaN'.
    The sandbox wrote str(value) ('True', '', 'nan'): each such expert step was a fidelity error and every rollout held
    text the model never sees from the tool."""
    tools = [flag, nothing, not_a_number, when, price, record_of]
    calls = [(fn.__name__, {"item": "pear"}) for fn in tools]
    graph = create_agent(ScriptedChatModel(script=_script(*calls)), [tool(fn) for fn in tools])
    trajectory = record_once(record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", {"messages": [("user", "pears?")]})
    assert _recorded(trajectory) == ["true", "null", "NaN", "2024-01-02 03:04:05", "1.50", "x=4 y='q'"]

    sandbox = PythonSandbox(lambda environment: {}, tools={}, read_only_tools={fn.__name__: fn for fn in tools})
    outcome = _replay(trajectory, sandbox)
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
    sandbox.reset({})
    assert sandbox.execute(ToolCall(id="f", name="flag", arguments={"item": "plum"})).content == "false"


async def lookup(item: str) -> str:
    """Look an item up."""
    await asyncio.sleep(0)
    return f"{item}: aisle 3"


def _async_world_tools() -> dict[str, Any]:
    async def order_item(world: dict[str, int], item: str, quantity: int = 1) -> str:
        await asyncio.sleep(0)
        world[item] = world.get(item, 0) + quantity
        return f"ordered {quantity} {item}; now {world[item]}"

    async def check_stock(world: dict[str, int], item: str) -> int:
        await asyncio.sleep(0)
        return world.get(item, 0)

    return {"order_item": order_item, "check_stock": check_stock}


def test_async_tools_are_awaited_with_and_without_a_world(tmp_path: Path) -> None:
    """An ``async def`` tool was called and its coroutine formatted: every observation was
    '<coroutine object ... at 0x...>' (a fidelity error at each expert step, a 'never awaited' warning, no world
    change)."""
    stock = {"pear": 0}

    @tool
    async def order_item(item: str, quantity: int = 1) -> str:
        """Order an item."""
        stock[item] = stock.get(item, 0) + quantity
        return f"ordered {quantity} {item}; now {stock[item]}"

    @tool
    async def check_stock(item: str) -> int:
        """How many are in stock."""
        return stock.get(item, 0)

    calls = [("lookup", {"item": "pear"}), ("check_stock", {"item": "pear"}), ("order_item", {"item": "pear", "quantity": 5})]
    graph = create_agent(
        ScriptedChatModel(script=_script(*calls, ("check_stock", {"item": "pear"}))), [tool(lookup), check_stock, order_item]
    )
    trajectory = _record_async(graph, tmp_path / "s")
    assert _recorded(trajectory) == ["pear: aisle 3", "0", "ordered 5 pear; now 5", "5"]

    def make() -> PythonSandbox:
        return PythonSandbox(
            lambda environment: dict(environment or {"pear": 0}), tools=_async_world_tools(), read_only_tools={"lookup": lookup}
        )

    sandbox = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a coroutine never awaited
        outcome = _replay(trajectory, sandbox, k=3)
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
    assert outcome.rollouts and not [r for r in outcome.rollouts if "coroutine" in r.observation.content]
    sandbox.close()
    check_sandbox(
        make,
        environment={"pear": 1},
        mutate=ToolCall(id="m", name="order_item", arguments={"item": "pear", "quantity": 2}),
        read=ToolCall(id="r", name="check_stock", arguments={"item": "pear"}),
    )


def test_an_async_tool_is_awaited_when_the_caller_already_runs_an_event_loop() -> None:
    """A notebook or an async app calls the sandbox from inside a running loop: the tool still runs to its end."""
    sandbox = PythonSandbox(lambda environment: {"pear": 2}, tools=_async_world_tools())
    sandbox.reset({})

    async def inside() -> str:
        return sandbox.execute(ToolCall(id="c", name="order_item", arguments={"item": "pear"})).content

    assert asyncio.run(inside()) == "ordered 1 pear; now 3"
    assert sandbox.world == {"pear": 3}
    sandbox.close()


class _LoopBoundClient:
    """As an httpx/aiohttp client made once and cached: it keeps the loop it was made on."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def get(self, item: str) -> str:
        return await self.loop.run_in_executor(None, str.upper, item)


def test_an_async_tool_keeps_its_cached_client_when_the_caller_already_runs_an_event_loop() -> None:
    """Inside a running loop every call ran on a fresh loop (asyncio.run on a new thread): a tool's client cached at the
    first call was bound to a closed loop at the second ('Event loop is closed'). The sandbox keeps one loop, on a thread
    of its own that close() stops."""
    import threading

    cache: dict[str, _LoopBoundClient] = {}

    async def shelf(item: str) -> str:
        client = cache.setdefault("client", _LoopBoundClient())
        return f"{await client.get(item)}: aisle 3"

    sandbox = PythonSandbox(lambda environment: {}, tools={}, read_only_tools={"shelf": shelf})
    sandbox.reset({})

    async def inside() -> list[str]:
        return [sandbox.execute(ToolCall(id=str(i), name="shelf", arguments={"item": "pear"})).content for i in range(3)]

    assert asyncio.run(inside()) == ["PEAR: aisle 3"] * 3
    sandbox.close()
    assert not [t for t in threading.enumerate() if t.name == "ee-sandbox-async"], "close() stops the loop's thread"


def test_plain_functions_get_raw_arguments_when_validation_is_off() -> None:
    """Tools an app called with the raw arguments (another framework, tau-bench-style domains) are not checked as
    LangChain's @tool would: an int for a str parameter reaches the function, as it did in production."""

    def get_order(world: dict[str, str], order_id: str) -> str:
        return world.get(str(order_id), f"no order {order_id!r}")

    checked = PythonSandbox(lambda environment: {"1234": "2 pears"}, tools={"get_order": get_order})
    raw = PythonSandbox(lambda environment: {"1234": "2 pears"}, tools={"get_order": get_order}, validate_arguments=False)
    call = ToolCall(id="c", name="get_order", arguments={"order_id": 1234})
    for sandbox in (checked, raw):
        sandbox.reset({})
    assert checked.execute(call).is_error and "Input should be a valid string" in checked.execute(call).content
    assert raw.execute(call).content == "2 pears"

    def add_order(world: dict[str, str], order_id: str, items: str) -> str:
        world[str(order_id)] = items
        return "added"

    check_sandbox(
        lambda: PythonSandbox(
            lambda environment: {"1234": "2 pears"}, tools={"get_order": get_order, "add_order": add_order}, validate_arguments=False
        ),
        environment={},
        mutate=ToolCall(id="m", name="add_order", arguments={"order_id": 1234, "items": "1 plum"}),
        read=[call],
    )


def test_an_empty_tuple_is_what_langchain_stores() -> None:
    """An empty tuple of content blocks is an empty list to LangChain (content ''); the sandbox wrote '[]'."""
    from ee_middleware.replay.sandboxes.python import format_result

    @tool
    def nothing_found() -> object:
        """Nothing."""
        return ()

    message = nothing_found.invoke({"type": "tool_call", "name": "nothing_found", "args": {}, "id": "c1"})
    assert message.content == [] and format_result(()) == "" == format_result([])


@pytest.mark.parametrize("closed_twice", [False, True])
def test_closing_a_sandbox_closes_its_event_loop(closed_twice: bool) -> None:
    sandbox = PythonSandbox(lambda environment: {"pear": 2}, tools=_async_world_tools())
    sandbox.reset({})
    assert sandbox.execute(ToolCall(id="c", name="check_stock", arguments={"item": "pear"})).content == "2"
    loop = sandbox._loop
    sandbox.close()
    if closed_twice:
        sandbox.close()
    assert loop is not None and loop.is_closed()
    sandbox.reset({})  # usable again: a new loop
    assert sandbox.execute(ToolCall(id="c", name="check_stock", arguments={"item": "pear"})).content == "2"
    sandbox.close()


class Color(enum.StrEnum):
    red = "red"
    blue = "blue"


class Address(BaseModel):
    city: str
    zip_code: str | None = None


class PlaceArgs(BaseModel):
    item: Annotated[str, Field(description="what to send")]
    address: Address
    color: Color = Color.red
    quantity: int = 1


def _place(item: str, address: Address, color: Color = Color.red, quantity: int = 1) -> str:
    return f"{quantity} {color.value} {item} to {address.city}"


def _found(item: str) -> tuple[str, dict[str, Any]]:
    return f"found {item}", {"rows": [1, 2]}


def _refuse(item: str) -> str:
    raise ToolException(f"no {item} today")


def _remember(item: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
    return Command(update={"messages": [ToolMessage(f"remembered {item}", tool_call_id=tool_call_id)]})


def _plus_one(n: int) -> str:
    return str(n + 1)


def _langchain_tools() -> list[Any]:
    return [
        StructuredTool.from_function(_place, name="place", description="Send an item.", args_schema=PlaceArgs),
        StructuredTool.from_function(_found, name="found", description="Find.", response_format="content_and_artifact"),
        StructuredTool.from_function(_refuse, name="refuse", description="Refuse.", handle_tool_error=True),
        StructuredTool.from_function(_remember, name="remember", description="Remember."),
        StructuredTool.from_function(_plus_one, name="plus_one", description="Add one."),
        StructuredTool.from_function(coroutine=lookup, name="lookup", description="Look up."),
    ]


def test_langchain_tool_objects_replay_as_the_tool_node_called_them(tmp_path: Path) -> None:
    """A LangChain tool object in read_only_tools is called as LangGraph's ToolNode calls it. Before, the sandbox refused
    it and said to give ``tool.func``, which skips what the tool does around its function: the nested model arrived as a
    dict ('str' object has no attribute 'value'), '4' stayed a string (TypeError), a content_and_artifact result was the
    tuple's JSON, handle_tool_error's text was 'Error: ToolException: ...', a Command was its repr, and an async-only
    tool has no func at all (None)."""
    calls = [
        ("place", {"item": "pear", "address": {"city": "Oslo"}, "color": "blue"}),
        ("found", {"item": "pear"}),
        ("refuse", {"item": "pear"}),
        ("remember", {"item": "pear"}),
        ("plus_one", {"n": "4"}),
        ("plus_one", {"n": "four"}),  # the schema refuses it: create_agent shows the model LangGraph's message
        ("lookup", {"item": "pear"}),
    ]
    graph = create_agent(ScriptedChatModel(script=_script(*calls)), _langchain_tools())
    trajectory = _record_async(graph, tmp_path / "s")
    recorded = [(s.observation.content, s.observation.is_error) for s in trajectory.steps if s.action.tool_call]
    assert recorded[:5] == [
        ("1 blue pear to Oslo", False),
        ("found pear", False),
        ("no pear today", True),
        ("remembered pear", False),
        ("5", False),
    ]
    assert recorded[5][0].startswith("Error invoking tool 'plus_one' with kwargs {'n': 'four'}") and recorded[5][1]

    sandbox = PythonSandbox(lambda environment: {}, tools={}, read_only_tools={t.name: t for t in _langchain_tools()})
    outcome = _replay(trajectory, sandbox, k=3)
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
    sandbox.reset({})
    for step in (s for s in trajectory.steps if s.action.tool_call):
        got = sandbox.execute(step.action.tool_call)
        assert (got.content, got.is_error) == (step.observation.content, step.observation.is_error)
    sandbox.close()


def test_a_langchain_tool_among_world_tools_says_where_it_belongs() -> None:
    """A production tool (its function takes the model's arguments only) listed among world tools: its first parameter
    would get the world. One whose own args_schema lists that parameter is refused when the sandbox is built, as is one
    whose function takes no parameter at all; one whose schema LangChain made from its function (the world's parameter
    would be in it too) is refused at the first call naming that parameter (and replay refuses it before running anything
    of a trajectory whose recorded schema lists it, see test_production_tools)."""
    [place, _, _, _, plus_one, _] = _langchain_tools()
    with pytest.raises(SandboxError) as raised:
        PythonSandbox(lambda environment: {}, tools={"place": place})
    assert "takes 'item' first" in str(raised.value) and "the tool's args_schema lists it" in str(raised.value)
    assert "read_only_tools" in str(raised.value)
    sandbox = PythonSandbox(lambda environment: {}, tools={"plus_one": plus_one})
    sandbox.reset({})
    with pytest.raises(SandboxError, match=r"takes 'n' first.*one of the model's arguments.*read_only_tools"):
        sandbox.execute(ToolCall(id="c1", name="plus_one", arguments={"n": 4}))
    sandbox.close()
    nothing = StructuredTool.from_function(lambda: "x", name="nothing", description="Nothing.")
    with pytest.raises(SandboxError, match="takes no parameter it could be given the world in"):
        PythonSandbox(lambda environment: {}, tools={"nothing": nothing})


def test_tools_given_as_a_list_say_how_to_map_them_by_name() -> None:
    """The list a ToolNode or create_agent is given, passed as ``tools`` or ``read_only_tools``: was a TypeError
    ("unhashable type: 'StructuredTool'") or an AttributeError ("'list' object has no attribute 'items'") (a sweep)."""
    [place, _, _, _, plus_one, _] = _langchain_tools()
    for options in ({"tools": [place]}, {"tools": {}, "read_only_tools": [plus_one]}, {"tools": (_take_in,)}):
        table = "read_only_tools" if "read_only_tools" in options else "tools"
        with pytest.raises(SandboxError, match=rf"PythonSandbox's {table} must map each tool's name to its function, not be a"):
            PythonSandbox(lambda environment: {}, **options)
    with pytest.raises(SandboxError, match=r"\{t.name: t for t in tools\}"):
        PythonSandbox(lambda environment: {}, tools=[place])
    with pytest.raises(SandboxError, match="must map each tool's name to its function \\(a dict\\), not str"):
        PythonSandbox(lambda environment: {}, tools="place")


# -- world tools given as LangChain tool objects: they answer as the tool's own error handling does ---------------------


def _take_in(world: dict[str, Any], item: str) -> str:
    if item not in world["stock"]:
        raise ToolException(f"refused: {item} ✗")
    world["stock"].remove(item)
    return f"took {item}; {len(world['stock'])} left"


def _add_in(world: dict[str, Any], n: int) -> str:
    world["total"] += n
    return f"total {world['total']}"


def _count_in(world: dict[str, Any]) -> str:
    return f"{len(world['stock'])} in stock, total {world['total']}"


async def _peek_in(world: dict[str, Any], item: str) -> str:
    if item not in world["stock"]:
        raise ToolException(f"no {item} to peek at")
    return f"{item} is there"


_HANDLING: dict[str, tuple[str, dict[str, Any]]] = {
    "take_flagged": ("take", {"handle_tool_error": True}),
    "take_worded": ("take", {"handle_tool_error": "that cannot be taken"}),
    "take_handled": ("take", {"handle_tool_error": lambda exc: f"handled: {exc}"}),
    "add_flagged": ("add", {"handle_validation_error": True}),
    "add_worded": ("add", {"handle_validation_error": "n must be a number"}),
    "add_handled": ("add", {"handle_validation_error": lambda exc: f"bad input ({len(exc.errors())} error)"}),
    "add": ("add", {}),
    "peek": ("peek", {"handle_tool_error": True}),
    "count": ("count", {}),
}
"""Tool name -> (which function, the tool's error handling), the same in production and in the sandbox."""


def _handling_tools(functions: dict[str, Any]) -> list[StructuredTool]:
    made = []
    for name, (base, handling) in _HANDLING.items():
        kind = "coroutine" if asyncio.iscoroutinefunction(functions[base]) else "func"
        made.append(StructuredTool.from_function(**{kind: functions[base]}, name=name, description=f"The {name} tool.", **handling))
    return made


def _stock(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"stock": list((environment or {})["stock"]), "total": 0}


def test_world_tools_given_as_langchain_tools_answer_as_the_tools_error_handling_does(tmp_path: Path) -> None:
    """Production builds its tools over functions of a world (StructuredTool.from_function, handle_tool_error=True, a
    text or a function; handle_validation_error alike): a raised ToolException is recorded as the tool's handling made it
    ('refused: pear ✗'). A sandbox of plain world functions cannot know that handling, and answered 'Error:
    ToolException: refused: pear ✗': every such expert step was a fidelity mismatch, and dataset builds dropped the
    trajectory's rollouts. A world tool may now be the LangChain tool built over the world function: the sandbox calls it
    as the ToolNode calls production's, with the world first, and answers as it does."""
    environment = {"stock": ["fig", "plum"]}
    world = _stock(environment)

    def take(item: str) -> str:
        return _take_in(world, item)

    def add(n: int) -> str:
        return _add_in(world, n)

    async def peek(item: str) -> str:
        return await _peek_in(world, item)

    def count() -> str:
        return _count_in(world)

    production = {"take": take, "add": add, "peek": peek, "count": count}
    calls = [
        ("take_flagged", {"item": "pear"}),
        ("take_worded", {"item": "fig"}),
        ("take_worded", {"item": "fig"}),  # gone now: the world moved
        ("take_handled", {"item": "pear"}),
        ("add_flagged", {"n": "many"}),
        ("add_worded", {"n": "many"}),
        ("add_handled", {"n": "many"}),
        ("add", {"n": "many"}),  # no handling: create_agent shows LangGraph's message
        ("add_flagged", {"n": "4"}),
        ("peek", {"item": "fig"}),
        ("peek", {"item": "plum"}),
    ]
    graph = create_agent(ScriptedChatModel(script=_script(*calls)), _handling_tools(production))
    agent = record_experience(graph, app="shop", store=tmp_path / "s", environment=lambda inputs, config: environment)
    trajectory = record_once(agent, tmp_path / "s", {"messages": [("user", "Take things.")]}, run_async=True)
    recorded = [(s.observation.content, s.observation.is_error) for s in trajectory.steps if s.action.tool_call]
    assert recorded[:7] == [
        ("refused: pear ✗", True),
        ("took fig; 1 left", False),
        ("that cannot be taken", True),
        ("handled: refused: pear ✗", True),
        ("Tool input validation error", True),
        ("n must be a number", True),
        ("bad input (1 error)", True),
    ]
    assert recorded[7][0].startswith("Error invoking tool 'add' with kwargs {'n': 'many'}") and recorded[7][1]
    assert recorded[8:] == [("total 4", False), ("no fig to peek at", True), ("plum is there", False)]

    functions = {"take": _take_in, "add": _add_in, "peek": _peek_in, "count": _count_in}
    sandbox = PythonSandbox(_stock, tools={t.name: t for t in _handling_tools(functions)}, kind="shop")
    outcome = _replay(trajectory, sandbox, k=3)
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
    sandbox.reset(environment)
    for step in (s for s in trajectory.steps if s.action.tool_call):
        got = sandbox.execute(step.action.tool_call)
        assert (got.content, got.is_error) == (step.observation.content, step.observation.is_error)
    assert sandbox.world == {"stock": ["plum"], "total": 4}
    sandbox.close()
    check_sandbox(  # an argument the tool does not take is dropped, as LangChain drops it in production: a wrong type is bad
        lambda: PythonSandbox(_stock, tools={t.name: t for t in _handling_tools(functions)}),
        environment=environment,
        mutate=ToolCall(id="m", name="take_flagged", arguments={"item": "fig"}),
        read=ToolCall(id="r", name="count", arguments={}),
        bad_calls=[ToolCall(id="b", name="add", arguments={"n": "many"})],
    )


def test_plain_world_functions_keep_the_sandboxs_format_error() -> None:
    """A plain function has no error handling of its own: its exception is the sandbox's ``format_error``'s text."""
    call = ToolCall(id="c1", name="take", arguments={"item": "pear"})
    for options, text in (({}, "Error: ToolException: refused: pear ✗"), ({"format_error": str}, "refused: pear ✗")):
        sandbox = PythonSandbox(_stock, tools={"take": _take_in}, **options)
        sandbox.reset({"stock": []})
        got = sandbox.execute(call)
        assert (got.content, got.is_error) == (text, True)
        sandbox.close()


def _world_place(world: dict[str, Any], item: str, address: Address, color: Color = Color.red, quantity: int = 1) -> str:
    world[item] = world.get(item, 0) - quantity
    return f"{quantity} {color.value} {item} to {address.city}; {world[item]} left"


def test_world_tools_get_the_arguments_a_langchain_tool_gives_its_function(tmp_path: Path) -> None:
    """A world tool with the production tool's signature gets the model's arguments as LangChain's ``@tool`` gives them:
    validated by the schema built from the signature. Before, it got the raw JSON: quantity '2' stayed a string
    (TypeError), the address a dict and the color a str ('str' object has no attribute 'value'), so the expert's step
    was a fidelity error and the rollouts held errors production never gives; a call missing an argument gave a
    TypeError instead of the message create_agent shows."""
    stock = {"pear": 9}

    @tool
    def place(item: str, address: Address, color: Color = Color.red, quantity: int = 1) -> str:
        """Send an item."""
        stock[item] = stock.get(item, 0) - quantity
        return f"{quantity} {color.value} {item} to {address.city}; {stock[item]} left"

    calls = [
        ("place", {"item": "pear", "address": {"city": "Oslo"}, "color": "blue", "quantity": "2"}),
        ("place", {"item": "pear", "address": {"town": "Oslo"}}),
    ]
    graph = create_agent(ScriptedChatModel(script=_script(*calls)), [place])
    trajectory = record_once(record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", {"messages": [("user", "pears?")]})
    recorded = _recorded(trajectory)
    assert recorded[0] == "2 blue pear to Oslo; 7 left" and recorded[1].startswith("Error invoking tool 'place'")

    sandbox = PythonSandbox(lambda environment: dict(environment or {"pear": 9}), tools={"place": _world_place})
    outcome = _replay(trajectory, sandbox, k=3)
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
    assert not [r for r in outcome.rollouts if "has no attribute" in r.observation.content]
    sandbox.close()


class _Unprintable:
    """A tool's result that neither JSON nor ``str()`` can write (its ``__str__`` raises)."""

    def __str__(self) -> str:
        raise RuntimeError("str exploded")


def test_a_result_neither_json_nor_str_can_write_is_an_error_observation() -> None:
    """LangGraph's ToolNode makes such a result an error message in production; before, the sandbox let the exception
    out and the trajectory's replay failed, again at every retry (only RecursionError and ValueError were caught)."""
    sandbox = PythonSandbox(lambda env: {}, tools={"odd": lambda world: _Unprintable()})
    sandbox.reset({})
    got = sandbox.execute(ToolCall(id="c1", name="odd", arguments={}))
    sandbox.close()
    assert (got.content, got.is_error) == ("Error: RuntimeError: str exploded", True)
