"""The local transformers policy: sample K continuations from a model on this machine.

The prompt is the recorded state rendered with the tokenizer's own chat template (tools included),
so the model sees what the agent's model saw. All K continuations come from one ``generate`` call
(``num_return_sequences=k``), seeded with ``torch.manual_seed(seed)``. Each continuation is parsed
with :mod:`ee_middleware.replay.policies.parsing`; what cannot be read becomes a candidate with a
problem, which the proposer counts as ``unparsable``.

torch and transformers are imported on first use (the ``train`` extra); the model is loaded on the
first ``propose`` so that building the policy in a worker process is cheap. Models are only read
from local folders (``local_files_only=True``): nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ee_middleware._optional import import_optional
from ee_middleware.errors import PolicyError
from ee_middleware.records import Proposer
from ee_middleware.replay.policies.parsing import ParseProblem, parse_tool_calls
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.policies.schema import tool_schemas_for

_PURPOSE = "propose alternatives with a local transformers model"
_FALLBACK_MAX_LENGTH = 2048


class TransformersPolicy:
    """Samples alternatives from a local causal language model with transformers.

    ``model`` is a folder saved with ``save_pretrained`` (config, weights, tokenizer files) or a
    ``.gguf`` file (transformers dequantizes it on load). Use :meth:`from_objects` to wrap a model
    and tokenizer already in memory. ``num_threads`` sets ``torch.set_num_threads`` on first use
    (``None`` leaves it alone); on a shared few-core machine one thread is often the fastest.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        temperature: float = 1.0,
        top_p: float = 0.95,
        max_new_tokens: int = 160,
        num_threads: int | None = 1,
        device: str = "cpu",
        gguf_file: str | None = None,
        model_name: str | None = None,
        name: str = "transformers",
    ) -> None:
        path = Path(model).expanduser()
        if path.suffix == ".gguf" and gguf_file is None:
            path, gguf_file = path.parent, path.name
        if not path.is_dir():
            raise PolicyError(
                f"No model folder at {path}. Point the policy at a local folder saved with save_pretrained "
                "(config.json, weights, tokenizer files) or at a .gguf file, e.g. 'local:/models/smollm2'; "
                "models are never downloaded during replay."
            )
        if gguf_file is None and not (path / "config.json").is_file():
            raise PolicyError(
                f"{path} has no config.json, so it is not a saved transformers model. Save one there with "
                "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR), or point at a .gguf file."
            )
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise PolicyError(
                f"No GGUF file {gguf_file!r} in {path}. Check the file name, or point at a folder saved with save_pretrained."
            )
        self._path: Path | None = path
        self._gguf_file = gguf_file
        self._model: Any = None
        self._tokenizer: Any = None
        self._configure(name, model_name or str(model), temperature, top_p, max_new_tokens, num_threads, device)

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
        self._path = None
        self._gguf_file = None
        self._model = model
        self._tokenizer = tokenizer
        self._configure(name, model_name, temperature, top_p, max_new_tokens, num_threads, device)
        return self

    def _configure(
        self, name: str, model_name: str, temperature: float, top_p: float, max_new_tokens: int, num_threads: int | None, device: str
    ) -> None:
        if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
            raise PolicyError(
                f"Bad sampling settings: temperature={temperature} (>= 0), top_p={top_p} (0 < top_p <= 1), max_new_tokens={max_new_tokens} (>= 1)"
            )
        self.name = name
        self.model_name = model_name
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.num_threads = num_threads
        self.device = device
        self._torch: Any = None

    def describe(self) -> dict[str, Any]:
        """The model and the sampling settings."""
        return {
            "policy": self.name,
            "model": self.model_name,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "device": self.device,
        }

    def close(self) -> None:
        """Drop the model (a later ``propose`` loads it again when it came from a folder)."""
        if self._path is not None:
            self._model = None
            self._tokenizer = None

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        """``k`` sampled continuations, each parsed into tool calls or a problem."""
        if k <= 0:
            return Proposals()
        torch = self._ensure_ready()
        input_ids, new_tokens = self._prompt_ids(point)
        sampling = self.temperature > 0
        options: dict[str, Any] = {"do_sample": sampling, "max_new_tokens": new_tokens, "num_return_sequences": k if sampling else 1}
        if sampling:
            options.update(temperature=self.temperature, top_p=self.top_p)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else self._tokenizer.eos_token_id
        if pad is not None:
            options["pad_token_id"] = pad
        torch.manual_seed(seed)
        with torch.no_grad():
            output = self._model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
        texts = [self._tokenizer.decode(seq[input_ids.shape[1] :], skip_special_tokens=True) for seq in output]
        proposer = Proposer(policy=self.name, model=self.model_name, temperature=self.temperature, top_p=self.top_p, seed=seed)
        param_order = tool_schemas_for(point.tools).param_order()
        candidates = []
        for text in texts:
            for item in parse_tool_calls(text, param_order=param_order):
                if isinstance(item, ParseProblem):
                    candidates.append(Candidate(call=None, proposer=proposer, raw=text, problem=item.problem))
                else:
                    candidates.append(Candidate(call=item, proposer=proposer, raw=text))
        return Proposals(candidates)

    def _ensure_ready(self) -> Any:
        if self._torch is None:
            self._torch = import_optional("torch", extra="train", purpose=_PURPOSE)
            if self.num_threads is not None:
                self._torch.set_num_threads(self.num_threads)
        if self._model is None:
            self._load()
        return self._torch

    def _load(self) -> None:
        transformers = import_optional("transformers", extra="train", purpose=_PURPOSE)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if self._gguf_file is not None:
            kwargs["gguf_file"] = self._gguf_file
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(self._path, **kwargs)
            dtype = self._torch.float32 if self.device == "cpu" else "auto"
            model = transformers.AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype, **kwargs)
        except Exception as exc:
            raise PolicyError(
                f"Cannot load a causal language model from {self._path}"
                + (f" (GGUF file {self._gguf_file})" if self._gguf_file else "")
                + f": {type(exc).__name__}: {exc}. The folder needs config.json, the weights and the tokenizer files "
                "(save them with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR))."
            ) from exc
        if not getattr(tokenizer, "chat_template", None):
            raise PolicyError(f"The tokenizer in {self._path} has no chat template; use an instruct model whose tokenizer defines one.")
        model.to(self.device)
        model.eval()
        self._model, self._tokenizer = model, tokenizer

    def _prompt_ids(self, point: DecisionPoint) -> tuple[Any, int]:
        """The prompt's token ids (cut from the left to fit the context) and how many tokens may follow."""
        # The same prompt format the trainer renders (ee_middleware.trainers.training.render): a
        # template that drops tools or tool calls (SmolLM2's does) gets them as text instead.
        from ee_middleware.trainers.training.render import probe_template, template_messages, with_tools_in_system

        if getattr(self, "_support", None) is None:
            self._support = probe_template(self._tokenizer)
        messages = template_messages(list(point.state), self._support)
        tools = point.tools or None
        if tools and not self._support.tools:
            messages, tools = with_tools_in_system(messages, list(point.tools)), None
        text = self._tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        input_ids = self._tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        max_length = self._max_length()
        new_tokens = min(self.max_new_tokens, max(1, max_length // 2))
        budget = max_length - new_tokens
        if input_ids.shape[1] > budget:
            input_ids = input_ids[:, -budget:]  # the latest turns matter most for the next action
        return input_ids.to(self.device), new_tokens

    def _max_length(self) -> int:
        length = getattr(getattr(self._model, "config", None), "max_position_embeddings", None)
        if not isinstance(length, int) or length <= 0:
            length = getattr(self._tokenizer, "model_max_length", None)
        return length if isinstance(length, int) and 0 < length < 10_000_000 else _FALLBACK_MAX_LENGTH
