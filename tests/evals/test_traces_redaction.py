"""The traces: suite on stores recorded with capture's default redaction: the candidate model sees the placeholders, the
sandbox gets the real values from the store's redaction vault (as replay gives them, through ReplayPrivacy), and no file
of the run holds a real value. Real LangGraph graphs (the retail example's agent, a create_agent newsletter bot) recorded
with the real OTel SDK into real stores with their vaults; the retail example's SQLite sandbox.

The candidate here is a scripted stand-in for a model (no model that can solve these tasks runs on this machine): it
reads only what a model is shown (the user message, its tool results) and acts on it as a capable model would, so that
what it can do depends on what the suite gives the sandbox and shows the model."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.capture.redaction import PLACEHOLDER
from ee_middleware.cli.app import app
from ee_middleware.errors import SandboxError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.suites import SuiteSettings, load_suite
from ee_middleware.evals.tasks import EvalTask
from ee_middleware.evals.traces.suite import expert_digests
from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.protocol import state_digest
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store.registry import open_store
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.evals.client_parts import TurnClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:  # the retail example imports as retail_db (as tests/examples/conftest.py does)
    sys.path.insert(0, str(EXAMPLES))

RETAIL_SANDBOX = "retail_db.sandbox:make_sandbox"
NEWSLETTER_SANDBOX = f"{__name__}:make_newsletter_sandbox"
CANDIDATE = f"{__name__}:make_candidate"
MOVED = "I moved to"
PENDING = "still pending"
UNKNOWN_TAG = "[REDACTED:email:00000000]"


@pytest.fixture(autouse=True)
def _no_vault_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EE_VAULT", raising=False)


# -- the candidate: acts on what it is shown --------------------------------------------------------------------------


class ReadsWhatItIsShown(TurnClient):
    """Answers the retail move and pending-orders requests and the newsletter one from the user message and its tool
    results alone (a stand-in for a model that reads them; see the module docstring). With ``email``, it uses that
    e-mail instead of the one it was given; with ``twice``, it subscribes twice."""

    model = "reads-what-it-is-shown"

    def __init__(self, email: str | None = None, *, twice: bool = False) -> None:
        self.email, self.twice = email, twice

    def describe(self) -> dict[str, Any]:
        return {"model": self.model}

    def turn(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        at = max(i for i, m in enumerate(messages) if m["role"] == "user")
        user, seen = str(messages[at]["content"]), [str(m["content"]) for m in messages[at + 1 :] if m["role"] == "tool"]
        step = self._next(user, seen)
        if isinstance(step, str):
            return {"role": "assistant", "content": step}
        name, arguments = step
        call = {"id": f"c{len(seen)}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
        return {"role": "assistant", "content": "", "tool_calls": [call]}

    def _next(self, user: str, seen: list[str]) -> tuple[str, dict[str, Any]] | str:
        email = self.email or _given(user, "email", r"[\w.+-]+@[\w.-]+\w")
        if "newsletter" in user:
            return ("subscribe", {"email": email}) if len(seen) < 1 + self.twice else "Done: you are on the newsletter."
        if MOVED in user:
            street, unit, city, state, zip_code = re.search(r"moved to (.+?), (Apt \d+), (\w+), ([A-Z]{2}) (\d{5})", user).groups()  # type: ignore[union-attr]
            order = re.search(r"#W\d+", user).group(0)  # type: ignore[union-attr]
            plan = [
                lambda: ("find_user_by_email", {"email": email}),
                lambda: (
                    "modify_user_address",
                    {"user_id": seen[0], "address1": street, "address2": unit, "city": city, "state": state, "zip": zip_code},
                ),
                lambda: ("get_order_details", {"order_id": order}),
                lambda: f"Updated. Your address is now {json.loads(seen[2])['ship_to']}, and order {order} ships there.",
            ]
            if seen and seen[0].startswith("Error"):
                return "I could not find an account with that e-mail."
            return plan[len(seen)]()
        if PENDING in user:
            if not seen:
                return "find_user_by_email", {"email": email}
            found = [s for s in seen if not s.startswith("Error")]
            if not found:
                return (
                    ("find_user_by_phone", {"phone": _given(user, "phone", r"\d{3}-\d{3}-\d{4}")})
                    if len(seen) == 1
                    else "I could not find you."
                )
            if len(found) == 1:
                return "list_orders", {"user_id": found[0], "status": "pending"}
            return "Pending: " + ", ".join(o["order_id"] for o in json.loads(found[1])) + "."
        return "I cannot help with that."


def _given(text: str, kind: str, plain: str) -> str:
    found = re.search(rf"\[REDACTED:{kind}:\w+\]|{plain}", text)
    assert found is not None, text
    return found.group(0)


def make_candidate(**options: Any) -> ReadsWhatItIsShown:
    """The candidate as a model spec (``tests.evals.test_traces_redaction:make_candidate``)."""
    return ReadsWhatItIsShown()


# -- stores: the retail agent and a newsletter bot, recorded with the default redaction ----------------------------------


def _retail_values() -> set[str]:
    """Every e-mail address and phone number of the retail example's seeded databases (the values redaction hides)."""
    from retail_db.data import create_database

    values: set[str] = set()
    for seed in (0, 1):
        db = sqlite3.connect(":memory:")
        create_database(db, seed)
        for email, phone in db.execute("SELECT email, phone FROM users"):
            values |= {email, phone}
        db.close()
    return values


def _hold_out(store: Path, data: Path, keep: int = 1) -> Path:
    """``ee datasets build`` holding out every approved trajectory but ``keep`` of them; its datasets.json."""
    handle = open_store(store)
    ids = sorted(handle.trajectories(status="approved")["id"].to_list())
    handle.close()
    (data.parent / "heldout.txt").write_text("\n".join(ids[keep:]))
    args = [
        "datasets",
        "build",
        "--store",
        str(store),
        "--out",
        str(data),
        "--kinds",
        "il",
        "--heldout-ids",
        str(data.parent / "heldout.txt"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return data / "datasets.json"


def _record_retail(folder: Path, **capture: Any) -> tuple[Path, Path]:
    from retail_db.agent import make_tasks, record_experts

    tasks = [t for t in make_tasks() if MOVED in t.user or PENDING in t.user]
    record_experts(folder / "store", folder, tasks=tasks, **capture)  # redact: capture's default (on)
    return folder / "store", _hold_out(folder / "store", folder / "data")


@pytest.fixture(scope="module")
def retail_with_vault(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _record_retail(tmp_path_factory.mktemp("traces-redacted"), vault=True)


@pytest.fixture(scope="module")
def retail_without_vault(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _record_retail(tmp_path_factory.mktemp("traces-no-vault"))


_received: list[str] = []
"""The addresses the newsletter sandbox's ``subscribe`` was given (this process)."""


def make_newsletter_sandbox(*, refuse_twice: bool = False, **options: Any) -> PythonSandbox:
    """The newsletter bot's tool as a sandbox: ``subscribe`` adds the address to the world's list. With
    ``refuse_twice``, a user's own sandbox that raises (naming the address) on an address already subscribed, instead of
    returning an error result."""

    def subscribe(world: dict[str, Any], email: str) -> str:
        _received.append(email)
        world["subscribers"].append(email)
        return f"Subscribed {email}."

    kind = _RefusesTwice if refuse_twice else PythonSandbox
    return kind(lambda environment: {"subscribers": []}, tools={"subscribe": subscribe}, kind="newsletter")


def make_refusing_newsletter_sandbox(**options: Any) -> PythonSandbox:
    return make_newsletter_sandbox(refuse_twice=True)


class _RefusesTwice(PythonSandbox):
    def execute(self, call: ToolCall) -> Any:
        if call.arguments.get("email") in self.world["subscribers"]:
            raise SandboxError(f"the mail service refused {call.arguments['email']}: already subscribed")
        return super().execute(call)


def _record_newsletter(folder: Path, *, vault: bool) -> tuple[Path, Path]:
    """A create_agent bot subscribes two readers who give their e-mail address (approved, default redaction)."""
    readers = ["ann@example.com", "bob@example.com"]

    @tool
    def subscribe(email: str) -> str:
        """Add an e-mail address to the newsletter."""
        return f"Subscribed {email}."

    store = folder / "store"
    for reader in readers:
        script = [
            AIMessage(content="", tool_calls=[tool_call("subscribe", email=reader)]),
            AIMessage(content="Done: you are on the newsletter."),
        ]
        graph = create_agent(ScriptedChatModel(script=script), [subscribe], system_prompt="You run the newsletter.")
        agent = record_experience(graph, app="newsletter", store=store, vault=vault, approve_if=lambda t: t.status == "completed")
        agent.invoke({"messages": [("user", f"Please add me to the newsletter: {reader}")]}, {"configurable": {"thread_id": reader}})
        agent.flush()
        agent.recorder.close()
    return store, _hold_out(store, folder / "data")


def _run_files(folder: Path) -> dict[str, str]:
    return {
        p.name: (pl.read_parquet(p).write_csv() if p.suffix == ".parquet" else p.read_text())
        for p in folder.iterdir()
        if p.suffix in (".parquet", ".json", ".jsonl", ".md", ".html")
    }


# -- tests --------------------------------------------------------------------------------------------------------------


def test_a_model_that_reads_the_placeholder_solves_the_task_and_no_file_of_the_run_holds_a_real_value(
    retail_with_vault: tuple[Path, Path], tmp_path: Path
) -> None:
    """Before: the candidate's find_user_by_email(email=[REDACTED:email:...]) reached the sandbox as it was, which found no
    such user, so a model doing exactly what the expert did failed every task that starts with a lookup by e-mail or
    phone (the oracle passed: it replays the recorded calls blind); and the sandbox's answers went to the model and into
    results.parquet with the customers' real e-mail addresses and phone numbers (get_user_details). Now the candidate's
    calls get the vault's values at the sandbox, as replay's do, and what the sandbox says is redacted with the store's
    rules and salt: the model sees the same placeholders the recording holds."""
    store, split = retail_with_vault
    job = EvalJob(suites=[f"traces:{store}"], model=CANDIDATE, out=str(tmp_path / "run"), split=str(split), sandbox=RETAIL_SANDBOX)
    [summary] = run_eval(job)
    rows = pl.read_parquet(tmp_path / "run" / "results.parquet").to_dicts()
    assert summary["tasks"] == len(rows) >= 6 and not summary.get("excluded"), summary
    assert summary["success_rate"] == 1.0, [r["reason"] for r in rows]
    kinds = {MOVED: 0, PENDING: 0}
    for row in rows:
        conversation = json.loads(row["conversation"])
        user = next(m["content"] for m in conversation if m["role"] == "user")
        kinds[MOVED if MOVED in user else PENDING] += 1
        [email] = re.findall(r"\[REDACTED:email:\w+\]", user)
        results = [m["content"] for m in conversation if m["role"] == "tool"]
        if MOVED in user:  # the lookup found the customer; the profile the address change returns shows its placeholders
            assert not results[0].startswith("Error") and json.loads(results[1])["email"] == email, results
    assert all(kinds.values()), kinds
    files = _run_files(tmp_path / "run")
    assert {"results.parquet", "results.jsonl", "summary.json", "run.json", "report.md", "report.html"} <= set(files)
    leaked = {(name, value) for name, text in files.items() for value in _retail_values() if value in text}
    assert not leaked, sorted(leaked)[:5]


def test_the_expected_world_is_the_one_the_experts_real_values_make(tmp_path: Path) -> None:
    """Before: the expert's recorded calls were replayed with their placeholders, so the expected world of a call that
    writes a redacted value (subscribe(email=...)) held the placeholder, not the address: a candidate whose calls reach
    the sandbox with the real values, as replay's do, could never match it. Now both sides get the vault's values."""
    store, split = _record_newsletter(tmp_path, vault=True)
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(split), sandbox=NEWSLETTER_SANDBOX))
    [task] = suite.tasks()
    [user] = task.turns[0]
    assert PLACEHOLDER.search(user["content"]) and "@" not in user["content"], user
    sandbox = make_newsletter_sandbox()
    try:
        _, expected = expert_digests(sandbox, task)
        assert sandbox.world["subscribers"][0].endswith("@example.com"), sandbox.world
        real = sandbox.world["subscribers"][0]
        sandbox.reset(task.payload["environment"])
        sandbox.execute(ToolCall(id="x", name="subscribe", arguments={"email": real}))
        assert state_digest(sandbox) == expected
    finally:
        sandbox.close()
    _received.clear()
    result = suite.run(ReadsWhatItIsShown(), task, 0, LoopConfig())
    assert result.success, result.reason
    assert _received == [real, real], "the expert's call (for the expected world), then the candidate's, got the address"
    tool_results = [m["content"] for m in result.conversation.messages if m["role"] == "tool"]
    assert tool_results == [f"Subscribed {PLACEHOLDER.search(user['content']).group(0)}."], tool_results  # type: ignore[union-attr]


def test_a_sandbox_that_raises_naming_the_real_value_fails_the_task_with_the_placeholder(tmp_path: Path) -> None:
    """The loop's tool_error reason quotes the sandbox's exception, which may name the restored value: it is redacted,
    as a tool's result is, before it becomes the result's reason and error (else restoring the values would write the
    address into results.parquet). Here the candidate subscribes twice and the user's sandbox raises on the second."""
    store, split = _record_newsletter(tmp_path, vault=True)
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(split), sandbox=f"{__name__}:make_refusing_newsletter_sandbox"))
    [task] = suite.tasks()
    result = suite.run(ReadsWhatItIsShown(twice=True), task, 0, LoopConfig())
    placeholder = PLACEHOLDER.search(task.turns[0][0]["content"]).group(0)  # type: ignore[union-attr]
    assert result.error_type == "tool_error" and f"refused {placeholder}: already" in (result.reason or ""), result.reason
    assert "@" not in (result.reason or "") and "@" not in (result.conversation.error or "")


def test_without_a_vault_trajectories_whose_expert_arguments_were_redacted_are_left_out_saying_why(
    retail_without_vault: tuple[Path, Path], tmp_path: Path
) -> None:
    """Capture's default keeps no vault: the expert's lookups by e-mail and phone cannot be given their values, so such a
    task could only be failed by a model (and its expected world may be wrong). Before: scored anyway (the oracle
    passing, any real model failing). Now it is left out as replay flags such a step unrestorable: counted and listed in
    the summary, with the fix; the sandbox is never asked to act on a placeholder for the expert."""
    store, split = retail_without_vault
    assert not (store.parent / "store.vault").exists()
    job = EvalJob(suites=[f"traces:{store}"], model="oracle", out=str(tmp_path / "run"), split=str(split), sandbox=RETAIL_SANDBOX)
    [summary] = run_eval(job)
    assert summary["tasks"] == 0 and summary["excluded"] >= 6, summary
    reasons = summary["excluded_reasons"]
    assert sum(reasons.values()) == summary["excluded"] and any("find_user_by_phone" in r for r in reasons), reasons
    for reason in reasons:
        assert "redacted arguments (find_user_by_email" in reason and "no redaction vault" in reason and "vault=True" in reason, reason


def test_a_placeholder_the_vault_does_not_know_reaches_the_sandbox_as_it_is_and_is_reported(
    retail_with_vault: tuple[Path, Path],
) -> None:
    """As replay does with a proposed call: the call is executed with the placeholder as it is, and the result says
    which placeholder and why (before: nothing said the sandbox had been given a placeholder)."""
    store, split = retail_with_vault
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(split), sandbox=RETAIL_SANDBOX))
    task: EvalTask = next(t for t in suite.tasks() if MOVED in t.turns[0][-1]["content"])
    result = suite.run(ReadsWhatItIsShown(email=UNKNOWN_TAG), task, 0, LoopConfig())
    assert not result.success and result.details["unrestored"] == [{"placeholder": UNKNOWN_TAG, "reason": "not in the redaction vault"}]
    assert f"{UNKNOWN_TAG} (not in the redaction vault)" in (result.reason or ""), result.reason


# -- the environment reference: the world is rebuilt from it ------------------------------------------------------------

OWNER = "owner@kundenmail.de"
_owners: list[str] = []
"""The list owner each reset of the owner-notifying sandbox built its world with (this process)."""


def make_owner_sandbox(**options: Any) -> PythonSandbox:
    """The newsletter's list owner comes from the environment reference; notify_owner mails them."""

    def build(environment: dict[str, Any]) -> dict[str, Any]:
        _owners.append(environment["list_owner"])
        return {"owner": environment["list_owner"], "sent": []}

    def notify_owner(world: dict[str, Any], text: str) -> str:
        world["sent"].append({"to": world["owner"], "text": text})
        return "Sent to the list owner."

    return PythonSandbox(build, tools={"notify_owner": notify_owner}, kind="owner")


def _record_owner_bot(folder: Path, *, vault: bool) -> tuple[Path, Path]:
    """A create_agent bot tells the list owner (the environment reference names them) two things (approved, default
    redaction: the environment is stored with the owner's e-mail as a placeholder). The calls hold no redacted value."""

    @tool
    def notify_owner(text: str) -> str:
        """Send a note to the newsletter's list owner."""
        return "Sent to the list owner."

    store = folder / "store"
    for text in ("The newsletter is late.", "The newsletter is out."):
        script = [AIMessage(content="", tool_calls=[tool_call("notify_owner", text=text)]), AIMessage(content="Done: the owner knows.")]
        graph = create_agent(ScriptedChatModel(script=script), [notify_owner])
        agent = record_experience(
            graph, app="owner", store=store, vault=vault, approve_if=lambda t: t.status == "completed",
            environment=lambda inputs, config: {"list_owner": OWNER},
        )  # fmt: skip
        agent.invoke({"messages": [("user", f"Tell the list owner: {text}")]}, {"configurable": {"thread_id": text}})
        agent.flush()
        agent.recorder.close()
    return store, _hold_out(store, folder / "data")


def test_the_world_is_built_from_the_environment_with_the_vaults_values(tmp_path: Path) -> None:
    """Before: the sandbox was reset to the environment as stored, so the expected world and the candidate's were built
    with the owner '[REDACTED:email:...]' although the vault held the address. Now every reset gets the vault's values,
    for the expert's world and the candidate's alike; the task's payload keeps the placeholder."""
    store, split = _record_owner_bot(tmp_path, vault=True)
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(split), sandbox=f"{__name__}:make_owner_sandbox"))
    [task] = suite.tasks()
    assert PLACEHOLDER.fullmatch(task.payload["environment"]["list_owner"]), task.payload["environment"]
    sandbox = make_owner_sandbox()
    try:
        expert_digests(sandbox, task)
        assert sandbox.world["sent"] and all(note["to"] == OWNER for note in sandbox.world["sent"]), sandbox.world
    finally:
        sandbox.close()
    _owners.clear()
    from ee_middleware.evals.clients import build_eval_client

    result = suite.run(build_eval_client("oracle"), task, 0, LoopConfig())
    assert result.success and "unrestored" not in result.details, (result.reason, result.details)
    assert _owners == [OWNER, OWNER], "the expected world, then the candidate's, were built with the address"


def test_without_a_vault_a_trajectory_whose_environment_was_redacted_is_left_out_saying_why(tmp_path: Path) -> None:
    """Before: the world was built from the placeholder and the task scored (the expert's calls hold no redacted value,
    so nothing said so). Now it is left out, as one whose expert arguments cannot be restored is, naming the
    environment's key and the fix."""
    store, split = _record_owner_bot(tmp_path, vault=False)
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(split), sandbox=f"{__name__}:make_owner_sandbox"))
    assert suite.tasks() == []
    [reason] = suite.excluded.values()
    assert reason.startswith("its environment reference holds redacted values the sandbox's world cannot be given (list_owner: "), reason
    assert "no redaction vault (record with vault=True to replay real values)" in reason, reason


_production_sent: list[Any] = []
"""What the production notify_owner sent (this process): it must never be called by an eval."""


def make_sandbox_listing_the_production_tool(**options: Any) -> PythonSandbox:
    """A misconfigured sandbox: the production ``notify_owner(text)`` listed where a function of the world goes."""

    def notify_owner(text: Any) -> str:  # production: it mails the owner
        _production_sent.append(text)
        return "Sent to the list owner."

    return PythonSandbox(lambda environment: {"owner": environment["list_owner"]}, tools={"notify_owner": notify_owner}, kind="owner")


def test_a_production_tool_listed_where_the_world_goes_is_refused_before_the_candidate_can_call_it(tmp_path: Path) -> None:
    """Review of 17890a8: replay asks the sandbox to check a trajectory's recorded tool schemas before anything runs, but
    the traces: suite did not, so the task was evaluated and a candidate's call that left out the production tool's first
    argument would run the production function with the world in it. The suite's resets now ask
    the same check with the task's tools: the trajectory is left out, saying why, and nothing is sent."""
    store, split = _record_owner_bot(tmp_path, vault=True)
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(split), sandbox=f"{__name__}:make_sandbox_listing_the_production_tool"))
    _production_sent.clear()
    assert suite.tasks() == [] and len(suite.excluded) == 1, suite.excluded
    [reason] = suite.excluded.values()
    assert "tools['notify_owner'] takes 'text' first" in reason and "production tool" in reason, reason
    assert _production_sent == [], "the production tool was called"
