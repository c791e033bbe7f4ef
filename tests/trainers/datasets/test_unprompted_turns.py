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
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.training.data import load_dataset


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
