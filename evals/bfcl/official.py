"""BFCL's official checkers, used as a library.

* ``multi_turn_checker`` caches the backend instances it builds in its module's globals, keyed by
  model name and entry id: every check here gets a model name of its own (so no check sees another
  one's instances) and the instances are dropped afterwards (so memory stays flat over 800 entries).
* ``ast_checker`` imports ``bfcl_eval.constants.model_config``, which imports every provider SDK
  (none installed here). It is loaded under a private module name with a small stand-in for that
  one module, present only while the checker module executes. The stand-in answers every model
  name with ``underscore_to_dot=True``: tools are offered with ``.`` in names replaced by ``_``
  (OpenAI's name rule), as BFCL does for function-calling models, and the checker compares names
  the same way.
"""

from __future__ import annotations

import importlib.util
import itertools
import keyword
import os
import re
import sys
import threading
import types
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ee_middleware.bfcl._package import import_bfcl, package_dir

_COUNTER = itertools.count()
_LOCK = threading.Lock()
_AST_MODULE: types.ModuleType | None = None


def unique_model_name(prefix: str = "ee_eval") -> str:
    """A model name no other check in this process uses."""
    return f"{prefix}_{os.getpid()}_{next(_COUNTER)}"


def call_string(name: str, arguments: Mapping[str, Any]) -> str:
    """A call as the official checker reads it: ``name(a=1, b='x')`` (Python literals, as BFCL decodes FC output)."""
    return f"{name}({','.join(f'{key}={value!r}' for key, value in arguments.items())})"


NOT_A_TOOL = "ee_not_a_backend_tool()"
"""What a model's call that the backends cannot run is handed to the checker as: a name nothing defines."""


def model_call_string(name: str, arguments: Mapping[str, Any], tools: Collection[str]) -> str:
    """A model's call as the multi-turn checker may run it: :func:`call_string` when ``name`` is one of ``tools`` (the
    backends' public methods) and every argument name is a Python identifier, else :data:`NOT_A_TOOL`.

    ``multi_turn_checker`` runs each call string with ``eval``, so a name or an argument name taken as the model sent it
    would run whatever Python it holds (``__import__('os').system(...)``, ``open``). A call the backends cannot run
    fails there either way (an execution error, the state untouched, an output matching nothing), which
    :data:`NOT_A_TOOL` gives without running the model's text. Argument values are ``repr`` of parsed data: literals.
    """
    if name not in tools or not all(isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key) for key in arguments):
        return NOT_A_TOOL
    return call_string(name, arguments)


def multi_turn_check(decoded: list[list[list[str]]], ground_truth: list[list[str]], entry: dict[str, Any]) -> dict[str, Any]:
    """The official multi-turn verdict for one entry: ``{"valid": bool, "error_type", "error_message", ...}``.

    ``decoded`` is the model's calls per turn, per step, as call strings; ``entry`` the BFCL entry
    (``id``, ``initial_config``, ``involved_classes``). Mirrors BFCL's runner: a result with the
    wrong number of turns is a ``multi_turn:force_terminated`` failure.
    """
    if len(decoded) != len(ground_truth):
        return {
            "valid": False,
            "error_type": "multi_turn:force_terminated",
            "error_message": f"The model result has {len(decoded)} turns, the ground truth {len(ground_truth)}.",
        }
    checker = import_bfcl("eval_checker.multi_turn_eval.multi_turn_checker")
    utils = import_bfcl("eval_checker.multi_turn_eval.multi_turn_utils")
    name = unique_model_name()
    category = entry["id"].rsplit("_", 1)[0]
    steps = [[step for step in turn if step] for turn in decoded]  # BFCL's runner drops empty steps
    try:
        return checker.multi_turn_checker(steps, ground_truth, entry, category, name)
    finally:
        prefix = re.sub(r"[-./:]", "_", name)
        for key in [k for k in vars(utils) if k.startswith(prefix)]:
            del vars(utils)[key]


class _AnyModelConfig(dict):
    """``MODEL_CONFIG_MAPPING`` stand-in: every model name maps to a function-calling model config."""

    def __missing__(self, key: str) -> Any:
        return types.SimpleNamespace(underscore_to_dot=True, is_fc_model=True, model_name=key)


def ast_checker_module() -> types.ModuleType:
    """BFCL's ``ast_checker`` module, loaded once with the model-config stand-in (see the module docstring)."""
    global _AST_MODULE
    with _LOCK:
        if _AST_MODULE is None:
            import_bfcl("constants.enums")  # sets BFCL_PROJECT_ROOT before anything else of bfcl_eval loads
            path = package_dir() / "eval_checker" / "ast_eval" / "ast_checker.py"
            spec = importlib.util.spec_from_file_location("ee_middleware_bfcl_ast_checker", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            stand_in = types.ModuleType("bfcl_eval.constants.model_config")
            stand_in.MODEL_CONFIG_MAPPING = _AnyModelConfig()  # type: ignore[attr-defined]
            key = "bfcl_eval.constants.model_config"
            previous = sys.modules.get(key)
            sys.modules[key] = stand_in
            try:
                spec.loader.exec_module(module)
            finally:
                if previous is None:
                    sys.modules.pop(key, None)
                else:
                    sys.modules[key] = previous
            _AST_MODULE = module
        return _AST_MODULE


def ast_check(
    functions: list[dict[str, Any]],
    output: list[dict[str, Any]],
    possible_answer: list[dict[str, Any]],
    category: str,
    language: Any = None,
) -> dict[str, Any]:
    """The official single-turn AST verdict: ``output`` is ``[{name: {param: value}}]`` (names with ``_`` for ``.``; ``[]``
    for an answer whose ``tool_calls`` were empty, which the checker fails as BFCL's runner does, e.g. ``wrong_count``);
    ``language``: the ``Language`` the answers are in (default Python; see :mod:`~ee_middleware.evals.bfcl.languages`)."""
    module = ast_checker_module()
    language = language if language is not None else import_bfcl("constants.enums").Language.PYTHON
    return module.ast_checker(functions, output, possible_answer, language, category, "ee_eval_model")


@dataclass(frozen=True)
class Verdict:
    """A checker's answer, reduced to what a result row stores."""

    valid: bool
    error_type: str | None = None
    message: str | None = None

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> Verdict:
        if result.get("valid"):
            return cls(True)
        message = result.get("error_message") or result.get("error")
        if isinstance(message, list):
            message = "; ".join(str(m) for m in message[:3])
        return cls(False, str(result.get("error_type") or "unknown"), str(message) if message else None)
