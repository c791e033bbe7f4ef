"""``ee curriculum run`` keeps no rollout in which the policy called a tool the sandbox does not cover.

Before: the policy's call of a tool the sandbox lacks got the sandbox's refusal ("Error: tool 'note' is not available
here."), a judge that checks the goal accepted the rollout, the run printed nothing about it and exited 0, and once
approved the refusal was an IWM and experience-model training target: a falsehood about production. Now such a call is
refused as ``ee replay run`` refuses it (the sandbox's ``covers``), the rollout ends there and is dropped as
``uncovered_tool`` (never judged), the refused calls are counted per tool (``refused_tools``), and a run that kept nothing
else exits 1 saying which tools and how to allow them. A covered tool's error (it raised in the sandbox, as in
production) is still an observation kept.

Real objects: the store is a key-value app recorded with a real ``create_agent`` graph (tests/replay/kv_world.py), the
sandboxes are real :class:`PythonSandbox` es built by spec from this module, the policy and the judge are scripted
stand-ins behind real local HTTP servers (the test names say so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.curriculum import UNCOVERED_TOOL_DROPPED
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing.http import ScriptedChatServer
from tests.replay import kv_world

runner = CliRunner()
HERE = "tests.replay.test_curriculum_uncovered_tools"
VERDICT = json.dumps({"reasoning": "the key is set", "reward": 1})  # a judge that checks the goal, not the tool results

PLANS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "Set a to 1 and note it.": [("kv_set", {"key": "a", "value": "1"}), ("note", {"text": "a is 1"})],
    "Set a to 1.": [("kv_set", {"key": "a", "value": "1"})],
    "Read the key missing.": [("kv_get", {"key": "missing"})],
}


def _kv_get_raising(world: dict[str, Any], key: str) -> str:
    """The sandbox's kv_get: a missing key raises (an error of a tool the sandbox covers)."""
    if key not in world["kv"]:
        raise KeyError(f"no key {key}")
    return world["kv"][key]


def without_note(**options: Any) -> PythonSandbox:
    """The key-value world without ``note`` (a tool with effects outside the world, left out of the sandbox)."""
    tools = {"kv_set": kv_world.kv_set, "kv_get": _kv_get_raising, "clock": kv_world.clock}
    return PythonSandbox(kv_world.build_world, tools=tools, kind="kv-without-note")


def note_outside_world(**options: Any) -> PythonSandbox:
    """The key-value world with ``note`` declared to act only outside the world (never called)."""
    tools = {"kv_set": kv_world.kv_set, "kv_get": _kv_get_raising, "clock": kv_world.clock}
    return PythonSandbox(kv_world.build_world, tools=tools, kind="kv-note-outside", outside_world_tools=["note"])


def _policy(body: dict[str, Any]) -> str:
    """The plan of the task's instruction, one call a turn, then an answer."""
    messages = body["messages"]
    task = next(m["content"] for m in messages if m["role"] == "user")
    done = sum(m["role"] == "tool" for m in messages)
    plan = PLANS[task]
    if done >= len(plan):
        return "Done."
    name, arguments = plan[done]
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def _tasks(tmp_path: Path, instructions: list[str]) -> tuple[Path, Path]:
    """A store holding one approved recorded run of the key-value app, and a tasks.jsonl of ``instructions`` on its tools
    and environment (as ``ee curriculum propose`` writes them)."""
    root = tmp_path / "experience"
    [parent_id] = kv_world.record_kv(root, [("kv_set", {"key": "a", "value": "1"}), ("note", {"text": "a is 1"})])
    store = LocalExperienceStore(root)
    parent = store.get(parent_id)
    store.close()
    tasks = tmp_path / "tasks.jsonl"
    lines = [
        {
            "id": f"curriculum-{i}",
            "source": "curriculum",
            "parent": {"suite": "kv", "task_id": "kv-0", "trajectory_id": parent.id, "p": 0.5, "variance": 0.25},
            "instruction": instruction,
            "tools": parent.tools,
            "environment": parent.environment,
        }
        for i, instruction in enumerate(instructions)
    ]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, tasks


def _curriculum(root: Path) -> list[Any]:
    store = LocalExperienceStore(root)
    try:
        return [t for t in store.iter_trajectories() if t.source == "curriculum"]
    finally:
        store.close()


def _run(root: Path, tasks: Path, sandbox: str, *flags: str) -> tuple[Any, int]:
    """``ee curriculum run`` with the scripted policy and an accepting judge; the result and how often the judge was asked."""
    with ScriptedChatServer(_policy, models=["p"]) as policy, ScriptedChatServer([VERDICT], models=["j"]) as judge:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", sandbox]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(root), *flags])
        return result, len(judge.requests)


def test_a_rollout_calling_a_tool_the_sandbox_lacks_is_not_stored_and_a_run_that_kept_nothing_fails_scripted_server(
    tmp_path: Path,
) -> None:
    root, tasks = _tasks(tmp_path, ["Set a to 1 and note it."])
    result, judged = _run(root, tasks, f"{HERE}:without_note", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["rollouts"], summary["kept"], summary["stored"]) == (1, 0, 0), summary
    assert summary["dropped"] == {UNCOVERED_TOOL_DROPPED: 1} and UNCOVERED_TOOL_DROPPED.startswith("uncovered_tool"), summary
    assert summary["refused_tools"] == {"note": 1}, summary
    assert _curriculum(root) == [], "the sandbox's refusal is no observation to train on"
    assert judged == 0, "a rollout that cannot be kept is not judged"
    error = summary["error"]
    assert error is not None and "note" in error and f"{HERE}:without_note" in error, error
    assert "add it to the sandbox" in error, error
    assert f"error: {error}" in result.stderr, result.stderr


def test_other_rollouts_are_kept_and_the_run_exits_0_saying_what_was_refused_scripted_server(tmp_path: Path) -> None:
    root, tasks = _tasks(tmp_path, ["Set a to 1 and note it.", "Set a to 1."])
    as_json, _ = _run(root, tasks, f"{HERE}:without_note", "--json")
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert (summary["rollouts"], summary["kept"], summary["stored"]) == (2, 1, 1), summary
    assert summary["dropped"] == {UNCOVERED_TOOL_DROPPED: 1} and summary["refused_tools"] == {"note": 1}, summary
    assert summary["error"] is None, summary
    [kept] = _curriculum(root)
    assert kept.tool_names == ["kv_set"] and kept.id == summary["trajectories"][0]
    assert all("not available" not in (s.observation.content if s.observation else "") for s in kept.steps)

    as_text, _ = _run(root, tasks, f"{HERE}:without_note")
    assert as_text.exit_code == 0, as_text.output
    text = " ".join(as_text.stdout.split())
    assert f"dropped 1: {UNCOVERED_TOOL_DROPPED}" in text, text
    assert f"refused 1 call(s) of note: sandbox '{HERE}:without_note' does not provide it" in text, text


def test_a_covered_tools_error_is_still_an_observation_kept_scripted_server(tmp_path: Path) -> None:
    root, tasks = _tasks(tmp_path, ["Read the key missing."])
    result, judged = _run(root, tasks, f"{HERE}:without_note", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["kept"], summary["stored"], summary["dropped"], summary["refused_tools"]) == (1, 1, {}, {}), summary
    assert judged == 1
    [kept] = _curriculum(root)
    step, answer = kept.steps  # the call, then the policy's final reply (an answer step, as capture records it)
    assert answer.action.kind == "answer"
    assert step.action.tool_call.name == "kv_get" and step.observation is not None and step.observation.is_error, step
    assert "no key missing" in step.observation.content, step.observation


def test_a_tool_declared_outside_the_world_is_refused_too_with_the_sandboxs_hint_scripted_server(tmp_path: Path) -> None:
    root, tasks = _tasks(tmp_path, ["Set a to 1 and note it.", "Set a to 1."])
    result, _ = _run(root, tasks, f"{HERE}:note_outside_world")
    assert result.exit_code == 0, result.output
    assert len(_curriculum(root)) == 1
    text = " ".join(result.stdout.split())
    assert f"dropped 1: {UNCOVERED_TOOL_DROPPED}" in text, text
    assert "refused 1 call(s) of note: note is declared in outside_world_tools" in text, text
