"""Teachers write self-reflection rationales: why the chosen action beats the alternatives.

A teacher receives a :class:`ReflectionCase` (the situation, the action taken and its real outcome,
and alternatives with their real outcomes) and returns a short first-person rationale. Built-ins:

* ``template``: a deterministic template teacher for tests and the demo (no model; its rationales
  only restate the outcomes);
* ``local:MODEL_DIR[@ADAPTER]``: a local transformers model, greedy decoding;
* ``openai:BASE_URL#MODEL``: any OpenAI-compatible endpoint (e.g. a vLLM serving a bigger model);
* ``package.module:factory`` or an ``ee_middleware.teachers`` entry point: a user's own teacher.

Model-backed teachers are thin users of :mod:`ee_middleware.models` (one client, one spec grammar).

A teacher of your own keeps :class:`Teacher`'s promises; check it with the conformance kit every built-in teacher passes:
``check_teacher(lambda: MyTeacher(...))`` from :mod:`ee_middleware.trainers.datasets.testing` (``deterministic=True``
for a teacher that draws nothing at random).

Prompts never say which action is the reference one's label: no "expert", no "Action 1/2".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ee_middleware.errors import ConfigError, EEError
from ee_middleware.messages import one_line
from ee_middleware.models.local import LocalGenerator
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.protocol import ChatClient, Sampling
from ee_middleware.models.spec import MODEL_FORMS, build_from_spec, is_model_spec
from ee_middleware.plugins import PluginKind


@dataclass(frozen=True)
class CallReflection:
    """One call of a turn of parallel tool calls: the call, its real outcome, and the alternatives replayed in its place
    (each with its real outcome)."""

    action: str
    """The call, as ``name(arguments)``."""
    outcome: str
    tool: str
    alternatives: list[tuple[str, str]] = field(default_factory=list)
    """``(action, outcome)`` pairs, replayed from the state in place of this call."""
    alternative_tools: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReflectionCase:
    """One state with the action taken there and the alternatives, all with real outcomes.

    When the action taken is several tool calls made at once (one model response; replay branched each call), ``calls``
    holds them in order, each with the alternatives replayed in its place, and the fields above hold the whole turn,
    for a teacher that reads only them: ``chosen`` the calls joined by ``"; "``, ``chosen_outcome`` their outcomes
    likewise, ``alternatives`` every call's alternatives, ``chosen_tool`` the first call's tool."""

    task: str
    context: str
    """The last messages before the decision, as plain text."""
    chosen: str
    """The action taken, as ``name(arguments)``."""
    chosen_outcome: str
    alternatives: list[tuple[str, str]] = field(default_factory=list)
    """``(action, outcome)`` pairs."""
    chosen_tool: str = ""
    alternative_tools: list[str] = field(default_factory=list)
    calls: list[CallReflection] = field(default_factory=list)
    """The calls of a turn of parallel tool calls, in order; empty when the action is one call."""

    @property
    def chosen_tools(self) -> list[str]:
        """The tools the action taken calls."""
        return [c.tool for c in self.calls] if self.calls else [self.chosen_tool]


def teacher_prompt(case: ReflectionCase) -> str:
    """The label-free prompt a model teacher receives (for parallel calls: each call's alternatives under it)."""
    lines = [f"You are working on this task: {case.task}", "", "Recent conversation:", case.context or "(none)", ""]
    if not case.calls:
        lines += [
            f"You took this action: {case.chosen}",
            f"It returned: {case.chosen_outcome}",
            "",
            "Other actions you could have taken, and what they would have returned:",
        ]
        lines += [f"- {action} -> {outcome}" for action, outcome in case.alternatives]
        what = "the action you took is"
    else:
        lines.append("You made these calls at once:")
        lines += [f"- {call.action} returned: {call.outcome}" for call in case.calls]
        lines += ["", "Other calls you could have made in place of each of them, and what they would have returned:"]
        for call in case.calls:
            if call.alternatives:
                lines.append(f"In place of {call.action}:")
                lines += [f"- {action} -> {outcome}" for action, outcome in call.alternatives]
        what = "the calls you made are"
    lines += [
        "",
        f"In two to four sentences, in the first person, explain why {what} the right next step, "
        "using what each action returns. Do not mention these instructions and do not number the actions.",
    ]
    return "\n".join(lines)


@runtime_checkable
class Teacher(Protocol):
    """Writes one rationale per case. A teacher that holds a model or connections may also have a ``close()``, which a
    dataset build calls once it is done with the teacher (:func:`closing_teacher`).

    ``name``: a non-empty str, the same all along (every SR row records it). ``write(cases)``: one text per case, in
    their order (``None`` or ``""`` where it has none: that case gives no row), as a list or another iterable that is
    not a str or a mapping, also for ``[]``; it leaves the cases as they were. ``close()`` may be called more than
    once, also on a teacher that never wrote; a ``write`` after it works again or raises an error saying the teacher is
    closed. :func:`ee_middleware.trainers.datasets.testing.check_teacher` checks all of this."""

    name: str

    def write(self, cases: list[ReflectionCase]) -> list[str]: ...


GARBLED = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""What no rationale holds: the replacement character a decode of broken bytes writes, control characters (but tabs and
line breaks)."""


def _outcome(text: str | None, width: int) -> str:
    """A tool's answer on one line for a rationale, without :data:`GARBLED` characters (a binary or badly decoded
    result would make the rationale no prose, and the SR guards drop it); an empty answer is called so."""
    if not text or not text.strip():
        return "an empty result"
    return one_line(GARBLED.sub(" ", text), width) or "a result that is no text"


class TemplateTeacher:
    """Deterministic rationales built from the outcomes (for tests and the demo; no model)."""

    name = "template"

    def write(self, cases: list[ReflectionCase]) -> list[str]:
        return [self._one(case) for case in cases]

    @staticmethod
    def _one(case: ReflectionCase) -> str:
        if not case.calls:
            parts = [f"I call {case.chosen} because it returns {_outcome(case.chosen_outcome, 120)}, which moves the task forward."]
            parts += [_sentence(f"Calling {action} {_effect(outcome, case.chosen_outcome)}") for action, outcome in case.alternatives]
            return " ".join(parts)
        actions = _and([call.action for call in case.calls])
        outcomes = _and([f"{call.action} returns {_outcome(call.outcome, 120)}" for call in case.calls])
        parts = [f"I call {actions} together because {outcomes}, which moves the task forward."]
        for call in case.calls:  # each call's alternatives, in the turn's order
            parts += [
                _sentence(f"In place of {call.action}, calling {action} {_effect(outcome, call.outcome)}")
                for action, outcome in call.alternatives
            ]
        return " ".join(parts)


def _effect(outcome: str, chosen_outcome: str) -> str:
    """What an alternative's outcome does, for a template rationale, beside the outcome of the call it stands in place
    of: the same outcome is said to be the same (never worse)."""
    if outcome == chosen_outcome:
        return "returns the same result"
    if outcome.lower().lstrip("{\"' ").startswith("error") or '"error"' in outcome.lower():
        return f"fails with {_outcome(outcome, 100)}"
    return f"returns {_outcome(outcome, 100)}, which does not do what the task asks"


def _sentence(text: str) -> str:
    """``text`` ended with a period, unless it ends a sentence already: an outcome quoted last may (an error's message,
    LangGraph's ``ToolNode`` template ``... Please fix your mistakes.``), and a second period read ``mistakes..``."""
    return text if text.endswith((".", "!", "?")) else text + "."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class ModelTeacher:
    """A chat model writes the rationales, greedily (temperature 0), one request per case.

    A rationale is what the model said (:attr:`~ee_middleware.models.protocol.Choice.text`): reasoning a model served
    without a reasoning parser writes inline (``<think>...</think>``) is not part of it. A reasoning model's answer that
    stopped at ``max_tokens`` (``finish_reason`` ``"length"``) gives no rationale (an empty text, which the guards drop):
    its budget went to reasoning, so what it said, if anything, is half a sentence or half a thought; give it more
    ``max_tokens``.

    The client stays open between batches (a local model is loaded once, on the first case); :meth:`close` releases
    it when the build is done (:func:`closing_teacher`)."""

    def __init__(self, client: ChatClient, *, name: str, max_tokens: int = 256) -> None:
        self.client = client
        self.name = name
        self.max_tokens = max_tokens

    def write(self, cases: list[ReflectionCase]) -> list[str]:
        sampling = Sampling(temperature=0.0, max_tokens=self.max_tokens)
        out = []
        for case in cases:
            [choice, *_] = self.client.complete([{"role": "user", "content": teacher_prompt(case)}], n=1, sampling=sampling)
            cut_reasoning = choice.finish_reason == "length" and choice.reasoning is not None
            out.append("" if cut_reasoning else choice.text.strip())  # an answer without text counts as an empty rationale in the guards
        return out

    def close(self) -> None:
        """Release the client: a local model leaves memory, an endpoint's connections close (a later :meth:`write`
        opens them again)."""
        self.client.close()


class LocalTeacher(ModelTeacher):
    """A local transformers model (optionally with a LoRA adapter) writes the rationales."""

    def __init__(self, model_dir: str, *, adapter: str | None = None, max_new_tokens: int = 160, num_threads: int = 1) -> None:
        generator = LocalGenerator(model_dir, adapter=adapter, num_threads=num_threads)
        super().__init__(generator, name=f"local:{os.path.basename(os.path.normpath(model_dir))}", max_tokens=max_new_tokens)
        self.model_dir = model_dir


class OpenAITeacher(ModelTeacher):
    """Any OpenAI-compatible endpoint writes the rationales (with the client's retries and typed errors)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0, max_tokens: int = 256) -> None:
        client = OpenAIChatClient(base_url, model, api_key=api_key, timeout_s=timeout_s, tool_choice=None)
        super().__init__(client, name=f"openai:{model}", max_tokens=max_tokens)
        self.url = client.url


TEACHERS = PluginKind(
    kind="teacher",
    group="ee_middleware.teachers",
    error=ConfigError,
    builtins={"template": "ee_middleware.trainers.datasets.teachers:TemplateTeacher"},
    protocol=Teacher,
    requires="a 'name' attribute and a 'write(cases) -> list[str]' method",
    forms=MODEL_FORMS,
    options_from="--teacher-setting KEY=VALUE or a [datasets.teacher_settings] table in the --config file",
)


@contextmanager
def closing_teacher(teacher: Teacher | None) -> Iterator[Teacher | None]:
    """Use ``teacher`` for a whole build, then close it (its ``close()``, where it has one: a model teacher releases its
    model), also when the build fails."""
    try:
        yield teacher
    finally:
        close = getattr(teacher, "close", None)
        if callable(close):
            close()


def build_teacher(spec: str, **options: Any) -> Teacher:
    """The teacher ``spec`` names: ``template``, ``local:MODEL_DIR[@ADAPTER]``, ``openai:BASE_URL#MODEL`` or a plug-in."""
    return build_from_spec(spec, TEACHERS, local=LocalTeacher, openai=OpenAITeacher, **options)


def write_rationales(teacher: Teacher, cases: list[ReflectionCase], *, spec: str | None = None) -> list[str | None]:
    """``teacher.write(cases)``, checked: one text (or None: no rationale) per case, in their order. Anything else, and
    an error a plug-in teacher raises (other than ee's own, which say what is wrong already), is this registry's error
    naming the teacher (``spec``, else its ``name``) and, for an error, where in its code it was raised. A built-in
    teacher's error (``template``, ``local:``, ``openai:``: a CUDA out-of-memory error while a local model generates)
    passes as it is: it is not the user's code's."""
    named = spec or str(getattr(teacher, "name", None) or type(teacher).__name__)
    try:
        texts: Any = teacher.write(cases)
        if isinstance(texts, Iterable) and not isinstance(texts, str | bytes | Mapping):
            texts = list(texts)  # a generator's own code runs now
    except Exception as exc:
        # ee's own errors say what is wrong already; a plain ConfigError is a bad value in the plug-in's own code (a
        # Sampling(temperature=-1) it built), which needs where it was raised as a ValueError did
        if not _is_plugin_teacher(teacher, spec) or (isinstance(exc, EEError) and type(exc) is not ConfigError):
            raise
        raise TEACHERS.failed_at_work(named, "write(cases)", exc) from exc
    contract = (
        "write(cases) must return a list of one text per case, in the order of the cases (an empty text or None for a case "
        "it has no rationale for: that case gives no row)"
    )
    if not isinstance(texts, list):
        raise TEACHERS.error(f"The teacher {named!r} returned {type(texts).__name__} for {len(cases)} cases: {contract}.")
    if len(texts) != len(cases):
        raise TEACHERS.error(f"The teacher {named!r} returned {len(texts)} texts for {len(cases)} cases: {contract}.")
    for i, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TEACHERS.error(
                f"The teacher {named!r} returned {type(text).__name__} for case {i} of {len(cases)} ({one_line(repr(text), 80)}), "
                f"not a text: {contract}."
            )
    return texts


def _is_plugin_teacher(teacher: Teacher, spec: str | None) -> bool:
    """Whether ``teacher`` is a user's (a ``package.module:factory`` or an entry point, a chat client of theirs
    included), not a built-in one (``template``, a model form): by ``spec`` where given, else by its class's module."""
    if spec is not None:
        return not (is_model_spec(spec) or spec.strip() in TEACHERS.builtins)
    return type(teacher).__module__.partition(".")[0] != "ee_middleware"


def describe(case: ReflectionCase) -> str:
    """The case as JSON (for debugging and ``ee datasets show``)."""
    return json.dumps(case.__dict__, ensure_ascii=False)
