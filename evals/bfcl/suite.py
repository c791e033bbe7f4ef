"""The BFCL harness: ``bfcl:CATEGORY[:N]`` on the real ``bfcl-eval`` data, backends and checkers.

* Multi-turn categories (``multi_turn_base``, ``multi_turn_miss_func``, ``multi_turn_miss_param``,
  ``multi_turn_long_context``): the agent runs turn by turn against the real backends (the replay
  sandbox, :class:`ee_middleware.bfcl.sandbox.BFCLSandbox`); its calls are scored by BFCL's own
  ``multi_turn_checker`` (every public attribute of every backend compared with a ground-truth run
  after each turn, and the turn's ground-truth outputs present among the model's). The step limit is
  BFCL's: ``max_steps_per_turn`` (BFCL's ``MAXIMUM_STEP_LIMIT``, 20) is how many answers of a turn may
  make calls; a turn whose model still calls in the answer after those is force-quit, and the entry
  ends there (``multi_turn:force_terminated`` unless it was the last turn, as BFCL's runner scores it).
  A call whose name is not one of the backends' methods, or whose argument names are not Python
  identifiers, reaches the checker (which ``eval``s call strings) as a call of an undefined name. A call's result
  goes back as BFCL's function-calling runner sends it: a ``tool`` message of ``tool_call_id`` and ``content``.
* Single-turn AST categories (``simple``, ``multiple``, ``parallel``, ``parallel_multiple`` and their
  ``live_`` counterparts; ``simple_java`` and ``simple_javascript``, offered and checked as BFCL does, see
  :mod:`~ee_middleware.evals.bfcl.languages`): one model answer, scored by BFCL's ``ast_checker`` with the category's name, as
  BFCL's own runner calls it. In every category an answer is decoded as a whole, as BFCL does: one call
  that cannot be read (arguments cut short, not a JSON object) leaves the answer with no call. ``irrelevance`` and ``live_irrelevance``: right when the answer makes no call;
  ``live_relevance``: right when it makes at least one (BFCL checks no arguments there, and has no ground
  truth, so the oracle calls the first function offered).
* Every category offers the tools BFCL's own pipeline offers a function-calling model (language notes, BFCL's type
  mapping, ``.`` in names as ``_``, multi-turn held-out functions appended at their turn): see
  :mod:`~ee_middleware.evals.bfcl.tools`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import replace
from functools import cache
from typing import Any

from ee_middleware.bfcl.data import ADDITIONAL_FUNCTIONS_PROMPT, MULTI_TURN_CATEGORIES, BFCLEntry, load_entries
from ee_middleware.bfcl.world import build_world, parse_call
from ee_middleware.errors import ConfigError
from ee_middleware.evals.bfcl.languages import LANGUAGES, checker_language, source_text
from ee_middleware.evals.bfcl.official import Verdict, ast_check, model_call_string, multi_turn_check
from ee_middleware.evals.bfcl.tools import multi_turn_tools, offered_tools, tool_name
from ee_middleware.evals.clients import bind
from ee_middleware.evals.loop import LoopConfig, run_conversation
from ee_middleware.evals.tasks import Conversation, EvalTask, TaskResult
from ee_middleware.models.parsing import NOT_AN_OBJECT
from ee_middleware.models.protocol import CUT_WHILE_REASONING, ChatClient

AST_CATEGORIES: dict[str, str] = {
    "simple": "simple_python",
    "multiple": "multiple",
    "parallel": "parallel",
    "parallel_multiple": "parallel_multiple",
    "irrelevance": "irrelevance",
    "live_simple": "live_simple",
    "live_multiple": "live_multiple",
    "live_parallel": "live_parallel",
    "live_parallel_multiple": "live_parallel_multiple",
    "live_irrelevance": "live_irrelevance",
    "live_relevance": "live_relevance",
    "simple_java": "simple_java",
    "simple_javascript": "simple_javascript",
}
"""Single-turn category -> the BFCL data file's name (``BFCL_v4_<name>.json``)."""
CATEGORIES: tuple[str, ...] = (*AST_CATEGORIES, *MULTI_TURN_CATEGORIES)
NOT_RUN_HERE: dict[str, str] = {
    "memory": "agentic entries: the model keeps notes in BFCL's memory backends across prerequisite conversations",
    "web_search": "agentic entries: the model searches the live web (DuckDuckGo) and fetches pages",
    "format_sensitivity": "prompt-format entries: one question under many prompting formats, for prompt-based models",
}
"""BFCL categories whose data ``bfcl-eval`` ships but this harness does not run (and why), by the names of its test
collections; :func:`not_run_here` also knows each category's own name (``memory_kv``, ``web_search_base``, ...)."""
_BFCL_LISTS = {"memory": "MEMORY_CATEGORY", "web_search": "WEB_SEARCH_CATEGORY", "format_sensitivity": "NON_SCORING_CATEGORY"}
"""Each of :data:`NOT_RUN_HERE` -> the list of bfcl-eval's ``constants.category_mapping`` naming its categories."""
BFCL_OWN_RUNNER = (
    "Score it with bfcl-eval's own runner (`bfcl generate` then `bfcl evaluate`, which needs bfcl-eval installed with its "
    "dependencies, in a separate environment)"
)
IRRELEVANCE_ANSWER = "None of the available functions fits this request."


def not_run_here(category: str) -> str | None:
    """Why this harness does not run ``category``, a name bfcl-eval's runner takes (a category of its own category list,
    ``memory_kv``, or a collection of them, ``memory``, ``agentic``); None for any other name."""
    from ee_middleware.bfcl._package import import_bfcl

    if category in NOT_RUN_HERE:
        return NOT_RUN_HERE[category]
    mapping = import_bfcl("constants.category_mapping")
    kinds = {kind: getattr(mapping, names, []) for kind, names in _BFCL_LISTS.items()}
    members = mapping.TEST_COLLECTION_MAPPING.get(category, [category])
    reasons = [next((NOT_RUN_HERE[kind] for kind, names in kinds.items() if member in names), None) for member in members]
    if not reasons or None in reasons:
        return None
    return "; ".join(dict.fromkeys(reason for reason in reasons if reason))


class BFCLSuite:
    """One BFCL category as an eval suite (``limit``: the first N entries, in file order)."""

    def __init__(self, category: str, limit: int | None = None) -> None:
        category = {"simple_python": "simple"}.get(category, category)
        if category not in CATEGORIES and not_run_here(category):
            raise ConfigError(
                f"The BFCL category {category!r} (suite 'bfcl:{category}') is not run by this harness ({not_run_here(category)}). "
                f"{BFCL_OWN_RUNNER}, or choose one of: {', '.join(CATEGORIES)}."
            )
        if category not in CATEGORIES:
            raise ConfigError(f"Unknown BFCL category {category!r} in the suite 'bfcl:{category}'. Choose one of: {', '.join(CATEGORIES)}.")
        self.category = category
        self.limit = limit
        self.name = f"bfcl:{category}"
        self.multi_turn = category in MULTI_TURN_CATEGORIES

    def tasks(self) -> list[EvalTask]:
        if self.multi_turn:
            return [multi_turn_task(entry, self.name) for entry in load_entries(self.category, limit=self.limit)]
        return [ast_task(q, a, self.name, self.category) for q, a in ast_entries(self.category, self.limit)]

    def loop_config(self, base: LoopConfig) -> LoopConfig:
        base = replace(base, whole_answers=True, bfcl_decoding=True)  # answers read as bfcl-eval's FC runner reads them
        if self.multi_turn:  # BFCL force-quits a turn whose model makes calls in more than its limit's answers
            return replace(base, max_steps_per_turn=base.max_steps_per_turn + 1, end_at_max_steps=True, tool_message_names=False)
        return replace(base, execute_tools=False, max_steps_per_turn=1)

    def run(self, client: ChatClient, task: EvalTask, trial: int, config: LoopConfig) -> TaskResult:
        config = self.loop_config(config)
        started = time.perf_counter()
        if self.multi_turn:
            conversation, verdict = _run_multi_turn(client, task, trial, config)
        else:
            conversation = run_conversation(bind(client, task), task, None, config, trial=trial)
            verdict = score_ast(task, conversation)
        return TaskResult(
            suite=self.name,
            category=self.category,
            task_id=task.id,
            trial=trial,
            success=verdict.valid,
            reason=None if verdict.valid else verdict.message or verdict.error_type,
            error_type=verdict.error_type,
            conversation=conversation,
            duration_s=time.perf_counter() - started,
        )


# --- multi-turn ---------------------------------------------------------------------------------


def _user_turn(entry: BFCLEntry, turn: int) -> list[dict[str, Any]]:
    messages = entry.turns[turn]
    if not messages and turn in entry.missed_functions:
        return [{"role": "user", "content": ADDITIONAL_FUNCTIONS_PROMPT}]
    return [dict(m) for m in messages]


def multi_turn_task(entry: BFCLEntry, suite: str) -> EvalTask:
    """A multi-turn entry as a task: user turns, tools per turn, the ground truth as reference answers."""
    world: dict[str, Any] = {}
    reference = []
    for turn, expressions in enumerate(entry.ground_truth):
        calls = []
        for i, expression in enumerate(expressions):
            try:
                call = parse_call(expression, world, call_id=f"call_{turn}_{i}")
            except ValueError:  # positional arguments: name them from the backend's signature
                world = world or build_world(entry.initial_config, entry.involved_classes, long_context=entry.long_context)
                call = parse_call(expression, world, call_id=f"call_{turn}_{i}")
            calls.append(_tool_call(call.id, call.name, call.arguments))
        # One answer with the turn's calls in order (BFCL allows parallel calls; 20 steps a turn would cut long turns).
        reference.append([{"role": "assistant", "content": "", "tool_calls": calls}] if calls else [])
    return EvalTask(
        suite=suite,
        id=entry.id,
        category=entry.category,
        turns=[_user_turn(entry, t) for t in range(len(entry.turns))],
        tools=multi_turn_tools(entry),
        reference=reference,
        payload={
            "entry": {"id": entry.id, "initial_config": entry.initial_config, "involved_classes": entry.involved_classes},
            "environment": entry.environment,
            "ground_truth": entry.ground_truth,
        },
    )


def _tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def decoded_calls(conversation: Conversation, tools: Collection[str]) -> list[list[list[str]]]:
    """The model's calls per turn, per step, as the official checker reads them (``tools``: the backends' method
    names; any other call is handed over as one the backends cannot run, see :func:`model_call_string`)."""
    return [[[model_call_string(c.name, c.arguments, tools) for c in step.calls] for step in turn.steps] for turn in conversation.turns]


def _run_multi_turn(client: ChatClient, task: EvalTask, trial: int, config: LoopConfig) -> tuple[Conversation, Verdict]:
    from ee_middleware.bfcl.sandbox import BFCLSandbox
    from ee_middleware.bfcl.world import method_table

    sandbox = BFCLSandbox()
    try:
        sandbox.reset(task.payload["environment"])
        tools = frozenset(method_table(sandbox.world))
        conversation = run_conversation(bind(client, task), task, sandbox, config, trial=trial)
    finally:
        sandbox.close()
    if conversation.error is not None:
        return conversation, Verdict(False, conversation.error_type, conversation.error)
    ground_truth = task.payload["ground_truth"]
    turns = conversation.turns
    if turns and turns[-1].stopped == "max_steps" and len(turns) < len(ground_truth):
        limit = config.max_steps_per_turn - 1
        return conversation, Verdict(
            False,
            "multi_turn:force_terminated",
            f"the model was force-quit in turn {len(turns)} of {len(ground_truth)}: it still made calls in answer {limit + 1} "
            f"(BFCL's step limit is {limit} answers with calls per turn), so the later turns were not run",
        )
    return conversation, Verdict.of(multi_turn_check(decoded_calls(conversation, tools), ground_truth, task.payload["entry"]))


# --- single-turn AST ------------------------------------------------------------------------------


@cache
def _read(name: str) -> tuple[dict[str, Any], ...]:
    from ee_middleware.bfcl.data import _read_jsonl

    return tuple(_read_jsonl(name))


def ast_entries(category: str, limit: int | None) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """``(question entry, possible answer or None)`` pairs of a single-turn category, in file order."""
    file = AST_CATEGORIES[category]
    questions = list(_read(f"BFCL_v4_{file}.json"))[:limit]
    if "relevance" in category:  # irrelevance and live_relevance: no possible answers
        return [(q, None) for q in questions]
    answers = {a["id"]: a for a in _read(f"possible_answer/BFCL_v4_{file}.json")}
    return [(q, answers[q["id"]]) for q in questions]


def ast_task(question: dict[str, Any], answer: dict[str, Any] | None, suite: str, category: str) -> EvalTask:
    tools = offered_tools(question["id"], question["function"])
    turns = [[dict(m) for m in turn] for turn in question["question"]]
    if category == "live_relevance":  # any call is right: the first function, with no arguments
        reference = [[{"role": "assistant", "content": "", "tool_calls": [_tool_call("call_0_0", tools[0]["function"]["name"], {})]}]]
    elif answer is None:
        reference = [[{"role": "assistant", "content": IRRELEVANCE_ANSWER}]]
    else:
        docs = {doc["name"]: doc for doc in question["function"]}
        calls = [
            oracle_call(name, params, i, docs.get(name), category)
            for i, item in enumerate(answer["ground_truth"])
            for name, params in item.items()
        ]
        reference = [[{"role": "assistant", "content": "", "tool_calls": calls}]]
    payload = {"functions": question["function"], "possible_answer": answer["ground_truth"] if answer else None}
    return EvalTask(suite=suite, id=question["id"], category=category, turns=turns[:1], tools=[tools], reference=reference, payload=payload)


def oracle_call(
    name: str, params: dict[str, list[Any]], index: int, doc: dict[str, Any] | None, category: str = "simple"
) -> dict[str, Any]:
    """A call built from a possible answer: the first accepted value of each parameter the function declares
    (an optional one is left out when leaving it out is accepted); Java and JavaScript values as their source text."""
    schema = (doc or {}).get("parameters") or {}
    declared, required = set(schema.get("properties") or params), set(schema.get("required") or ())
    arguments = {
        key: _pick(values) for key, values in params.items() if key in declared and values and (key in required or "" not in values)
    }
    if category in LANGUAGES:
        arguments = {key: source_text(value, schema["properties"][key], category) for key, value in arguments.items()}
    return _tool_call(f"call_0_{index}", tool_name(name), arguments)


def _pick(values: Any) -> Any:
    if not isinstance(values, list):
        return values
    value = next((v for v in values if v != ""), "")
    if isinstance(value, dict):  # a dict parameter: each key's own accepted values
        return _pick_dict(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # a list of dicts
        return [_pick_dict(item) for item in value]
    return value


def _pick_dict(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _pick(v) for k, v in value.items() if not (isinstance(v, list) and v and v[0] == "")}


def score_ast(task: EvalTask, conversation: Conversation) -> Verdict:
    if conversation.error is not None:
        return Verdict(False, conversation.error_type, conversation.error)
    first = conversation.turns[0].steps[0] if conversation.turns and conversation.turns[0].steps else None
    calls = first.calls if first is not None else []
    if task.category == "live_relevance":  # BFCL's relevance check: at least one call, arguments not checked
        if not calls:
            return Verdict(False, "relevance_error:decoder_failed", "the model made no function call where one fits")
        return Verdict(True)
    if task.payload["possible_answer"] is None:  # irrelevance: any call is wrong
        if calls:
            return Verdict(
                False, "irrelevance_error:decoder_success", f"the model called {', '.join(c.name for c in calls)} where no function fits"
            )
        return Verdict(True)
    if not calls and first is not None and first.problems:  # BFCL's decoder fails the whole answer (LoopConfig.whole_answers)
        if not first.from_text and all(NOT_AN_OBJECT in problem for problem in first.problems):  # decoded, but not {name: {...}}
            return Verdict(False, "ast_decoder:decoder_wrong_output_format", "a call's arguments are JSON but not an object")
        if all(CUT_WHILE_REASONING in problem for problem in first.problems):  # it wrote no call: it never got that far
            return Verdict(False, "ast_decoder:decoder_failed", f"the model made no function call: {first.problems[0]}")
        return Verdict(
            False,
            "ast_decoder:decoder_failed",
            f"the answer holds a call that could not be read ({first.problems[0]}), so none of it counts",
        )
    if not calls and first is not None and first.text:  # bfcl-eval's FC decoder fails on an answer that is text
        return Verdict(False, "ast_decoder:decoder_failed", "the model answered in text and made no function call")
    output = [{c.name: c.arguments} for c in calls]
    category = AST_CATEGORIES[task.category]
    return Verdict.of(ast_check(task.payload["functions"], output, task.payload["possible_answer"], category, checker_language(category)))
