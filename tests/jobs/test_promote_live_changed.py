"""The improve job's promote stage switches the alias only over the adapter its gate measured (the evaluate stage's
baseline): a real local registry, a real run folder and the real stage runner; the earlier stages' manifests are written
as they write them (their work, training and evaluating, is not what these tests are about)."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

import pytest

from ee_middleware.adapters.registry import open_registry
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.deploy import promote_command
from ee_middleware.jobs.errors import LiveAdapterChangedError
from ee_middleware.jobs.improve import _run_stage
from ee_middleware.jobs.runs import Run, RunsDir
from ee_middleware.jobs.stages import QuietProgress, StageContext

APP = "support-bot"
BASE_MODEL = "/models/promote-test-base"


def _adapter(folder: Path, seed: int) -> Path:
    """A small LoRA adapter folder with its own bytes (what the registry reads: config, rank, weights)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "base_model_name_or_path": BASE_MODEL}))
    values = [((seed * 7919 + i * 104729) % 1000) / 1000.0 for i in range(16)]
    header = json.dumps({"w.lora_A.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 4 * len(values)]}}).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + struct.pack(f"<{len(values)}f", *values))
    return folder


def _setup(tmp_path: Path, *, live_at_evaluate: bool = True) -> tuple[ImproveConfig, Run, dict[str, str]]:
    """A registry with two adapters (v1 live at the evaluate stage unless not ``live_at_evaluate``, v2 registered) and
    this run's candidate, and a run whose register, evaluate and gate stages are done: the gate passed the candidate
    against what was live at its evaluation."""
    config = ImproveConfig(
        store=str(tmp_path / "experience"), app=APP, registry=str(tmp_path / "registry"), runs=tmp_path / "runs", base_model=BASE_MODEL
    )
    registry = open_registry(config.registry, create=True)
    names = {
        key: registry.register(_adapter(tmp_path / key, seed), APP, by="test").name for seed, key in enumerate(("v1", "v2", "cand"), 1)
    }
    if live_at_evaluate:
        registry.switch_live(names["v1"], by="test")
    run = RunsDir(config.runs).create("improve", config.describe(), "hash")
    baseline = names["v1"] if live_at_evaluate else "base"
    done = {
        "register": {"candidate": names["cand"]},
        "evaluate": {"baseline": baseline, "candidate": names["cand"], "runs": {"baseline": {"suites": []}, "candidate": {"suites": []}}},
        "gate": {"passed": True, "reasons": [], "likelihood": None},
    }
    for stage, outputs in done.items():
        run.write_stage(stage, {"stage": stage, "status": "done", "outputs": outputs})
    return config, run, names


def _context(config: ImproveConfig, run: Run) -> StageContext:
    return StageContext(config, run, RunsDir(config.runs), QuietProgress(), None)


def test_promote_refuses_when_another_adapter_went_live_since_evaluate(tmp_path: Path) -> None:
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["v2"], by="ee improve (run of another runs folder)")  # promoted after this run evaluated

    with pytest.raises(LiveAdapterChangedError) as caught:
        _run_stage(_context(config, run), "promote")

    message = str(caught.value)
    assert names["v1"] in message and names["v2"] in message and names["cand"] in message
    assert "--new-run" in message and f"promote it again (`{promote_command(config, names['v1'])}`)" in message
    assert registry.resolve(APP) == names["v2"]  # the alias was not switched
    assert registry.get(names["cand"]).status == "candidate"
    manifest = run.stage("promote")
    assert manifest is not None and manifest["status"] == "failed"
    assert manifest["live_changed"] == {"alias": APP, "candidate": names["cand"], "gated_against": names["v1"], "live": names["v2"]}


def test_promote_refuses_an_adapter_made_live_after_a_gate_against_the_base(tmp_path: Path) -> None:
    config, run, names = _setup(tmp_path, live_at_evaluate=False)
    registry = open_registry(config.registry)
    registry.switch_live(names["v2"], by="alice")

    with pytest.raises(LiveAdapterChangedError, match="the base model"):
        _run_stage(_context(config, run), "promote")

    assert registry.resolve(APP) == names["v2"]
    assert run.stage("promote")["live_changed"]["gated_against"] == "base"  # type: ignore[index]


def test_promote_goes_on_once_the_gated_adapter_is_live_again(tmp_path: Path) -> None:
    from ee_middleware.adapters.promote import rollback

    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["v2"], by="alice")
    with pytest.raises(LiveAdapterChangedError):
        _run_stage(_context(config, run), "promote")
    rollback(registry, APP, [], by="alice")  # what the refusal offers: the adapter the gate measured, live again
    assert registry.resolve(APP) == names["v1"]

    _run_stage(_context(config, run), "promote")  # the next call continues the run from its promote stage

    assert registry.resolve(APP) == names["cand"]
    assert run.outputs("promote")["replaced"] == names["v1"]
    assert run.stage("promote")["attempt"] == 2  # type: ignore[index]


def test_promote_switches_when_the_gated_adapter_is_still_live(tmp_path: Path) -> None:
    config, run, names = _setup(tmp_path)

    _run_stage(_context(config, run), "promote")

    registry = open_registry(config.registry)
    assert registry.resolve(APP) == names["cand"]
    outputs = run.outputs("promote")
    assert outputs["promoted"] is True and outputs["replaced"] == names["v1"]
    assert "live_changed" not in (run.stage("promote") or {})


def test_promote_continues_when_an_earlier_attempt_already_switched_the_alias(tmp_path: Path) -> None:
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by=f"ee improve (run {run.id})")  # an attempt stopped before its manifest

    _run_stage(_context(config, run), "promote")

    assert registry.resolve(APP) == names["cand"]
    assert run.outputs("promote")["replaced"] == names["v1"]


def test_promote_checks_the_live_adapter_under_the_registry_lease(tmp_path: Path) -> None:
    """Another promote holds the registry's operation lease when the stage starts and switches the alias before it lets
    go: the stage must wait for it and see the switch, not check first and switch over it after."""
    config, run, names = _setup(tmp_path)
    holding, release = threading.Event(), threading.Event()

    def other_promote() -> None:
        registry = open_registry(config.registry)
        with registry.operation("promote of v2", by="another ee improve"):
            holding.set()
            release.wait(10)
            registry.switch_live(names["v2"], by="another ee improve")

    other = threading.Thread(target=other_promote)
    other.start()
    try:
        assert holding.wait(10)
        raised: list[BaseException] = []

        def promote_stage() -> None:
            try:
                _run_stage(_context(config, run), "promote")
            except BaseException as exc:  # looked at below, in the test's thread
                raised.append(exc)

        stage = threading.Thread(target=promote_stage)
        stage.start()
        time.sleep(0.5)  # the stage is waiting for the lease (without it, it has read v1 as live by now)
        release.set()
        stage.join(30)
    finally:
        release.set()
        other.join(10)

    assert [type(exc) for exc in raised] == [LiveAdapterChangedError], raised
    assert open_registry(config.registry).resolve(APP) == names["v2"]
    manifest = run.stage("promote")
    assert manifest is not None and manifest["status"] == "failed", manifest
    assert manifest["live_changed"]["live"] == names["v2"]
