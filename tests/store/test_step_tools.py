"""The tools offered at each decision (``Step.tools``, schema 1.4) in the store: recorded by a real ``create_agent``
graph whose middleware offers other tools at each call, they read back the same from the spool and from compacted
Parquet parts (the steps table's ``offered_tools_json`` column; ``[]``, offered none, is not null, all of the run's), and
a store written before that column existed still reads, with ``None`` (all of the trajectory's tools)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from langchain.agents import create_agent

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.capture.test_middleware_shapes import TASK, planned_model, shop_tools
from tests.capture.test_step_tools import one_tool_per_turn
from tests.store.test_action_reasoning import _read_alike, _reads
from tests.store.test_spool_read import _compacted_copy

OFFERED = [["check_stock"], ["check_stock"], ["order_item"], []]


def _run(folder: Path, *, per_call: bool) -> None:
    graph = create_agent(planned_model(), shop_tools({"pear": 0, "apple": 3}), middleware=[one_tool_per_turn] if per_call else [])
    agent = record_experience(graph, app="shop", store=folder)
    agent.invoke(TASK)
    agent.flush()
    agent.recorder.close()


def _recorded_store(folder: Path) -> list[Trajectory]:
    _run(folder, per_call=True)
    _run(folder, per_call=False)  # tools that never change: no step has its own
    store = LocalExperienceStore(folder)
    try:
        return sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        store.close()


def test_step_tools_round_trip_through_the_spool_and_compaction(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    recorded = _recorded_store(folder)
    assert [[s.tools for s in t.steps] for t in recorded] == [OFFERED, [None] * 4]
    assert spool.list_segments(folder / "spool")
    spooled = _reads(folder)
    column = [json.dumps(t, separators=(",", ":")) for t in OFFERED] + [None] * 4
    assert LocalExperienceStore(folder, create=False).steps()["offered_tools_json"].to_list() == column

    compacted = _compacted_copy(folder, tmp_path)
    [part] = sorted((compacted / "steps").glob("part-*.parquet"))
    assert pl.read_parquet(part)["offered_tools_json"].to_list() == column  # the column, in the part
    parted = _reads(compacted)
    _read_alike(recorded, spooled, parted)
    # steps whose tools never changed serialize as before schema 1.4: no key
    assert all("tools" not in s.model_dump(mode="json") for s in parted["iter"][1].steps)
    assert parted["iter"][0].steps[3].model_dump()["tools"] == []


def test_a_store_written_before_the_offered_tools_column_still_reads(tmp_path: Path) -> None:
    """Steps parts without the ``offered_tools_json`` column (as written before it existed) beside a spool written
    since: the old steps read with ``None`` (their rows offer all of the trajectory's tools, as before), the new ones
    with theirs, and datasets build from both."""
    folder = tmp_path / "store"
    _run(folder, per_call=True)
    store = LocalExperienceStore(folder, create=False)
    assert store.compact() >= 1
    store.close()
    for part in sorted((folder / "steps").glob("part-*.parquet")):
        pl.read_parquet(part).drop("offered_tools_json").write_parquet(part)
    [old_id] = pl.read_parquet(sorted((folder / "trajectories").glob("part-*.parquet")))["id"].to_list()

    _run(folder, per_call=True)

    store = LocalExperienceStore(folder, create=False)
    read = {t.id: t for t in store.iter_trajectories()}
    assert [s.tools for s in read[old_id].steps] == [None] * 4
    [new] = [t for i, t in read.items() if i != old_id]
    assert [s.tools for s in new.steps] == OFFERED
    store.approve(list(read), by="alice")
    store.close()
    build_datasets(DatasetConfig.load(store=folder, out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet").sort("trajectory_id", "step_index")
    offered = {(r["trajectory_id"], r["step_index"]): [t["function"]["name"] for t in json.loads(r["tools"])] for r in rows.to_dicts()}
    assert [offered[(old_id, i)] for i in range(4)] == [["check_stock", "order_item"]] * 4
    assert [offered[(new.id, i)] for i in range(4)] == OFFERED
