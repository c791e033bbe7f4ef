"""Policies that ask a chat model for the K alternatives: any :class:`~ee_middleware.models.ChatClient`.

One ``complete`` call per decision point: the recorded state as the messages, the offered tools,
``n=k`` and the seed (the OpenAI-compatible client asks again where a server answers fewer; a client that still
answers fewer than ``k`` is warned about once, :class:`~ee_middleware.models.openai_compat.FewerChoicesWarning`, and
counted in :attr:`ChatPolicy.short_answers`; :meth:`ChatPolicy.answer_counts` gives both counts, which a replay's
records and summary carry). Every tool call of every answer becomes a candidate; an answer without tool
calls has its text parsed; what cannot be read becomes a candidate with a problem, which the
proposer counts as ``unparsable``. A model that cannot answer at all (server down, folder missing)
raises :class:`~ee_middleware.errors.ModelError`, which ends the replay with that message.

- :class:`ChatPolicy` wraps any chat client (a user's own, or one built from a model spec);
- :class:`OpenAIPolicy` is one over an OpenAI-compatible server (vLLM, ...);
- :class:`TransformersPolicy` is one over a local transformers model (``train`` extra).
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

from ee_middleware.errors import PolicyError
from ee_middleware.models.local import LocalGenerator
from ee_middleware.models.openai_compat import NO_CHOICES, FewerChoicesWarning, OpenAIChatClient
from ee_middleware.models.parsing import ParseProblem
from ee_middleware.models.protocol import ChatClient, Sampling
from ee_middleware.records import ProposerInfo
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.policies.schema import tool_schemas_for

_COUNT_LOCK = threading.Lock()
"""Held while a policy counts short answers (states are proposed for from several threads; a module's lock: policies
stay picklable)."""


class ChatPolicy:
    """Proposes alternatives by sampling ``k`` answers from a chat model.

    ``settings`` are extra lineage fields stored in each candidate's proposer record.
    """

    def __init__(
        self,
        client: ChatClient,
        *,
        name: str = "chat",
        temperature: float = 1.0,
        top_p: float | None = None,
        max_tokens: int = 256,
        settings: dict[str, Any] | None = None,
    ) -> None:
        try:
            Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        except ValueError as exc:
            raise PolicyError(f"Bad sampling settings for policy {name!r}: {exc}") from exc
        self.client = client
        self.name = name
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.settings = dict(settings or {})
        self.short_answers = 0
        """How many :meth:`propose` calls the client answered with fewer than ``k`` answers (the proposer's refill
        supplies the rest)."""
        self.missing_answers = 0
        """How many answers those calls lacked in all."""

    def describe(self) -> dict[str, Any]:
        """The client's description and the sampling settings."""
        return {
            "policy": self.name,
            **self.client.describe(),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }

    def close(self) -> None:
        """Close the client (connections, or the model's memory)."""
        self.client.close()

    def answer_counts(self) -> dict[str, int]:
        """How often the model answered fewer than asked, so far (the names of
        :data:`~ee_middleware.records.FEWER_ANSWERS`): this policy's :attr:`short_answers` and :attr:`missing_answers`,
        and its client's ``short_answers`` (as ``server_short_answers``), ``extra_requests`` and ``failed_requests`` (as
        ``failed_extra_requests``) where it counts them (:class:`~ee_middleware.models.openai_compat.OpenAIChatClient`
        does). A replay worker puts them in its records, and the job's summary sums them over every worker."""
        client = {
            "server_short_answers": "short_answers",
            "extra_requests": "extra_requests",
            "failed_extra_requests": "failed_requests",
        }
        counts = {"short_answers": self.short_answers, "missing_answers": self.missing_answers}
        for name, attribute in client.items():
            value = getattr(self.client, attribute, 0)
            counts[name] = value if isinstance(value, int) and not isinstance(value, bool) else 0  # a user's client: ints only
        return counts

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        """``k`` sampled answers at ``point``; every tool call (or problem) in them is a candidate."""
        if k <= 0:
            return Proposals()
        sampling = Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=seed)
        choices = self.client.complete(point.state, tools=point.tools or None, n=k, sampling=sampling)
        answered = sum(choice.problem != NO_CHOICES for choice in choices)  # not the problem standing for none
        if answered < k:
            self._note_short(k, answered)
        proposer = ProposerInfo(
            policy=self.name, model=self.client.model, temperature=self.temperature, top_p=self.top_p, seed=seed, settings=self.settings
        )
        param_order = tool_schemas_for(point.tools).param_order()
        candidates = []
        for choice in choices:
            for item in choice.tool_calls(param_order=param_order):
                if isinstance(item, ParseProblem):
                    candidates.append(Candidate(call=None, proposer=proposer, raw=choice.raw, problem=item.problem))
                else:
                    candidates.append(Candidate(call=item, proposer=proposer, raw=choice.raw))
        return Proposals(candidates)

    def _note_short(self, k: int, answered: int) -> None:
        with _COUNT_LOCK:
            first = self.short_answers == 0
            self.short_answers += 1
            self.missing_answers += k - answered
        if first:
            warnings.warn(
                f"The policy {self.name!r} asked {self.client.model!r} for {k} answers and got {answered}: the model's client "
                "gives fewer answers than asked, so the proposer's refill (schema mutations) supplies the rest. (Said once "
                "per policy; its short_answers and missing_answers count this.)",
                FewerChoicesWarning,
                stacklevel=3,
            )


POLICY_TIMEOUT_KNOB = "`--policy-setting timeout_s=N`, or timeout_s under [replay.policy_settings]"
"""How a replay's user sets the served policy's ``timeout_s`` (what the advice after a timeout names)."""


class OpenAIPolicy(ChatPolicy):
    """Proposes alternatives with an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` is the API root including the version (``http://127.0.0.1:8000/v1`` for vLLM).
    ``api_key`` defaults to ``EE_OPENAI_API_KEY``, then ``OPENAI_API_KEY``. ``retries`` is the
    number of extra attempts after a connection error, a timeout, a 429 or a 5xx, with
    ``backoff_s`` doubling between them (see :class:`~ee_middleware.models.OpenAIChatClient`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = 1.0,
        top_p: float | None = None,
        max_tokens: int = 256,
        timeout_s: float = 60.0,
        tool_choice: str | dict[str, Any] | None = "auto",
        retries: int = 2,
        backoff_s: float = 0.5,
        extra_body: dict[str, Any] | None = None,
        transport: Any = None,
        name: str = "openai",
    ) -> None:
        try:
            client = OpenAIChatClient(
                base_url,
                model,
                api_key=api_key,
                timeout_s=timeout_s,
                retries=retries,
                backoff_s=backoff_s,
                tool_choice=tool_choice,
                extra_body=extra_body,
                transport=transport,
                timeout_knob=POLICY_TIMEOUT_KNOB,
            )
        except ValueError as exc:
            raise PolicyError(str(exc)) from exc
        super().__init__(
            client, name=name, temperature=temperature, top_p=top_p, max_tokens=max_tokens, settings={"base_url": client.base_url}
        )
        self.client: OpenAIChatClient = client

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def model(self) -> str:
        return self.client.model

    @property
    def retries(self) -> int:
        return self.client.retries

    @property
    def url(self) -> str:
        """The chat-completions URL requests go to."""
        return self.client.url

    def describe(self) -> dict[str, Any]:
        """Endpoint, model and sampling settings (never the API key)."""
        return {
            "policy": self.name,
            "base_url": self.client.base_url,
            "model": self.client.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "tool_choice": self.client.tool_choice,
        }


class TransformersPolicy(ChatPolicy):
    """Samples alternatives from a local causal language model with transformers.

    ``model`` is a folder saved with ``save_pretrained`` or a ``.gguf`` file; ``adapter`` a LoRA
    adapter folder applied on load. The model loads on the first ``propose``. Use
    :meth:`from_objects` for a model and tokenizer already in memory. ``num_threads`` sets
    ``torch.set_num_threads`` on first use (``None`` leaves it alone).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        adapter: str | os.PathLike[str] | None = None,
        temperature: float = 1.0,
        top_p: float = 0.95,
        max_new_tokens: int = 160,
        num_threads: int | None = 1,
        device: str = "cpu",
        gguf_file: str | None = None,
        model_name: str | None = None,
        name: str = "transformers",
    ) -> None:
        generator = LocalGenerator(
            model, adapter=adapter, gguf_file=gguf_file, num_threads=num_threads, device=device, model_name=model_name
        )
        super().__init__(generator, name=name, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
        self.client: LocalGenerator = generator

    @classmethod
    def from_objects(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str = "in-memory",
        temperature: float = 1.0,
        top_p: float = 0.95,
        max_new_tokens: int = 160,
        num_threads: int | None = 1,
        device: str = "cpu",
        name: str = "transformers",
    ) -> TransformersPolicy:
        """A policy around a model and tokenizer already built (tests, notebooks, a model being trained)."""
        self = cls.__new__(cls)
        generator = LocalGenerator.from_objects(model, tokenizer, model_name=model_name, num_threads=num_threads, device=device)
        ChatPolicy.__init__(self, generator, name=name, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
        self.client = generator
        return self

    @property
    def max_new_tokens(self) -> int:
        return self.max_tokens

    def describe(self) -> dict[str, Any]:
        """The model and the sampling settings."""
        described = {
            "policy": self.name,
            "model": self.client.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_tokens,
            "device": self.client.device,
        }
        if self.client.describe()["adapter"]:
            described["adapter"] = self.client.describe()["adapter"]
        return described
