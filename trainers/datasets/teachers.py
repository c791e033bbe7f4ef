"""Teachers write self-reflection rationales: why the chosen action beats the alternatives.

A teacher receives a :class:`ReflectionCase` (the situation, the action taken and its real outcome,
and alternatives with their real outcomes) and returns a short first-person rationale. Built-ins:

* ``template``: a deterministic template teacher for tests and the demo (no model; its rationales
  only restate the outcomes);
* ``local:MODEL_DIR``: a local transformers model, greedy decoding;
* ``openai:BASE_URL#MODEL``: any OpenAI-compatible endpoint (e.g. a vLLM serving a bigger model).

Prompts never say which action is the reference one's label: no "expert", no "Action 1/2".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ee_middleware._optional import import_optional
from ee_middleware.errors import ConfigError, PolicyError
from ee_middleware.messages import one_line


@dataclass(frozen=True)
class ReflectionCase:
    """One state with the action taken there and the alternatives, all with real outcomes."""

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


def teacher_prompt(case: ReflectionCase) -> str:
    """The label-free prompt a model teacher receives."""
    lines = [
        f"You are working on this task: {case.task}",
        "",
        "Recent conversation:",
        case.context or "(none)",
        "",
        f"You took this action: {case.chosen}",
        f"It returned: {case.chosen_outcome}",
        "",
        "Other actions you could have taken, and what they would have returned:",
    ]
    lines += [f"- {action} -> {outcome}" for action, outcome in case.alternatives]
    lines += [
        "",
        "In two to four sentences, in the first person, explain why the action you took is the right next step, "
        "using what each action returns. Do not mention these instructions and do not number the actions.",
    ]
    return "\n".join(lines)


@runtime_checkable
class Teacher(Protocol):
    """Writes one rationale per case."""

    name: str

    def write(self, cases: list[ReflectionCase]) -> list[str]: ...


class TemplateTeacher:
    """Deterministic rationales built from the outcomes (for tests and the demo; no model)."""

    name = "template"

    def write(self, cases: list[ReflectionCase]) -> list[str]:
        return [self._one(case) for case in cases]

    @staticmethod
    def _one(case: ReflectionCase) -> str:
        parts = [f"I call {case.chosen} because it returns {one_line(case.chosen_outcome, 120)}, which moves the task forward."]
        for action, outcome in case.alternatives:
            failed = outcome.lower().lstrip("{\"' ").startswith("error") or '"error"' in outcome.lower()
            effect = (
                f"fails with {one_line(outcome, 100)}"
                if failed
                else f"returns {one_line(outcome, 100)}, which does not do what the task asks"
            )
            parts.append(f"Calling {action} {effect}.")
        return " ".join(parts)


class LocalTeacher:
    """A local transformers model writes the rationales (greedy, ``max_new_tokens``)."""

    name = "local"

    def __init__(self, model_dir: str, *, max_new_tokens: int = 160, num_threads: int = 1) -> None:
        if not os.path.exists(model_dir):
            raise ConfigError(f"Teacher model folder {model_dir} does not exist. Pass --teacher local:PATH to a saved transformers model.")
        self.model_dir = model_dir
        self.max_new_tokens = max_new_tokens
        self.num_threads = num_threads
        self._parts: tuple[Any, Any] | None = None
        self.name = f"local:{os.path.basename(os.path.normpath(model_dir))}"

    def _load(self) -> tuple[Any, Any]:
        if self._parts is None:
            torch = import_optional("torch", extra="train", purpose="run a local teacher model")
            transformers = import_optional("transformers", extra="train", purpose="run a local teacher model")
            torch.set_num_threads(self.num_threads)
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                model = transformers.AutoModelForCausalLM.from_pretrained(self.model_dir, local_files_only=True)
            except Exception as exc:
                raise ConfigError(f"Teacher model {self.model_dir} could not be loaded offline: {exc}") from exc
            model.eval()
            self._parts = (model, tokenizer)
        return self._parts

    def write(self, cases: list[ReflectionCase]) -> list[str]:
        import torch

        model, tokenizer = self._load()
        out = []
        for case in cases:
            messages = [{"role": "user", "content": teacher_prompt(case)}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with torch.no_grad():
                generated = model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            out.append(tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
        return out


class OpenAITeacher:
    """Any OpenAI-compatible endpoint writes the rationales (temperature 0)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0, max_tokens: int = 256) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key or os.environ.get("EE_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.name = f"openai:{model}"

    def write(self, cases: list[ReflectionCase]) -> list[str]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        out = []
        with httpx.Client(timeout=self.timeout_s, headers=headers) as client:
            for case in cases:
                body = {
                    "model": self.model,
                    "messages": [{"role": "user", "content": teacher_prompt(case)}],
                    "temperature": 0,
                    "max_tokens": self.max_tokens,
                }
                try:
                    response = client.post(self.url, json=body)
                except httpx.HTTPError as exc:
                    raise PolicyError(f"The teacher at {self.url} cannot be reached ({exc}). Is the server running?") from exc
                if response.status_code >= 400:
                    raise PolicyError(f"The teacher at {self.url} answered HTTP {response.status_code}: {response.text[:300]}")
                try:
                    out.append(str(response.json()["choices"][0]["message"]["content"] or "").strip())
                except (ValueError, KeyError, IndexError, TypeError):
                    out.append("")  # counted as an empty rationale by the guards
        return out


def build_teacher(spec: str) -> Teacher:
    """``template``, ``local:MODEL_DIR`` or ``openai:BASE_URL#MODEL``."""
    if spec == "template":
        return TemplateTeacher()
    kind, _, rest = spec.partition(":")
    if kind == "local" and rest:
        return LocalTeacher(rest)
    if kind == "openai" and "#" in rest:
        url, _, model = rest.rpartition("#")
        return OpenAITeacher(url, model)
    raise ConfigError(f"Unknown teacher {spec!r}. Use template, local:MODEL_DIR or openai:BASE_URL#MODEL.")


def describe(case: ReflectionCase) -> str:
    """The case as JSON (for debugging and ``ee datasets show``)."""
    return json.dumps(case.__dict__, ensure_ascii=False)
