"""The facts of the expert's final answer, end to end through the ``traces:`` suite (sweep s19, findings 1 and 2).

A real create_agent warehouse bot (a scripted chat model standing in for the served one) recorded with
record_experience into a real local store, held out by ``ee datasets build``, evaluated by ``run_eval`` in a real
PythonSandbox over the same world functions. The candidates replay the expert's recorded calls (the oracle) and answer
in words of their own."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.evals.clients import OracleClient
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.tasks import EvalTask
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store.registry import open_store
from ee_middleware.testing import ScriptedChatModel, tool_call

SANDBOX = f"{__name__}:make_sandbox"
STOCK = {"SKU-1": {"A1": 10, "B2": 4}, "SKU-3": {"C3": 7, "A1": 3}}


def _check_stock(world: dict[str, Any], sku: str) -> dict[str, Any]:
    bins = world["stock"][sku]
    return {"sku": sku, "total": sum(bins.values()), "bins": bins}


def _move_stock(world: dict[str, Any], sku: str, from_bin: str, to_bin: str, qty: int) -> str:
    bins = world["stock"][sku]
    bins[from_bin] -= qty
    bins[to_bin] = bins.get(to_bin, 0) + qty
    return f"moved {qty} {sku} from {from_bin} to {to_bin}"


def make_sandbox(**options: Any) -> PythonSandbox:
    """The warehouse's world: stock per SKU per bin."""
    return PythonSandbox(
        lambda environment: {"stock": copy.deepcopy(STOCK)}, tools={"check_stock": _check_stock, "move_stock": _move_stock}, kind="wh"
    )


class _Answers(OracleClient):
    """The expert's calls, then a final answer of its own: ``answers[the user's request]``."""

    model = "own-words"

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers

    def for_task(self, task: EvalTask) -> OracleClient:
        reference = json.loads(json.dumps(task.reference))
        reference[-1][-1] = {"role": "assistant", "content": self.answers[task.turns[0][0]["content"]]}
        return OracleClient(reference, task.turns)


def make_says_nine(**options: Any) -> _Answers:
    """States the wrong quantity of SKU-3, and a move's answer without its SKU and bins."""
    return _Answers(
        {"How many units of SKU-3 are in A1?": "We have 9 units of SKU-3 in A1.", "Move 2 SKU-1 from A1 to C3.": "Moved 2 units."}
    )


def make_transferred(**options: Any) -> _Answers:
    """States every fact of the expert's answers, the move in other words."""
    return _Answers(
        {
            "How many units of SKU-3 are in A1?": "We have 3 units of SKU-3 in A1.",
            "Move 2 SKU-1 from A1 to C3.": "Done: 2 units of SKU-1 were transferred from A1 to C3.",
        }
    )


def _record(folder: Path) -> tuple[Path, Path]:
    """Three approved runs: a stock question ('We have 3 units of SKU-3 in A1.'), a move ('Moved 2 units of SKU-1 from
    A1 to C3.', its tool saying 'moved 2 SKU-1 from A1 to C3'), both held out, and one kept for training."""
    world = {"stock": copy.deepcopy(STOCK)}

    @tool
    def check_stock(sku: str) -> dict[str, Any]:
        """Stock of a SKU, per bin."""
        return _check_stock(world, sku)

    @tool
    def move_stock(sku: str, from_bin: str, to_bin: str, qty: int) -> str:
        """Move units of a SKU between bins."""
        return _move_stock(world, sku, from_bin, to_bin, qty)

    runs = {
        "How many units of SKU-3 are in A1?": [
            AIMessage(content="", tool_calls=[tool_call("check_stock", sku="SKU-3")]),
            AIMessage(content="We have 3 units of SKU-3 in A1."),
        ],
        "Move 2 SKU-1 from A1 to C3.": [
            AIMessage(content="", tool_calls=[tool_call("move_stock", sku="SKU-1", from_bin="A1", to_bin="C3", qty=2)]),
            AIMessage(content="Moved 2 units of SKU-1 from A1 to C3."),
        ],
        "Stock of SKU-1?": [AIMessage(content="", tool_calls=[tool_call("check_stock", sku="SKU-1")]), AIMessage(content="14 units.")],
    }
    store = folder / "store"
    ids: list[str] = []
    for thread, (request, script) in enumerate(runs.items()):
        world["stock"] = copy.deepcopy(STOCK)
        graph = create_agent(ScriptedChatModel(script=script), [check_stock, move_stock], system_prompt="You run the warehouse.")
        agent = record_experience(graph, app="wh", store=store, approve_if=lambda t: t.status == "completed")
        agent.invoke({"messages": [("user", request)]}, {"configurable": {"thread_id": str(thread)}})
        agent.flush()
        agent.recorder.close()
        handle = open_store(store)
        ids.append(next(i for i in handle.trajectories(status="approved")["id"].to_list() if i not in ids))
        handle.close()
    (folder / "heldout.txt").write_text("\n".join(ids[:2]))
    args = ["datasets", "build", "--store", str(store), "--out", str(folder / "data"), "--kinds", "il"]
    result = CliRunner().invoke(app, [*args, "--heldout-ids", str(folder / "heldout.txt")])
    assert result.exit_code == 0, result.output
    return store, folder / "data" / "datasets.json"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _record(tmp_path_factory.mktemp("traces-warehouse"))


def _results(warehouse: tuple[Path, Path], model: str, out: Path) -> dict[str, dict[str, Any]]:
    store, split = warehouse
    job = EvalJob(suites=[f"traces:{store}:wh"], model=model, out=str(out), split=str(split), sandbox=SANDBOX)
    [summary] = run_eval(job)
    assert summary["tasks"] == 2 and not summary.get("excluded"), summary
    rows = pl.read_parquet(out / "results.parquet").to_dicts()
    return {json.loads(row["conversation"])[1]["content"]: row for row in rows}


def test_the_oracle_passes_both(warehouse: tuple[Path, Path], tmp_path: Path) -> None:
    rows = _results(warehouse, "oracle", tmp_path / "oracle")
    assert all(row["success"] for row in rows.values()), rows


def test_a_wrong_quantity_fails_though_the_reply_names_sku_3(warehouse: tuple[Path, Path], tmp_path: Path) -> None:
    """Before: 'We have 9 units of SKU-3 in A1.' passed against the expert's 'We have 3 units ...': the 3 of SKU-3 was
    read as the number 3. The move's answer 'Moved 2 units.' names neither SKU-1 nor the bins, and fails too."""
    rows = _results(warehouse, f"{__name__}:make_says_nine", tmp_path / "nine")
    stock = rows["How many units of SKU-3 are in A1?"]
    assert not stock["success"] and stock["error_type"] == "answer_not_covered", stock["reason"]
    assert "states '3'," in stock["reason"], stock["reason"]
    move = rows["Move 2 SKU-1 from A1 to C3."]
    assert not move["success"] and "'sku-1', 'a1', 'c3'" in move["reason"], move["reason"]


def test_an_answer_in_other_words_passes_though_the_expert_began_with_the_tools_word(warehouse: tuple[Path, Path], tmp_path: Path) -> None:
    """Before: the expert's 'Moved 2 units of SKU-1 from A1 to C3.' required the word 'moved' (its tool said 'moved 2
    SKU-1 ...', and the answer's first word is capitalised), so 'Done: 2 units of SKU-1 were transferred from A1 to C3.'
    failed as answer_not_covered."""
    rows = _results(warehouse, f"{__name__}:make_transferred", tmp_path / "transferred")
    assert all(row["success"] for row in rows.values()), {k: row["reason"] for k, row in rows.items()}
