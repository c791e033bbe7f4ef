"""The local generator: a transformers model on this machine as a :class:`ChatClient`.

Prompts are rendered with :mod:`ee_middleware.models.chat_template`, the same rendering the trainer
uses, so a model sees at inference what it was trained on. All ``n`` answers come from one
``generate`` call (``num_return_sequences=n``), seeded with ``torch.manual_seed(seed)``; temperature
0 is greedy decoding and gives one answer (all ``n`` would be the same). A state longer than the
context is fitted as the trainer fits it (:mod:`ee_middleware.models.truncation`).

torch, transformers (and peft, for an adapter) are imported on first use (the ``train`` extra); the
model loads on the first ``complete`` so that building a client in a worker process is cheap.
Models are only read from local folders (``local_files_only=True``): nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ee_middleware._optional import import_optional
from ee_middleware.errors import ModelLoadError
from ee_middleware.models.chat_template import TemplateSupport, probe_template, render_prompt
from ee_middleware.models.protocol import Choice, Message, Sampling, ToolSchema
from ee_middleware.models.truncation import fit_messages

_PURPOSE = "run a local transformers model"
_FALLBACK_MAX_LENGTH = 2048


@dataclass(frozen=True)
class Generated:
    """One answer as :meth:`LocalGenerator.generate` made it: its text, its tokens (through the end-of-sequence token
    when it has one) and why it ended (``"stop"``: that token; ``"length"``: out of new tokens)."""

    text: str
    token_ids: list[int]
    finish_reason: str


class LocalGenerator:
    """Generates chat answers with a local causal language model (optionally with a LoRA adapter).

    ``model`` is a folder saved with ``save_pretrained`` (config, weights, tokenizer files) or a
    ``.gguf`` file (transformers dequantizes it on load). ``adapter`` is a peft adapter folder
    applied on load. Use :meth:`from_objects` for a model and tokenizer already in memory.
    ``num_threads`` sets ``torch.set_num_threads`` on first use (``None`` leaves it alone); on a
    shared few-core machine one thread is often the fastest. ``context_length`` caps the tokens a
    prompt and its answer may use (default: the model's context), e.g. to decode at the
    ``max_length`` a model was trained with.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        adapter: str | os.PathLike[str] | None = None,
        gguf_file: str | None = None,
        num_threads: int | None = 1,
        device: str = "cpu",
        model_name: str | None = None,
        context_length: int | None = None,
    ) -> None:
        path = Path(model).expanduser()
        if path.suffix == ".gguf" and gguf_file is None:
            path, gguf_file = path.parent, path.name
        _check_model_folder(path, gguf_file)
        adapter_path = Path(adapter).expanduser() if adapter is not None else None
        if adapter_path is not None and not (adapter_path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"No LoRA adapter at {adapter_path} (no adapter_config.json). Point at a folder written by `ee train` "
                "or peft's save_pretrained, as in 'local:MODEL_DIR@ADAPTER_DIR'."
            )
        if adapter_path is not None:
            from ee_middleware.models.bases import other_base_problem

            problem = other_base_problem(adapter_path, path / gguf_file if gguf_file else path)
            if problem is not None:  # it would load, and answer as a model nobody trained
                raise ModelLoadError(f"Cannot apply the adapter {adapter_path} to {path}: {problem}.")
        self._path: Path | None = path
        self._gguf_file = gguf_file
        self._adapter = adapter_path
        self._model: Any = None
        self._tokenizer: Any = None
        self._torch: Any = None
        self._support: TemplateSupport | None = None
        self.model = model_name or str(model)
        self.num_threads = num_threads
        self.device = device
        self.context_length = context_length

    @classmethod
    def from_objects(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str = "in-memory",
        num_threads: int | None = 1,
        device: str = "cpu",
        context_length: int | None = None,
    ) -> LocalGenerator:
        """A generator around a model and tokenizer already built (tests, notebooks, a model being trained)."""
        self = cls.__new__(cls)
        self._path = None
        self._gguf_file = None
        self._adapter = None
        self._model = model
        self._tokenizer = tokenizer
        self._torch = None
        self._support = None
        self.model = model_name
        self.num_threads = num_threads
        self.device = device
        self.context_length = context_length
        return self

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loads the model if needed)."""
        self._ensure_ready()
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        """The model, the adapter and the device."""
        return {"model": self.model, "adapter": str(self._adapter) if self._adapter else None, "device": self.device}

    def close(self) -> None:
        """Drop the model (a later ``complete`` loads it again when it came from a folder)."""
        if self._path is not None:
            self._model = None
            self._tokenizer = None
            self._support = None

    def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSchema] | None = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]:
        """``n`` answers to ``messages`` (one when greedy), each the decoded continuation of the rendered prompt.

        Each answer's ``finish_reason`` is ``"stop"`` when it ended with an end-of-sequence token and
        ``"length"`` when it ran out of new tokens (as an OpenAI-compatible server reports them)."""
        if n <= 0:
            return []
        input_ids, new_tokens = self.prompt_ids(messages, tools, max_new_tokens=sampling.max_tokens)
        return [
            Choice.from_text(a.text, finish_reason=a.finish_reason)
            for a in self.generate(input_ids, n=n, sampling=sampling, max_new_tokens=new_tokens)
        ]

    def generate(
        self,
        input_ids: Any,
        *,
        n: int,
        sampling: Sampling,
        max_new_tokens: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Generated]:
        """The answers that follow the prompt ``input_ids`` (a ``(1, length)`` tensor), as they were generated: ``n`` of them
        (one when greedy), each at most ``max_new_tokens`` (default: ``sampling.max_tokens``) tokens long. ``cancelled``
        is asked after every token: once it says true, generation stops there (a server's client that went away).

        The caller fits the prompt to the context (:meth:`prompt_ids` does it as the trainer does); a local server
        refuses a prompt that does not fit instead."""
        torch = self._ensure_ready()
        options: dict[str, Any] = {"do_sample": not sampling.greedy, "max_new_tokens": max_new_tokens or sampling.max_tokens}
        options["num_return_sequences"] = 1 if sampling.greedy else n
        if not sampling.greedy:
            options.update(temperature=sampling.temperature, top_p=1.0 if sampling.top_p is None else sampling.top_p)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else self._tokenizer.eos_token_id
        if pad is not None:
            options["pad_token_id"] = pad
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        if cancelled is not None:
            options["stopping_criteria"] = _stopping_when(cancelled)
        with torch.no_grad():
            output = self._model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
        stops = self._stop_ids()
        answers = []
        for sequence in output:
            tokens = [int(token) for token in sequence[input_ids.shape[1] :]]
            end = next((i for i, token in enumerate(tokens) if token in stops), None)
            tokens = tokens if end is None else tokens[: end + 1]  # what follows the end (padding) was not generated for it
            text = self._tokenizer.decode(tokens, skip_special_tokens=True)
            answers.append(Generated(text, tokens, "length" if end is None else "stop"))
        return answers

    def _stop_ids(self) -> set[int]:
        """The token ids that end an answer (the generation config's end-of-sequence ids, else the tokenizer's)."""
        configured = getattr(getattr(self._model, "generation_config", None), "eos_token_id", None)
        if configured is None:
            configured = self._tokenizer.eos_token_id
        ids = configured if isinstance(configured, (list, tuple)) else [configured]
        return {int(i) for i in ids if i is not None}

    def render(self, messages: Sequence[Message], tools: Sequence[ToolSchema] | None = None) -> str:
        """The prompt text this generator feeds the model for ``messages`` and ``tools``."""
        self._ensure_ready()
        if self._support is None:
            self._support = probe_template(self._tokenizer)
        return render_prompt(self._tokenizer, messages, tools, self._support)

    def prompt_ids(self, messages: Sequence[Message], tools: Sequence[ToolSchema] | None, *, max_new_tokens: int) -> tuple[Any, int]:
        """The prompt's token ids, fitted to the context, and how many tokens may follow.

        A state too long for the context is fitted by the trainer's truncation policy
        (:func:`ee_middleware.models.truncation.fit_messages`: system message, tools, task and the
        latest turns kept); only what still does not fit is cut from the left.
        """
        self._ensure_ready()
        if self._support is None:
            self._support = probe_template(self._tokenizer)
        max_length = self._max_length()
        new_tokens = min(max_new_tokens, max(1, max_length // 2))
        budget = max_length - new_tokens
        fit = fit_messages(self._tokenizer, messages, tools, self._support, budget)
        input_ids = self._tokenizer(fit.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if input_ids.shape[1] > budget:
            input_ids = input_ids[:, -budget:]
        return input_ids.to(self.device), new_tokens

    def _ensure_ready(self) -> Any:
        if self._torch is None:
            self._torch = import_optional("torch", extra="train", purpose=_PURPOSE)
            if self.num_threads is not None:
                self._torch.set_num_threads(self.num_threads)
        if self._model is None:
            self._load()
        return self._torch

    def _load(self) -> None:
        assert self._path is not None
        dtype = self._torch.float32 if self.device == "cpu" else "auto"
        tokenizer, model = load_pretrained(self._path, gguf_file=self._gguf_file, dtype=dtype)
        if self._adapter is not None:
            model = self._with_adapter(model)
        model.to(self.device)
        model.eval()
        self._model, self._tokenizer = model, tokenizer

    def _with_adapter(self, model: Any) -> Any:
        peft = import_optional("peft", extra="train", purpose="apply a LoRA adapter to a local model")
        try:
            return peft.PeftModel.from_pretrained(model, str(self._adapter), is_trainable=False)
        except Exception as exc:
            raise ModelLoadError(
                f"Cannot apply the adapter {self._adapter} to {self._path}: {type(exc).__name__}: {exc}. Was it trained on this base model?"
            ) from exc

    @property
    def max_length(self) -> int:
        """How many tokens a prompt and its answer may use: ``context_length`` when given, else the model's context
        (its config's ``max_position_embeddings``, else the tokenizer's ``model_max_length``; loads the model)."""
        self._ensure_ready()
        return self._max_length()

    def _max_length(self) -> int:
        if self.context_length is not None:
            return self.context_length
        length = getattr(getattr(self._model, "config", None), "max_position_embeddings", None)
        if not isinstance(length, int) or length <= 0:
            length = getattr(self._tokenizer, "model_max_length", None)
        return length if isinstance(length, int) and 0 < length < 10_000_000 else _FALLBACK_MAX_LENGTH


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "tokenizer.tiktoken",
)
"""The files one of which every tokenizer transformers loads from a folder is saved in."""


def load_pretrained(
    folder: Path, *, gguf_file: str | None = None, dtype: Any = None, require_chat_template: bool = True
) -> tuple[Any, Any]:
    """``(tokenizer, model)`` from a local folder (or a GGUF file in it), offline; every failure names the folder.

    The one place models are read from disk: the local generator, the trainer and the local server
    load through it. ``dtype`` goes to ``from_pretrained`` when given.
    """
    _check_model_folder(Path(folder), gguf_file)  # before transformers reads a missing folder as a hub repo id
    transformers = import_optional("transformers", extra="train", purpose=_PURPOSE)
    # trust_remote_code=False said outright: left unsaid, transformers asks on the terminal whether to run a folder's own
    # Python (and waits there), and runs it on "y"
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs, **({"dtype": dtype} if dtype is not None else {}))
    except Exception as exc:
        if tokenizer is None and gguf_file is None and not _has_tokenizer_files(Path(folder)) and _has_weights(Path(folder)):
            # said first: transformers' own message asks to install sentencepiece or tiktoken, which would not help
            raise ModelLoadError(
                f"{folder} has no tokenizer files (no tokenizer.json, tokenizer_config.json, tokenizer.model or vocab.json), "
                "only the model's. Save the tokenizer of the model the weights come from beside them: "
                "tokenizer.save_pretrained(DIR); nothing is downloaded."
            ) from exc
        # transformers refuses a folder it could only load by running its code with a message naming trust_remote_code;
        # a folder naming its own code that fails for another reason (missing weights) gets the usual message
        code = custom_code(Path(folder), files=("config.json", "tokenizer_config.json")) if "trust_remote_code" in str(exc) else []
        if code:
            raise ModelLoadError(
                f"Cannot load the model in {folder}: it needs its own code ({', '.join(code)}, named by auto_map in its "
                f"config files; {type(exc).__name__}: {exc}), and ee-middleware never runs Python from a model folder "
                "(transformers' trust_remote_code). Use a model whose architecture transformers implements itself (its "
                "model_type then loads without that code), or serve this one with vLLM --trust-remote-code and give ee its "
                "server (openai:URL#MODEL)."
            ) from exc
        raise ModelLoadError(
            f"Cannot load a causal language model from {folder}"
            + (f" (GGUF file {gguf_file})" if gguf_file else "")
            + f" offline: {type(exc).__name__}: {exc}. The folder needs config.json, the weights and the tokenizer files "
            "(save them with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)); nothing is downloaded."
        ) from exc
    if require_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"The tokenizer in {folder} has no chat template, so chat messages cannot be rendered the way the model will see them. "
            "Use an instruct model whose tokenizer defines one, or give it one: tokenizer.chat_template = '...' (a Jinja "
            "template), then tokenizer.save_pretrained(DIR), which writes chat_template.jinja."
        )
    check_vocabulary(tokenizer, model, f"{folder}" + (f" (GGUF file {gguf_file})" if gguf_file else ""))
    return tokenizer, model


def load_tokenizer(folder: Path, *, flag: str = "--tokenizer") -> Any:
    """The tokenizer saved in the local ``folder`` (a model's or a tokenizer's own), offline, never running the folder's
    code; a folder without tokenizer files, or one transformers cannot load, is a :class:`ModelLoadError` naming it
    (``flag``: how the user gave it) and the fix, not transformers' advice to install sentencepiece or tiktoken."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():  # a name would be looked up on the Hugging Face hub: models are never downloaded
        raise ModelLoadError(
            f"{flag} {folder}: no such folder. Give the folder of a model or tokenizer saved with save_pretrained "
            "(e.g. ./models/smollm2); models and tokenizers are never downloaded."
        )
    if not _has_tokenizer_files(folder):
        raise ModelLoadError(
            f"{flag} {folder} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, ...): give the folder of a model or "
            "tokenizer saved with tokenizer.save_pretrained(DIR); nothing is downloaded."
        )
    transformers = import_optional("transformers", extra="train", purpose="count tokens with a tokenizer")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(
            f"Cannot load the tokenizer in {folder} ({flag}) offline: {type(exc).__name__}: {exc}. Save it again with "
            "tokenizer.save_pretrained(DIR) from the model it belongs to; nothing is downloaded."
        ) from exc


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES) or any(folder.glob("*.tiktoken"))


def _has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds a model's weights (a folder without them gets the message naming every file it needs)."""
    return any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json"))


def check_vocabulary(tokenizer: Any, model: Any, where: str) -> None:
    """Refuse a tokenizer that can produce a token id past the end of ``model``'s input embedding table: the first text
    holding such a token stops the model with ``IndexError: index out of range in self`` (mid-training, or mid-answer).
    It happens when the tokenizer files were copied from another model of the family, or tokens were added to the
    tokenizer without ``model.resize_token_embeddings``. A table with more rows than the tokenizer has tokens is fine
    (many models pad it to a multiple of 64 or 128). ``where``: the folder both came from, for the message.

    Raises :class:`ModelLoadError` naming both sizes and the fix; a model or tokenizer that does not say its size (no
    ``get_input_embeddings``, no vocabulary) is not checked here."""
    rows = _embedding_rows(model)
    if rows is None:
        return
    tokens = _tokenizer_ids(tokenizer)
    if tokens is None:
        return
    config_size = getattr(getattr(model, "config", None), "vocab_size", None)
    refuse_tokens_past_embeddings(tokens, rows, where, "vocab_size in config.json" if config_size == rows else None)


def refuse_tokens_past_embeddings(tokens: int, rows: int, where: str, rows_from: str | None = None) -> None:
    """:class:`ModelLoadError` naming both sizes and the fix when a tokenizer's ``tokens`` ids (one past its highest) do not
    fit the ``rows`` of its model's input embedding table (:func:`check_vocabulary`). ``where``: the folder; ``rows_from``:
    where the number of rows is written, when known."""
    if tokens <= rows:
        return
    said = f" ({rows_from})" if rows_from else ""
    raise ModelLoadError(
        f"The tokenizer in {where} has {tokens} token ids (0 to {tokens - 1}) but the model's input embeddings have only "
        f"{rows} rows{said}, so any text holding one of the last {tokens - rows} tokens stops the model (IndexError: index "
        "out of range). The tokenizer files do not belong to this model (copied from another model of its family?) or tokens "
        "were added without resizing the embeddings. Use the model's own tokenizer files, or resize the model to its tokenizer "
        "and save both: model.resize_token_embeddings(len(tokenizer)); model.save_pretrained(DIR); "
        "tokenizer.save_pretrained(DIR)."
    )


def _embedding_rows(model: Any) -> int | None:
    """How many token ids ``model``'s input embedding table holds, or ``None`` when it does not say."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    rows = getattr(embeddings, "num_embeddings", None)
    return rows if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0 else None


def _tokenizer_ids(tokenizer: Any) -> int | None:
    """One past the highest token id ``tokenizer`` can produce (its vocabulary with added tokens; ids can have gaps, so
    the highest id counts, not only how many there are), or ``None`` when it does not say."""
    highest = -1
    try:
        highest = len(tokenizer) - 1
    except TypeError:
        pass
    try:
        vocabulary = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        vocabulary = {}
    ids = [i for i in vocabulary.values() if isinstance(i, int)] if isinstance(vocabulary, dict) else []
    highest = max([highest, *ids])
    return highest + 1 if highest >= 0 else None


CONTEXT_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx")
"""Where a transformers config says how many positions its model has (GPT-2 first: its config maps the second name to it)."""


def model_context(folder: Path, gguf_file: str | None = None) -> tuple[int, str] | None:
    """How many positions a local model has, and where that is written, read from its files without loading it:
    ``config.json`` (:data:`CONTEXT_FIELDS`), or a GGUF file's ``<architecture>.context_length`` (with the ``gguf``
    package, the ``train`` extra; transformers reads the same key into ``max_position_embeddings``). ``None`` when the
    files do not say or cannot be read (loading the model then names the problem).

    A job checks a length setting with it before it spends minutes loading (a GGUF is dequantized on load) or hours
    on the stages before the model is used."""
    folder = Path(folder)
    if gguf_file is None:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for name in CONTEXT_FIELDS:
            value = config.get(name) if isinstance(config, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, f"{name} in {folder / 'config.json'}"
        return None
    gguf = import_optional("gguf", extra="train", purpose="read a GGUF model's context length")
    try:
        fields = gguf.GGUFReader(str(folder / gguf_file)).fields
        key = f"{_gguf_value(fields['general.architecture'])}.context_length"
        value = _gguf_value(fields[key]) if key in fields else None
    except Exception:  # noqa: BLE001 - a damaged file is named when the model is loaded
        return None
    return (int(value), f"{key} in {folder / gguf_file}") if isinstance(value, int) and value > 0 else None


def _gguf_value(field: Any) -> Any:
    """A GGUF metadata field's scalar value: ``ReaderField.contents()`` where the ``gguf`` package has it (recent
    versions), else read from its parts as older versions lay them out (a string's bytes, a number's array)."""
    contents = getattr(field, "contents", None)
    if contents is not None:
        return contents()
    part = field.parts[field.data[0]]
    if getattr(field, "types", None) and field.types[0].name == "STRING":
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def custom_code(folder: Path, files: Sequence[str] = ("config.json",)) -> list[str] | None:
    """The classes of its own Python a saved model's config ``files`` name (``auto_map``, a config's own and its text
    model's), which only ``trust_remote_code`` would run; ``None`` when one of the files that exist cannot be read as a
    JSON object (a missing file names nothing)."""
    names: list[str] = []
    for name in files:
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict):
            return None
        for part in (config, config.get("text_config")):
            auto_map = part.get("auto_map") if isinstance(part, dict) else None
            if isinstance(auto_map, dict):
                for value in auto_map.values():
                    names += [str(x) for x in value if x] if isinstance(value, (list, tuple)) else [str(value)]
            elif auto_map:
                names.append(str(auto_map))
    return list(dict.fromkeys(names))


def _check_model_folder(path: Path, gguf_file: str | None) -> None:
    if not path.is_dir():
        raise ModelLoadError(
            f"No model folder at {path}. Point at a local folder saved with save_pretrained "
            "(config.json, weights, tokenizer files) or at a .gguf file: a flag that takes a model folder takes the path "
            "itself (--base /models/smollm2, --base-model /models/smollm2), a model spec takes it after local: "
            "(--policy local:/models/smollm2, --teacher, --model-spec); models are never downloaded."
        )
    if gguf_file is None and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} has no config.json, so it is not a saved transformers model. Save one there with "
            "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR), or point at a .gguf file."
        )
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise ModelLoadError(f"No GGUF file {gguf_file!r} in {path}. Check the file name, or point at a folder saved with save_pretrained.")


def _stopping_when(cancelled: Callable[[], bool]) -> Any:
    """transformers' stopping criteria that end every sequence once ``cancelled()`` is true."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), bool(cancelled()), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Cancelled()])
