"""A whole ``run_improve`` on a real run folder and a real local registry, with the stages before register, the
evaluation and the gate scripted (their work, replaying, training and evaluating, is not what the tests using this are
about): register and promote are the real ones, so that the registry hands back a record as it does after a real
training. ``adapter`` names the folder the scripted train stage "trained": the same folder twice is the same weights
trained again (the same data and seed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.jobs import improve
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.stages import StageContext, StageResult
from tests.jobs.test_promote_live_changed import BASE_MODEL

APP = "support-bot"


def scripted_config(tmp_path: Path) -> ImproveConfig:
    return ImproveConfig(
        store=str(tmp_path / "experience"), app=APP, registry=str(tmp_path / "registry"), runs=tmp_path / "runs", base_model=BASE_MODEL
    )


def script_stages(
    monkeypatch: pytest.MonkeyPatch, adapter: Path, *, interrupt: str | None = None, gate_passes: bool = True
) -> dict[str, Path]:
    """Make ``run_improve`` run scripted stages (the real register and promote) with no preflight checks (there is no
    store or base model). ``interrupt``: the stage that raises KeyboardInterrupt('SIGTERM') as
    ``termination_as_interrupt`` does. Returns the holder of the adapter folder the train stage hands on (change
    ``["adapter"]`` to train other weights)."""
    trained = {"adapter": adapter}
    real = improve._stage_function

    def select(ctx: StageContext) -> StageResult:
        return StageResult(
            inputs={"watermark": None}, outputs={"nothing_new": False, "new": 2, "watermark_after": "2026-12-01T00:00:00+00:00"}
        )

    def train(ctx: StageContext) -> StageResult:
        outputs = {"adapter_dir": str(trained["adapter"]), "base_folder": BASE_MODEL, "steps": 4, "planned_steps": 4}
        outputs.update(
            first_loss=2.0, final_loss=1.0, train_seconds=1.0, device="cpu", loss_png=str(ctx.run.folder / "loss.png"), stages=[]
        )
        return StageResult(outputs=outputs)

    def evaluate(ctx: StageContext) -> StageResult:
        from ee_middleware.adapters.registry import open_registry

        name = ctx.run.outputs("register")["candidate"]
        live = open_registry(ctx.config.registry).resolve(ctx.config.alias_name)  # as the real stage picks its baseline
        live = live if live != name else None
        runs = {"baseline": {"dir": "b", "suites": []}, "candidate": {"dir": "c", "suites": []}}
        return StageResult(outputs={"baseline": live or "base", "candidate": name, "models": {}, "served_by": [], "runs": runs})

    def gate(ctx: StageContext) -> StageResult:
        reasons = [] if gate_passes else ["scripted: worse"]
        return StageResult(outputs={"passed": gate_passes, "reasons": reasons, "likelihood": None, "moved": []})

    scripted: dict[str, Callable[[StageContext], StageResult]] = {
        "select": select,
        "replay": lambda ctx: StageResult(),  # (no outputs: the report leaves their sections out)
        "datasets": lambda ctx: StageResult(),
        "train": train,
        "evaluate": evaluate,
        "gate": gate,
    }

    def stage_function(name: str) -> Callable[[StageContext], StageResult]:
        function = scripted.get(name) or real(name)
        if name != interrupt:
            return function

        def stopped(ctx: StageContext) -> Any:
            raise KeyboardInterrupt("SIGTERM")

        return stopped

    monkeypatch.setattr(improve, "_stage_function", stage_function)
    monkeypatch.setattr(ImproveConfig, "check", lambda self, **_: None)
    monkeypatch.setattr(ImproveConfig, "check_evaluation_sandbox", lambda self: None)
    monkeypatch.setattr("ee_middleware.jobs.deploy.check_servers", lambda config, stages=None: None)
    return trained
