"""The experience-model sandbox (DreamGym): a language model stands in for tools that cannot be replayed.

``ee replay run --sandbox experience:MODEL_SPEC`` (``MODEL_SPEC`` as for policies: ``local:DIR[@ADAPTER]``,
``openai:BASE_URL#MODEL`` or ``package.module:factory``). For each call the model is shown the task,
the interaction so far (the recorded state's messages), the top-k most similar *real* transitions
retrieved from the store (:mod:`ee_middleware.replay.retrieval`) and the action, and answers with a
short reasoning and the predicted observation as one JSON object::

    {"reasoning": "...", "observation": "...", "is_error": false}

Lineage: after every ``execute`` :meth:`ExperienceSandbox.provenance` says whether the observation
was synthetic and, if so, which model wrote it, which transitions were retrieved and the model's
reasoning; the replay runner marks such rollouts ``synthetic`` and keeps that lineage with them.
An answer that is not such an object (garbage, nothing parseable) raises
:class:`SyntheticObservationError`: the runner counts the branch as failed with the reason and
stores no observation.

Per tool: with ``real=SPEC`` the tools that real sandbox covers run there for real (not synthetic),
the rest go to the model. ``retriever`` picks how the replay buffer is searched (``bm25``, the
default, ``bm25s`` or a plug-in: :data:`ee_middleware.replay.retrieval.RETRIEVERS`), ``retriever_settings`` (a table)
gives its factory keyword options (``{ k1 = 1.2 }`` for ``bm25``, a plug-in's own; one it takes no parameter for is the
registry's 'Bad options' error); both are sandbox settings, so part of a replay's id. ``min_fidelity`` (tool -> minimum token F1, ``"*"`` for every tool) with
``fidelity`` (a report of ``ee experience eval --json``, whose variant that measured this model is
read unless ``fidelity_variant`` names one, or a tool -> score mapping) refuses the
tools whose measured fidelity is below their threshold or was never measured; :meth:`refusal_hint`
says which and why, and ``ee replay run`` prints it. ``timeout_s`` (seconds per request to an ``openai:`` model, 60 by
default; a model on a CPU server takes seconds per prediction, and longer behind a queue) is how long the model may take.

Expert steps are not predicted: the runner announces each recorded step (:meth:`at_step`) and the
expert's own call then returns its recorded observation, so the history stays real.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ee_middleware.errors import SandboxError
from ee_middleware.models.protocol import Sampling
from ee_middleware.models.urls import shown_spec
from ee_middleware.replay.retrieval import DEFAULT_TOP_K, Retriever, Transition, TransitionIndex, build_retriever, state_text

if TYPE_CHECKING:
    from ee_middleware.models.protocol import ChatClient
    from ee_middleware.records import Observation, Step, ToolCall, Trajectory

PREFIX = "experience:"
FIDELITY_METRIC = "token_f1"
RECORDED = "recorded"
"""The sandbox kind of a rollout the recording answered: the expert's own call, its recorded observation (real)."""
"""The metric ``min_fidelity`` thresholds compare against."""

SYSTEM_PROMPT = (
    "You are an experience model: you simulate the tools of an agent's environment. The conversation starts with real "
    "examples: tool calls similar to the new one, each answered with what the tool really returned. Given the task, the "
    "interaction so far and a new tool call, think briefly about what the tool would return, then answer with one JSON "
    'object and nothing else: {"reasoning": "<one or two sentences>", "observation": "<exactly what the tool returns>", '
    '"is_error": <true or false>}'
)


CUT_BEFORE_JSON = "the answer was cut off at max_tokens before any JSON object began"
"""The start of the reason an answer that stopped at ``max_tokens`` before it began the JSON object asked for is
unusable for (prose until the limit, an untrained model's usual answer): more tokens alone will not make it JSON.
An answer cut off inside the object says ``"the answer was cut off at max_tokens (finish_reason 'length'; ..."``."""


SANDBOX_TIMEOUT_KNOB = "timeout_s under [replay.sandbox_settings]"
"""How a replay's user sets the experience model's ``timeout_s`` (what the advice after a timeout names)."""


def build_model_client(spec: str, *, timeout_s: float | None = None, timeout_knob: str | None = None) -> ChatClient:
    """The chat client ``spec`` names (:func:`~ee_middleware.models.spec.build_chat_client`), waiting ``timeout_s`` per
    request where it is an ``openai:`` model's (``None``: the client's 60 s; a local model or a plug-in has no request
    timeout to set), and whose advice after a timeout names ``timeout_knob``: how the running command sets it."""
    from ee_middleware.models.spec import build_chat_client

    options = {"timeout_s": timeout_s} if timeout_s is not None and spec.strip().startswith("openai:") else {}
    client = build_chat_client(spec, **options)
    if timeout_knob is not None and getattr(client, "timeout_knob", False) is None:  # a served model's client
        client.timeout_knob = timeout_knob  # type: ignore[attr-defined]
    return client


_ANSWER_KEYS = ("reasoning", "observation", "is_error", "reward")
"""The keys of the JSON object the model is asked for (:data:`SYSTEM_PROMPT`; ``reward`` in the trained model's target)."""
_VALUE_START = frozenset('"{[-0123456789tfnNI')
"""The first character of a JSON value (``NaN`` and ``Infinity`` too: the answer parser reads them)."""
_QUOTE_OR_ESCAPE = re.compile(r'["\\]')
_FENCE_AT_END = re.compile(r"```(?:json|JSON)?\s*\Z")
_KEY, _COLON, _VALUE, _OTHER = range(4)
"""Where :func:`_began_json` is in an open object: a key comes next (after ``{`` or ``,``), a key was read (``:`` comes
next), ``:`` was read (a value comes next), anything else."""


class _Open:
    """An object or array that opened in the answer and has not closed yet (:func:`_began_json`)."""

    __slots__ = ("asked", "at", "first", "is_object", "key", "keyed", "state")

    def __init__(self, at: int, is_object: bool) -> None:
        self.at = at  # the index of its "{" or "["
        self.is_object = is_object
        self.state = _KEY if is_object else _OTHER
        self.first = is_object  # nothing but whitespace read inside it yet
        self.key: str | None = None  # the key just read, until its value starts
        self.keyed = False  # a key and ':' were read in it
        self.asked = False  # one of its keys is an asked one (:data:`_ANSWER_KEYS`), with ':' and a value after it


def _string_end(text: str, start: int) -> int:
    """The index of the quote that closes the JSON string whose first character is ``text[start]``, or -1 (it never closes)."""
    while (stop := _QUOTE_OR_ESCAPE.search(text, start)) is not None:
        if stop.group() == '"':
            return stop.start()
        start = stop.start() + 2  # an escape and the character it escapes
    return -1


def _began_json(text: str) -> bool:
    """Whether ``text`` (an answer without its reasoning) was cut off inside the JSON object asked for, anywhere in it, as
    the answer parser reads an object after a lead-in ("Here is the observation: {...") or inside another: an object that
    never closes before the answer's end, at any depth (the value of a wrapper's key, an item of a list), and holds one
    of the asked keys (:data:`_ANSWER_KEYS`; first or after other keys) followed by ``:`` and the start of a value; or
    the answer stopped where an asked key is being written (right after an object's ``{``, inside a key that an asked
    one starts with, before an asked key's value); or right after a code fence opened.

    Prose that mentions the shape (``an object like {"observation": ..., "is_error": ...}``) is no start: the object it
    shows closes, and prose follows; nor is a ``{}`` or a ``{word`` in prose, a key named without ``:`` after it, or an
    object of other keys. One pass (linear time): quotes outside any object are prose; inside one, braces in strings are
    skipped."""
    if _FENCE_AT_END.search(text) is not None:
        return True
    stack: list[_Open] = []
    cut_key: str | None = None  # the key the answer stopped inside
    i, n = 0, len(text)
    while i < n:
        if not stack:
            i = text.find("{", i)
            if i < 0:
                break
            stack.append(_Open(i, True))
            i += 1
            continue
        top, ch = stack[-1], text[i]
        if ch.isspace():
            i += 1
            continue
        if top.first:
            if ch not in '"}':  # "{" and then a word or a number: prose ("{it's", "{0}"), no object
                stack.pop()
                continue  # the character is read again, outside
            top.first = False
        if top.state == _COLON:
            if ch == ":":
                top.state, top.keyed = _VALUE, True
                i += 1
                continue
            if not top.keyed:  # '{"word" and ...': prose quoting a brace; an object may start inside the "key"
                stack.pop()
                i = top.at + 1
                continue
            top.state = _OTHER
        elif top.state == _VALUE:
            top.asked = top.asked or (ch in _VALUE_START and top.key in _ANSWER_KEYS)
            top.state = _OTHER
        if ch == '"':
            end = _string_end(text, i + 1)
            if end < 0:  # the answer stops inside this string
                if top.state == _KEY:
                    cut_key = text[i + 1 :]
                break
            if top.state == _KEY:
                top.key, top.state = text[i + 1 : end], _COLON
            i = end + 1
            continue
        if ch == ",":
            top.state = _KEY if top.is_object else _OTHER
        elif ch in "}]":
            stack.pop()
        else:
            top.state = _OTHER
            if ch in "{[":
                stack.append(_Open(i, ch == "{"))
        i += 1
    if not stack:
        return False
    if any(open_.asked for open_ in stack):
        return True
    top = stack[-1]
    if cut_key is not None:
        return any(key.startswith(cut_key) for key in _ANSWER_KEYS)
    return top.first or (top.state in (_COLON, _VALUE) and top.key in _ANSWER_KEYS)


class SyntheticObservationError(SandboxError):
    """The experience model's answer is not a usable observation (garbage, nothing parseable, no answer)."""

    def __init__(self, reason: str, raw: str = "") -> None:
        super().__init__(f"The experience model gave no usable observation: {reason}" + (f" (answer: {raw[:200]!r})" if raw else ""))
        self.reason = reason
        self.raw = raw


def parse_prediction(text: str) -> dict[str, Any]:
    """``{"reasoning", "observation", "is_error", "reward"}`` from the model's answer, or :class:`SyntheticObservationError`.

    Accepts the JSON object alone, in a code fence, or after some text; ``observation`` must be
    present (a non-string value is kept as its JSON text). A ``reward`` that is not a number in [0, 1]
    (NaN, 7, a string) is dropped: the observation is kept, with no reward.
    """
    if not text or not text.strip():
        raise SyntheticObservationError("the answer is empty")
    decoder = json.JSONDecoder()
    found: Any = None
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            found, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(found, dict) and "observation" in found:
            break
        found = None
    if found is None:
        raise SyntheticObservationError("no JSON object with an 'observation' field in the answer", text)
    observation = found["observation"]
    if observation is None:
        raise SyntheticObservationError("the 'observation' field is null", text)
    if not isinstance(observation, str):
        observation = json.dumps(observation, ensure_ascii=False)
    is_error = found.get("is_error", False)
    if not isinstance(is_error, bool):
        raise SyntheticObservationError(f"'is_error' must be true or false, got {is_error!r}", text)
    reasoning = found.get("reasoning")
    reward = found.get("reward")
    if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not 0.0 <= reward <= 1.0:
        reward = None  # a reward is an outcome in [0, 1] (the em target's 1.0 / 0.0); 7, -1, NaN or "yes" is none
    return {
        "reasoning": reasoning if isinstance(reasoning, str) else None,
        "observation": observation,
        "is_error": is_error,
        "reward": None if reward is None else float(reward),
    }


def template_reasoning(transition: Transition) -> str:
    """A reasoning from the call and its outcome alone, never the observation: the ``template`` teacher's, and the
    one the retrieved examples are shown with."""
    names = ", ".join(sorted(transition.arguments)) or "no arguments"
    outcome = "so the tool reports an error" if transition.is_error else "so the tool returns its result"
    return f"The agent calls {transition.tool} with {names}; the call {'does not fit' if transition.is_error else 'fits'} the current state, {outcome}."


def _call_text(call_name: str, arguments: dict[str, Any]) -> str:
    return f"Tool call: {json.dumps({'tool': call_name, 'arguments': arguments}, ensure_ascii=False)}"


def build_prompt(task: str, state: str, call_name: str, arguments: dict[str, Any], examples: list[Transition]) -> list[dict[str, Any]]:
    """The chat messages the experience model is asked: the system message, then each retrieved example as a
    demonstration (the end of its state and its call, and an answer in the expected JSON with the real observation; the
    best match last, nearest the question), then the question (task, end of the state, the call)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example in reversed(examples):
        shown = example.as_example()
        answer = {"reasoning": template_reasoning(example), "observation": shown["observation"], "is_error": shown["is_error"]}
        asked = _call_text(example.tool, example.arguments)
        messages.append({"role": "user", "content": f"Interaction so far (end):\n{shown['state']}\n\n{asked}" if shown["state"] else asked})
        messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
    parts = [f"Task: {task or '(none recorded)'}"]
    if state:
        parts.append(f"Interaction so far (end):\n{state}")
    parts.append(_call_text(call_name, arguments))
    messages.append({"role": "user", "content": "\n\n".join(parts)})
    return messages


def load_fidelity(
    source: str | Path | Mapping[str, Any] | None, variant: str | None = None, *, model: str | None = None, app: str | None = None
) -> dict[str, float]:
    """Per-tool fidelity (token F1) from an ``ee experience eval --json`` report, or a tool -> score mapping.

    The report's variant is ``variant`` when given; otherwise the variant with retrieval that measured
    ``model`` (``retrieval`` for the base model, ``retrieval+trained`` for the trained one), and
    ``retrieval`` in reports that do not name their variants' models. A report measured on one app (``ee experience
    eval --app``) is refused for a sandbox replaying another ``app`` (two apps may have tools of one name over other
    worlds).
    """
    if source is None:
        return {}
    if isinstance(source, Mapping) and all(isinstance(v, (int, float)) for v in source.values()):
        unscored = {str(k): v for k, v in source.items() if not _is_score(v)}
        if unscored:  # (NaN compares false with every threshold: the tool passed any min_fidelity)
            tool, value = next(iter(unscored.items()))
            raise SandboxError(f"fidelity[{tool!r}] = {value!r} is not a {FIDELITY_METRIC} score: give a number from 0 to 1.")
        return {str(k): float(v) for k, v in source.items()}
    if isinstance(source, (str, Path)):
        try:
            source = json.loads(Path(source).expanduser().read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SandboxError(
                f"Cannot read the fidelity report {str(source)!r}: {exc}. Write one with 'ee experience eval --json'."
            ) from None
    variants = source.get("variants") if isinstance(source, Mapping) else None
    if not isinstance(variants, Mapping) or not variants:
        raise SandboxError("The fidelity report has no variants; write one with 'ee experience eval --json'.")
    measured_app = source.get("app") if isinstance(source, Mapping) else None
    if isinstance(measured_app, str) and app is not None and measured_app != app:
        raise SandboxError(
            f"The fidelity report measured the app {measured_app!r}, not {app!r}, which this replay runs: measure this app "
            f"with 'ee experience eval --app {app} --json'."
        )
    malformed = sorted(name for name, v in variants.items() if not _well_formed_variant(v))
    if malformed:
        raise SandboxError(
            f"The fidelity report's variant(s) {malformed} have no per-tool {FIDELITY_METRIC!r} scores: it is not a report of "
            "'ee experience eval --json' (or it was edited). Write a new one with that command."
        )
    if variant is None:
        measured = {name: v.get("model") for name, v in variants.items() if v.get("top_k", name != "no-retrieval")}
        if model is None or not any(measured.values()):
            variant = "retrieval"
        else:
            # compared as shown (credentials masked): a report of an earlier version may hold the spec as it was given
            matching = [name for name, m in measured.items() if isinstance(m, str) and shown_spec(m) == shown_spec(model)]
            if not matching:
                raise SandboxError(
                    f"The fidelity report measured {sorted({shown_spec(str(m)) for m in measured.values() if m})}, not "
                    f"{shown_spec(model)!r}. Measure this model "
                    "with 'ee experience eval --json', or name the report's variant to use with fidelity_variant."
                )
            variant = matching[-1]
    if variant not in variants:
        raise SandboxError(f"The fidelity report has no {variant!r} variant (it has {sorted(variants)}).")
    return {tool: float(row[FIDELITY_METRIC]) for tool, row in variants[variant]["tools"].items()}


def _well_formed_variant(variant: Any) -> bool:
    tools = variant.get("tools") if isinstance(variant, Mapping) else None
    return isinstance(tools, Mapping) and all(isinstance(row, Mapping) and _is_score(row.get(FIDELITY_METRIC)) for row in tools.values())


def _is_score(value: Any) -> bool:
    """A token F1 score: a number from 0 to 1 (not NaN, which passed every ``min_fidelity``; not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


_MIN_FIDELITY_EXAMPLE = 'min_fidelity = { "*" = 0.8, "send_email" = 0.9 }'


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _checked_min_fidelity(value: Any) -> dict[str, float]:
    """``min_fidelity`` as tool -> threshold; ``ValueError`` naming the setting and how to write it when it is not a table of
    numbers between 0 and 1 (a bare number, a string such as ``"0.6"``)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"min_fidelity must be a table of tool -> minimum {FIDELITY_METRIC} between 0 and 1 ('*' for every tool), got "
            f"{_shown(value)}. Write it as {_MIN_FIDELITY_EXAMPLE}"
            + (
                f', or min_fidelity = {{ "*" = {value} }} for every tool.'
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                else "."
            )
        )
    thresholds: dict[str, float] = {}
    for tool, threshold in value.items():
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            quoted = isinstance(threshold, str)
            raise ValueError(
                f"min_fidelity[{str(tool)!r}] must be a number between 0 and 1 (the minimum {FIDELITY_METRIC} for "
                f"{'every tool' if tool == '*' else repr(tool)}), got {_shown(threshold)}"
                + (". Write the number without quotes, e.g. " if quoted else ". Write a number between 0 and 1, e.g. ")
                + f"{_MIN_FIDELITY_EXAMPLE}."
            )
        thresholds[str(tool)] = float(threshold)
    return thresholds


def _checked_retriever_settings(value: Any, index: TransitionIndex | None) -> dict[str, Any]:
    """``retriever_settings`` as the retriever's keyword options; ``ValueError`` naming the setting and how to write it when
    it is not a table of named options, or is given with an ``index`` (whose retriever is built already)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ValueError(
            f"retriever_settings must be a table of the retriever's keyword options, got {_shown(value)}, e.g. "
            "retriever_settings = { k1 = 1.2, b = 0.75 } for bm25."
        )
    if value and index is not None:
        raise ValueError(
            "retriever_settings apply to the retriever the sandbox builds; with an index given, its retriever is built "
            "already: build the index with them (TransitionIndex.of(retriever, **settings)), or leave them out."
        )
    return dict(value)


def _check_settings(**settings: Any) -> None:
    """``ValueError`` naming the first setting whose value is not of the type (or range) the sandbox takes, and the fix."""
    top_k, max_tokens, refresh_s = settings["top_k"], settings["max_tokens"], settings["refresh_s"]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(
            f"top_k must be a whole number >= 0 (the real transitions shown to the model), got {_shown(top_k)}, e.g. top_k = 3."
        )
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(
            f"max_tokens must be a whole number >= 1 (tokens per prediction), got {_shown(max_tokens)}, e.g. max_tokens = 256."
        )
    if isinstance(refresh_s, bool) or not isinstance(refresh_s, (int, float)) or not refresh_s >= 0:
        raise ValueError(f"refresh_s must be a number of seconds >= 0, got {_shown(refresh_s)}, e.g. refresh_s = 60.")
    timeout_s = settings["timeout_s"]
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf):
        raise ValueError(
            f"timeout_s must be a finite number of seconds > 0 (per request to the model), got {_shown(timeout_s)}, e.g. "
            "timeout_s = 120, or timeout_s = 3600 for a model that may take very long (there is no 'no limit')."
        )
    for name, example in (
        ("real", 'real = "bfcl"'),
        ("fidelity_variant", 'fidelity_variant = "retrieval"'),
        ("app", 'app = "support-bot"'),
    ):
        if settings[name] is not None and not isinstance(settings[name], str):
            raise ValueError(f"{name} must be a string, got {_shown(settings[name])}, e.g. {example}.")
    fidelity = settings["fidelity"]
    if fidelity is not None and not isinstance(fidelity, (str, Path, Mapping)):
        raise ValueError(
            f"fidelity must be the path of an 'ee experience eval --json' report or a table of tool -> {FIDELITY_METRIC}, got "
            f'{_shown(fidelity)}, e.g. fidelity = "em-eval/report.json".'
        )
    excluded = settings["exclude_trajectories"]
    if excluded is not None and (
        isinstance(excluded, str)
        or not isinstance(excluded, (list, tuple, set, frozenset))
        or not all(isinstance(i, str) for i in excluded)
    ):
        raise ValueError(
            f'exclude_trajectories must be a list of trajectory ids, got {_shown(excluded)}, e.g. exclude_trajectories = ["ID"].'
        )
    for name in ("allow_network", "check_endpoint"):
        if not isinstance(settings[name], bool):
            raise ValueError(f"{name} must be true or false, got {_shown(settings[name])}.")


class ExperienceSandbox:
    """A sandbox whose observations an experience model predicts (see the module docstring).

    A setting of the wrong type or range (``min_fidelity = 0.6`` for a table, ``{"*" = "0.6"}`` for a number) is a
    ``ValueError`` naming it and how to write it; :func:`build_experience_sandbox` (``ee replay run``'s
    ``[replay.sandbox_settings]``) reports it, and an unknown setting, as the sandbox's bad options.
    ``timeout_knob`` is no setting: it is how the command that builds the sandbox sets ``timeout_s`` (``ee experience
    eval``: ``--timeout N``), which the model client's advice after a timeout names.
    """

    kind = "experience"
    _answered_kind: str | None = None

    def __init__(
        self,
        model: str | None = None,
        *,
        client: ChatClient | None = None,
        store: Any = None,
        app: str | None = None,
        index: TransitionIndex | None = None,
        retriever: str | Retriever | None = None,
        retriever_settings: Mapping[str, Any] | None = None,
        top_k: int = DEFAULT_TOP_K,
        real: str | None = None,
        min_fidelity: Mapping[str, float] | None = None,
        fidelity: str | Path | Mapping[str, Any] | None = None,
        fidelity_variant: str | None = None,
        max_tokens: int = 256,
        exclude_trajectories: list[str] | None = None,
        allow_network: bool = False,
        check_endpoint: bool = True,
        refresh_s: float = 60.0,
        timeout_s: float | None = None,
        timeout_knob: str = SANDBOX_TIMEOUT_KNOB,
    ) -> None:
        if client is None and not model:
            raise SandboxError("The experience sandbox needs a model: 'experience:local:DIR' or 'experience:openai:BASE_URL#MODEL'.")
        _check_settings(
            top_k=top_k,
            max_tokens=max_tokens,
            refresh_s=refresh_s,
            timeout_s=timeout_s,
            real=real,
            app=app,
            fidelity=fidelity,
            fidelity_variant=fidelity_variant,
            exclude_trajectories=exclude_trajectories,
            allow_network=allow_network,
            check_endpoint=check_endpoint,
        )
        retriever_settings = _checked_retriever_settings(retriever_settings, index)
        min_fidelity = _checked_min_fidelity(min_fidelity)
        if not min_fidelity and (fidelity is not None or fidelity_variant is not None):
            given = "fidelity" if fidelity is not None else "fidelity_variant"
            raise SandboxError(
                f"{given} is read only to hold tools to min_fidelity, which is not set: add {_MIN_FIDELITY_EXAMPLE} (the "
                f"tools whose measured {FIDELITY_METRIC} is below it are refused), or leave {given} out."
            )
        # the spec as printed and stored (synthetic observations' source, the fidelity report): credentials masked
        self.model = shown_spec(model) if model else str(getattr(client, "model", "client"))
        self._client = client
        self._store_spec = store
        self.app = app
        self._index = index
        # an unknown retriever, an option it takes no parameter for, or a missing extra fails here
        self._retriever = build_retriever(retriever, **retriever_settings) if index is None else None
        self.top_k = top_k
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._store: Any = None
        self._owns_store = False
        self._refreshed_at = 0.0
        self.max_tokens = max_tokens
        self.exclude_trajectories = set(exclude_trajectories or ())
        self.min_fidelity = dict(min_fidelity or {})
        self.fidelity = load_fidelity(fidelity, fidelity_variant, model=self.model, app=app) if self.min_fidelity else {}
        self._real = None
        if real:
            from ee_middleware.replay.sandboxes.registry import build_sandbox, sandbox_options

            self._real = build_sandbox(real, **sandbox_options(allow_network=allow_network))
        if self._client is None:
            self._client = build_model_client(model, timeout_s=timeout_s, timeout_knob=timeout_knob)  # type: ignore[arg-type]
        if check_endpoint:
            self._check_endpoint()
        self._trajectory: Trajectory | None = None
        self._step: Step | None = None
        self._provenance: dict[str, Any] | None = None
        self._closed = False

    # -- set-up ----------------------------------------------------------------------------------

    def _check_endpoint(self) -> None:
        """An OpenAI-compatible endpoint that is down fails here, before any work (one that answers ``/models`` with a
        refusal is up: :func:`~ee_middleware.models.spec.endpoint_problem`)."""
        from ee_middleware.models.spec import endpoint_problem

        problem = endpoint_problem(self._client)
        if problem is not None:
            raise SandboxError(f"The experience model's endpoint cannot be reached ({self.model}): {problem}")

    @property
    def index(self) -> TransitionIndex:
        """The replay buffer, built from the store on first use; :meth:`reset` adds what the store gained
        since, at most once every ``refresh_s`` seconds (reading the store is not free)."""
        if self._index is None:
            self._index = TransitionIndex(retriever=self._retriever or build_retriever())
            self._refresh()
        return self._index

    def _refresh(self) -> None:
        if self._store_spec is None or self._index is None:
            return
        if self._store is None:
            from ee_middleware.store.registry import open_store

            self._owns_store = isinstance(self._store_spec, (str, Path))
            self._store = open_store(self._store_spec, create=False) if self._owns_store else self._store_spec
        self._index.refresh(self._store, app=self.app)
        self._refreshed_at = time.monotonic()

    # -- the protocol ----------------------------------------------------------------------------

    def covers(self, tool_name: str) -> bool:
        if self._real is not None and self._real.covers(tool_name):
            return True
        return self.refusal_hint(tool_name) is None

    def refusal_hint(self, tool_name: str) -> str | None:
        """Why the experience model may not stand in for ``tool_name`` (low or unmeasured fidelity), or ``None``."""
        threshold = self.min_fidelity.get(tool_name, self.min_fidelity.get("*"))
        if threshold is None:
            return None
        measured = self.fidelity.get(tool_name)
        if measured is None:
            return (
                f"refused for low fidelity: the experience model's fidelity for {tool_name!r} was never measured (minimum {threshold}). "
                "Measure it with 'ee experience eval --json' and pass the report as fidelity."
            )
        if measured < threshold:
            return f"refused for low fidelity: the experience model's {FIDELITY_METRIC} for {tool_name!r} is {measured:.3f} < {threshold}."
        return None

    def check_offered_tools(self, tools: Any) -> None:
        """The real sandbox's check of the tools offered (see :meth:`PythonSandbox.check_offered_tools
        <ee_middleware.replay.sandboxes.python.PythonSandbox.check_offered_tools>`), where it has one."""
        check = getattr(self._real, "check_offered_tools", None)
        if check is not None:
            check(tools)

    def reset(self, environment: dict[str, Any] | None) -> None:
        self._check_open()
        if self._real is not None:
            self._real.reset(environment)
        if self._index is not None and time.monotonic() - self._refreshed_at >= self.refresh_s:
            self._refresh()
        self._trajectory, self._step, self._provenance = None, None, None

    def at_step(self, trajectory: Trajectory, step: Step) -> None:
        """The recorded step the next calls branch from (the runner calls this before branching)."""
        self._trajectory, self._step = trajectory, step

    def execute(self, call: ToolCall) -> Observation:
        from ee_middleware.records import Observation

        self._check_open()
        self._provenance = None
        if self._real is not None and self._real.covers(call.name):
            self._answered_kind = self._real.kind
            return self._real.execute(call)
        step = self._step
        expert = step.action.tool_call if step is not None else None
        if (
            step is not None
            and step.observation is not None
            and expert is not None
            and (expert.name, expert.arguments) == (call.name, call.arguments)
        ):
            self._answered_kind = RECORDED
            return step.observation  # the expert's own call: the recorded observation keeps the history real
        self._answered_kind = None
        prediction, examples = self.predict(call)
        self._provenance = {
            "model": self.model,
            "retrieved": [e.id for e in examples],
            "reasoning": prediction["reasoning"],
            "reward": prediction["reward"],
        }
        return Observation(content=prediction["observation"], is_error=prediction["is_error"])

    def predict(self, call: ToolCall, *, exclude_ids: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[Transition]]:
        """The model's parsed prediction for ``call`` at the current step, and the examples it was shown."""
        messages, examples = self.prompt(call, exclude_ids=exclude_ids)
        assert self._client is not None
        choices = self._client.complete(messages, n=1, sampling=Sampling(temperature=0.0, max_tokens=self.max_tokens))
        if not choices:
            raise SyntheticObservationError("the model returned no answer")
        choice = choices[0]
        if choice.problem is not None:
            raise SyntheticObservationError(choice.problem, choice.raw)
        cut = choice.cut_while_reasoning(self.max_tokens)  # not "the answer is empty": its max_tokens went to reasoning
        if cut is not None:
            raise SyntheticObservationError(cut, choice.raw)
        try:
            return parse_prediction(choice.text), examples
        except SyntheticObservationError as exc:
            if choice.finish_reason != "length":
                raise
            # the JSON is unreadable because the answer stopped at max_tokens: more tokens are the fix when it was on
            # its way to the object; prose that ran to the limit would run to any limit (the model is the fix too)
            cut = "the answer was cut off at max_tokens" if _began_json(choice.text) else CUT_BEFORE_JSON
            raise SyntheticObservationError(
                f"{cut} (finish_reason 'length'; raise max_tokens, now {self.max_tokens}: "
                f"`max_tokens` in [replay.sandbox_settings], or `ee experience eval --max-tokens`): {exc.reason}",
                exc.raw,
            ) from None

    def prompt(self, call: ToolCall, *, exclude_ids: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], list[Transition]]:
        """The messages the model is asked for ``call`` at the current step, and the retrieved examples in them."""
        trajectory, step = self._trajectory, self._step
        state = state_text(step.state) if step is not None else ""
        exclude = set(self.exclude_trajectories)
        if trajectory is not None:
            exclude.add(trajectory.id)  # never the transition being predicted, nor its own trajectory's answers
        examples = (
            self.index.search(call.name, call.arguments, state, k=self.top_k, exclude_ids=exclude_ids, exclude_trajectories=exclude)
            if self.top_k
            else []
        )
        return build_prompt(trajectory.task or "" if trajectory else "", state, call.name, call.arguments, examples), examples

    def provenance(self) -> dict[str, Any] | None:
        """The lineage of the last :meth:`execute`'s observation when the model wrote it; ``None`` when it is real."""
        return None if self._provenance is None else dict(self._provenance)

    @property
    def answered_kind(self) -> str | None:
        """Who answered the last :meth:`execute` with a real observation, the kind a rollout of it is stored under: the
        real sandbox's kind (``real``, for the tools it covers), :data:`RECORDED` for the expert's own call (its recorded
        observation); ``None`` when the model wrote it (:meth:`provenance` then says which, under ``experience``)."""
        return self._answered_kind

    def snapshot(self) -> Any:
        self._check_open()
        return (self._real.snapshot() if self._real is not None else None, self._trajectory, self._step)

    def restore(self, snapshot: Any) -> None:
        self._check_open()
        real, self._trajectory, self._step = snapshot
        if self._real is not None:
            self._real.restore(real)
        self._provenance = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._real is not None:
            self._real.close()
        if self._client is not None:
            self._client.close()
        if self._owns_store and self._store is not None:
            self._store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("The experience sandbox is closed.")


def build_experience_sandbox(spec: str, **options: Any) -> ExperienceSandbox:
    """The sandbox for ``experience:MODEL_SPEC`` (the registry's prefix form)."""
    from ee_middleware.replay.sandboxes.registry import SANDBOXES

    model = spec.strip()[len(PREFIX) :].strip()
    if not model:
        raise SandboxError("Write the experience sandbox as 'experience:MODEL_SPEC', e.g. 'experience:openai:http://127.0.0.1:8000/v1#em'.")
    if "model" in options:
        raise SandboxError(
            f"Bad options for sandbox {shown_spec(spec)!r}: the model is the sandbox spec's own ('experience:MODEL_SPEC'), not a setting: "
            "leave out model."
        )
    if "timeout_knob" in options:
        raise SandboxError(
            f"Bad options for sandbox {shown_spec(spec)!r}: timeout_knob is not a setting; set the model's request timeout with timeout_s."
        )
    # The registry's checks, as for every sandbox: an unknown setting is 'Bad options' (with a did-you-mean), a value of the
    # wrong type or range 'Bad settings' (see ExperienceSandbox), each naming the setting and the fix.
    return SANDBOXES.construct(spec, ExperienceSandbox, model, **options)
