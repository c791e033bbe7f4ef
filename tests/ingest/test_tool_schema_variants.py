"""Ingested runs keep each schema a tool was offered under its name (schema 1.7, ``NAME#K``), with every step naming its
tools, also a step whose model span recorded no tool definitions (before, that step's ``tools`` was ``None``, and its
dataset rows offered every schema of the tool: two tools of one name); and the merge of a run read in parts renumbers a
part's ``NAME#K`` in the merged run and writes it at this schema. Real GenAI spans from the OTel SDK, OTLP JSON files,
``ingest_files``, a real local store and ``ee datasets build``'s own code."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.ingest.service import _merged
from ee_middleware.records import SCHEMA_VERSION, Action, Observation, Step, ToolCall, Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.ingest.test_conversations import _call, _ingest
from tests.ingest.test_step_tools import spans_file


def _schema(description: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "check_stock", "description": description, "parameters": {"type": "object"}}}


def test_a_step_whose_span_names_no_tools_still_names_them_where_a_tool_varies(tmp_path: Path) -> None:
    offered = [[_schema("v1")], [_schema("v2")], None, [_schema("v1")]]  # the third span records no tool definitions
    fruits = ["pears", "apples", "pears"]
    replies = [
        *(
            {"role": "assistant", "content": "", "tool_calls": [_call(f"call_{i}", "check_stock", {"fruit": f})]}
            for i, f in enumerate(fruits)
        ),
        {"role": "assistant", "content": "Done."},
    ]
    path = spans_file(tmp_path, replies, offered)
    store = LocalExperienceStore(tmp_path / "s")
    _, [trajectory] = _ingest(store, path)
    assert [s.tools for s in trajectory.steps] == [["check_stock"], ["check_stock#1"], ["check_stock"], ["check_stock"]]
    store.approve([trajectory.id], by="test")
    store.close()
    build_datasets(DatasetConfig.load(store=tmp_path / "s", out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet").sort("step_index")
    described = [[t["function"]["description"] for t in json.loads(tools)] for tools in rows["tools"]]
    assert described == [["v1"], ["v2"], ["v1"], ["v1"]]  # one schema per row, never two of one name


def test_merging_a_run_read_in_parts_renumbers_their_schemas_and_writes_this_schema_version() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    user = {"role": "user", "content": "q"}

    def call(i: int) -> dict[str, Any]:
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": f"c{i}", "type": "function", "function": {"name": "check_stock", "arguments": "{}"}}],
        }

    def step(i: int, state: list[dict[str, Any]], trajectory_id: str, tools: list[str] | None = None) -> Step:
        action = Action(kind="tool_call", tool_call=ToolCall(id=f"c{i}", name="check_stock", arguments={}))
        return Step(
            trajectory_id=trajectory_id,
            index=i,
            decision_index=i,
            state=state,
            action=action,
            observation=Observation(content=f"r{i}"),
            tools=tools,
        )

    h1 = [user, call(0), {"role": "tool", "tool_call_id": "c0", "content": "r0"}]
    h2 = [*h1, call(1), {"role": "tool", "tool_call_id": "c1", "content": "r1"}]
    stored = Trajectory(  # read earlier (by a version before 1.7): two decisions offered v1
        id="A", app="a", started_at=start, ended_at=start + dt.timedelta(seconds=5), status="interrupted",
        steps=[step(0, [user], "A"), step(1, h1, "A")], tools=[_schema("v1")], messages=h2, schema_version="1.6",
    )  # fmt: skip
    later = Trajectory(  # read now: the third decision, offered v3 after v2 (its own #1 is v3)
        id="B", app="a", started_at=start + dt.timedelta(seconds=6), ended_at=start + dt.timedelta(seconds=7),
        steps=[step(2, h2, "B", ["check_stock#1"])], tools=[_schema("v2"), _schema("v3")], messages=h2[:1],
    )  # fmt: skip
    merged, _ = _merged(later, [stored], 10_000)
    assert merged.schema_version == SCHEMA_VERSION
    assert [[t["function"]["description"] for t in merged.step_tools(s)] for s in merged.steps] == [["v1"], ["v1"], ["v3"]]
    assert all(s.tools is not None for s in merged.steps)  # a tool varies: every step names its tools
