"""A tau domain's schemas are what the agent is offered: a ground-truth call to a tool no schema offers, and a schema
of no tool, are refused when the domain's tasks load (the oracle would score such a domain 100%, every agent 0% on it)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.suites import load_suite

DOMAIN_MODULE = '''
from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.domains.library.tools import schema


def check_stock(data, item: str) -> int:
    """How many of an item are in stock.

    Args:
        item: the item's name
    """
    return data["stock"].get(item, 0)


def order_item(data, item: str, quantity: int = 1) -> str:
    """Order an item.

    Args:
        item: the item's name
        quantity: how many
    """
    data["stock"][item] -= quantity
    return f"ordered {quantity} {item}"


def add_note(data, *, note: str) -> str:
    """Add a note for the staff.

    Args:
        note: the note
    """
    data["notes"].append(note)
    return "noted"


TOOLS = {"check_stock": check_stock, "order_item": order_item, "add_note": add_note}
TASKS = [
    {"id": "order-apple", "instruction": "One apple.",
     "turns": [{"user": "An apple please.", "actions": [{"name": "order_item", "arguments": {"item": "apple"}}]}]},
    {"id": "leave-note", "instruction": "Leave a note.",
     "turns": [{"user": "Note: closed on Monday.", "actions": [{"name": "add_note", "arguments": {"note": "closed on Monday"}}]}]},
]


def make(schemas):
    return TauDomain(
        name="pantry", policy="You run a pantry.", tools=TOOLS, schemas=schemas,
        load_data=lambda: {"stock": {"apple": 3}, "notes": []},
        splits={"test": lambda: [TauTask.from_json(t, "tasks") for t in TASKS]},
    )


def complete():
    return make([schema(fn) for fn in TOOLS.values()])


def note_forgotten():
    return make([schema(check_stock), schema(order_item)])


def unused_tool_unoffered():
    """check_stock has no schema, and no ground truth calls it: the agent is not offered it, and needs not be."""
    return make([schema(order_item), schema(add_note)])


def schema_of_no_tool():
    refund = {"type": "function", "function": {"name": "refund", "description": "r", "parameters": {"type": "object", "properties": {}}}}
    return make([*[schema(fn) for fn in TOOLS.values()], refund])


def nameless_schema():
    return make([*[schema(fn) for fn in TOOLS.values()], {"type": "function", "function": {"description": "x"}}])


def twice_offered():
    return make([*[schema(fn) for fn in TOOLS.values()], schema(add_note)])
'''


@pytest.fixture
def pantry(tmp_path: Path) -> Iterator[str]:
    """A package ``offered_<id>`` on sys.path holding the domain module."""
    package = f"offered_{abs(hash(str(tmp_path)))}"
    root = tmp_path / "src" / package
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "domain.py").write_text(textwrap.dedent(DOMAIN_MODULE))
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        yield f"{package}.domain"
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def test_a_domain_whose_schemas_offer_every_tool_its_ground_truth_calls_loads_and_the_oracle_scores_it(pantry: str, tmp_path: Path) -> None:
    assert [t.id for t in load_suite(f"tau:{pantry}:complete").tasks()] == ["order-apple", "leave-note"]
    assert [t.id for t in load_suite(f"tau:{pantry}:unused_tool_unoffered").tasks()] == ["order-apple", "leave-note"]
    [oracle] = run_eval(EvalJob(suites=[f"tau:{pantry}:complete"], model="oracle", out=str(tmp_path / "o")))
    assert (oracle["tasks"], oracle["success_rate"]) == (2, 1.0)


def test_a_ground_truth_call_to_a_tool_no_schema_offers_is_refused_naming_the_task_the_tool_and_the_fix(
    pantry: str, tmp_path: Path
) -> None:
    """Before: the domain loaded, the oracle scored 'leave-note' (its ground truth replays add_note) as passed, yet no
    agent was ever offered add_note, so every agent failed it."""
    message = r"'leave-note'.*calls the tool 'add_note', which the agent is never offered.*check_stock, order_item.*Add a schema of 'add_note' to the domain's schemas"
    with pytest.raises(ConfigError, match=message):
        load_suite(f"tau:{pantry}:note_forgotten").tasks()
    with pytest.raises(ConfigError, match="'leave-note'"):
        run_eval(EvalJob(suites=[f"tau:{pantry}:note_forgotten"], model="oracle", out=str(tmp_path / "r")))
    assert not (tmp_path / "r" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("schema_of_no_tool", r"'pantry' offers the agent the tool 'refund' \(schema 4\), which is none of its tools.*remove the schema"),
        ("nameless_schema", r"'pantry''s schema 4 .* names no tool.*\"name\": TOOL"),
        ("twice_offered", r"'pantry' has two schemas of the tool 'add_note'"),
    ],
)
def test_a_schema_that_offers_no_tool_of_the_domain_is_refused_when_the_tasks_load(
    pantry: str, tmp_path: Path, factory: str, message: str
) -> None:
    """Before: a schema of no tool ('refund') was offered to the agent, every call to it failed, and the oracle
    (which never calls it) scored the domain 100%."""
    with pytest.raises(ConfigError, match=message):
        load_suite(f"tau:{pantry}:{factory}").tasks()
    with pytest.raises(ConfigError, match="'pantry'"):
        run_eval(EvalJob(suites=[f"tau:{pantry}:{factory}"], model="oracle", out=str(tmp_path / "r")))
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_the_built_in_library_domain_offers_every_tool_its_ground_truth_calls() -> None:
    suite = load_suite("tau:library")
    called = {name for task in suite.tasks() for name, _ in task.payload["actions"]}
    assert called and called <= set(suite.domain.offered_tools())
    assert json.dumps(suite.domain.schemas)  # schemas stay plain JSON
