"""The sandbox conformance kit: every built-in sandbox passes it, and it fails sandboxes that break a promise."""

from __future__ import annotations

import copy
import functools
import itertools
import os
import re
import signal
import sqlite3
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from ee_middleware.bfcl.data import MULTI_TURN_CATEGORIES, load_entries
from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.errors import SandboxError
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.replay.sandboxes.registry import sandbox_factory
from ee_middleware.testing import check_sandbox
from tests.replay.sandboxes.counter_world import PYTHON_SANDBOX_FACTORY, TOOLS, CounterSandbox, build_world

COUNTER = {
    "environment": {"counts": {"a": 1, "b": 5}},
    "mutate": ToolCall(id="m", name="add", arguments={"key": "a", "n": 2}),
    "read": [ToolCall(id="r1", name="get", arguments={"key": "a"}), ToolCall(id="r2", name="get", arguments={"key": "b"})],
}


def bfcl_probe(category: str = "multi_turn_base") -> dict[str, Any]:
    """A real BFCL entry: make a folder in the file system, read it back with ``ls``."""
    entry = load_entries(category, limit=1)[0]
    assert "GorillaFileSystem" in entry.involved_classes
    return {
        "environment": entry.environment,
        "mutate": ToolCall(id="m", name="mkdir", arguments={"dir_name": "ee_conformance"}),
        "read": ToolCall(id="r", name="ls", arguments={}),
    }


# --- every built-in sandbox passes ----------------------------------------------------------------------


class Ledger:
    """A world that does not pickle (it holds a lambda), so snapshots take the deep-copy path."""

    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.entries: list[int] = []
        self.fmt = lambda value: f"{value} EUR"


def book(ledger: Ledger, amount: int) -> str:
    ledger.balance += amount
    ledger.entries.append(amount)
    return ledger.fmt(ledger.balance)


def balance(ledger: Ledger) -> str:
    return f"{ledger.fmt(ledger.balance)} after {ledger.entries}"


def make_ledger_sandbox() -> PythonSandbox:
    return PythonSandbox(lambda env: Ledger((env or {})["balance"]), tools={"book": book, "balance": balance})


def test_python_sandbox_passes() -> None:
    check_sandbox(PYTHON_SANDBOX_FACTORY, **COUNTER)


def test_python_sandbox_with_a_world_that_does_not_pickle_passes_in_process_and_fails_the_subprocess_check() -> None:
    """Such a world is deep-copied in process, but --isolation subprocess fails every trajectory on it: the kit passed it
    all the same. Now it says why (PythonSandbox's own message, naming the part of the world): as a warning by default,
    as replay's default isolation runs it in process (b8be00f's failure broke kit tests that passed before the upgrade),
    as a failure with subprocess_isolation=True; and passes it silently when the sandbox is only replayed in process."""
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.testing import SubprocessIsolationWarning

    assert ReplayConfig.model_fields["isolation"].default == "none"
    sandbox = make_ledger_sandbox()
    sandbox.reset({"balance": 1})
    assert not sandbox.snapshot().pickled
    probe = {"environment": {"balance": 10}, "mutate": ToolCall(id="m", name="book", arguments={"amount": 5})}
    read = ToolCall(id="r", name="balance", arguments={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sandbox(make_ledger_sandbox, **probe, read=read, subprocess_isolation=False)
    with pytest.warns(SubprocessIsolationWarning) as warned:
        check_sandbox(make_ledger_sandbox, **probe, read=read)
    [warning] = warned.list
    message = str(warning.message)
    assert "works with replay's default isolation (in process), but not with `ee replay run --isolation subprocess`" in message
    assert "world.fmt is a function" in message and "subprocess_isolation=True" in message, message
    assert warning.filename == __file__, "the warning points at the caller's line"
    with pytest.raises(AssertionError) as failed:
        check_sandbox(make_ledger_sandbox, **probe, read=read, subprocess_isolation=True)
    message = str(failed.value)
    assert "--isolation subprocess" in message and "world.fmt is a function" in message, message
    assert "subprocess_isolation=False" in message, message


def test_subprocess_sandbox_wrapping_a_python_sandbox_passes() -> None:
    check_sandbox(functools.partial(SubprocessSandbox, PYTHON_SANDBOX_FACTORY, timeout_s=30), **COUNTER)


@pytest.mark.parametrize("category", ["multi_turn_base", "multi_turn_long_context"])
def test_bfcl_sandbox_passes(category: str) -> None:
    assert category in MULTI_TURN_CATEGORIES
    check_sandbox(sandbox_factory("bfcl"), **bfcl_probe(category))


def test_bfcl_sandbox_in_a_subprocess_passes() -> None:
    """The path ``ee replay run --sandbox bfcl --isolation subprocess`` takes."""
    check_sandbox(sandbox_factory("bfcl", isolation="subprocess", timeout_s=60), **bfcl_probe())


def test_bfcl_sandbox_passes_with_a_trading_world() -> None:
    entry = next(e for e in load_entries("multi_turn_base") if "TradingBot" in e.involved_classes)
    check_sandbox(
        BFCLSandbox,
        environment=entry.environment,
        mutate=ToolCall(id="m", name="add_to_watchlist", arguments={"stock": "AAPL"}),
        read=ToolCall(id="r", name="get_watchlist", arguments={}),
    )


# --- broken sandboxes fail, naming the broken promise -------------------------------------------------


class ShallowSnapshot(CounterSandbox):
    """Snapshots by reference: the snapshot changes with the world."""

    def snapshot(self) -> dict[str, int]:
        return self.world

    def restore(self, snapshot: dict[str, int]) -> None:
        self.world = snapshot


def _leaky_build(environment: dict[str, Any] | None) -> dict[str, int]:
    return (environment or {})["counts"]  # the environment's own dict: tools change the environment


class StickyAfterClose(PythonSandbox):
    def close(self) -> None:
        pass


class CloseOnlyOnce(PythonSandbox):
    def close(self) -> None:
        if getattr(self, "_was_closed", False):
            raise RuntimeError("already closed")
        self._was_closed = True
        super().close()


class StaleCovers(PythonSandbox):
    """Caches ``covers`` forever, though what it covers depends on the environment (as the subprocess sandbox once did)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache: dict[str, bool] = {}
        self._available: set[str] = set()

    def reset(self, environment: dict[str, Any] | None) -> None:
        super().reset(environment)
        self._available = set(TOOLS)

    def covers(self, tool_name: str) -> bool:
        return self._cache.setdefault(tool_name, tool_name in self._available)


class CoversEverything(PythonSandbox):
    def covers(self, tool_name: str) -> bool:
        return True


class TagsTheCall(PythonSandbox):
    """Marks the arguments it was given, then runs a copy without the mark (the sweep's TagsCallArgs)."""

    def execute(self, call: ToolCall) -> Observation:
        call.arguments["_sandbox_seen"] = True
        return super().execute(call.model_copy(update={"arguments": {k: v for k, v in call.arguments.items() if k != "_sandbox_seen"}}))


class TakesItsDefault(PythonSandbox):
    """Pops an argument it treats as optional out of the caller's call (the sweep's MutatesCallArgs)."""

    def execute(self, call: ToolCall) -> Observation:
        if call.name != "add":
            return super().execute(call)
        n = call.arguments.pop("n", 1)
        return super().execute(call.model_copy(update={"arguments": {**call.arguments, "n": n}}))


class RestoreFailsOnItsSecondUse(PythonSandbox):
    def restore(self, snapshot: Any) -> None:
        self._restores = getattr(self, "_restores", 0) + 1
        if self._restores == 2:
            raise RuntimeError("restore exploded: disk gone")
        super().restore(snapshot)


class SnapshotRaises(PythonSandbox):
    def snapshot(self) -> Any:
        raise OSError("no space left for the snapshot")


_ticks = itertools.count()


def add_with_a_ticket(world: dict[str, int], key: str, n: int = 1) -> str:
    world[key] = world.get(key, 0) + n
    return f"{world[key]} (ticket {next(_ticks)})"


def add_counting_extras(world: dict[str, int], key: str, n: int = 1, **extra: Any) -> str:
    """Takes any argument (``**extra``) and counts each: an argument no tool takes changes the world."""
    world[key] = world.get(key, 0) + n + len(extra)
    return str(world[key])


def add_ignoring_arguments(world: dict[str, int], **ignored: Any) -> str:
    """Takes any argument and uses none: every call answers as the expert's did."""
    world["a"] = world.get("a", 0) + 2
    return str(world["a"])


def python_variant(cls: Callable[..., PythonSandbox], build: Callable[..., Any] = build_world, **tools: Any) -> Callable[[], PythonSandbox]:
    return functools.partial(cls, build, tools={**TOOLS, **tools})


@pytest.mark.parametrize(
    ("make", "probe", "message"),
    [
        (ShallowSnapshot, COUNTER, r"restore\(\) must put the world back exactly"),
        (CounterSandbox, COUNTER, r"execute\(add\) raised TypeError.*must be an error observation"),
        (
            python_variant(PythonSandbox, add=add_counting_extras),
            COUNTER,
            r"argument it does not take \(ee_conformance_unexpected_argument\) must give an error observation, or be "
            r"answered as the call without it",
        ),
        (
            python_variant(PythonSandbox, add=add_ignoring_arguments),
            COUNTER,
            r"add answered the call without its arguments as the call with them .* seems to ignore the call's arguments",
        ),
        (
            python_variant(functools.partial(PythonSandbox, journal=False), _leaky_build),
            COUNTER,
            r"reset\(\) must rebuild the world at step 0",
        ),
        (python_variant(StickyAfterClose), COUNTER, r"execute\(\) after close\(\) must raise SandboxError"),
        (python_variant(CloseOnlyOnce), COUNTER, r"close\(\) must be idempotent"),
        (python_variant(StaleCovers), COUNTER, r"covers\('add'\) must be true after a reset"),
        (python_variant(CoversEverything), COUNTER, r"covers\('ee_conformance_no_such_tool'\) must be false"),
        (
            python_variant(PythonSandbox, add=add_with_a_ticket),
            COUNTER,
            "the same call from the same snapshot must give the same observation",
        ),
        (
            PYTHON_SANDBOX_FACTORY,
            {**COUNTER, "read": ToolCall(id="r", name="add", arguments={"key": "a"})},
            "the read calls must not change anything",
        ),
        (
            PYTHON_SANDBOX_FACTORY,
            {**COUNTER, "mutate": ToolCall(id="m", name="add", arguments={"key": "zzz"})},
            "changed nothing the read calls show",
        ),
        (python_variant(TagsTheCall), COUNTER, r"execute\(get\) changed the call it was given: .*'_sandbox_seen': True"),
        (python_variant(TakesItsDefault), COUNTER, r"execute\(add\) changed the call it was given: .*must leave its call as it is"),
        (
            python_variant(RestoreFailsOnItsSecondUse),
            COUNTER,
            r"RestoreFailsOnItsSecondUse\.restore\(\) raised RuntimeError: restore exploded: disk gone \(the kit's check .*replay fails",
        ),
        (
            python_variant(SnapshotRaises),
            COUNTER,
            r"SnapshotRaises\.snapshot\(\) raised OSError: no space left for the snapshot \(the kit's",
        ),
    ],
    ids=[
        "shallow-snapshot",
        "tool-exceptions-escape",
        "extra-argument-changes-the-world",
        "arguments-ignored",
        "world-shares-the-environment",
        "usable-after-close",
        "close-not-idempotent",
        "stale-covers",
        "covers-everything",
        "nondeterministic-tool",
        "read-call-mutates",
        "mutating-call-shows-nothing",
        "execute-marks-the-callers-arguments",
        "execute-pops-an-argument",
        "restore-raises",
        "snapshot-raises",
    ],
)
def test_a_broken_sandbox_fails_with_the_broken_promise(make: Callable[[], Any], probe: dict[str, Any], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_sandbox(make, **copy.deepcopy(probe))


# --- a failure shows what the reads saw and names the usual cause -----------------------------------------

_OUTSIDE = {"a": 0}


def add_outside_the_world(world: dict[str, int], key: str, n: int = 1) -> int:
    _OUTSIDE[key] = _OUTSIDE.get(key, 0) + n  # module-level state: no snapshot or reset puts it back
    return _OUTSIDE[key]


def get_outside_the_world(world: dict[str, int], key: str) -> int:
    return _OUTSIDE.get(key, 0)


def get_with_the_time(world: dict[str, int], key: str) -> str:
    return f"{world.get(key, 0)} at {next(_ticks)}"  # as a tool that shows time.time() would


@pytest.mark.parametrize(
    ("tools", "probe", "shows", "cause"),
    [
        (
            {"add": add_outside_the_world, "get": get_outside_the_world},
            {**COUNTER, "read": ToolCall(id="r", name="get", arguments={"key": "a"})},
            r"get\(key='a'\) showed '\d+', expected '\d+'",
            "state outside the world",
        ),
        (
            {"get": get_with_the_time},
            COUNTER,
            r"get\(key='a'\) showed '1 at \d+', expected '1 at \d+'",
            "the clock, random numbers",
        ),
        (
            {"add": add_with_a_ticket},
            COUNTER,
            r"add\(key='a', n=2\) gave '3 \(ticket \d+\)', then '3 \(ticket \d+\)'",
            "the clock, random numbers",
        ),
    ],
    ids=["module-level-state", "read-shows-the-clock", "call-returns-a-ticket"],
)
def test_a_failure_shows_the_observations_and_the_usual_cause(tools: dict[str, Any], probe: dict[str, Any], shows: str, cause: str) -> None:
    with pytest.raises(AssertionError) as failed:
        check_sandbox(python_variant(PythonSandbox, **tools), **copy.deepcopy(probe))
    message = str(failed.value)
    assert re.search(shows, message), message
    assert cause in message, message


# --- a SQLite world, and mistakes a user makes with the kit ---------------------------------------------------


class OrdersWorld:
    """An in-memory SQLite database that pickles as its own bytes, as docs/sandboxes.md's database worlds do."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def __getstate__(self) -> bytes:
        return self.db.serialize()

    def __setstate__(self, state: bytes) -> None:
        import sqlite3

        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.deserialize(state)


def build_orders(environment: dict[str, Any] | None) -> OrdersWorld:
    import sqlite3

    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT)")
    db.executemany("INSERT INTO orders VALUES (?, ?)", [(o, "pending") for o in (environment or {})["orders"]])
    db.commit()
    return OrdersWorld(db)


def cancel_order(world: OrdersWorld, order_id: str) -> str:
    world.db.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order_id,))
    world.db.commit()
    return f"cancelled {order_id}"


def list_orders_as_rows(world: OrdersWorld) -> list[Any]:
    """Returns the cursor's sqlite3.Row objects, not plain data: their text is a repr with a memory address."""
    import sqlite3

    world.db.row_factory = sqlite3.Row
    try:
        return world.db.execute("SELECT id, status FROM orders ORDER BY id").fetchall()
    finally:
        world.db.row_factory = None


def list_orders(world: OrdersWorld) -> list[dict[str, str]]:
    return [{"id": i, "status": s} for i, s in world.db.execute("SELECT id, status FROM orders ORDER BY id")]


ORDERS = {
    "environment": {"orders": ["O-1", "O-2"]},
    "mutate": ToolCall(id="m", name="cancel_order", arguments={"order_id": "O-1"}),
    "read": ToolCall(id="r", name="list_orders", arguments={}),
}


def make_orders_sandbox(**tools: Any) -> PythonSandbox:
    return PythonSandbox(build_orders, tools={"cancel_order": cancel_order, "list_orders": list_orders, **tools})


def test_a_sqlite_world_that_pickles_as_its_bytes_passes() -> None:
    check_sandbox(make_orders_sandbox, **copy.deepcopy(ORDERS))


class RawOrdersWorld:
    """The orders world without __getstate__/__setstate__: a raw sqlite3 connection, which cannot be pickled."""

    def __init__(self, db: Any) -> None:
        self.db = db


def test_a_world_holding_a_raw_connection_fails_with_the_sandboxs_whole_advice() -> None:
    """The kit cut the sandbox's error at 300 characters, in the middle of its fix ('...open connections, files and
    sockets inside the…'), so the __getstate__/__setstate__ advice that `ee replay run` shows never reached the kit's
    user (a user-journey sweep)."""

    def make() -> PythonSandbox:
        return PythonSandbox(
            lambda environment: RawOrdersWorld(build_orders(environment).db),
            tools={"cancel_order": cancel_order, "list_orders": list_orders},
        )

    with pytest.raises(AssertionError) as failed:
        check_sandbox(make, **copy.deepcopy(ORDERS))
    message = str(failed.value)
    assert "PythonSandbox.snapshot() raised SandboxError" in message, message
    assert "__getstate__/__setstate__" in message and "give ..." not in message, message


def test_a_tool_returning_objects_without_json_is_named_not_blamed_on_the_clock() -> None:
    """sqlite3.Row objects become their repr, with a memory address that differs from call to call: the failure says so
    and how to fix it, instead of pointing at the clock and random numbers."""
    with pytest.raises(AssertionError) as failed:
        check_sandbox(functools.partial(make_orders_sandbox, list_orders=list_orders_as_rows), **copy.deepcopy(ORDERS))
    message = str(failed.value)
    assert "<sqlite3.Row object at 0x" in message, message
    assert "sqlite3.Row has no JSON form" in message, message
    assert "return plain data" in message, message
    assert "the clock" not in message, message


def test_a_call_to_a_tool_the_sandbox_lacks_says_so_and_how_to_add_it() -> None:
    probe = {**copy.deepcopy(ORDERS), "mutate": ToolCall(id="m", name="refund_order", arguments={"order_id": "O-1"})}
    with pytest.raises(AssertionError) as failed:
        check_sandbox(make_orders_sandbox, **probe)
    message = str(failed.value)
    assert "covers('refund_order') must be true after a reset" in message, message
    assert "add refund_order to the sandbox" in message, message
    assert "pick one that works" not in message, message


def test_the_kit_takes_a_sandbox_spec_as_ee_replay_run_does() -> None:
    check_sandbox("tests.testing.test_sandbox_conformance:make_orders_sandbox", **copy.deepcopy(ORDERS))


def test_a_sandbox_instead_of_its_factory_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"a function that builds a fresh sandbox .*check_sandbox\(make_sandbox, \.\.\.\)"):
        check_sandbox(make_orders_sandbox(), **copy.deepcopy(ORDERS))


# --- snapshots under --isolation subprocess ------------------------------------------------------------------


class SqlShopSandbox:
    """A sandbox written straight against the protocol: the world is an in-memory SQLite database, a snapshot a backup
    copy of it (a second connection, which does not pickle) or, with ``as_bytes``, the database's own bytes."""

    kind = "sql-shop"

    def __init__(self, as_bytes: bool = False) -> None:
        self.as_bytes = as_bytes
        self.db: sqlite3.Connection | None = None
        self.closed = False

    def _open(self) -> sqlite3.Connection:
        if self.closed:
            raise SandboxError("the sql-shop sandbox is closed")
        assert self.db is not None
        return self.db

    def covers(self, tool_name: str) -> bool:
        return tool_name in ("order_item", "check_stock")

    def reset(self, environment: dict[str, Any] | None) -> None:
        if self.closed:
            raise SandboxError("the sql-shop sandbox is closed")
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        self.db.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, n INT)")
        self.db.executemany("INSERT INTO stock VALUES (?, ?)", list((environment or {})["stock"].items()))

    def execute(self, call: ToolCall) -> Observation:
        db = self._open()
        if call.name not in ("order_item", "check_stock") or set(call.arguments) != {"item"}:
            return Observation(content=f"Error: bad call {call.name}({call.arguments})", is_error=True)
        [n] = db.execute("SELECT n FROM stock WHERE item = ?", (call.arguments["item"],)).fetchone() or [0]
        if call.name == "check_stock":
            return Observation(content=str(n))
        if n < 1:
            return Observation(content=f"Error: no {call.arguments['item']} left", is_error=True)
        db.execute("UPDATE stock SET n = n - 1 WHERE item = ?", (call.arguments["item"],))
        return Observation(content=f"ordered 1 {call.arguments['item']}")

    def snapshot(self) -> Any:
        db = self._open()
        if self.as_bytes:
            return db.serialize()
        copy_ = sqlite3.connect(":memory:", isolation_level=None)
        db.backup(copy_)
        return copy_

    def restore(self, snapshot: Any) -> None:
        self._open()
        fresh = sqlite3.connect(":memory:", isolation_level=None)
        if isinstance(snapshot, bytes):
            fresh.deserialize(snapshot)
        else:
            snapshot.backup(fresh)
        self.db = fresh

    def close(self) -> None:
        self.closed = True


SHOP = {
    "environment": {"stock": {"apple": 3}},
    "mutate": ToolCall(id="m", name="order_item", arguments={"item": "apple"}),
    "read": ToolCall(id="r", name="check_stock", arguments={"item": "apple"}),
}


def test_a_protocol_sandbox_whose_snapshot_does_not_pickle_fails_the_kit_as_it_fails_under_subprocess_isolation() -> None:
    """The kit passed a sandbox whose snapshot is a sqlite3.Connection, and ee replay run --isolation subprocess then failed
    every trajectory ('snapshot (Connection) cannot be pickled'). The real SubprocessSandbox fails on it; so does the kit,
    saying what to do; in process only, it passes; with snapshots as the database's bytes it passes both ways."""
    with pytest.raises(
        AssertionError, match=r"snapshot\(\) raised SandboxError: .*snapshot \(Connection\) cannot be pickled"
    ):  # what replay meets
        check_sandbox(functools.partial(SubprocessSandbox, SqlShopSandbox, timeout_s=30), **copy.deepcopy(SHOP), subprocess_isolation=False)
    with pytest.raises(AssertionError) as failed:
        check_sandbox(SqlShopSandbox, **copy.deepcopy(SHOP), subprocess_isolation=True)
    message = str(failed.value)
    assert "the snapshot (Connection) cannot be pickled, which --isolation subprocess needs" in message, message
    assert "subprocess_isolation=False" in message and "serialize()" in message, message
    with pytest.warns(UserWarning, match=r"the snapshot \(Connection\) cannot be pickled.*subprocess_isolation=True"):
        check_sandbox(SqlShopSandbox, **copy.deepcopy(SHOP))  # replay's default isolation: in process, where it works
    check_sandbox(SqlShopSandbox, **copy.deepcopy(SHOP), subprocess_isolation=False)
    as_bytes = functools.partial(SqlShopSandbox, as_bytes=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sandbox(as_bytes, **copy.deepcopy(SHOP))
        check_sandbox(as_bytes, **copy.deepcopy(SHOP), subprocess_isolation=True)
    check_sandbox(functools.partial(SubprocessSandbox, as_bytes, timeout_s=30), **copy.deepcopy(SHOP))


class _Handle:
    """A snapshot that is only a key: it pickles, but its copy is another object."""


class KeyedSnapshotSandbox(SqlShopSandbox):
    """Keeps its snapshots itself and hands out keys, found by identity: an unpickled key finds nothing."""

    def __init__(self) -> None:
        super().__init__(as_bytes=True)
        self.kept: dict[_Handle, bytes] = {}

    def snapshot(self) -> Any:
        handle = _Handle()
        self.kept[handle] = super().snapshot()
        return handle

    def restore(self, snapshot: Any) -> None:
        if snapshot not in self.kept:
            raise SandboxError("unknown snapshot")
        super().restore(self.kept[snapshot])


def test_a_snapshot_that_pickles_but_whose_copy_restores_nothing_fails_the_kit() -> None:
    with pytest.raises(AssertionError, match=r"restore\(\) of an unpickled copy of the snapshot taken at step 0 .* raised SandboxError"):
        check_sandbox(KeyedSnapshotSandbox, **copy.deepcopy(SHOP), subprocess_isolation=True)
    with pytest.warns(UserWarning, match=r"restore\(\) of an unpickled copy of the snapshot taken at step 0"):
        check_sandbox(KeyedSnapshotSandbox, **copy.deepcopy(SHOP))
    check_sandbox(KeyedSnapshotSandbox, **copy.deepcopy(SHOP), subprocess_isolation=False)


class IntKeySnapshots(SqlShopSandbox):
    """Keeps its snapshots itself and hands out numbers as keys: a key pickles, and its unpickled copy finds the world
    again in this sandbox, but not in a fresh one (a restarted --isolation subprocess child)."""

    def __init__(self) -> None:
        super().__init__(as_bytes=True)
        self.kept: dict[int, bytes] = {}

    def snapshot(self) -> Any:
        self.kept[len(self.kept)] = super().snapshot()
        return len(self.kept) - 1

    def restore(self, snapshot: Any) -> None:
        super().restore(self.kept[snapshot])


def test_a_snapshot_that_is_a_key_into_the_sandbox_fails_as_a_restarted_subprocess_child_fails_it() -> None:
    """The kit restored the unpickled copy into the same sandbox, which still held its dict of snapshots, so a key
    passed; ee replay run --isolation subprocess then failed after its first restart (a tool timeout, a crash, the
    memory limit), whose fresh child knows no key. The kit now restores the copy into a fresh sandbox from the factory
    (after reset(environment)), as the restarted child does, and fails it with its advice."""
    sandbox = SubprocessSandbox(IntKeySnapshots, timeout_s=30)  # what replay meets
    try:
        sandbox.reset(SHOP["environment"])
        sandbox.execute(SHOP["mutate"])
        sandbox.restore(sandbox.snapshot())  # the one to rebuild after a restart
        os.kill(sandbox.pid, signal.SIGKILL)  # as a tool timeout or the memory limit ends the child
        with pytest.raises(SandboxError, match=r"could not be rebuilt afterwards: KeyError"):
            sandbox.execute(SHOP["read"])
    finally:
        sandbox.close()
    with pytest.raises(AssertionError) as failed:
        check_sandbox(IntKeySnapshots, **copy.deepcopy(SHOP), subprocess_isolation=True)
    message = str(failed.value)
    assert "restore() of an unpickled copy of the snapshot taken at step 0, in a fresh sandbox from the factory after " in message, message
    assert "raised KeyError: 0" in message, message
    assert "A snapshot must hold the world itself, not a key that only the sandbox's own copy of it finds" in message, message
    with pytest.warns(UserWarning, match=r"in a fresh sandbox .* raised KeyError"):
        check_sandbox(IntKeySnapshots, **copy.deepcopy(SHOP))
    check_sandbox(IntKeySnapshots, **copy.deepcopy(SHOP), subprocess_isolation=False)  # in process, where it works


# --- a restore or a snapshot that shares the world is named as the cause ---------------------------------------


class ShelfSandbox:
    """A sandbox written straight against the protocol over a nested dict world (stock per item, a list of orders), as
    a user writes one: snapshot() and restore() copy it deeply. The variants below get one of them wrong."""

    kind = "shelf"

    def __init__(self) -> None:
        self.world: dict[str, Any] = {}
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise SandboxError("the shelf sandbox is closed")

    def covers(self, tool_name: str) -> bool:
        return tool_name in ("order_item", "check_stock", "list_orders")

    def reset(self, environment: dict[str, Any] | None) -> None:
        self._check_open()
        self.world = {"stock": dict((environment or {})["stock"]), "orders": []}

    def execute(self, call: ToolCall) -> Observation:
        self._check_open()
        if not self.covers(call.name) or set(call.arguments) - {"item"}:
            return Observation(content=f"Error: bad call {call.name}({call.arguments})", is_error=True)
        item = call.arguments.get("item", "")
        if call.name == "check_stock":
            return Observation(content=str(self.world["stock"].get(item, 0)))
        if call.name == "list_orders":
            return Observation(content=", ".join(self.world["orders"]) or "none")
        if self.world["stock"].get(item, 0) < 1:
            return Observation(content=f"Error: no {item} left", is_error=True)
        self.world["stock"][item] -= 1
        self.world["orders"].append(item)
        return Observation(content=f"ordered 1 {item}")

    def snapshot(self) -> Any:
        self._check_open()
        return copy.deepcopy(self.world)

    def restore(self, snapshot: Any) -> None:
        self._check_open()
        self.world = copy.deepcopy(snapshot)

    def close(self) -> None:
        self.closed = True


class RestoreHandsOverTheSnapshot(ShelfSandbox):
    def restore(self, snapshot: Any) -> None:
        self._check_open()
        self.world = snapshot  # the next branch writes into the snapshot


class RestoreCopiesShallowly(ShelfSandbox):
    def restore(self, snapshot: Any) -> None:
        self._check_open()
        self.world = dict(snapshot)  # the stock dict and the orders list are the snapshot's own


class SnapshotIsTheWorld(ShelfSandbox):
    def snapshot(self) -> Any:
        self._check_open()
        return self.world


class SnapshotCopiesShallowly(ShelfSandbox):
    def snapshot(self) -> Any:
        self._check_open()
        return dict(self.world)


SHELF = {
    "environment": {"stock": {"apple": 3}},
    "mutate": ToolCall(id="m", name="order_item", arguments={"item": "apple"}),
    "read": ToolCall(id="r", name="check_stock", arguments={"item": "apple"}),
}
SHELF_TWO_READS = {**SHELF, "read": [SHELF["read"], ToolCall(id="r2", name="list_orders", arguments={})]}
RESTORE_ALIASES = "restore() hands the snapshot itself (or a shallow copy of it) to the world"
SNAPSHOT_ALIASES = "snapshot() returns the live world or a shallow copy of it"


def test_a_sandbox_that_copies_its_world_deeply_passes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sandbox(ShelfSandbox, **copy.deepcopy(SHELF))
        check_sandbox(ShelfSandbox, **copy.deepcopy(SHELF_TWO_READS), subprocess_isolation=True)


@pytest.mark.parametrize("probe", [SHELF, SHELF_TWO_READS], ids=["one-read", "two-reads"])
@pytest.mark.parametrize("isolation", [False, True, None], ids=["in-process", "subprocess", "default"])
@pytest.mark.parametrize(
    ("make", "cause", "fix"),
    [
        (RestoreHandsOverTheSnapshot, RESTORE_ALIASES, "Copy it deeply in restore()"),
        (RestoreCopiesShallowly, RESTORE_ALIASES, "Copy it deeply in restore()"),
        (SnapshotIsTheWorld, SNAPSHOT_ALIASES, "Copy the world deeply in snapshot()"),
        (SnapshotCopiesShallowly, SNAPSHOT_ALIASES, "Copy the world deeply in snapshot()"),
    ],
    ids=["restore-aliases", "restore-shallow", "snapshot-aliases", "snapshot-shallow"],
)
def test_a_restore_or_snapshot_sharing_the_world_is_named_not_blamed_on_the_clock_or_outside_state(
    make: Callable[[], Any], cause: str, fix: str, isolation: bool | None, probe: dict[str, Any]
) -> None:
    """The kit failed these (the most common mistakes in a hand-written sandbox), but blamed a tool showing the clock or
    random numbers, state outside the world, or a snapshot whose pickled copy points at the world: none of them here.
    It now tells them apart: a deep copy of the snapshot still restores the world, the snapshot itself no longer does,
    having changed during a branch (restore) or as the world changed after it was taken (snapshot)."""
    with warnings.catch_warnings(record=True) as warned, pytest.raises(AssertionError) as failed:
        warnings.simplefilter("always")
        check_sandbox(make, **copy.deepcopy(probe), subprocess_isolation=isolation)
    for message in [str(failed.value), *(str(w.message) for w in warned)]:
        assert cause in message and fix in message, message
        assert "the clock" not in message and "outside the world" not in message, message
        assert "points at it" not in message, message


# --- sweep G: the causes named where the kit cannot tell which it is --------------------------------------------


class SnapshotIsTheLiveConnection(SqlShopSandbox):
    def snapshot(self) -> Any:
        return self._open()  # the world itself: the next calls write into the "snapshot"


class RestoreAdoptsTheSnapshot(SqlShopSandbox):
    def restore(self, snapshot: Any) -> None:
        self._open()
        self.db = snapshot  # a copy when taken, but the next branch writes into it


class RestoresTheLatestSnapshot(ShelfSandbox):
    """Ignores which snapshot it is given: rebuilds the world from the last one taken."""

    def snapshot(self) -> Any:
        self.latest = super().snapshot()
        return len(self.latest["orders"])

    def restore(self, snapshot: Any) -> None:
        super().restore(self.latest)


_ORDER_NUMBERS: list[str] = []


class NumbersOrdersOutsideTheWorld(ShelfSandbox):
    def execute(self, call: ToolCall) -> Observation:
        observation = super().execute(call)
        if call.name == "order_item" and not observation.is_error:
            _ORDER_NUMBERS.append(call.arguments["item"])  # module-level: no restore puts it back
            return Observation(content=f"{observation.content} (order #{len(_ORDER_NUMBERS)})")
        return observation


@pytest.mark.parametrize(
    ("make", "probe", "names"),
    [
        (SnapshotIsTheLiveConnection, SHOP, ["snapshot() returned a Connection, which can be neither deep-copied nor pickled"]),
        (RestoreAdoptsTheSnapshot, SHOP, ["snapshot() returned a Connection", "or restore() adopts it as the world"]),
        (RestoresTheLatestSnapshot, SHELF, ["restore(snapshot) does not rebuild the world from the snapshot it is given"]),
        (NumbersOrdersOutsideTheWorld, SHELF, ["the clock, random numbers or fresh ids", "Or: If a tool keeps state outside the world"]),
    ],
    ids=["snapshot-is-the-connection", "restore-adopts-a-connection", "restores-the-latest", "numbers-outside-the-world"],
)
def test_a_failure_names_every_usual_cause_where_the_kit_cannot_tell_which(make: Any, probe: dict[str, Any], names: list[str]) -> None:
    """Sweep G: these failed the kit, blamed on state outside the world (a live connection as the snapshot, a restore that
    ignores which snapshot it is given) or on the clock (an order number kept in a module): a cause they do not have."""
    with pytest.raises(AssertionError) as failed:
        check_sandbox(make, **copy.deepcopy(probe), subprocess_isolation=False)
    message = str(failed.value)
    assert all(name in message for name in names), message
