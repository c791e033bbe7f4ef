"""The experience model's dataset (em) from real BFCL transitions, and `ee train --schedule experience-model` on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.replay.experience_eval import split_store
from ee_middleware.replay.sandboxes.experience import build_prompt, parse_prediction
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.trainers.datasets.em import build_em
from ee_middleware.trainers.training.api import train
from tests.replay.test_experience import ScriptedExperienceModel, _handler
from tests.trainers.training.test_train import config


def test_em_rows_are_serving_prompts_with_real_targets_and_leave_the_held_out_set_out(bfcl_store_path: Path) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    split = split_store(store, share=0.34, seed=0)
    frame = build_em(store, held_out=0.34, seed=0)
    trajectories = {t.id: t for t in store.iter_trajectories()}
    store.close()
    assert frame.height > 0 and set(frame["kind"]) == {"em"} and frame["id"].n_unique() == frame.height
    assert not set(frame["trajectory_id"]) & split.held_out_ids, "held-out trajectories are never trained on"
    for row in frame.head(5).iter_rows(named=True):
        step = next(s for s in trajectories[row["trajectory_id"]].steps if s.index == row["step_index"])
        target = parse_prediction(json.loads(row["completion"])[0]["content"])
        assert target["observation"] == step.observation.content and target["is_error"] == step.observation.is_error
        assert target["reasoning"] and step.observation.content not in target["reasoning"]
        prompt = json.loads(row["prompt"])
        call = step.action.tool_call
        assert prompt[0] == build_prompt("", "", call.name, call.arguments, [])[0], "the sandbox's own system prompt"
        assert json.dumps({"tool": call.name, "arguments": call.arguments}, ensure_ascii=False) in prompt[-1]["content"]
        held_out_observations = {
            o for t in split.held_out_ids for o in (s.observation.content for s in trajectories[t].steps if s.observation)
        }
        demonstrations = [json.loads(m["content"]) for m in prompt[1:-1] if m["role"] == "assistant"]
        assert len(demonstrations) == 3 and len(prompt) == 2 + 2 * 3, "three retrieved examples, each a call and its real answer"
        assert not any(d["observation"] == o[:400] for d in demonstrations for o in held_out_observations), "never a held-out answer"


def test_a_teacher_that_copies_the_observation_is_replaced_and_flagged(bfcl_store_path: Path) -> None:
    from http.server import ThreadingHTTPServer

    from ee_middleware.testing.http import serving

    def teacher(messages: list[dict[str, Any]]) -> str:
        real = messages[-1]["content"].split("The tool returned: ", 1)[1]
        return f"It returned {real}" if len(real) % 2 else "The folder exists, so the listing succeeds."

    model = ScriptedExperienceModel(teacher)
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(model))) as url:
        from typer.testing import CliRunner

        from ee_middleware.cli.app import app

        out = bfcl_store_path.parent / "em"
        spec = f"openai:{url}#teacher"
        result = CliRunner().invoke(
            app, ["experience", "dataset", "--store", str(bfcl_store_path), "--out", str(out), "--teacher", spec, "--json"]
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        frame = pl.read_parquet(out / "em.parquet")
        assert summary["rows"] == frame.height == len(model.requests)
        copied = frame.filter(pl.col("quality_flags").str.contains("teacher_copied"))
        assert 0 < copied.height == summary["flagged"] < frame.height
        reasons = [json.loads(json.loads(c)[0]["content"])["reasoning"] for c in frame["completion"]]
        assert "The folder exists, so the listing succeeds." in reasons and not any(r.startswith("It returned") for r in reasons)


def test_the_experience_model_schedule_trains_on_em_rows_only(bfcl_store_path: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    frame = build_em(store, held_out=0.34)
    store.close()
    data = tmp_path / "data"
    data.mkdir()
    frame.write_parquet(data / "em.parquet")
    result = train(
        config(
            tiny_model_dir,
            data,
            tmp_path / "em-adapter",
            schedule="experience-model",
            max_steps=2,
            max_length=1024,
            max_lost_context_share=1.0,
        ),
        progress=False,
    )
    manifest = json.loads((tmp_path / "em-adapter" / "manifest.json").read_text())
    assert [stage["kinds"] for stage in manifest["schedule"]["stages"]] == [["em"]] and set(manifest["datasets"]) == {"em"}
    assert manifest["datasets"]["em"]["rows"] == frame.height and manifest["losses"] and result is not None
