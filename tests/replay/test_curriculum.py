"""The curriculum: p(1-p) scoring of eval outcomes and model-written variants validated against the tool schemas.

The model is a scripted stand-in behind a real local HTTP server (see tests/replay/test_experience.py);
tasks and tools are real BFCL expert trajectories.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.evals.curriculum import SYNTHETIC_DROPPED
from ee_middleware.replay.curriculum import TOO_LONG, max_instruction_chars, score_tasks, validate_variant
from ee_middleware.store.local import LocalExperienceStore
from tests.replay.test_experience import ScriptedExperienceModel, _serve_failing_some


@pytest.fixture
def writer(serve: Callable[[Any], ScriptedExperienceModel]) -> ScriptedExperienceModel:
    answers = iter(
        [
            json.dumps({"instruction": "List the files, then make a folder named drafts.", "tools": ["ls", "mkdir"]}),
            json.dumps({"instruction": "Email the file to Bob.", "tools": ["send_email"]}),  # not one of the task's tools
            "Here is a nice task for you!",
            json.dumps({"instruction": "Show the current folder.", "tools": ["pwd"]}),
        ]
        * 10
    )
    return serve(lambda messages: next(answers))


def _rows(outcomes: dict[str, list[bool]]) -> list[dict[str, Any]]:
    return [
        {"suite": "bfcl", "task_id": task, "trial": i, "success": ok} for task, results in outcomes.items() for i, ok in enumerate(results)
    ]


def test_tasks_are_ranked_by_outcome_variance() -> None:
    scores = score_tasks(
        _rows({"always": [True] * 4, "never": [False] * 4, "half": [True, False] * 2, "mostly": [True, True, True, False]})
    )
    assert [(s.task_id, s.variance) for s in scores] == [("half", 0.25), ("mostly", 0.1875), ("always", 0.0), ("never", 0.0)]
    with pytest.raises(ConfigError, match="task_id"):
        score_tasks([{"success": True}])


def test_results_from_another_harness_are_read_by_value_or_refused_by_row() -> None:
    """A "false" string is a failure (bool("false") is True), a conversation may be a list, not only its JSON text."""
    rows = [
        {"task_id": "t", "success": "false", "conversation": [{"role": "user", "content": "Make a folder."}]},
        {"task_id": "t", "success": "True"},
        {"task_id": "t", "success": 0},
        {"task_id": "t", "success": 1},
    ]
    (score,) = score_tasks(rows)
    assert (score.p, score.instruction) == (0.5, "Make a folder.")
    for bad, match in ((42, "row 1 is int"), ({"task_id": "t", "success": "maybe"}, "'success' must be true or false")):
        with pytest.raises(ConfigError, match=match):
            score_tasks([bad])


def test_variants_naming_unknown_tools_or_copying_the_parent_are_rejected() -> None:
    assert validate_variant('{"instruction": "x", "tools": ["rm"]}', "y", ["ls"]) == (None, "unknown tools")
    assert validate_variant('{"instruction": "y", "tools": []}', "y", ["ls"]) == (None, "same instruction as its parent")
    assert validate_variant('ok: {"instruction": "x", "tools": ["ls"]}', "y", ["ls"]) == ({"instruction": "x", "tools": ["ls"]}, None)


def test_a_variant_far_longer_than_its_parent_is_rejected() -> None:
    """Was (a sweep): a writer whose server ignored max_tokens wrote a 700 KB instruction, kept, and sent to the policy on
    every rollout of the task."""
    parent = "List the files in my home folder."
    long = json.dumps({"instruction": "List the files. " + "And again. " * 400, "tools": ["ls"]})
    assert validate_variant(long, parent, ["ls"]) == (None, TOO_LONG)
    fits = json.dumps({"instruction": "List the hidden files in my home folder, sorted by size, largest first.", "tools": ["ls"]})
    assert validate_variant(fits, parent, ["ls"])[1] is None
    assert max_instruction_chars("x" * 1000) == 4000 and max_instruction_chars(parent) == 2000


def test_curriculum_propose_writes_validated_variants_of_the_highest_variance_tasks(
    bfcl_store_path: Path, writer: ScriptedExperienceModel, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    store = LocalExperienceStore(bfcl_store_path)
    entries = sorted(t.environment["entry_id"] for t in store.iter_trajectories())
    store.close()
    results = tmp_path / "run" / "results.jsonl"
    results.parent.mkdir()
    outcomes = {entries[0]: [True, False, True, False], entries[1]: [True, True, True, True], "not-in-the-store": [True, False]}
    results.write_text("".join(json.dumps(r) + "\n" for r in _rows(outcomes)))
    out = tmp_path / "curriculum" / "tasks.jsonl"  # a folder not made yet (was: '....tmp: No such file or directory')
    args = ["curriculum", "propose", "--from", str(results.parent), "--model", f"openai:{writer.base_url}#writer"]
    result = CliRunner().invoke(app, [*args, "--store", str(bfcl_store_path), "--n", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["unmatched"] == ["not-in-the-store"] and summary["top_tasks"][0]["task_id"] in (entries[0], "not-in-the-store")
    assert summary["rejected"] == {"unknown tools": 1, "no JSON object with an 'instruction' field": 1}
    variants = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(variants) == summary["variants"] == 2
    for variant in variants:
        assert variant["source"] == "curriculum" and variant["parent"]["task_id"] == entries[0], (
            "only the task with 0 < p < 1 that is stored"
        )
        names = {t["function"]["name"] for t in variant["tools"]}
        assert set(variant["needs"]) <= names and variant["environment"]["entry_id"] == entries[0]
    assert {v["instruction"] for v in variants} == {"List the files, then make a folder named drafts.", "Show the current folder."}


def approve_short(trajectory: Any) -> bool:
    """An approve_if rule for the test: accept trajectories of one tool call."""
    return len(trajectory.tool_names) == 1


def test_curriculum_run_keeps_judged_successes_as_pending_curriculum_trajectories(
    bfcl_store_path: Path, tmp_path: Path, serve: Callable[[Any], ScriptedExperienceModel]
) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    def policy(messages: list[dict[str, Any]]) -> str:  # one ls, then an answer (as text: parsed from <tool_call>)
        if messages[-1]["role"] == "tool":
            return "Done: I listed the folder."
        return '<tool_call>{"name": "ls", "arguments": {}}</tool_call>'

    def judge(messages: list[dict[str, Any]]) -> str:
        task = messages[-1]["content"]
        if "garbled" in task:
            return "hmm"
        return json.dumps({"reasoning": "the listing was shown", "reward": 1 if "List" in task else 0})

    policy_model, judge_model = serve(_ls_then_answer), serve(judge)
    store = LocalExperienceStore(bfcl_store_path)
    parent = next(t for t in store.iter_trajectories() if t.environment["entry_id"] == "multi_turn_base_0")
    before = len(list(store.iter_trajectories()))
    store.close()
    tasks = tmp_path / "tasks.jsonl"
    lines = [
        {"id": f"curriculum-{i}", "source": "curriculum", "instruction": text, "tools": parent.tools, "environment": parent.environment}
        for i, text in enumerate(["List the files here.", "Delete everything.", "A garbled task."])
    ]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy_model.base_url}#p", "--sandbox", "bfcl"]
    args += ["--judge", f"openai:{judge_model.base_url}#j", "--store", str(bfcl_store_path), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rollouts"] == 3 and summary["kept"] == 1 and summary["approved"] == 0
    assert summary["dropped"] == {"judged unsuccessful": 1, "the judge gave no verdict": 1}
    not_a_function = CliRunner().invoke(app, [*args, "--approve-if", "string:ascii_letters"])  # a str: refused before any rollout
    assert not_a_function.exit_code == 2 and "'string:ascii_letters' is a str, not a function" in " ".join(not_a_function.output.split())
    approved = CliRunner().invoke(app, [*args, "--approve-if", "tests.replay.test_curriculum:approve_short"])
    assert approved.exit_code == 0 and json.loads(approved.stdout)["approved"] == 1

    store = LocalExperienceStore(bfcl_store_path)
    kept = store.get(summary["trajectories"][0])
    assert kept.source == "curriculum" and kept.approval.status == "approved" and kept.task == "List the files here."
    assert kept.tool_names == ["ls"] and kept.steps[0].observation is not None
    assert [s.action.kind for s in kept.steps] == ["tool_call", "answer"] and kept.steps[-1].action.content == kept.final_answer
    assert not kept.steps[0].observation.is_error and kept.environment == parent.environment
    assert len(list(store.iter_trajectories())) == before + 1, "the same rollout is stored once"
    store.close()


def test_curriculum_propose_that_writes_no_variant_fails_says_why_and_keeps_the_earlier_tasks(
    bfcl_store_path: Path, serve: Callable[[Any], ScriptedExperienceModel], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    store = LocalExperienceStore(bfcl_store_path)
    entry = sorted(t.environment["entry_id"] for t in store.iter_trajectories())[0]
    store.close()
    writer = serve(lambda messages: json.dumps({"instruction": "Delete everything.", "tools": ["a_tool_that_no_longer_exists"]}))
    out = tmp_path / "tasks.jsonl"
    out.write_text('{"id": "an earlier good task"}\n')
    cases = {
        "unknown tools": {entry: [True, False]},
        "always or never solved": {entry: [True, True]},
        "no task with varying outcomes has a stored trajectory": {"not-in-the-store": [True, False]},
        "no results rows": {},
    }
    for why, outcomes in cases.items():
        results = tmp_path / "results.jsonl"
        results.write_text("".join(json.dumps(r) + "\n" for r in _rows(outcomes)))
        args = ["curriculum", "propose", "--from", str(results), "--model", f"openai:{writer.base_url}#writer", "--n", "2"]
        for as_json in (["--json"], []):
            result = CliRunner().invoke(app, [*args, "--store", str(bfcl_store_path), "--out", str(out), *as_json])
            assert result.exit_code == 1, (why, result.output)
            assert why in result.stderr and "no variant written" in result.stderr, result.stderr
            if as_json:
                summary = json.loads(result.stdout)
                assert summary["variants"] == 0 and why in summary["error"]
        assert out.read_text() == '{"id": "an earlier good task"}\n', "the earlier tasks.jsonl is kept"


def _ls_then_answer(messages: list[dict[str, Any]]) -> str:
    """A policy: one ``ls`` (as text, parsed from ``<tool_call>``), then an answer."""
    return "Done." if messages[-1]["role"] == "tool" else '<tool_call>{"name": "ls", "arguments": {}}</tool_call>'


def _list_the_files_task(store_path: Path, folder: Path) -> Path:
    """A tasks.jsonl of one task, "List the files.", with the tools and environment of BFCL's multi_turn_base_0."""
    store = LocalExperienceStore(store_path)
    parent = next(t for t in store.iter_trajectories() if t.environment["entry_id"] == "multi_turn_base_0")
    store.close()
    tasks = folder / "tasks.jsonl"
    task = {"id": "c-1", "source": "curriculum", "instruction": "List the files.", "tools": parent.tools, "environment": parent.environment}
    tasks.write_text(json.dumps(task) + "\n")
    return tasks


def test_curriculum_run_with_a_judge_that_never_verifies_fails_and_names_the_judge(
    bfcl_store_path: Path, serve: Callable[[Any], ScriptedExperienceModel], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    policy_model, judge_model = serve(_ls_then_answer), serve(lambda messages: "Looks good to me!")
    tasks = _list_the_files_task(bfcl_store_path, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy_model.base_url}#p", "--sandbox", "bfcl", "--k", "2"]
    args += ["--judge", f"openai:{judge_model.base_url}#j", "--store", str(bfcl_store_path)]
    for as_json in (["--json"], []):
        result = CliRunner().invoke(app, [*args, *as_json])
        assert result.exit_code == 1, result.output
        assert f"the judge openai:{judge_model.base_url}#j gave no verdict on any of the 2 rollout(s)" in result.stderr
        if as_json:
            summary = json.loads(result.stdout)
            assert summary["kept"] == 0 and summary["dropped"] == {"the judge gave no verdict": 2} and "judge" in summary["error"]


@pytest.mark.parametrize("reward", ["7", "-0.5", "NaN", "Infinity"])
def test_a_judges_reward_outside_0_to_1_is_no_verdict(reward: str, serve: Callable[[Any], ScriptedExperienceModel]) -> None:
    from ee_middleware.evals.curriculum import judge
    from ee_middleware.evals.loop import Conversation
    from ee_middleware.models.openai_compat import OpenAIChatClient

    model = serve(lambda messages: '{"reasoning": "sure", "reward": ' + reward + "}")
    client = OpenAIChatClient(model.base_url, "j")
    try:
        assert judge(client, "List the folder.", Conversation(messages=[])) == (None, "the judge gave no verdict")  # was: kept, 7 a success
    finally:
        client.close()


def test_a_tasks_line_that_is_not_an_object_is_named() -> None:
    from ee_middleware.evals.curriculum import read_tasks

    with pytest.raises(ConfigError, match="tasks line 2: a JSON int, not a task object"):
        read_tasks('{"id": "a", "instruction": "i", "tools": []}\n5')


def test_curriculum_run_keeps_no_rollout_whose_observations_an_experience_model_wrote(
    bfcl_store_path: Path, tmp_path: Path, serve: Callable[[Any], ScriptedExperienceModel]
) -> None:
    """A stored trajectory is recorded experience: IL, IWM, SR and the experience model's own replay buffer read its
    observations as what the tools returned, and a trajectory has no lineage to mark a model's guess. A rollout in an
    experience-model sandbox is therefore not kept (before: stored as source=curriculum with the model's answer as
    the tool's observation), and a run that kept nothing for that reason fails, saying what to do instead."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    experience = serve(lambda messages: json.dumps({"reasoning": "a listing", "observation": "notes.txt", "is_error": False}))
    policy_model, judge_model = serve(_ls_then_answer), serve(lambda messages: json.dumps({"reasoning": "listed", "reward": 1}))
    store = LocalExperienceStore(bfcl_store_path)
    before = len(list(store.iter_trajectories()))
    store.close()
    tasks = _list_the_files_task(bfcl_store_path, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy_model.base_url}#p", "--sandbox", f"experience:{experience.spec}"]
    args += ["--judge", f"openai:{judge_model.base_url}#j", "--store", str(bfcl_store_path), "--json"]
    result = CliRunner().invoke(app, args)
    assert experience.requests, "the experience model was asked for the observation"
    summary = json.loads(result.stdout)
    assert summary["kept"] == 0 and list(summary["dropped"]) == [SYNTHETIC_DROPPED], summary
    assert result.exit_code == 1 and "ee replay run --sandbox experience:" in result.stderr
    store = LocalExperienceStore(bfcl_store_path)
    assert len(list(store.iter_trajectories())) == before, "no trajectory with a model-written observation was stored"
    store.close()


def test_curriculum_run_counts_a_failing_judge_as_a_dropped_rollout_and_keeps_going_fake_server(
    bfcl_store_path: Path, tmp_path: Path, serve: Callable[[Any], ScriptedExperienceModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A judge that fails after the client's retries (HTTP 500 three times, or a timeout) drops that rollout with the
    reason; the run goes on, and fails naming the judge only when it failed on every rollout. A judge that cannot be
    reached fails the run before any rollout. Before: the first judge error ended the run with a ModelError, and an
    unreachable judge was found only after the first rollout."""
    import socket

    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.models import openai_compat

    monkeypatch.setattr(openai_compat, "_sleep", lambda s: None)  # the client's back-off between retries

    def verdict(messages: list[dict[str, Any]]) -> str:
        return json.dumps({"reasoning": "listed", "reward": 1})

    policy_model = serve(_ls_then_answer)
    tasks = _list_the_files_task(bfcl_store_path, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy_model.base_url}#p", "--sandbox", "bfcl", "--k", "2"]
    args += ["--store", str(bfcl_store_path)]

    with _serve_failing_some(lambda attempt: attempt < 3, verdict) as judge_model:  # the first rollout's 3 attempts fail
        result = CliRunner().invoke(app, [*args, "--judge", judge_model.spec, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rollouts"] == 2 and summary["kept"] == 1 and summary["error"] is None
    [(reason, count)] = summary["dropped"].items()
    assert count == 1 and reason.startswith("the judge failed: ") and "HTTP 500" in reason

    with _serve_failing_some(lambda attempt: True, verdict) as judge_model:  # up for the endpoint check, then failing
        for as_json in (["--json"], []):
            result = CliRunner().invoke(app, [*args, "--judge", judge_model.spec, *as_json])
            assert result.exit_code == 1, result.output
            assert f"the judge {judge_model.spec} failed on every one of the 2 rollout(s)" in result.stderr, result.stderr
            if as_json:
                summary = json.loads(result.stdout)
                assert summary["kept"] == 0 and sum(summary["dropped"].values()) == 2 and "judge" in summary["error"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    asked = len(policy_model.requests)
    result = CliRunner().invoke(app, [*args, "--judge", f"openai:http://127.0.0.1:{port}/v1#j"])
    assert result.exit_code != 0 and "--judge" in result.output and "cannot be reached" in result.output, result.output
    assert len(policy_model.requests) == asked, "no rollout before the judge was found down"


def test_a_curriculum_rollout_keeps_the_reasoning_of_a_reasoning_models_calls() -> None:
    """A curriculum rollout's steps are built from the policy's replies; a reasoning model served by vLLM with a
    reasoning parser sends its reasoning as reasoning_content beside the call, which the step dropped (captured runs
    keep it in Action.reasoning since schema 1.4)."""
    from ee_middleware.evals.curriculum import to_trajectory
    from ee_middleware.evals.tasks import Conversation
    from ee_middleware.records import Observation, utcnow

    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "pears"}'}}
    messages = [
        {"role": "user", "content": "Find pears."},
        {"role": "assistant", "content": "", "tool_calls": [call], "reasoning_content": "The user wants pears: look them up."},
        {"role": "tool", "tool_call_id": "c1", "content": "3 pears"},
        {"role": "assistant", "content": "There are 3 pears."},
    ]
    task = {"id": "t1", "instruction": "Find pears.", "tools": []}
    observations = {"c1": Observation(content="3 pears")}
    trajectory = to_trajectory(task, Conversation(messages=messages), observations, policy="p", trial=0, started=utcnow())
    step, answer = trajectory.steps
    assert step.action.reasoning == "The user wants pears: look them up."
    assert (answer.action.kind, answer.action.content) == ("answer", "There are 3 pears.")


def test_a_task_is_matched_to_its_experts_completed_run_not_a_variant_or_a_partial_run(bfcl_store_path: Path) -> None:
    # A curriculum variant copies its parent's entry id and an interrupted run stays in the store: either, seen first,
    # became the trajectory a new variant was written from (found by review).
    from ee_middleware.replay.curriculum import CURRICULUM_SOURCE, TaskScore, match_trajectories

    store = LocalExperienceStore(bfcl_store_path)
    expert = next(iter(store.iter_trajectories()))
    store.close()
    variant = expert.model_copy(update={"id": "variant", "source": CURRICULUM_SOURCE})
    partial = expert.model_copy(update={"id": "partial", "status": "interrupted"})
    score = TaskScore(suite="bfcl", task_id=expert.environment["entry_id"], n=2, p=0.5, instruction=expert.task or "")
    assert match_trajectories([score], [variant, partial, expert])[score.task_id].id == expert.id
