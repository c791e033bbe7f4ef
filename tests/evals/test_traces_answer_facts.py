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
from ee_middleware.evals.traces.suite import answer_facts, missing_facts
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


def make_hyphen_words(**options: Any) -> _Answers:
    """States every fact of the expert's answers, each quantity as a compound adjective ('a 3-unit stock')."""
    return _Answers(
        {
            "How many units of SKU-3 are in A1?": "SKU-3 holds a 3-unit stock in bin A1.",
            "Move 2 SKU-1 from A1 to C3.": "Done: a 2-unit transfer of SKU-1 from A1 to C3.",
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


def test_a_quantity_written_as_a_compound_adjective_states_its_number_end_to_end(warehouse: tuple[Path, Path], tmp_path: Path) -> None:
    """Before (r8 A1): 'SKU-3 holds a 3-unit stock in bin A1.' failed against the expert's 'We have 3 units of SKU-3 in
    A1.' with answer_not_covered ('3'), and 'a 2-unit transfer' against 'Moved 2 units ...' ('2'): a number followed by a
    hyphen and a word was read as part of an identifier, as the 3 of SKU-3 is."""
    rows = _results(warehouse, f"{__name__}:make_hyphen_words", tmp_path / "hyphen-words")
    assert all(row["success"] for row in rows.values()), {k: row["reason"] for k, row in rows.items()}


@pytest.mark.parametrize(
    ("answer", "observation", "reply", "missing"),
    [
        ("Shipping takes 3 days.", '{"days": 3}', "It's a 3-day shipment.", []),
        ("Shipping takes 3 days.", '{"days": 3}', "It's a three-day shipment.", []),
        ("Wait 5 minutes.", '{"m": 5}', "It is a 5-minute wait.", []),
        ("Wait 2.5 hours.", '{"h": 2.5}', "It is a 2.5-hour wait.", []),
        ("It's a 3-day shipment.", '{"days": 3}', "Shipping takes 3 days.", []),  # the expert's own 3-day is its 3
        ("It's a 3-day shipment.", '{"days": 3}', "Shipping takes 5 days.", ["3"]),
        # still no number: an id's number, a date's, an id part after the number, a count word's tens
        ("There are 3 units.", '{"total": 3}', "There are 5 units of SKU-3.", ["3"]),
        ("It was built in 2025.", '{"year": 2025}', "It was built in 2025-05.", ["2025"]),
        ("Apartment 12 is free.", "{}", "Apartment 12-b is free.", ["12"]),
        ("Apartment 12 is free.", "{}", "Apartment 12-ab3 is free.", ["12"]),
        ("I found 20 seats.", "{}", "I found twenty-one seats.", ["20"]),
    ],
)
def test_a_number_followed_by_a_hyphen_and_a_word_states_its_number(answer: str, observation: str, reply: str, missing: list[str]) -> None:
    """Before (r8 A1): '3-day', '5-minute', 'three-day' stated no number (the lookahead that keeps 2025-05 from stating
    2025 also took a hyphen and a word), and the expert's own '3-day' was the fact '3-day' that '3 days' did not state."""
    assert missing_facts(answer_facts(answer, [observation]), [reply]) == missing


@pytest.mark.parametrize(
    ("answer", "observation", "reply", "facts", "missing"),
    [
        ("Placed May 1, 2025.", '{"placed": "2025-05-01"}', "Placed on 2025-05-01.", ["2025-05-01"], []),
        ("Placed on the 1st of May 2025.", '{"placed": "2025-05-01"}', "Placed on 2025/05/01.", ["2025-05-01"], []),
        ("Placed May 1, 2025.", '{"placed": "2025-05-01"}', "Placed May 1, 2025.", ["2025-05-01"], []),
        ("Placed May 1, 2025.", '{"placed": "2025-05-01"}', "Placed on 2025-05-02.", ["2025-05-01"], ["2025-05-01"]),
        ("Placed May 1, 2025.", '{"placed": "2025-05-01"}', "Placed May 2, 2025, 1 item.", ["2025-05-01"], ["2025-05-01"]),
        ("Placed 2025-05-01.", '{"placed": "2025-05-01"}', "Placed on May 1, 2025.", ["2025-05-01"], []),
    ],
)
def test_an_expert_date_in_words_is_one_date_fact(answer: str, observation: str, reply: str, facts: list[str], missing: list[str]) -> None:
    """Before (r8 A2): the expert's 'May 1, 2025' gave the facts 1 and 2025, which a candidate's '2025-05-01' does not
    state (a date's parts are no numbers), while the expert's '2025-05-01' was stated by 'May 1, 2025'."""
    assert answer_facts(answer, [observation]) == facts
    assert missing_facts(facts, [reply]) == missing


_RANGES = ["3 to 5", "between 3 and 5", "3\u20135", "3 - 5", "3-5", "three to five"]


@pytest.mark.parametrize("expert", _RANGES[:-1])
@pytest.mark.parametrize("candidate", _RANGES)
def test_a_range_states_both_numbers_however_it_is_written(expert: str, candidate: str) -> None:
    """Before (r8 A3): an expert's '3 to 5' failed a candidate's '3-5' (missing 3 and 5), and an expert's '3-5' (the fact
    '3-5') failed '3 to 5', '3 - 5' and an en dash. A short two-part hyphen token a-b with a < b is now a range on both sides."""
    facts = answer_facts(f"Delivery takes {expert} days.", ['{"eta_min": 3, "eta_max": 5}'])
    assert facts == ["3", "5"]
    assert missing_facts(facts, [f"Delivery takes {candidate} days."]) == []
    assert missing_facts(facts, ["Delivery takes 3-6 days."]) == ["5"]


@pytest.mark.parametrize(
    ("answer", "reply", "missing"),
    [
        ("It costs 10 to 20 dollars.", "It costs 10-20 dollars.", []),
        ("Seasons 2019-2024 are archived.", "Seasons 2019 to 2024 are archived.", []),
        # no range: a date, a year and month, a phone number and its pieces, a score, an id, leading zeros
        ("We have 5 units.", "We have 7 units since 2025-05-01.", ["5"]),
        ("We have 5 units.", "We have 7 units since 2025-05.", ["5"]),
        ("Call 555-123-4567.", "Call 555-123-9999.", ["555-123-4567"]),
        ("We have 555 units.", "Call 555-1234 for 5 units.", ["555"]),
        ("We have 2 units.", "They won 2-1 with 5 units.", ["2"]),
        ("We have 3 units.", "SKU-3-5 has 9 units.", ["3"]),
        ("We have 1 unit.", "Code 01-05 has 9 units.", ["1"]),
        ("We have 3 units.", "Bin #3-5 has 9 units.", ["3"]),
    ],
)
def test_a_short_hyphen_range_states_both_numbers_but_dates_phones_and_ids_none(answer: str, reply: str, missing: list[str]) -> None:
    """r8 A3: which hyphen tokens are ranges (two parts, short, no leading zero, the first smaller) and which are not."""
    assert missing_facts(answer_facts(answer, ["{}"]), [reply]) == missing


@pytest.mark.parametrize(
    ("answer", "observation", "reply", "missing"),
    [
        ("Smith approved it.", "Smith approved the refund.", "Jones approved it.", ["smith"]),
        ("Smith approved it.", "Smith approved the refund.", "It was approved by Smith.", []),
        ("Denver is booked.", "Booked. Denver flight confirmed.", "Boston is booked.", ["denver"]),
        # a word the tools' results also write in lower case is no name: the sentence-initial capital explains it
        ("Moved 2 units.", "moved 2 SKU-1 from A1 to C3", "I transferred 2 units.", []),
        ("Moved 2 units.", "Moved 2 SKU-1. Nothing else moved.", "I transferred 2 units.", []),
    ],
)
def test_a_word_capitalised_only_where_sentences_begin_is_a_name_unless_the_tools_write_it_lowercase(
    answer: str, observation: str, reply: str, missing: list[str]
) -> None:
    """Before (r8 A4): 'Smith approved it.' with a tool result 'Smith approved the refund.' had no fact at all (both
    capitals begin a sentence), so 'Jones approved it.' passed."""
    assert missing_facts(answer_facts(answer, [observation]), [reply]) == missing


@pytest.mark.parametrize(
    "wrong",
    [
        "There are 5 units of SKU/3.",
        "There are 5 units of item:3.",
        "There are 5 units of SKU\u20133.",
        "There are 5 units of SKU\u20103.",
        "There are 5 units of SKU\u20113.",
        "There are 5 units on the 3rd shelf.",
        "There are 5 units since 2025/05/03.",
        "There are 5 units since 3/5/2025.",
        "There are 5 units at 10:03.",
    ],
)
def test_a_number_inside_an_id_with_another_separator_or_an_ordinal_states_no_number(wrong: str) -> None:
    """Before (r8 A5): the 3 of SKU/3, item:3, SKU and 3 joined by an en dash (U+2013), a hyphen (U+2010) or a
    non-breaking hyphen (U+2011), a slash date and 10:03, and of 3rd was read as the number 3, so a candidate stating 5
    units passed against the expert's 3."""
    facts = answer_facts("There are 3 units.", ['{"total": 3}'])
    assert missing_facts(facts, [wrong]) == ["3"]
    assert missing_facts(facts, [wrong.replace("5 units", "3 units")]) == []


@pytest.mark.parametrize(
    ("answer", "reply", "missing"),
    [
        # the expert's own id reads as the candidate's: the same text states it
        ("It is SKU\u20133.", "It is SKU\u20133.", []),
        ("It is SKU\u20133.", "It is SKU-3.", []),
        ("It is SKU\u20113.", "It is SKU-3.", []),
        ("It is on the 3rd shelf.", "It is on the 3rd shelf.", []),
        ("It is item:3.", "It is item:3.", []),
        # an em dash is prose punctuation (an id copied from a tool has none): the number after it is stated
        ("We moved 3 units.", "Done\u20143 units moved.", []),
        # '#' before a number writes it as an id's, which the expert may write without it (order 123)
        ("Order 123 ships today.", "Your order #123 ships today.", []),
        ("Order #123 ships today.", "Your order 123 ships today.", []),
        # an en dash after a number's unit is a range's (9am to 5pm), not an id's
        ("Open 9am to 5pm.", "Open 9am\u20135pm.", []),
        # a sign after a colon is still a sign
        ("The balance is -250.", "balance:-250", []),
        # a price per unit is still a price
        ("It costs $3 a unit.", "It costs $3/unit.", []),
    ],
)
def test_the_experts_ids_read_as_the_candidates(answer: str, reply: str, missing: list[str]) -> None:
    """r8 A5, the expert's side: a number the candidate's text would not state (SKU en dash 3, item:3) is no bare number
    fact, so the same text states the expert's facts. An em dash and '#' join nothing: 'Done', em dash, '3 units moved'
    states 3, and 'order #123' the 123 of 'order 123'."""
    assert missing_facts(answer_facts(answer, ["{}"]), [reply]) == missing


@pytest.mark.parametrize(
    ("expert", "candidate"),
    [
        ("Delivery for order 123 slips by 3 to 5 days", "order 123: delivery slips 3-5 days"),
        ("Order 123 ships on May 1, 2025 to the warehouse", "order 123 ships to the warehouse on 2025-05-01"),
        ("Order 123 needs a 3-day extension from the warehouse", "order 123 needs an extension of 3 days from the warehouse"),
    ],
)
def test_a_free_text_argument_reads_ranges_dates_and_compounds_as_the_final_answer_does(expert: str, candidate: str) -> None:
    """The pages the candidate must send (the tools the sandbox does not provide) read their numbers as the final answer
    does: before, '3-5', 'May 1, 2025' and '3-day' gave the facts '3-5', 1 and 2025, and '3-day', which these
    candidates' own words do not state."""
    from tests.evals.test_traces_uncovered_free_text import _missing

    assert not _missing([{"team": "network", "message": expert}], [{"team": "network", "message": candidate}])
    assert not _missing([{"team": "network", "message": candidate}], [{"team": "network", "message": expert}])


@pytest.mark.parametrize(
    ("answer", "observation", "facts"),
    [
        ("合計は1234円です", '{"total": 1234}', ["1234"]),  # kana and ideographs next to a number: no longer token
        ("ご注文SKU-3は発送済みです", '{"sku": "SKU-3"}', ["sku-3"]),
        ("Статус: отправлен.", '{"status": "отправлен"}', ["отправлен"]),  # a Cyrillic word, as a Latin one is
        ("Größe: groß, im Café Zürich", '{"größe": "groß", "name": "Café Zürich"}', ["groß", "café", "zürich"]),
    ],
)
def test_answers_in_other_scripts_state_their_own_facts(answer: str, observation: str, facts: list[str]) -> None:
    """Sweep B, finding 3: a number between CJK characters was no number of its own (the expert's own answer then missed
    its fact: the oracle failed with answer_not_covered), and a token had to start and end with an ASCII letter or digit
    (a Cyrillic answer had no facts; ``café`` was ``caf``)."""
    assert answer_facts(answer, [observation]) == facts
    assert missing_facts(facts, [answer]) == []


def test_a_word_in_another_script_is_not_stated_inside_a_longer_one() -> None:
    assert missing_facts(["отправлен"], ["статус: неотправлен"]) == ["отправлен"]
    assert missing_facts(["1234"], ["合計は1234円です"]) == [] and missing_facts(["1234"], ["SKU1234"]) == ["1234"]
