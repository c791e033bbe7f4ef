"""The improve job's replay stage under the built-in ``bfcl`` sandbox ([replay] sandbox not set) when it skips a few of
a night's trajectories: real BFCL expert trajectories plus one of the same app whose agent also calls a tool of its own
(``send_report``), recorded with ``record_experience`` from a real ``create_agent`` graph into a real store."""

from __future__ import annotations

import json
import shlex
import shutil
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.improve import STAGES, _run_stage
from ee_middleware.jobs.report import write_report
from ee_middleware.jobs.runs import Run, RunsDir
from ee_middleware.jobs.stages import QuietProgress, StageContext
from ee_middleware.store.registry import open_store

from .conftest import APP

HERE = "tests.jobs.test_replay_stage_builtin_sandbox"


def make_report_sandbox() -> Any:
    """The app's own sandbox: it provides send_report (a new [replay] sandbox: another replay id)."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(lambda environment: {"sent": []}, tools={"send_report": lambda world, to: f"sent to {to}"})


def _record_send_report(store: Path) -> str:
    """Record and approve one run of an agent of the BFCL app that calls its own send_report twice (the second call
    depends on the first: the replay cannot leave it out) in a BFCL expert's world; its id."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import StructuredTool

    from ee_middleware import record_experience
    from ee_middleware.store.registry import open_store
    from ee_middleware.testing import ScriptedChatModel, tool_call

    def send_report(to: str) -> str:
        """E-mail the report."""
        return "sent"

    opened = open_store(store, create=False)
    try:
        environment = next(iter(opened.iter_trajectories())).environment
    finally:
        opened.close()
    script = [AIMessage(content="", tool_calls=[tool_call("send_report", to=to)]) for to in ("bob", "al")]
    model = ScriptedChatModel(script=[*script, AIMessage(content="Sent.")])
    graph = create_agent(model, [StructuredTool.from_function(send_report)], system_prompt="You send reports.")
    agent = record_experience(graph, app=APP, store=store, environment=environment)
    agent.invoke({"messages": [("user", "Send the report to bob and al.")]}, {"configurable": {"thread_id": "th-report"}})
    agent.recorder.close()
    opened = open_store(store, create=False)
    try:
        [pending] = opened.trajectories(status="pending", app=APP)["id"].to_list()
        opened.approve([pending], by="test")
    finally:
        opened.close()
    return pending


def _write_config(folder: Path, sandbox: str = "") -> Path:
    path = folder / "improve.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [improve]
            store = "{folder / "experience"}"
            app = "{APP}"
            registry = "{folder / "registry"}"
            runs = "{folder / "runs"}"
            base_model = "{folder / "base"}"
            schedule = "iwm"

            [replay]
            policy = "mutate"
            k = 1
            {sandbox}
            """
        )
    )
    return path


def _stages(path: Path, *names: str) -> Run:
    config = ImproveConfig.load(path)
    runs = RunsDir(config.runs)
    run = runs.create("improve", config.describe(), config.config_hash())
    run.update(stage_order=list(STAGES))
    ctx = StageContext(config, run, runs, QuietProgress())
    for name in names:
        _run_stage(ctx, name)
    return run


def test_a_few_skipped_by_the_builtin_sandbox_name_one_fix_that_works_everywhere(tmp_path: Path, expert_store_template: Path) -> None:
    """1 of 9 trajectories calls send_report, which the default bfcl sandbox lacks. Was: the warning and decision said to
    set [replay] sandbox and start a new run, while the summary and outputs.sandbox_skips.again said to replay them with
    `ee replay run --again`, which replays them with the bfcl sandbox again (skipped again). Now every place names the
    new run; sandbox_skips keeps its keys (``again`` is None here) and adds ``command`` and ``fix``."""
    shutil.copytree(expert_store_template, tmp_path / "experience")
    lost = _record_send_report(tmp_path / "experience")
    path = _write_config(tmp_path)
    with pytest.warns(UserWarning, match="skipped because of the sandbox") as caught:
        run = _stages(path, "select", "replay")
    replay = run.stage("replay")
    assert replay["status"] == "done", replay.get("error")
    new_run = shlex.join(["ee", "improve", "--config", str(path), "--new-run"])
    [warning] = [d for d in replay["decisions"] if "because of the sandbox (" in d]
    places = {
        "summary": replay["summary"],
        "decision": warning,
        "warning": " ".join(str(w.message) for w in caught),
        "report": write_report(run)["markdown"].read_text(),
    }
    for where, text in places.items():
        assert f"`{new_run}`" in text and "ee replay run --again" not in text, (where, text)
    skips = replay["outputs"]["sandbox_skips"]
    assert skips["command"] == new_run and skips["again"] is None, skips
    assert {k: skips[k] for k in ("count", "tools", "trajectories")} == {"count": 1, "tools": ["send_report"], "trajectories": [lost]}
    assert f"`{new_run}`" in skips["fix"] and "Set [replay] sandbox to the sandbox of your tools" in skips["fix"]
    assert skips["fix"] in warning
    assert "set [replay] sandbox to the sandbox of your tools, then start a new run with" in replay["summary"]

    # why not `ee replay run --again`: its next attempt under this configuration skips the trajectory again (bfcl)
    args = ["replay", "run", "--again", "--config", str(path), "--store", str(tmp_path / "experience"), "--app", APP, "--json"]
    again = CliRunner().invoke(app, args)
    attempt = json.loads(again.stdout)
    assert attempt["replay_id"] != replay["outputs"]["replay_id"] and attempt["skipped"], again.output
    store = open_store(tmp_path / "experience", create=False)
    try:
        records = store.replays(replay_id=attempt["replay_id"]).filter(pl.col("trajectory_id") == lost)
    finally:
        store.close()
    assert records["status"].to_list() == ["skipped"] and "send_report" in records["reason"][0], records

    # the fix as printed: [replay] sandbox set to the app's own, a new run selects the trajectory to replay under it
    _write_config(tmp_path, sandbox=f'sandbox = "{HERE}:make_report_sandbox"')
    select = _stages(path, "select").stage("select")
    assert select["outputs"]["replay_id"] != replay["outputs"]["replay_id"]
    assert lost in select_file_ids(select), select["outputs"]


def select_file_ids(select: dict[str, Any]) -> list[str]:
    """The trajectories a select stage chose to replay (its selection file)."""
    return json.loads(Path(select["outputs"]["selection_file"]).read_text())["replay"]
