"""A tau-style domain a user writes for their own tools: named by ``tau:package.module:factory``, its task files checked."""

from __future__ import annotations

import importlib
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
import json
from pathlib import Path

from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.domains.library.tools import schema

HERE = Path(__file__).parent


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
    if data["stock"].get(item, 0) < quantity:
        raise ValueError(f"only {data['stock'].get(item, 0)} {item} left")
    data["stock"][item] -= quantity
    data["orders"].append({"item": item, "quantity": quantity})
    return f"ordered {quantity} {item}"


TOOLS = {"check_stock": check_stock, "order_item": order_item}


def make_domain(tasks_file: str = "tasks.json", load_data=None) -> TauDomain:
    def tasks():
        text = (HERE / tasks_file).read_text()
        return [TauTask.from_json(item, str(HERE / tasks_file)) for item in json.loads(text)]

    return TauDomain(
        name="pantry",
        policy="You run a pantry. Check stock before ordering. Never order more than 2 of anything.",
        tools=TOOLS,
        schemas=[schema(fn) for fn in TOOLS.values()],
        load_data=load_data or (lambda: {"stock": {"apple": 3, "plum": 5}, "orders": []}),
        splits={"test": tasks},
    )


def from_file(name: str):
    return lambda: make_domain(name)


bad_tool = from_file("bad_tool.json")
bad_argument = from_file("bad_argument.json")
not_a_task = from_file("not_a_task.json")
edited = from_file("edited.json")
cut_short = from_file("cut_short.json")


def _missing_database():
    return json.loads((HERE / "db.json").read_text())


def no_database():
    return make_domain(load_data=_missing_database)


def dated_database():
    import datetime

    return make_domain(load_data=lambda: {"stock": {"apple": 3}, "orders": [], "opened": datetime.date(2024, 5, 1)})


def list_database():
    return make_domain(load_data=lambda: [["apple", 3]])


def not_a_domain():
    return {"name": "pantry"}
'''

TASKS = [
    {
        "id": "order-apples",
        "instruction": "You want 2 apples.",
        "turns": [
            {
                "user": "Two apples please.",
                "actions": [
                    {"name": "check_stock", "arguments": {"item": "apple"}},
                    {"name": "order_item", "arguments": {"item": "apple", "quantity": 2}},
                ],
                "reply": "Ordered 2 apples.",
            }
        ],
    },
    {
        "id": "ask-plums",
        "category": "answer",
        "instruction": "Ask how many plums there are.",
        "outputs": ["5"],
        "turns": [{"user": "How many plums?", "actions": [{"name": "check_stock", "arguments": {"item": "plum"}}], "reply": "5 plums."}],
    },
    {
        "id": "refuse-three",
        "category": "refusal",
        "instruction": "You want 3 plums.",
        "turns": [{"user": "Order 3 plums.", "reply": "Sorry, at most 2 of anything."}],
    },
]


@pytest.fixture
def pantry(tmp_path: Path) -> Iterator[str]:
    """A package ``pantry_<id>`` on sys.path holding the domain module and its task files."""
    package = f"pantry_{abs(hash(str(tmp_path)))}"
    root = tmp_path / "src" / package
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "domain.py").write_text(textwrap.dedent(DOMAIN_MODULE))
    (root / "tasks.json").write_text(json.dumps(TASKS))
    bad_tool = json.loads(json.dumps(TASKS))
    bad_tool[0]["turns"][0]["actions"][1]["name"] = "order_itme"
    (root / "bad_tool.json").write_text(json.dumps(bad_tool))
    bad_argument = json.loads(json.dumps(TASKS))
    bad_argument[0]["turns"][0]["actions"][1]["arguments"] = {"item": "apple", "qty": 2}
    (root / "bad_argument.json").write_text(json.dumps(bad_argument))
    (root / "not_a_task.json").write_text(json.dumps(["order-apples"]))
    (root / "cut_short.json").write_text(json.dumps(TASKS)[:90])
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        yield f"{package}.domain"
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def test_a_users_own_domain_runs_by_its_factory_oracle_100_noop_only_the_refusal(pantry: str, tmp_path: Path) -> None:
    suite = load_suite(f"tau:{pantry}:make_domain")
    assert suite.name == f"tau:{pantry}:make_domain:test"
    assert [t.id for t in suite.tasks()] == ["order-apples", "ask-plums", "refuse-three"]
    assert len(load_suite(f"tau:{pantry}:make_domain:test:2").tasks()) == 2
    assert len(load_suite(f"tau:{pantry}:make_domain:1").tasks()) == 1
    [oracle] = run_eval(EvalJob(suites=[f"tau:{pantry}:make_domain"], model="oracle", out=str(tmp_path / "o")))
    assert (oracle["tasks"], oracle["success_rate"]) == (3, 1.0)
    [noop] = run_eval(EvalJob(suites=[f"tau:{pantry}:make_domain"], model="noop", out=str(tmp_path / "n")))
    assert noop["successes"] == 1  # the refusal: nothing may change, and noop changes nothing
    assert noop["failures"] == {"database_mismatch": 1, "missing_output": 1}


def test_a_ground_truth_action_naming_no_tool_is_an_error_naming_the_task_and_the_tools(pantry: str) -> None:
    with pytest.raises(ConfigError, match=r"order-apples.*'order_itme'.*check_stock, order_item"):
        load_suite(f"tau:{pantry}:bad_tool").tasks()


def test_a_ground_truth_action_with_arguments_its_tool_does_not_take_is_an_error(pantry: str) -> None:
    with pytest.raises(ConfigError, match=r"order-apples.*order_item.*qty"):
        load_suite(f"tau:{pantry}:bad_argument").tasks()


def test_a_task_that_is_not_an_object_is_an_error_naming_the_file(pantry: str) -> None:
    with pytest.raises(ConfigError, match=r"not_a_task\.json.*JSON object"):
        load_suite(f"tau:{pantry}:not_a_task").tasks()


def test_a_factory_that_builds_no_domain_or_cannot_be_imported_is_a_clear_error(pantry: str) -> None:
    with pytest.raises(ConfigError, match=r"not_a_domain.*TauDomain"):
        load_suite(f"tau:{pantry}:not_a_domain")
    with pytest.raises(ConfigError, match=r"Cannot import 'no_such_pkg.domain'"):
        load_suite("tau:no_such_pkg.domain:make")
    with pytest.raises(ConfigError, match=r"Unknown tau domain 'clinic'.*package\.module:factory"):
        load_suite("tau:clinic")


def test_a_factory_in_a_top_level_module_is_an_error_saying_how_the_spec_was_read(pantry: str, tmp_path: Path) -> None:
    """Before: tau:MODULE:factory with a top-level module said only "Unknown tau domain 'MODULE' (no domain has this
    name)", not that the factory was read as the split, nor that a factory needs a dotted module path."""
    top = f"{pantry.split('.')[0]}_top"
    (tmp_path / "src" / f"{top}.py").write_text(f"from {pantry} import make_domain\n")
    importlib.invalidate_caches()
    message = (
        rf"Unknown tau domain '{top}'.*tau:{top}:make_domain was read as tau:DOMAIN:SPLIT, the domain '{top}' and the "
        rf"split 'make_domain'\. '{top}' is an importable module, but a factory is read only with a dotted module path.*"
        rf"tau:PACKAGE\.{top}:make_domain.*entry point"
    )
    with pytest.raises(ConfigError, match=message):
        load_suite(f"tau:{top}:make_domain")
    # sweep H: with a split as well, only the generic "write tau:DOMAIN[:SPLIT][:N]"
    with_split = rf"Cannot read the suite 'tau:{top}:make_domain:test'.*dotted module path.*tau:PACKAGE\.{top}:make_domain:test"
    with pytest.raises(ConfigError, match=with_split):
        load_suite(f"tau:{top}:make_domain:test")
    with pytest.raises(ConfigError, match=r"Unknown tau domain 'clinic'.*the domain 'clinic' and the split 'test' \(a factory.*dotted"):
        load_suite("tau:clinic:test:5")
    assert [t.id for t in load_suite(f"tau:{pantry}:make_domain").tasks()] == ["order-apples", "ask-plums", "refuse-three"]


def _edited(pantry: str, change: dict, turn: dict | None = None) -> list:
    """The pantry's 'ask-plums' task with ``change`` (and its first turn with ``turn``), as edited.json holds it."""
    task = {**json.loads(json.dumps(TASKS[1])), **change}
    if turn is not None:
        task["turns"] = [{**task["turns"][0], **turn}]
    (Path(importlib.import_module(pantry).__file__).parent / "edited.json").write_text(
        json.dumps([task, TASKS[0]] if change.get("id") == "order-apples" else [task])
    )
    return load_suite(f"tau:{pantry}:edited").tasks()


@pytest.mark.parametrize(
    ("change", "turn", "message"),
    [
        ({"outputs": "15"}, None, r"'outputs' is str '15', not a list.*\[\"15\"\]"),  # read letter by letter before: '1' and '5'
        ({"turns": []}, None, r"'ask-plums'.*has no turns, so any agent would pass it"),
        ({}, {"actions": [{"name": "check_stock", "arguments": "plum"}]}, r"arguments of its action 'check_stock' are str 'plum'"),
        ({}, {"user": None}, r"turn 1 has no user text"),
        ({}, {"reply": 5}, r"turn 1's 'reply' is int 5, not a text"),
        # a simulated user was told "None" and said nothing, and the agent failed (a sweep)
        ({"instruction": None}, None, r"'ask-plums'.*'instruction' is NoneType None, not a text: write what the customer wants"),
        ({"instruction": ["a"]}, None, r"'instruction' is list \['a'\], not a text"),
        ({"instruction": "  "}, None, r"'instruction' is empty, not a text"),
        ({"id": "order-apples"}, None, r"two tasks with the id 'order-apples'"),
    ],
)
def test_a_task_file_with_odd_values_is_refused_naming_the_task_and_the_fix(
    pantry: str, change: dict, turn: dict | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _edited(pantry, change, turn)


def test_required_outputs_written_as_numbers_are_their_text_and_a_task_without_actions_is_scored_on_its_outputs(
    pantry: str, tmp_path: Path
) -> None:
    [task] = _edited(pantry, {"outputs": [5], "turns": [{"user": "How many plums?", "reply": "There are 5 plums."}]})
    scored = {key: value for key, value in task.payload.items() if key != "database"}  # the database's digest
    assert scored == {"actions": [], "outputs": ["5"], "instruction": "Ask how many plums there are."}
    [oracle] = run_eval(EvalJob(suites=[f"tau:{pantry}:edited"], model="oracle", out=str(tmp_path / "o")))
    assert (oracle["tasks"], oracle["success_rate"]) == (1, 1.0)  # before: a harness_error ('int' object has no attribute 'lower')
    [noop] = run_eval(EvalJob(suites=[f"tau:{pantry}:edited"], model="noop", out=str(tmp_path / "n")))
    assert noop["failures"] == {"missing_output": 1}


def test_a_tasks_file_that_is_not_json_is_an_error_naming_the_domain_and_split_not_a_bug_report(pantry: str, tmp_path: Path) -> None:
    """Before: the JSONDecodeError the domain's own task loader raised reached the CLI as 'unexpected JSONDecodeError
    ... (a bug in ee-middleware ...: report it)'."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    with pytest.raises(ConfigError, match=r"tau domain 'pantry' could not load the tasks of its split 'test': JSONDecodeError"):
        load_suite(f"tau:{pantry}:cut_short").tasks()
    result = CliRunner().invoke(
        app, ["eval", "run", "--suite", f"tau:{pantry}:cut_short", "--model-spec", "oracle", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0 and "could not load the tasks of its split 'test'" in result.output, result.output
    assert "bug in ee-middleware" not in result.output
    assert not (tmp_path / "r").exists(), "a domain whose tasks cannot load claims no run folder (was: run.json naming it)"


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_database", r"tau domain 'pantry' could not build its database: its load_data\(\) raised FileNotFoundError.*db\.json"),
        ("dated_database", r"database of the tau domain 'pantry' is not JSON.*date is not JSON serializable.*strings"),
        ("list_database", r"database of the tau domain 'pantry' is a list, not a JSON object"),
    ],
)
def test_a_database_that_cannot_be_built_stops_the_run_before_any_task_with_the_reason(
    pantry: str, tmp_path: Path, factory: str, message: str
) -> None:
    """Before: a load_data that raised, or returned dates, failed every task alike as a harness_error ('the harness
    failed on this task'); a database that is a list ran, and every task, agent and ground truth alike, scored."""
    with pytest.raises(ConfigError, match=message):
        run_eval(EvalJob(suites=[f"tau:{pantry}:{factory}"], model="oracle", out=str(tmp_path / "r")))
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_an_action_task_whose_ground_truth_fails_on_a_fresh_database_is_refused_with_the_action_and_its_error(
    pantry: str, tmp_path: Path
) -> None:
    """Before (first): ordering 9 apples (3 in stock) raised in the ground-truth replay as it did for the agent, both
    databases stayed as they were, and the task passed for the oracle and for an agent that did nothing. Then it was a
    task_error in every run; now the domain's tasks are refused when loaded, naming the task, the action and its error."""
    edited = {"id": "order-nine", "category": "action", "outputs": []}
    with pytest.raises(ConfigError, match=r"'order-nine'.*action task.*changes nothing.*fresh database.*order_item.*only 3 apple left"):
        _edited(pantry, edited, {"actions": [{"name": "order_item", "arguments": {"item": "apple", "quantity": 9}}]})
    with pytest.raises(ConfigError, match="'order-nine'"):
        run_eval(EvalJob(suites=[f"tau:{pantry}:edited"], model="noop", out=str(tmp_path / "r")))
    assert not (tmp_path / "r" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("change", "turn", "message"),
    [
        ({"outputs": []}, None, r"'ask-plums'.*answer task without outputs.*any agent.*passes it.*\"outputs\""),
        (
            {"category": "action"},
            None,
            r"'ask-plums'.*action task, but its ground truth changes nothing: its actions \(check_stock\) only read.*does nothing",
        ),
        ({"category": "action"}, {"actions": []}, r"'ask-plums'.*action task.*changes nothing: it has no actions"),
        (
            {"category": "refusal"},
            {"actions": [{"name": "order_item", "arguments": {"item": "plum", "quantity": 1}}]},
            r"'ask-plums'.*refusal task.*ground truth \(order_item\) changes the database.*every agent.*fails it.*action task",
        ),
        (
            {},
            {"actions": [{"name": "order_item", "arguments": {"item": "plum", "quantity": 1}}]},
            r"'ask-plums'.*answer task.*ground truth \(order_item\) changes the database",
        ),
        ({"outputs": ["5", ""]}, None, r"'ask-plums'.*output '' is empty.*checks nothing"),
        ({"outputs": [" , "]}, None, r"'ask-plums'.*output ' , ' is empty"),
    ],
)
def test_a_task_whose_ground_truth_does_not_show_its_category_is_refused_when_the_domain_loads(
    pantry: str, change: dict, turn: dict | None, message: str, tmp_path: Path
) -> None:
    """Before: loaded and run as written, so an agent that did nothing passed an answer task without outputs, an action
    task whose ground truth only reads (or has no actions) and any task requiring the output ''; and every agent that
    refused failed a refusal task whose ground truth changes the database."""
    with pytest.raises(ConfigError, match=message):
        _edited(pantry, change, turn)
    with pytest.raises(ConfigError, match="'ask-plums'"):
        run_eval(EvalJob(suites=[f"tau:{pantry}:edited"], model="noop", out=str(tmp_path / "r")))
    assert not (tmp_path / "r" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("change", "turn", "message"),
    [
        ({"output": ["5"]}, None, r"'ask-plums'.*unknown field 'output'.*did you mean 'outputs'"),
        ({}, {"response": "5 plums."}, r"'ask-plums'.*turn 1 has an unknown field 'response'.*user, actions, reply"),
        (
            {},
            {"actions": [{"name": "check_stock", "kwargs": {"item": "plum"}}]},
            r"'ask-plums'.*action 'check_stock'.*unknown field 'kwargs'.*arguments",
        ),
        ({"category": "answr"}, None, r"'ask-plums'.*category 'answr'.*action, answer or refusal"),
    ],
)
def test_a_misspelt_field_in_a_task_file_is_refused_naming_it_instead_of_ignored(
    pantry: str, change: dict, turn: dict | None, message: str
) -> None:
    """Before: unknown fields were ignored, so 'output' (for 'outputs') dropped the task's required output and an agent
    that answered nothing passed it; tau-bench's own 'kwargs' (for 'arguments') replayed the action with none."""
    with pytest.raises(ConfigError, match=message):
        _edited(pantry, change, turn)
