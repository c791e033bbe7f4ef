"""The database-backed example of docs/sandboxes.md: a real LangGraph retail agent on SQLite, its
sandbox, and replay through the CLI. ``examples/`` is on the test path (pyproject's ``pythonpath``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from retail_db.agent import RetailShop, make_tasks, record_experts
from retail_db.data import DATASET
from retail_db.sandbox import make_sandbox
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.records import ToolCall
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import check_sandbox

SANDBOX = "retail_db.sandbox:make_sandbox"
ENVIRONMENT = {"dataset": DATASET, "seed": 0}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 24 expert conversations, recorded without redaction (synthetic data; see the docs)."""
    folder = tmp_path_factory.mktemp("retail")
    answers = record_experts(folder / "experience", folder, redact=False)
    assert len(answers) == len(make_tasks()) == 24
    return folder / "experience"


def test_the_sandbox_passes_the_conformance_kit() -> None:
    check_sandbox(
        make_sandbox,
        environment=ENVIRONMENT,
        mutate=ToolCall(id="m", name="modify_user_address", arguments=_address_change("aarav_okafor_3873")),
        read=[
            ToolCall(id="r1", name="get_user_details", arguments={"user_id": "aarav_okafor_3873"}),
            ToolCall(id="r2", name="list_orders", arguments={"user_id": "aarav_okafor_3873"}),
        ],
    )


def test_errors_returned_as_text_and_raised_are_both_error_observations() -> None:
    sandbox = make_sandbox()
    sandbox.reset(ENVIRONMENT)
    returned = sandbox.execute(ToolCall(id="a", name="get_order_details", arguments={"order_id": "#W0000000"}))
    raised = sandbox.execute(ToolCall(id="b", name="get_product", arguments={"product_id": "42"}))
    assert returned.is_error and returned.content == "Error: order not found"
    assert raised.is_error and raised.content.startswith("Error: RetailError(\"unknown product id '42'")
    assert raised.content.endswith("\n Please fix your mistakes."), "the text LangGraph's ToolNode shows the model"
    assert sandbox.execute(ToolCall(id="c", name="calculate", arguments={"expression": "3 * 18.5"})).content == "55.50"
    assert not sandbox.covers("transfer_to_human_agents"), "a tool with effects outside the database is never replayed"


def test_recorded_runs_are_approved_and_carry_their_environment(recorded: Path) -> None:
    trajectories = list(LocalExperienceStore(recorded).iter_trajectories(status="approved"))
    assert len(trajectories) == 24
    assert {json.dumps(t.environment, sort_keys=True) for t in trajectories} == {
        json.dumps({"dataset": DATASET, "seed": s}, sort_keys=True) for s in (0, 1)
    }
    observations = [s.observation for t in trajectories for s in t.steps if s.observation]
    raised = [o for o in observations if o.content.startswith("Error: RetailError(")]
    assert len(raised) == 4 and all(o.is_error for o in raised), "cancelling a delivered order raised, four times"
    assert sum(o.content == "Error: user not found" for o in observations) == 4, "wrong e-mail first, found by phone then"


def test_replay_through_the_cli_reproduces_every_expert_observation(recorded: Path) -> None:
    result = CliRunner().invoke(app, ["replay", "run", "--store", str(recorded), "--sandbox", SANDBOX, "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 24 and summary["failed"] == {} and summary["skipped"] == {}
    assert summary["fidelity_mismatches"] == 0, summary["fidelity_examples"]
    assert summary["states"] == 72 and summary["branches"] > 0
    assert set(summary["refused_tools"]) <= {"transfer_to_human_agents"}


def test_the_expert_path_in_the_sandbox_leaves_the_database_production_left(tmp_path: Path) -> None:
    task = next(t for t in make_tasks() if t.user.startswith("I moved to"))
    store = tmp_path / "experience"
    record_experts(store, tmp_path, tasks=[task], redact=False)
    [trajectory] = LocalExperienceStore(store).iter_trajectories()
    sandbox = make_sandbox()
    sandbox.reset(trajectory.environment)
    for step in trajectory.steps:
        if step.action.tool_call is not None:
            assert sandbox.execute(step.action.tool_call).content == step.observation.content
    production = RetailShop(tmp_path / "retail.sqlite")
    for table in ("users", "orders", "order_items", "products"):
        assert sandbox.world.table(table) == production.table(table), table
    assert any("Birch Street" in row[5] for row in production.table("users")), "the address change reached the database"


def test_the_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retail_db.__main__ import main

    assert main(["--out", str(tmp_path / "demo"), "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "24 conversations recorded" in out and "fidelity mismatches" in out and "expert" in out


def _address_change(user_id: str) -> dict[str, str]:
    return {"user_id": user_id, "address1": "12 Birch Street", "address2": "", "city": "Boise", "state": "ID", "zip": "83702"}


def test_bad_numbers_are_refused_before_anything_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: ``--k 0`` recorded 24 conversations, then ended in ee replay run's traceback; ``end_to_end.py --entries 4``
    ran the whole loop to a gate that could not pass (fewer held-out tasks than its min_tasks), ``--entries 0`` was the
    default, and ``--entries -3`` a traceback."""
    import importlib.util
    import sys

    from retail_db.__main__ import main

    for k in ("0", "-2", "x"):
        with pytest.raises(SystemExit) as stopped:
            main(["--out", str(tmp_path / "retail"), "--k", k])
        assert stopped.value.code == 2 and "--k" in capsys.readouterr().err
    assert not (tmp_path / "retail").exists()
    demo_file = Path(__file__).resolve().parents[2] / "examples" / "end_to_end.py"
    spec = importlib.util.spec_from_file_location("end_to_end", demo_file)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    sys.modules["end_to_end"] = demo  # its dataclasses look their module up
    try:
        spec.loader.exec_module(demo)
        for entries, quick in (("0", True), ("-3", True), ("2", True), ("3", False)):
            with pytest.raises(SystemExit) as stopped:
                demo.main(["--out", str(tmp_path / "demo"), "--entries", entries, *(["--quick"] if quick else [])])
            said = capsys.readouterr().err
            assert stopped.value.code == 2 and f"--entries must be at least {3 if quick else 4}" in said, said
    finally:
        del sys.modules["end_to_end"]
    assert not (tmp_path / "demo").exists()
