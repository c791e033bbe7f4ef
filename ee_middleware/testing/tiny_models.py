"""Tiny language models built on the spot, for tests and benchmarks (nothing is downloaded).

``build_test_tokenizer`` trains a byte-level BPE tokenizer in memory on a few lines and wraps it as
a fast Hugging Face tokenizer with a chat template; ``build_tiny_llama`` makes a randomly
initialised 2-layer Llama (about 0.1M parameters plus embeddings) for it, ``build_tiny_model`` the
same size in another architecture (``ARCHITECTURES``: Qwen2, Mistral, GPT-2), to check that nothing
assumes Llama's module names. Needs the ``[train]`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOOL_CHAT_TEMPLATE = """{%- if tools %}<|im_start|>system
You may call these tools:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|im_end|>
{% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.content %}{{ m.content }}{% endif %}{% for c in m.tool_calls or [] %}<tool_call>{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}</tool_call>{% endfor %}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
"""ChatML with tools, like Qwen/Hermes: tools listed in a system block, calls as ``<tool_call>`` JSON."""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_test_tokenizer(corpus: Sequence[str], *, chat_template: str = TOOL_CHAT_TEMPLATE, vocab_size: int = 500) -> Any:
    """A TEST tokenizer: byte-level BPE trained in memory on ``corpus``, wrapped as a fast Hugging Face tokenizer
    (``transformers.PreTrainedTokenizerFast``) with a chat template; nothing is downloaded.

    Any text encodes (the byte alphabet is always there); the texts of ``corpus`` (your app's task texts and tool
    schemas) encode in few tokens, so a tiny model sized for it keeps prompts short.

    Args:
        corpus: texts to learn the vocabulary from.
        chat_template: a Jinja chat template; the default, :data:`TOOL_CHAT_TEMPLATE`, is ChatML with tools (as
            Qwen's and Hermes': tools in a system block, calls as ``<tool_call>`` JSON).
        vocab_size: the vocabulary's size at most, special tokens (:data:`SPECIAL_TOKENS`) included.

    Needs the ``[train]`` extra. Pair it with :func:`build_tiny_llama` or :func:`save_tiny_llama`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=chat_template
    )


def build_tiny_llama(tokenizer: Any, *, max_positions: int = 1024, seed: int = 0) -> Any:
    """A randomly initialised 2-layer Llama (hidden size 64, about 0.1M parameters plus embeddings) sized for
    ``tokenizer`` (:func:`build_test_tokenizer`'s): a TEST model whose answers are random, for checking that training,
    serving and evaluation run, never for what they score.

    Args:
        tokenizer: the tokenizer whose vocabulary and bos/eos/pad tokens the model uses.
        max_positions: the longest sequence it takes (prompt and answer), in tokens.
        seed: the seed of its random weights (the same seed, the same model).

    Sets torch to one thread. Needs the ``[train]`` extra.
    """
    import torch
    import transformers

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.LlamaForCausalLM(config)


ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")
"""What :func:`build_tiny_model` builds. GPT-2 has no ``q_proj``/``v_proj``: its attention is one fused ``c_attn`` (a Conv1D)."""


def build_tiny_model(tokenizer: Any, architecture: str = "llama", *, max_positions: int = 1024, seed: int = 0) -> Any:
    """A randomly initialised 2-layer causal LM of ``architecture`` (one of :data:`ARCHITECTURES`) sized for ``tokenizer``."""
    if architecture == "llama":
        return build_tiny_llama(tokenizer, max_positions=max_positions, seed=seed)
    import torch
    import transformers

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tokens = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "vocab_size": len(tokenizer)}
    if architecture == "gpt2":
        config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=max_positions, **tokens)
        return transformers.GPT2LMHeadModel(config)
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    common = {**sizes, **tokens, "max_position_embeddings": max_positions, "pad_token_id": tokenizer.pad_token_id}
    if architecture == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=True))
    if architecture == "mistral":
        return transformers.MistralForCausalLM(transformers.MistralConfig(**common, sliding_window=None))
    raise ValueError(f"unknown architecture {architecture!r}: one of {', '.join(ARCHITECTURES)}")


def force_answers(model: Any, scripts: Sequence[Sequence[int]]) -> dict[str, int]:
    """Make a (tiny, random) causal LM write ``scripts`` (token ids): its output layer is forced to the next token of the
    current script at every step, so real generation (sampling, stop tokens, chat templates, servers) writes exactly
    those tokens. Each new prompt (a forward pass over more than one token) moves to the next script; past the last one,
    the last script starts again (one script: every prompt gets it). Returns the hooks' state (``answer``: the script
    being written, ``next``: its next token), for a test that wants to look."""
    import torch

    state = {"answer": -1, "next": 0}

    def restart(module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            state["answer"], state["next"] = state["answer"] + 1, 0

    def write(module: Any, inputs: Any, logits: Any) -> Any:
        script = scripts[min(max(state["answer"], 0), len(scripts) - 1)]
        token = script[min(state["next"], len(script) - 1)]
        state["next"] += 1
        forced = torch.full_like(logits[:, -1, :], -1e9)
        forced[:, token] = 0.0
        logits[:, -1, :] = forced
        return logits

    model.model.register_forward_pre_hook(restart, with_kwargs=True)
    model.lm_head.register_forward_hook(write)
    return state


def save_tiny_model(folder: Path, tokenizer: Any, architecture: str = "llama", *, max_positions: int = 1024, seed: int = 0) -> Path:
    """:func:`build_tiny_model` saved with its tokenizer as a base-model folder (``save_pretrained``)."""
    build_tiny_model(tokenizer, architecture, max_positions=max_positions, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_llama(folder: Path, tokenizer: Any, *, max_positions: int = 1024, seed: int = 0) -> Path:
    """:func:`build_tiny_llama` saved with its tokenizer as a base-model folder (``save_pretrained``): a base model
    for a dry run of ``ee improve`` (``--base-model FOLDER`` or ``[improve] base_model``), ``ee train`` or ``ee serve
    local`` on your own app, in a minute on a CPU and with nothing downloaded. Its weights are random: every stage
    runs, and what the evaluation and the gate report means nothing.

    Example (a tokenizer learnt from your app's tasks and tool schemas, so that its prompts stay short)::

        import json
        from pathlib import Path

        from ee_middleware.testing import build_test_tokenizer, save_tiny_llama
        from myapp.tools import TOOLS  # your LangChain tools

        corpus = ["reset the VPN password of u101", *(json.dumps(t.tool_call_schema.model_json_schema()) for t in TOOLS)]
        save_tiny_llama(Path("models/tiny-base"), build_test_tokenizer(corpus, vocab_size=800), max_positions=4096)

    Args:
        folder: where to save it (created if missing).
        tokenizer: :func:`build_test_tokenizer`'s, saved with it.
        max_positions: the longest sequence it takes, in tokens: at least ``[train] max_length`` and the longest
            prompt evaluation gives it.
        seed: the seed of its random weights.

    Returns ``folder``. Needs the ``[train]`` extra.
    """
    build_tiny_llama(tokenizer, max_positions=max_positions, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_metadata_gguf(path: Path, *, context_length: int, architecture: str = "llama") -> Path:
    """A real GGUF file (the ``gguf`` package's writer) with an architecture and a context length and no tensors: what
    a check reads from a GGUF base's metadata before loading it (loading this one fails: it has no weights)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(context_length)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
