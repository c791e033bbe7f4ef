"""bfcl-eval's own verdict on one function-calling answer, from the installed package's code.

BFCL's runner scores an OpenAI-compatible function-calling model's answer with ``OpenAICompletionsHandler``'s
``_parse_query_response_FC`` (the answer's ``tool_calls`` as ``[{name: arguments text}]``, else its ``content``) and
``decode_ast`` (``json.loads`` of each call's arguments), then ``eval_runner``'s ``_evaluate_single_ast_entry`` or
``_evaluate_single_relevance_entry``. Their modules import the provider SDKs (``openai``, ...), which are not installed
here, so these four functions are compiled from the installed source files alone (not copied): a new bfcl-eval changes
the reference with it.
"""

from __future__ import annotations

import ast
import json
import types
from functools import cache
from typing import Any

from ee_middleware.bfcl._package import import_bfcl, package_dir
from ee_middleware.evals.bfcl.languages import checker_language
from ee_middleware.evals.bfcl.official import ast_checker_module
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
