"""SubprocessSandbox marks the error observations it writes about itself (``Observation.sandbox_failure``), and only those:
a tool's own error, raised or returned, is the tool's answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from tests.replay.sandboxes.counter_world import PYTHON_SANDBOX_FACTORY, make_counter_sandbox

pytestmark = pytest.mark.timeout(60)


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(id=f"call_{name}", name=name, arguments=arguments)


@pytest.fixture(params=["counter", "python"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[SubprocessSandbox]:
    """The counter sandbox lets a MemoryError escape (the child turns it into an observation); the PythonSandbox catches it
    itself (the child recognizes it in the observation): both paths must mark it."""
    factory = make_counter_sandbox if request.param == "counter" else PYTHON_SANDBOX_FACTORY
    box = SubprocessSandbox(factory, timeout_s=1.0, memory_mb=1024, control_timeout_s=10.0)
    box.reset({"counts": {"a": 1}})
    yield box
    box.close()


@pytest.mark.parametrize(
    ("tool", "arguments", "failure"),
    [("sleep", {"seconds": 30}, "timeout"), ("crash", {"code": 3}, "crash"), ("kill_self", {}, "crash"), ("hog", {"mb": 8192}, "memory")],
)
def test_the_sandboxs_own_failures_are_marked(sandbox: SubprocessSandbox, tool: str, arguments: dict, failure: str) -> None:
    observation = sandbox.execute(call(tool, **arguments))
    assert observation.is_error and observation.sandbox_failure == failure, observation
    assert sandbox.execute(call("get", key="a")) == Observation(content="1"), "the world is back and answers unmarked"


def test_a_tools_own_error_is_not_a_sandbox_failure(sandbox: SubprocessSandbox) -> None:
    observation = sandbox.execute(call("boom"))  # raised: by the counter sandbox through to the child, caught by PythonSandbox
    assert observation.is_error and "boom went the tool" in observation.content
    assert observation.sandbox_failure is None


def test_capping_an_observation_keeps_its_mark() -> None:
    marked = Observation(content="Error: " + "x" * 100, is_error=True, sandbox_failure="timeout")
    capped = marked.capped(10)
    assert capped.sandbox_failure == "timeout" and capped.truncated_chars == len(marked.content) - 10
