"""bfcl-eval's own verdict on one function-calling answer, from the installed package's code.

BFCL's runner scores an OpenAI-compatible function-calling model's answer with ``OpenAICompletionsHandler``'s
``_parse_query_response_FC`` (the answer's ``tool_calls`` as ``[{name: arguments text}]``, else its ``content``) and
``decode_ast`` (``json.loads`` of each call's arguments), then ``eval_runner``'s ``_evaluate_single_ast_entry`` or
``_evaluate_single_relevance_entry``. Their modules import the provider SDKs (``openai``, ...), which are not installed
here, so these four functions are compiled from the installed source files alone (not copied): a new bfcl-eval changes
the reference with it.

A text-only model (ee's ``local:`` models) is read as bfcl-eval's handlers for local function-calling models read one
(:func:`local_fc_verdict`, :func:`local_fc_multi_turn_verdict`): ``QwenFCHandler``'s or ``PhiFCHandler``'s
``_parse_query_response_prompting``, ``decode_ast`` and ``decode_execute``, compiled the same way (their modules need
``tree_sitter`` and ``overrides``), with the multi-turn runner's rule (``inference_multi_turn_prompting``: a turn ends at
an answer that does not decode to calls) and ``_evaluate_single_multi_turn_entry``.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import types
from functools import cache
from typing import Any

from ee_middleware.bfcl._package import import_bfcl, package_dir
from ee_middleware.evals.bfcl.languages import checker_language
from ee_middleware.evals.bfcl.official import ast_checker_module, unique_model_name
from ee_middleware.evals.bfcl.suite import AST_CATEGORIES
from ee_middleware.evals.tasks import EvalTask


def _compiled(relative: str, names: tuple[str, ...], namespace: dict[str, Any]) -> dict[str, Any]:
    """The functions ``names`` (methods included) of the installed ``bfcl_eval/<relative>``, defined in ``namespace``."""
    path = package_dir() / relative
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in names:
            exec(
                compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace
            )  # bfcl-eval's own code, from its installed file
            found[node.name] = namespace[node.name]
    assert set(found) == set(names), f"{path} lacks {set(names) - set(found)}: bfcl-eval changed"
    return found


@cache
def _functions() -> dict[str, Any]:
    utils = import_bfcl("utils")
    enums = import_bfcl("constants.enums")
    namespace: dict[str, Any] = {
        "json": json,
        "Any": Any,
        "BaseHandler": object,
        "Language": enums.Language,
        "ReturnFormat": enums.ReturnFormat,
        "ast_checker": ast_checker_module().ast_checker,
        "is_function_calling_format_output": utils.is_function_calling_format_output,
        "is_empty_output": utils.is_empty_output,
    }
    handler = "model_handler/api_inference/openai_completion.py"
    runner = "eval_checker/eval_runner.py"
    return {
        **_compiled(handler, ("decode_ast", "_parse_query_response_FC"), namespace),
        **_compiled(runner, ("_evaluate_single_ast_entry", "_evaluate_single_relevance_entry"), namespace),
    }


def _api_response(message: dict[str, Any]) -> Any:
    """An OpenAI SDK response holding ``message`` (attributes as the SDK gives them: ``tool_calls`` None when absent)."""
    calls = message.get("tool_calls")
    tool_calls = None
    if calls is not None:
        tool_calls = [
            types.SimpleNamespace(
                id=c.get("id"), function=types.SimpleNamespace(name=c["function"]["name"], arguments=c["function"]["arguments"])
            )
            for c in calls
        ]
    answer = types.SimpleNamespace(content=message.get("content"), tool_calls=tool_calls)
    usage = types.SimpleNamespace(prompt_tokens=0, completion_tokens=0)
    return types.SimpleNamespace(choices=[types.SimpleNamespace(message=answer)], usage=usage)


def bfcl_verdict(task: EvalTask, message: dict[str, Any]) -> tuple[bool, str | None]:
    """bfcl-eval's ``(valid, error_type)`` for ``message`` as a function-calling model's answer to a single-turn ``task``."""
    functions = _functions()
    handler = types.SimpleNamespace(is_fc_model=True)
    handler.decode_ast = lambda result, language, has_tool_call_tag: functions["decode_ast"](handler, result, language, has_tool_call_tag)
    result = functions["_parse_query_response_FC"](handler, _api_response(message))["model_responses"]
    return _entry_verdict(handler, task, result)


def _entry_verdict(handler: Any, task: EvalTask, result: Any) -> tuple[bool, str | None]:
    """``eval_runner``'s verdict on ``result`` (what ``handler``'s response parser gave) for a single-turn ``task``."""
    functions = _functions()
    category = AST_CATEGORIES[task.category]
    question = {"id": task.id, "function": task.payload["functions"]}
    if "relevance" in category:
        verdict = functions["_evaluate_single_relevance_entry"](handler, task.id, result, question, "ee_reference", category)
    else:
        enums = import_bfcl("constants.enums")
        language = checker_language(category) or enums.Language.PYTHON
        verdict = functions["_evaluate_single_ast_entry"](
            handler,
            task.id,
            result,
            task.payload["possible_answer"],
            question,
            "ee_reference",
            category,
            language,
            enums.ReturnFormat.PYTHON,
        )
    return bool(verdict["valid"]), verdict.get("error_type")


LOCAL_HANDLERS = {"qwen": "qwen_fc.py", "phi": "phi_fc.py"}
"""bfcl-eval's handlers for local function-calling models whose text reading ee matches (model_handler/local_inference)."""


@cache
def _local_handler(family: str) -> Any:
    """bfcl-eval's ``QwenFCHandler`` or ``PhiFCHandler`` (``family``), its text-reading methods compiled from the source."""
    identity = lambda function: function  # noqa: E731  (the methods' @override and @staticmethod)
    namespace: dict[str, Any] = {"json": json, "re": re, "Any": Any, "override": identity, "staticmethod": identity}
    _compiled("model_handler/utils.py", ("convert_to_function_call",), namespace)
    names = ("_parse_query_response_prompting", "_extract_tool_calls", "decode_ast", "decode_execute")
    if family == "phi":
        names += ("_is_tool_call_response_format",)
    functions = _compiled(f"model_handler/local_inference/{LOCAL_HANDLERS[family]}", names, namespace)
    handler = types.SimpleNamespace(convert_to_function_call=namespace["convert_to_function_call"])
    for name, function in functions.items():
        static = "self" not in function.__code__.co_varnames[: function.__code__.co_argcount]
        setattr(handler, name, function if static else types.MethodType(function, handler))
    return handler


def _model_responses(handler: Any, text: str) -> Any:
    """What ``handler``'s ``_parse_query_response_prompting`` hands its decoders for a completion ``text``."""
    usage = types.SimpleNamespace(prompt_tokens=0, completion_tokens=0)
    response = types.SimpleNamespace(choices=[types.SimpleNamespace(text=text)], usage=usage)
    return handler._parse_query_response_prompting(response)["model_responses"]


def local_fc_calls(text: str, family: str = "qwen", *, executed: bool = True) -> list[str] | None:
    """The calls bfcl-eval's local ``family`` handler reads in a completion ``text``, as call strings: ``decode_execute``'s
    where they are ``executed`` (multi-turn), else ``decode_ast``'s (categories scored on the calls alone); None where
    decoding fails (the multi-turn runner then ends the turn, the AST scorer fails the answer)."""
    handler = _local_handler(family)
    result = _model_responses(handler, text)
    try:
        if executed:
            return list(handler.decode_execute(result, has_tool_call_tag=False))
        return list(handler.convert_to_function_call(handler.decode_ast(result, None, False)))
    except Exception:  # bfcl-eval's runner catches every decoding error alike
        return None


def local_fc_verdict(task: EvalTask, text: str, family: str = "qwen") -> tuple[bool, str | None]:
    """bfcl-eval's ``(valid, error_type)`` for ``text`` as a local ``family`` model's answer to a single-turn ``task``."""
    handler = _local_handler(family)
    return _entry_verdict(handler, task, _model_responses(handler, text))


def local_fc_multi_turn_verdict(task: EvalTask, answers: list[list[str]], family: str = "qwen") -> tuple[bool, str | None]:
    """bfcl-eval's ``(valid, error_type)`` for a local ``family`` model answering a multi-turn ``task`` with ``answers``
    (per user turn, the completions in order): its runner ends a turn at the first answer that decodes to no call or
    fails to decode (the rest of that turn's answers are never asked for), and its scorer hands the checker the calls of
    the answers that decode."""
    utils = import_bfcl("eval_checker.multi_turn_eval.multi_turn_utils")
    checker = import_bfcl("eval_checker.multi_turn_eval.multi_turn_checker")
    decoded: list[list[list[str]]] = []
    for turn in answers:
        steps = []
        for text in turn:
            calls = local_fc_calls(text, family)
            if calls is None or utils.is_empty_execute_response(calls):
                break
            steps.append(calls)
        decoded.append(steps)
    ground_truth = task.payload["ground_truth"]
    if len(decoded) != len(ground_truth):
        return False, "multi_turn:force_terminated"
    entry = copy.deepcopy(task.payload["entry"])
    result = checker.multi_turn_checker(decoded, ground_truth, entry, task.category, unique_model_name("ee_reference"))
    return bool(result["valid"]), result.get("error_type")
