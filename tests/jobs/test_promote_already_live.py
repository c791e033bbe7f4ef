"""Two ``ee improve`` runs with the same settings (two runs folders, one store and registry) train the same weights,
one registry record: the one that reached its promote second found it live and reported that it had promoted it
(``promoted: yes`` for both in ``ee runs list``), while the registry's history holds one promote, by the other (an
improve sweep). It now says it was live already, and by whom; a run that promoted it itself and was stopped before its
manifest still reports its promote."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.adapters.registry import open_registry
from ee_middleware.jobs.improve import run_improve
from tests.jobs.scripted_stages import script_stages, scripted_config
from tests.jobs.test_promote_live_changed import _adapter


def test_a_candidate_another_run_made_live_is_not_reported_promoted_by_this_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = _adapter(tmp_path / "trained", seed=3)
    config = scripted_config(tmp_path)
    script_stages(monkeypatch, weights, interrupt="promote")  # the first run is gated and stops before its promote
    with pytest.raises(KeyboardInterrupt):
        run_improve(config)

    monkeypatch.undo()  # (script_stages wraps the stage functions it finds)
    script_stages(monkeypatch, weights)
    other = config.model_copy(update={"runs": tmp_path / "runs-2"})
    second = run_improve(other)  # the same weights, registered once: the second run promotes them
    assert second.data["outcome"]["promoted"] is True, second.data.get("error")
    candidate = second.data["outcome"]["candidate"]

    first = run_improve(config)  # continued: its candidate is live already, made so by the second run

    assert first.status == "succeeded", first.data.get("error")
    assert first.data["outcome"]["candidate"] == candidate and first.data["outcome"]["promoted"] is False
    assert first.outputs("promote")["already_live_by"] == f"ee improve (run {second.id})"
    assert any(f"was live already, made so by ee improve (run {second.id})" in d for d in first.stage("promote")["decisions"])
    promotes = [e for e in open_registry(str(config.registry)).history(adapter=candidate) if e["action"] == "promote"]
    assert [e["by"] for e in promotes] == [f"ee improve (run {second.id})"]
