"""State digests: canonical across spellings and processes, and checked by the sandbox conformance kit."""

from __future__ import annotations

import datetime as dt
import functools
import sqlite3
import subprocess
import sys
from typing import Any

import pytest

from ee_middleware.errors import SandboxError, StateDigestUnavailableError
from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.digest import Unencodable, canonical, digest_of
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from ee_middleware.replay.sandboxes.protocol import StatefulSandbox, state_digest
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.replay.sandboxes.registry import sandbox_factory
from ee_middleware.testing import check_sandbox
from tests.replay.sandboxes.counter_world import PYTHON_SANDBOX_FACTORY, TOOLS, CounterSandbox, build_world

COUNTER = {
    "environment": {"counts": {"a": 1, "b": 5}},
    "mutate": ToolCall(id="m", name="add", arguments={"key": "a", "n": 2}),
    "read": [ToolCall(id="r1", name="get", arguments={"key": "a"}), ToolCall(id="r2", name="get", arguments={"key": "b"})],
}


class Node:
    def __init__(self, name: str, parent: Node | None = None) -> None:
        self.name = name
        self.parent = parent
        self.children: dict[str, Node] = {}
        self._cache = object()  # private: not part of the state


def test_equal_states_have_equal_digests_whatever_the_insertion_order() -> None:
    assert digest_of({"a": 1, "b": [1, 2]}) == digest_of({"b": [1, 2], "a": 1})
    assert digest_of({"s": {"x", "y", "z"}}) == digest_of({"s": {"z", "y", "x"}})
    assert digest_of({"a": 1}) != digest_of({"a": 2}) != digest_of({"a": "1"})
    assert digest_of({1: "x"}) != digest_of({"1": "x"})
    assert digest_of([1, 2]) != digest_of([2, 1])
    assert digest_of({"when": dt.date(2025, 3, 1)}).startswith("json:")


def test_objects_are_their_public_attributes_and_cycles_encode() -> None:
    def tree(extra: str) -> Node:
        root = Node("/")
        root.children["a"] = Node("a", root)
        root.children["a"].children[extra] = Node(extra, root.children["a"])
        return root

    assert digest_of(tree("b")) == digest_of(tree("b"))  # private attributes (a fresh object each) are ignored
    assert digest_of(tree("b")) != digest_of(tree("c"))
    assert canonical(Node("x"))["attributes"] == {"name": "x", "parent": None, "children": {}}
    with pytest.raises(Unencodable, match="no canonical form"):
        canonical(Node("x"), objects=False)


class Db:
    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE t (x INTEGER)")

    def __getstate__(self) -> bytes:
        return self.db.serialize()

    def __setstate__(self, state: bytes) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.deserialize(state)


def test_a_world_without_a_canonical_form_is_digested_by_its_pickle_or_refused() -> None:
    assert digest_of(Db()).startswith("pickle:")
    with pytest.raises(Unencodable, match="does not pickle"):
        digest_of({"conn": sqlite3.connect(":memory:")})


def test_the_digest_is_the_same_in_another_process() -> None:
    code = "from ee_middleware.replay.sandboxes.digest import digest_of; print(digest_of({'s': {'b', 'a', 'c'}, 'n': [1.5, None]}))"
    other = subprocess.check_output([sys.executable, "-c", code], text=True, env={"PYTHONHASHSEED": "123"}).strip()
    assert other == digest_of({"s": {"a", "b", "c"}, "n": [1.5, None]})


def test_python_sandbox_digest_uses_the_state_view_when_given() -> None:
    sandbox = PythonSandbox(lambda env: {"n": 0, "log": []}, tools={}, state=lambda world: world["n"])
    sandbox.reset(None)
    before = sandbox.state_digest()
    sandbox.world["log"].append("read")  # not in the view
    assert sandbox.state_digest() == before
    sandbox.world["n"] = 1
    assert sandbox.state_digest() != before
    sandbox.close()
    with pytest.raises(SandboxError, match="closed"):
        sandbox.state_digest()


def test_state_digest_helper_explains_a_sandbox_without_one() -> None:
    sandbox = CounterSandbox()
    assert not isinstance(sandbox, StatefulSandbox)
    with pytest.raises(SandboxError, match="has no state_digest"):
        state_digest(sandbox)


def test_the_kit_checks_digests_and_can_require_them() -> None:
    check_sandbox(PYTHON_SANDBOX_FACTORY, **COUNTER, require_digest=True)
    with pytest.raises(AssertionError, match="has no state_digest"):
        check_sandbox(CounterSandbox, **COUNTER, require_digest=True)


class _Counters(PythonSandbox):
    def __init__(self) -> None:
        super().__init__(build_world, tools=TOOLS)


class BlindDigest(_Counters):
    """A digest that ignores what changes."""

    def state_digest(self) -> str:
        return "always-the-same"


class ReadCountingDigest(_Counters):
    """A digest that counts reads, so reading changes it."""

    reads = 0

    def execute(self, call: ToolCall) -> Any:
        if call.name == "get":
            self.reads += 1
        return super().execute(call)

    def state_digest(self) -> str:
        return digest_of([self.world, self.reads])


class PerSandboxDigest(_Counters):
    """A digest that names the sandbox: two sandboxes in the same state disagree."""

    def state_digest(self) -> str:
        return digest_of([self.world, id(self)])


@pytest.mark.parametrize(
    ("sandbox", "message"),
    [
        (BlindDigest, "did not change the state digest"),
        (ReadCountingDigest, "read calls changed the state digest"),
        (PerSandboxDigest, "two sandboxes reset to the same environment"),
    ],
)
def test_the_kit_fails_a_broken_digest_naming_the_promise(sandbox: type, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_sandbox(sandbox, **COUNTER)


def test_built_in_sandboxes_have_digests_in_process_and_in_a_subprocess() -> None:
    from tests.testing.test_sandbox_conformance import bfcl_probe

    check_sandbox(sandbox_factory("bfcl"), **bfcl_probe(), require_digest=True)
    check_sandbox(functools.partial(SubprocessSandbox, PYTHON_SANDBOX_FACTORY, timeout_s=30), **COUNTER, require_digest=True)


def test_a_subprocess_sandbox_reports_an_inner_sandbox_without_a_digest() -> None:
    with SubprocessSandbox(functools.partial(_Counters), timeout_s=30) as sandbox:
        sandbox.reset(COUNTER["environment"])
        assert sandbox.state_digest() == digest_of(COUNTER["environment"]["counts"])
    with SubprocessSandbox(CounterSandbox, timeout_s=30) as sandbox:
        sandbox.reset(COUNTER["environment"])
        with pytest.raises(StateDigestUnavailableError, match="has no state_digest"):
            sandbox.state_digest()


def test_the_bfcl_digest_follows_public_attributes_only() -> None:
    from ee_middleware.bfcl.sandbox import BFCLSandbox
    from tests.testing.test_sandbox_conformance import bfcl_probe

    sandbox = BFCLSandbox()
    sandbox.reset(bfcl_probe()["environment"])
    start = sandbox.state_digest()
    folder = next(k for k, v in sandbox.world["GorillaFileSystem"].root.contents.items() if hasattr(v, "contents"))
    sandbox.execute(ToolCall(id="cd", name="cd", arguments={"folder": folder}))
    assert sandbox.state_digest() == start, "the current directory is private: BFCL's checker ignores it, so does the digest"
    sandbox.execute(ToolCall(id="t", name="touch", arguments={"file_name": "new.txt"}))
    assert sandbox.state_digest() != start


def test_a_whole_float_and_its_int_are_one_state() -> None:
    """JSON has one number 2 (RFC 8785 writes 2.0 as 2) and Python's == agrees, so a world where a tool stored
    the model's ``{"score": 2}`` is the state the expert's ``{"score": 2.0}`` made. Before, the digests differed:
    the traces: and tau suites scored such a run a state mismatch."""
    assert digest_of({"score": 2, "n": [0, -0.0, 1e20]}) == digest_of({"score": 2.0, "n": [0.0, 0, 10**20]})
    assert canonical({1.0: "a"}) == canonical({1: "a"}) and canonical(True) is True
    assert digest_of({"score": 2.5}) != digest_of({"score": 2}) and digest_of(float("nan")) == digest_of(float("nan"))
