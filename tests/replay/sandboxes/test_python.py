"""The in-process sandbox: exact branching by deep copy, tool failures as observations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import EnvironmentUnavailableError, SandboxError
from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.protocol import Sandbox
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.replay.sandboxes.registry import build_sandbox, sandbox_factory


@dataclass
class Shop:
    stock: dict[str, int]
    orders: list[dict[str, Any]] = field(default_factory=list)


def build(environment: dict[str, Any] | None) -> Shop:
    if not environment or "stock" not in environment:
        raise EnvironmentUnavailableError("shop needs {'stock': {...}}")
    return Shop(stock=dict(environment["stock"]))


def order_item(shop: Shop, item: str, quantity: int = 1) -> dict[str, Any]:
    if shop.stock.get(item, 0) < quantity:
        raise ValueError(f"only {shop.stock.get(item, 0)} {item} left")
    shop.stock[item] -= quantity
    shop.orders.append({"item": item, "quantity": quantity})
    return {"ordered": item, "left": shop.stock[item]}


def check_stock(shop: Shop, item: str) -> int:
    return shop.stock.get(item, 0)


def make() -> PythonSandbox:
    return PythonSandbox(build, tools={"order_item": order_item, "check_stock": check_stock}, read_only_tools={"now": lambda: "12:00"})


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id="c", name=name, arguments=arguments)


def test_it_satisfies_the_protocol_and_formats_results() -> None:
    sandbox = make()
    assert isinstance(sandbox, Sandbox)
    sandbox.reset({"stock": {"apple": 2}})
    assert sandbox.execute(call("order_item", item="apple")).content == '{"ordered": "apple", "left": 1}'
    assert sandbox.execute(call("check_stock", item="apple")).content == "1"
    assert sandbox.execute(call("now")).content == "12:00"
    assert sandbox.covers("now") and not sandbox.covers("send_email")


def test_snapshot_and_restore_branch_exactly_and_repeatably() -> None:
    sandbox = make()
    sandbox.reset({"stock": {"apple": 3}})
    snapshot = sandbox.snapshot()
    for _ in range(3):
        sandbox.restore(snapshot)
        sandbox.execute(call("order_item", item="apple", quantity=2))
        assert sandbox.world.stock["apple"] == 1 and len(sandbox.world.orders) == 1
    sandbox.restore(snapshot)
    assert sandbox.world.stock["apple"] == 3 and sandbox.world.orders == []


def test_tool_failures_and_bad_arguments_are_error_observations() -> None:
    sandbox = make()
    sandbox.reset({"stock": {"apple": 0}})
    empty = sandbox.execute(call("order_item", item="apple"))
    assert empty.is_error and empty.content == "Error: ValueError: only 0 apple left"
    missing = sandbox.execute(call("order_item", colour="red"))  # as a LangChain tool's schema refuses it
    assert missing.is_error and missing.content.startswith("Error invoking tool 'order_item' with kwargs {'colour': 'red'}")
    assert "item: Field required" in missing.content
    unknown = sandbox.execute(call("send_email", to="x"))
    assert unknown.is_error and "not available" in unknown.content


def test_an_argument_the_function_does_not_take_is_dropped_as_the_production_tool_drops_it() -> None:
    """A model that adds an argument the tool does not take (``colour``) got the tool's answer in production: LangChain's
    ``@tool`` drops it. The world function gets the call without it too (it raised ``TypeError``, so the expert's own
    call was a fidelity error and every later branch of its trajectory was lost)."""
    from langchain_core.tools import tool

    production_shop = build({"stock": {"apple": 3}})

    @tool
    def production_order_item(item: str, quantity: int = 1) -> dict[str, Any]:
        """Order an item."""
        return order_item(production_shop, item, quantity)

    in_production = production_order_item.invoke({"item": "apple", "quantity": "2", "colour": "red"})
    sandbox = make()
    sandbox.reset({"stock": {"apple": 3}})
    replayed = sandbox.execute(call("order_item", item="apple", quantity="2", colour="red"))
    assert not replayed.is_error and replayed.content == '{"ordered": "apple", "left": 1}'
    assert in_production == {"ordered": "apple", "left": 1} and sandbox.world == production_shop
    # a function taking **kwargs gets every argument, as a LangChain tool over it does
    sandbox = PythonSandbox(build, tools={"note": lambda shop, **extra: sorted(extra)})
    sandbox.reset({"stock": {}})
    assert sandbox.execute(call("note", colour="red", size=2)).content == '["colour", "size"]'


def test_environment_problems_and_misuse_are_clear_errors() -> None:
    sandbox = make()
    with pytest.raises(SandboxError, match="call reset"):
        sandbox.execute(call("check_stock", item="a"))
    with pytest.raises(EnvironmentUnavailableError, match="needs"):
        sandbox.reset(None)
    crashing = PythonSandbox(lambda env: 1 / 0, tools={})
    with pytest.raises(EnvironmentUnavailableError, match="ZeroDivisionError"):
        crashing.reset({})
    with pytest.raises(SandboxError, match="both"):
        PythonSandbox(build, tools={"now": check_stock}, read_only_tools={"now": lambda: 1})


def test_a_user_sandbox_is_named_by_module_and_factory() -> None:
    sandbox = build_sandbox("tests.replay.sandboxes.test_python:make")
    assert isinstance(sandbox, PythonSandbox)
    assert sandbox_factory("tests.replay.sandboxes.test_python:make")().covers("order_item")
    with pytest.raises(SandboxError, match="has no attribute"):
        build_sandbox("tests.replay.sandboxes.test_python:nope")
    with pytest.raises(SandboxError, match="Cannot import"):
        build_sandbox("no_such_module_xyz:make")
    with pytest.raises(SandboxError, match="isolation"):
        sandbox_factory("bfcl", isolation="docker")


def cli_tool(shop: Shop, flags: list[str]) -> str:
    """A tool that wraps a command line: argparse exits (SystemExit) on arguments it does not know."""
    import argparse

    parser = argparse.ArgumentParser(prog="restock", exit_on_error=False)
    parser.add_argument("--item", required=True)
    options = parser.parse_args(flags)
    return f"restocked {options.item}"


def quitting_tool(shop: Shop) -> str:
    raise SystemExit(3)


def test_a_tool_that_exits_is_an_error_observation_not_the_end_of_the_replay(capsys: pytest.CaptureFixture[str]) -> None:
    sandbox = PythonSandbox(build, tools={"restock": cli_tool, "quit": quitting_tool})
    sandbox.reset({"stock": {"apple": 1}})
    assert sandbox.execute(call("restock", flags=["--item", "apple"])).content == "restocked apple"
    bad = sandbox.execute(call("restock", flags=["--colour", "red"]))  # argparse prints usage and calls sys.exit(2)
    assert bad.is_error and bad.content == "Error: SystemExit: 2"
    exited = sandbox.execute(call("quit"))
    assert exited.is_error and exited.content == "Error: SystemExit: 3"
    assert sandbox.execute(call("check_stock", item="apple")).is_error  # not listed: the sandbox still answers
    capsys.readouterr()


def test_a_keyboard_interrupt_in_a_tool_still_stops_the_replay() -> None:
    def interrupted(shop: Shop) -> str:
        raise KeyboardInterrupt

    sandbox = PythonSandbox(build, tools={"wait": interrupted})
    sandbox.reset({"stock": {}})
    with pytest.raises(KeyboardInterrupt):
        sandbox.execute(call("wait"))


class Ledger:
    """A world that holds an open connection: it neither pickles nor deep-copies."""

    def __init__(self) -> None:
        import sqlite3

        self.rows = {"apple": 1}
        self.db = sqlite3.connect(":memory:")


def test_a_world_that_cannot_be_copied_is_a_clear_sandbox_error() -> None:
    sandbox = PythonSandbox(
        lambda environment: {"stock": {"apple": 1}, "ledger": Ledger()}, tools={"check_stock": check_stock}, kind="ledger"
    )
    sandbox.reset({})
    with pytest.raises(SandboxError) as raised:
        sandbox.snapshot()
    message = str(raised.value)
    assert "ledger sandbox" in message and "cannot snapshot its world" in message
    assert "world['ledger'].db" in message and "sqlite3.Connection" in message  # where the culprit is
    assert "__getstate__" in message and "docs/sandboxes.md" in message  # how to fix it
    sandbox.world["ledger"].db.close()


def test_a_tool_returning_content_blocks_replays_as_capture_recorded_it_never_with_the_bytes(tmp_path: Path) -> None:
    """LangGraph's ToolNode keeps a tool's list of content blocks as the ToolMessage's content, and capture stores its
    text (an image as its placeholder); a list with plain strings becomes its JSON. The sandbox answered the blocks'
    JSON, base64 included: every expert step was a fidelity mismatch and every rollout held the image's bytes."""
    import base64

    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.replay.policies.mutate import MutationPolicy
    from ee_middleware.replay.policies.proposer import Proposer
    from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
    from ee_middleware.testing import ScriptedChatModel, tool_call
    from tests.conftest import record_once

    png = base64.b64encode(bytes(range(256)) * 8).decode("ascii")

    def chart(item: str) -> list:
        """A chart of an item's stock."""
        return [{"type": "text", "text": f"stock of {item}:"}, {"type": "image", "base64": png, "mime_type": "image/png"}]

    def shelves(item: str) -> list:
        """Where an item is shelved."""
        return [f"{item}: aisle 3", "top shelf"]

    script = [
        AIMessage(content="", tool_calls=[tool_call("chart", item="pear")]),
        AIMessage(content="", tool_calls=[tool_call("shelves", item="pear")]),
        AIMessage(content="done"),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [tool(chart), tool(shelves)])
    agent = record_experience(graph, app="shop", store=tmp_path / "store")
    trajectory = record_once(agent, tmp_path / "store", {"messages": [("user", "Where are the pears, and how many?")]})
    recorded = [s.observation.content for s in trajectory.steps if s.action.tool_call]
    assert recorded == ["stock of pear:\n[image: image/png, 2.0 KB]", '["pear: aisle 3", "top shelf"]']

    sandbox = PythonSandbox(lambda environment: {}, tools={}, read_only_tools={"chart": chart, "shelves": shelves})
    outcome = replay_trajectory(trajectory, sandbox, Proposer(MutationPolicy(), k=3), ReplaySettings("blocks", "mutate", k=3))
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
    assert outcome.rollouts and not [r for r in outcome.rollouts if png[:40] in r.observation.content]


def test_a_world_that_cannot_be_rebuilt_names_the_environment_it_was_given(tmp_path: Path) -> None:
    """A SQLite snapshot file recorded as the run's environment is gone: the error names the file, not only sqlite's
    'unable to open database file'."""
    import sqlite3

    def from_snapshot(environment: dict[str, Any] | None) -> Any:
        return sqlite3.connect(f"file:{(environment or {})['db_snapshot']}?mode=ro", uri=True).execute("SELECT 1")

    missing = tmp_path / "snapshots" / "run-42.sqlite"
    sandbox = PythonSandbox(from_snapshot, tools={}, kind="helpdesk")
    with pytest.raises(EnvironmentUnavailableError) as failed:
        sandbox.reset({"db_snapshot": str(missing)})
    message = str(failed.value)
    assert "OperationalError: unable to open database file" in message, message
    assert f'from the environment {{"db_snapshot": "{missing}"}}' in message, message
    # a value the 300-character limit falls in is left out whole (a restored phone number cut to 8 of its digits was no
    # longer one the store's rules redact: tests/replay/sandboxes/test_python_skip_reason_cut.py)
    with pytest.raises(EnvironmentUnavailableError, match=r'from the environment \{"blob": \.\.\. \(cut at 300 characters, before a value'):
        PythonSandbox(lambda env: 1 / 0, tools={}).reset({"blob": "x" * 1000})
    with pytest.raises(EnvironmentUnavailableError, match=r'from the environment \{"id": 7, "blob": \.\.\. \(cut .*\): ZeroDivisionError'):
        PythonSandbox(lambda env: 1 / 0, tools={}).reset({"id": 7, "blob": "x" * 1000})


def test_a_build_function_that_returns_nothing_is_named_at_reset() -> None:
    """Sweep S5: a build that forgot its `return` made every expert call a fidelity error ('NoneType' object has no
    attribute 'stock'); a sandbox of read-only tools alone still builds no world."""
    import pytest

    from ee_middleware.errors import SandboxError

    def build(environment: Any) -> None:
        {"stock": {"apple": 3}}  # noqa: B018 - the missing return

    def stock(world: dict[str, Any], item: str) -> int:
        return world["stock"][item]

    sandbox = PythonSandbox(build, tools={"stock": stock})
    sandbox.reset(None)
    with pytest.raises(SandboxError, match=r"tool 'stock' failed on the world None .*the build function .*build\(\) returned None"):
        sandbox.execute(ToolCall(id="s", name="stock", arguments={"item": "apple"}))
    alone = PythonSandbox(lambda environment: None, {}, read_only_tools={"now": lambda: "12:00"})
    alone.reset(None)
    assert alone.execute(ToolCall(id="n", name="now", arguments={})).content == "12:00"


def _offered(name: str, properties: list[str], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {p: {"type": "string"} for p in properties}, "required": required}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def test_a_tool_whose_arguments_changed_since_the_recording_is_warned_of_once(caplog: pytest.LogCaptureFixture) -> None:
    """``get_invoice``'s parameter was renamed (``order_id`` -> ``invoice_id``) after the trajectories were recorded: every
    call proposed from the recorded schema now fails, errors production never gave, which IWM would teach as the tool's
    answers. Nothing said so. A tool that takes what the recording offered, and one taking ``**kwargs``, say nothing."""

    def get_invoice(shop: Shop, invoice_id: str) -> str:
        return f"invoice {invoice_id}"

    def store_note(shop: Shop, _raw: str) -> str:  # (a name pydantic keeps private: no schema field, still taken)
        return f"stored {_raw}"

    tools = {"get_invoice": get_invoice, "order_item": order_item, "note": lambda shop, **extra: "ok", "store_note": store_note}
    sandbox = PythonSandbox(build, tools=tools)
    sandbox.reset({"stock": {"apple": 1}})
    offered = [
        _offered("get_invoice", ["order_id"], ["order_id"]),
        _offered("order_item", ["item", "quantity"], ["item"]),
        _offered("note", ["text"], ["text"]),
        _offered("store_note", ["_raw"], ["_raw"]),
    ]
    with caplog.at_level("WARNING", logger="ee_middleware.replay.sandboxes.python"):
        sandbox.check_offered_tools(offered)
        sandbox.check_offered_tools(offered)  # (the next trajectory: said once)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "tool 'get_invoice' here requires invoice_id, which the recorded schema never offered" in warning
    assert "does not take order_id, which the recorded schema offers (dropped from every call)" in warning
    assert "the tool changed since these trajectories were recorded" in warning
    missing = sandbox.execute(call("get_invoice", order_id="A-1"))
    assert missing.is_error and "invoice_id: Field required" in missing.content
    assert sandbox.execute(call("store_note", _raw="hi", colour="red")).content == "stored hi"


def test_a_misspelt_outside_world_tool_is_warned_of_with_the_offered_name(caplog: pytest.LogCaptureFixture) -> None:
    sandbox = PythonSandbox(build, tools={"order_item": order_item}, outside_world_tools=["send_emial", "page_oncall"])
    sandbox.reset({"stock": {"apple": 1}})
    offered = [_offered("order_item", ["item"], ["item"]), _offered("send_email", ["to"], ["to"])]
    with caplog.at_level("WARNING", logger="ee_middleware.replay.sandboxes.python"):
        sandbox.check_offered_tools(offered)
        sandbox.check_offered_tools(offered)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "outside_world_tools lists 'send_emial', which no recorded tool is named" in warning
    assert "did you mean 'send_email'?" in warning  # (page_oncall, declared for tools other apps offer, is no misspelling)
