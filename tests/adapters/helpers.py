"""Adapter folders for the tests: real safetensors files, as peft writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_adapter(folder: Path, *, rank: int = 8, base: str = "/models/base", seed: int = 0, manifest: dict | None = None) -> Path:
    """A LoRA adapter folder (config + random weights + optional manifest), without a model behind it."""
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "base_model_name_or_path": base, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    save_file(
        {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.standard_normal((rank, 4)).astype(np.float32)},
        str(folder / "adapter_model.safetensors"),
    )
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
