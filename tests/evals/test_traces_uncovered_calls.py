"""The ``traces:`` suite checks the expert's calls of tools the sandbox does not provide (``covers()`` false: a tool that
acts outside the world, such as paging on-call, listed nowhere as docs/sandboxes.md says) as calls: the candidate must
make the same call, by name and arguments as the tool receives them.

A real create_agent helpdesk bot (a scripted chat model standing in for the served one) recorded with record_experience
into a real local store, held out by ``ee datasets build``, evaluated in a real PythonSandbox that has ``create_ticket``
but not ``page_oncall``. The candidates replay the expert's recorded answers (the oracle), edited where a test says."""

from __future__ import annotations

import json
from dataclasses import replace
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
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.suites import SuiteSettings, load_suite
from ee_middleware.evals.tasks import EvalTask
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store.registry import open_store
from ee_middleware.testing import ScriptedChatModel, tool_call

SANDBOX = f"{__name__}:make_sandbox"
NO_PAGE = f"{__name__}:make_no_page_candidate"
PAGE = {"team": "network", "message": "VPN down for everyone", "severity": 1}


def make_sandbox(**options: Any) -> PythonSandbox:
    """The helpdesk's world: its tickets. ``page_oncall`` pages a person, outside any world: the sandbox lists it nowhere."""

    def create_ticket(world: dict[str, Any], title: str, priority: int = 3) -> str:
        world["tickets"].append({"title": title, "priority": priority})
        return f"Opened T-{len(world['tickets'])}."

    return PythonSandbox(lambda environment: {"tickets": []}, tools={"create_ticket": create_ticket}, kind="desk")


class _WithoutPages(OracleClient):
    """The expert's answers with every ``page_oncall`` call removed: a candidate that never pages."""

    model = "no-page"

    def for_task(self, task: EvalTask) -> OracleClient:
        return OracleClient(_edited_reference(task, lambda call: None), task.turns)


def make_no_page_candidate(**options: Any) -> _WithoutPages:
    return _WithoutPages()


def _edited_reference(task: EvalTask, edit: Any) -> list[list[dict[str, Any]]]:
    """``task``'s reference with each ``page_oncall`` call replaced by ``edit(call)`` (a call, a list of calls, or None)."""
    reference = json.loads(json.dumps(task.reference))
    for turn in reference:
        for message in turn:
            calls = []
            for call in message.get("tool_calls") or []:
                if call["function"]["name"] != "page_oncall":
                    calls.append(call)
                    continue
                new = edit(call)
                calls += new if isinstance(new, list) else [new] if new else []
            if "tool_calls" in message:
                message["tool_calls"] = calls
                if not calls and not message.get("content"):
                    message["content"] = "Working on it."
    return reference


def _page(call: dict[str, Any], **arguments: Any) -> dict[str, Any]:
    written = json.loads(call["function"]["arguments"])
    return {**call, "function": {"name": "page_oncall", "arguments": json.dumps({**written, **arguments})}}


def _record(folder: Path) -> tuple[Path, Path]:
    """Four approved runs of the helpdesk bot: an outage (a ticket and a page), a plain ticket, a page alone, and one
    kept for training; the first three held out."""

    @tool
    def create_ticket(title: str, priority: int = 3) -> str:
        """Open a helpdesk ticket."""
        return "Opened T-1."

    @tool
    def page_oncall(team: str, message: str, severity: int = 2) -> str:
        """Page the on-call engineer of a team."""
        return f"Paged {team}."

    runs = {
        "outage": [
            AIMessage(content="", tool_calls=[tool_call("create_ticket", title="VPN down", priority=1), tool_call("page_oncall", **PAGE)]),
            AIMessage(content="Opened T-1 and paged the network on-call."),
        ],
        "plain": [AIMessage(content="", tool_calls=[tool_call("create_ticket", title="Printer jam")]), AIMessage(content="Opened T-1.")],
        "page-only": [AIMessage(content="", tool_calls=[tool_call("page_oncall", **PAGE)]), AIMessage(content="Done.")],
        "train": [AIMessage(content="", tool_calls=[tool_call("create_ticket", title="Mouse broken")]), AIMessage(content="Opened T-1.")],
    }
    store = folder / "store"
    ids = {}
    for name, script in runs.items():
        graph = create_agent(ScriptedChatModel(script=script), [create_ticket, page_oncall], system_prompt="You run the helpdesk.")
        agent = record_experience(graph, app="desk", store=store, approve_if=lambda t: t.status == "completed")
        agent.invoke({"messages": [("user", f"Help: {name}")]}, {"configurable": {"thread_id": name}})
        agent.flush()
        agent.recorder.close()
        handle = open_store(store)
        ids[name] = next(i for i in handle.trajectories(status="approved")["id"].to_list() if i not in ids.values())
        handle.close()
    (folder / "heldout.txt").write_text("\n".join(ids[name] for name in ("outage", "plain", "page-only")))
    args = ["datasets", "build", "--store", str(store), "--out", str(folder / "data"), "--kinds", "il"]
    result = CliRunner().invoke(app, [*args, "--heldout-ids", str(folder / "heldout.txt")])
    assert result.exit_code == 0, result.output
    return store, folder / "data" / "datasets.json"


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _record(tmp_path_factory.mktemp("traces-uncovered"))


def _tasks(desk: tuple[Path, Path]) -> tuple[Any, dict[str, EvalTask]]:
    store, split = desk
    suite = load_suite(f"traces:{store}:desk", SuiteSettings(split=str(split), sandbox=SANDBOX))
    tasks = {task.turns[0][0]["content"].removeprefix("Help: "): task for task in suite.tasks()}
    return suite, tasks


def test_a_candidate_that_never_pages_fails_the_outage_and_the_run_counts_the_checked_tasks(
    desk: tuple[Path, Path], tmp_path: Path
) -> None:
    """Before: the sandbox refused the expert's page_oncall as it refused the candidate's, so the world after both was
    the same and a candidate that never paged during an outage scored 100%; nothing said a call went unchecked. And a
    run whose expert only paged was left out as 'nothing to check'."""
    store, split = desk
    job = EvalJob(suites=[f"traces:{store}:desk"], model=NO_PAGE, out=str(tmp_path / "no-page"), split=str(split), sandbox=SANDBOX)
    [summary] = run_eval(job)
    rows = {r["task_id"]: r for r in pl.read_parquet(tmp_path / "no-page" / "results.parquet").to_dicts()}
    assert summary["tasks"] == 3 and not summary.get("excluded"), summary  # the page-only run is a task now
    assert summary["failures"] == {"uncovered_call_missing": 2}, summary
    assert summary["uncovered_calls_checked"] == 2, summary  # the outage and the page-only run: checked as calls
    failed = [r for r in rows.values() if not r["success"]]
    assert len(failed) == 2
    for row in failed:
        assert "page_oncall(team='network', message='VPN down for everyone', severity=1)" in row["reason"], row["reason"]
        assert "does not provide" in row["reason"], row["reason"]
        details = json.loads(row["details"])
        assert details["uncovered_calls"] == 1 and len(details["uncovered_calls_missing"]) == 1, details
    [plain] = [r for r in rows.values() if r["success"]]
    assert "uncovered_calls" not in json.loads(plain["details"]), "a task whose expert called no such tool is scored as before"

    suite, tasks = _tasks(desk)
    oracle = {name: suite.run(OracleClient(), task, 0, LoopConfig()) for name, task in tasks.items()}
    assert all(result.success for result in oracle.values()), {name: r.reason for name, r in oracle.items()}
    assert {name: r.details.get("uncovered_calls") for name, r in oracle.items()} == {"outage": 1, "plain": None, "page-only": 1}


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda call: call, None),  # the same call
        (lambda call: _page(call, severity=1.0), None),  # 1.0 is 1, as the tool receives it
        (lambda call: [call, call], "uncovered_call_extra"),  # a second page pages again: one more than the expert's
        (lambda call: _page(call, team="security"), "uncovered_call_missing"),  # another team (one word: compared as written)
        (lambda call: _page(call, message="The vpn is down for everyone"), None),  # free text: what it states, in its own case
        (lambda call: _page(call, message="Everyone: vpn down!"), None),  # and words, in any order
        (lambda call: _page(call, message="The network is down for everyone"), "uncovered_call_missing"),  # without VPN
        (lambda call: _page(call, message="Everyone has lost the vpn"), "uncovered_call_missing"),  # without down
    ],
)
def test_the_page_is_matched_by_name_and_arguments_as_the_tool_receives_them_free_text_by_its_facts(
    desk: tuple[Path, Path], edit: Any, error: str | None
) -> None:
    suite, tasks = _tasks(desk)
    task = tasks["outage"]
    result = suite.run(OracleClient(), replace(task, reference=_edited_reference(task, edit)), 0, LoopConfig())
    assert result.success is (error is None), result.reason
    assert result.error_type == error, result.reason
    if error == "uncovered_call_missing":
        assert "page_oncall(" in result.reason, result.reason
        assert "its own calls of these tools: page_oncall(" in result.reason, result.reason
    assert result.details["uncovered_calls"] == 1


def test_a_candidate_page_is_refused_by_the_sandbox_not_executed(desk: tuple[Path, Path]) -> None:
    """The candidate's page reaches no world (the sandbox refuses it, as before): it is only recorded, to be matched."""
    suite, tasks = _tasks(desk)
    result = suite.run(OracleClient(), tasks["page-only"], 0, LoopConfig())
    assert result.success, result.reason
    [page] = [m for m in result.conversation.messages if m.get("role") == "tool" and m.get("name") == "page_oncall"]
    assert "not available in this sandbox" in page["content"], page


PAGED: list[dict[str, Any]] = []
"""Every page a :class:`DispatchSandbox` sent: none may be, it covers no page_oncall."""


class DispatchSandbox:
    """A user's sandbox written to the protocol (not a PythonSandbox): one dispatch table of the app's tools, of which
    it covers the world's only. Its ``execute`` runs whatever it is given, page_oncall too, as the protocol allows (no
    call of a tool it does not cover ever comes)."""

    kind = "desk-dispatch"

    def __init__(self) -> None:
        self.world: dict[str, Any] = {"tickets": []}

    def covers(self, tool_name: str) -> bool:
        return tool_name == "create_ticket"

    def reset(self, environment: dict[str, Any] | None) -> None:
        self.world = {"tickets": []}

    def execute(self, call: ToolCall) -> Observation:
        if call.name == "page_oncall":
            PAGED.append(dict(call.arguments))  # a real service would page a person here
            return Observation(content="Paged.")
        self.world["tickets"].append(dict(call.arguments))
        return Observation(content=f"Opened T-{len(self.world['tickets'])}.")

    def snapshot(self) -> Any:
        return json.dumps(self.world)

    def restore(self, snapshot: Any) -> None:
        self.world = json.loads(snapshot)

    def state_digest(self) -> str:
        return json.dumps(self.world, sort_keys=True)

    def close(self) -> None:
        pass


def make_dispatch_sandbox(**options: Any) -> DispatchSandbox:
    return DispatchSandbox()


def test_a_tool_the_sandbox_does_not_cover_is_never_executed_for_the_expert_or_the_candidate(desk: tuple[Path, Path]) -> None:
    """Was (a sweep): the expert's world replayed every recorded call and the candidate's calls went to execute() without
    asking covers(), trusting the sandbox to refuse: a sandbox written to the protocol paged on-call for real, twice per
    task. Now neither reaches execute(); the candidate is answered that the tool is not available."""
    store, split = desk
    suite = load_suite(f"traces:{store}:desk", SuiteSettings(split=str(split), sandbox=f"{__name__}:make_dispatch_sandbox"))
    PAGED.clear()
    tasks = {task.turns[0][0]["content"].removeprefix("Help: "): task for task in suite.tasks()}
    results = [suite.run(OracleClient(), tasks[name], 0, LoopConfig()) for name in ("outage", "page-only")]
    assert PAGED == [], PAGED
    assert all(result.success for result in results), [result.reason for result in results]
    [page] = [m for m in results[1].conversation.messages if m.get("role") == "tool" and m.get("name") == "page_oncall"]
    assert page["content"] == "Error: tool 'page_oncall' is not available in this sandbox.", page


def test_an_expert_that_paged_twice_needs_two_pages(desk: tuple[Path, Path]) -> None:
    suite, tasks = _tasks(desk)
    task = tasks["outage"]
    twice = replace(task, payload={**task.payload, "expert_calls": [*task.payload["expert_calls"], task.payload["expert_calls"][-1]]})
    once = suite.run(OracleClient(), twice, 0, LoopConfig())
    assert not once.success and once.error_type == "uncovered_call_missing" and once.details["uncovered_calls"] == 2, once.reason
    both = suite.run(OracleClient(), replace(twice, reference=_edited_reference(task, lambda call: [call, call])), 0, LoopConfig())
    assert both.success, both.reason


def test_a_page_the_model_wrote_as_no_json_object_is_not_asked_of_the_candidate(desk: tuple[Path, Path]) -> None:
    """A call whose arguments capture stored as ``{"_raw": TEXT}`` (the model wrote no JSON object) never reached the
    tool: the graph answered it, as replay's runner reads it. Only the expert's real page is checked."""
    suite, tasks = _tasks(desk)
    task = tasks["outage"]
    garbled = {"id": "garbled", "name": "page_oncall", "arguments": {"_raw": "{team: network"}}
    edited = replace(task, payload={**task.payload, "expert_calls": [garbled, *task.payload["expert_calls"]]})
    result = suite.run(OracleClient(), edited, 0, LoopConfig())
    assert result.success and result.details["uncovered_calls"] == 1, result.reason
