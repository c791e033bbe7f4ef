"""Which tools' sandbox disagrees with production: ``ee improve``'s replay stage reads it from the replay records of a
real store (``jobs.stages.fidelity_mismatches``) and its report shows it; a count alone said nothing of where."""

from __future__ import annotations

from pathlib import Path

from ee_middleware.jobs.report import _replay, to_markdown
from ee_middleware.jobs.stages import FIDELITY_EXAMPLES, fidelity_mismatches
from ee_middleware.records import ReplayRecord
from ee_middleware.replay.fidelity import describe_mismatch
from ee_middleware.store.local import LocalExperienceStore


def _mismatch(step: int, tool: str, recorded: str, replayed: str) -> dict:
    return {"step": step, "tool": tool, "recorded": recorded, "replayed": replayed, **describe_mismatch(recorded, replayed)}


def _record(trajectory_id: str, mismatches: list[dict]) -> ReplayRecord:
    details = {"fidelity_mismatches": mismatches} if mismatches else {}
    return ReplayRecord(
        replay_id="r1",
        trajectory_id=trajectory_id,
        status="done",
        policy="mutate",
        sandbox="shop:make",
        k=2,
        seed=0,
        states=3,
        branches=6,
        fidelity_mismatches=len(mismatches),
        details=details,
    )


def test_the_replay_stage_says_which_tools_replayed_differently_and_shows_one_diff(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write_replay(_record("t1", [_mismatch(0, "check_stock", "3 pears", "4 pears"), _mismatch(2, "price", "1.20", "1.25")]))
    store.write_replay(_record("t2", [_mismatch(1, "check_stock", "0 plums", "2 plums")]))
    store.write_replay(_record("t3", []))
    records = store.replays(replay_id="r1")
    store.close()

    found = fidelity_mismatches(records)
    assert found["fidelity_by_tool"] == {"check_stock": 2, "price": 1}
    assert len(found["fidelity_examples"]) == FIDELITY_EXAMPLES
    first = found["fidelity_examples"][0]
    assert first["tool"] == "check_stock" and first["step"] == 0 and "-3 pears" in first["diff"] and "+4 pears" in first["diff"]
    assert first["trajectory_id"] in ("t1", "t2")

    page = to_markdown(_replay({"replay": {"trajectories": 3, "fidelity_mismatches": 3, **found}}))
    assert "| check_stock | 2 |" in page and "| price | 1 |" in page
    assert f"trajectory {first['trajectory_id']}, step 0, check_stock" in page and first["diff"] in page


def test_no_mismatch_adds_nothing(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write_replay(_record("t1", []))
    records = store.replays(replay_id="r1")
    store.close()
    assert fidelity_mismatches(records) == {}
    assert "fidelity mismatches)" not in to_markdown(_replay({"replay": {"trajectories": 1, "fidelity_mismatches": 0}}))
