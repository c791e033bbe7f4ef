"""The tau-style harness: the shipped library domain, perturbed answers, the scripted and simulated user, tau-bench checkouts."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.evals.clients import NoopClient, OracleClient
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.suites import SuiteSettings, load_suite
from ee_middleware.evals.tasks import EvalTask
from ee_middleware.evals.tau.suite import TauSuite
from ee_middleware.records import ToolCall
from ee_middleware.testing.http import send_json, serving


@pytest.fixture(scope="module")
def library() -> TauSuite:
    return TauSuite("library")


def _task(suite: TauSuite, task_id: str) -> EvalTask:
    return next(t for t in suite.tasks() if t.id == task_id)


def test_the_library_domain_is_consistent(library: TauSuite) -> None:
    tasks = library.domain.tasks("test")
    assert 10 <= len(tasks) <= 20
    assert {t.category for t in tasks} == {"action", "answer", "refusal"}
    assert sum(len(t.actions) >= 3 for t in tasks) >= 5, "several tasks need several tool calls"
    assert any(t.outputs for t in tasks if t.category == "action")
    tools = {s["function"]["name"] for s in library.domain.schemas}
    for task in tasks:
        assert {a.name for a in task.actions} <= tools
        sandbox = library.domain.sandbox()
        sandbox.reset(None)
        for action in task.actions:  # every ground-truth action succeeds from the fresh database
            observation = sandbox.execute(ToolCall(id="gt", name=action.name, arguments=action.arguments))
            assert not observation.is_error, (task.id, action, observation.content)
        replies = " ".join(turn.reply for turn in task.turns)
        assert all(output in replies for output in task.outputs), task.id


def test_oracle_scores_100_percent_and_noop_0_where_actions_are_required(tmp_path: Path) -> None:
    oracle = run_eval(EvalJob(suites=["tau:library"], model="oracle", out=str(tmp_path / "o"), trials=2))
    assert oracle[0]["suite"] == "tau:library:test" and oracle[0]["tasks"] == 15
    assert oracle[0]["success_rate"] == 1.0 and oracle[0]["pass_hat"] == {"1": 1.0, "2": 1.0}
    import polars as pl

    [noop] = run_eval(EvalJob(suites=["tau:library"], model="noop", out=str(tmp_path / "n")))
    rows = pl.read_parquet(tmp_path / "n" / "results.parquet").to_dicts()
    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    assert all(not r["success"] and r["error_type"] == "database_mismatch" for r in by_category["action"])
    assert all(not r["success"] and r["error_type"] == "missing_output" for r in by_category["answer"])
    # Refusals: doing nothing is right; those with a required output still need it said.
    assert {r["task_id"] for r in by_category["refusal"] if r["success"]} == {"reference-atlas", "suspended-member"}
    assert noop["success_rate"] == 2 / 15


def _perturb(task: EvalTask, turn: int, step: int, edit: Any) -> EvalTask:
    reference = json.loads(json.dumps(task.reference))
    edit(reference[turn], step)
    return replace(task, reference=reference)


def _set_argument(name: str, value: Any) -> Any:
    def edit(steps: list[dict[str, Any]], step: int) -> None:
        function = steps[step]["tool_calls"][0]["function"]
        function["arguments"] = json.dumps({**json.loads(function["arguments"]), name: value})

    return edit


def _insert_call(name: str, arguments: dict[str, Any]) -> Any:
    def edit(steps: list[dict[str, Any]], step: int) -> None:
        steps.insert(
            step, {"role": "assistant", "content": "", "tool_calls": [ToolCall(id="x", name=name, arguments=arguments).to_openai()]}
        )

    return edit


@pytest.mark.parametrize(
    ("task_id", "turn", "step", "edit", "error_type", "says"),
    [
        ("pay-then-borrow", 1, 1, _set_argument("book_id", "B-104"), "database_mismatch", "books.B-104.available_copies: 1, expected 2"),
        ("pay-then-borrow", 1, 0, lambda steps, i: steps.pop(i), "database_mismatch", "members.M-1002.fines_due: 12.5, expected 0.0"),
        (
            "renew-two",
            1,
            1,
            lambda steps, i: steps.pop(i),
            "database_mismatch",
            "loans.L-5007.due_date: '2025-03-09', expected '2025-03-30'",
        ),
        ("update-email", 1, 1, _insert_call("renew_loan", {"loan_id": "L-5001"}), "database_mismatch", "loans.L-5001.due_date"),
        ("fines-block-checkout", 1, 0, _insert_call("pay_fines", {"member_id": "M-1002", "amount": 2.5}), "database_mismatch", "fines_due"),
        (
            "due-date-question",
            0,
            3,
            lambda steps, i: steps[i].update(content="It is due soon."),
            "missing_output",
            "'2025-03-09' appears in none",
        ),
    ],
    ids=["wrong-argument", "missing-call", "missing-one-of-two", "extra-state-change", "refusal-broken", "missing-output"],
)
def test_perturbed_answers_fail_with_the_right_reason(
    library: TauSuite, task_id: str, turn: int, step: int, edit: Any, error_type: str, says: str
) -> None:
    task = _perturb(_task(library, task_id), turn, step, edit)
    result = library.run(OracleClient(), task, 0, LoopConfig())
    assert not result.success and result.error_type == error_type
    assert says in result.reason


def test_read_only_detours_and_a_different_order_of_reads_still_pass(library: TauSuite) -> None:
    task = _perturb(_task(library, "renew-lichens"), 0, 0, _insert_call("search_catalog", {"query": "lichens"}))
    assert library.run(OracleClient(), task, 0, LoopConfig()).success


def test_the_scripted_user_speaks_each_turn_in_order(library: TauSuite) -> None:
    result = library.run(OracleClient(), _task(library, "swap-at-limit"), 0, LoopConfig())
    users = [m["content"] for m in result.conversation.messages if m["role"] == "user"]
    assert len(users) == 3 and users[-1] == "Yes."
    assert result.conversation.messages[0] == {"role": "system", "content": library.domain.policy}


class _ScriptedUserModel(BaseHTTPRequestHandler):
    """A chat server that plays the customer from a script (real HTTP, scripted answers)."""

    script: list[str]
    seen: list[dict[str, Any]]

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.seen.append(body)
        text = self.script[min(len(self.seen) - 1, len(self.script) - 1)]
        data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def user_server() -> Iterator[tuple[str, type]]:
    script = ["Hi, ada.okafor@example.org here. Please renew my lichen guide.", "Yes, go ahead.", "Thanks! ###STOP###"]
    handler = type("Handler", (_ScriptedUserModel,), {"script": script, "seen": []})
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as url:
        yield url, handler


def test_an_llm_user_simulator_over_http_drives_the_conversation(user_server: tuple[str, type], tmp_path: Path) -> None:
    url, handler = user_server
    suite = load_suite("tau:library:test:1", SuiteSettings(user_model=f"openai:{url}#customer"))
    result = suite.run(OracleClient(), _task(suite, "renew-lichens"), 0, LoopConfig())
    users = [m["content"] for m in result.conversation.messages if m["role"] == "user"]
    assert users == ["Hi, ada.okafor@example.org here. Please renew my lichen guide.", "Yes, go ahead."]
    assert result.success, result.reason
    first = handler.seen[0]["messages"]
    assert "Ada Okafor" in first[0]["content"] and first[0]["role"] == "system", "the simulator plays the task's instruction"
    second = handler.seen[1]["messages"]
    assert second[-1] == {"role": "user", "content": _task(suite, "renew-lichens").reference[0][-1]["content"]}, "roles are swapped"


def test_a_user_simulator_that_is_down_fails_the_task_with_the_reason(tmp_path: Path) -> None:
    job = EvalJob(suites=["tau:library:2"], model="oracle", out=str(tmp_path), user_model="openai:http://127.0.0.1:9/v1#u", retries=0)
    [summary] = run_eval(job)
    assert summary["failures"] == {"user_model_error": 2}


@pytest.mark.parametrize("body", [{"choices": []}, {"choices": [{"index": 0, "finish_reason": "stop"}]}], ids=["no-choices", "no-message"])
def test_a_user_simulator_answered_without_a_message_is_no_answer_run_again_not_a_score(body: dict[str, Any], tmp_path: Path) -> None:
    """Sweep H: a server's answer without a message failed the task as the simulator's (user_model_error) for good; it
    is the server giving no answer, as one that is down gives none (the same command runs the task again)."""

    class _NoMessage(_ScriptedUserModel):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            send_json(self, body)

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _NoMessage)) as url:
        job = EvalJob(suites=["tau:library:2"], model="oracle", out=str(tmp_path), user_model=f"openai:{url}#u", retries=0)
        [summary] = run_eval(job)
    assert summary["failures"] == {"user_model_error": 2} and summary["no_answer"] == 2


def test_suite_specs_and_their_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(load_suite("tau:library:test:3").tasks()) == 3
    assert len(load_suite("tau:library:4").tasks()) == 4
    with pytest.raises(ConfigError, match=r"Unknown tau domain 'clinic'.*library"):
        load_suite("tau:clinic")
    with pytest.raises(ConfigError, match="no split 'train'"):
        load_suite("tau:library:train")
    monkeypatch.delenv("EE_TAU_BENCH_DIR", raising=False)
    with pytest.raises(ConfigError, match="EE_TAU_BENCH_DIR"):
        load_suite("tau:retail", SuiteSettings())


FAKE_CHECKOUT = {
    "tau_bench/__init__.py": "import litellm  # tau-bench's own __init__ needs its dependencies: never run by the loader\n",
    "tau_bench/envs/__init__.py": "import litellm\n",
    "tau_bench/types.py": """
        from pydantic import BaseModel
        class Action(BaseModel):
            name: str
            kwargs: dict
        class Task(BaseModel):
            user_id: str
            actions: list[Action]
            instruction: str
            outputs: list[str]
    """,
    "tau_bench/envs/tool.py": "class Tool:\n    pass\n",
    "tau_bench/envs/shop/__init__.py": "import litellm\n",
    "tau_bench/envs/shop/data/__init__.py": """
        def load_data():
            return {"stock": {"pen": 3, "ink": 1}}
    """,
    "tau_bench/envs/shop/wiki.py": "WIKI = 'Sell pens.'\n",
    "tau_bench/envs/shop/tools/__init__.py": """
        from tau_bench.envs.tool import Tool
        class Sell(Tool):
            @staticmethod
            def invoke(data, item):
                data["stock"][item] -= 1
                return str(data["stock"][item])
            @staticmethod
            def get_info():
                return {"type": "function", "function": {"name": "sell", "description": "Sell one.",
                        "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}}}
        class Stock(Tool):
            @staticmethod
            def invoke(data, item):
                return str(data["stock"][item])
            @staticmethod
            def get_info():
                return {"type": "function", "function": {"name": "stock", "description": "How many are left.",
                        "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}}}
        ALL_TOOLS = [Sell, Stock]
    """,
    "tau_bench/envs/shop/tasks_test.py": """
        from tau_bench.types import Action, Task
        TASKS = [
            Task(user_id="u", instruction="You want a pen.", actions=[Action(name="sell", kwargs={"item": "pen"})], outputs=["2"]),
            Task(user_id="u", instruction="You ask what is sold.", actions=[Action(name="respond", kwargs={"content": "pens"})], outputs=["pens"]),
            Task(user_id="u", instruction="You ask how many pens.", actions=[Action(name="stock", kwargs={"item": "pen"})], outputs=["3"]),
            Task(user_id="u", instruction="You want a pen for free.", actions=[Action(name="stock", kwargs={"item": "pen"})], outputs=[]),
            Task(user_id="u", instruction="You want a quill.", actions=[Action(name="sell", kwargs={"item": "quill"})], outputs=[]),
        ]
    """,
}


def test_a_fake_tau_bench_shaped_checkout_loads_from_its_path_without_its_package_init(tmp_path: Path) -> None:
    """A stand-in written here in tau-bench's layout (the real one is not on PyPI): same loader, same scoring."""
    import sys

    from ee_middleware.evals.tau import tau_bench

    for name, text in FAKE_CHECKOUT.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    saved = {k: v for k, v in sys.modules.items() if k == "tau_bench" or k.startswith("tau_bench.")}
    for key in saved:
        del sys.modules[key]
    try:
        domain = tau_bench.load_domain("shop", tmp_path)
        suite = TauSuite.__new__(TauSuite)
        suite.domain, suite.split, suite.limit, suite.user_model, suite.max_user_turns, suite.name = (
            domain,
            "test",
            None,
            None,
            10,
            "tau:shop:test",
        )
        tasks = suite.tasks()
        # tau-bench names no category: the one its ground truth shows (before: 'action' for any task with an action,
        # a read-only question included, so a task an agent passes by doing nothing was counted as an action task)
        assert [t.category for t in tasks] == ["action", "answer", "answer", "refusal", "action"] and domain.policy == "Sell pens."
        assert [suite.run(OracleClient(), t, 0, LoopConfig()).success for t in tasks] == [True, True, True, True, False]
        noop = [suite.run(NoopClient(), t, 0, LoopConfig()).error_type for t in tasks]
        assert noop == ["database_mismatch", "missing_output", "missing_output", None, "task_error"], noop
        assert "litellm" not in sys.modules
    finally:
        for key in [k for k in sys.modules if k == "tau_bench" or k.startswith("tau_bench.")]:
            del sys.modules[key]
        sys.modules.update(saved)


@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_a_real_tau_bench_checkout_oracle_100_noop_fails_actions(domain: str, tmp_path: Path) -> None:
    import os

    if not os.environ.get("EE_TAU_BENCH_DIR"):
        pytest.skip("no tau-bench checkout: set EE_TAU_BENCH_DIR to run the tau-bench domains (not on PyPI)")
    [oracle] = run_eval(EvalJob(suites=[f"tau:{domain}:test:10"], model="oracle", out=str(tmp_path / "o")))
    assert oracle["tasks"] == 10 and oracle["success_rate"] == 1.0
    suite = load_suite(f"tau:{domain}:test:10", SuiteSettings(tau_bench_dir=os.environ["EE_TAU_BENCH_DIR"]))
    for task in suite.tasks():
        result = suite.run(NoopClient(), task, 0, LoopConfig())
        if task.category == "action" and not result.success:
            assert result.error_type == "database_mismatch"
