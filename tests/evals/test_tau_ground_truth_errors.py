"""A tau domain's task whose ground-truth actions give an error observation (a tool that raises) is refused when the
domain's tasks load, naming the task, the action, the error and the fix.

The case that passed silently: a production tool typed with a pydantic model reused in a tau domain. tau tools receive
the arguments as the raw JSON the model wrote (the domain's PythonSandbox runs with ``validate_arguments=False``), so
``delivery`` is a dict and the tool raises after it has already unlocked the user; the ground truth raised the same
way, so the databases matched and the oracle scored 100%, with the error only in ``details.ground_truth_errors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.tau.domain import TauDomain, TauTask

TYPED = f"tau:{__name__}:typed_domain"
RAW = f"tau:{__name__}:raw_json_domain"


class Delivery(BaseModel):
    channel: Literal["sms", "email"]


def get_user(data: dict[str, Any], user_id: str) -> dict[str, Any]:
    return data["users"][user_id]


def reset_password(data: dict[str, Any], user_id: str, delivery: Delivery) -> str:
    """The production tool as it is: it unlocks the user, then reads ``delivery`` as the pydantic model."""
    data["users"][user_id]["locked"] = False
    return f"A reset link was sent by {delivery.channel}."


def reset_password_raw(data: dict[str, Any], user_id: str, delivery: dict[str, Any]) -> str:
    """The same tool reading its arguments as the JSON they are."""
    data["users"][user_id]["locked"] = False
    return f"A reset link was sent by {delivery['channel']}."


def _schema(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "description": name, "parameters": parameters}}


def _domain(reset: Any, lookup_user: str = "u1") -> TauDomain:
    delivery = {"type": "object", "properties": {"channel": {"type": "string", "enum": ["sms", "email"]}}}
    tasks = [
        {
            "id": "unlock-u1",
            "instruction": "You are locked out; you want a reset link by SMS.",
            "turns": [
                {
                    "user": "I'm locked out (u1), send me a reset link by SMS.",
                    "actions": [{"name": "reset_password", "arguments": {"user_id": "u1", "delivery": {"channel": "sms"}}}],
                    "reply": "A reset link was sent by SMS.",
                }
            ],
        },
        {
            "id": "who-is-u1",
            "category": "answer",
            "instruction": "You want to know whose account u1 is.",
            "outputs": ["Ann"],
            "turns": [
                {
                    "user": "Whose account is u1?",
                    "actions": [{"name": "get_user", "arguments": {"user_id": lookup_user}}],
                    "reply": "It is Ann's account.",
                }
            ],
        },
    ]
    return TauDomain(
        name="helpdesk",
        policy="You run the IT helpdesk.",
        tools={"get_user": get_user, "reset_password": reset},
        schemas=[
            _schema("get_user", {"user_id": {"type": "string"}}),
            _schema("reset_password", {"user_id": {"type": "string"}, "delivery": delivery}),
        ],
        load_data=lambda: {"users": {"u1": {"name": "Ann", "locked": True}}},
        splits={"test": lambda: [TauTask.from_json(task, "tasks.json") for task in tasks]},
    )


def typed_domain() -> TauDomain:
    return _domain(reset_password)


def raw_json_domain() -> TauDomain:
    return _domain(reset_password_raw)


def test_a_ground_truth_action_that_raises_after_changing_the_database_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    message = (
        r"Task 'unlock-u1' of the tau domain 'helpdesk' \(split 'test'\): its ground-truth action "
        r"reset_password\(user_id='u1', delivery=\{'channel': 'sms'\}\) gives an error on a fresh database: "
        r"AttributeError: 'dict' object has no attribute 'channel'\..*raw JSON.*validate_arguments=False"
    )
    with pytest.raises(ConfigError, match=message):
        typed_domain().tasks("test")
    with pytest.raises(ConfigError, match="'unlock-u1'"):
        run_eval(EvalJob(suites=[TYPED], model="oracle", out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_the_tool_reading_its_arguments_as_json_loads_and_the_oracle_passes(tmp_path: Path) -> None:
    assert [t.id for t in raw_json_domain().tasks("test")] == ["unlock-u1", "who-is-u1"]
    [oracle] = run_eval(EvalJob(suites=[RAW], model="oracle", out=str(tmp_path / "run")))
    assert (oracle["tasks"], oracle["success_rate"]) == (2, 1.0), oracle


def test_a_read_that_raises_in_an_answer_task_changes_nothing_and_loads() -> None:
    """An error that leaves the database as it was is not refused: the expected database is the fresh one, so an agent
    making the same failing call gains nothing (only an action that raises after changing the database is refused). It
    is named in a warning: were it a bug in the tool (a ZeroDivisionError), every agent making that call would pass
    unnoticed (a sweep)."""
    with pytest.warns(UserWarning, match=r"'who-is-u1'.*ground-truth action get_user gives an error on a fresh database, leaving it"):
        assert [t.id for t in _domain(reset_password_raw, lookup_user="u9").tasks("test")] == ["unlock-u1", "who-is-u1"]


def test_a_call_the_tool_refuses_by_design_loads() -> None:
    """A refusal task whose expert tries to renew an overdue loan: the library's tool refuses it (an error observation)
    without changing the database, which is the behaviour the task is about."""
    import copy
    import json

    from ee_middleware.evals.tau.domains.library import HERE, domain

    library = domain()
    task = copy.deepcopy(next(t for t in json.loads((HERE / "tasks.json").read_text()) if t["id"] == "overdue-no-renew"))
    task["id"] = "overdue-tries-renew"
    task["turns"][-1]["actions"].append({"name": "renew_loan", "arguments": {"loan_id": "L-5002"}})
    tries = TauDomain(
        name="library-tries",
        policy=library.policy,
        tools=library.tools,
        schemas=library.schemas,
        load_data=library.load_data,
        splits={"test": lambda: [TauTask.from_json(task, "tasks.json")]},
    )
    with pytest.warns(UserWarning, match=r"'overdue-tries-renew'.*renew_loan gives an error.*refuses by design"):
        [loaded] = tries.tasks("test")
    assert loaded.id == "overdue-tries-renew"
    assert tries.ground_truth(loaded).errors and not tries.ground_truth(loaded).changes


def reset_password_with_a_ticket(data: dict[str, Any], user_id: str, delivery: dict[str, Any]) -> str:
    """Writes a random ticket number into the database: two runs of the same calls leave two databases."""
    import random

    data["users"][user_id]["locked"] = False
    data["users"][user_id]["ticket"] = random.randrange(10**9)
    return f"A reset link was sent by {delivery['channel']}."


def test_a_ground_truth_that_leaves_a_different_database_each_run_is_refused(tmp_path: Path) -> None:
    """Sweep (plug-ins) 8: a non-deterministic domain scored the oracle at 50% (database_mismatch), reported as the model's
    failure; run twice on fresh databases when the tasks load, the ground truth must leave the same database."""
    message = (
        r"Task 'unlock-u1' of the tau domain 'helpdesk' \(split 'test'\): its ground truth, run twice on fresh databases, "
        r"left two different databases: they differ from its action reset_password on \(action 1\).*Make the domain deterministic"
    )
    with pytest.raises(ConfigError, match=message):
        _domain(reset_password_with_a_ticket).tasks("test")
    with pytest.raises(ConfigError, match="'unlock-u1'"):
        run_eval(EvalJob(suites=[f"tau:{__name__}:ticket_domain"], model="oracle", out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def ticket_domain() -> TauDomain:
    return _domain(reset_password_with_a_ticket)
