"""DreamGym's curriculum as a user of their own app meets it (the rdream black-box report): ``ee curriculum propose`` and
``run`` on trajectories recorded through a real ``create_agent`` graph (a scripted chat model) into a real store, with
a real :class:`PythonSandbox` named by spec from this module, and the writer, policy and judge played by
:class:`~ee_middleware.testing.http.ScriptedChatServer` (real HTTP servers).

Each test names the finding it covers (F1 ... F15 of the report).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.errors import EnvironmentUnavailableError, os_error_advice
from ee_middleware.records import Trajectory
from ee_middleware.replay.curriculum import TaskScore, validate_variant
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.scripted import ScriptedChatModel, tool_call
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing.http import Reply, ScriptedChatServer

runner = CliRunner()
HERE = "tests.evals.test_curriculum_rdream"
SYSTEM = "You keep a key-value store. Answer in one sentence."
OTHER_SYSTEM = "You are the other app's agent."
QUESTION = "What is a?"
VERDICT = json.dumps({"reasoning": "it read the key", "reward": 1})


# -- the app: its world, its production tools, its sandbox --------------------------------------------------------------


def build_world(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"kv": dict((environment or {}).get("kv", {}))}


def _kv_get(world: dict[str, Any], key: str) -> str:
    return world["kv"].get(key, f"no key {key}")


def _kv_set(world: dict[str, Any], key: str, value: str) -> str:
    world["kv"][key] = value
    return "ok"


def make_sandbox(**options: Any) -> PythonSandbox:
    return PythonSandbox(build_world, tools={"kv_get": _kv_get, "kv_set": _kv_set}, kind="kv-rdream")


def _strict_world(environment: dict[str, Any] | None) -> dict[str, Any]:
    if not environment or "kv" not in environment:
        raise EnvironmentUnavailableError("kv-app trajectories need {'kv': {...}} in their environment")
    return build_world(environment)


def strict_sandbox(**options: Any) -> PythonSandbox:
    """A sandbox that cannot rebuild a world without ``kv`` in the environment (the report's strict_sandbox)."""
    return PythonSandbox(_strict_world, tools={"kv_get": _kv_get, "kv_set": _kv_set}, kind="kv-strict")


class _FailsFromSecondReset(PythonSandbox):
    resets = 0

    def reset(self, environment: dict[str, Any] | None) -> None:
        _FailsFromSecondReset.resets += 1
        if _FailsFromSecondReset.resets > 1:
            raise EnvironmentUnavailableError("the world's database went away")
        super().reset(environment)


def flaky_sandbox(**options: Any) -> PythonSandbox:
    """A sandbox that rebuilds the first world asked for, then no more (a database that went away mid-run)."""
    _FailsFromSecondReset.resets = 0
    return _FailsFromSecondReset(_strict_world, tools={"kv_get": _kv_get, "kv_set": _kv_set}, kind="kv-flaky")


def boom(trajectory: Trajectory) -> bool:
    """An --approve-if rule with a bug."""
    raise RuntimeError("my approver broke")


WORLD: dict[str, Any] = build_world(None)


@tool
def kv_get(key: str) -> str:
    """Read a key."""
    return _kv_get(WORLD, key)


@tool
def kv_set(key: str, value: str) -> str:
    """Set a key."""
    return _kv_set(WORLD, key, value)


def _record(store: Path, app_name: str, system: str, environment: dict[str, Any], question: str, answer: str) -> None:
    """One run of the app's real create_agent graph (a scripted model), recorded into ``store``."""
    global WORLD
    WORLD = build_world(environment)
    model = ScriptedChatModel(script=[AIMessage("", tool_calls=[tool_call("kv_get", key="a")]), AIMessage(answer)])
    graph = create_agent(model, [kv_get, kv_set], system_prompt=system)
    agent = record_experience(graph, app=app_name, store=str(store), environment=environment)
    agent.invoke({"messages": [("user", question)]})
    agent.flush()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Trajectory]]:
    """A store with the same question asked in two apps and two worlds: kv-app (recorded first) and other-app."""
    path = tmp_path_factory.mktemp("rdream") / "store"
    _record(path, "kv-app", SYSTEM, {"kv": {"a": "1"}}, QUESTION, "a is 1.")
    _record(path, "other-app", OTHER_SYSTEM, {"kv": {"a": "2"}}, QUESTION, "a is 2.")
    store = LocalExperienceStore(path)
    by_app = {t.app: t for t in store.iter_trajectories()}
    store.close()
    assert set(by_app) == {"kv-app", "other-app"}
    return path, by_app


@pytest.fixture
def store_path(recorded: tuple[Path, dict[str, Trajectory]], tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(recorded[0], copy)
    return copy


def _results(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """An eval run's results.jsonl (another harness's folder: read as it is)."""
    folder.mkdir(parents=True, exist_ok=True)
    conversation = json.dumps([{"role": "user", "content": QUESTION}])
    (folder / "results.jsonl").write_text("".join(json.dumps({"conversation": conversation, **row}) + "\n" for row in rows))
    return folder


def _rows(suite: str, task_id: str, outcomes: list[bool | None]) -> list[dict[str, Any]]:
    """Rows of ``task_id``'s trials: True/False as scored, None for a trial the model server gave no answer to."""
    return [
        {"suite": suite, "task_id": task_id, "trial": i, "success": bool(ok), "no_answer": ok is None, "error_type": None}
        for i, ok in enumerate(outcomes)
    ]


def _propose(results: Path, store: Path, out: Path, writer: str, *extra: str) -> Any:
    args = ["curriculum", "propose", "--from", str(results), "--model", f"openai:{writer}#writer", "--store", str(store)]
    return runner.invoke(app, [*args, "--out", str(out), *extra])


def _run(tasks: Path, store: Path, policy: str, judge: str, *extra: str, sandbox: str = f"{HERE}:make_sandbox") -> Any:
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy}#policy", "--sandbox", sandbox]
    return runner.invoke(app, [*args, "--judge", f"openai:{judge}#judge", "--store", str(store), *extra])


def _calls_then_answer(answer: str = "a is 1.") -> Callable[[dict[str, Any]], Any]:
    """A policy that reads the key a, then answers."""

    def reply(body: dict[str, Any]) -> Any:
        if body["messages"][-1]["role"] == "tool":
            return answer
        call = {"id": "c1", "type": "function", "function": {"name": "kv_get", "arguments": '{"key": "a"}'}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    return reply


def _task(parent: Trajectory, instruction: str, **fields: Any) -> dict[str, Any]:
    return {"id": f"t-{instruction[:8]}", "instruction": instruction, "tools": parent.tools, "environment": parent.environment, **fields}


def _write_tasks(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks))
    return path


def _curriculum(store_path: Path) -> list[Trajectory]:
    store = LocalExperienceStore(store_path)
    try:
        return [t for t in store.iter_trajectories() if t.source == "curriculum"]
    finally:
        store.close()


# -- F1, F2, F3: a variant is its parent's app's, prompted as it was, and stored as capture records a run ---------------


def test_a_curriculum_trajectory_is_stored_under_its_parents_app_with_its_system_prompt_and_answer_step(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F1: stored under app 'curriculum', `datasets build --app kv-app` and `ee improve` never saw it. F2: no answer step
    (IL never taught the answer after the tools). F3: rolled out and stored without the app's system prompt."""
    parent = recorded[1]["kv-app"]
    results = _results(tmp_path / "eval", _rows("traces:store:kv-app", parent.id, [True, False]))
    variant = json.dumps({"instruction": "Tell me the value of a.", "tools": ["kv_get"]})
    out = tmp_path / "tasks.jsonl"
    with ScriptedChatServer([variant]) as writer:
        proposed = _propose(results, store_path, out, writer.base_url, "--n", "1", "--json")
    assert proposed.exit_code == 0, proposed.output
    [task] = [json.loads(line) for line in out.read_text().splitlines()]
    assert task["app"] == "kv-app" and task["parent"]["trajectory_id"] == parent.id
    assert task["system"] == [{"role": "system", "content": SYSTEM}]

    with ScriptedChatServer(_calls_then_answer()) as policy, ScriptedChatServer([VERDICT]) as judge:
        result = _run(out, store_path, policy.base_url, judge.base_url, "--json")
        sent = policy.requests[0]["messages"]
    assert result.exit_code == 0, result.output
    assert sent[0] == {"role": "system", "content": SYSTEM} and sent[1]["content"] == "Tell me the value of a."

    [stored] = _curriculum(store_path)
    assert stored.app == "kv-app" and stored.source == "curriculum"
    assert stored.messages[0] == {"role": "system", "content": SYSTEM}
    assert [s.action.kind for s in stored.steps] == ["tool_call", "answer"]
    answer = stored.steps[-1]
    assert answer.action.content == "a is 1." == stored.final_answer and answer.observation is None
    assert answer.state[0]["role"] == "system" and answer.state[-1]["role"] == "tool", "the answer follows the tool's result"
    assert stored.steps[0].state[0] == {"role": "system", "content": SYSTEM}, "IL's prompt holds the system prompt"

    # the app's own readers see it (ee improve reads store.trajectories(app=...)), and it stays a curriculum trajectory
    store = LocalExperienceStore(store_path)
    try:
        frame = store.trajectories(app="kv-app")
        assert stored.id in frame["id"].to_list()
        assert dict(zip(frame["id"].to_list(), frame["source"].to_list(), strict=True))[stored.id] == "curriculum"
    finally:
        store.close()


def test_a_task_that_names_no_app_is_stored_under_the_app_run_is_given(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F1's other half: a hand-written task (no 'app') is stored under --app, 'curriculum' without it."""
    parent = recorded[1]["kv-app"]
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [_task(parent, "Tell me the value of a.")])
    with ScriptedChatServer(_calls_then_answer()) as policy, ScriptedChatServer([VERDICT]) as judge:
        default = _run(tasks, store_path, policy.base_url, judge.base_url, "--json")
        named = _run(tasks, store_path, policy.base_url, judge.base_url, "--json", "--app", "kv-app", "--k", "1")
    assert default.exit_code == 0 and named.exit_code == 0, (default.output, named.output)
    [stored] = _curriculum(store_path)  # the same rollout: stored once, by the first run
    assert stored.app == "curriculum"
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [_task(parent, "Read a for me.")])
    with ScriptedChatServer(_calls_then_answer()) as policy, ScriptedChatServer([VERDICT]) as judge:
        assert _run(tasks, store_path, policy.base_url, judge.base_url, "--app", "kv-app").exit_code == 0
    assert sorted(t.app for t in _curriculum(store_path)) == ["curriculum", "kv-app"]


# -- F4: a traces: task is the trajectory of its id ---------------------------------------------------------------------


def test_a_task_is_matched_to_the_trajectory_of_its_id_before_any_with_the_same_question(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F4: other-app's task (its id is its trajectory's) was matched by its text to kv-app's run of the same question:
    the variant took kv-app's world, app and lineage."""
    other = recorded[1]["other-app"]
    results = _results(tmp_path / "eval", _rows("traces:store:other-app", other.id, [True, False]))
    out = tmp_path / "tasks.jsonl"
    with ScriptedChatServer([json.dumps({"instruction": "Tell me the value of a.", "tools": ["kv_get"]})]) as writer:
        result = _propose(results, store_path, out, writer.base_url, "--n", "1")
    assert result.exit_code == 0, result.output
    [task] = [json.loads(line) for line in out.read_text().splitlines()]
    assert task["parent"]["trajectory_id"] == other.id
    assert task["environment"] == {"kv": {"a": "2"}} and task["app"] == "other-app"
    assert task["system"] == [{"role": "system", "content": OTHER_SYSTEM}]


def test_propose_with_app_matches_a_question_both_apps_ask_to_that_apps_trajectory(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F8: another harness's task (an id no trajectory has) asking what both apps ask was matched by its text to the first
    app's run, whatever app the eval measured; --app chooses the app whose tools, world and system prompt go in."""
    other = recorded[1]["other-app"]
    results = _results(tmp_path / "eval", _rows("my-harness", "task-7", [True, False]))
    for extra, app_name in (((), "kv-app"), (("--app", "other-app"), "other-app")):
        out = tmp_path / f"tasks-{app_name}.jsonl"
        with ScriptedChatServer([json.dumps({"instruction": "Tell me the value of a.", "tools": ["kv_get"]})]) as writer:
            result = _propose(results, store_path, out, writer.base_url, "--n", "1", *extra)
        assert result.exit_code == 0, result.output
        [task] = [json.loads(line) for line in out.read_text().splitlines()]
        assert task["app"] == app_name
    assert task["parent"]["trajectory_id"] == other.id and task["environment"] == {"kv": {"a": "2"}}
    with ScriptedChatServer([json.dumps({"instruction": "Tell me the value of a.", "tools": ["kv_get"]})]) as writer:
        misspelt = _propose(results, store_path, tmp_path / "none.jsonl", writer.base_url, "--n", "1", "--app", "other-ap")
    said = " ".join(misspelt.output.split())
    assert misspelt.exit_code == 1 and "of the app 'other-ap' (the store's trajectories are of: kv-app, other-app)" in said, said


# -- F5: trials the server never answered are no outcome ----------------------------------------------------------------


def test_trials_the_model_server_never_answered_are_left_out_of_p_and_named(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F5 (b): a task solved 2/2 whose 2 other trials got no answer scored p = 0.5, the top task, and got the variants."""
    parent, other = recorded[1]["kv-app"], recorded[1]["other-app"]
    rows = _rows("traces:s:kv-app", parent.id, [True, True, None, None]) + _rows("traces:s:other-app", other.id, [True, False])
    results = _results(tmp_path / "eval", rows)
    out = tmp_path / "tasks.jsonl"
    with ScriptedChatServer([json.dumps({"instruction": "Tell me the value of a.", "tools": ["kv_get"]})]) as writer:
        result = _propose(results, store_path, out, writer.base_url, "--n", "2", "--json")
    assert result.exit_code == 0, result.output
    assert {json.loads(line)["parent"]["task_id"] for line in out.read_text().splitlines()} == {other.id}
    summary = json.loads(result.stdout)
    assert (summary["unanswered"], summary["unanswered_tasks"]) == (2, [parent.id])
    top = {t["task_id"]: t for t in summary["top_tasks"]}
    assert (top[parent.id]["p"], top[parent.id]["n"], top[parent.id]["unanswered"]) == (1.0, 2, 2)
    assert "got no answer from the model server" in result.stderr and "run the same `ee eval run" in result.stderr


def test_an_eval_the_model_server_never_answered_says_so_not_evaluate_more_trials(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F5 (a): 'every task was always or never solved ... evaluate more trials', when nothing was evaluated."""
    parent = recorded[1]["kv-app"]
    results = _results(tmp_path / "eval", _rows("traces:s:kv-app", parent.id, [None, None]))
    (tmp_path / "tasks.jsonl").write_text("earlier\n")
    with ScriptedChatServer(["unused"]) as writer:
        result = _propose(results, store_path, tmp_path / "tasks.jsonl", writer.base_url, "--json")
        asked = len(writer.requests)
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert "answered none of the 2 trial(s)" in error and "run the same `ee eval run" in error, error
    assert "evaluate more trials" not in error and asked == 0
    assert (tmp_path / "tasks.jsonl").read_text() == "earlier\n"


# -- F6: a judge's "partly" is no success --------------------------------------------------------------------------------


def test_a_judges_fractional_reward_is_no_verdict_and_nothing_is_stored(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F6: a reward of 0.5 (>= 0.5) was kept as a verified success."""
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [_task(recorded[1]["kv-app"], "Tell me the value of a.")])
    partly = json.dumps({"reasoning": "partly", "reward": 0.5})
    with ScriptedChatServer(_calls_then_answer()) as policy, ScriptedChatServer([partly]) as judge:
        result = _run(tasks, store_path, policy.base_url, judge.base_url, "--json")
    summary = json.loads(result.stdout)
    assert (summary["kept"], summary["stored"]) == (0, 0) and not _curriculum(store_path), summary
    assert result.exit_code == 1, result.output
    from ee_middleware.evals.curriculum import JUDGE_NO_VERDICT, JUDGE_NOT_BINARY

    assert summary["dropped"] == {JUDGE_NOT_BINARY: 1}, summary
    assert JUDGE_NOT_BINARY.startswith(JUDGE_NO_VERDICT) and "gave no verdict" in summary["error"]
    assert not _curriculum(store_path)


# -- F7: a task whose world cannot be rebuilt is skipped, the others run ------------------------------------------------


def test_a_task_whose_world_cannot_be_rebuilt_is_skipped_and_the_run_goes_on(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F7: the whole run stopped at it, naming no task, with --json's summary lost (rollouts stored before unreported)."""
    parent = recorded[1]["kv-app"]
    good, no_world, after = (
        _task(parent, "Tell me the value of a."),
        _task(parent, "Read a.", id="noenv", environment=None),
        _task(parent, "What does a hold?"),
    )
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [good, no_world, after])
    sandbox = f"{HERE}:strict_sandbox"
    with ScriptedChatServer(_calls_then_answer()) as policy, ScriptedChatServer([VERDICT]) as judge:
        result = _run(tasks, store_path, policy.base_url, judge.base_url, "--json", "--k", "2", sandbox=sandbox)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert list(summary["skipped_tasks"]) == ["noenv"] and "needs {'kv'" not in summary["skipped_tasks"]["noenv"]
    assert "kv-app trajectories need" in summary["skipped_tasks"]["noenv"], summary
    assert (summary["rollouts"], summary["kept"], summary["stored"], summary["error"]) == (4, 2, 2, None), summary
    assert len(_curriculum(store_path)) == 2

    only = _write_tasks(tmp_path / "only.jsonl", [no_world])
    with ScriptedChatServer(_calls_then_answer()) as policy, ScriptedChatServer([VERDICT]) as judge:
        text = _run(only, store_path, policy.base_url, judge.base_url, sandbox=sandbox)
        asked = len(policy.requests)
    assert text.exit_code == 1 and asked == 0, text.output
    assert "skipped task noenv: the sandbox cannot run it" in text.stdout
    assert "no task could be rolled out" in text.stderr


# -- F9: a writer failing part-way keeps what it wrote ------------------------------------------------------------------


def test_a_writer_that_fails_part_way_keeps_the_variants_it_wrote(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F9: an HTTP 500 at request 3 threw away the 2 variants written before it (no file, no word of them)."""
    parent = recorded[1]["kv-app"]
    results = _results(tmp_path / "eval", _rows("traces:s:kv-app", parent.id, [True, False]))
    answers = iter(json.dumps({"instruction": f"Tell me the value of a, take {i}.", "tools": ["kv_get"]}) for i in range(2))

    def writer_script(body: dict[str, Any]) -> Any:
        return next(answers, Reply({"error": {"message": "the writer died"}}, 500))

    out = tmp_path / "tasks.jsonl"
    with ScriptedChatServer(writer_script) as writer:
        result = _propose(results, store_path, out, writer.base_url, "--n", "4", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["variants"] == 2 and "failed at request 3" in summary["error"] and str(out) in summary["error"], summary
    assert len(out.read_text().splitlines()) == 2


# -- F10: the parent, up to case and spacing, is no variant -------------------------------------------------------------


def test_a_variant_repeating_its_parent_up_to_case_and_spacing_is_rejected() -> None:
    """F10: the parent upper-cased was kept as a variant."""
    rejected = (None, "same instruction as its parent")
    assert validate_variant('{"instruction": "WHAT  IS A?", "tools": []}', "What is a?", ["kv_get"]) == rejected


# -- F11: the variants go to the highest-variance tasks ------------------------------------------------------------------


def test_variants_are_allotted_in_proportion_to_the_outcome_variance() -> None:
    from ee_middleware.replay.curriculum import allot

    def score(task_id: str, p: float) -> TaskScore:
        return TaskScore("s", task_id, 20, p, "")

    assert allot([score("half", 0.5), score("rare", 0.05)], 6) == [5, 1]
    assert allot([score("a", 0.5), score("b", 0.5), score("c", 0.4)], 2) == [1, 1, 0], "n below the tasks: the top ones"
    assert allot([score("a", 0.5), score("never", 0.0)], 3) == [3, 0]
    assert sum(allot([score(str(i), 0.1 * i) for i in range(1, 10)], 7)) == 7


def test_a_task_the_writer_cannot_vary_leaves_its_share_to_the_others(recorded: tuple[Path, dict[str, Trajectory]]) -> None:
    """Review R13 M2: with the share allotted per task, a parent the writer only repeats used up its requests and its
    share stayed empty: 2 of 4 variants, exit 0 (the round-robin before wrote 4 within its 3 * n requests)."""
    from ee_middleware.models.protocol import Choice
    from ee_middleware.replay.curriculum import propose, score_tasks

    first, second = recorded[1]["kv-app"], recorded[1]["other-app"]
    parents = [first.model_copy(update={"task": "Task A"}), second.model_copy(update={"task": "Task B"})]
    rows = [
        {"suite": "s", "task_id": t.id, "success": ok, "conversation": [{"role": "user", "content": t.task}]}
        for t in parents
        for ok in (True, False, True, False)
    ]
    written = iter(range(100))

    class Writer:
        """Repeats task A's question (no variant), varies task B."""

        requests = 0

        def complete(self, messages: list[dict[str, Any]], **_: Any) -> list[Choice]:
            self.requests += 1
            same = messages[-1]["content"].startswith("Task: Task A")
            text = json.dumps({"instruction": "Task A" if same else f"Task B, variant {next(written)}", "tools": ["kv_get"]})
            return [Choice(message={"role": "assistant", "content": text}, raw=text, finish_reason="stop")]

    writer = Writer()
    proposal = propose(writer, score_tasks(rows), parents, n=4)
    assert len(proposal.variants) == 4 and writer.requests <= 12, (proposal.rejected, writer.requests)
    assert {v["parent"]["task_id"] for v in proposal.variants} == {second.id}
    assert proposal.allotted[second.id] == 4 and proposal.rejected == {"same instruction as its parent": writer.requests - 4}


def test_propose_gives_the_task_solved_half_the_time_most_of_the_variants(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F11: round-robin over every task with p(1-p) > 0 gave a task solved 1 time in 20 as many variants as one solved
    half the time."""
    half, rare = recorded[1]["kv-app"], recorded[1]["other-app"]
    rows = _rows("traces:s:kv-app", half.id, [True, False] * 2) + _rows("traces:s:other-app", rare.id, [True] + [False] * 19)
    results = _results(tmp_path / "eval", rows)
    taken = iter(range(100))

    def writer_script(body: dict[str, Any]) -> str:
        return json.dumps({"instruction": f"Read a, take {next(taken)}.", "tools": ["kv_get"]})

    out = tmp_path / "tasks.jsonl"
    with ScriptedChatServer(writer_script) as writer:
        result = _propose(results, store_path, out, writer.base_url, "--n", "6", "--json")
    assert result.exit_code == 0, result.output
    per_parent = Counter(json.loads(line)["parent"]["task_id"] for line in out.read_text().splitlines())
    assert per_parent == {half.id: 5, rare.id: 1}
    assert json.loads(result.stdout)["allotted"] == {half.id: 5, rare.id: 1}


# -- F12: a policy that never made a usable call fails the run ----------------------------------------------------------


def test_a_run_whose_policy_never_made_a_usable_call_exits_1_naming_the_causes(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F12: exit 0 and "error": null with nothing stored, unlike every other cause of keeping nothing."""
    parent = recorded[1]["kv-app"]
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [_task(parent, "Tell me the value of a."), _task(parent, "Read a.")])
    unknown = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "x", "type": "function", "function": {"name": "rm_all", "arguments": "{}"}}],
    }

    def policy_script(body: dict[str, Any]) -> Any:
        return unknown if "Read a." in json.dumps(body["messages"]) else "I think a is 1."

    with ScriptedChatServer(policy_script) as policy, ScriptedChatServer([VERDICT]) as judge:
        result = _run(tasks, store_path, policy.base_url, judge.base_url, "--json")
        judged = len(judge.requests)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["kept"] == 0 and judged == 0
    assert "answered without calling a tool" in summary["error"] and "rm_all (1)" in summary["error"], summary


# -- F13: an --approve-if that raises is the user's, and the run says what it stored ------------------------------------


def test_an_approve_if_that_raises_is_named_with_its_line_and_the_run_says_what_it_stored(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F13: 'unexpected RuntimeError ... a bug in ee-middleware', the run stopped after the first kept rollout."""
    parent = recorded[1]["kv-app"]
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [_task(parent, "Tell me the value of a."), _task(parent, "Read a.")])
    with ScriptedChatServer(_calls_then_answer()) as policy, ScriptedChatServer([VERDICT]) as judge:
        result = _run(tasks, store_path, policy.base_url, judge.base_url, "--json", "--approve-if", f"{HERE}:boom")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["kept"], summary["stored"], summary["approved"]) == (2, 2, 0), summary
    assert sorted(summary["approve_if_failed"]) == sorted(summary["stored_trajectories"])
    error = summary["error"]
    assert f"'{HERE}:boom' raised RuntimeError: my approver broke" in error, error
    assert "test_curriculum_rdream.py:" in error and "raise RuntimeError" in error and "bug in ee-middleware" not in error
    assert "stored and stay pending" in error
    assert {t.approval.status for t in _curriculum(store_path)} == {"pending"}


# -- F15: an --out that cannot be the tasks file is refused before the writer is asked ----------------------------------


def test_propose_refuses_a_folder_as_out_before_asking_the_writer(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """F15: the writer was asked first, then 'Is a directory ... Check the output folder's permissions and free space'."""
    results = _results(tmp_path / "eval", _rows("traces:s:kv-app", recorded[1]["kv-app"].id, [True, False]))
    (tmp_path / "afile").write_text("")
    for out, said in ((tmp_path / "adir", "is a folder"), (tmp_path / "afile" / "tasks.jsonl", "is a file, not a folder")):
        if out.name == "adir":
            out.mkdir()
        with ScriptedChatServer([json.dumps({"instruction": "Read a.", "tools": []})]) as writer:
            result = _propose(results, store_path, out, writer.base_url)
            asked = len(writer.requests)
        assert result.exit_code == 2 and asked == 0, result.output
        assert said in " ".join(result.output.split()) and "permissions" not in result.output


@pytest.mark.parametrize("number", [errno.EISDIR, errno.ENOTDIR])
def test_the_advice_for_a_folder_where_a_file_goes_is_about_the_path(number: int) -> None:
    for output in (True, False):
        advice = os_error_advice(OSError(number, "x"), output=output)
        assert "permissions" not in advice and "free space" not in advice and "folder" in advice, advice


def test_tasks_of_two_suites_with_one_id_are_allotted_apart(recorded: tuple[Path, dict[str, Trajectory]]) -> None:
    """Review R15: ``allotted`` was keyed by task id alone, so two suites' tasks of one id showed one count (the last
    one's) for both; they are ``suite/id`` now, and an id of one suite stays the plain id."""
    from ee_middleware.models.protocol import Choice
    from ee_middleware.replay.curriculum import propose, score_tasks

    first, second = recorded[1]["kv-app"], recorded[1]["other-app"]
    parent = first.model_copy(update={"task": "Task A"})
    other = second.model_copy(update={"task": "Task B"})
    rows = [
        {"suite": suite, "task_id": t.id, "success": ok, "conversation": [{"role": "user", "content": t.task}]}
        for suite, t, outcomes in (("s1", parent, (True, False)), ("s2", parent, (True, False, False, False)), ("s1", other, (True, False)))
        for ok in outcomes
    ]
    written = iter(range(100))

    class Writer:
        def complete(self, messages: list[dict[str, Any]], **_: Any) -> list[Choice]:
            text = json.dumps({"instruction": f"Task, variant {next(written)}", "tools": ["kv_get"]})
            return [Choice(message={"role": "assistant", "content": text}, raw=text, finish_reason="stop")]

    proposal = propose(Writer(), score_tasks(rows), [parent, other], n=6)

    assert set(proposal.allotted) == {f"s1/{parent.id}", f"s2/{parent.id}", other.id}, proposal.allotted
    assert sum(proposal.allotted.values()) == len(proposal.variants) == 6


def test_a_task_skipped_after_some_of_its_trials_ran_says_so(
    recorded: tuple[Path, dict[str, Trajectory]], store_path: Path, tmp_path: Path
) -> None:
    """Review R15: the reason of a task whose world failed at its second trial read as if none had run ("skipped")."""
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [_task(recorded[1]["kv-app"], "Tell me the value of a.", id="half")])
    with ScriptedChatServer(_calls_then_answer()) as policy, ScriptedChatServer([VERDICT]) as judge:
        result = _run(tasks, store_path, policy.base_url, judge.base_url, "--json", "--k", "3", sandbox=f"{HERE}:flaky_sandbox")
    summary = json.loads(result.stdout)
    assert summary["rollouts"] == 1 and summary["kept"] == 1, summary
    reason = summary["skipped_tasks"]["half"]
    assert reason.startswith("the sandbox cannot run it after 1 of its 3 trials ran"), reason
    assert "the world's database went away" in reason
