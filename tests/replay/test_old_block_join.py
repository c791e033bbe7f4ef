"""Stores recorded before text blocks were stored a line apart (schema below 1.5, before 41f3e1f) replay as faithfully
as before: a tool answering several text blocks was stored ``'report.pdfsummary.txt'``, and the same tool in a sandbox
now gives ``'report.pdf\\nsummary.txt'``.

``fixtures/store_before_41f3e1f`` is a real store recorded by ee-middleware at 41f3e1f^ (a ``create_agent`` graph with
``ScriptedChatModel`` calling ``list_files`` twice, recorded by ``record_experience``, approved), copied as it was
written."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.records import SCHEMA_VERSION, ToolCall, Trajectory
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.runner import replay_trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.replay.test_runner import SETTINGS, _ScriptedPolicy

OLD_STORE = Path(__file__).parent / "fixtures" / "store_before_41f3e1f"


def _build_world(environment: Any = None) -> dict[str, Any]:
    return {"files": ["report.pdf", "summary.txt"]}


def _list_files(world: dict[str, Any], folder: str) -> list[dict[str, str]]:
    """One text block per file, as langchain-mcp-adapters gives an MCP tool's TextContent items."""
    return [{"type": "text", "text": name} for name in world["files"]]


def _sandbox(files: list[str] | None = None) -> PythonSandbox:
    build = _build_world if files is None else (lambda environment=None: {"files": list(files)})
    return PythonSandbox(build, tools={"list_files": _list_files}, kind="files")


def _approved(root: Path) -> Trajectory:
    store = LocalExperienceStore(root)
    try:
        [trajectory] = list(store.iter_trajectories(status="approved"))
    finally:
        store.close()
    return trajectory


def _replay(trajectory: Trajectory, sandbox: PythonSandbox) -> Any:
    proposer = Proposer(_ScriptedPolicy([ToolCall(id="a", name="list_files", arguments={"folder": "x"})]), k=1)
    return replay_trajectory(trajectory, sandbox, proposer, SETTINGS)


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(OLD_STORE, root)
    return root


def test_a_store_recorded_before_blocks_went_a_line_apart_replays_faithfully(old_store: Path) -> None:
    """Was: fidelity_mismatches 2 ('report.pdfsummary.txt' recorded, 'report.pdf\\nsummary.txt' replayed), so the
    datasets left the replay's rollouts out, and no sandbox could help."""
    trajectory = _approved(old_store)
    assert trajectory.schema_version == "1.4"
    assert [s.observation.content for s in trajectory.steps if s.observation] == ["report.pdfsummary.txt"] * 2

    outcome = _replay(trajectory, _sandbox())
    assert outcome.record.status == "done"
    assert outcome.record.fidelity_mismatches == 0, outcome.record.details.get("fidelity_mismatches")
    assert [r.observation.content for r in outcome.rollouts] == ["report.pdf\nsummary.txt"] * 2


def test_an_old_store_still_tells_another_world_apart(old_store: Path) -> None:
    """Only the line breaks between blocks are let go: another file, or the files in another order, is a mismatch."""
    trajectory = _approved(old_store)
    for files in (["report.pdf", "notes.txt"], ["summary.txt", "report.pdf"], ["report.pdf", "summary.txt", "x"]):
        assert _replay(trajectory, _sandbox(files)).record.fidelity_mismatches == 2, files


def test_a_store_recorded_now_holds_blocks_a_line_apart_and_compares_them_exactly(tmp_path: Path) -> None:
    """Records written now say schema 1.5 or later (1.6): their text is compared as it is, a sandbox that joins blocks
    with nothing between them is unfaithful to them."""
    world = _build_world()

    @tool("list_files")
    def list_files(folder: str) -> list:
        """List files."""
        return _list_files(world, folder)

    script = [AIMessage("", tool_calls=[tool_call("list_files", folder=".")]), AIMessage("Two files.")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [list_files]), app="files", store=str(tmp_path))
    agent.invoke({"messages": [("user", "What is here?")]})
    agent.flush()
    store = LocalExperienceStore(tmp_path)
    try:
        [trajectory] = list(store.iter_trajectories())
    finally:
        store.close()
    assert trajectory.schema_version == SCHEMA_VERSION == "1.7"
    assert trajectory.steps[0].observation.content == "report.pdf\nsummary.txt"

    assert _replay(trajectory, _sandbox()).record.fidelity_mismatches == 0
    assert _replay(trajectory, _sandbox(["report.pdfsummary.txt"])).record.fidelity_mismatches == 1
