"""A reasoning model's reasoning before each action (``Action.reasoning``, schema 1.4) in the store: recorded by a real
``create_agent`` graph, it reads back the same from the spool and from compacted Parquet parts (the steps table's
``reasoning`` column), and a store written before that column existed still reads, with no reasoning."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.store.rows import TrajectoryRows
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.store.test_spool_read import _compacted_copy, _same

FIRST = "Check both fruits at once."
SECOND = "Pears 0, apples 3."


@tool
def check_stock(item: str) -> str:
    """How many of an item are in stock."""
    return {"pear": "0", "apple": "3"}[item]


def _run(folder: Path, script: list[AIMessage], request: str) -> None:
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [check_stock]), app="shop", store=folder)
    agent.invoke({"messages": [("user", request)]})
    agent.flush()
    agent.recorder.close()


def _recorded_store(folder: Path) -> list[Trajectory]:
    calls = [tool_call("check_stock", item="pear"), tool_call("check_stock", item="apple")]
    script = [
        AIMessage(content="", additional_kwargs={"reasoning_content": FIRST}, tool_calls=calls),
        AIMessage(content="No pears, 3 apples.", additional_kwargs={"reasoning_content": SECOND}),
    ]
    _run(folder, script, "Pears and apples?")
    _run(folder, [AIMessage(content="Hello.")], "Hi")  # a reply without reasoning: its action has none
    store = LocalExperienceStore(folder)
    try:
        recorded = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        store.close()
    return recorded


def _reads(folder: Path) -> dict[str, list[Trajectory]]:
    """The trajectories as every reader builds them, each on a fresh handle."""
    shipped = list(LocalExperienceStore(folder, create=False).iter_trajectory_rows())
    return {
        "iter": list(LocalExperienceStore(folder, create=False).iter_trajectories()),
        "get": [
            LocalExperienceStore(folder, create=False).get(t.id) for t in LocalExperienceStore(folder, create=False).iter_trajectories()
        ],
        "rows": [t.build() if type(t) is TrajectoryRows else t for t in shipped],
    }


def _read_alike(recorded: list[Trajectory], spooled: dict[str, list[Trajectory]], parted: dict[str, list[Trajectory]]) -> None:
    """Every reader (:func:`_reads`) builds the recorded trajectories alike from the spool and from the compacted parts."""
    for how in spooled:
        assert [t.id for t in spooled[how]] == [t.id for t in recorded]
        for a, b, c in zip(recorded, spooled[how], parted[how], strict=True):
            _same(b, c, f"{how} {b.id}")  # fields set included: the spool's record and the part's row build the same
            assert a.steps == b.steps == c.steps
            assert b.model_dump_json() == c.model_dump_json()


def test_reasoning_round_trips_through_the_spool_and_compaction(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    recorded = _recorded_store(folder)
    assert [[s.action.reasoning for s in t.steps] for t in recorded] == [[FIRST, FIRST, SECOND], [None]]
    assert spool.list_segments(folder / "spool")
    spooled = _reads(folder)
    steps = LocalExperienceStore(folder, create=False).steps()
    assert steps["reasoning"].to_list() == [FIRST, FIRST, SECOND, None]

    compacted = _compacted_copy(folder, tmp_path)
    [part] = sorted((compacted / "steps").glob("part-*.parquet"))
    assert pl.read_parquet(part)["reasoning"].to_list() == [FIRST, FIRST, SECOND, None]  # the column, in the part
    parted = _reads(compacted)
    _read_alike(recorded, spooled, parted)
    # an action without reasoning serializes as before schema 1.4: no key
    assert '"reasoning"' not in parted["iter"][1].model_dump_json()
    assert parted["iter"][0].steps[0].action.model_dump()["reasoning"] == FIRST


def test_a_store_written_before_the_reasoning_column_still_reads(tmp_path: Path) -> None:
    """Steps parts as schema 1.3 wrote them (no ``reasoning`` column) beside a spool written since: the old steps read
    with no reasoning, the new ones with theirs, and datasets build from both (the old targets as before)."""
    folder = tmp_path / "store"
    _recorded_store(folder)
    store = LocalExperienceStore(folder, create=False)
    assert store.compact() >= 1
    store.close()
    parts = sorted((folder / "steps").glob("part-*.parquet"))
    assert parts
    for part in parts:
        frame = pl.read_parquet(part)
        assert "reasoning" in frame.columns
        frame.drop("reasoning").write_parquet(part)
    trajectories = pl.read_parquet(sorted((folder / "trajectories").glob("part-*.parquet")))
    old_ids = trajectories["id"].to_list()

    _run(folder, [AIMessage(content="Yes.", additional_kwargs={"reasoning_content": "Easy."})], "Open?")

    store = LocalExperienceStore(folder, create=False)
    read = {t.id: t for t in store.iter_trajectories()}
    assert len(read) == 3
    assert all(s.action.reasoning is None for i in old_ids for s in read[i].steps)
    [new] = [t for i, t in read.items() if i not in old_ids]
    assert [s.action.reasoning for s in new.steps] == ["Easy."]
    assert store.steps()["reasoning"].to_list() == [None, None, None, None, "Easy."]
    store.approve(list(read), by="alice")
    store.close()
    build_datasets(DatasetConfig.load(store=folder, out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet").to_dicts()
    targets = {(r["trajectory_id"], r["step_index"]): json.loads(r["completion"])[0] for r in rows}
    assert [m.get("reasoning_content") for (i, _), m in targets.items() if i == new.id] == ["Easy."]
    assert all("reasoning_content" not in m for (i, _), m in targets.items() if i in old_ids)
