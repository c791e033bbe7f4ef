"""Fixtures for the serving tests: a tiny random Llama with SmolLM2's chat template, real peft adapters, a real local server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's own chat template (it ignores tools and tool calls)."""

CORPUS = [
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "Where is order A-1001? Move file_1.txt into the docs folder.",
    '<tool_call>{"name": "mv", "arguments": {"source": "a", "destination": "b"}}</tool_call>',
    "You may call these tools: system user assistant tool function parameters type object string",
]


@pytest.fixture(scope="session", autouse=True)
def _cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """EE_CACHE_DIR in a temporary folder for the session: servers started here record their chat template there
    (ee_middleware.adapters.serving.rendering), not in the user's ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("ee-cache")
    before = os.environ.get("EE_CACHE_DIR")
    os.environ["EE_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("EE_CACHE_DIR", None)
    else:
        os.environ["EE_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved with a tokenizer whose chat template is SmolLM2's."""
    pytest.importorskip("peft")
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    tokenizer = build_test_tokenizer(CORPUS, chat_template=SMOLLM2_TEMPLATE)
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-base"), tokenizer)


def train_shaped_adapter(base: Path, out: Path, *, rank: int = 4, zero: bool = False, seed: int = 0) -> Path:
    """A real peft LoRA adapter for ``base``: random A and B (``zero=False``), or peft's default init with B = 0."""
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    config = peft.LoraConfig(r=rank, lora_alpha=4 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=zero)
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_set(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from ee_middleware.adapters.testing import ConformanceAdapters

    root = tmp_path_factory.mktemp("adapters")
    return ConformanceAdapters(
        perturbed=train_shaped_adapter(tiny_base, root / "perturbed", seed=1),
        zero=train_shaped_adapter(tiny_base, root / "zero", zero=True),
        too_big=train_shaped_adapter(tiny_base, root / "big", rank=32, seed=2),
    )


@pytest.fixture(scope="module")
def local_server(tiny_base: Path) -> Iterator[Any]:
    """A real local server process on a free port (the shipped SmolLM2 tool template), stopped after the module."""
    from ee_middleware.adapters.serving.launch import ServerProcess, free_port, local_command
    from ee_middleware.adapters.templates import template_path

    port = free_port()
    command = local_command(
        str(tiny_base), port=port, served_model_name="tiny-base", max_lora_rank=8, chat_template=str(template_path("smollm2-tools"))
    )
    # ends with this test process even when it is killed (a CI timeout, Ctrl-C twice): a module's server is up longest
    server = ServerProcess(command, f"http://127.0.0.1:{port}/v1", name="local server", end_with_parent=True)
    with server:
        yield server
    assert not server.running()
