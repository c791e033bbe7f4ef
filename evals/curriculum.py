"""Rolling the policy out on curriculum tasks and keeping the verified successes as new trajectories.

``ee curriculum run tasks.jsonl`` (tasks from ``ee curriculum propose``): for each task, ``k`` times,
the sandbox is reset to the task's environment reference and the policy runs the one agent loop
(:func:`ee_middleware.evals.loop.run_conversation`) with the task's tools, prompted as its parent was (the task's
``system`` messages, then its instruction). A task whose world the sandbox cannot rebuild, or whose tools it refuses
(:class:`~ee_middleware.errors.SandboxError` from its reset or ``check_offered_tools``), is skipped with the reason
(:attr:`CurriculumRun.skipped`) and the others run. A generated task has no
ground truth, so the outcome is verified by a judge model (DreamGym's outcome reward: the experience
model, or any chat model) that sees the task and the whole conversation, tool results included, and
answers ``{"reasoning": ..., "reward": 0 or 1}`` (another reward is no verdict: :data:`JUDGE_NOT_BINARY`).
A rollout is kept only when no observation came from an experience model
(a trajectory is stored as recorded experience: IL, IWM, SR and the replay buffer read its observations as what the
tools returned; a model that was asked for one and gave nothing usable counts too), every call it made named a tool the
task offers (:data:`UNKNOWN_TOOL_DROPPED`: such a call ends the rollout before the sandbox sees it) and one the sandbox
covers (:data:`UNCOVERED_TOOL_DROPPED`: refused as ``ee replay run`` refuses it, counted by tool in
:attr:`CurriculumRun.refused_tools`, it ends the rollout too: the sandbox's refusal is no observation production gives,
and stored it would teach IL, IWM and the experience model that the tool answers so), the loop ended
without an error, every call the policy wrote could be read (:data:`UNPARSABLE_DROPPED`), it made at least one tool call
and the judge's reward is 1 (the judge is asked last); it is stored as a trajectory with ``source="curriculum"``
under the task's ``app`` (its parent's: that app's datasets and ``ee improve`` read it; ``app`` of
:func:`run_curriculum` for a task that names none), its steps as capture records a run's (each tool call, then the
final reply as an ``answer`` step), ``pending`` for approval unless ``approve_if`` accepts it (one that raises leaves it
pending: :attr:`CurriculumRun.approve_if_failed`), so it feeds IL/IWM/SR like any other once approved. Its
environment reference names the task it is a variant of (:func:`~ee_middleware.replay.curriculum.with_parent`), which
the held-out split follows. Everything else is counted by reason, a judge that failed after its client's retries (timed
out, a server error) too (:data:`JUDGE_FAILED`): the run goes on.

A trajectory's id is a digest of the task, the policy spec and the rollout itself (its messages, call ids aside): a
run again of the same tasks stores every new rollout, and a rollout the store already holds (the same conversation: a
deterministic policy run again) is stored once and counted as ``already_stored``; ``approve_if`` is asked again only
about one still pending (a reviewer's decision stays).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ee_middleware._text import json_lines
from ee_middleware.errors import ConfigError, ModelError, ModelRequestError, SandboxError
from ee_middleware.evals.loop import LoopConfig, run_conversation
from ee_middleware.evals.tasks import Conversation, EvalTask
from ee_middleware.evals.tasks import Step as Answer
from ee_middleware.messages import content_to_text, message_reasoning
from ee_middleware.models.parsing import CALL_FIELDS, CALL_TYPES, MISNAMED_ARGUMENTS, misnamed_arguments, without_reasoning
from ee_middleware.models.protocol import CUT_WHILE_REASONING, ChatClient, Sampling
from ee_middleware.records import Action, Approval, Observation, Step, ToolCall, Trajectory, approve_if_verdict, tool_schema_name, utcnow
from ee_middleware.replay.curriculum import CURRICULUM_SOURCE, DEFAULT_APP, with_parent, world_environment
from ee_middleware.replay.curriculum_config import JUDGE_MAX_TOKENS
from ee_middleware.replay.sandboxes.experience import SyntheticObservationError
from ee_middleware.replay.sandboxes.protocol import check_offered_tools

JUDGE_PROMPT = (
    "You judge whether a tool-using agent accomplished its task. Read the task and the conversation (tool results included). "
    'Answer with one JSON object and nothing else: {"reasoning": "<one or two sentences>", "reward": <1 if accomplished, else 0>}'
)


SYNTHETIC_DROPPED = (
    "an experience model wrote its observations, not the tools (curriculum trajectories are stored as recorded "
    "experience: run the curriculum in a sandbox of the real tools, and synthesize with 'ee replay run --sandbox experience:...', "
    "whose rollouts carry their lineage)"
)

UNPARSABLE_DROPPED = (
    "unparsable: the policy wrote a tool call that could not be read (arguments that are not a JSON object, or a call "
    "in its text that does not parse): check the policy server's tool-call parser or chat template"
)
"""The reason a rollout is dropped when an answer of the policy held a tool call that could not be read (never executed,
left out of the conversation): it starts with replay's name for such a proposal (``rejected_by_reason``'s
``unparsable``). A rollout with no call at all is ``no tool call``."""

UNKNOWN_TOOL_DROPPED = "unknown_tool: the policy called a tool the task does not offer"
"""The reason a rollout is dropped when the policy called a tool that is not among the task's ``tools`` (names compared
exactly, as the sandbox compares them): stored and approved, it would teach the policy to call a tool that is not there.
It starts with replay's name for such a proposal (``rejected_by_reason``'s ``unknown_tool``)."""

UNCOVERED_TOOL_DROPPED = "uncovered_tool: the policy called a tool the sandbox does not cover (see refused_tools)"
"""The reason a rollout is dropped when the policy called a tool the task offers but the sandbox does not cover
(``covers(name)`` false: a tool it does not provide, refuses with a ``refusal_hint``, or declares to act only outside the
world): ``ee replay run`` refuses such a call (its ``refused_tools``), and so does the curriculum, ending the rollout at
it. Its refusal is no observation production gives: stored and approved, it would become an IWM and experience-model
target. A covered tool's own error (it raised, as in production) is an observation like any other."""


JUDGE_MIN_TOKENS = 32
"""The fewest tokens the judge is asked for when its context leaves less than ``max_tokens``: below, no verdict fits."""

JUDGE_CONTEXT_BOUND = "its context left room for"
"""In the reason of a judge cut off while still reasoning with fewer tokens than asked, its server's context being full:
more ``max_tokens`` cannot help, a longer context can."""

JUDGE_NO_VERDICT = "the judge gave no verdict"
"""The reason a rollout is dropped when the judge's answer holds no usable verdict; ``...: <why>`` when the answer was
cut off at ``max_tokens``, while the judge was still reasoning (:meth:`~ee_middleware.models.Choice.cut_while_reasoning`)
or in its verdict (:data:`JUDGE_CUT`)."""

JUDGE_NOT_BINARY = f"{JUDGE_NO_VERDICT}: its reward was neither 0 nor 1 (it is asked for 1 if the task was accomplished, else 0)"
"""The reason a rollout is dropped when the judge's reward is a number between 0 and 1 (``0.5``, "partly"): the judge is
asked for a binary verdict, and a rollout is kept only on a reward of exactly 1; a partial one is no verdict, not a
success."""

JUDGE_CUT = "the answer was cut off at max_tokens (finish_reason 'length')"
"""In the reason of a judge whose (non-reasoning) answer stopped at ``max_tokens`` before its verdict was complete
(``the judge gave no verdict: <this>: <the fix>``); one cut off while still reasoning says
:data:`~ee_middleware.models.protocol.CUT_WHILE_REASONING` instead."""

POLICY_FAILED = "the rollout failed: model_error"
"""The start of the reason a rollout is dropped with when the policy's model gave no answer (its server down, timing out,
failing): the client's error follows in parentheses."""
JUDGE_FAILED = "the judge failed"
"""The start of the reason a rollout is dropped when the judge gave no answer (``the judge failed: <the error>``)."""


@dataclass
class CurriculumRun:
    """What a curriculum run did: trajectories kept, and the rollouts not kept by reason."""

    rollouts: int = 0
    kept: list[str] = field(default_factory=list)
    """The trajectories of the rollouts kept (each once): :attr:`stored` and :attr:`already_stored`."""
    stored: list[str] = field(default_factory=list)
    """Kept rollouts this run stored."""
    already_stored: list[str] = field(default_factory=list)
    """Kept rollouts the store already held (the same conversation, from an earlier run or an earlier trial): not stored
    again."""
    repeats: int = 0
    """Successful rollouts that repeat one this run kept (another trial gave the same conversation): one trajectory, counted
    once in :attr:`kept`, so that ``rollouts`` adds up to what is kept, repeated and dropped."""
    approved: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    refused_tools: Counter[str] = field(default_factory=Counter)
    """Calls the policy made of a tool the sandbox does not cover, by tool (``ee replay run``'s ``refused_tools``): never
    executed; each ended its rollout, dropped as :data:`UNCOVERED_TOOL_DROPPED`."""
    unknown_tools: Counter[str] = field(default_factory=Counter)
    """Calls the policy made of a tool the task does not offer, by tool (each ended its rollout: :data:`UNKNOWN_TOOL_DROPPED`)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Tasks not rolled out, by task id: the reason (the sandbox cannot rebuild the task's world, or refuses its tools)."""
    approve_if_failed: list[str] = field(default_factory=list)
    """Kept trajectories ``approve_if`` raised on: stored, left pending for a reviewer."""
    approve_if_error: str | None = None
    """What ``approve_if`` raised the first time (its error, and where)."""


def read_tasks(text: str) -> list[dict[str, Any]]:
    """The curriculum tasks of a ``tasks.jsonl``'s text (each needs ``id``, ``instruction`` and ``tools``)."""
    tasks = []
    for number, line in json_lines(text):
        try:
            task = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"tasks line {number}: not JSON ({exc}).") from None
        if not isinstance(task, dict):
            raise ConfigError(
                f"tasks line {number}: a JSON {type(task).__name__}, not a task object (write tasks with 'ee curriculum propose')."
            )
        missing = [key for key in ("id", "instruction", "tools") if key not in task]
        if missing:
            raise ConfigError(f"tasks line {number}: missing {', '.join(missing)} (write tasks with 'ee curriculum propose').")
        for key in ("id", "instruction"):  # the task's id names its trajectories; its instruction is the user's message
            if not isinstance(task[key], str) or not task[key].strip():
                raise ConfigError(
                    f"tasks line {number}: '{key}' is {task[key]!r}, not a non-empty string (write tasks with 'ee curriculum propose')."
                )
        tools = task["tools"]
        if not isinstance(tools, list) or any(tool_schema_name(tool) is None for tool in tools):
            # the policy is offered these schemas, and a call is checked against their names
            raise ConfigError(
                f"tasks line {number}: 'tools' is not a list of tool schemas, each with a name "
                '({"type": "function", "function": {"name": ..., "parameters": ...}}): '
                "write tasks with 'ee curriculum propose'."
            )
        app = task.get("app")
        if app is not None and (not isinstance(app, str) or not app.strip()):
            raise ConfigError(f"tasks line {number}: 'app' is {app!r}, not an app's name (write tasks with 'ee curriculum propose').")
        system = task.get("system")
        if system is not None and (
            not isinstance(system, list)
            or any(not isinstance(m, dict) or m.get("role") not in ("system", "developer") or "content" not in m for m in system)
        ):
            raise ConfigError(
                f"tasks line {number}: 'system' is not a list of system messages "
                '([{"role": "system", "content": ...}]): write tasks with \'ee curriculum propose\'.'
            )
        tasks.append(task)
    return tasks


def judge(
    client: ChatClient, instruction: str, conversation: Conversation, *, max_tokens: int = JUDGE_MAX_TOKENS
) -> tuple[float | None, str]:
    """The judge's reward (``None`` when its answer has no usable verdict) and its reasoning or the problem
    (:data:`JUDGE_NO_VERDICT`, with the cause when it was cut off at ``max_tokens``, while still reasoning or not).

    A server that refuses the request because the prompt and ``max_tokens`` exceed the model's context is asked again
    with fewer tokens (:func:`context_budget`), never fewer than :data:`JUDGE_MIN_TOKENS`; a refusal that leaves no
    such room raises, as any other refusal does (:class:`~ee_middleware.errors.ModelRequestError`)."""
    shown = json.dumps(conversation.messages, ensure_ascii=False)[-6000:]
    messages = [{"role": "system", "content": JUDGE_PROMPT}, {"role": "user", "content": f"Task: {instruction}\n\nConversation:\n{shown}"}]
    budget = max_tokens
    while True:
        try:
            choices = client.complete(messages, n=1, sampling=Sampling(temperature=0.0, max_tokens=budget))
            break
        except ModelRequestError as exc:
            fitted = context_budget(exc.refusal, budget)
            if fitted is None or fitted < JUDGE_MIN_TOKENS:
                raise
            budget = fitted
    if choices and (cut := choices[0].cut_while_reasoning(budget)) is not None:
        if budget < max_tokens:
            cut = f"{CUT_WHILE_REASONING}: {JUDGE_CONTEXT_BOUND} {budget} of its {max_tokens} max_tokens after the prompt: serve it with a longer context"
        return None, f"{JUDGE_NO_VERDICT}: {cut}"
    text = choices[0].text if choices and choices[0].problem is None else ""
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            data, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        reward = data.get("reward") if isinstance(data, dict) else None
        if isinstance(reward, (int, float)) and not isinstance(reward, bool) and 0.0 <= reward <= 1.0:  # (NaN fails both)
            if reward not in (0, 1):  # asked for 1 or 0: "partly" is no verdict, and never a success
                return None, JUDGE_NOT_BINARY
            return float(reward), str(data.get("reasoning") or "")
    if choices and choices[0].problem is None and choices[0].finish_reason == "length":
        # a verdict cut short is not a judge that cannot follow the format: the fix is more tokens (or a longer context)
        if budget < max_tokens:
            bound = f"{JUDGE_CONTEXT_BOUND} {budget} of its {max_tokens} max_tokens after the prompt: serve it with a longer context"
            return None, f"{JUDGE_NO_VERDICT}: {JUDGE_CUT}: {bound}"
        return None, f"{JUDGE_NO_VERDICT}: {JUDGE_CUT}: raise max_tokens (now {budget})"
    return None, JUDGE_NO_VERDICT


_CONTEXT_LENGTH = re.compile(r"maximum context length (?:is|of) (\d+)|`inputs` tokens \+ `max_new_tokens` must be <= (\d+)", re.IGNORECASE)
# The prompt's length as the server counted it: vLLM up to 0.10.1, OpenAI and ee serve local ("(1816 in the messages,"),
# vLLM 0.10.2 to 0.17 ("your request has 1816 input tokens"), later vLLM when it counted the whole prompt ("your prompt
# contains 1816 input tokens", not "at least"), SGLang ("1816 tokens from the input messages"), TGI ("Given: 1816 `inputs`
# tokens").
_PROMPT_LENGTH = re.compile(
    r"\((\d+) in the messages|your request has (\d+) input tokens|your prompt contains (\d+) input tokens"
    r"|(\d+) tokens from the input messages|Given: (\d+) `inputs` tokens",
    re.IGNORECASE,
)


_CONTEXT_WORDS = re.compile(r"context[_ ]length|context window|prompt is too long", re.IGNORECASE)


def is_context_refusal(text: str) -> bool:
    """Whether ``text`` (a server's refusal) says the prompt and ``max_tokens`` exceed the model's context."""
    return _CONTEXT_LENGTH.search(text) is not None or _CONTEXT_WORDS.search(text) is not None


def context_budget(refusal: str, asked: int) -> int | None:
    """A ``max_tokens`` below ``asked`` that the server's context may take, after it refused ``asked`` with ``refusal``;
    None when the refusal is not about the context, or leaves no room.

    Where the server says how long the prompt is, its context less that; where it gives only a bound (vLLM 0.18 and later:
    "your prompt contains at least N - max_tokens + 1 input tokens", its count stopped at what could fit), half of
    ``asked``: a refusal costs the server no generation, only the prompt's tokenization."""
    context = _CONTEXT_LENGTH.search(refusal)
    if context is None:
        return None
    prompt = _PROMPT_LENGTH.search(refusal)
    length = int(context.group(1) or context.group(2))
    budget = asked // 2 if prompt is None else length - int(next(g for g in prompt.groups() if g))
    return budget if 0 < budget < asked else None


def unreadable_call(conversation: Conversation) -> bool:
    """Whether the policy wrote a tool call in ``conversation`` that could not be read (:data:`UNPARSABLE_DROPPED`).

    Such a call was never run and is left out of the messages: stored, the rollout would show an answer the policy did
    not write. Only an answer that tried to call counts (:func:`tried_to_call`): a final answer that merely is JSON (a
    list of the files asked for, ``{"files": [...]}``) is an answer, which the judge reads, and a rollout of such answers
    alone is ``no tool call``."""
    return any(tried_to_call(step) for turn in conversation.turns for step in turn.steps)


_CALL_MARKUP = ("<tool_call>", "<function=", "[TOOL_CALLS]", "to=functions.", "<|tool_call|>", "<|python_tag|>", "<\uff5ctool\u2581")
"""The markers of a tool call in a model family's text (Hermes/Qwen, Qwen3-Coder and Llama, Mistral, gpt-oss, Phi, Llama's
python tag, DeepSeek's tool tokens), as :mod:`ee_middleware.models.parsing` reads them."""

_CALL_KEYS = ("name", "arguments", "parameters", "function", "tool_calls")
# A call written as JSON that does not decode (cut off at max_tokens, a Python-literal dict, followed by a sentence): it
# opens with a call's key, or it is a list of Python calls; then _opens_a_call reads as much of its first object as there is.
_OPENS_A_CALL = re.compile(
    r"\[?\s*\{\s*[\"']?(?:" + "|".join(_CALL_KEYS) + r")[\"']?\s*:"  # {"name": "ls", "argu...
    r"|\[?\s*\{\s*[\"']?type[\"']?\s*:\s*[\"'](?:" + "|".join(sorted(CALL_TYPES)) + r")[\"']"  # {"type": "function", "func...
    r"|\[\s*[A-Za-z_][\w.]*\s*\("  # [ls(path=x)]
)


def tried_to_call(answer: Answer) -> bool:
    """Whether ``answer`` (a step of the loop) held a tool call that could not be read, as opposed to an answer that
    merely is JSON.

    The loop records problems for every answer that starts like JSON (:attr:`~ee_middleware.evals.tasks.Step.problems`,
    the parser's reason only), so what was written decides: structured ``tool_calls`` (the server's parser took them
    for calls), calls read from the same text beside the unreadable one, a model family's call markup (a
    ``<tool_call>`` block, ...), or JSON in a call's shape (an object with ``arguments``/``parameters``, a ``function``
    object or ``tool_calls``, or a name with its arguments under a misnamed key, as the parser tells it:
    :func:`~ee_middleware.models.parsing.misnamed_arguments`; one that does not decode whole by its leading JSON, or as far as it goes where it is cut
    off at ``max_tokens``: :func:`_opens_a_call`)."""
    if not answer.problems:
        return False
    if not answer.from_text or answer.calls:
        return True
    text = without_reasoning(answer.text)[0].strip()
    if any(marker in text for marker in _CALL_MARKUP):
        return True
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return _OPENS_A_CALL.match(text) is not None and _opens_a_call(text)
    return any(_call_shaped(item) for item in (payload if isinstance(payload, list) else [payload]))


_KEY = re.compile(r""""(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[A-Za-z_]\w*""")
"""An object's key as a model writes it: JSON's, a Python literal's, unquoted, or cut inside its quotes."""
_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""")
_COLON = re.compile(r"\s*:\s*")
_COMMA = re.compile(r"\s*,\s*")
_ARGUMENTS_KEY = re.compile(
    r"[\"'](?:arguments|parameters)[\"']\s*:"
    r"|[\"'](?:" + "|".join(sorted(MISNAMED_ARGUMENTS)) + r")[\"']\s*:\s*(?:[\"']?\{(?!\s*\})|$)"
)
"""A call's arguments key further on, after a key a record also has (``{"name": "ls", "size": 4, "arguments": ...``),
or a misnamed one holding an object that is not empty (``"input": {"pa``), as the parser tells a call by it."""
_EMPTY = re.compile(r"""\{\s*\}|\[\s*\]|null|None|""|''|"\{\s*\}"|'\{\s*\}'""")
"""A misnamed arguments key's value that holds no arguments (:func:`~ee_middleware.models.parsing.misnamed_arguments`)."""
_SCALAR = re.compile(r"-?\d[\d.eE+-]*|true|false|null|True|False|None")
"""A number or constant as the value of a call's own key (``"index": 0``)."""
_JSON = json.JSONDecoder()


def _opens_a_call(text: str) -> bool:
    """Whether ``text`` (which opens like a call but does not decode whole) is in a call's shape as far as it can be
    read, as :func:`_call_shaped` says of one that decodes: its leading JSON where that is complete (a record followed
    by a sentence), else its first object's keys up to where it ends or is cut (a Python-literal dict, a call cut at
    ``max_tokens``). A ``name`` that is not a string, or a next key that is neither the call's ``arguments``/
    ``parameters`` nor one of a call's own keys the parser accepts beside a name (an ``id``, an ``index``, a thought,
    ``"type": "function"``: :data:`~ee_middleware.models.parsing.CALL_FIELDS`), is not a call's shape
    (``{"name": "Alice Smith", "email": "alice@exa``); an object cut before its next key is whole, or inside one of a
    call's own keys, is taken for a call (it may be one)."""
    try:
        payload, _ = _JSON.raw_decode(text)
    except (ValueError, RecursionError):
        pass
    else:
        return any(_call_shaped(item) for item in (payload if isinstance(payload, list) else [payload]))
    opening = re.match(r"\[?\s*\{\s*", text)
    if opening is None:
        return True  # a list of Python calls: [ls(path=x)]
    at, named = opening.end(), False
    while key := _KEY.match(text, at):
        name = key.group().strip("\"'")
        colon = _COLON.match(text, key.end())
        if colon is None:  # cut inside or after the next key
            return any(call_key.startswith(name) for call_key in ("arguments", "parameters"))
        start = colon.end()
        if name in ("arguments", "parameters", "tool_calls"):
            return True
        if name == "function":
            return text[start : start + 1] in ("{", "")  # OpenAI's {"function": {"name", "arguments"}}
        if named and name in MISNAMED_ARGUMENTS:
            # {"name": "ls", "args": {"pa: arguments under a misnamed key, which the parser reports (misnamed_arguments)
            value = _EMPTY.match(text, start)
            if value is None:
                opens = text[start : start + 1]
                if opens in ("{", ""):
                    return True  # an object's arguments (whole or cut), or cut before its value
                if opens in ("'", '"') and text[start + 1 :].lstrip()[:1] in ("{", ""):
                    return True  # JSON text of its arguments, or cut inside it
                return _ARGUMENTS_KEY.search(text, start) is not None  # a record's field ("params": "110M")
        elif named and (name == "type" or (name in CALL_FIELDS and name != "name")):
            # a call's own key after its name (an id, an index, a thought, "type": "function"), as the parser reads it
            value = _STRING.match(text, start) or _SCALAR.match(text, start)
            if value is None or value.end() == len(text):
                return True  # cut inside it: it may be a call
            if name == "type" and value.group()[1:-1] not in CALL_TYPES:
                return _ARGUMENTS_KEY.search(text, start) is not None  # {"name": "a.pdf", "type": "file", ...}
        else:
            if named or name not in ("name", "type"):
                return _ARGUMENTS_KEY.search(text, start) is not None  # a record's field, unless the call's arguments follow
            value = _STRING.match(text, start)
            if value is None:
                return text[start : start + 1] in ("", '"', "'")  # cut inside it, or not a string
            if name == "type":
                if value.group()[1:-1] not in CALL_TYPES or value.group()[1:-1] == "function":
                    return value.group()[1:-1] == "function"  # {"type": "function", "function": ...}
                # {"type": "tool_use", "id": "t1", "name": "ls", "input": {...: a call when its arguments follow
                return _ARGUMENTS_KEY.search(text, value.end()) is not None
            else:
                named = True
        comma = _COMMA.match(text, value.end())
        if comma is None:
            return text[value.end() :].strip() == ""  # cut after the name; closed there, it is a record ({"name": "a.pdf"})
        at = comma.end()
    return at == len(text)  # cut after the name's comma


def _call_shaped(payload: Any) -> bool:
    """Whether decoded JSON is a tool call's object (``{"name", "arguments"}``, OpenAI's ``{"type", "function"}``, a
    message's ``tool_calls``, a name with its arguments under a misnamed key such as ``args`` or Anthropic's ``input``:
    :func:`~ee_middleware.models.parsing.misnamed_arguments`), whatever its values: a name alone is not
    (``{"name": "report.pdf"}`` is a file, ``{"name": "bert-base", "params": "110M"}`` a record)."""
    if not isinstance(payload, dict):
        return False
    if "arguments" in payload or "parameters" in payload or isinstance(payload.get("function"), dict) or "tool_calls" in payload:
        return True
    return isinstance(payload.get("name"), str) and misnamed_arguments(payload) is not None


class _UnknownTool(Exception):
    """The policy called a tool the task does not offer: the rollout ends there (it is dropped, whatever came next)."""


class _UncoveredTool(Exception):
    """The policy called a tool the sandbox does not cover: the rollout ends there (it is dropped, whatever came next)."""


class _Recording:
    """The sandbox as the loop's environment, keeping each call's full observation (``is_error`` included); a call of a
    tool not among ``offered`` (names) never reaches the sandbox: it ends the rollout (:attr:`unknown`), and so does a call
    of a tool the sandbox does not cover (:attr:`uncovered`)."""

    def __init__(self, sandbox: Any, offered: Iterable[str]) -> None:
        self.sandbox = sandbox
        self.offered = frozenset(offered)
        self.observations: dict[str, Observation] = {}
        self.synthetic: list[str] = []
        """Tools whose observation a model wrote (an experience-model sandbox's ``provenance()``), not the tools."""
        self.unknown: list[str] = []
        """The tool the policy called that the task does not offer, once it did (the rollout ended at that call)."""
        self.uncovered: list[str] = []
        """The tool the policy called that the sandbox does not cover, once it did (the rollout ended at that call)."""

    def execute(self, call: ToolCall) -> Observation:
        if call.name not in self.offered:
            # A sandbox may run tools the task does not offer (BFCL's cover every tool of the entry's classes): the
            # world is not changed by a call the policy was never offered, and the rollout is not worth going on with.
            self.unknown.append(call.name)
            raise _UnknownTool(f"the task does not offer the tool {call.name!r}")
        if not self.sandbox.covers(call.name):
            # Refused, never executed, as replay refuses it (runner._alternatives): a refusal put here as its observation
            # is what no production tool answers, and the rollout's later steps would follow from it.
            self.uncovered.append(call.name)
            raise _UncoveredTool(f"the sandbox does not cover the tool {call.name!r}")
        provenance = getattr(self.sandbox, "provenance", None)
        try:
            observation = self.sandbox.execute(call)
        except (SyntheticObservationError, ModelError):
            if provenance is not None:  # the experience model was asked for the observation and gave none
                self.synthetic.append(call.name)
            raise
        if provenance is not None and provenance() is not None:
            self.synthetic.append(call.name)
        self.observations[call.id] = observation
        return observation


def to_trajectory(
    task: dict[str, Any],
    conversation: Conversation,
    observations: dict[str, Observation],
    *,
    policy: str,
    trial: int,
    started: Any,
    app: str = DEFAULT_APP,
) -> Trajectory:
    """One rollout as a stored trajectory (``source="curriculum"``, pending; its id: :func:`rollout_id`; ``trial`` is not part
    of it: two trials that held the same conversation are one trajectory), under the task's ``app`` (``app`` when it
    names none).

    Its steps are those capture records for a run: each tool call (the text the policy wrote beside its calls kept with
    the first of them), and each reply without calls as an ``answer`` step (the final one: what IL teaches the policy to
    answer after the tools; an empty reply after a tool's result that ended the run too, as the model stopping)."""
    trajectory_id = rollout_id(task, policy, conversation)
    steps: list[Step] = []
    messages = conversation.messages
    for position, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        calls = message.get("tool_calls") or []
        text = content_to_text(message.get("content"))
        reasoning = message_reasoning(message)
        for number, call in enumerate(calls):
            arguments = json.loads(call["function"]["arguments"] or "{}")
            tool_call = ToolCall(id=call["id"], name=call["function"]["name"], arguments=arguments)
            action = Action(kind="tool_call", tool_call=tool_call, content=text or None if number == 0 else None, reasoning=reasoning)
            steps.append(_step(trajectory_id, len(steps), position, messages, action, observations.get(call["id"])))
        ended_after_tool = position == len(messages) - 1 and position > 0 and messages[position - 1].get("role") == "tool"
        if not calls and (text or ended_after_tool):
            steps.append(
                _step(trajectory_id, len(steps), position, messages, Action(kind="answer", content=text, reasoning=reasoning), None)
            )
    replies = conversation.replies
    return Trajectory(
        id=trajectory_id,
        app=task.get("app") or app,
        task=task["instruction"],
        tools=task["tools"],
        model=policy,
        messages=conversation.messages,
        final_answer=replies[-1] if replies else None,
        status="completed",
        started_at=started,
        ended_at=utcnow(),
        environment=with_parent(world_environment(task.get("environment")), task.get("parent")),
        approval=Approval(),
        source=CURRICULUM_SOURCE,
        steps=steps,
    )


def _step(
    trajectory_id: str, index: int, position: int, messages: list[dict[str, Any]], action: Action, observation: Observation | None
) -> Step:
    """The step of the policy's reply at ``position`` of the conversation: its history is what came before."""
    return Step(
        trajectory_id=trajectory_id, index=index, decision_index=position, state=messages[:position], action=action, observation=observation
    )


def task_messages(task: dict[str, Any]) -> list[dict[str, Any]]:
    """What the policy is prompted with for ``task``: its parent's system messages (``system``), then its instruction."""
    system = [{"role": m["role"], "content": m.get("content") or ""} for m in task.get("system") or []]
    return [*system, {"role": "user", "content": task["instruction"]}]


def legacy_rollout_id(task: dict[str, Any], policy: str, trial: int) -> str:
    """The id ee-middleware before 674ca7d gave a task's rollout (task id, policy spec, trial; no content)."""
    key = f"{task['id']}:{policy}:{trial}"
    return f"curriculum-{hashlib.blake2b(key.encode(), digest_size=12).hexdigest()}"


def rollout_id(task: dict[str, Any], policy: str, conversation: Conversation) -> str:
    """A rollout's trajectory id: a digest of the task id, the policy spec and the conversation (roles, texts, the calls'
    names and arguments, the tool results; not the call ids), so that only the same rollout gets the same id."""
    shown = []
    for message in conversation.messages:
        calls = [
            [call.get("function", {}).get("name"), call.get("function", {}).get("arguments")] for call in message.get("tool_calls") or []
        ]
        shown.append([message.get("role"), message.get("content"), calls])
    text = json.dumps([task["id"], policy, shown], ensure_ascii=False, sort_keys=True, default=str)
    return f"curriculum-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


def _curriculum_reviews(store: Any) -> dict[str, str]:
    """The current review status of the curriculum trajectories ``store`` holds (id -> pending, approved or rejected)."""
    from ee_middleware.store.registry import trajectory_columns

    frame = trajectory_columns(store, ["id", "source"])
    if "source" in frame.columns:
        frame = frame.filter(frame["source"] == CURRICULUM_SOURCE)
    return dict(zip(frame["id"].to_list(), frame["approval"].to_list(), strict=True))


def run_curriculum(
    tasks: list[dict[str, Any]],
    policy: ChatClient,
    policy_spec: str,
    make_sandbox: Callable[[], Any],
    judge_client: ChatClient,
    store: Any,
    *,
    k: int = 1,
    approve_if: Callable[[Trajectory], bool] | None = None,
    loop: LoopConfig = LoopConfig(max_steps_per_turn=10),
    progress: Callable[[int], None] | None = None,
    judge_max_tokens: int = JUDGE_MAX_TOKENS,
    app: str = DEFAULT_APP,
    describe_approve_if_error: Callable[[Exception], str] | None = None,
    run: CurriculumRun | None = None,
) -> CurriculumRun:
    """Roll ``policy`` out ``k`` times on each task and store the verified successes (see the module docstring); the
    judge may write ``judge_max_tokens`` tokens per verdict. A task that names no ``app`` is stored under ``app``.
    ``progress(1)`` is called after each rollout.

    ``run`` is the record to fill in (a new one when None): a caller that gives its own still holds what was rolled
    out and stored when the run is stopped part way (Ctrl-C), each trajectory counted once it is in the store.

    ``approve_if`` raising leaves that trajectory pending and the run goes on: its id is in
    :attr:`CurriculumRun.approve_if_failed`, and the first error in :attr:`CurriculumRun.approve_if_error`, told by
    ``describe_approve_if_error`` (the caller names the plug-in and the line) or as ``Type: message``."""
    run = CurriculumRun() if run is None else run
    held = _curriculum_reviews(store)
    sandbox = make_sandbox()
    try:
        for task in tasks:
            eval_task = EvalTask(
                suite="curriculum",
                id=task["id"],
                category="curriculum",
                turns=[task_messages(task)],
                tools=[task["tools"]],
                reference=[],
            )
            for trial in range(k):
                started = utcnow()
                try:
                    sandbox.reset(world_environment(task.get("environment")))
                    check_offered_tools(sandbox, task["tools"])  # a production tool where the world goes raises before it runs
                except SandboxError as exc:
                    # as ee replay run skips a trajectory whose world cannot be rebuilt: this task's trials cannot run, the
                    # other tasks' can
                    ran = f" after {trial} of its {k} trials ran (those are counted and kept as usual)" if trial else ""
                    run.skipped[str(task["id"])] = f"the sandbox cannot run it{ran}: {type(exc).__name__}: {exc}"
                    break
                run.rollouts += 1
                environment = _Recording(sandbox, [name for tool in task["tools"] if (name := tool_schema_name(tool)) is not None])
                conversation = run_conversation(policy, eval_task, environment, loop, trial=trial)
                if progress is not None:
                    progress(1)
                run.refused_tools.update(environment.uncovered)  # counted whatever the rollout is dropped for
                run.unknown_tools.update(environment.unknown)
                if environment.synthetic:
                    # a stored trajectory is recorded experience: IL, IWM, SR and the experience model's replay buffer
                    # read its observations as what the tools returned, and nothing on a trajectory marks one a model wrote.
                    # First: a model that gave no usable observation also ends the rollout with a tool error.
                    run.dropped[SYNTHETIC_DROPPED] += 1
                    continue
                if environment.unknown:  # before the error: the call ended the rollout as a tool error
                    run.dropped[UNKNOWN_TOOL_DROPPED] += 1
                    continue
                if environment.uncovered:  # before the error too, for the same reason
                    run.dropped[UNCOVERED_TOOL_DROPPED] += 1
                    continue
                if conversation.error_type:
                    # the policy's model failed (its server down, timing out, refusing the model's name, the key or the
                    # prompt): its error says which, and holds the fix (--timeout, the served name, max context)
                    detail = f" ({conversation.error})" if conversation.error_type == "model_error" and conversation.error else ""
                    run.dropped[f"the rollout failed: {conversation.error_type}{detail}"] += 1
                    continue
                if unreadable_call(conversation):
                    run.dropped[UNPARSABLE_DROPPED] += 1
                    continue
                if not conversation.calls:
                    run.dropped["no tool call"] += 1
                    continue
                try:
                    reward, why = judge(judge_client, task["instruction"], conversation, max_tokens=judge_max_tokens)
                except ModelError as exc:  # after the client's retries: this rollout is unjudged, the others may not be
                    run.dropped[f"{JUDGE_FAILED}: {exc}"] += 1
                    continue
                if reward is None:
                    run.dropped[why] += 1
                    continue
                if reward != 1:  # the verdict is binary (judge): 1 is a success, 0 is not
                    run.dropped["judged unsuccessful"] += 1
                    continue
                trajectory = to_trajectory(
                    task, conversation, environment.observations, policy=policy_spec, trial=trial, started=started, app=app
                )
                status = held.get(trajectory.id)
                if status is None:
                    store.write([trajectory])  # pending
                    held[trajectory.id] = status = "pending"
                    run.stored.append(trajectory.id)
                elif trajectory.id not in run.stored and trajectory.id not in run.already_stored:  # stored once, by an earlier run
                    run.already_stored.append(trajectory.id)
                else:  # kept already by this run: another trial gave the same conversation
                    run.repeats += 1
                # A rollout of this task, policy and trial a reviewer rejected under the previous version's id (which
                # named no content) may be this one: it stays pending for a person, never approved by approve_if.
                rejected_before = held.get(legacy_rollout_id(task, policy_spec, trial)) == "rejected"
                if (
                    status == "pending"
                    and approve_if is not None
                    and not rejected_before
                    and _approves(approve_if, trajectory, run, describe_approve_if_error)
                ):
                    store.approve([trajectory.id], by="auto:approve_if", reason="approve_if returned True")  # as for capture
                    held[trajectory.id] = "approved"
                    run.approved += 1
                if trajectory.id not in run.kept:
                    run.kept.append(trajectory.id)
    finally:
        sandbox.close()
    return run


def _approves(
    approve_if: Callable[[Trajectory], bool], trajectory: Trajectory, run: CurriculumRun, describe: Callable[[Exception], str] | None
) -> bool:
    """Whether ``approve_if`` accepts ``trajectory``; one that raises does not (as capture treats it: the trajectory stays
    pending, stored), and the run notes it (:attr:`CurriculumRun.approve_if_failed`)."""
    try:
        verdict = approve_if(trajectory)
    except Exception as exc:  # noqa: BLE001 - the user's rule: its error is told, the trajectory left for a reviewer
        _approve_if_failed(run, trajectory, describe(exc) if describe is not None else f"{type(exc).__name__}: {exc}")
        return False
    try:
        return approve_if_verdict(verdict)
    except TypeError as exc:  # neither True nor False: ee's own words, not the rule's error
        _approve_if_failed(run, trajectory, f"The --approve-if function {exc}.")
        return False


def _approve_if_failed(run: CurriculumRun, trajectory: Trajectory, error: str) -> None:
    if trajectory.id not in run.approve_if_failed:
        run.approve_if_failed.append(trajectory.id)
    if run.approve_if_error is None:
        run.approve_if_error = error
