"""The local server after an adapter load that fails part-way (weights of another shape: an adapter trained on another
base). peft injects the LoRA layers before it reads the weights; before, they stayed in the base model (peft warned
"Already found a `peft_config` attribute" at the next load), so the base served requests through layers of an adapter
that was never loaded. A real tiny Llama and real peft adapters, in process."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from .conftest import train_shaped_adapter

MESSAGES = [{"role": "user", "content": "Where is order A-1001?"}]


def _misshapen(good: Path, out: Path) -> Path:
    """``good``'s config with weights one column wider than the base's layers: its load fails with a size mismatch."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(good, out)
    weights = load_file(str(out / "adapter_model.safetensors"))
    wider = {key: torch.zeros(value.shape[0], value.shape[1] + 1) if "lora_A" in key else value for key, value in weights.items()}
    save_file(wider, str(out / "adapter_model.safetensors"))
    return out


@pytest.fixture(scope="module")
def server(tiny_base: Path) -> Any:
    from ee_middleware.adapters.serving.local_server import LocalModelServer

    return LocalModelServer(tiny_base, served_model_name="tiny-base")


def _injected(model: Any) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def _answer(server: Any, model: str) -> str:
    body = {"model": model, "messages": MESSAGES, "temperature": 0, "max_tokens": 6}
    return str(server.chat(body)["choices"][0]["message"]["content"])


def test_a_first_load_that_fails_leaves_the_base_model_as_it_was(server: Any, tiny_base: Path, tmp_path: Path) -> None:
    from ee_middleware.adapters.serving.http import RequestError

    good = train_shaped_adapter(tiny_base, tmp_path / "good", seed=1)
    bad = _misshapen(good, tmp_path / "bad")
    before = _answer(server, "tiny-base")
    with pytest.raises(RequestError, match="Cannot load the adapter"):
        server.load_adapter({"lora_name": "bad", "lora_path": str(bad)})
    assert server.model is server.base_model and server.adapters == {}
    assert _injected(server.base_model) == [], "no LoRA layer is left in the base model"
    assert "peft_config" not in vars(server.base_model)
    assert _answer(server, "tiny-base") == before

    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        server.load_adapter({"lora_name": "good", "lora_path": str(good)})
    assert not [w for w in heard if "peft_config" in str(w.message)], "peft found no leftover of the failed load"
    assert _answer(server, "tiny-base") == before

    # a further adapter that fails: the model holding the others keeps only them
    with pytest.raises(RequestError, match="Cannot load the adapter"):
        server.load_adapter({"lora_name": "bad", "lora_path": str(bad)})
    assert set(server.model.peft_config) == {server._peft_names["good"]}
    with_good = _answer(server, "good")
    server.unload_adapter({"lora_name": "good"})
    assert _injected(server.base_model) == [] and _answer(server, "tiny-base") == before
    server.load_adapter({"lora_name": "good", "lora_path": str(good)})
    assert _answer(server, "good") == with_good
    server.unload_adapter({"lora_name": "good"})


def test_a_failed_first_load_of_an_adapter_with_modules_to_save_leaves_no_wrapper(tiny_base: Path, tmp_path: Path) -> None:
    """Review R14 L4: peft wraps a ``modules_to_save`` module (``lm_head``) in a ``ModulesToSaveWrapper``, no LoRA layer,
    which the clean-up left in the base model, holding the failed adapter's own ``lm_head`` copy."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.utils.other import AuxiliaryTrainingWrapper
    from transformers import AutoModelForCausalLM

    from ee_middleware.adapters.serving.http import RequestError
    from ee_middleware.adapters.serving.local_server import LocalModelServer

    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), config).save_pretrained(tmp_path / "good")
    bad = _misshapen(tmp_path / "good", tmp_path / "bad")
    shutil.rmtree(tmp_path / "good")
    server = LocalModelServer(tiny_base, served_model_name="tiny-base")
    before = _answer(server, "tiny-base")
    head = server.base_model.get_submodule("lm_head")

    with pytest.raises(RequestError, match="Cannot load the adapter"):
        server.load_adapter({"lora_name": "bad", "lora_path": str(bad)})

    wrapped = [name for name, module in server.base_model.named_modules() if isinstance(module, AuxiliaryTrainingWrapper)]
    assert wrapped == [] and _injected(server.base_model) == [], wrapped
    assert server.base_model.get_submodule("lm_head") is head, "the base's own lm_head, not the adapter's copy"
    assert _answer(server, "tiny-base") == before


@pytest.mark.parametrize("name", [["x"], {"a": 1}, 3, None, ""])
def test_an_unload_whose_name_is_no_string_is_a_400(server: Any, name: Any) -> None:
    """A list as lora_name was a 500 (TypeError: unhashable type: 'list'), where load answers 400 (a serving sweep of
    2026-12-07)."""
    from ee_middleware.adapters.serving.http import RequestError

    with pytest.raises(RequestError) as raised:
        server.unload_adapter({"lora_name": name})
    assert raised.value.status == 400 and "lora_name is a required string" in str(raised.value), raised.value
