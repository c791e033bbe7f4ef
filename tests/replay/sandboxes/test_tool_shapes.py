"""An app's own LangChain tools in every shape replay meets them: recorded through a real agent, replayed in PythonSandbox.

Each test records a real ``langchain.agents.create_agent`` graph (a scripted model) and checks that replaying the
expert's calls in the sandbox gives exactly the observations capture stored (no fidelity error), and that the rollouts
hold what calling the tool on the recorded state gives.
"""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from ee_middleware import record_experience
from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.runner import ReplayOutcome, ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import record_once


def _script(*calls: tuple[str, dict[str, Any]]) -> list[AIMessage]:
    return [*(AIMessage(content="", tool_calls=[tool_call(name, **args)]) for name, args in calls), AIMessage(content="done")]


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
