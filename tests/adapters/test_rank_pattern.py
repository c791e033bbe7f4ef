"""An adapter trained with peft's ``rank_pattern`` (per-module ranks) has the rank of its largest module wherever a
``--max-lora-rank`` limits it: registering, the local server's load, and a backend's check before sending a load.
Before, all three read ``r`` alone, so ``LoraConfig(r=4, rank_pattern={"v_proj": 32})`` (rank-32 ``lora_A`` matrices)
passed ``--max-lora-rank 8`` as rank 4. REAL peft adapters on the tiny Llama, REAL registry and local server process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.errors import AdapterFilesError, RankTooLargeError, ServerRankError
from ee_middleware.adapters.records import adapter_rank, inspect_adapter
from ee_middleware.adapters.registry import open_registry
from ee_middleware.adapters.serving.backend import LocalBackend


def _peft_adapter(base: Path, out: Path, **options: Any) -> Path:
    import peft
    import torch
    import transformers

    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    config = peft.LoraConfig(lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **options)
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def patterned(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """r=4, but v_proj at rank 32 (and alpha_pattern, which changes no rank)."""
    out = tmp_path_factory.mktemp("rank-pattern") / "adapter"
    return _peft_adapter(tiny_base, out, r=4, rank_pattern={"v_proj": 32}, alpha_pattern={"v_proj": 64})


def _lora_a_rows(folder: Path) -> set[int]:
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as weights:
        return {weights.get_slice(name).get_shape()[0] for name in weights.keys() if "lora_A" in name}  # noqa: SIM118 - not a dict


def test_the_rank_is_the_largest_of_r_rank_pattern_and_the_lora_a_matrices(patterned: Path, tiny_base: Path, tmp_path: Path) -> None:
    assert _lora_a_rows(patterned) == {4, 32}
    assert adapter_rank(patterned) == 32
    assert inspect_adapter(patterned).rank == 32
    plain = _peft_adapter(tiny_base, tmp_path / "plain", r=4, rank_pattern={})
    assert adapter_rank(plain) == 4

    # a config that lost its rank_pattern (edited, or written by another tool): the weights still say 32
    lost = tmp_path / "lost"
    lost.mkdir()
    for item in patterned.iterdir():
        (lost / item.name).write_bytes(item.read_bytes())
    config = json.loads((lost / "adapter_config.json").read_text())
    config["rank_pattern"] = {}
    (lost / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_rank(lost) == 32


def test_a_rank_pattern_that_is_not_ranks_is_refused_naming_it(patterned: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in patterned.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / "adapter_config.json").read_text())
    config["rank_pattern"] = {"v_proj": "32"}
    (broken / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFilesError, match="rank_pattern that is not module names mapped to ranks"):
        adapter_rank(broken)


def test_register_refuses_it_above_max_lora_rank(patterned: Path, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry")
    with pytest.raises(RankTooLargeError, match="rank r=32, above the servers' --max-lora-rank 8"):
        registry.register(patterned, "bot", max_lora_rank=8)
    assert registry.register(patterned, "bot", max_lora_rank=32).rank == 32


def test_the_local_server_refuses_to_load_it_above_max_lora_rank(patterned: Path, local_server: Any) -> None:
    """The module's real local server runs with --max-lora-rank 8: its answer is vLLM's 500 for a rank above the limit."""
    with pytest.raises(ServerRankError, match="LoRA rank 32 is greater than max_lora_rank 8"):
        LocalBackend(local_server.url).load("patterned", str(patterned))
    assert "patterned" not in LocalBackend(local_server.url).list()


def test_a_backend_given_max_lora_rank_refuses_it_before_sending_it(patterned: Path, local_server: Any) -> None:
    with pytest.raises(ServerRankError, match="has LoRA rank r=32, above the --max-lora-rank 8"):
        LocalBackend(local_server.url, max_lora_rank=8).load("never-sent", str(patterned))
    assert "never-sent" not in LocalBackend(local_server.url).list()
