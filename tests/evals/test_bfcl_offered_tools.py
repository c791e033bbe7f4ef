"""The BFCL harness offers the tools BFCL's own pipeline offers an OpenAI-compatible function-calling model, and sends
tool results back as its runner does.

The reference is bfcl-eval's own code: ``load_dataset_entry`` (the entries as its generation step reads them: language
notes added, held-out functions taken out) and ``model_handler.utils.convert_to_tool`` with ``GORILLA_TO_OPENAPI`` and
``ModelStyle.OPENAI_COMPLETIONS`` (what ``OpenAICompletionsHandler._compile_tools`` calls), and for multi-turn entries its
``inference_multi_turn_FC`` step of extending the functions with a turn's held-out ones before compiling the tools again.
``model_handler.utils`` imports BFCL's Java/JavaScript output parsers, which need ``tree_sitter`` (not installed here,
and not used by ``convert_to_tool``): the module is loaded with stand-ins for those three imports only, hence the
``with_parser_stand_ins`` in the loader's name. Tools are compared as JSON text, key order included: a chat template
writes them into the prompt as JSON.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import types
from functools import cache
from typing import Any
from unittest import mock

import pytest

from ee_middleware.bfcl._package import import_bfcl, package_dir
from ee_middleware.bfcl.data import MULTI_TURN_CATEGORIES, load_entries
from ee_middleware.evals.bfcl.suite import AST_CATEGORIES, BFCLSuite, ast_entries, ast_task, multi_turn_task
from ee_middleware.evals.bfcl.tools import FLOAT_NOTE, multi_turn_tools, offered_tools
from ee_middleware.evals.clients import OracleClient
from ee_middleware.evals.loop import LoopConfig

PYTHON_NOTE = " Note that the provided function is in Python 3 syntax."


@cache
def _bfcl_handler_utils_with_parser_stand_ins() -> types.ModuleType:
    """bfcl-eval's ``model_handler/utils.py``, loaded under a private name with ``tree_sitter`` stand-ins (see above)."""
    import_bfcl("constants.enums")  # BFCL_PROJECT_ROOT first
    stand_ins = {name: mock.MagicMock(name=name) for name in ("tree_sitter", "tree_sitter_java", "tree_sitter_javascript")}
    with mock.patch.dict(sys.modules, stand_ins):  # every module imported inside is dropped again on exit
        spec = importlib.util.spec_from_file_location("ee_test_bfcl_handler_utils", package_dir() / "model_handler" / "utils.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def _bfcl_tools(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``OpenAICompletionsHandler._compile_tools`` offers for these function documents."""
    utils = _bfcl_handler_utils_with_parser_stand_ins()
    return utils.convert_to_tool(functions, utils.GORILLA_TO_OPENAPI, utils.ModelStyle.OPENAI_COMPLETIONS)


@cache
def _bfcl_entries(file: str) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in import_bfcl("utils").load_dataset_entry(file)}


def _bfcl_multi_turn_tools(entry: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The tools of each turn as ``inference_multi_turn_FC`` compiles them (held-out functions added at their turn)."""
    entry = copy.deepcopy(entry)
    tools = []
    for turn in range(len(entry["question"])):
        if str(turn) in entry.get("missed_function", {}):
            entry["function"].extend(entry["missed_function"][str(turn)])
        tools.append(_bfcl_tools(entry["function"]))
    return tools


def _as_text(tools: Any) -> str:
    return json.dumps(tools, ensure_ascii=False)


def _single_turn_task(category: str, entry_id: str) -> Any:
    for question, answer in ast_entries(category, None):
        if question["id"] == entry_id:
            return ast_task(question, answer, f"bfcl:{category}", category)
    raise AssertionError(f"no entry {entry_id} in {category}")


@pytest.mark.parametrize(
    ("category", "entry_id"),
    [
        ("simple", "simple_python_0"),
        ("simple", "simple_python_14"),  # a float parameter
        ("simple", "simple_python_109"),  # random_forest.train: a dotted name and a parameter typed any
        ("multiple", "multiple_0"),  # triangle_properties.get, circle_properties.get
        ("parallel_multiple", "parallel_multiple_26"),  # floats in the properties of a list's items
        ("live_simple", "live_simple_117-73-0"),  # any
        ("live_multiple", "live_multiple_44-17-0"),  # floats in nested properties
        ("irrelevance", "irrelevance_0"),
        ("simple_java", "simple_java_1"),
        ("simple_javascript", "simple_javascript_0"),
    ],
)
def test_single_turn_tools_are_the_ones_bfcl_offers_a_function_calling_model(category: str, entry_id: str) -> None:
    """Before: the descriptions lacked BFCL's language note, a float lacked ``format``/its note, ``any`` had no type."""
    task = _single_turn_task(category, entry_id)
    reference = _bfcl_tools(_bfcl_entries(AST_CATEGORIES[category])[entry_id]["function"])
    assert _as_text(task.tools[0]) == _as_text(reference)


def test_the_python_note_float_any_and_dotted_names_are_offered_as_bfcl_offers_them() -> None:
    """What the equality above means on two entries, spelled out."""
    [tool] = _single_turn_task("simple", "simple_python_109").tools[0]
    function = tool["function"]
    assert function["name"] == "random_forest_train"
    assert function["description"].endswith(PYTHON_NOTE)
    assert function["parameters"]["type"] == "object"
    assert function["parameters"]["properties"]["data"] == {"type": "string", "description": "The training data for the model."}
    [tool] = _single_turn_task("simple", "simple_python_14").tools[0]
    x_value = tool["function"]["parameters"]["properties"]["x_value"]
    assert x_value["type"] == "number" and x_value["format"] == "float" and x_value["description"].endswith(FLOAT_NOTE)
    docs = [doc for doc in _bfcl_entries("simple_python")["simple_python_14"]["function"]]
    assert "format" not in docs[0]["parameters"]["properties"]["x_value"]  # BFCL's own documents are left as they are


@pytest.mark.parametrize(
    "entry_id",
    [
        "multi_turn_base_0",  # excluded_function ['cp']: BFCL offers it all the same
        "multi_turn_base_15",  # MathAPI: float parameters
        "multi_turn_miss_func_0",  # 'sort' held out until turn 3, excluded_function ['cp']
        "multi_turn_miss_param_0",
        "multi_turn_long_context_0",
    ],
)
def test_multi_turn_tools_are_the_ones_bfcl_offers_at_each_turn(entry_id: str) -> None:
    """Before: excluded functions were left out, held-out functions came back in their place in the list (BFCL appends
    them), and no description had BFCL's note, the ``response`` schemas or the float notes."""
    category = entry_id.rsplit("_", 1)[0]
    [entry] = load_entries(category, ids=[entry_id])
    task = multi_turn_task(entry, f"bfcl:{category}")
    reference = _bfcl_multi_turn_tools(_bfcl_entries(category)[entry_id])
    assert len(task.tools) == len(reference) == len(entry.turns)
    assert [_as_text(turn) for turn in task.tools] == [_as_text(turn) for turn in reference]


def test_held_out_functions_come_last_without_the_note_and_excluded_ones_are_offered() -> None:
    [entry] = load_entries("multi_turn_miss_func", ids=["multi_turn_miss_func_0"])
    assert entry.missed_functions == {3: ["sort"]} and entry.excluded_functions == ["cp"]
    tools = multi_turn_tools(entry)
    names = [[tool["function"]["name"] for tool in turn] for turn in tools]
    assert "sort" not in names[2] and names[3] == [*names[2], "sort"]
    assert "cp" in names[0]
    assert not tools[3][-1]["function"]["description"].endswith(PYTHON_NOTE)  # BFCL notes the documents before adding it
    assert all(tool["function"]["description"].endswith(PYTHON_NOTE) for tool in tools[3][:-1])
    assert "cp" not in {t["function"]["name"] for t in entry.tools_at_turn(0)}  # the replay side's schemas are unchanged


@pytest.mark.parametrize("category", [*AST_CATEGORIES, *MULTI_TURN_CATEGORIES])
def test_every_entry_of_every_category_is_offered_bfcls_tools(category: str) -> None:
    if category in MULTI_TURN_CATEGORIES:
        bfcl = _bfcl_entries(category)
        for entry in load_entries(category):
            assert [_as_text(t) for t in multi_turn_tools(entry)] == [_as_text(t) for t in _bfcl_multi_turn_tools(bfcl[entry.id])], entry.id
        return
    bfcl = _bfcl_entries(AST_CATEGORIES[category])
    for question, _ in ast_entries(category, None):
        assert _as_text(offered_tools(question["id"], question["function"])) == _as_text(_bfcl_tools(bfcl[question["id"]]["function"])), (
            question["id"]
        )


class _Recording:
    """The oracle client, keeping the messages of every request it answers."""

    def __init__(self) -> None:
        self.requests: list[list[dict[str, Any]]] = []
        self.model = "oracle"

    def for_task(self, task: Any) -> _Recording:
        self._oracle = OracleClient().for_task(task)
        return self

    def complete(self, messages: Any, **kwargs: Any) -> Any:
        self.requests.append(copy.deepcopy(list(messages)))
        return self._oracle.complete(messages, **kwargs)


def test_tool_results_go_back_as_bfcls_function_calling_runner_sends_them() -> None:
    """``OpenAICompletionsHandler._add_execution_results_FC`` sends each result as ``{"role": "tool", "content",
    "tool_call_id"}``; before, the harness added the tool's ``name``, which a chat template may write into the prompt."""
    task = BFCLSuite("multi_turn_base", limit=1).tasks()[0]
    client = _Recording()
    result = BFCLSuite("multi_turn_base").run(client, task, 0, LoopConfig())
    assert result.success
    last = client.requests[-1]
    results = [m for m in last if m["role"] == "tool"]
    assert results and all(set(m) == {"role", "content", "tool_call_id"} for m in results)
    calls = [c["id"] for m in last if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert [m["tool_call_id"] for m in results] == calls
