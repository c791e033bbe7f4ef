"""``ee curriculum run``: an answer that is a record the policy wrote (its ``name`` a file's or a person's), followed by
a sentence, cut at ``max_tokens`` or written as a Python literal, is "no tool call", not an unreadable call nor a call
of an unknown tool; a call written in text and cut short or unreadable is still "unparsable".

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


def _dropped(answer: str, store: Path, folder: Path, serve: Serve) -> dict[str, int]:
    judge = serve(_approve)
    tasks, _ = _tasks(store, folder)
    with ScriptedChatServer([answer]) as policy:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(store), "--json"])
    assert result.exit_code == 1, result.output  # nothing kept, as no rollout had a usable call (rdream F12)
    assert "usable tool call" in json.loads(result.stdout)["error"], result.output
    assert not judge.requests and not _curriculum(store)
    return json.loads(result.stdout)["dropped"]


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": 42, "size": 1} is what I found',
        '{"name": "Alice Smith", "email": "alice@exa',
        '{"name": "final_report.pdf", "size": 48213}\nThat is the newest report.',
        "{'name': 'final_report.pdf', 'size': 48213}",
        '[{"name": "final_report.pdf", "size": 48213}, {"name": "notes.txt", "size": 112}] are the two files.',
    ],
    ids=[
        "record-then-a-sentence",
        "record-cut-at-max-tokens",
        "named-record-then-a-sentence",
        "python-literal-record",
        "records-then-a-sentence",
    ],
)
def test_an_answer_that_is_a_record_with_a_name_is_no_tool_call(answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve) -> None:
    """The first two were dropped as unparsable ('check the policy server's tool-call parser or chat template': only an
    answer that decodes whole had its shape checked); the others as calling an unknown tool (the parser read the record
    as a call to a tool named 'final_report.pdf')."""
    assert _dropped(answer, bfcl_store_path, tmp_path, serve) == {"no tool call": 1}


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "ls", "argu',  # cut inside the arguments key
        '{"name": "ls", ',  # cut before its second key
        "{'name': 'ls', 'arguments': [1]} and that lists it",  # a Python-literal call, arguments not an object
        '{"name": "ls", "parameters": {"a": tru',  # cut inside its parameters
    ],
    ids=["cut-in-key", "cut-after-name", "python-literal-then-text", "cut-in-parameters"],
)
def test_a_call_in_text_that_cannot_be_read_is_still_unparsable(answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve) -> None:
    assert _dropped(answer, bfcl_store_path, tmp_path, serve) == {UNPARSABLE_DROPPED: 1}


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "ls", "id": "call_1", "arguments": {"path": "/ho',
        '{"name": "ls", "type": "function", "parameters": {"path": "/ho',
        '{"name": "ls", "thought": "list the home folder", "arguments": {"path": "/ho',
        '{"name": "ls", "index": 0, "id": "call_',
        "{'name': 'ls', 'id': 'c1', 'arguments': [1]}",
    ],
    ids=["id-then-cut", "type-function-then-cut", "thought-then-cut", "cut-in-id", "python-literal-with-id"],
)
def test_a_call_with_its_own_keys_after_the_name_cut_short_is_still_unparsable(
    answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    """Each was "no tool call": a key after the name other than arguments/parameters was taken for a record's field,
    though the parser reads an id, an index, a thought and "type": "function" beside a call's name. A rollout that had
    made calls and ended on such a cut call then went to the judge, and could be stored with it as its final answer."""
    assert _dropped(answer, bfcl_store_path, tmp_path, serve) == {UNPARSABLE_DROPPED: 1}


@pytest.mark.parametrize(
    "answer",
    ['{"name": "final_report.pdf", "type": "file", "size": 482', '{"name": "Widget", "description": "A small one", "price": 3'],
    ids=["typed-record-cut", "described-record-cut"],
)
def test_a_record_cut_short_after_a_key_a_call_may_have_is_no_tool_call(
    answer: str, bfcl_store_path: Path, tmp_path: Path, serve: Serve
) -> None:
    assert _dropped(answer, bfcl_store_path, tmp_path, serve) == {"no tool call": 1}
