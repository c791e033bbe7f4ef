"""A sandbox factory whose settings are named ``tools`` and ``spec``, as a user's may be (the tools it allows, the spec
of its world): ``ee replay run --sandbox-setting tools=...`` gives them. An importable module: factories are named."""

from __future__ import annotations

from typing import Any

from tests.replay.sandboxes.counter_world import CounterSandbox


class _Explaining(CounterSandbox):
    def __init__(self, tools: str, spec: str) -> None:
        super().__init__()
        self.allowed, self.spec = tools, spec

    def refusal_hint(self, tool_name: str) -> str | None:
        return f"only {self.allowed} is allowed ({self.spec})"


def make_sandbox(tools: str = "get", spec: str = "world-1") -> Any:
    return _Explaining(tools, spec)
