"""Replay's fix for a trajectory without tool schemas fits where it came from.

A run that record_experience itself captured was told to "capture with @record_experience ... then ingest again", which
is what the user did. Its schemas were lost because the chat model's bind_tools kept the tools instead of binding them,
so they never reached the call's invocation params. The fix now says that, and following it records the schemas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.replay.policies.schema import no_schemas_fix
from ee_middleware.store.local import LocalExperienceStore

pytest.importorskip("langchain")
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from ee_middleware import record_experience


@tool
def get_order(order_id: str) -> str:
    """Look up an order."""
    return f"order {order_id}: shipped"


class KeepsTools(GenericFakeChatModel):
    """A prompted tool-use wrapper: bind_tools keeps the tools itself, so no call carries them."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        self.__dict__["_tools"] = tools
        return self


class BindsTools(GenericFakeChatModel):
    """The same model, its bind_tools written as the fix says."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)


def _record(model_class: type[GenericFakeChatModel], store: Path) -> None:
    answers = [
        AIMessage(content="", tool_calls=[{"name": "get_order", "args": {"order_id": "A-1001"}, "id": "c1"}]),
        AIMessage("It shipped."),
    ]
    agent = record_experience(
        create_agent(model_class(messages=iter(answers)), [get_order], system_prompt="You are a support agent."),
        app="support-bot",
        store=str(store),
        approve_if=lambda t: t.status == "completed",
    )
    agent.invoke({"messages": [("user", "Where is order A-1001?")]}, {"configurable": {"thread_id": "42"}})
    agent.flush()


def _replay(store: Path, *, exit_code: int = 0) -> str:
    result = CliRunner().invoke(
        app, ["replay", "run", "--store", str(store), "--sandbox", "bfcl", "--policy", "mutate", "--k", "2", "--no-progress"]
    )
    assert result.exit_code == exit_code, result.output
    return " ".join(result.output.split())


def test_a_captured_run_without_schemas_names_bind_tools_and_the_fix_records_them(tmp_path: Path) -> None:
    _record(KeepsTools, tmp_path / "kept")
    store = LocalExperienceStore(tmp_path / "kept")
    [trajectory] = list(store.iter_trajectories())
    store.close()
    assert trajectory.source == "record_experience" and not trajectory.tools
    out = _replay(tmp_path / "kept", exit_code=1)  # (its one trajectory skipped: nothing was replayed)
    assert "records no tool schemas" in out and "bind_tools did not pass them" in out, out
    assert "capture with @record_experience" not in out and "ingest again" not in out, out

    _record(BindsTools, tmp_path / "bound")  # the fix, followed
    store = LocalExperienceStore(tmp_path / "bound")
    [trajectory] = list(store.iter_trajectories())
    store.close()
    assert [schema["function"]["name"] for schema in trajectory.tools] == ["get_order"]
    assert "records no tool schemas" not in _replay(tmp_path / "bound", exit_code=1)  # (skipped: no BFCL world)


def test_an_ingested_trajectory_is_still_told_to_record_the_tools_and_ingest_again() -> None:
    assert "ingest again" in no_schemas_fix("otlp-ingest") and "bind_tools" not in no_schemas_fix("otlp-ingest")
