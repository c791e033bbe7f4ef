"""Training end to end with a tiny random Llama saved as a base-model folder (CPU, one thread)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.trainers.training import (
    BaseModelError,
    ContextBudgetWarning,
    RenderingFallbackWarning,
    TrainConfig,
    TrainDataError,
    TrainError,
    TrainOutOfMemoryError,
    train,
)
from ee_middleware.trainers.training.model import resolve_base
from tests.models.family_templates import QWEN_2_5

from .conftest import build_tokenizer, il_row, write_dataset

torch = pytest.importorskip("torch")


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def config(base: Path, data: Path, out: Path, **overrides: Any) -> TrainConfig:
    # A random 2-layer model learns too slowly through q_proj/v_proj alone: adapt every linear layer here.
    values: dict[str, Any] = {
        "base_model": str(base),
        "data": data,
        "output_dir": out,
        "learning_rate": 1e-2,
        "batch_size": 4,
        "seed": 0,
        "target_modules": ALL_LINEAR,
    }
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def il_run(tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """IL with trl: 16 rows, 4 a step, 6 epochs -> 24 optimizer updates."""
    out = tmp_path_factory.mktemp("runs") / "il-adapter"
    return train(config(tiny_model_dir, data_dir, out, schedule="il", epochs=6), progress=False)


def test_loss_goes_down(il_run: Any) -> None:
    metrics = il_run.metrics
    assert metrics["steps"] == 24 and len(il_run.manifest["losses"]) == 24
    assert metrics["final_loss"] < metrics["first_loss"] - 0.5, il_run.manifest["losses"]


def test_adapter_reloads_and_changes_the_logits(il_run: Any, tiny_model_dir: Path, tool_tokenizer: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = il_run.adapter_dir
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert adapter_config["r"] == 8 and sorted(adapter_config["target_modules"]) == sorted(ALL_LINEAR)
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    ids = tool_tokenizer("<|im_start|>user\nGo into temp<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, adapter).eval()
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max().item() > 1e-2


def test_manifest_records_hashes_versions_and_metrics(il_run: Any, data_dir: Path) -> None:
    import hashlib

    manifest = json.loads((il_run.adapter_dir / "manifest.json").read_text())
    il = manifest["datasets"]["il"]
    assert il["sha256"] == hashlib.sha256((data_dir / "il.parquet").read_bytes()).hexdigest()
    assert il["rows"] == 16 and il["render"]["examples"] == 16 and il["render"]["truncated"] == 0
    assert set(manifest["versions"]) >= {"torch", "transformers", "peft", "trl"} and manifest["versions"]["trl"]
    metrics = manifest["metrics"]
    assert metrics["device"] == "cpu" and metrics["backend"] == "trl" and not metrics["bf16"]
    assert metrics["tokens"] > 0 and metrics["tokens_per_s"] > 0 and metrics["duration_s"] > 0
    assert manifest["config"]["schedule"] == "il" and manifest["rendering"]["tool_calls"] == "chat template"
    assert (il_run.adapter_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(il_run.adapter_dir.parent.glob("*.partial-*"))


def test_iwm_runs_two_stages_with_the_same_total_steps_as_il(il_run: Any, tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    result = train(config(tiny_model_dir, data_dir, tmp_path / "iwm", schedule="iwm", epochs=6), progress=False)
    metrics = result.metrics
    assert metrics["steps"] == il_run.metrics["steps"] == 24
    # IWM: min(one pass over 24 rows = 6, half of 24 = 12) = 6 updates, then 18 of IL on the same adapter
    assert [(s["name"], s["steps"]) for s in metrics["stages"]] == [("iwm", 6), ("il", 18)]
    assert [s for s, _ in result.manifest["losses"]] == list(range(1, 25))
    assert metrics["stage_boundaries"][1] == {"stage": "il", "first_step": 7, "last_step": 24}
    assert (result.adapter_dir / "loss.png").is_file()


def test_sr_mixes_with_il_and_the_plain_loop_learns(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    result = train(config(tiny_model_dir, data_dir, tmp_path / "sr", schedule="sr", backend="peft-loop", max_steps=20), progress=False)
    manifest = result.manifest
    assert manifest["schedule"]["stages"] == [{"name": "sr+il", "kinds": ["sr", "il"], "steps": 20}]
    assert set(manifest["datasets"]) == {"sr", "il"} and manifest["datasets"]["sr"]["render"]["examples"] == 8
    assert result.metrics["steps"] == 20 and result.metrics["backend"] == "peft-loop"
    assert result.metrics["final_loss"] < result.metrics["first_loss"] - 0.3, result.manifest["losses"]
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_plain_template_model_trains_on_tool_calls_as_text(plain_template_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    result = train(config(plain_template_model_dir, data_dir, tmp_path / "plain", max_steps=2), progress=False)
    assert result.manifest["rendering"]["tools"].startswith("system message")
    assert result.manifest["datasets"]["il"]["render"]["loss_tokens"] > 16 * 10


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])
def test_other_architectures_train_with_the_default_target_modules(
    architecture: str, tool_tokenizer: Any, data_dir: Path, tmp_path: Path
) -> None:
    """The default target_modules fit the base: q_proj/v_proj where it has them, else peft's choice for its
    architecture (GPT-2's fused c_attn). Was, for GPT-2: 'The base model has no module(s) named q_proj, v_proj'."""
    from ee_middleware.testing.tiny_models import save_tiny_model

    base = save_tiny_model(tmp_path / architecture, tool_tokenizer, architecture)
    result = train(
        TrainConfig(base_model=str(base), data=data_dir, output_dir=tmp_path / "out", max_steps=2, batch_size=4, backend="peft-loop"),
        progress=False,
    )
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == (["c_attn"] if architecture == "gpt2" else ["q_proj", "v_proj"])
    assert result.metrics["steps"] == 2 and result.manifest["lora"]["target_modules"] == sorted(adapter_config["target_modules"])


# --- errors: each names the fix ---------------------------------------------------------------


def test_target_modules_the_base_lacks_are_named_with_the_layers_it_has(tool_tokenizer: Any, data_dir: Path, tmp_path: Path) -> None:
    from ee_middleware.testing.tiny_models import save_tiny_model

    base = save_tiny_model(tmp_path / "gpt2", tool_tokenizer, "gpt2")
    with pytest.raises(BaseModelError, match=r"no module\(s\) named q_proj.*its linear layers are c_attn, c_fc, c_proj\b"):
        train(config(base, data_dir, tmp_path / "out", target_modules=("q_proj", "v_proj")), progress=False)


def test_a_max_length_beyond_the_base_models_context_is_named(tool_tokenizer: Any, data_dir: Path, tmp_path: Path) -> None:
    """A GPT-2-style base has a position table of n_positions rows: a longer example was 'unexpected IndexError: index
    out of range in self' mid-training. Now refused before training, naming both lengths and the fix."""
    from ee_middleware.testing.tiny_models import save_tiny_model

    base = save_tiny_model(tmp_path / "gpt2", tool_tokenizer, "gpt2", max_positions=48)
    for backend in ("trl", "peft-loop"):
        with pytest.raises(
            TrainError,
            match=r"max_length=1024 is longer than the base model's context \(48 tokens: n_positions in .*config.json\).*max_length.* 48 or less",
        ):
            train(
                TrainConfig(base_model=str(base), data=data_dir, output_dir=tmp_path / backend, max_steps=1, backend=backend),
                progress=False,
            )
        assert not (tmp_path / backend).exists()
    result = train(
        TrainConfig(base_model=str(base), data=data_dir, output_dir=tmp_path / "fits", max_steps=1, max_length=48), progress=False
    )
    assert result.metrics["steps"] == 1


def test_missing_base_model(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match=r"No base model at .*never downloaded"):
        train(config(tmp_path / "nope", data_dir, tmp_path / "out"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match=r"no config.json and no .gguf file.*save_pretrained"):
        train(config(tmp_path / "empty", data_dir, tmp_path / "out"), progress=False)


def test_unloadable_base_model(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(BaseModelError, match=r"Cannot load a causal language model from .* offline"):
        train(config(folder, data_dir, tmp_path / "out"), progress=False)


def test_gguf_is_found_in_a_folder(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_base(str(tmp_path)).gguf_file == "m.gguf"
    assert resolve_base(str(tmp_path / "m.gguf")).folder == tmp_path.resolve()


def test_missing_and_empty_datasets(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainDataError, match=r"No IL dataset at .*il\.parquet.*--data"):
        train(config(tiny_model_dir, tmp_path / "data", tmp_path / "out"), progress=False)
    write_dataset(tmp_path / "data", "il", [])
    with pytest.raises(TrainDataError, match=r"has no rows"):
        train(config(tiny_model_dir, tmp_path / "data", tmp_path / "out"), progress=False)
    write_dataset(tmp_path / "data", "il", [il_row(0, "temp")])
    with pytest.raises(TrainDataError, match=r"No IWM dataset"):
        train(config(tiny_model_dir, tmp_path / "data", tmp_path / "out", schedule="iwm"), progress=False)


def test_malformed_rows_name_file_and_row(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad_json = il_row(1, "temp")
    bad_json["prompt"] = "[{'role': 'user'"
    write_dataset(tmp_path / "data", "il", [il_row(0, "temp"), bad_json])
    with pytest.raises(TrainDataError, match=r"il\.parquet row 1 \(id 'il-1'\): prompt is not valid JSON"):
        train(config(tiny_model_dir, tmp_path / "data", tmp_path / "out"), progress=False)
    not_chat = il_row(0, "temp")
    not_chat["completion"] = json.dumps([{"role": "user", "content": "x"}])
    write_dataset(tmp_path / "data", "il", [not_chat])
    with pytest.raises(TrainDataError, match=r"row 0 .*one assistant message"):
        train(config(tiny_model_dir, tmp_path / "data", tmp_path / "out"), progress=False)


def test_all_rows_too_long(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainDataError, match=r"Every row .* dropped .*Raise max_length"):
        train(config(tiny_model_dir, data_dir, tmp_path / "out", max_length=8), progress=False)


def test_rows_dropped_for_their_target_s_length_are_said(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Sweep B, finding 2: with some rows' targets longer than max_length, ``ee train`` exited 0 having trained on the
    rest, saying nothing of those it dropped (75% of the SR rows there); the context warning counted only the kept
    rows but called them "the SR rows"."""
    long = il_row(1, "temp")
    long["completion"] = json.dumps([{"role": "assistant", "content": "word " * 400}])
    write_dataset(tmp_path / "data", "il", [il_row(0, "temp"), long, il_row(2, "temp")])
    with pytest.warns(ContextBudgetWarning) as caught:
        train(config(tiny_model_dir, tmp_path / "data", tmp_path / "out", max_length=256, max_steps=1), progress=False)
    said = [str(w.message) for w in caught if "not trained on" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
    assert "1 of the 3 IL rows of " in said[0] and "(33%) are not trained on: 1 have a target of max_length=256 tokens or more" in said[0]
    assert "raise max_length" in said[0]


def test_out_of_memory_suggests_smaller_settings(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def oom(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.nn.Embedding, "forward", oom)  # the first layer of the forward pass
    for backend in ("trl", "peft-loop"):
        with pytest.raises(TrainOutOfMemoryError, match=r"Lower batch_size .*max_length.*gradient_checkpointing"):
            train(config(tiny_model_dir, data_dir, tmp_path / backend, max_steps=1, backend=backend), progress=False)
    assert not (tmp_path / "trl").exists()


def test_an_existing_adapter_is_never_overwritten(il_run: Any, tiny_model_dir: Path, data_dir: Path) -> None:
    before = (il_run.adapter_dir / "adapter_model.safetensors").read_bytes()
    with pytest.raises(TrainError, match=r"already holds an adapter.*new output_dir"):
        train(config(tiny_model_dir, data_dir, il_run.adapter_dir, max_steps=1), progress=False)
    assert (il_run.adapter_dir / "adapter_model.safetensors").read_bytes() == before


def test_a_second_run_into_the_folder_a_run_is_training_for_is_refused_naming_it(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: two ``ee train`` runs with one --output-dir (a cron job and a manual run) both passed the start check, both
    exited 0 printing the same adapter_dir, and the folder ended up with the last one's files: the first adapter was
    overwritten. Here a real ``ee train`` process is started into the folder while this run trains (after its stages,
    before it writes): it is refused at once, naming the folder, and this run's adapter is written whole."""
    import subprocess
    import sys

    from ee_middleware.trainers.training import api

    out = tmp_path / "adapters" / "v1"
    second: list[subprocess.CompletedProcess[str]] = []
    real = api._run_stages

    def train_then_start_another(*args: Any, **kwargs: Any) -> Any:
        runs = real(*args, **kwargs)
        command = [sys.executable, "-m", "ee_middleware.cli", "train", "--base-model", str(tiny_model_dir), "--data", str(data_dir)]
        command += ["--schedule", "iwm", "--max-steps", "1", "--seed", "2", "--output-dir", str(out), "--no-progress"]
        second.append(subprocess.run(command, capture_output=True, text=True, timeout=600))
        return runs

    monkeypatch.setattr(api, "_run_stages", train_then_start_another)
    result = train(config(tiny_model_dir, data_dir, out, schedule="il", max_steps=1, seed=1), progress=False)
    [other] = second
    error = " ".join(other.stderr.split())
    assert other.returncode == 1, other.stderr
    assert f"Another training run is writing an adapter to {out}" in error and f"(pid {os.getpid()} on " in error, error
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["config"]["schedule"], manifest["config"]["seed"]) == ("il", 1) and result.adapter_dir == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["v1"], "no lock file or partial folder is left"


def test_an_adapter_put_into_the_folder_during_the_run_is_kept_and_this_runs_adapter_set_aside(
    il_run: Any, tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something that takes no lock (a copy, an older version of ee) puts an adapter into the output folder while the run
    trains (stood in for by copying a real adapter there after the stages): the run does not merge its files over it
    (was: the folder ended up a mix of both), and keeps its own adapter in a folder it names."""
    import shutil

    from ee_middleware.trainers.training import api

    out = tmp_path / "v1"
    real = api._run_stages

    def train_then_copy_in(*args: Any, **kwargs: Any) -> Any:
        runs = real(*args, **kwargs)
        shutil.copytree(il_run.adapter_dir, out)
        return runs

    monkeypatch.setattr(api, "_run_stages", train_then_copy_in)
    with pytest.raises(
        TrainError, match=r"Not written to .*v1: .*already holds an adapter.*This run's adapter is in (\S+v1\.unpublished-\S+):"
    ):
        train(config(tiny_model_dir, data_dir, out, schedule="iwm", max_steps=1), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in il_run.adapter_dir.iterdir()}
    [kept] = [p for p in tmp_path.iterdir() if p.name.startswith("v1.unpublished-")]
    assert json.loads((kept / "manifest.json").read_text())["config"]["schedule"] == "iwm"
    assert (kept / "adapter_model.safetensors").is_file()


def test_rows_that_lose_tools_or_task_are_warned_about_and_recorded(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    with pytest.warns(ContextBudgetWarning, match=r"lose more than older turns at max_length=96.*Raise max_length"):
        result = train(config(tiny_model_dir, data_dir, tmp_path / "short", max_steps=1, max_length=96), progress=False)
    render = result.manifest["datasets"]["il"]["render"]
    assert render["truncated"] > 0 and render["compact_tools"] + render["left_cut"] > 0
    cuts = [json.loads(line) for line in (result.adapter_dir / "render_cuts.jsonl").read_text().splitlines()]
    assert len(cuts) == render["truncated"] and {cut["kind"] for cut in cuts} == {"il"}
    assert all(cut["original_tokens"] > cut["tokens"] or cut["left_cut_tokens"] for cut in cuts)


def test_a_base_whose_generation_prompt_opens_think_trains_the_calls_and_says_how(data_dir: Path, tmp_path: Path) -> None:
    """A base with QwQ-32B's chat template (generation prompt '<|im_start|>assistant\\n<think>\\n'). Was: `ee train`
    exited quietly with every IL tool-call target trained as '<|im_end|>' alone (fallback_completion: 16 in the
    manifest). Now the rows are the template's rendering of the conversation, calls included, and a warning and the
    manifest say so."""
    from ee_middleware.testing.tiny_models import save_tiny_llama
    from tests.models.family_templates import QWQ_32B

    base = save_tiny_llama(tmp_path / "qwq-base", build_tokenizer(QWQ_32B))
    with pytest.warns(RenderingFallbackWarning, match=r"Of the 16 IL rows, 16 are rendered as the whole conversation"):
        result = train(config(base, data_dir, tmp_path / "qwq", max_steps=1), progress=False)
    render = result.manifest["datasets"]["il"]["render"]
    assert (render["conversation_completion"], render["fallback_completion"], render["calls_as_text"]) == (16, 0, 0)
    assert render["loss_tokens"] > 16 * 10, "each target's call is in its labels, not only the end of turn"


def test_a_base_whose_template_shows_no_message_text_is_refused_naming_the_fix(data_dir: Path, tmp_path: Path) -> None:
    """A ShareGPT-style template (message['from'] / message['value']) rendered every prompt and completion without text:
    `ee train` trained on '<|im_start|>\n<|im_end|>\n' rows and wrote an adapter. Now it is refused before training."""
    from ee_middleware.testing.tiny_models import save_tiny_llama
    from tests.models.test_chat_template import SHAREGPT_TEMPLATE

    base = save_tiny_llama(tmp_path / "sharegpt-base", build_tokenizer(SHAREGPT_TEMPLATE))
    with pytest.raises(BaseModelError, match=r"renders no text of a user and an assistant message.*tokenizer\.chat_template"):
        train(config(base, data_dir, tmp_path / "sharegpt", max_steps=1), progress=False)
    assert not (tmp_path / "sharegpt").exists()


def test_a_base_whose_template_reads_content_parts_trains_on_the_rows_text(data_dir: Path, tmp_path: Path) -> None:
    """SmolVLM's (Idefics3's) template showed no string content: the labels were ' <end_of_utterance>\n' alone. Now its
    rows' text reaches it as content parts; the manifest says so."""
    from ee_middleware.testing.tiny_models import save_tiny_llama
    from tests.models.test_chat_template import CONTENT_PARTS_TEMPLATE

    base = save_tiny_llama(tmp_path / "parts-base", build_tokenizer(CONTENT_PARTS_TEMPLATE))
    result = train(config(base, data_dir, tmp_path / "parts", max_steps=1, backend="peft-loop"), progress=False)
    assert "content" in result.manifest["rendering"]
    assert result.manifest["datasets"]["il"]["render"]["loss_tokens"] > 16 * 10, "each target's call is in its labels"


def test_a_tokenizer_without_pad_and_eos_tokens_trains_with_trl(data_dir: Path, tmp_path: Path) -> None:
    """A tokenizer that names no pad and no eos token (its template writes its own end of turn) crashed trl's trainer
    with "unexpected ValueError: The specified pad_token ('None') is not found in the vocabulary"; the peft-loop backend
    padded with id 0. Both pad now (labels are -100 on padding either way)."""
    from ee_middleware.testing.tiny_models import save_tiny_llama

    tokenizer = build_tokenizer(QWEN_2_5)
    tokenizer.pad_token = tokenizer.eos_token = tokenizer.bos_token = None
    base = save_tiny_llama(tmp_path / "no-pad-base", tokenizer)
    result = train(config(base, data_dir, tmp_path / "no-pad", max_steps=2, batch_size=4), progress=False)
    assert result.metrics["steps"] == 2 and (tmp_path / "no-pad" / "adapter_model.safetensors").is_file()


def test_rows_that_fit_are_not_cut(il_run: Any) -> None:
    render = il_run.manifest["datasets"]["il"]["render"]
    assert (render["truncated"], render["middle_dropped"], render["compact_tools"], render["left_cut"]) == (0, 0, 0, 0)
    assert (il_run.adapter_dir / "render_cuts.jsonl").read_text() == ""


def test_a_heldout_file_is_never_trained_on(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    import polars as pl

    from ee_middleware.trainers.datasets.split import HELDOUT, SPLIT_METADATA_KEY

    heldout = tmp_path / "heldout"
    heldout.mkdir()
    pl.read_parquet(data_dir / "il.parquet").write_parquet(heldout / "il.parquet", metadata={SPLIT_METADATA_KEY: HELDOUT})
    with pytest.raises(TrainDataError, match=r"il\.parquet is a held-out dataset .* never trained on"):
        train(config(tiny_model_dir, heldout, tmp_path / "out", max_steps=1), progress=False)
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_is_a_file_is_refused_before_training_and_leaves_nothing(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the whole run trained, then failed naming ``<file>.partial-<pid>/adapter_model.safetensors`` and left that
    folder (the adapter inside) beside the file."""
    from ee_middleware.trainers.training import api

    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    trained: list[str] = []
    real = api._run_stages
    monkeypatch.setattr(api, "_run_stages", lambda *a, **k: trained.append("stage") or real(*a, **k))
    with pytest.raises(TrainError, match=r"notes\.txt is a file, not a folder.*output_dir"):
        train(config(tiny_model_dir, data_dir, taken, max_steps=1), progress=False)
    with pytest.raises(TrainError, match=r"notes\.txt is a file, not a folder"):
        train(config(tiny_model_dir, data_dir, taken / "adapter", max_steps=1), progress=False)
    assert not trained and taken.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_failed_write_leaves_no_partial_folder(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ee_middleware.trainers.training import api

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api, "plot_loss", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(config(tiny_model_dir, data_dir, tmp_path / "runs" / "out", max_steps=1), progress=False)
    assert not list((tmp_path / "runs").glob("*.partial-*")), "the half-written adapter folder is removed"
    assert not (tmp_path / "runs" / "out").exists()


def test_partial_folders_of_killed_runs_are_removed_by_a_later_run(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """A run killed while saving leaves ``<output_dir>.partial-<pid>``; the next run into that output dir removes it,
    never the partial folder of a process still alive (nor another output dir's)."""
    import subprocess
    import sys

    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    killed.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs = tmp_path / "runs"
        for name in (f"out.partial-{killed.pid}", f"out.partial-{alive.pid}", f"other.partial-{killed.pid}"):
            (runs / name).mkdir(parents=True)
            (runs / name / "adapter_model.safetensors").write_bytes(b"half")
        train(config(tiny_model_dir, data_dir, runs / "out", max_steps=1), progress=False)
        assert sorted(p.name for p in runs.iterdir() if ".partial-" in p.name) == [
            f"other.partial-{killed.pid}",
            f"out.partial-{alive.pid}",
        ]
        assert (runs / "out" / "adapter_model.safetensors").is_file()
    finally:
        alive.kill()
        alive.wait()


def test_a_gguf_bases_context_is_checked_at_start_up_from_its_metadata(tmp_path: Path) -> None:
    """check_base (ee improve's start-up check) skipped a GGUF base's context: a max_length longer than it was found by
    the train stage, after replay and datasets. Now read from the file's metadata, without loading the model."""
    from ee_middleware.testing.tiny_models import save_metadata_gguf
    from ee_middleware.trainers.training.model import check_base

    gguf = save_metadata_gguf(tmp_path / "m.gguf", context_length=48)
    with pytest.raises(
        BaseModelError, match=r"max_length=1024 is longer than the base model's context \(48 tokens: llama.context_length in .*m.gguf\)"
    ):
        check_base(str(gguf), max_length=1024)
    assert check_base(str(gguf), max_length=48).gguf_file == "m.gguf"
    assert check_base(str(tmp_path), max_length=48).gguf_file == "m.gguf", "a folder holding one .gguf"


def test_a_killed_conversions_copy_is_removed_by_the_next_conversion_of_that_file_alone(tmp_path: Path) -> None:
    """A conversion killed while saving left ``<name>-<hash>.partial-...`` in the cache forever. The cache may be shared by
    machines or containers that cannot see each other's processes (review R15 M1: a partial whose pid this process
    could not see was removed, under a live writer on another machine): a partial copy is removed only by the next
    conversion of the same file, which holds that file's lock (so no other writer of it is alive); other files'
    partials are left alone, and a cached copy is used as it is."""
    from ee_middleware.testing.tiny_models import save_metadata_gguf
    from ee_middleware.trainers.training.model import BaseSource, _file_hash, plain_base

    gguf = save_metadata_gguf(tmp_path / "m.gguf", context_length=48)
    cache = tmp_path / "base-models"
    other = cache / "m-0123456789ab.partial-elsewhere-4242"  # another file's conversion, maybe live on another machine
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"half")
    done = cache / f"m-{_file_hash(gguf)[:12]}"  # this file's conversion: the cache is used, nothing is converted
    done.mkdir()
    (done / "config.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"weights")
    assert plain_base(BaseSource(tmp_path, "m.gguf"), cache) == (done, False)
    assert sorted(p.name for p in cache.iterdir() if p.name != ".locks") == sorted([other.name, done.name])


def test_a_copy_without_its_weights_is_converted_again_and_killed_copies_of_the_file_go(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached folder holding a config but no weights (review R15 M1: a conversion whose partial folder was removed under
    it published tokenizer files alone, and every later run got that folder back) is made again, under the file's lock;
    a killed conversion's partial copy of the same file goes then."""
    from ee_middleware.trainers.training import model as model_module
    from ee_middleware.trainers.training.model import BaseSource, _file_hash, plain_base

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    cache = tmp_path / "base-models"
    target = cache / f"m-{_file_hash(gguf)[:12]}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # weights missing
    killed = cache / f"{target.name}.partial-elsewhere-4242"
    killed.mkdir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    real = (AutoTokenizer.from_pretrained(tiny_model_dir), AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    monkeypatch.setattr(model_module, "_load", lambda *args, **kwargs: real)  # a stand-in for dequantizing the GGUF
    folder, created = plain_base(BaseSource(tmp_path, "m.gguf"), cache)
    assert (folder, created) == (target, True) and any(target.glob("*.safetensors"))
    assert not killed.exists() and not list(cache.glob("*.partial-*"))


def test_a_conversion_interrupted_while_saving_leaves_no_partial_folder(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a full disk) while a GGUF base's dequantized copy was being saved left ``<name>.partial-<pid>`` in the
    cache until a later run of another process removed it; now the interrupted conversion removes its own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ee_middleware.testing.tiny_models import save_metadata_gguf
    from ee_middleware.trainers.training import model as base_model

    gguf = save_metadata_gguf(tmp_path / "m.gguf", context_length=48)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "save_pretrained", interrupted)
    monkeypatch.setattr(base_model, "_load", lambda folder, **kwargs: (tokenizer, loaded))  # the GGUF is metadata only
    cache = tmp_path / "base-models"
    with pytest.raises(KeyboardInterrupt):
        base_model.plain_base(base_model.BaseSource(tmp_path, gguf.name), cache)
    assert sorted(p.name for p in cache.iterdir() if p.name != ".locks") == [], "neither a partial copy nor a finished-looking one is left"


def test_a_training_that_diverges_writes_no_adapter_and_says_so(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """A learning rate of 1e6 makes the LoRA weights NaN: before, ee train wrote the adapter and exited 0 (its manifest
    with bare NaN, no JSON; its loss plot ending before the NaN step), and only ee adapters register refused it."""
    out = tmp_path / "diverged"
    with pytest.raises(TrainError, match=r"training diverged: .* hold NaN or infinity.*No adapter was written.*now 1e\+06"):
        train(config(tiny_model_dir, data_dir, out, schedule="il", backend="peft-loop", max_steps=6, learning_rate=1e6), progress=False)
    assert not out.exists() and not list(tmp_path.glob("diverged.partial-*"))


def test_the_manifest_is_strict_json_with_a_loss_that_was_not_a_number(tmp_path: Path) -> None:
    """One step's loss NaN (an fp16 overflow the optimizer skipped) is null in manifest.json, which stays JSON."""
    import json

    from ee_middleware.trainers.training.report import write_manifest

    path = write_manifest(tmp_path, {"metrics": {"final_loss": float("nan")}, "losses": [[1, 2.5], [2, float("inf")]]})
    assert json.loads(path.read_text()) == {"metrics": {"final_loss": None}, "losses": [[1, 2.5], [2, None]]}
