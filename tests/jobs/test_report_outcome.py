"""The run report's outcome paragraph, from a real runs folder's manifests."""

from __future__ import annotations

from pathlib import Path

from ee_middleware.jobs.report import build_blocks, to_markdown
from ee_middleware.jobs.runs import RunsDir


def _report(tmp_path: Path, promote: dict[str, object]) -> str:
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "booking-bot"}}, "hash")
    run.write_stage("gate", {"stage": "gate", "status": "done", "outputs": {"passed": False, "reasons": ["too few tasks"]}})
    run.write_stage("promote", {"stage": "promote", "status": "done", "outputs": promote})
    run.update(status="succeeded", stage_order=["gate", "promote"])
    return to_markdown(build_blocks(run))


def test_not_promoted_names_the_live_adapter_as_code_and_the_base_model_as_words(tmp_path: Path) -> None:
    """With no adapter live, the report read 'the live model stays `the base model`': a phrase set as code, as if it
    were a name to copy."""
    assert "Not promoted; the live model stays the base model." in _report(tmp_path / "a", {"promoted": False, "live": None})
    live = _report(tmp_path / "b", {"promoted": False, "live": "booking-bot-v1-4e336746"})
    assert "Not promoted; the live model stays `booking-bot-v1-4e336746`." in live
