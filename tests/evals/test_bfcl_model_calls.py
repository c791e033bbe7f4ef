"""BFCL multi-turn scoring of what a model actually sends, against BFCL's own rules (real bfcl-eval data, backends
and ``multi_turn_checker``): a model's call names and argument names are never run as Python, and a turn that
runs past BFCL's step limit ends the entry as BFCL's runner ends it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.bfcl._package import import_bfcl
from ee_middleware.evals.bfcl.suite import BFCLSuite
from ee_middleware.evals.clients import OracleClient
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.runner import result_row
from ee_middleware.evals.tasks import EvalTask

from .test_bfcl_harness import _official_multi_turn


def _call(name: str, arguments: dict[str, Any], call_id: str = "c") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _answer(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": list(calls)}


@pytest.fixture(scope="module")
def task() -> EvalTask:
    """multi_turn_base_0: TwitterAPI and GorillaFileSystem, four user turns."""
    return BFCLSuite("multi_turn_base").tasks()[0]


def test_call_names_and_argument_names_a_model_sends_are_never_run_as_python(task: EvalTask, tmp_path: Path) -> None:
    """Before: the call strings handed to BFCL's checker (which eval()s them) were built from the model's names and
    argument names as sent, so a model answering with these names ran them in the eval process (three files written)."""
    marks = [tmp_path / name for name in ("by_name", "by_argument", "by_builtin")]
    hostile = [
        _call(f"__import__('os').system('touch {marks[0]}') or ls", {}),
        _call("ls", {f"a=__import__('os').system('touch {marks[1]}'),b": 1}),
        _call("open", {"file": str(marks[2]), "mode": "w"}),  # a Python builtin, not a tool of the entry's backends
    ]
    reference = [[_answer(*hostile)], *task.reference[1:]]
    result = BFCLSuite("multi_turn_base").run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
    assert [m.exists() for m in marks] == [False, False, False]
    assert not result.success and result.error_type == "multi_turn:instance_state_mismatch"  # turn 0's cd/mkdir/mv were not made


def test_a_call_to_a_name_the_backends_lack_is_scored_as_the_official_checker_scores_it(task: EvalTask) -> None:
    """Calls the backends cannot run (unknown names, an argument name that is not one) leave the state alone and their
    output matches nothing: the verdict is the official checker's on the same answers."""
    suite = BFCLSuite("multi_turn_base")
    for extra in (_call("no_such_tool", {"x": 1}, "e"), _call("ls", {"not an identifier": True}, "e")):
        reference = [[_answer(*task.reference[0][0]["tool_calls"], extra)], *task.reference[1:]]
        ours = suite.run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
        official = _official_multi_turn(task, reference)
        assert (ours.success, ours.error_type) == (official["valid"], official.get("error_type")), (extra, ours.reason, official)


# --- BFCL's step limit --------------------------------------------------------------------------------------------


def _step_limit() -> int:
    return int(import_bfcl("constants.default_prompts").MAXIMUM_STEP_LIMIT)


def _padded(task: EvalTask, call_answers: int) -> list[list[dict[str, Any]]]:
    """Turn 0 answered one ground-truth call per answer, then read-only ``pwd`` calls up to ``call_answers`` answers
    with calls, then a text answer; the other turns as the ground truth."""
    calls = task.reference[0][0]["tool_calls"]
    steps = [_answer(c) for c in calls] + [_answer(_call("pwd", {}, f"p{i}")) for i in range(call_answers - len(calls))]
    return [[*steps, {"role": "assistant", "content": "Done."}], *task.reference[1:]]


def _bfcl_verdict(task: EvalTask, reference: list[list[dict[str, Any]]]) -> tuple[bool, str | None]:
    """What BFCL's runner gives these answers: ``inference_multi_turn_FC`` force-quits a turn whose model made calls in
    more than MAXIMUM_STEP_LIMIT answers and runs no later turn; ``_evaluate_single_multi_turn_entry`` then fails an
    entry with fewer turns than the ground truth as force_terminated, and hands a whole one to multi_turn_checker."""
    turns = []
    for turn in reference:
        turns.append(turn)
        if sum(1 for message in turn if message.get("tool_calls")) > _step_limit():
            break
    if len(turns) != len(task.payload["ground_truth"]):
        return False, "multi_turn:force_terminated"
    official = _official_multi_turn(task, turns)
    return official["valid"], official.get("error_type")


@pytest.mark.parametrize("extra", [0, 1], ids=["at_the_limit", "one_past_it"])
def test_a_turn_past_bfcl_s_step_limit_ends_the_entry_as_bfcl_does(task: EvalTask, extra: int) -> None:
    """Before: a turn cut at --max-steps-per-turn (20) went on to the next turn and the checker scored the whole entry,
    so a model that made the right calls and then kept calling read-only tools passed where BFCL force-terminates it;
    and a model making calls in exactly 20 answers was cut before the 21st answer BFCL still asks for."""
    reference = _padded(task, _step_limit() + extra)
    result = BFCLSuite("multi_turn_base").run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
    assert (result.success, result.error_type) == _bfcl_verdict(task, reference)
    if extra:
        assert result.error_type == "multi_turn:force_terminated"
        assert "turn 1" in result.reason and str(_step_limit()) in result.reason, result.reason
        assert len(result.conversation.turns) == 1  # no later turn was run
    else:
        assert result.success


# --- an answer with a call that cannot be read ---------------------------------------------------------------------


def _bfcl_fc_single_turn(category: str, task: EvalTask, message: dict[str, Any]) -> bool:
    """BFCL's runner on one function-calling answer: the FC handlers' ``decode_ast`` (``json.loads`` of each call's
    arguments: one failure fails the whole answer), then ``_evaluate_single_relevance_entry``'s rule or
    ``_evaluate_single_ast_entry``'s format check and ``ast_checker``."""
    from ee_middleware.evals.bfcl.official import ast_checker_module
    from ee_middleware.evals.bfcl.suite import AST_CATEGORIES

    utils = import_bfcl("utils")
    try:
        decoded = [{c["function"]["name"]: json.loads(c["function"]["arguments"])} for c in message.get("tool_calls") or []]
    except ValueError:
        decoded = None
    if "relevance" in category:
        called = decoded is not None and not utils.is_empty_output(decoded)
        return not called if "irrelevance" in category else called
    if decoded is None or not utils.is_function_calling_format_output(decoded):
        return False
    language = import_bfcl("constants.enums").Language.PYTHON
    checked = ast_checker_module().ast_checker(
        task.payload["functions"], decoded, task.payload["possible_answer"], language, AST_CATEGORIES[category], "ee_eval_model"
    )
    return bool(checked["valid"])


UNREADABLE = [("cut short", '{"a": 1,'), ("not an object", "[1, 2]")]


@pytest.mark.parametrize("category", ["simple", "parallel", "irrelevance", "live_relevance"])
@pytest.mark.parametrize(("kind", "arguments"), UNREADABLE, ids=[k for k, _ in UNREADABLE])
def test_an_answer_with_one_unreadable_call_is_scored_as_bfcl_decodes_it_as_a_whole(category: str, kind: str, arguments: str) -> None:
    """BFCL decodes an answer as a whole: one call whose arguments are not a JSON object fails the decoding, so the
    answer has no call. Before: the other calls were kept and scored, so a right call beside an unreadable one passed
    bfcl:simple, bfcl:parallel and bfcl:live_relevance (BFCL: a decoder failure, no call) and failed bfcl:irrelevance
    (BFCL: no call, a pass)."""
    suite = BFCLSuite(category)
    for task in suite.tasks()[:5]:
        calls = list(task.reference[0][0].get("tool_calls") or [])
        name = task.tools[0][0]["function"]["name"]
        calls = calls or [_call(name, {}, "ok")]  # relevance categories: a readable call first
        bad = {"id": "bad", "type": "function", "function": {"name": name, "arguments": arguments}}
        message = _answer(*calls, bad)
        ours = suite.run(OracleClient(), replace(task, reference=[[message]]), 0, LoopConfig())
        assert ours.success == _bfcl_fc_single_turn(category, task, message), (task.id, ours.reason)
        if not ours.success:  # the reason a user reads names the unreadable call
            assert "could not be read" in result_row(ours, "m")["reason"] and "arguments" in result_row(ours, "m")["reason"]


@pytest.mark.parametrize("arguments", ['{"a": ', "", "null", '"{}"'], ids=["cut short", "empty text", "null", "encoded twice"])
def test_a_multi_turn_step_with_one_unreadable_call_runs_none_of_its_calls_as_bfcl(task: EvalTask, arguments: str) -> None:
    """BFCL's multi-turn runner ends a turn at an answer it cannot decode (``json.loads`` of each call's arguments, which
    must give an object), running none of its calls, and its checker skips that answer. Before: turn 0's right calls
    beside an unreadable one were run and scored: the entry passed (and '', 'null' or a text encoded twice were read as
    arguments, {}, so the call was run too)."""
    reference = [[_answer(*task.reference[0][0]["tool_calls"], _call("ls", {}, "bad"))], *task.reference[1:]]
    reference[0][0]["tool_calls"][-1]["function"]["arguments"] = arguments
    ours = BFCLSuite("multi_turn_base").run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
    official = _official_multi_turn(task, [[], *reference[1:]])  # BFCL: the undecodable step is no step
    assert (ours.success, ours.error_type) == (official["valid"], official.get("error_type"))
    assert not ours.success
    assert ours.conversation.calls == [c for turn in ours.conversation.turns[1:] for s in turn.steps for c in s.calls]
