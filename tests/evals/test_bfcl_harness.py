"""The BFCL harness on the real bfcl-eval data, backends and official checkers."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.bfcl._package import import_bfcl
from ee_middleware.cli.app import app
from ee_middleware.evals.bfcl.languages import checker_language
from ee_middleware.evals.bfcl.official import ast_check, call_string, unique_model_name
from ee_middleware.evals.bfcl.suite import AST_CATEGORIES, CATEGORIES, BFCLSuite
from ee_middleware.evals.clients import NoopClient, OracleClient
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.tasks import EvalTask

SAMPLE = 12
UNSOLVABLE = {  # bfcl-eval 2026.3.23 entries its own ast_checker rejects whatever the answer
    "live_simple": {
        "live_simple_106-63-0": "simple_function_checker:missing_required",  # a required parameter with no accepted value
        "live_simple_112-68-0": "simple_function_checker:missing_required",
    },
    "live_multiple": {
        "live_multiple_862-181-3": "simple_function_checker:missing_optional",  # the answer names a parameter the function lacks
        "live_multiple_964-207-0": "simple_function_checker:missing_required",  # the answer names another parameter
    },
    "simple_java": {
        "simple_java_36": "value_error:list/tuple",  # an ArrayList of 'any' items: each converts to a string, the answer holds 42 and True
        "simple_java_64": "value_error:dict_value",  # the answer's map value is a bare string, so its letters are the accepted values
        "simple_java_65": "value_error:list/tuple",  # as simple_java_36
    },
}


@pytest.mark.parametrize("category", CATEGORIES)
def test_oracle_scores_every_sampled_task_and_noop_scores_none_where_calls_are_required(category: str) -> None:
    suite = BFCLSuite(category)
    tasks = suite.tasks()[:SAMPLE]
    oracle = [suite.run(OracleClient(), t, 0, LoopConfig()) for t in tasks]
    assert [(r.task_id, r.reason) for r in oracle if not r.success] == []
    noop = [suite.run(NoopClient(), t, 0, LoopConfig()) for t in tasks]
    if "irrelevance" in category:
        assert all(r.success for r in noop)
    else:
        assert not any(r.success for r in noop)
        assert all(r.reason for r in noop)


@pytest.mark.slow
@pytest.mark.parametrize("category", CATEGORIES)
def test_oracle_scores_every_task_of_the_category(category: str) -> None:
    suite = BFCLSuite(category)
    failed = {t.id: r.error_type for t in suite.tasks() if not (r := suite.run(OracleClient(), t, 0, LoopConfig())).success}
    assert failed == UNSOLVABLE.get(category, {})


@pytest.mark.parametrize("category", [c for c in UNSOLVABLE if c.startswith("live_")])
def test_the_entries_no_answer_passes_are_rejected_by_the_official_checker_for_every_accepted_value(category: str) -> None:
    suite = BFCLSuite(category)
    for task in [t for t in suite.tasks() if t.id in UNSOLVABLE[category]]:
        (answer,) = task.payload["possible_answer"]
        ((name, params),) = answer.items()
        every = {key: values[0] if values else [] for key, values in params.items()}  # each parameter the answer names, declared or not
        official = ast_check(task.payload["functions"], [{name: every}], task.payload["possible_answer"], category)
        assert not official["valid"], task.id


# --- perturbed answers: the harness's verdict, end to end, against the official checker called directly


def _calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    return message.get("tool_calls") or []


def _args(call: dict[str, Any]) -> dict[str, Any]:
    return json.loads(call["function"]["arguments"])


def _set_args(call: dict[str, Any], arguments: dict[str, Any]) -> None:
    call["function"]["arguments"] = json.dumps(arguments)


def _wrong_argument(reference: list[list[dict[str, Any]]], rng: random.Random) -> bool:
    candidates = [
        (c, k) for turn in reference for m in turn for c in _calls(m) for k, v in _args(c).items() if isinstance(v, (str, int, float))
    ]
    if not candidates:
        return False
    call, key = rng.choice(candidates)
    arguments = _args(call)
    value = arguments[key]
    arguments[key] = value + "_x" if isinstance(value, str) else value + 7
    _set_args(call, arguments)
    return True


def _missing_call(reference: list[list[dict[str, Any]]], rng: random.Random) -> bool:
    turns = [m for turn in reference for m in turn if _calls(m)]
    if not turns:
        return False
    message = rng.choice(turns)
    del message["tool_calls"][rng.randrange(len(message["tool_calls"]))]
    return True


EXTRA_CALLS = {  # a state-changing call per backend, with arguments every scenario accepts
    "GorillaFileSystem": ("touch", {"file_name": "ee_extra_file.txt"}),
    "TwitterAPI": ("post_tweet", {"content": "ee extra tweet"}),
    "MessageAPI": ("add_contact", {"user_name": "ee_extra_contact"}),
    "TicketAPI": ("create_ticket", {"title": "ee extra ticket", "description": "extra"}),
    "VehicleControlAPI": ("lockDoors", {"unlock": False, "door": ["driver"]}),
    "TradingBot": ("add_to_watchlist", {"stock": "EEXT"}),
    "TravelAPI": ("set_budget_limit", {"access_token": "ee", "budget_limit": 1.0}),
}


def _extra_call(task: EvalTask, reference: list[list[dict[str, Any]]], rng: random.Random) -> bool:
    classes = [c for c in task.payload["entry"]["involved_classes"] if c in EXTRA_CALLS]
    turns = [m for turn in reference for m in turn if _calls(m)]
    if not classes or not turns:
        return False
    name, arguments = EXTRA_CALLS[rng.choice(classes)]
    message = rng.choice(turns)
    message["tool_calls"].append({"id": "extra", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}})
    return True


def _official_multi_turn(task: EvalTask, reference: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """BFCL's runner path: each turn's model steps as call strings, straight into multi_turn_checker."""
    checker = import_bfcl("eval_checker.multi_turn_eval.multi_turn_checker")
    decoded = [[[call_string(c["function"]["name"], _args(c)) for c in _calls(m)] for m in turn if _calls(m)] for turn in reference]
    return checker.multi_turn_checker(
        decoded, task.payload["ground_truth"], copy.deepcopy(task.payload["entry"]), task.category, unique_model_name("official")
    )


PERTURBATIONS = ("wrong_argument", "missing_call", "extra_call")


def test_perturbed_multi_turn_answers_agree_with_the_official_checker_and_fail_with_the_right_reason() -> None:
    rng = random.Random(13)
    suite = BFCLSuite("multi_turn_base")
    compared = 0
    reasons: dict[str, set[str]] = {p: set() for p in PERTURBATIONS}
    for task in suite.tasks()[:80]:
        for kind in PERTURBATIONS:
            reference = copy.deepcopy(task.reference)
            if kind == "extra_call":
                changed = _extra_call(task, reference, rng)
            else:
                changed = (_wrong_argument if kind == "wrong_argument" else _missing_call)(reference, rng)
            if not changed:
                continue
            ours = suite.run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
            official = _official_multi_turn(task, reference)
            assert ours.success == official["valid"], (task.id, kind, ours.reason, official)
            if not ours.success:
                assert ours.error_type == official["error_type"]
                reasons[kind].add(ours.error_type)
            compared += 1
    assert compared >= 200
    state_or_output = {
        "multi_turn:instance_state_mismatch",
        "multi_turn:execution_response_mismatch",
        "multi_turn:empty_turn_model_response",
    }
    assert reasons["extra_call"] == {"multi_turn:instance_state_mismatch"}
    assert reasons["missing_call"] and reasons["missing_call"] <= state_or_output
    assert reasons["wrong_argument"] and reasons["wrong_argument"] <= state_or_output


@pytest.mark.parametrize("category", [c for c in AST_CATEGORIES if "relevance" not in c])
def test_perturbed_single_turn_answers_agree_with_the_official_ast_checker(category: str) -> None:
    rng = random.Random(7)
    suite = BFCLSuite(category)
    compared = failed = 0
    tasks = suite.tasks()[:60]
    for task in tasks:
        reference = copy.deepcopy(task.reference)
        if not _wrong_argument(reference, rng):
            continue
        ours = suite.run(OracleClient(), replace(task, reference=reference), 0, LoopConfig())
        output = [{c["function"]["name"]: _args(c)} for c in _calls(reference[0][0])]
        official = ast_check(
            task.payload["functions"], output, task.payload["possible_answer"], AST_CATEGORIES[category], checker_language(category)
        )
        assert ours.success == official["valid"], (task.id, ours.reason, official)
        failed += not ours.success
        compared += 1
    assert compared >= min(40, len(tasks) * 0.6) and failed >= compared * 0.8


def test_a_call_where_no_function_fits_fails_irrelevance_with_its_reason() -> None:
    suite = BFCLSuite("irrelevance")
    task = suite.tasks()[0]
    name = task.tools[0][0]["function"]["name"]
    call = {"id": "c", "type": "function", "function": {"name": name, "arguments": "{}"}}
    result = suite.run(
        OracleClient(), replace(task, reference=[[{"role": "assistant", "content": "", "tool_calls": [call]}]]), 0, LoopConfig()
    )
    assert not result.success and result.error_type == "irrelevance_error:decoder_success" and name in result.reason


@pytest.mark.parametrize("category", ["irrelevance", "live_irrelevance", "live_relevance"])
def test_relevance_categories_score_whether_a_call_was_made_as_bfcl_does(category: str) -> None:
    suite = BFCLSuite(category)
    task = suite.tasks()[0]
    name = task.tools[0][0]["function"]["name"]
    call = {"id": "c", "type": "function", "function": {"name": name, "arguments": "{}"}}
    with_call = suite.run(
        OracleClient(), replace(task, reference=[[{"role": "assistant", "content": "", "tool_calls": [call]}]]), 0, LoopConfig()
    )
    without = suite.run(NoopClient(), task, 0, LoopConfig())
    if category == "live_relevance":  # a call is wanted; BFCL checks no argument
        assert with_call.success and not without.success and without.error_type == "relevance_error:decoder_failed"
    else:
        assert without.success and not with_call.success and with_call.error_type == "irrelevance_error:decoder_success"


def test_live_categories_read_bfcl_s_live_files_and_score_with_their_own_category() -> None:
    sizes = {c: len(BFCLSuite(c).tasks()) for c in AST_CATEGORIES if c.startswith("live_")}
    assert sizes == {
        "live_simple": 258,
        "live_multiple": 1053,
        "live_parallel": 16,
        "live_parallel_multiple": 24,
        "live_irrelevance": 884,
        "live_relevance": 16,
    }
    task = BFCLSuite("live_parallel").tasks()[0]
    assert task.id.startswith("live_parallel_") and len(task.reference[0][0]["tool_calls"]) > 1


def test_an_unknown_category_is_refused_with_the_known_ones() -> None:
    from ee_middleware.errors import ConfigError

    with pytest.raises(ConfigError, match="multi_turn_base") as refused:
        BFCLSuite("multi_turn_nope")
    assert "live_relevance" in str(refused.value) and "simple_java" in str(refused.value)


@pytest.mark.parametrize("category", ["memory", "web_search", "format_sensitivity"])
def test_a_category_this_harness_does_not_run_says_what_it_is_and_what_to_run_instead(category: str) -> None:
    """Before: 'Unknown BFCL category 'memory' (agentic entries, which this harness does not run)', nothing on what to do."""
    from ee_middleware.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"'{category}'.*not run by this harness \(.*entries: .*bfcl generate.*bfcl evaluate.*simple,"):
        BFCLSuite(category)


def test_bfcl_eval_s_own_names_of_the_categories_not_run_here_get_the_same_message(tmp_path: Path) -> None:
    """``bfcl generate --test-category`` takes memory_kv, web_search_base, ... (bfcl-eval's own category list). Before:
    'Unknown BFCL category 'memory_kv'', as if misspelled, where the README promises 'not run, use bfcl-eval's runner'."""
    from ee_middleware.errors import ConfigError

    mapping = import_bfcl("constants.category_mapping")
    names = [*mapping.MEMORY_CATEGORY, *mapping.WEB_SEARCH_CATEGORY, *mapping.NON_SCORING_CATEGORY, "agentic"]
    assert {"memory_kv", "memory_vector", "web_search_base", "web_search_no_snippet", "format_sensitivity"} <= set(names)
    for category in names:
        with pytest.raises(ConfigError, match=rf"'{category}'.*not run by this harness \(.*entries: .*bfcl generate.*bfcl evaluate"):
            BFCLSuite(category)
    out = tmp_path / "run"
    refused = CliRunner().invoke(app, ["eval", "run", "--suite", "bfcl:memory_kv", "--model-spec", "oracle", "--out", str(out)])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "'memory_kv'" in text and "BFCL's memory backends" in text, refused.output
    assert not out.exists()


def test_java_and_javascript_are_offered_as_bfcl_offers_them_and_checked_in_their_language() -> None:
    """simple_java and simple_javascript (before: refused as not run). BFCL offers every parameter as a string whose
    description says which Java/JavaScript type to write, and its checker converts the text back by the category's
    language: source text passes, a JSON value where the text belongs fails as BFCL's checker fails it."""
    java = BFCLSuite("simple_java")
    task = java.tasks()[1]  # SQLCompletionAnalyzer.makeProposalsFromObject(object: any, useShortName: boolean, params: HashMap)
    properties = task.tools[0][0]["function"]["parameters"]["properties"]
    assert {p["type"] for p in properties.values()} == {"string"}
    assert "Java boolean type parameter in string representation" in properties["useShortName"]["description"]
    assert "Java 8 SDK syntax" in task.tools[0][0]["function"]["description"]
    assert task.payload["functions"][0]["parameters"]["properties"]["useShortName"]["type"] == "boolean"  # the checker's types
    [call] = task.reference[0][0]["tool_calls"]
    sent = _args(call)
    assert sent["useShortName"] == "true" and sent["params"].startswith("new HashMap<")
    assert java.run(OracleClient(), task, 0, LoopConfig()).success
    _set_args(call, {**sent, "useShortName": True})  # a JSON boolean, not Java source text
    result = java.run(
        OracleClient(), replace(task, reference=[[{"role": "assistant", "content": "", "tool_calls": [call]}]]), 0, LoopConfig()
    )
    official = ast_check(
        task.payload["functions"],
        [{call["function"]["name"]: _args(call)}],
        task.payload["possible_answer"],
        "simple_java",
        checker_language("simple_java"),
    )
    assert (result.success, result.error_type) == (official["valid"], official["error_type"]) == (False, "type_error:java")
    javascript = BFCLSuite("simple_javascript")
    assert all(javascript.run(OracleClient(), t, 0, LoopConfig()).success for t in javascript.tasks()[:12])


def test_the_oracle_answers_the_task_s_turn_when_a_turn_holds_earlier_assistant_messages() -> None:
    """Eight live_irrelevance entries give a chat history in their one turn (user, user, assistant, user). Before: the
    oracle counted each user message after an assistant one as a new turn, answered 'Done.' past its reference, and
    so scored 100% there whatever the reference held: a call where no function fits passed."""
    suite = BFCLSuite("live_irrelevance")
    tasks = [t for t in suite.tasks() if any(m["role"] == "assistant" for turn in t.turns for m in turn)]
    assert len(tasks) == 8
    for task in tasks:
        name = task.tools[0][0]["function"]["name"] if task.tools[0] else "some_function"
        call = {"id": "c", "type": "function", "function": {"name": name, "arguments": "{}"}}
        calling = replace(task, reference=[[{"role": "assistant", "content": "", "tool_calls": [call]}]])
        result = suite.run(OracleClient(), calling, 0, LoopConfig())
        assert (result.success, result.error_type) == (False, "irrelevance_error:decoder_success"), task.id
        assert suite.run(OracleClient(), task, 0, LoopConfig()).success
