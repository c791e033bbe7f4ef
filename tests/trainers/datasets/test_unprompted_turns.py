"""A turn the model decided with no message at all in its input (an agent invoked with an empty conversation and no
system prompt: a real model refuses the request, a scripted one answers) is left out of IL and counted. Was (a sweep):
its IL row had the prompt ``[]``, which ``ee datasets show`` and ``ee train`` refuse for the whole file ("prompt has no
messages. Rebuild it with ee datasets build"), and rebuilding wrote it again: one odd approved run blocked training on
every other row. Real create_agent graphs recorded into a real local store; the real dataset build and training reader."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.source import load_source
from ee_middleware.trainers.datasets.sr import NO_INPUT, SROptions, build_sr
from ee_middleware.trainers.training.data import load_dataset
from tests.trainers.datasets.test_builders import RecordingTeacher


@tool
def check_stock(item: str) -> str:
    """How many of an item the shop has."""
    return "3"


def _record(store: Path, messages: list[tuple[str, str]], script: list[AIMessage]) -> None:
    agent = record_experience(
        create_agent(ScriptedChatModel(script=script), [check_stock]), app="shop", store=store, approve_if=lambda t: True
    )
    agent.invoke({"messages": messages})
    agent.flush()
    agent.recorder.close()


def test_a_turn_without_input_is_left_out_of_il_counted_and_the_rest_trains(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _record(store, [], [AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]), AIMessage(content="Pears: 3.")])
    _record(
        store,
        [("user", "Any apples?")],
        [AIMessage(content="", tool_calls=[tool_call("check_stock", item="apple")]), AIMessage(content="Apples: 3.")],
    )

    summary = build_datasets(DatasetConfig.load(store=store, out=tmp_path / "out", kinds="il"))

    assert summary["datasets"]["il"]["turns_without_input_left_out"] == 1
    prompts = pl.read_parquet(tmp_path / "out" / "il.parquet")["prompt"].to_list()
    assert "[]" not in prompts and len(prompts) == 3, prompts  # the unprompted run's later turn (after its tool) stays
    assert len(load_dataset(tmp_path / "out", "il").rows) == 3  # what ee train and ee datasets show read: no row refused


def _unprompted(store_path: Path) -> tuple[LocalExperienceStore, str]:
    store = LocalExperienceStore(store_path)
    [trajectory] = [t for t in store.iter_trajectories() if t.steps and not t.steps[0].state]
    return store, trajectory.id


def test_a_paused_turn_without_input_is_counted_once_as_awaiting_review(tmp_path: Path) -> None:
    """The review of the first version: the count read every step, so a paused turn without input was counted as both."""
    store_path = tmp_path / "store"
    _record(store_path, [], [AIMessage(content="", tool_calls=[tool_call("check_stock", item="kiwi")]), AIMessage(content="Kiwis: 3.")])
    _record(
        store_path,
        [("user", "Any apples?")],
        [AIMessage(content="", tool_calls=[tool_call("check_stock", item="apple")]), AIMessage(content="Apples: 3.")],
    )
    store, recorded = _unprompted(store_path)
    trajectory = store.get(recorded)
    store.reject([recorded], by="test")  # only its paused copy is trained on
    first = trajectory.steps[0].model_copy(update={"observation": None, "trajectory_id": "paused"})
    store.write(
        [trajectory.model_copy(update={"id": "paused", "status": "interrupted", "steps": [first], "messages": trajectory.messages[:1]})]
    )
    store.approve(["paused"], by="test")
    store.close()
    il = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "out", kinds="il"))["datasets"]["il"]
    assert (il["turns_without_input_left_out"], il["calls_awaiting_review_left_out"]) == (0, 1), il


def test_sr_gives_no_row_for_a_state_without_input(tmp_path: Path) -> None:
    """SR's prompt is the state too: one replay branched at a turn without input gave a row with prompt [] (the review)."""
    store_path = tmp_path / "store"
    _record(store_path, [], [AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]), AIMessage(content="Pears: 3.")])
    store, recorded = _unprompted(store_path)
    call = ToolCall(id="alt", name="check_stock", arguments={"item": "plum"})
    rollout = Rollout(
        id="r-0", replay_id="replay-1", trajectory_id=recorded, step_index=0, branch_index=0,
        action=Action(kind="tool_call", tool_call=call), proposer=ProposerInfo(policy="mutate"),
        observation=Observation(content="0"), sandbox="python", duration_ms=1.0,
    )  # fmt: skip
    record = ReplayRecord(replay_id="replay-1", trajectory_id=recorded, status="done", policy="mutate", sandbox="python", k=1, seed=0)
    store.write_replay(record, [rollout])
    frame, report = build_sr(load_source(store), RecordingTeacher(["I check the stock because it answers the question."]), SROptions(k=1))
    store.close()
    assert report.dropped == {NO_INPUT: 1} and "[]" not in frame["prompt"].to_list(), (report.dropped, frame["prompt"].to_list())
