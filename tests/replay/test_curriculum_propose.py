"""`ee curriculum propose` keeps distinct variants only, sends --max-tokens, and names an answer cut off at it.

The writer is a scripted stand-in behind a real local HTTP server (ScriptedChatServer); the eval rows, the store of
real BFCL expert trajectories, the proposer and the CLI are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing.http import Answer, ScriptedChatServer

DUPLICATE = "duplicate of an earlier variant"  # the reason (spelled out: the test ran against the code before it)


def _propose(store_path: Path, tmp_path: Path, base_url: str, *extra: str) -> tuple[Any, Path]:
    """``ee curriculum propose --json`` of a writer at ``base_url`` on an eval run where one stored task has p = 0.5."""
    store = LocalExperienceStore(store_path)
    entry = sorted(t.environment["entry_id"] for t in store.iter_trajectories())[0]
    store.close()
    tmp_path.mkdir(exist_ok=True)
    results = tmp_path / "results.jsonl"
    rows = [{"suite": "bfcl", "task_id": entry, "trial": i, "success": ok} for i, ok in enumerate([True, False, True, False])]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "tasks.jsonl"
    args = ["curriculum", "propose", "--from", str(results), "--model", f"openai:{base_url}#writer", "--store", str(store_path)]
    return CliRunner().invoke(app, [*args, "--out", str(out), "--json", *extra]), out


LIST = json.dumps({"instruction": "List the files in the current folder.", "tools": ["ls"]})
LIST_AGAIN = json.dumps({"instruction": "list the files   in the current folder.", "tools": ["ls"]})  # same, up to case and spacing
PWD = json.dumps({"instruction": "Show the current folder.", "tools": ["pwd"]})
DRAFTS = json.dumps({"instruction": "List the files, then make a folder named drafts.", "tools": ["ls", "mkdir"]})


def test_a_writer_that_repeats_itself_gives_distinct_variants_only_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was: '"variants": 3' for 3 rows holding 2 distinct ids (the same curriculum-<digest> line twice)."""
    answers = iter([LIST, LIST, LIST_AGAIN, PWD, LIST, PWD, DRAFTS, LIST, LIST])
    with ScriptedChatServer(lambda body: next(answers)) as server:
        result, out = _propose(bfcl_store_path, tmp_path, server.base_url, "--n", "3")
        requests = list(server.requests)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    variants = [json.loads(line) for line in out.read_text().splitlines()]
    assert [v["instruction"] for v in variants] == [json.loads(a)["instruction"] for a in (LIST, PWD, DRAFTS)]
    assert len({v["id"] for v in variants}) == len(variants) == summary["variants"] == summary["requested"] == 3
    assert summary["rejected"] == {DUPLICATE: 4} and summary["attempts"] == 7 == len(requests)
    assert "Variants already written" in requests[1]["messages"][-1]["content"], "the writer is shown what it already wrote"


def test_a_writer_that_only_repeats_itself_keeps_one_within_the_attempt_budget_scripted_server(
    bfcl_store_path: Path, tmp_path: Path
) -> None:
    with ScriptedChatServer(lambda body: LIST) as server:
        result, out = _propose(bfcl_store_path, tmp_path, server.base_url, "--n", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["variants"], summary["attempts"], summary["rejected"]) == (1, 6, {DUPLICATE: 5})
    assert len(out.read_text().splitlines()) == 1


def _cut(reasoning: bool) -> Answer:
    if reasoning:  # a model that thinks first, cut off at max_tokens before it closed its <think>
        return {"role": "assistant", "content": "<think>\nThe task lists files, so a variant could " + "weigh it " * 40}, "length"
    return {"role": "assistant", "content": '{"instruction": "List every file in the current folder and then, for each'}, "length"


def test_a_writer_cut_off_at_max_tokens_is_told_to_raise_max_tokens_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was: every answer rejected as "no JSON object with an 'instruction' field", 'try another model or a larger --n',
    and max_tokens fixed at 200."""
    for reasoning in (True, False):
        with ScriptedChatServer(lambda body, reasoning=reasoning: _cut(reasoning)) as server:
            result, out = _propose(bfcl_store_path, tmp_path / str(reasoning), server.base_url, "--n", "2", "--max-tokens", "60")
            asked = {request["max_tokens"] for request in server.requests}
        assert result.exit_code == 1 and not out.exists(), result.output
        assert asked == {60}, "--max-tokens is what the writer is asked for"
        summary = json.loads(result.stdout)
        [reason] = summary["rejected"]
        if reasoning:
            assert reason == "the answer was cut off at max_tokens while still reasoning: raise max_tokens (now 60)"
        else:
            assert reason == "the answer was cut off at max_tokens (finish_reason 'length'): no JSON object with an 'instruction' field"
        error = summary["error"]
        assert "6 of its 6 answer(s) were cut off at max_tokens" in error and "Raise --max-tokens (now 60)" in error
        assert "larger --n" not in error and "Raise --max-tokens (now 60)" in result.stderr


def test_the_writer_is_asked_for_200_tokens_by_default_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    with ScriptedChatServer(lambda body: PWD) as server:
        result, _ = _propose(bfcl_store_path, tmp_path, server.base_url, "--n", "1")
        assert result.exit_code == 0, result.output
        assert [request["max_tokens"] for request in server.requests] == [200]


def test_variants_are_distinct_across_parents_new_and_counted_as_written_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was (sweep S2): the same instruction kept for two parents ('variants' counting it twice), a variant that is a task
    already evaluated kept as new, and 'allotted' summing to more than the variants written (what each task was allotted,
    not what it got; a task shown allotted one that got none)."""
    store = LocalExperienceStore(bfcl_store_path)
    first, second = sorted(t.environment["entry_id"] for t in store.iter_trajectories())[:2]
    store.close()
    existing = "Tell me how many files are in the current folder."  # an evaluated task, solved every time: p(1-p) = 0
    conversation = json.dumps([{"role": "user", "content": existing}])
    rows = [{"suite": "bfcl", "task_id": task, "trial": i, "success": ok} for task in (first, second) for i, ok in enumerate([True, False])]
    rows += [{"suite": "bfcl", "task_id": "solved", "trial": i, "success": True, "conversation": conversation} for i in range(2)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = iter([LIST, LIST, json.dumps({"instruction": existing.upper(), "tools": ["ls"]}), PWD, DRAFTS, DRAFTS, DRAFTS])
    out = tmp_path / "tasks.jsonl"
    with ScriptedChatServer(lambda body: next(answers)) as server:
        args = ["curriculum", "propose", "--from", str(results), "--model", f"openai:{server.base_url}#writer"]
        result = CliRunner().invoke(app, [*args, "--store", str(bfcl_store_path), "--out", str(out), "--json", "--n", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    variants = [json.loads(line) for line in out.read_text().splitlines()]
    instructions = [v["instruction"] for v in variants]
    assert len(set(instructions)) == len(instructions) == summary["variants"] == 3, instructions
    assert existing.upper() not in instructions
    assert summary["rejected"] == {DUPLICATE: 1, "an existing task": 1}, summary["rejected"]
    written: dict[str, int] = {}
    for variant in variants:
        written[variant["parent"]["task_id"]] = written.get(variant["parent"]["task_id"], 0) + 1
    assert summary["allotted"] == written and sum(summary["allotted"].values()) == len(variants), (summary["allotted"], written)


def test_a_writer_that_only_writes_prose_is_not_told_to_ask_for_more_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was (sweep S2): 'try another model or a larger --n', though more requests of a writer that never writes the JSON
    the prompt asks for give nothing more."""
    with ScriptedChatServer(lambda body: "Sure! Here is a nice variant: list the files, please.") as server:
        result, out = _propose(bfcl_store_path, tmp_path, server.base_url, "--n", "2")
    assert result.exit_code == 1, result.output
    error = " ".join(result.stderr.split())
    assert "none was a variant as the prompt asks for one; try another model." in error and "larger --n" not in error, error
    assert not out.exists()
