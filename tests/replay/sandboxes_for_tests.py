"""Sandbox factories named by spec strings in tests (importable by worker processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.records import Observation, ToolCall


class SlowBFCLSandbox(BFCLSandbox):
    """The real BFCL sandbox, slowed down on reset so that a test can kill a run part-way."""

    def reset(self, environment: dict[str, Any] | None) -> None:
        time.sleep(float(os.environ.get("EE_TEST_RESET_DELAY", "0.3")))
        super().reset(environment)


class FlakyBFCLSandbox(BFCLSandbox):
    """Crashes (raises, not an observation) on one entry's trajectories until EE_TEST_FLAKY_FIXED is set."""

    def execute(self, call: ToolCall) -> Observation:
        if self._entry == "multi_turn_base_1" and not os.environ.get("EE_TEST_FLAKY_FIXED"):
            raise RuntimeError("backend connection lost")
        return super().execute(call)

    def reset(self, environment: dict[str, Any] | None) -> None:
        self._entry = (environment or {}).get("entry_id")
        super().reset(environment)


class BrokenWorkerModulesBFCLSandbox(BFCLSandbox):
    """The real BFCL sandbox naming, besides a module that imports, one that raises as it is imported and a non-string."""

    worker_modules = ("tests.replay.broken_worker_module", 42, "tests.replay.gated_preload")  # type: ignore[assignment]


def make_bfcl_sandbox(**options: Any) -> BFCLSandbox:
    """A factory function in a user's module (as a PythonSandbox is usually built): the sandbox's class is the library's."""
    return BFCLSandbox(**options)


def not_a_sandbox() -> object:
    return object()


class ForkingBFCLSandbox(BFCLSandbox):
    """The real BFCL sandbox, plus a tool-like habit: every reset starts a long-lived process of its own.

    Stands in for tools that start helpers (servers, shells) and never stop them; the replay job
    must leave none of them behind.
    """

    def reset(self, environment: dict[str, Any] | None) -> None:
        import subprocess

        subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(os.environ.get("EE_TEST_RESET_DELAY", "0")))
        super().reset(environment)


class FetchPolicy:
    """Proposes one call at every state: ``fetch_url_content`` of the page at ``EE_TEST_URL`` (a local server in tests)."""

    name = "fetch"

    def __init__(self, **sampling: Any) -> None:  # the job passes sampling options to policies other than mutate
        self.url = os.environ["EE_TEST_URL"]

    def propose(self, point: Any, k: int, *, seed: int) -> Any:
        from ee_middleware.records import ProposerInfo
        from ee_middleware.replay.policies.protocol import Candidate, Proposals

        call = ToolCall(id=f"fetch_{point.step_index}", name="fetch_url_content", arguments={"url": self.url, "mode": "raw"})
        return Proposals([Candidate(call=call, proposer=ProposerInfo(policy=self.name))])

    def describe(self) -> dict[str, Any]:
        return {"url": self.url}

    def close(self) -> None:
        pass


class SlowClosingBFCLSandbox(BFCLSandbox):
    """The real BFCL sandbox whose ``close`` takes a while (as stopping a container does) and then leaves a file named
    by its process id in ``EE_TEST_CLOSED_DIR``: a test can tell that every worker closed its sandbox to the end."""

    def close(self) -> None:
        time.sleep(0.5)
        super().close()
        folder = os.environ.get("EE_TEST_CLOSED_DIR")
        if folder:
            with open(os.path.join(folder, str(os.getpid())), "w") as marker:
                marker.write("closed")


class UncoveringBFCLSandbox(BFCLSandbox):
    """The real BFCL sandbox without the tool named by EE_TEST_UNCOVERED (as if it had no sandbox)."""

    def covers(self, tool_name: str) -> bool:
        return tool_name != os.environ.get("EE_TEST_UNCOVERED") and super().covers(tool_name)


def _check_stock(world: dict[str, Any], fruit: str) -> str:
    """How many of a fruit are in stock."""
    return f"{world['stock'].get(fruit, 0)} {fruit} in stock"


def _order(world: dict[str, Any], fruit: str, quantity: int) -> str:
    """Order a quantity of a fruit from the supplier."""
    if quantity > 10:
        raise ValueError(f"the supplier takes at most 10 {fruit} per order, not {quantity}")
    world["stock"][fruit] = world["stock"].get(fruit, 0) + quantity
    return f"ordered {quantity} {fruit}"


def fruit_shop() -> Any:
    """The fruit shop of tests/ingest/fixtures (make_fixtures.py) as a PythonSandbox: pears 0, apples 12."""
    from ee_middleware.replay.sandboxes.python import PythonSandbox

    return PythonSandbox(lambda environment: {"stock": {"pears": 0, "apples": 12}}, tools={"check_stock": _check_stock, "order": _order})


class StuckClosingBFCLSandbox(BFCLSandbox):
    """The real BFCL sandbox that, on every reset, leaves a file named by its process id in ``EE_TEST_RESET_DIR`` and then
    takes ``EE_TEST_RESET_DELAY`` s, and whose ``close``, once it was used, does not return for ``EE_TEST_CLOSE_DELAY`` s
    (as a container that will not stop): a job stopping its workers waits on it, until a second signal kills them."""

    _used = False

    def reset(self, environment: dict[str, Any] | None) -> None:
        self._used = True
        folder = os.environ.get("EE_TEST_RESET_DIR")
        if folder:
            Path(folder, str(os.getpid())).touch()
        time.sleep(float(os.environ.get("EE_TEST_RESET_DELAY", "0")))
        super().reset(environment)

    def close(self) -> None:
        if self._used:
            time.sleep(float(os.environ.get("EE_TEST_CLOSE_DELAY", "0")))
        super().close()
