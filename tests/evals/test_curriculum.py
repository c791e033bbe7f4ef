"""``ee curriculum run`` on real BFCL expert stores: runs again store their new rollouts, a rollout keeps its parent task
(and the held-out split follows it), and an experience model's garbage is the documented reason.

The policy, judge and experience model are scripted stand-ins behind real local HTTP servers (tests/replay/conftest.py's
``serve``); the sandbox is the real BFCL one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.curriculum import SYNTHETIC_DROPPED
from ee_middleware.replay.curriculum import PARENT_KEY
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing.http import ScriptedChatServer
from tests.replay import conftest as replay_fixtures
from tests.replay.test_experience import ScriptedExperienceModel

serve = replay_fixtures.serve  # scripted models behind real local HTTP servers

runner = CliRunner()
Serve = Callable[[Any], ScriptedExperienceModel]


def _approve(messages: list[dict[str, Any]]) -> str:
    return json.dumps({"reasoning": "it did it", "reward": 1})


def _policy(tool: list[str]) -> Callable[[list[dict[str, Any]]], str]:
    """A policy that calls ``tool[0]`` (changeable between runs: one served alias, a newer adapter behind it), then answers."""

    def answer(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["role"] == "tool":
            return "Done."
        return '<tool_call>{"name": "' + tool[0] + '", "arguments": {}}</tool_call>'

    return answer


def approve_all(trajectory: Any) -> bool:
    """An --approve-if rule for the tests: accept every trajectory."""
    return True


def _tasks(store_path: Path, folder: Path, parent_entry: str = "multi_turn_base_0") -> tuple[Path, Any]:
    """A tasks.jsonl of one variant of the stored expert of ``parent_entry``, with the ``parent`` 'ee curriculum propose'
    writes; and that expert."""
    store = LocalExperienceStore(store_path)
    parent = next(t for t in store.iter_trajectories() if t.environment["entry_id"] == parent_entry)
    store.close()
    task = {
        "id": "curriculum-task-1",
        "source": "curriculum",
        "parent": {"suite": "bfcl", "task_id": parent_entry, "trajectory_id": parent.id, "p": 0.5, "variance": 0.25},
        "instruction": "Show me where I am and what is here.",
        "tools": parent.tools,
        "needs": ["ls", "pwd"],
        "environment": parent.environment,
    }
    tasks = folder / "tasks.jsonl"
    tasks.write_text(json.dumps(task) + "\n")
    return tasks, parent


def _curriculum(store_path: Path) -> dict[str, list[str]]:
    store = LocalExperienceStore(store_path)
    try:
        return {
            t.id: [s.action.tool_call.name for s in t.steps if s.action.tool_call is not None]
            for t in store.iter_trajectories()
            if t.source == "curriculum"
        }
    finally:
        store.close()


def test_a_second_run_stores_its_new_rollouts_and_says_what_it_stored(bfcl_store_path: Path, tmp_path: Path, serve: Serve) -> None:
    """Before: the id was a digest of the task, the policy spec and the trial, so a second run with the same --policy
    (a served alias after a promotion) wrote its new rollouts under the first run's ids, the store kept the first run's,
    and the run reported them kept."""
    tool = ["ls"]
    policy, judge = serve(_policy(tool)), serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#served", "--sandbox", "bfcl"]
    args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--k", "2"]

    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    assert list(_curriculum(bfcl_store_path).values()) == [["ls"]]
    summary = json.loads(first.stdout)
    # two trials of a deterministic policy: one conversation, stored once (kept counts trajectories, as listed)
    assert (summary["kept"], summary["stored"], summary["already_stored"]) == (1, 1, 0)
    assert len(summary["trajectories"]) == 1 and summary["stored_trajectories"] == summary["trajectories"]
    # the second trial repeats the first: counted, so that the rollouts add up (was, a sweep: rollouts 2, kept 1, dropped {})
    assert summary["repeats"] == 1 and summary["rollouts"] == summary["kept"] + summary["repeats"] + sum(summary["dropped"].values())

    tool[0] = "pwd"  # the same spec now serves a policy that acts otherwise
    second = runner.invoke(app, [*args, "--json"])
    assert second.exit_code == 0, second.output
    stored = _curriculum(bfcl_store_path)
    assert sorted(stored.values()) == [["ls"], ["pwd"]], "the second run's rollout is stored beside the first's"
    summary = json.loads(second.stdout)
    assert (summary["kept"], summary["stored"], summary["already_stored"]) == (1, 1, 0)
    assert stored[summary["stored_trajectories"][0]] == ["pwd"]

    again = runner.invoke(app, args)  # the same rollouts again: nothing new, and the table says so
    assert again.exit_code == 0, again.output
    assert "1 kept as source=curriculum trajectories, 0 of them stored now" in again.stdout
    assert "already stored 1" in again.stdout
    assert len(_curriculum(bfcl_store_path)) == 2


def test_a_reviewers_rejection_is_not_overturned_by_approve_if_on_a_run_again(bfcl_store_path: Path, tmp_path: Path, serve: Serve) -> None:
    policy, judge = serve(_policy(["ls"])), serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
    args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"]
    first = runner.invoke(app, args)
    [trajectory_id] = json.loads(first.stdout)["trajectories"]
    store = LocalExperienceStore(bfcl_store_path)
    store.reject([trajectory_id], by="alice", reason="wrong folder")
    store.close()
    again = runner.invoke(app, [*args, "--approve-if", "tests.evals.test_curriculum:approve_all"])
    assert again.exit_code == 0 and json.loads(again.stdout)["approved"] == 0
    store = LocalExperienceStore(bfcl_store_path)
    assert store.get(trajectory_id).approval.status == "rejected"
    store.close()


def approve_by_status(trajectory: Any) -> Any:
    return trajectory.status  # a text ("completed", "error"): no decision


def test_an_approve_if_returning_no_bool_approves_nothing_and_says_so(bfcl_store_path: Path, tmp_path: Path, serve: Serve) -> None:
    """Was: taken by its truth, so a rule returning a text approved every rollout (failed ones too) for training."""
    policy, judge = serve(_policy(["ls"])), serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
    args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"]
    result = runner.invoke(app, [*args, "--approve-if", "tests.evals.test_curriculum:approve_by_status"])
    summary = json.loads(result.stdout)
    assert summary["approved"] == 0 and summary["stored"] == 1, result.output
    assert summary["approve_if_failed"] == summary["stored_trajectories"], summary
    said = " ".join(result.stderr.split())
    assert "The --approve-if function approve_if returned str 'completed', not True or False" in said, said
    assert "raised TypeError" not in said and "It raised or returned no True/False on 1 of the 1 kept" in said, said


def test_a_rollout_rejected_under_the_previous_versions_id_is_not_approved_again(
    bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    # Before 674ca7d a rollout's id named only the task, the policy and the trial: on such a store every rollout gets a
    # new id, and approve_if approved again what a reviewer had rejected (found by review).
    from ee_middleware.evals.curriculum import legacy_rollout_id

    policy, judge = serve(_policy(["ls"])), serve(_approve)
    tasks, parent = _tasks(bfcl_store_path, tmp_path)
    spec = f"openai:{policy.base_url}#p"
    old = legacy_rollout_id(json.loads(tasks.read_text()), spec, 0)
    store = LocalExperienceStore(bfcl_store_path)
    store.write([parent.model_copy(update={"id": old, "source": "curriculum"})])
    store.reject([old], by="alice", reason="wrong folder")
    store.close()
    args = ["curriculum", "run", str(tasks), "--policy", spec, "--sandbox", "bfcl", "--judge", f"openai:{judge.base_url}#j"]
    result = runner.invoke(
        app, [*args, "--store", str(bfcl_store_path), "--json", "--approve-if", "tests.evals.test_curriculum:approve_all"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["approved"] == 0 and summary["stored"] == 1  # stored for a person to review, not approved by the rule
    store = LocalExperienceStore(bfcl_store_path)
    assert store.get(summary["stored_trajectories"][0]).approval.status == "pending"
    store.close()


def test_a_curriculum_trajectory_keeps_its_parent_and_a_held_out_parent_holds_it_out(
    bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """Before: the rollout kept only its parent's environment (entry_id), so with the parent held out (the documented
    workflow proposes variants of eval tasks, usually held-out ones) the variant went into train_trajectories."""
    policy, judge = serve(_policy(["ls"])), serve(_approve)
    tasks, parent = _tasks(bfcl_store_path, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
    result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"])
    assert result.exit_code == 0, result.output
    [variant_id] = json.loads(result.stdout)["trajectories"]
    store = LocalExperienceStore(bfcl_store_path)
    variant = store.get(variant_id)
    assert variant.environment == {
        **parent.environment,
        PARENT_KEY: {"trajectory_id": parent.id, "task_id": "multi_turn_base_0", "suite": "bfcl"},
    }
    store.approve([variant_id], by="me")
    store.close()

    (tmp_path / "heldout.txt").write_text(parent.id + "\n")
    out = tmp_path / "data"
    build = ["datasets", "build", "--store", str(bfcl_store_path), "--out", str(out), "--kinds", "il"]
    result = runner.invoke(app, [*build, "--heldout-ids", str(tmp_path / "heldout.txt")])
    assert result.exit_code == 0, result.output
    split = json.loads((out / "datasets.json").read_text())["split"]
    assert set(split["heldout_trajectories"]) == {parent.id, variant_id} and variant_id not in split["train_trajectories"]
    assert split["added"]["variant_of_task"] == 1
    assert split["added"]["listed"] == [{"id": variant_id, "reason": "variant_of_task", "via": parent.id}]
    assert "1 are curriculum rollouts on a variant of a held-out task" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps({"reasoning": "a listing", "observation": "notes.txt", "is_error": False}),  # a usable observation
        "lorem ipsum dolor sit amet",  # garbage: no usable observation
    ],
    ids=["valid-json", "garbage"],
)
def test_an_experience_model_sandbox_gives_the_documented_reason_whatever_the_model_answers(
    answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """Before: with an experience model answering garbage every rollout was dropped as 'the rollout failed: tool_error'
    and the run exited 0; one answering valid JSON gave the documented reason and exit 1."""
    experience = serve(lambda messages: answer)
    policy, judge = serve(_policy(["ls"])), serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", f"experience:{experience.spec}"]
    args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--k", "2"]
    for as_json in (["--json"], []):
        result = runner.invoke(app, [*args, *as_json])
        assert experience.requests, "the experience model was asked for the observation"
        assert result.exit_code == 1, result.output
        assert "ee replay run --sandbox experience:" in result.stderr
        if as_json:
            summary = json.loads(result.stdout)
            assert summary["kept"] == 0 and summary["dropped"] == {SYNTHETIC_DROPPED: 2}, summary
    assert not _curriculum(bfcl_store_path)


def _call(call_id: str, name: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


@pytest.mark.parametrize(
    "answers",
    [
        [  # TGI: "id": "0" on every call
            {"role": "assistant", "content": None, "tool_calls": [_call("0", "ls")]},
            {"role": "assistant", "content": None, "tool_calls": [_call("0", "pwd")]},
            {"role": "assistant", "content": "Done."},
        ],
        [  # older Xinference: the parallel calls of one answer under one id
            {"role": "assistant", "content": None, "tool_calls": [_call("call_1", "ls"), _call("call_1", "pwd")]},
            {"role": "assistant", "content": "Done."},
        ],
    ],
    ids=["tgi-same-id-every-call", "xinference-same-id-in-one-answer"],
)
def test_a_policy_server_that_reuses_call_ids_stores_each_step_with_its_own_observation(
    answers: list[dict[str, Any]], bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """Before: observations were kept by call id, so the second call's ("0") replaced the first's and the stored
    trajectory read ls -> pwd's observation; the policy was sent both tool results under the one id."""
    judge = serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    with ScriptedChatServer(answers, models=None) as policy:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#tgi", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"])
    seen = policy.requests
    assert result.exit_code == 0, result.output
    [trajectory_id] = json.loads(result.stdout)["trajectories"]
    store = LocalExperienceStore(bfcl_store_path)
    trajectory = store.get(trajectory_id)
    store.close()
    steps = {s.action.tool_call.name: s for s in trajectory.steps if s.action.tool_call is not None}
    assert sorted(steps) == ["ls", "pwd"]
    assert "current_directory_content" in steps["ls"].observation.content, steps["ls"].observation
    assert "current_working_directory" in steps["pwd"].observation.content, steps["pwd"].observation
    assert len({s.action.tool_call.id for s in trajectory.steps if s.action.tool_call is not None}) == 2
    sent = seen[-1]["messages"]
    results = {m["tool_call_id"]: m["content"] for m in sent if m["role"] == "tool"}
    calls = [c for m in sent if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert [(c["function"]["name"], results[c["id"]]) for c in calls] == [
        ("ls", steps["ls"].observation.content),
        ("pwd", steps["pwd"].observation.content),
    ], "the policy is sent each tool result with its own call"


def test_a_judge_served_without_a_model_listing_is_used(bfcl_store_path: Path, tmp_path: Path, serve: Serve) -> None:
    """Before: a judge whose server answers chat but has no GET /v1/models (404) was refused as 'cannot be reached',
    though ee improve's own check counts such a refusal as an answer."""
    policy = serve(_policy(["ls"]))
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    verdict = {"role": "assistant", "content": json.dumps({"reasoning": "it listed the folder", "reward": 1})}
    with ScriptedChatServer([verdict], models=None) as judge:  # no model listing: GET /v1/models is a 404
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"])
    seen = judge.requests
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kept"] == 1 and len(seen) == 1, "the judge was asked and its verdict kept the rollout"


def _only_tools(tasks: Path, names: set[str]) -> None:
    """Offer the task in ``tasks`` only the tools ``names`` (the BFCL sandbox still covers every tool of the entry)."""
    task = json.loads(tasks.read_text())
    task["tools"] = [t for t in task["tools"] if t["function"]["name"] in names]
    assert {t["function"]["name"] for t in task["tools"]} == names
    tasks.write_text(json.dumps(task) + "\n")


def _structured(*calls: tuple[str, str]) -> dict[str, Any]:
    """An assistant message with structured tool calls ``(name, arguments text)``, as a server with a tool parser sends."""
    tool_calls = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}} for i, (n, a) in enumerate(calls)]
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}


DONE = {"role": "assistant", "content": "Done."}


@pytest.mark.parametrize(
    "answers",
    [
        [_structured(("ls", '{"path": "."')), DONE],  # arguments cut short: not JSON
        [_structured(("ls", "[1, 2]")), DONE],  # JSON, not an object
        [_structured(("ls", "{}"), ("pwd", '{"a": ')), DONE],  # one call of two unreadable: ls ran, the answer was not this
        [_structured(("ls", "{}")), _structured(("pwd", "{")), DONE],  # a later answer's call unreadable
        [  # calls read from the text (a server without a tool parser), one of two unreadable
            '<tool_call>{"name": "ls", "arguments": {}}</tool_call>\n<tool_call>{"name": "pwd", "arguments": [1]}</tool_call>',
            DONE,
        ],
        [_structured(("ls", "{}")), '<tool_call>{"name": "pwd", "arguments": "{"}</tool_call>', DONE],  # a later text call
    ],
    ids=["cut-json", "json-array", "one-of-two-calls", "later-answer", "text-one-of-two-calls", "later-text-call"],
)
def test_a_rollout_with_a_tool_call_whose_arguments_cannot_be_read_is_dropped_as_unparsable_not_judged(
    answers: list[Any], bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """Before: a rollout whose only call's arguments were unreadable was dropped as 'no tool call' (the policy did call:
    the user looked for a model that does not call tools, not for a broken tool-call parser), and one where another
    call could be read was judged and stored without the unreadable call, as an answer the policy did not write."""
    from ee_middleware.evals.curriculum import UNPARSABLE_DROPPED

    judge = serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    with ScriptedChatServer(answers) as policy:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path)]
        result = runner.invoke(app, [*args, "--json", "--approve-if", "tests.evals.test_curriculum:approve_all"])
    assert result.exit_code == 1, result.output  # nothing kept, as no rollout had a usable call (rdream F12)
    summary = json.loads(result.stdout)
    assert summary["dropped"] == {UNPARSABLE_DROPPED: 1}, summary
    assert "could not be read" in summary["error"], summary
    assert UNPARSABLE_DROPPED.startswith("unparsable") and "arguments" in UNPARSABLE_DROPPED
    assert (summary["kept"], summary["stored"], summary["approved"]) == (0, 0, 0)
    assert not judge.requests, "dropped before the judge is asked"
    assert not _curriculum(bfcl_store_path)


@pytest.mark.parametrize(
    "answers",
    [
        [_structured(("delete_everything", "{}")), DONE],  # the repro: a tool no sandbox has
        [_structured(("cd", '{"folder": "workspace"}')), DONE],  # a tool the BFCL sandbox covers, the task does not offer
        [_structured(("ls", "{}"), ("delete_everything", "{}")), DONE],  # one call of two unknown
        [_structured(("ls", "{}")), _structured(("LS", "{}")), DONE],  # a later call; names compared exactly
    ],
    ids=["no-such-tool", "covered-not-offered", "one-of-two-calls", "later-answer-other-case"],
)
def test_a_rollout_that_calls_a_tool_the_task_does_not_offer_is_dropped_before_the_judge_and_the_sandbox(
    answers: list[dict[str, Any]], bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """Before: such a call got the observation "Error: tool ... is not available here" (or ran, where the sandbox covers
    the tool), the judge was asked, and a lenient judge's reward 1 stored the rollout, approved with --approve-if: it
    taught IL to call a tool that does not exist. Replay drops such proposals (unknown_tool) before the sandbox."""
    from ee_middleware.evals.curriculum import UNKNOWN_TOOL_DROPPED

    judge = serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    _only_tools(tasks, {"ls", "pwd"})
    for as_json in (["--json", "--approve-if", "tests.evals.test_curriculum:approve_all"], []):
        with ScriptedChatServer(answers) as policy:
            args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
            args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), *as_json]
            result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output  # nothing kept, as no rollout had a usable call (rdream F12)
        assert "called a tool the task does not offer" in result.output, result.output
        # the rollout ended at the unknown call: the policy was not asked again after it (DONE is never sent)
        assert len(policy.requests) == len(answers) - 1, policy.requests
        if as_json:
            summary = json.loads(result.stdout)
            assert summary["dropped"] == {UNKNOWN_TOOL_DROPPED: 1}, summary
            assert (summary["kept"], summary["stored"], summary["approved"]) == (0, 0, 0)
        else:
            assert f"dropped 1: {UNKNOWN_TOOL_DROPPED}" in result.stdout, result.output
    assert UNKNOWN_TOOL_DROPPED.startswith("unknown_tool")
    assert not judge.requests, "dropped before the judge is asked"
    assert not _curriculum(bfcl_store_path)


def test_a_rollout_calling_only_offered_tools_is_still_judged_and_stored(bfcl_store_path: Path, tmp_path: Path, serve: Serve) -> None:
    """The check of the calls' names keeps what the task offers: ls and pwd, both offered, are judged and stored."""
    judge = serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    _only_tools(tasks, {"ls", "pwd"})
    with ScriptedChatServer([_structured(("ls", "{}"), ("pwd", "")), DONE]) as policy:  # empty arguments: none
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["kept"], summary["stored"], summary["dropped"]) == (1, 1, {}), summary
    assert list(_curriculum(bfcl_store_path).values()) == [["ls", "pwd"]]
    assert len(judge.requests) == 1


@pytest.mark.parametrize("tools", [["ls", "pwd"], {"ls": {}}, [{"type": "function", "function": {"description": "no name"}}]])
def test_a_tasks_line_whose_tools_are_not_named_schemas_is_named(tools: Any) -> None:
    """A call is checked against the names of the task's tool schemas: tools given some other way (names alone) would
    drop every rollout as unknown_tool, so they are refused with the line and the form."""
    from ee_middleware.errors import ConfigError
    from ee_middleware.evals.curriculum import read_tasks

    line = json.dumps({"id": "a", "instruction": "i", "tools": tools})
    with pytest.raises(ConfigError, match=r"tasks line 2: 'tools' is not a list of tool schemas, each with a name .*ee curriculum propose"):
        read_tasks('{"id": "ok", "instruction": "i", "tools": []}\n' + line)


@pytest.mark.parametrize(
    ("key", "value"), [("instruction", ["a"]), ("instruction", 42), ("instruction", ""), ("instruction", None), ("id", 7), ("id", " ")]
)
def test_a_tasks_line_whose_instruction_or_id_is_no_text_is_named_before_any_rollout(key: str, value: Any) -> None:
    """Was (a sweep): read, rolled out and judged, then storing it failed with 'unexpected ValidationError' (and every
    later task was never run); an empty or null instruction was stored as a curriculum trajectory with no task."""
    from ee_middleware.errors import ConfigError
    from ee_middleware.evals.curriculum import read_tasks

    line = json.dumps({"id": "a", "instruction": "i", "tools": [], key: value})
    with pytest.raises(
        ConfigError, match=rf"tasks line 2: '{key}' is .*, not a non-empty string \(write tasks with 'ee curriculum propose'\)"
    ):
        read_tasks('{"id": "ok", "instruction": "i", "tools": []}\n' + line)


def test_a_final_answer_that_starts_like_json_after_a_readable_call_is_judged_and_stored(
    bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """An answer that is not a call (the files asked for, as a JSON list) is an answer the judge reads, not an unreadable
    call: the rollout is kept as before."""
    judge = serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    with ScriptedChatServer([_structured(("ls", "{}")), '["final_report.pdf", "previous_report.pdf"]']) as policy:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["kept"], summary["stored"], summary["dropped"]) == (1, 1, {}), summary
    assert len(judge.requests) == 1


@pytest.mark.parametrize(
    "answer",
    ['["final_report.pdf", "previous_report.pdf"]', '{"files": ["final_report.pdf"]}', '{"name": 3, "files": []}', "[1, 2]"],
    ids=["json-list", "json-object", "name-not-a-string", "numbers"],
)
def test_a_rollout_whose_only_answer_is_json_and_not_a_call_is_dropped_as_no_tool_call(
    answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """Before (7b6cce2): the loop records a parse problem for any answer that starts like JSON, and a rollout without a
    readable call was dropped as unparsable ('check the policy server's tool-call parser or chat template'): the wrong
    fix, the model simply called no tool (/tmp/s36/r4/reason_json_answer.py)."""
    from ee_middleware.evals.curriculum import UNPARSABLE_DROPPED

    judge = serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    with ScriptedChatServer([answer]) as policy:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"])
    assert result.exit_code == 1, result.output  # nothing kept, as no rollout had a usable call (rdream F12)
    summary = json.loads(result.stdout)
    assert summary["dropped"] == {"no tool call": 1}, summary
    assert "answered without calling a tool" in summary["error"], summary
    assert UNPARSABLE_DROPPED not in summary["dropped"] and not judge.requests and not _curriculum(bfcl_store_path)


@pytest.mark.parametrize(
    "answers",
    [
        ['{"name": "ls", "arguments": "[1"}'],  # a bare JSON call whose arguments do not decode
        ['{"name": "ls", "arguments": {"path": "."'],  # a bare JSON call cut short
        ["{'name': 'ls', 'arguments': [1]}"],  # a Python-literal call, arguments not an object
        ['[{"type": "function", "function": {"name": "ls", "arguments": "[1]"}}]'],  # OpenAI's form, as text
        ['[TOOL_CALLS]ls[ARGS]{"path": '],  # Mistral's markers
        ['{"tool_calls": [{"function": {"name": "ls", "arguments": 5}}]}'],  # a chat message's calls, as text
        [_structured(("ls", "{}")), '{"name": "pwd", "arguments": "{"}', DONE],  # after a readable call (was: judged)
    ],
    ids=["bare-json", "bare-cut", "python-literal", "openai-form", "mistral-markers", "message-tool-calls", "after-a-call"],
)
def test_an_answer_in_a_tool_calls_shape_whose_call_cannot_be_read_is_unparsable(
    answers: list[Any], bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """A call written in the text without a <tool_call> block (a server without a tool parser) is still a call: the
    rollout is dropped as unparsable, not as 'no tool call', nor judged without it."""
    from ee_middleware.evals.curriculum import UNPARSABLE_DROPPED

    judge = serve(_approve)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    with ScriptedChatServer(answers) as policy:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"])
    assert result.exit_code == 1, result.output  # nothing kept, as no rollout had a usable call (rdream F12)
    summary = json.loads(result.stdout)
    assert summary["dropped"] == {UNPARSABLE_DROPPED: 1}, summary
    assert not judge.requests and not _curriculum(bfcl_store_path)


def test_curriculum_propose_writes_only_named_tool_schemas_so_run_reads_its_tasks(
    bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """A stored trajectory may hold a tool schema without a name (capture keeps an OpenAI schema whose function has none;
    an imported trace, a provider's built-in tool). Before: propose copied the parent's schemas as they were, and
    'ee curriculum run' (read_tasks) refused the whole file it wrote; the writer was shown the tool 'None'."""
    from ee_middleware.evals.curriculum import read_tasks
    from ee_middleware.records import tool_schema_name

    source = LocalExperienceStore(bfcl_store_path)
    expert = next(t for t in source.iter_trajectories() if t.environment["entry_id"] == "multi_turn_base_0")
    source.close()
    unnamed = [{"type": "function", "function": {"description": "no name", "parameters": {}}}, {"type": "web_search"}]
    store_path = tmp_path / "store"
    store = LocalExperienceStore(store_path)
    store.write([expert.model_copy(update={"tools": [*expert.tools, *unnamed]})])
    store.close()
    results = tmp_path / "run" / "results.jsonl"
    results.parent.mkdir()
    results.write_text(
        "".join(
            json.dumps({"suite": "bfcl", "task_id": "multi_turn_base_0", "trial": i, "success": ok}) + "\n"
            for i, ok in enumerate([True, False])
        )
    )
    writer = serve(lambda messages: json.dumps({"instruction": "Show me what is in this folder.", "tools": ["ls"]}))
    out = tmp_path / "tasks.jsonl"
    args = ["curriculum", "propose", "--from", str(results.parent), "--model", f"openai:{writer.base_url}#w", "--store", str(store_path)]
    result = runner.invoke(app, [*args, "--n", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    [task] = read_tasks(out.read_text())  # was: ConfigError "'tools' is not a list of tool schemas, each with a name"
    assert task["tools"] == expert.tools and all(tool_schema_name(t) is not None for t in task["tools"])
    assert "None" not in json.dumps(writer.requests), "the writer is shown the named tools only"
