"""A repair or compaction stopped while it takes damaged files out of the store is finished by the next repair, whatever
the point it was stopped at (review of the repair note, 2026-12-07): the losses of a spool segment it had moved
(a replay left "done" without its rollouts), a part listed twice, a part out of the manifest but never moved, a second
repair that deleted the first one's note while it still recorded; and a repair that cannot read the store to record
what was lost keeps its note. Stops are injected (an interrupt raised where the repair would be killed)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

import ee_middleware.store.local as local
from ee_middleware.errors import StoreCorruptionWarning
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory

NOTE = Path("quarantine") / "repair-unfinished.json"


def _stopped(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def _damaged_rollout_segment(store: LocalExperienceStore, root: Path) -> Path:
    """A finished segment holding a replay of 3 rollouts, one of whose lines is damaged."""
    store.write([sample_trajectory("lost")])
    store.approve(["lost"], by="reviewer")
    store.compact()
    store.write_replay(sample_replay_record("lost", branches=3), [sample_rollout(f"l{b}", "lost", b % 2, b) for b in range(3)])
    store.close()
    [segment] = [p for p in (root / "spool").iterdir() if p.suffix == ".jsonl" and p.stat().st_size]
    lines = segment.read_bytes().split(b"\n")
    damaged = next(i for i, line in enumerate(lines) if b'"l1"' in line)
    lines[damaged] = lines[damaged][:40] + b"\x00garbage" + lines[damaged][48:]
    segment.write_bytes(b"\n".join(lines))
    return segment


def _damaged_steps_part(store: LocalExperienceStore, root: Path) -> Path:
    store.write([sample_trajectory(i, steps=3) for i in ("a", "b")])
    store.approve(["a", "b"], by="alice")
    store.compact()
    (part,) = root.glob("steps/part-*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    return part


@pytest.mark.parametrize("how", ["repair", "compact"])
def test_a_stop_after_a_damaged_segment_was_moved_reopens_its_replay_at_the_next_repair(
    store: LocalExperienceStore, store_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    segment = _damaged_rollout_segment(store, store_path)
    # stopped after the segment was moved, before its lost rollouts reopened the replay: in repair's scan of the parts,
    # in compaction's reopening
    target = ("_read_part", local) if how == "repair" else ("_reopen_lost_replays", local.LocalExperienceStore)
    monkeypatch.setattr(target[1], target[0], _stopped)
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("ignore", StoreCorruptionWarning)
        getattr(LocalExperienceStore(store_path), how)()
    monkeypatch.undo()
    assert not segment.exists() and (store_path / NOTE).exists()
    assert LocalExperienceStore(store_path).info()["unfinished_repair"] is True
    report = LocalExperienceStore(store_path).repair()
    assert report["finished_stopped_repair"] is True
    assert report["replays_reopened"] == [{"replay_id": "replay-1", "trajectory_id": "lost", "had": 3, "left": 2}], report
    assert not (store_path / NOTE).exists()
    [row] = LocalExperienceStore(store_path).replays().iter_rows(named=True)
    assert row["status"] == "failed"


def test_a_stop_before_the_manifest_was_written_lists_the_part_once(
    store: LocalExperienceStore, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = _damaged_steps_part(store, store_path)
    monkeypatch.setattr(local, "write_manifest", _stopped)
    with pytest.raises(KeyboardInterrupt):
        LocalExperienceStore(store_path).repair()
    monkeypatch.undo()
    assert part.exists() and (store_path / NOTE).exists()
    report = LocalExperienceStore(store_path).repair()
    assert [p["part"] for p in report["quarantined_parts"]] == [str(part)], report["quarantined_parts"]
    assert [p["part"] for p in report["parts_lost"]] == [str(part)]
    assert sorted(item["trajectory_id"] for item in report["steps_lost"]) == ["a", "b"]
    assert not part.exists() and (store_path / "quarantine" / "steps" / part.name).exists()


def test_a_stop_before_the_part_was_moved_is_finished_by_moving_it(
    store: LocalExperienceStore, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = _damaged_steps_part(store, store_path)
    monkeypatch.setattr(local, "record_losses", _stopped)
    with pytest.raises(KeyboardInterrupt):
        LocalExperienceStore(store_path).repair()
    monkeypatch.undo()
    moved = store_path / "quarantine" / "steps" / part.name
    shutil.move(moved, part)  # as if stopped between the manifest's write and the move: out of the manifest, still there
    report = LocalExperienceStore(store_path).repair()
    assert report["finished_stopped_repair"] is True
    assert not part.exists() and moved.exists(), "the move it noted is done"
    assert sorted(item["trajectory_id"] for item in report["steps_lost"]) == ["a", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no part left to skip
        assert LocalExperienceStore(store_path).trajectories(status="approved").height == 0


def test_the_store_stays_locked_for_compaction_and_repair_until_the_losses_are_recorded(
    store: LocalExperienceStore, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second repair started while the first recorded the losses read its note, added its own, and the first then
    deleted that note: the second's losses, were it stopped, were never recorded."""
    _damaged_steps_part(store, store_path)
    recorded = local.record_losses
    seen: list[bool] = []

    def recording(store_: LocalExperienceStore, done: dict[str, object]) -> dict[str, object]:
        seen.append(LocalExperienceStore(store_path).compaction_running())
        return recorded(store_, done)

    monkeypatch.setattr(local, "record_losses", recording)
    LocalExperienceStore(store_path).repair()
    assert seen == [True]


def test_a_repair_that_cannot_read_the_store_to_record_losses_keeps_its_note(store: LocalExperienceStore, store_path: Path) -> None:
    part = _damaged_steps_part(store, store_path)
    writer = LocalExperienceStore(store_path)
    writer.write([sample_trajectory("spooled")])
    writer.close()
    [segment] = [p for p in (store_path / "spool").iterdir() if p.suffix == ".jsonl" and p.stat().st_size]
    data = segment.read_bytes()
    segment.unlink()
    segment.mkdir()  # a folder in its place: not damage, left where it is
    report = LocalExperienceStore(store_path).repair()
    assert [p["part"] for p in report["quarantined_parts"]] == [str(part)]
    assert "Is a directory" in report["losses_not_recorded"] and (store_path / NOTE).exists(), report
    segment.rmdir()
    segment.write_bytes(data)
    finished = LocalExperienceStore(store_path).repair()
    assert finished["finished_stopped_repair"] is True and "losses_not_recorded" not in finished
    assert sorted(item["trajectory_id"] for item in finished["steps_lost"]) == ["a", "b"]
    assert not (store_path / NOTE).exists()
    assert json.loads(json.dumps(finished))  # JSON-ready
