"""The local model server: one transformers base model in memory, LoRA adapters switched per request.

OpenAI-compatible, with vLLM's runtime LoRA API, so the rest of the system sees one interface for it
and for vLLM (:class:`~ee_middleware.adapters.serving.backend.LocalBackend`):

- ``POST /v1/chat/completions`` — ``model`` is the served base name or a loaded adapter name;
  ``messages``, ``tools``, ``n``, ``seed``, ``temperature``, ``top_p``, ``max_tokens``; tool calls the
  model writes as ``<tool_call>{...}</tool_call>`` come back as ``tool_calls`` (vLLM's ``hermes``
  parser does the same) unless ``tool_choice`` is ``none`` (``required`` or a named function is a 400:
  this server cannot force a call); ``stop`` strings end an answer; ``finish_reason`` is ``length`` for
  an answer cut at ``max_tokens`` (calls read from it before the cut or not), and ``usage`` counts the tokens
  generated; a prompt that, with its ``max_tokens``
  (default 256, at most what the context leaves), does not fit in the model's context is a 400 worded as vLLM's
  ("This model's maximum context length is N tokens. However, you requested M tokens ..."), never cut to fit;
  ``tool_choice`` without ``tools`` (other than ``none``) or naming a function not among them is a 400, as in vLLM;
  ``"stream": true`` sends the answer as OpenAI's ``chat.completion.chunk``
  server-sent events once it is generated whole (the wire format clients expect, not token by
  token), with a usage chunk when ``stream_options.include_usage`` is set;
- ``GET /v1/models``, ``GET /health``;
- ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` — vLLM's status codes: 400 for a
  name already loaded, 404 for a missing path, 500 for a rank above ``--max-lora-rank``; and 400 naming both models for
  an adapter whose ``adapter_config.json`` names another base than the served one (as ``ee adapters promote`` compares
  them), which vLLM would load;
- ``POST /tokenize`` — ``{"model", "messages", "tools", "add_generation_prompt"}`` -> ``{"tokens", "count"}``,
  like vLLM's, to check that the served prompt is the trained one.

Prompts are rendered by :mod:`ee_middleware.models.chat_template` (the trainer's rendering), with
``--chat-template FILE`` replacing the tokenizer's template as vLLM's flag does. Once it answers, it records how it
renders and its ``--max-lora-rank`` (:mod:`~ee_middleware.adapters.serving.rendering`), so a promote can check an adapter
against them before loading it. Requests run one at
a time (one lock around the model; a request for an adapter unloaded while it waited for its turn is a 404, never
answered by the base under the adapter's name); loading an adapter takes tens of milliseconds and never reloads
the base. SIGTERM stops it as Ctrl-C does (its state file removed): it takes no new connection, closes idle ones, answers
the requests in flight within ``EE_STOP_GRACE_S`` (default 8 s; 503 after that, or at once on a second signal, which
exits 130) and exits 0. Run it with ``ee serve local --base DIR`` (or ``python -m`` this module).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

from ee_middleware._lifetime import termination_as_interrupt
from ee_middleware._optional import import_optional
from ee_middleware.adapters.errors import AdapterFilesError
from ee_middleware.adapters.records import adapter_rank
from ee_middleware.adapters.serving.http import (
    LOCAL_SERVER_OWNER,
    ClientGone,
    EventStream,
    JSONHandler,
    RequestError,
    StoppingHTTPServer,
    check_port_free,
    make_server,
    sse_event,
    stop_grace_s,
    stop_serving,
    wants_stream,
)
from ee_middleware.adapters.serving.rendering import forget_server, record_server
from ee_middleware.adapters.templates import local_served_template, refusal_to_serve
from ee_middleware.errors import ChatTemplateError
from ee_middleware.models.bases import adapter_base, same_base
from ee_middleware.models.chat_template import TemplateDoesNotCompileError, TemplateShowsNoTextError, probe_template, render_prompt
from ee_middleware.models.local import Generated, LocalGenerator, load_pretrained
from ee_middleware.models.openai_compat import SERVE_API_KEY_ENV
from ee_middleware.models.parsing import ParseProblem, parse_tool_calls
from ee_middleware.models.protocol import Sampling

_PURPOSE = "run the local model server"
DEFAULT_MAX_LORA_RANK = 16
DEFAULT_MAX_TOKENS = 256
"""An answer's token budget when a request sets no ``max_tokens`` (at most what the context leaves)."""


class LocalModelServer:
    """The model side: the base model, the loaded adapters, rendering and generation.

    Raises :class:`~ee_middleware.models.chat_template.TemplateShowsNoTextError` for a chat template (the base's own,
    or ``chat_template``) that renders no message text, worded for serving and naming the fix (``--chat-template``), and
    :class:`~ee_middleware.models.chat_template.TemplateDoesNotCompileError` for one that is not valid Jinja, naming the
    file and the syntax error."""

    def __init__(
        self,
        base: str | Path,
        *,
        served_model_name: str | None = None,
        max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
        chat_template: str | Path | None = None,
        num_threads: int | None = 1,
    ) -> None:
        self.torch = import_optional("torch", extra="serve", purpose=_PURPOSE)
        self.peft = import_optional("peft", extra="serve", purpose=_PURPOSE)
        if num_threads is not None:
            self.torch.set_num_threads(num_threads)
        self.base_path = Path(base).expanduser().resolve()
        self.tokenizer, model = load_pretrained(self.base_path, dtype=self.torch.float32)
        if chat_template is not None:
            self.tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
        model.eval()
        self.base_model = model
        self.model: Any = model  # the PeftModel once an adapter is loaded
        try:
            self.support = probe_template(self.tokenizer)
        except TemplateShowsNoTextError as exc:  # worded for training: say what serving would do, and its fix
            raise refusal_to_serve(exc, base=base, template=chat_template, server="The local server") from exc
        except TemplateDoesNotCompileError as exc:  # it would answer every request with the syntax error: refuse now
            raise _does_not_compile(exc, base=self.base_path, template=chat_template) from exc
        self.template_file = None if chat_template is None else str(chat_template)
        """The ``--chat-template`` file served in place of the base's own template (named when it cannot render a request)."""
        self.served_model_name = served_model_name or str(self.base_path)
        self.max_lora_rank = max_lora_rank
        self.adapters: dict[str, str] = {}
        """Served adapter name -> its folder."""
        self._peft_names: dict[str, str] = {}
        """Served adapter name -> the name peft knows it by (peft refuses dots, which registry names may have)."""
        self._loaded_count = 0
        self.lock = threading.Lock()
        self.created = int(time.time())

    # --- adapters ------------------------------------------------------------------------------

    def load_adapter(self, body: dict[str, Any]) -> str:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise RequestError(400, "lora_name and lora_path are both required strings")
        with self.lock:
            if name in self.adapters or name == self.served_model_name:
                raise RequestError(400, f"The lora adapter '{name}' has already been loaded.")
            folder = Path(path)
            if not (folder / "adapter_config.json").is_file():
                raise RequestError(404, f"No adapter found at {path} (no adapter_config.json).", "NotFoundError")
            self._check_adapter_base(folder)
            rank = _adapter_rank(folder)
            if rank > self.max_lora_rank:
                raise RequestError(500, f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.", "InternalServerError")
            self._loaded_count += 1
            peft_name = f"adapter_{self._loaded_count}"
            try:
                if self.model is self.base_model:
                    self.model = self.peft.PeftModel.from_pretrained(
                        self.base_model, str(folder), adapter_name=peft_name, is_trainable=False
                    )
                else:
                    self.model.load_adapter(str(folder), adapter_name=peft_name, is_trainable=False)
            except Exception as exc:
                self._undo_failed_load(peft_name)
                raise RequestError(400, f"Cannot load the adapter at {path}: {type(exc).__name__}: {exc}") from exc
            self.model.eval()
            self.adapters[name] = str(folder)
            self._peft_names[name] = peft_name
        return f"Success: LoRA adapter '{name}' added successfully."

    def _check_adapter_base(self, folder: Path) -> None:
        """A 400 naming both models for an adapter whose ``adapter_config.json`` names another base than the one served,
        compared as a promote compares them (:func:`~ee_middleware.models.bases.same_base`: a copy of the base is the
        base); one that names none, or one the names cannot tell apart (a hub id against a folder), is loaded. Another
        base of the same shapes would load without an error and answer as a model nobody trained."""
        trained_on = adapter_base(folder)
        if trained_on is None or same_base(trained_on, str(self.base_path)) is not False:
            return
        raise RequestError(
            400,
            f"The adapter at {folder} was trained on base model {trained_on}, but this server serves {self.base_path}. A LoRA "
            f"adapter works only on the base it was trained on: load it into a server started with --base {trained_on}, or "
            f"load an adapter trained on {self.base_path}.",
        )

    def _undo_failed_load(self, peft_name: str) -> None:
        """Take out what a load that failed part-way left in the model: peft injects an adapter's LoRA layers before it
        reads the weights, so a mismatch (an adapter for another base) leaves them in place. A first adapter's are
        taken out of the base model (its modules back to the plain layers, without a ``peft_config``), a further one's
        deleted from the model that holds the others."""
        if self.model is not self.base_model:
            if peft_name in getattr(self.model, "peft_config", {}):
                try:
                    self.model.delete_adapter(peft_name)
                except Exception:  # noqa: BLE001 - a half-made adapter peft cannot delete: its layers stay unused
                    pass
            return
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        model = self.base_model
        # LoRA layers, and the wrappers of an adapter's modules_to_save (lm_head) or trainable tokens, which hold the
        # base's own module as original_module (and may hold the failed adapter's copy of it, loaded before the error)
        injected = [
            (name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper)
        ]
        for name, module in reversed(injected):  # innermost first: a wrapper may hold an injected layer
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            plain = module.original_module if isinstance(module, AuxiliaryTrainingWrapper) else module.get_base_layer()
            setattr(parent, child, plain)
        for attribute in ("peft_config", "_hf_peft_config_loaded"):
            if attribute in vars(model):
                delattr(model, attribute)

    def unload_adapter(self, body: dict[str, Any]) -> str:
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:  # (a list was an unhashable-type 500)
            raise RequestError(400, "lora_name is a required string")
        with self.lock:
            if name not in self.adapters:
                raise RequestError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            if len(self.adapters) == 1:
                self.model = self.model.unload()  # the base again, without LoRA layers (peft cannot hold zero adapters)
                self.base_model = self.model
            else:
                self.model.delete_adapter(self._peft_names[name])
            del self.adapters[name], self._peft_names[name]
        return f"Success: LoRA adapter '{name}' removed successfully."

    def models(self) -> dict[str, Any]:
        listed = {"object": "model", "created": self.created, "owned_by": LOCAL_SERVER_OWNER}
        data = [{"id": self.served_model_name, **listed, "root": str(self.base_path)}]
        for name, path in list(self.adapters.items()):
            data.append({"id": name, **listed, "root": path, "parent": self.served_model_name})
        return {"object": "list", "data": data}

    # --- requests ------------------------------------------------------------------------------

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_model(_model(body))
        if "messages" in body:
            messages = _messages(body)
            text = self._render(messages, body.get("tools") or None)
            if not body.get("add_generation_prompt", True):
                raise RequestError(400, "add_generation_prompt=false is not supported by the local server")
        elif isinstance(prompt := body.get("prompt"), str):
            text = prompt
        else:  # (a list of token ids or of texts was tokenized as its Python text)
            raise RequestError(
                400,
                "/tokenize takes messages (a chat) or prompt (a text), "
                + ("got neither" if prompt is None else f"got prompt {json.dumps(prompt, default=repr)[:200]}"),
            )
        tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return {"tokens": tokens, "count": len(tokens), "max_model_len": self._max_len()}

    def chat(self, body: dict[str, Any], *, client_gone: Callable[[], bool] | None = None) -> dict[str, Any] | EventStream:
        """A chat completion for ``body`` (an event stream with ``stream``); ``client_gone`` (the HTTP handler's) is asked
        while it generates: a client that went away stops the generation (:class:`ClientGone`), so that the next request,
        waiting for the model, does not wait for an answer no one reads (vLLM aborts it too)."""
        _refuse_unsupported(body)
        if wants_stream(body):
            options = body.get("stream_options") or {}
            if not isinstance(options, dict):
                raise RequestError(400, f"stream_options must be an object, got {options!r}")
            unstreamed = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            completion = cast(dict[str, Any], self.chat(unstreamed, client_gone=client_gone))
            return EventStream(completion_chunks(completion, include_usage=bool(options.get("include_usage"))))
        model_name = _model(body) or self.served_model_name
        self._check_model(model_name)
        messages, tools = _messages(body), body.get("tools") or None
        parse_calls = _tool_choice(body, tools)
        n = _int(body, "n", 1, low=1, high=MAX_N)
        top_p = body.get("top_p")
        if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1):
            raise RequestError(400, f"top_p must be a number in (0, 1], got {top_p!r}")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RequestError(400, f"seed must be an integer, got {seed!r}")
        stops = _stop(body)
        max_tokens = _int(body, "max_completion_tokens", 0, low=1, key2="max_tokens") or None  # (OpenAI's newer name first, as vLLM)
        temperature = _float(body, "temperature", 1.0)
        with self.lock:
            # Again under the lock: an unload that ran while this request waited for the model would otherwise leave it
            # answered by the base model under the adapter's name (the branches below take a name not loaded as the base).
            self._check_model(model_name)
            generator = LocalGenerator.from_objects(self.model, self.tokenizer, model_name=model_name, num_threads=None)
            input_ids = self.tokenizer(self._render(messages, tools), add_special_tokens=False, return_tensors="pt")["input_ids"]
            prompt_tokens = int(input_ids.shape[1])
            max_tokens = _within_context(prompt_tokens, max_tokens, generator.max_length)
            sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
            if model_name in self.adapters:
                self.model.set_adapter(self._peft_names[model_name])
                generated = generator.generate(input_ids, n=n, sampling=sampling, cancelled=client_gone)
            elif self.model is not self.base_model:
                with self.model.disable_adapter():
                    generated = generator.generate(input_ids, n=n, sampling=sampling, cancelled=client_gone)
            else:
                generated = generator.generate(input_ids, n=n, sampling=sampling, cancelled=client_gone)
        if client_gone is not None and client_gone():
            raise ClientGone
        answers = [_cut_at_stop(self.tokenizer, answer, stops) for answer in generated]
        answers = (answers * n)[:n] if len(answers) < n else answers  # greedy: n identical answers, as vLLM gives
        one_call = body.get("parallel_tool_calls") is False
        out = [_choice(i, text, tools if parse_calls else None, finish, one_call=one_call) for i, (text, finish, _) in enumerate(answers)]
        completion_tokens = sum(used for _, _, used in answers)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": out,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _render(self, messages: list[dict[str, Any]], tools: Any) -> str:
        """The prompt for a request; a conversation the template cannot render is a 400 naming the template (the
        ``--chat-template`` file, or the base's own), as vLLM answers a chat template error."""
        try:
            return render_prompt(self.tokenizer, messages, tools, self.support, template_file=self.template_file)
        except ChatTemplateError as exc:
            raise RequestError(400, str(exc)) from exc

    def _check_model(self, name: Any) -> None:
        if name is not None and name != self.served_model_name and name not in self.adapters:
            raise RequestError(404, f"The model `{name}` does not exist.", "NotFoundError")

    def _max_len(self) -> int:
        return int(getattr(self.base_model.config, "max_position_embeddings", 0) or 0)


def completion_chunks(completion: dict[str, Any], *, include_usage: bool = False) -> Iterator[bytes]:
    """A whole ``chat.completion`` as the server-sent events of a streamed one: per choice its role,
    its content, each tool call (whole, with its index) and its finish reason; the usage when asked; ``[DONE]``."""
    head = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"], "model": completion["model"]}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse_event({**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    for choice in completion["choices"]:
        index, message = choice["index"], choice["message"]
        yield chunk(index, {"role": "assistant", "content": ""})
        if message.get("content"):
            yield chunk(index, {"content": message["content"]})
        for position, call in enumerate(message.get("tool_calls") or []):
            yield chunk(index, {"tool_calls": [{"index": position, **call}]})
        yield chunk(index, {}, choice["finish_reason"])
    if include_usage:
        yield sse_event({**head, "choices": [], "usage": completion["usage"]})
    yield sse_event("[DONE]")


def _tool_choice(body: dict[str, Any], tools: Any) -> bool:
    """Whether tool calls are read out of the answers: ``tool_choice`` ``auto`` (the default with tools) reads
    them, ``none`` leaves the answer text; ``required`` and a named function are refused (400), since this
    server cannot force a call (vLLM does it with guided decoding). As vLLM checks it: a ``tool_choice`` other than
    ``none`` needs ``tools``, and a named function must be one of them (else a 400 naming it)."""
    choice = body.get("tool_choice")
    if choice is None or choice == "none":
        return choice is None
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise RequestError(400, f"tool_choice must be 'auto', 'none', 'required' or a named function, got {choice!r}")
    if body.get("tools") is None:
        raise RequestError(
            400,
            f"When using `tool_choice`, `tools` must be set: this request has tool_choice {json.dumps(choice)} and no tools. "
            "Send the tools the model may call, or leave tool_choice out.",
        )
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        offered = [t.get("function", {}).get("name") for t in tools or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        if not isinstance(name, str) or not name:
            raise RequestError(400, 'A named tool_choice is {"type": "function", "function": {"name": NAME}}, got ' + json.dumps(choice))
        if name not in offered:
            raise RequestError(
                400,
                f"The tool specified in `tool_choice` ({name!r}) does not match any of the specified `tools` "
                f"({', '.join(map(str, offered)) or 'none'}). Name one of them, or add {name!r} to tools.",
            )
    if choice == "auto":
        return True
    raise RequestError(
        400,
        f"tool_choice {json.dumps(choice)} is not supported by the local server: it cannot force the model to call a tool "
        "(vLLM does it with guided decoding). Send tool_choice 'auto' (or leave it out) or 'none', or serve the model with "
        "`ee serve vllm`.",
    )


_GUIDED = "it cannot constrain what the model writes (vLLM does it with guided decoding)"
_NO_LOGPROBS = "it does not return log-probabilities"
_SAMPLING = "its sampling has temperature, top_p, seed and max_tokens only"
_PROMPT = "it renders every prompt with the template it was started with, as the adapters were trained (--chat-template)"
UNSUPPORTED_PARAMETERS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "response_format": (lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"), _GUIDED),
    "structured_outputs": (lambda v: not v, _GUIDED),
    **{name: (lambda v: not v, _GUIDED) for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")},
    "logprobs": (lambda v: v is None or v is False, _NO_LOGPROBS),
    "top_logprobs": (lambda v: v is None or v == 0, _NO_LOGPROBS),
    "prompt_logprobs": (lambda v: v is None, _NO_LOGPROBS),
    "presence_penalty": (lambda v: v is None or v == 0, _SAMPLING),
    "frequency_penalty": (lambda v: v is None or v == 0, _SAMPLING),
    "repetition_penalty": (lambda v: v is None or v == 1, _SAMPLING),
    "length_penalty": (lambda v: v is None or v == 1, _SAMPLING),
    "logit_bias": (lambda v: not v, _SAMPLING),
    "top_k": (lambda v: v is None or v in (0, -1), _SAMPLING),
    "min_p": (lambda v: v is None or v == 0, _SAMPLING),
    "min_tokens": (lambda v: v is None or v == 0, _SAMPLING),
    "ignore_eos": (lambda v: v is None or v is False, _SAMPLING),
    "use_beam_search": (lambda v: v is None or v is False, _SAMPLING),
    "echo": (lambda v: v is None or v is False, "it answers with the completion alone"),
    "best_of": (lambda v: v is None or v == 1, _SAMPLING),
    "stop_token_ids": (lambda v: not v, _SAMPLING),
    "allowed_token_ids": (lambda v: not v, _SAMPLING),
    "bad_words": (lambda v: not v, _SAMPLING),
    "truncate_prompt_tokens": (lambda v: v is None, "it never cuts a prompt (one that does not fit is refused)"),
    "include_stop_str_in_output": (lambda v: v is None or v is False, "it leaves the stop string out, as OpenAI does"),
    "skip_special_tokens": (lambda v: v is None or v is True, "it leaves special tokens out of the answer"),
    "chat_template_kwargs": (lambda v: not v, _PROMPT),
    "chat_template": (lambda v: not v, _PROMPT),
    "add_generation_prompt": (lambda v: v is None or v is True, _PROMPT),
    "continue_final_message": (lambda v: v is None or v is False, _PROMPT),
}
"""The request parameters vLLM honours that this server does not, each with what asks nothing of it (left out, or its
neutral value) and why it is refused otherwise: an answer that quietly ignored one (a JSON ``response_format``, a
``logit_bias``) would look like the model's failure to a client that relies on it."""


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """A 400 naming the first parameter of ``body`` this server cannot honour (:data:`UNSUPPORTED_PARAMETERS`), and one
    for ``stream_options`` without ``stream`` (vLLM's check and wording)."""
    for name, (neutral, why) in UNSUPPORTED_PARAMETERS.items():
        if name in body and not neutral(body[name]):
            shown = json.dumps(body[name], ensure_ascii=False)
            raise RequestError(
                400,
                f"{name}={shown[:200]} is not supported by the local server: {why}. Leave it out, or serve the model with "
                "`ee serve vllm`, which supports it.",
            )
    if body.get("stream_options") and not wants_stream(body):  # (an empty one is taken, as vLLM takes it)
        raise RequestError(400, "Stream options can only be defined when `stream=True`.")


def _stop(body: dict[str, Any]) -> list[str]:
    """The ``stop`` strings of a request (a string or a list of them)."""
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError(400, f"stop must be a string or a list of strings, got {stop!r}")
    return [s for s in stops if s]


def _within_context(prompt_tokens: int, max_tokens: int | None, context: int) -> int:
    """The answer's token budget: ``max_tokens`` when the prompt and it fit in the ``context``, else a 400 worded as
    vLLM's, naming both lengths (never a prompt cut to fit: the client would get an answer to a prompt it did not send).
    Without ``max_tokens``: :data:`DEFAULT_MAX_TOKENS`, at most what the context leaves."""
    if max_tokens is None:
        if prompt_tokens >= context:
            raise RequestError(
                400,
                f"This model's maximum context length is {context} tokens. However, your request has {prompt_tokens} input tokens. "
                "Please reduce the length of the input messages (fewer or shorter messages, or fewer tools).",
            )
        return min(DEFAULT_MAX_TOKENS, context - prompt_tokens)
    if prompt_tokens + max_tokens > context:
        raise RequestError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested {prompt_tokens + max_tokens} tokens "
            f"({prompt_tokens} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or "
            + (
                f"completion: send fewer or shorter messages, or max_tokens of at most {context - prompt_tokens}."
                if prompt_tokens < context
                else "completion: the messages alone fill the context; send fewer or shorter ones."
            ),
        )
    return max_tokens


def _cut_at_stop(tokenizer: Any, answer: Generated, stops: list[str]) -> tuple[str, str, int]:
    """``answer``'s text up to its first ``stop`` string (not included, as OpenAI and vLLM answer), its finish reason, and
    its length in tokens: all it generated, or, cut at a stop string, the tokens up to the one that completed it (where
    vLLM stops generating)."""
    text, tokens = answer.text, answer.token_ids
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not found:
        return text, answer.finish_reason, len(tokens)

    def completes(k: int) -> bool:
        return any(s in tokenizer.decode(tokens[:k], skip_special_tokens=True) for s in stops)

    # The first prefix that holds a stop string, by bisection: a longer prefix holds it too, and decoding every prefix
    # in turn cost the server a decode per token of the answer (quadratic in its length).
    low, high = 1, len(tokens)
    if not tokens or not completes(high):
        return text[: min(found)], "stop", len(tokens)
    while low < high:
        middle = (low + high) // 2
        if completes(middle):
            high = middle
        else:
            low = middle + 1
    return text[: min(found)], "stop", low


def _choice(index: int, text: str, tools: Any, finish: str = "stop", *, one_call: bool = False) -> dict[str, Any]:
    """One answer as a chat-completion choice; with ``tools``, ``<tool_call>`` blocks are its ``tool_calls``, as vLLM's
    hermes parser reads them: all of them, or, when one of them is no readable call, none (the whole text is the
    content); ``one_call`` (``parallel_tool_calls: false``) keeps the first call alone, as vLLM does.
    ``finish`` is the generator's finish reason (``stop``, or ``length`` for an answer cut at max_tokens); an answer
    that ended with calls says ``tool_calls``, one cut at max_tokens still says ``length`` (its last call is
    usually the one cut off, and a client counts such answers)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tools and "<tool_call>" in text:
        parsed = parse_tool_calls(text)
        calls = [] if any(isinstance(c, ParseProblem) for c in parsed) else parsed
        calls = calls[:1] if one_call else calls
        if calls:
            before = text.split("<tool_call>", 1)[0]
            message = {
                "role": "assistant",
                "content": before or None,
                "tool_calls": [
                    {
                        "id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}",
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
                    }
                    for c in calls
                ],
            }
            if finish != "length":
                finish = "tool_calls"
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}


def _model(body: dict[str, Any]) -> str | None:
    """The request's ``model``: a string, or none given (the base model); anything else is a 400 (as vLLM answers)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"model must be a string (the base model's or a loaded adapter's name), got {json.dumps(model)[:200]}")
    return model


MEDIA_PART_TYPES = frozenset(
    {"image_url", "image", "input_image", "image_pil", "image_embeds", "input_audio", "audio", "audio_url", "video", "video_url"}
    | {"file", "input_file"}
)
"""Content parts a text model cannot read (those vLLM hands a multimodal model's processor); text-like parts (``text``,
``input_text``, ``refusal``, a plain string: a LangChain tool's ``list[str]`` result) are read as text."""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages; a media content part (an image, audio, a file) is a 400, as a text-only model's server
    answers it: it was dropped, and the model answered a message the client never sent."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise RequestError(400, "messages must be a non-empty list of chat messages with a role")
    for number, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(message["role"], str):
            raise RequestError(400, f"messages[{number}].role must be a string, got {json.dumps(message['role'], default=repr)}")
        if not (content is None or isinstance(content, (str, list))):
            # (a number or an object was rendered as its Python text: the model answered a message never sent)
            raise RequestError(
                400,
                f"messages[{number}].content must be a string, a list of content parts or null, "
                f"got {json.dumps(content, default=repr)[:200]}",
            )
        for part_number, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, (str, dict)):
                raise RequestError(
                    400,
                    f"messages[{number}].content[{part_number}] must be a content part (an object with a type, or a text), "
                    f"got {json.dumps(part, default=repr)[:200]}",
                )
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in MEDIA_PART_TYPES:
                raise RequestError(
                    400,
                    f"messages[{number}] has a content part of type {json.dumps(kind)}: the local server serves text models "
                    "and reads text alone. Send text, or serve a multimodal model with `ee serve vllm`.",
                )
    return messages


MAX_N = 128
"""The most choices one request may ask for (``n``), OpenAI's own bound: one request for ``n=100000`` held the model (and
every request queued behind it) for as long as those generations took."""


def _int(body: dict[str, Any], key: str, default: int, *, low: int, key2: str | None = None, high: int | None = None) -> int:
    """``body[key]`` (else ``body[key2]``), a whole number >= ``low`` (and <= ``high``): a 400 naming the one given
    otherwise."""
    name = key if body.get(key) is not None or key2 is None else key2
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise RequestError(400, f"{name} must be an integer {bounds}, got {value!r}")
    return value


def _float(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise RequestError(400, f"{key} must be a number >= 0, got {value!r}")
    return float(value)


def _adapter_rank(folder: Path) -> int:
    """The adapter's rank as ``--max-lora-rank`` limits it (:func:`~ee_middleware.adapters.records.adapter_rank`: ``r``,
    ``rank_pattern``'s ranks and its ``lora_A`` matrices); a config that cannot say is a 400."""
    try:
        return adapter_rank(folder)
    except AdapterFilesError as exc:
        raise RequestError(400, str(exc)) from exc


def _does_not_compile(exc: TemplateDoesNotCompileError, *, base: Path, template: str | Path | None) -> TemplateDoesNotCompileError:
    """The refusal of a chat template that is not valid Jinja, naming the file served (``--chat-template``, or the base's)."""
    where = f"line {exc.line}: " if exc.line is not None else ""
    if template is not None:
        message = (
            f"The local server cannot serve the chat template {template} (--chat-template): it is not valid Jinja "
            f"({where}{exc.detail}), so every request would be refused. Fix its syntax, or leave --chat-template out to "
            "serve the base's own template."
        )
    else:
        message = (
            f"The local server cannot serve the chat template of {base}: it is not valid Jinja ({where}{exc.detail}), so "
            "every request would be refused. Give a template that is with --chat-template FILE."
        )
    return TemplateDoesNotCompileError(message, line=exc.line, detail=exc.detail)


class _Handler(JSONHandler):
    server_version = "ee-local-server"
    app: LocalModelServer  # set on the subclass made by make_http_server

    def models(self) -> Any:
        return self.app.models()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        routes = {
            "/v1/chat/completions": lambda request: self.app.chat(request, client_gone=self.client_gone),
            "/tokenize": self.app.tokenize,
            "/v1/load_lora_adapter": self.app.load_adapter,
            "/v1/unload_lora_adapter": self.app.unload_adapter,
        }
        if path not in routes:
            raise RequestError(404, f"No route {self.path}", "NotFoundError")
        return 200, routes[path](body)


def make_http_server(app: LocalModelServer, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None) -> StoppingHTTPServer:
    """A threading HTTP server for ``app`` (call ``serve_forever``); port 0 picks a free one. ``api_key``: the key every
    request but ``GET /health`` must carry (``Authorization: Bearer KEY``); none for ``None`` or ``""``."""
    return make_server(_Handler, {"app": app, "api_key": api_key or None}, host, port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The ee-middleware local model server (transformers + peft).")
    parser.add_argument("--base", required=True, help="base model folder (save_pretrained)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--max-lora-rank", type=int, default=DEFAULT_MAX_LORA_RANK)
    parser.add_argument("--chat-template", default=None, help="a Jinja chat template file replacing the tokenizer's")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"the key every request but GET /health must carry (Authorization: Bearer KEY); default: ${SERVE_API_KEY_ENV}",
    )
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get(SERVE_API_KEY_ENV) or None
    try:
        grace_s = stop_grace_s()
    except ValueError as exc:
        parser.error(str(exc))
    check_port_free(args.host, args.port)  # before the model loads
    app = LocalModelServer(
        args.base,
        served_model_name=args.served_model_name,
        max_lora_rank=args.max_lora_rank,
        chat_template=args.chat_template,
        num_threads=args.num_threads,
    )
    server = make_http_server(app, args.host, args.port, api_key=api_key)
    host, port = server.server_address[:2]
    needs = " (requests need its API key)" if api_key else ""
    print(f"ee local server: serving {app.served_model_name} at http://{host}:{port}/v1{needs}", flush=True)
    with termination_as_interrupt():  # SIGTERM (systemd, docker stop, ServerProcess.stop) stops it as Ctrl-C does
        try:
            state = record_server(
                f"http://{host}:{port}/v1",
                pid=os.getpid(),
                base=str(app.base_path),
                served_model_name=app.served_model_name,
                max_lora_rank=app.max_lora_rank,
                template=local_served_template(app.base_path, app.tokenizer, app.support, args.chat_template),
                renderer="local",
            )
            try:
                server.serve_forever()
            finally:
                forget_server(state, os.getpid())
        except KeyboardInterrupt:
            pass
        finally:
            code = stop_serving(server, grace_s, name="ee local server")
    end_process(code)


def end_process(code: int) -> NoReturn:
    """End the process now with ``code``, after its exit handlers and with its output flushed, without finalising the
    interpreter: a request still generating (answered 503 by the stop) is inside torch on a daemon thread, and
    finalising under it aborts the process ("terminate called without an active exception", exit -6). Finalising also
    took seconds (collecting torch's and transformers' objects) while the server had stopped already."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe or stream: nothing more to write anyway
    os._exit(code)


if __name__ == "__main__":
    try:
        main()
    except (
        TemplateShowsNoTextError,
        TemplateDoesNotCompileError,
    ) as exc:  # started directly (ServerProcess, by hand): the refusal, not a traceback
        sys.exit(str(exc))
