"""peft saves a ``rank_pattern`` entry unchanged even when it matches none of the adapter's modules (a pattern carried
over from another config, or keyed to layers ``layers_to_transform`` leaves out). Such an entry changes no matrix, so
it must not raise the adapter's rank: ``LoraConfig(r=4, target_modules=["q_proj"], rank_pattern={"v_proj": 32})`` has
only rank-4 matrices, and vLLM (which checks ``r``) loads it under ``--max-lora-rank 8``. Before, adapter_rank said 32
and register refused it. REAL peft adapters on the tiny Llama, REAL registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.errors import RankTooLargeError
from ee_middleware.adapters.records import adapter_rank
from ee_middleware.adapters.registry import open_registry


def _peft_adapter(base: Path, out: Path, *, safetensors: bool = True, **options: Any) -> Path:
    import peft
    import torch
    import transformers

    torch.manual_seed(5)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    config = peft.LoraConfig(lora_alpha=8, init_lora_weights=False, **options)
    peft.get_peft_model(model, config).save_pretrained(out, safe_serialization=safetensors)
    return out


def _lora_a_rows(folder: Path) -> set[int]:
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as weights:
        return {weights.get_slice(name).get_shape()[0] for name in weights.keys() if "lora_A" in name}  # noqa: SIM118 - not a dict


def test_a_rank_pattern_entry_for_a_module_not_targeted_raises_no_rank(tiny_base: Path, tmp_path: Path) -> None:
    adapter = _peft_adapter(tiny_base, tmp_path / "a", r=4, target_modules=["q_proj"], rank_pattern={"v_proj": 32})
    assert _lora_a_rows(adapter) == {4}
    assert adapter_rank(adapter) == 4
    registry = open_registry(tmp_path / "registry")
    assert registry.register(adapter, "bot", max_lora_rank=8).rank == 4


def test_a_rank_pattern_entry_for_layers_left_out_raises_no_rank(tiny_base: Path, tmp_path: Path) -> None:
    """The entry names a real target module, but of a layer ``layers_to_transform`` leaves out: the weights say 4."""
    adapter = _peft_adapter(
        tiny_base,
        tmp_path / "a",
        r=4,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=[0],
        rank_pattern={"layers.1.self_attn.v_proj": 32},
    )
    assert _lora_a_rows(adapter) == {4}
    assert adapter_rank(adapter) == 4


def test_an_applied_entry_still_counts_from_the_weights(tiny_base: Path, tmp_path: Path) -> None:
    adapter = _peft_adapter(tiny_base, tmp_path / "a", r=4, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 32, "k_proj": 64})
    assert _lora_a_rows(adapter) == {4, 32}
    assert adapter_rank(adapter) == 32
    with pytest.raises(RankTooLargeError, match="rank r=32"):
        open_registry(tmp_path / "registry").register(adapter, "bot", max_lora_rank=8)


def test_r_above_every_matrix_is_still_the_rank(tiny_base: Path, tmp_path: Path) -> None:
    """vLLM refuses ``r`` above ``--max-lora-rank`` whatever the matrices hold, so r stays the floor."""
    adapter = _peft_adapter(tiny_base, tmp_path / "a", r=16, target_modules=["q_proj"], rank_pattern={"q_proj": 2})
    assert _lora_a_rows(adapter) == {2}
    assert adapter_rank(adapter) == 16


@pytest.mark.parametrize(
    ("key", "counted"),
    [
        ("v_proj", True),
        ("model.layers.0.self_attn.v_proj", True),
        (r"layers\.0\..*v_proj", True),
        ("(q|v)_proj", True),
        ("k_proj", False),
        ("gate_proj", False),
        ("self_attn.k_proj", False),
    ],
)
def test_without_safetensors_weights_only_entries_matching_a_target_count(tiny_base: Path, tmp_path: Path, key: str, counted: bool) -> None:
    """``.bin`` weights (no header to read): the config decides, with peft's matching rule against target_modules."""
    adapter = _peft_adapter(tiny_base, tmp_path / "a", safetensors=False, r=4, target_modules=["q_proj", "v_proj"], rank_pattern={key: 32})
    assert (adapter / "adapter_model.bin").is_file()
    assert not (adapter / "adapter_model.safetensors").exists()
    assert adapter_rank(adapter) == (32 if counted else 4)
