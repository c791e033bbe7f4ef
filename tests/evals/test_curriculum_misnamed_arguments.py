"""``ee curriculum run``: a call whose arguments sit under another key (``args``, ``params``, ``kwargs``, Anthropic's
``input``), whole or cut at ``max_tokens``, is "unparsable", as the parser reports it
(:func:`~ee_middleware.models.parsing.misnamed_arguments`, the one rule both read); a record whose field has such a name
and a plain value is still "no tool call", and a call with such a key left empty is a call without arguments.

The policy and judge are scripted stand-ins behind real local HTTP servers; the sandbox is the real BFCL one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.evals.curriculum import UNPARSABLE_DROPPED
from ee_middleware.testing.http import ScriptedChatServer
from tests.evals.test_curriculum import Serve, _approve, _curriculum, _tasks, app, runner
from tests.replay import conftest as replay_fixtures

serve = replay_fixtures.serve  # scripted models behind real local HTTP servers

MISNAMED = [
    '{"name": "cd", "args": {"folder": "workspace"}}',
    '{"name": "cd", "params": {"folder": "workspace"}}',
    '{"name": "cd", "kwargs": {"folder": "workspace"}}',
    '{"type": "tool_use", "id": "toolu_1", "name": "cd", "input": {"folder": "workspace"}}',
    '{"name": "cd", "args": {"fol',
    '{"name": "cd", "thought": "go in", "params": {"folder": "work',
    '{"type": "tool_use", "id": "toolu_1", "name": "cd", "input": {"fol',
    "{'name': 'cd', 'args': {'folder': 'workspace'}}",
]
MISNAMED_IDS = [
    "args",
    "params",
    "kwargs",
    "anthropic-input",
    "args-cut",
    "thought-then-params-cut",
    "anthropic-input-cut",
    "python-literal-args",
]


def _run(answers: list[str], store: Path, folder: Path, serve: Serve) -> tuple[dict[str, int], Serve]:
    judge = serve(_approve)
    tasks, _ = _tasks(store, folder)
    with ScriptedChatServer(answers) as policy:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(store), "--json"])
    summary = json.loads(result.stdout)
    # a run that kept nothing because no rollout had a usable call exits 1 (rdream F12)
    assert result.exit_code == (0 if summary["kept"] else 1), result.output
    return summary["dropped"], judge


@pytest.mark.parametrize("answer", MISNAMED, ids=MISNAMED_IDS)
def test_a_call_with_its_arguments_under_another_key_is_unparsable(
    answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """Each was "no tool call": only arguments/parameters/function/tool_calls made JSON a call's shape."""
    dropped, judge = _run([answer], bfcl_store_path, tmp_path, serve)
    assert dropped == {UNPARSABLE_DROPPED: 1}
    assert not judge.requests and not _curriculum(bfcl_store_path)


def test_a_rollout_ending_on_a_call_with_misnamed_arguments_is_not_judged_nor_stored(
    bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """It was judged, and stored when approved, with the call it never ran as its final answer."""
    ran = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "pwd", "arguments": "{}"}}],
    }
    dropped, judge = _run([ran, '{"name": "cd", "args": {"folder": "workspace"}}'], bfcl_store_path, tmp_path, serve)
    assert dropped == {UNPARSABLE_DROPPED: 1}
    assert not judge.requests and not _curriculum(bfcl_store_path)


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "bert-base", "params": "110M", "layers": 12}',
        '{"name": "LM7805", "input": "12V", "output": "5V"} is the regulator.',
        '{"name": "bert-base", "params": "110M", "lay',
    ],
    ids=["record-with-params-field", "record-with-input-field-then-text", "record-with-params-field-cut"],
)
def test_a_record_whose_field_is_called_params_or_input_is_no_tool_call(
    answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    dropped, judge = _run([answer], bfcl_store_path, tmp_path, serve)
    assert dropped == {"no tool call": 1}
    assert not judge.requests


@pytest.mark.parametrize(
    "answer",
    ['{"name": "pwd", "args": {}}', '{"type": "tool_use", "id": "toolu_1", "name": "pwd", "input": {}}', '{"name": "pwd", "params": null}'],
    ids=["empty-args", "anthropic-empty-input", "null-params"],
)
def test_a_call_with_an_empty_misnamed_key_runs_without_arguments(answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve) -> None:
    """Each was dropped as unparsable since the parser (178b4db) reported the key; before it, each ran ``pwd``."""
    dropped, judge = _run([answer, "I am in the workspace folder."], bfcl_store_path, tmp_path, serve)
    assert not dropped
    assert judge.requests and list(_curriculum(bfcl_store_path).values()) == [["pwd"]]
