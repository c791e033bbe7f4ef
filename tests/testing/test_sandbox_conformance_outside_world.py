"""The sandbox conformance kit checks ``acts_outside_world`` (93d82bd), which it knew nothing of.

A sandbox may declare tools that act only outside its world (they page on-call, send an e-mail): replay never calls them
and lets the expert's recorded results stand for their calls. The kit passed a sandbox that declared a tool it also
covers (replay would call a tool it was told acts outside the world, or leave a world tool's calls unexecuted), one
that declared every tool it lacks (a lost world tool's calls left unexecuted, every later branch from a world without
their effect), and one that declared a tool with no ``refusal_hint`` (``ee replay run`` then advised declaring the tool
already declared). Now ``check_sandbox(..., outside_world_tools=[...])`` checks the tools a sandbox declares, and every
run checks that no tool the kit knows is both covered and declared.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest

from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.testing import check_sandbox
from tests.replay.sandboxes.counter_world import TOOLS, build_world

COUNTER = {
    "environment": {"counts": {"a": 1, "b": 5}},
    "mutate": ToolCall(id="m", name="add", arguments={"key": "a", "n": 2}),
    "read": [ToolCall(id="r1", name="get", arguments={"key": "a"}), ToolCall(id="r2", name="get", arguments={"key": "b"})],
}
DECLARED = functools.partial(PythonSandbox, build_world, tools=TOOLS, outside_world_tools=["page_oncall", "send_email"])
"""The counter world's sandbox with two tools declared outside its world (module level: a subprocess child builds it)."""


def probe(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(COUNTER), **changes}


# --- sandboxes that declare tools outside their world pass ---------------------------------------------------------


def test_a_python_sandbox_with_outside_world_tools_passes() -> None:
    check_sandbox(DECLARED, **probe(), outside_world_tools=["page_oncall", "send_email"])
    check_sandbox(DECLARED, **probe(), outside_world_tools="page_oncall")  # one name, as the sandboxes take it


def test_the_subprocess_sandbox_forwards_the_declaration_and_passes() -> None:
    check_sandbox(functools.partial(SubprocessSandbox, DECLARED, timeout_s=30), **probe(), outside_world_tools=["page_oncall"])


def test_a_sandbox_declaring_nothing_passes_as_before() -> None:
    check_sandbox(functools.partial(PythonSandbox, build_world, tools=TOOLS), **probe())


# --- broken declarations fail, naming the broken promise --------------------------------------------------------------


class DeclaresItsOwnTool(PythonSandbox):
    """Declares ``add``, a tool it covers (the mutating call): replay could not tell whether to call it."""

    def acts_outside_world(self, tool_name: str) -> bool:
        return tool_name in ("add", "page_oncall")


class CoversADeclaredTool(PythonSandbox):
    """Has page_oncall among its tools and declares it too (what PythonSandbox's own check refuses at construction)."""

    def acts_outside_world(self, tool_name: str) -> bool:
        return tool_name == "page_oncall"


class DeclaresEverythingItLacks(PythonSandbox):
    """Declares every tool it does not cover: a world tool it lost would be left unexecuted too."""

    def acts_outside_world(self, tool_name: str) -> bool:
        return not self.covers(tool_name)


class DeclaresWithoutAHint(PythonSandbox):
    """Declares page_oncall but gives no refusal hint for it."""

    def refusal_hint(self, tool_name: str) -> str | None:
        return None


PAGED: list[str] = []
"""What the sandboxes below really did outside their world: on-call pages sent (the e-mail, the page a user's tool sends)."""


class RunsADeclaredTool(PythonSandbox):
    """Declares page_oncall (not covered), yet its execute() would page someone if asked; answers with an error, or with
    ``succeeds``, as if it had worked. Replay never asks it: it calls only the tools a sandbox covers."""

    def __init__(self, *args: Any, succeeds: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.succeeds = succeeds

    def execute(self, call: ToolCall) -> Observation:
        if self.acts_outside_world(call.name):
            PAGED.append(call.name)
            return Observation(content="paged identity", is_error=not self.succeeds)
        return super().execute(call)


class RecordsTheToolsItRuns(PythonSandbox):
    """Notes every tool its execute() runs: whatever the kit is told, it must never run a tool declared outside."""

    def execute(self, call: ToolCall) -> Observation:
        if self.acts_outside_world(call.name):
            PAGED.append(call.name)
        return super().execute(call)


def _page(world: dict[str, int], team: str = "identity") -> str:
    return f"paged {team}"


@pytest.mark.parametrize(
    ("make", "declared", "message"),
    [
        (
            functools.partial(DeclaresItsOwnTool, build_world, tools=TOOLS),
            (),  # checked on every run: the kit knows add as the mutating call
            r"covers\('add'\) and acts_outside_world\('add'\) are both true",
        ),
        (
            functools.partial(CoversADeclaredTool, build_world, tools={**TOOLS, "page_oncall": _page}),
            ["page_oncall"],
            r"covers\('page_oncall'\) and acts_outside_world\('page_oncall'\) are both true",
        ),
        (
            functools.partial(DeclaresEverythingItLacks, build_world, tools=TOOLS),
            (),
            r"acts_outside_world\('ee_conformance_no_such_tool'\) must be false",
        ),
        (
            functools.partial(DeclaresWithoutAHint, build_world, tools=TOOLS, outside_world_tools=["page_oncall"]),
            ["page_oncall"],
            r"refusal_hint\('page_oncall'\) must say why replay never calls it",
        ),
        (
            functools.partial(PythonSandbox, build_world, tools=TOOLS),
            ["page_oncall"],
            r"acts_outside_world\('page_oncall'\) must be true",
        ),
    ],
    ids=["declares-a-covered-tool", "covers-a-declared-tool", "declares-everything", "no-hint", "not-declared"],
)
def test_a_broken_declaration_fails_with_the_broken_promise(make: Any, declared: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_sandbox(make, **probe(), outside_world_tools=declared)


def test_a_sandbox_without_refusal_hint_that_declares_a_tool_is_told_to_add_one() -> None:
    """A protocol sandbox (no PythonSandbox) with ``acts_outside_world`` and no ``refusal_hint`` method at all."""

    class Bare:
        kind = "bare"

        def __init__(self) -> None:
            self.inner = DECLARED()

        def __getattr__(self, name: str) -> Any:
            if name == "refusal_hint":
                raise AttributeError(name)
            return getattr(self.inner, name)

    with pytest.raises(AssertionError) as failed:
        check_sandbox(Bare, **probe(), outside_world_tools=["page_oncall"])
    message = str(failed.value)
    assert "refusal_hint('page_oncall') must say why replay never calls it" in message, message
    assert "add a refusal_hint(tool_name) method" in message, message


@pytest.mark.parametrize("succeeds", [False, True], ids=["answers-an-error", "answers-as-if-it-worked"])
def test_the_kit_never_runs_a_tool_declared_outside_the_world(succeeds: bool) -> None:
    """The kit checked 'never executed' by executing the declared tool: against a sandbox that runs it, the user's own
    test suite paged someone (sent the e-mail), and a sandbox that ran it but answered with an error passed. Replay
    calls only the tools a sandbox covers (a declared tool is refused before execute), so what it relies on is the
    declaration (declared, not covered, a refusal hint), which the kit checks; it no longer calls the tool."""
    PAGED.clear()
    make = functools.partial(RunsADeclaredTool, build_world, tools=TOOLS, outside_world_tools=["page_oncall"], succeeds=succeeds)
    check_sandbox(make, **probe(), outside_world_tools=["page_oncall"])
    assert PAGED == [], "the kit ran a tool the sandbox declares to act outside its world"


def test_the_kit_runs_no_tool_declared_outside_the_world_even_one_it_was_given_to_call() -> None:
    """A sandbox declaring the tool the kit is given as its mutating call fails for it, before the kit calls anything."""
    PAGED.clear()

    class DeclaresTheMutatingTool(RecordsTheToolsItRuns):
        def acts_outside_world(self, tool_name: str) -> bool:
            return tool_name == "add"

    with pytest.raises(AssertionError, match=r"covers\('add'\) and acts_outside_world\('add'\) are both true"):
        check_sandbox(functools.partial(DeclaresTheMutatingTool, build_world, tools=TOOLS), **probe())
    assert PAGED == [], "the kit ran a tool the sandbox declares to act outside its world"
