"""``target_modules`` that name modules LoRA cannot adapt (an attention block, the rotary embedding) are refused like
a name the base lacks, listing the layers it can adapt: by the trainer before it trains, and by the early check
``ee improve`` runs (sweep rtrain finding 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.trainers.training import BaseModelError, TrainConfig, train
from ee_middleware.trainers.training.model import check_target_modules, resolve_base

LLAMA_LAYERS = "its linear layers are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj\\."


@pytest.mark.parametrize(
    ("names", "said"),
    [
        (("self_attn",), r"\(llama\) has self_attn \(LlamaAttention\), which is not a layer LoRA can adapt"),
        (("q_proj", "rotary_emb"), r"has rotary_emb \(LlamaRotaryEmbedding\), which is not a layer LoRA can adapt"),
        (("nothing", "mlp"), r"has no module\(s\) named nothing; and has mlp \(LlamaMLP\), which is not a layer LoRA can adapt"),
    ],
)
def test_a_module_lora_cannot_adapt_is_named_with_the_layers_it_can(
    names: tuple[str, ...], said: str, tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: ``unexpected ValueError: Target module LlamaAttention(...) is not supported`` from peft (a bug report request)."""
    from ee_middleware.trainers.training import api

    monkeypatch.setattr(api, "_run_stages", lambda *args, **kwargs: pytest.fail("trained"))
    with pytest.raises(BaseModelError, match=said + r".*" + LLAMA_LAYERS + r" Set target_modules in \[train\]"):
        train(TrainConfig(base_model=str(tiny_model_dir), data=data_dir, output_dir=tmp_path / "out", target_modules=names), progress=False)
    with pytest.raises(BaseModelError, match=said + r".*" + LLAMA_LAYERS):
        check_target_modules(resolve_base(str(tiny_model_dir)), names)  # ee improve's check, before its first stage
    assert not (tmp_path / "out").exists()


def test_layers_lora_adapts_are_accepted_by_their_last_names_and_dotted_suffixes(tiny_model_dir: Path) -> None:
    source = resolve_base(str(tiny_model_dir))
    check_target_modules(source, ["q_proj", "self_attn.v_proj", "mlp.down_proj", "embed_tokens", "lm_head"])
    with pytest.raises(BaseModelError, match=r"no module\(s\) named attn\.v_proj"):
        check_target_modules(source, ["attn.v_proj"])  # a suffix of whole names only, as peft matches


def test_a_base_without_q_proj_nor_a_peft_default_adapts_its_fused_attention_projection() -> None:
    """Sweep N: `ee train` on a Phi-3 base stopped with "No default LoRA target modules" (peft has no default for
    phi3, whose attention is one qkv_proj layer), and `ee train` has no flag to set them."""
    from transformers import Phi3Config, Phi3ForCausalLM

    from ee_middleware.trainers.training.model import modules_to_adapt

    config = Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, pad_token_id=0)
    assert modules_to_adapt(Phi3ForCausalLM(config), None) == ["qkv_proj"]
