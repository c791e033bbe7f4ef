"""A replay worker writes through ReplaySpool: the same records as LocalExperienceStore.write_replay, without polars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.store.replay_spool import ReplaySpool


def _replay(replay_id: str) -> tuple[ReplayRecord, list[Rollout]]:
    rollouts = [
        Rollout(
            id=f"{replay_id}-{i}",
            replay_id=replay_id,
            trajectory_id="t1",
            step_index=0,
            branch_index=i,
            action=Action(kind="tool_call", tool_call=ToolCall(id="a", name="find_user", arguments={"email": "ann@example.com", "n": i})),
            proposer=ProposerInfo(policy="mutate"),
            observation=Observation(content='{"phone": "415-555-0134"}'),
            sandbox="s",
            duration_ms=1.0,
        )
        for i in range(3)
    ]
    record = ReplayRecord(
        replay_id=replay_id, trajectory_id="t1", status="done", reason="for ann@example.com", policy="mutate", sandbox="s", k=3, seed=0,
        details={"fidelity_mismatches": [{"recorded": "x", "replayed": "ann@example.com"}]},
    )  # fmt: skip
    return record, rollouts


def _written_both_ways(store: LocalExperienceStore, record: ReplayRecord, rollouts: list[Rollout]) -> tuple[Path, Path]:
    """The spool segment ``store`` writes for the replay, then the one a worker's ReplaySpool writes into the same folder."""
    store.write_replay(record, rollouts)
    store.close()
    (by_store,) = spool.list_segments(store.root / "spool")
    writer = ReplaySpool(store.root)
    writer.write_replay(record, rollouts)
    writer.close()
    (by_writer,) = [s for s in spool.list_segments(store.root / "spool") if s != by_store]
    return by_store, by_writer


def test_replay_spool_writes_what_the_store_writes_redacted_alike(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    record_store_redaction(store, StoreRedaction(RedactionRules()))
    record, rollouts = _replay("r")
    by_store, by_writer = _written_both_ways(store, record, rollouts)

    assert by_writer.read_bytes() == by_store.read_bytes()
    assert b"ann@example.com" not in by_writer.read_bytes() and b"415-555-0134" not in by_writer.read_bytes()
    assert sorted(LocalExperienceStore(store.root).rollouts()["id"].to_list()) == ["r-0", "r-1", "r-2"]  # the repeats dropped on read


def test_a_worker_writing_a_local_store_imports_no_polars(tmp_path: Path) -> None:
    LocalExperienceStore(tmp_path / "store").close()
    code = (
        "import sys\n"
        "from ee_middleware.replay.executors import WORKER_MODULES, _open_same_store, _marker_text\n"
        "for name in WORKER_MODULES: __import__(name)\n"
        f"root = {str(tmp_path / 'store')!r}\n"
        "writer = _open_same_store('local:' + root, _marker_text(__import__('pathlib').Path(root)))\n"
        "assert type(writer).__name__ == 'ReplaySpool', writer\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('polars', 'pyarrow')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _awkward_replay() -> tuple[ReplayRecord, list[Rollout]]:
    """Rollouts whose values pydantic's JSON and ``json.dumps`` could spell differently: small and large floats, big ints,
    non-ASCII, control characters, JSON inside strings, and text that looks like an exponent."""
    arguments = [
        {"x": 1e-05, "y": [1.5e-7, 1e16, 1e22, 0.1, -0.0, 123456.789]},
        {"n": 2**70, "text": 'café \u2028 \x00\x1f\x7f "quoted" \\ 😀', "json": '{"a": [1, 2]}'},
        {"looks_like": "1e-05 and 2e+16 and 0.00001", "ok": 0.0001},
        {"plain": "hello", "count": 3, "ratio": 0.25},
    ]
    record, template = _replay("awkward")
    rollouts = [
        template[0].model_copy(
            update={
                "id": f"awkward-{i}",
                "branch_index": i,
                "action": Action(kind="tool_call", tool_call=ToolCall(id="a", name="f", arguments=args)),
                "observation": Observation(content=f"result {args}"),
                "duration_ms": [3e-05, 0.043113999709, 12.5, 1e-3][i],
            }
        )
        for i, args in enumerate(arguments)
    ]
    return record, rollouts


@pytest.mark.parametrize("batch", ["awkward", "plain", "empty"])
def test_a_store_without_redaction_rules_writes_the_same_bytes_as_the_json_path(tmp_path: Path, batch: str) -> None:
    """With no rules the rollouts are encoded by pydantic in one step; the lines must be those json.dumps writes. In a
    batch with an awkward rollout each is checked on its own; a plain batch is checked at once."""
    from ee_middleware.store.replay_spool import replay_records

    store = LocalExperienceStore(tmp_path / "store")
    record_store_redaction(store, StoreRedaction(RedactionRules(defaults=False)))
    record, rollouts = _awkward_replay() if batch == "awkward" else _replay("plain")
    if batch == "empty":
        rollouts = []
    by_store, by_writer = _written_both_ways(store, record, rollouts)

    expected = b"".join(spool.encode_line(r) for r in replay_records(record, rollouts, lambda value: value))
    assert by_store.read_bytes() == expected
    assert by_writer.read_bytes() == expected
    if batch == "awkward":  # the awkward values are there as json writes them
        assert b"1e-05" in expected and b'"n":1180591620717411303424' in expected
    assert expected.count(b"\n") == len(rollouts) + 1


def test_a_store_with_rules_still_redacts_what_the_fast_path_would_have_written(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    record_store_redaction(store, StoreRedaction(RedactionRules(defaults=False, patterns={"ticket": r"TICKET-\d+"})))
    record, rollouts = _replay("r")
    rollouts[0] = rollouts[0].model_copy(update={"observation": Observation(content="see TICKET-42")})
    store.write_replay(record, rollouts)
    store.close()
    (segment,) = spool.list_segments(store.root / "spool")
    assert b"TICKET-42" not in segment.read_bytes() and b"[REDACTED:ticket" in segment.read_bytes()


def _syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The spool segments ``os.fsync`` is called on from now on (by name), each call then made for real."""
    import os

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.endswith(spool.SEGMENT_SUFFIX):  # not the store's other files (its salt, written on first use)
            synced.append(name)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.parametrize("writer", ["the store", "a worker's ReplaySpool"])
def test_replay_writes_are_synced_in_groups_and_when_the_segment_is_sealed(
    writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay's results can be made again (the next run replays what has no record): one fsync for the first write,
    none for the writes that follow within the group interval, one when the segment is sealed; all of it readable."""
    monkeypatch.setattr(spool, "GROUP_SYNC_INTERVAL_S", 3600.0)
    LocalExperienceStore(tmp_path).close()
    synced = _syncs(monkeypatch)
    target = LocalExperienceStore(tmp_path) if writer == "the store" else ReplaySpool(tmp_path)
    for n in range(10):
        target.write_replay(*_replay(f"r{n}"))
    (segment,) = spool.list_segments(tmp_path / "spool")
    assert synced == [segment.name]
    target.close()
    assert synced == [segment.name] * 2
    assert LocalExperienceStore(tmp_path).rollouts().height == 30


def test_captured_trajectories_are_still_synced_at_every_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "GROUP_SYNC_INTERVAL_S", 3600.0)
    writer = spool.SpoolWriter(tmp_path / "spool")
    synced = _syncs(monkeypatch)
    writer.append_lines([spool.encode_line({"n": 0})], durable=False)
    for n in range(3):
        writer.append([{"n": n}])  # durable, as trajectories are written
    assert len(synced) == 4  # the first group write, then every durable one
    writer.seal()
    assert len(synced) == 4  # nothing was left unsynced


def test_a_killed_writer_loses_none_of_its_grouped_replay_writes(tmp_path: Path) -> None:
    """What ``write_replay`` returned from is the kernel's even before it is synced (nothing is held back in the
    process): a writer killed with SIGKILL, never closing its store, leaves every replay it wrote readable."""
    import signal

    LocalExperienceStore(tmp_path).close()
    script = f"""
import sys, time
sys.path[:0] = {sys.path!r}
from tests.store.test_replay_spool import _replay
from ee_middleware.store import spool
spool.GROUP_SYNC_INTERVAL_S = 3600.0
from ee_middleware.store.replay_spool import ReplaySpool
writer = ReplaySpool({str(tmp_path)!r})
for n in range(5):
    writer.write_replay(*_replay(f"r{{n}}"))
print("written", flush=True)
time.sleep(60)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()  # type: ignore[union-attr]
    store = LocalExperienceStore(tmp_path)
    assert store.rollouts().height == 15 and store.replays().height == 5
