"""The traces: suite on real recorded experts: BFCL (bfcl sandbox) and the retail example (a user PythonSandbox)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.clients import NoopClient, OracleClient
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.suites import SuiteSettings, load_suite, parse_traces
from ee_middleware.evals.traces.suite import answer_facts, expert_digests, missing_facts, read_split
from ee_middleware.replay.sandboxes.registry import build_sandbox

RETAIL_SANDBOX = "retail_db.sandbox:make_sandbox"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:  # the retail example imports as retail_db (as tests/examples/conftest.py does)
    sys.path.insert(0, str(EXAMPLES))


def _build_split(store: Path, out: Path) -> dict[str, Any]:
    """Hold out every other trajectory (by id list: ids are random, so a seeded share would hold out a varying number)."""
    from ee_middleware.store.registry import open_store

    handle = open_store(store)
    ids = handle.trajectories(status="approved")["id"].to_list()
    handle.close()
    (out.parent / "heldout.txt").write_text("\n".join(ids[::2]))
    args = [
        "datasets",
        "build",
        "--store",
        str(store),
        "--out",
        str(out),
        "--kinds",
        "il",
        "--heldout-ids",
        str(out.parent / "heldout.txt"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    split: dict[str, Any] = json.loads((out / "datasets.json").read_text())["split"]
    return split


@pytest.fixture(scope="module")
def bfcl_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    from ee_middleware.bfcl.experts import record_experts

    folder = tmp_path_factory.mktemp("traces-bfcl")
    report = record_experts(folder / "store", "multi_turn_base", limit=10)
    assert len(report.recorded) == 10
    return folder / "store", folder / "data", _build_split(folder / "store", folder / "data")


@pytest.fixture(scope="module")
def retail_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    from retail_db.agent import record_experts

    folder = tmp_path_factory.mktemp("traces-retail")
    record_experts(folder / "store", folder, redact=False)
    return folder / "store", folder / "data", _build_split(folder / "store", folder / "data")


def _rows(folder: Path) -> list[dict[str, Any]]:
    return pl.read_parquet(folder / "results.parquet").to_dicts()


def test_bfcl_experts_oracle_100_noop_0_and_only_held_out_trajectories(
    bfcl_store: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    store, data, split = bfcl_store
    job = EvalJob(suites=[f"traces:{store}"], model="oracle", out=str(tmp_path / "o"), split=str(data / "datasets.json"))
    [oracle] = run_eval(job)
    assert oracle["success_rate"] == 1.0 and oracle["tasks"] + oracle.get("excluded", 0) == len(split["heldout_trajectories"])
    ids = {r["task_id"] for r in _rows(tmp_path / "o")}
    assert ids <= set(split["heldout_trajectories"]) and not ids & set(split["train_trajectories"]), "never a trained-on trajectory"
    [noop] = run_eval(job.model_copy(update={"model": "noop", "out": str(tmp_path / "n")}))
    assert noop["success_rate"] == 0.0 and set(noop["failures"]) == {"state_mismatch"}
    reasons = [r["reason"] for r in _rows(tmp_path / "n")]
    assert all("expert calls it did not make:" in r for r in reasons)


def test_a_python_sandbox_domain_oracle_100_noop_fails_with_the_right_reason(
    retail_store: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    store, data, split = retail_store
    settings = SuiteSettings(split=str(data), sandbox=RETAIL_SANDBOX)
    suite = load_suite(f"traces:{store}:retail-support", settings)
    tasks = suite.tasks()
    assert len(tasks) == len(split["heldout_trajectories"]) and not suite.excluded
    by_kind: dict[str, set[str]] = {"mutating": set(), "reading": set()}
    for task in tasks:
        assert suite.run(OracleClient(), task, 0, LoopConfig()).success
        result = suite.run(NoopClient(), task, 0, LoopConfig())
        assert not result.success
        sandbox = build_sandbox(RETAIL_SANDBOX)
        start, end = expert_digests(sandbox, task)
        sandbox.close()
        mutating = start != end  # a cancel the store refused (delivered order) changed nothing
        assert result.error_type == ("state_mismatch" if mutating else "answer_not_covered"), (task.payload["expert_calls"], result.reason)
        by_kind["mutating" if mutating else "reading"].add(task.id)
    assert all(by_kind.values()), "the held-out half has both kinds of task"


def test_right_calls_with_an_answer_that_misses_the_facts_fail_as_not_covered(retail_store: tuple[Path, Path, dict[str, Any]]) -> None:
    store, data, _ = retail_store
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(data), sandbox=RETAIL_SANDBOX))
    task = next(t for t in suite.tasks() if t.payload["facts"])
    reference = json.loads(json.dumps(task.reference))
    reference[-1][-1]["content"] = "Done."
    result = suite.run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
    assert result.error_type == "answer_not_covered" and repr(task.payload["facts"][0]) in result.reason


def test_a_negative_amount_keeps_its_sign_so_the_expert_text_passes_and_the_wrong_sign_fails(
    retail_store: tuple[Path, Path, dict[str, Any]],
) -> None:
    """Before: the fact dropped the expert's minus sign (``-250`` became ``250``) while the candidate's numbers kept
    theirs, so the oracle replaying the expert's own answer failed as not covered, and an answer with the wrong sign
    passed."""
    store, data, _ = retail_store
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(data), sandbox=RETAIL_SANDBOX))
    task = next(t for t in suite.tasks() if t.payload["facts"])
    answer = "Your balance is -20.50 after the refund; Bob would be at -$250 and it is -5C in Oslo."
    assert answer_facts(answer, ['{"city": "Oslo"}']) == ["-20.50", "-250", "-5c", "oslo"]

    def run_with(reply: str) -> Any:
        reference = json.loads(json.dumps(task.reference))
        reference[-1][-1]["content"] = reply
        payload = {**task.payload, "final_answer": answer, "facts": answer_facts(answer, ['{"city": "Oslo"}'])}
        return suite.run(OracleClient(), replace(task, reference=reference, payload=payload), 0, LoopConfig())

    assert run_with(answer).success, run_with(answer).reason
    flipped = run_with(answer.replace("-", ""))
    assert flipped.error_type == "answer_not_covered", flipped.reason
    assert all(repr(fact) in flipped.reason for fact in ("-20.50", "-250", "-5c")), flipped.reason


def test_an_extra_state_changing_call_fails_as_a_state_mismatch(bfcl_store: tuple[Path, Path, dict[str, Any]]) -> None:
    store, data, _ = bfcl_store
    suite = load_suite(f"traces:{store}:bfcl.multi_turn_base", SuiteSettings(split=str(data)))
    task = suite.tasks()[0]
    extra = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "x", "type": "function", "function": {"name": "mkdir", "arguments": '{"dir_name": "extra"}'}}],
    }
    reference = [list(turn) for turn in task.reference]
    reference[0].insert(0, extra)
    result = suite.run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
    assert result.error_type == "state_mismatch" and "it made every expert call, and others too" in result.reason


def test_the_split_is_required_and_must_hold_something_out(bfcl_store: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    store, data, _ = bfcl_store
    with pytest.raises(ConfigError, match=r"held out of training.*--split"):
        load_suite(f"traces:{store}", SuiteSettings())
    whole = json.loads((data / "datasets.json").read_text())
    del whole["split"]
    (tmp_path / "datasets.json").write_text(json.dumps(whole))
    with pytest.raises(ConfigError, match="records no held-out split"):
        read_split(tmp_path)
    with pytest.raises(ConfigError, match=r"None of the .* held-out trajectories"):
        load_suite(f"traces:{store}:other-app", SuiteSettings(split=str(data))).tasks()


def test_trajectories_without_a_sandbox_stop_the_suite_naming_the_option(retail_store: tuple[Path, Path, dict[str, Any]]) -> None:
    """Before: each was left out ('no sandbox for app ...'), so the run scored nothing and exited 0 (see
    tests/evals/test_traces_no_sandbox.py for the command)."""
    store, data, _ = retail_store
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(data)))
    with pytest.raises(ConfigError, match=r"no sandbox to run its \d+ held-out trajectories in.*'retail-support'.*--sandbox package"):
        suite.tasks()


def sandbox_of_no_world(**options: Any) -> object:
    """A real PythonSandbox of the retail tools that cannot rebuild any trajectory's world: every one is left out."""
    from ee_middleware.errors import EnvironmentUnavailableError
    from ee_middleware.replay.sandboxes.python import PythonSandbox

    def world(environment: dict[str, Any] | None) -> object:
        raise EnvironmentUnavailableError(f"this sandbox rebuilds no database, got {environment!r}")

    return PythonSandbox(world, tools={}, kind="no-world")


def test_ee_eval_run_traces_json(bfcl_store: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    store, data, _ = bfcl_store
    args = [
        "eval",
        "run",
        "--suite",
        f"traces:{store}::3",
        "--model-spec",
        "oracle",
        "--out",
        str(tmp_path),
        "--split",
        str(data),
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["suite"] == f"traces:{store}" and summary["tasks"] == 3 and summary["success_rate"] == 1.0


def test_traces_specs_and_answer_facts() -> None:
    assert parse_traces("/data/store", "s") == ("/data/store", None, None)
    assert parse_traces("/data/store:support-bot:20", "s") == ("/data/store", "support-bot", 20)
    assert parse_traces("local:/data/store", "s") == ("local:/data/store", None, None)
    assert parse_traces("s3://bucket/exp:bot", "s") == ("s3://bucket/exp", "bot", None)
    assert parse_traces("pkg.stores:open_store::5", "s") == ("pkg.stores:open_store", None, 5)
    observations = ['{"status": "pending", "city": "Raleigh", "total": "1,126.00"}']
    facts = answer_facts("Done: order #W5952658 is cancelled, $1,126.00 goes back to you in Raleigh.", observations)
    assert facts == ["w5952658", "1126.00", "raleigh"]
    assert answer_facts("Done: I have completed the request.", ["{}"]) == []


@pytest.mark.parametrize(
    ("observation", "facts"),
    [
        ('["apple", "kiwi"]', ["apple", "kiwi"]),  # a JSON list of values
        ('{"items": ["apple", "kiwi"], "status": "open"}', ["apple", "kiwi"]),  # values, not keys ("items" is one)
        ("Items: apple, kiwi", ["apple", "kiwi"]),  # a list in text
        ("We have apple and kiwi in the items room.", []),  # prose: its lowercase words are no facts
        ('{"in_stock": true, "discount": null}', []),  # JSON literals are no values a tool named (review)
        ("Items: apple, kiwi\nIn stock: true", ["apple", "kiwi"]),
    ],
)
def test_lowercase_values_the_tools_returned_are_facts(observation: str, facts: list[str]) -> None:
    """A shop's answer "We carry apple and kiwi." was left out as having nothing to check: only capitalized or
    non-alphabetic words counted, though lowercase values a tool returned (a list of products) are what the answer must
    state. Such a word counts where the tool's result holds it as a value of its own: quoted (not a key) or an item of a
    list; lowercase words of prose still do not."""
    assert answer_facts("We carry apple and kiwi in the items room: true, in stock, none null.", [observation]) == facts


def test_a_suite_that_scored_no_task_is_named_in_the_summary_and_by_the_gate(
    retail_store: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Every held-out trajectory excluded (a sandbox that cannot rebuild their worlds): summary.json keeps the suite with its exclusions, and the gate
    says that no task was scored and why (was: the suite and its reasons missing from summary.json, and the gate's only
    reason 'no suite was run by both runs')."""
    from ee_middleware.evals.gate import GatePolicy, gate

    store, data, _ = retail_store
    for side in ("a", "b"):
        job = EvalJob(
            suites=[f"traces:{store}:retail-support:3"],
            model="noop",
            out=str(tmp_path / side),
            split=str(data),
            sandbox=f"{__name__}:sandbox_of_no_world",
        )
        [summary] = run_eval(job)
        assert summary["tasks"] == 0 and summary["excluded"] > 0
    [written] = json.loads((tmp_path / "a" / "summary.json").read_text())["suites"]
    assert written["suite"] == summary["suite"] == f"traces:{store}:retail-support"
    assert written["excluded_reasons"] == summary["excluded_reasons"]
    outcome = gate(tmp_path / "a", tmp_path / "b", GatePolicy(min_tasks=1))
    assert not outcome.passed
    [reason] = outcome.reasons
    assert f"traces:{store}:retail-support: no task was scored" in reason and "its world cannot be rebuilt in the" in reason, reason


def test_a_state_mismatch_says_which_calls_the_candidate_made_instead(bfcl_store: tuple[Path, Path, dict[str, Any]]) -> None:
    """Before: only the expert calls it did not make, so a call with a missing argument (or to another tool) read
    as if the model had made no call at all."""
    store, data, _ = bfcl_store
    suite = load_suite(f"traces:{store}:bfcl.multi_turn_base", SuiteSettings(split=str(data)))
    task = next(t for t in suite.tasks() if t.reference[0] and t.reference[0][0].get("tool_calls"))
    reference = json.loads(json.dumps(task.reference))
    first = reference[0][0]["tool_calls"][0]["function"]
    first["arguments"] = "{}"
    result = suite.run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
    assert result.error_type == "state_mismatch" and f"calls it made that the expert did not: {first['name']}()" in result.reason, (
        result.reason
    )


@pytest.mark.parametrize(
    ("answer", "observation", "reply", "missing"),
    [
        ("The total is $1,250.00.", '{"total": 1250.0}', "It costs $1,250 in total.", []),
        ("Your balance is now 40.5.", '{"balance": 40.5}', "Balance: 40.50", []),
        ("I refunded 3 items.", "ok", "I have refunded three items.", []),
        ("Paris is at 21C.", '{"city": "Paris", "temp": "21C"}', "Paris: 21 °C", []),
        ("It ships on 2024-05-01.", '{"ship": "2024-05-01"}', "It ships on May 1st, 2024.", []),
        ("It ships on 2024-05-01.", '{"ship": "2024-05-01"}', "It ships on 1 May 2024.", []),
        ("Flight UA100 at 10:30.", '{"f": "UA100", "t": "10:30"}', "Flight UA1000 at 10:30.", ["ua100"]),
        ("I found 2 flights.", "[]", "Flights DL200 and AA12.", ["2"]),
        ("Paris is at 21C.", '{"city": "Paris", "temp": "21C"}', "Paris: 210 C", ["21c"]),
        ("It ships on 2024-05-01.", '{"ship": "2024-05-01"}', "It ships on May 2, 2024.", ["2024-05-01"]),
        ("Your refund is $12.", '{"refund": 12}', "Your refund is $12.99.", ["12"]),
        ("You owe 40 euros.", '{"owed": 40}', "You owe 40.5 euros.", ["40"]),
        ("Gate 3 at 10:30.", '{"gate": 3, "time": "10:30"}', "Gate 3.5 at 10:30.", ["3"]),
        ("Order W-12 is late.", '{"order": "W-12"}', "Order W-12.5 is late.", ["w-12"]),
        ("Your balance is -20.50 after the refund.", '{"balance": -20.5}', "Your balance is -20.5 now.", []),
        ("Your balance is -20.50 after the refund.", '{"balance": -20.5}', "Your balance is 20.50.", ["-20.50"]),
        ("Your balance is 20.50.", '{"balance": 20.5}', "Your balance is -20.50.", ["20.50"]),
        ("You owe -$250.", "{}", "You owe $-250.", []),
        ("You owe -$250.", "{}", "You owe $250.", ["-250"]),
        ("It is -5C in Oslo.", '{"Oslo": "-5C"}', "Oslo: -5 °C", []),
        ("It is -5C in Oslo.", '{"Oslo": "-5C"}', "Oslo: 5 °C", ["-5c"]),
        ("It is 5C in Oslo.", '{"Oslo": "5C"}', "Oslo: -5 °C", ["5c"]),
        ("Seats 10-20 are free.", "{}", "Seats 10-20 are free.", []),
        # a minus sign written U+2212 (or its fullwidth form, or an en dash before a number) is a sign on either side
        ("Bob would be at \u2212250.", "{}", "Bob would be at -250.", []),
        ("Bob would be at \u2212250.", "{}", "Bob would be at 250.", ["-250"]),
        ("Bob would be at -250.", "{}", "Bob would be at \u2212$250.", []),
        ("Bob would be at 250.", "{}", "Bob would be at \u2212250.", ["250"]),
        ("It is \u22125C in Oslo.", '{"Oslo": "-5C"}', "Oslo: 5 \u00b0C", ["-5c"]),
        ("It is -5C in Oslo.", '{"Oslo": "-5C"}', "Oslo: \u22125 \u00b0C", []),
        ("Your balance is \uff0d20.50.", '{"balance": -20.5}', "Your balance is -20.5 now.", []),
        ("It is \u20135C in Oslo.", '{"Oslo": "-5C"}', "Oslo: 5 \u00b0C", ["-5c"]),
        ("Seats 10\u201320 are free.", "{}", "Seats 10 to 20 are free.", []),
    ],
)
def test_an_answers_facts_are_read_as_whole_words_numbers_by_value_and_dates_in_any_common_form(
    answer: str, observation: str, reply: str, missing: list[str]
) -> None:
    """A candidate that states the expert's facts in other words passed only where it wrote them as the expert did
    (``$1,250`` did not state ``1,250.00``, ``three`` not ``3``), while a fact inside a longer word passed (``UA100`` in
    ``UA1000``, ``2`` in ``DL200``); now a fact is a whole word, a number its value, a date any common form of it."""
    assert missing_facts(answer_facts(answer, [observation]), [reply]) == missing


def test_a_run_paused_for_a_human_review_is_no_regression_task(tmp_path: Path) -> None:
    """An approved trajectory paused by HumanInTheLoopMiddleware ends on the call awaiting review: as a held-out task
    its expected world replayed that call, which a reviewer may reject, and the candidate was asked to stop where the
    review paused it. Now it is left out with the reason; the resumed run's trajectory, which holds the turn as the
    reviewer decided it (here: approved, 500 pears ordered), stays a task."""
    from ee_middleware.store import LocalExperienceStore
    from tests.trainers.datasets.test_reviewed_calls import _record_reviewed_run

    store = tmp_path / "store"
    _record_reviewed_run(store, "approve")
    handle = LocalExperienceStore(store)
    paused, resumed = sorted(handle.iter_trajectories(), key=lambda t: t.started_at)
    handle.close()
    _record_reviewed_run(store, "reject", request="Any pears left? Order some if not.")  # another thread and task, trained on
    (tmp_path / "heldout.txt").write_text(f"{paused.id}\n{resumed.id}")
    args = ["datasets", "build", "--store", str(store), "--out", str(tmp_path / "data"), "--kinds", "il"]
    result = CliRunner().invoke(app, [*args, "--heldout-ids", str(tmp_path / "heldout.txt")])
    assert result.exit_code == 0, result.output
    sandbox = "tests.trainers.datasets.test_reviewed_calls:make_sandbox"
    suite = load_suite(f"traces:{store}", SuiteSettings(split=str(tmp_path / "data"), sandbox=sandbox))
    assert [t.id for t in suite.tasks()] == [resumed.id]
    assert "paused before its task was done" in suite.excluded[paused.id]


def test_a_turn_whose_steps_were_offered_no_tool_is_offered_none() -> None:
    """Step.tools == [] (the app offered the model no tool at that call) was read as 'all of the trajectory's tools',
    unlike Trajectory.step_tools (found by review); a turn with no step at all still gets every tool."""
    from ee_middleware.evals.traces.suite import turn_tools
    from ee_middleware.testing.store_conformance import sample_trajectory

    t = sample_trajectory("no-tools")
    assert t.tools, "the sample offers tools"
    steps = [s.model_copy(update={"tools": []}) for s in t.steps]
    narrowed = t.model_copy(update={"steps": steps})
    assert [narrowed.step_tools(s) for s in narrowed.steps] == [[] for _ in steps]
    assert turn_tools(narrowed, 1) == [[]]
    assert turn_tools(narrowed, 2)[1] == list(t.tools), "a turn without steps"


def test_a_held_out_curriculum_rollout_is_never_a_traces_task(bfcl_store_path: Path, tmp_path: Path) -> None:
    """A curriculum trajectory (``ee curriculum run``) is the policy's own rollout on a task a model wrote, approved by a
    judge model: held out, it was evaluated as a regression task whose 'expert' is that rollout. It is now left out with
    the reason, beside a recorded expert held out with it."""
    from ee_middleware.store.local import LocalExperienceStore

    store = LocalExperienceStore(bfcl_store_path)
    expert = next(store.iter_trajectories(status="approved"))
    steps = [s.model_copy(update={"trajectory_id": "curriculum-1"}) for s in expert.steps]
    store.write([expert.model_copy(update={"id": "curriculum-1", "source": "curriculum", "steps": steps})])
    store.approve(["curriculum-1"], by="test")
    store.close()
    split = tmp_path / "datasets.json"
    split.write_text(json.dumps({"split": {"heldout_trajectories": [expert.id, "curriculum-1"], "train_trajectories": []}}))
    suite = load_suite(f"traces:{bfcl_store_path}", SuiteSettings(split=str(split)))
    assert [task.id for task in suite.tasks()] == [expert.id]
    assert list(suite.excluded) == ["curriculum-1"] and "source=curriculum" in suite.excluded["curriculum-1"]


def test_a_traces_suite_whose_tasks_cannot_load_claims_no_folder_and_an_old_phantom_is_dropped(
    bfcl_store: tuple[Path, Path, dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a typo'd store path (or a split whose held-out ids the store lacks) stopped the run only once run.json
    named the suite, so the corrected command carried a 0-task phantom suite and every gate of the folder failed on
    'traces:stor: no task was scored'."""
    from ee_middleware.errors import StoreError
    from ee_middleware.evals.gate import GatePolicy, gate
    from ee_middleware.evals.runner import RUN_FILE, _claim_run_dir

    store, data, _ = bfcl_store
    out = tmp_path / "cand"
    typo = EvalJob(suites=[f"traces:{store}x"], model="oracle", out=str(out), split=str(data))
    with pytest.raises(StoreError, match=r"No experience store at .*x\. ") as refused:
        run_eval(typo)
    # `ee eval run` has no --store flag: the hint names the suite the store came from (was: 'check the --store path')
    assert "--store" not in str(refused.value) and f"set by the suite traces:{store}x" in str(refused.value)
    assert not out.exists(), "the failed command claimed no folder"
    with pytest.raises(StoreError, match=r"to take 2 tasks from a store write traces:STORE:2"):
        run_eval(typo.model_copy(update={"suites": ["traces:2"]}))
    other = tmp_path / "other.json"  # a split of another store's build: none of its held-out ids is here
    other.write_text(json.dumps({"split": {"heldout_trajectories": ["not-here"], "train_trajectories": []}}))
    with pytest.raises(ConfigError, match=r"None of the 1 held-out trajectories"):
        run_eval(typo.model_copy(update={"suites": [f"traces:{store}:bfcl.other"], "split": str(other)}))
    assert not out.exists()

    # A folder an older version claimed that way (its run.json names the suite it never loaded) is taken by the corrected
    # command, which says so; its gate then holds the suite that ran alone.
    out.mkdir()
    _claim_run_dir(out, typo, [f"traces:{store}x"])
    job = typo.model_copy(update={"suites": [f"traces:{store}"]})
    with caplog.at_level("WARNING", logger="ee_middleware.evals.runner"):
        [summary] = run_eval(job)
    assert summary["suite"] == f"traces:{store}" and summary["tasks"] > 0
    assert f"traces:{store}x" in caplog.text and "left out of this run" in caplog.text
    assert json.loads((out / RUN_FILE).read_text())["suite_names"] == [f"traces:{store}"]
    [written] = json.loads((out / "summary.json").read_text())["suites"]
    assert written["suite"] == f"traces:{store}"
    run_eval(job.model_copy(update={"model": "noop", "out": str(tmp_path / "base")}))
    outcome = gate(out, tmp_path / "base", GatePolicy(min_tasks=1))
    assert outcome.passed, outcome.reasons


@pytest.mark.parametrize(
    ("answer", "observation", "reply", "missing"),
    [
        # a number after a hyphen inside an identifier or a date is part of that token, no number of its own
        ("We have 3 units of SKU-3.", '{"sku": "SKU-3", "total": 3}', "We have 9 units of SKU-3.", ["3"]),
        ("Flight UA-20 has 20 seats free.", '{"flight": "UA-20", "free": 20}', "Flight UA-20 has 0 seats free.", ["20"]),
        ("Your refund of 5 dollars is booked.", '{"refund": 5}', "Your refund of 50 dollars is booked on 2025-05-01.", ["5"]),
        ("Your refund of 1 dollar is booked.", '{"refund": 1}', "Your refund of 10 dollars is booked on 2025-05-01.", ["1"]),
        ("It was built in 2025.", '{"year": 2025}', "It was built on 2025-05-01.", ["2025"]),
        ("Bin A1 holds 1 unit of SKU-3.", '{"bins": {"C3": 7, "A1": 1}}', "Bin A1 holds 0 units of SKU-3.", ["1"]),
        ("Install version 1.2 now.", '{"v": "1.2"}', "Install version 1.2.3 now.", ["1.2"]),  # a version is one token
        ("Order O-104 ships.", '{"order": "O-104"}', "Order O-104-2 ships.", ["o-104"]),  # an id inside a longer id
        ("It is 5C in Oslo.", '{"Oslo": "5C"}', "Room A-5C in Oslo is cold.", ["5c"]),
        ("Bin A1 is full.", '{"bin": "A1"}', "Bin SKU-A1 is full.", ["a1"]),
        ("I found 20 seats.", "{}", "I found twenty-one seats.", ["20"]),
        # a short range written with a hyphen states both its numbers, and 3-day its 3 (r8 A1, A3: before, neither)
        ("Seats 3 to 5 are free.", "{}", "Seats 3-5 are free.", []),
        ("It takes 3 days.", "{}", "It is a 3-day wait.", []),
        ("Seats 3-5 are free.", "{}", "Seats 3-5 are free.", []),
        # ... written with spaces, words or an en dash it states its numbers
        ("Seats 3 to 5 are free.", "{}", "Seats 3 - 5 are free.", []),
        ("Seats 3 to 5 are free.", "{}", "Seats 3\u20135 are free.", []),
        # the number itself, and real negative numbers, still read as numbers
        ("We have 3 units of SKU-3.", '{"sku": "SKU-3", "total": 3}', "SKU-3: 3 units.", []),
        ("The change is -3.", "{}", "That is a change of -3.", []),
        ("The change is -3.", "{}", "The change (-3) is booked.", []),
        ("The change is -3.", "{}", "The change is 3 on SKU-3.", ["-3"]),
        ("The change is 3.", "{}", "The change is -3.", ["3"]),
        # digits of other scripts are read as numbers, inside an id as outside
        ("We have 3 units of SKU-3.", '{"sku": "SKU-3", "total": 3}', "We have \u0663 units of SKU-3.", []),
        ("We have 3 units of SKU-3.", '{"sku": "SKU-3", "total": 3}', "We have 9 units of SKU-\u0663.", ["3"]),
    ],
)
def test_a_number_inside_an_identifier_a_date_or_a_version_states_no_number(
    answer: str, observation: str, reply: str, missing: list[str]
) -> None:
    """Before: the digits after a hyphen that joins two words (``SKU-3``, ``UA-20``, the ``05`` and ``01`` of
    ``2025-05-01``) were read as a number the candidate stated, so one that read the right record and then stated the
    wrong quantity passed (sweep s19, finding 1)."""
    assert missing_facts(answer_facts(answer, [observation]), [reply]) == missing


def test_a_sentence_initial_capital_makes_no_word_a_fact() -> None:
    """Before: 'Moved 2 units ...' required the word 'moved' (in the tool's result, capitalised in the answer only because
    it begins the sentence) while 'I moved 2 units ...' did not, so a candidate that said 'transferred' failed (sweep s19,
    finding 2). A capital counts only where no sentence (or line) begins."""
    tool = ["moved 2 SKU-1 from A1 to C3"]
    facts = ["2", "sku-1", "a1", "c3"]
    assert answer_facts("Moved 2 units of SKU-1 from A1 to C3.", tool) == facts
    assert answer_facts("I moved 2 units of SKU-1 from A1 to C3.", tool) == facts
    assert answer_facts("Done. Moved 2 units of SKU-1 from A1 to C3.", tool) == facts
    assert answer_facts("- Moved 2 units of SKU-1 from A1 to C3.", tool) == facts
    assert missing_facts(facts, ["Done: 2 units of SKU-1 were transferred from A1 to C3."]) == []
    # a tool result that also writes the word in lower case explains the capital: no name
    assert answer_facts("Moved 2 units.", ["Moved 2 SKU-1 from A1 to C3", "moved 1 SKU-2 from B2 to C3"]) == ["2"]
    # one that capitalises it only where its sentences begin, and never writes it in lower case, holds it as a name
    # (r8 A4: 'Smith approved the refund.' gave 'Smith approved it.' no fact, so 'Jones approved it.' passed)
    assert answer_facts("Smith approved it.", ["Smith approved the refund."]) == ["smith"]
    assert answer_facts("Moved 2 units.", ["ok", "Moved 2 SKU-1 from A1 to C3"]) == ["moved", "2"]
    # a capital mid-sentence is still a name's: in the tool's result, in the answer, or an acronym at the start
    assert answer_facts("Raleigh gets the refund.", ["The refund goes to Raleigh today"]) == ["raleigh"]
    assert answer_facts("Delta is late; I asked Delta twice.", ["delta is late"]) == ["delta"]
    assert answer_facts("IBM ordered 2 units.", ["order of ibm: 2 units"]) == ["ibm", "2"]
    assert answer_facts("Your refund goes to Raleigh.", ["the refund goes to raleigh"]) == ["raleigh"]


def test_the_first_n_held_out_trajectories_are_the_oldest_whatever_order_they_were_written_in(
    bfcl_store: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """``traces:STORE::N`` takes the first N held-out trajectories: by when they started, not by the order the store
    was written in (a store written in another order, by ingest or several recording processes, evaluated other tasks)."""
    from ee_middleware.store import LocalExperienceStore

    store, data, split = bfcl_store
    source = LocalExperienceStore(store)
    trajectories = sorted(source.iter_trajectories(), key=lambda t: t.started_at)
    source.close()
    reversed_store = LocalExperienceStore(tmp_path / "reversed")
    reversed_store.write(list(reversed(trajectories)))  # newest first
    reversed_store.approve([t.id for t in trajectories], by="test")
    reversed_store.close()
    heldout = [t.id for t in trajectories if t.id in set(split["heldout_trajectories"])]
    for where in (store, tmp_path / "reversed"):
        tasks = load_suite(f"traces:{where}::3", SuiteSettings(split=str(data))).tasks()
        assert [task.id for task in tasks] == heldout[:3], where
