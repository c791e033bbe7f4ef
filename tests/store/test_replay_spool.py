"""A replay worker writes through ReplaySpool: the same records as LocalExperienceStore.write_replay, without polars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_replay_spool_writes_what_the_store_writes_redacted_alike(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    record_store_redaction(store, StoreRedaction(RedactionRules()))
    record, rollouts = _replay("r")
    store.write_replay(record, rollouts)
    store.close()
    (by_store,) = spool.list_segments(store.root / "spool")

    writer = ReplaySpool(store.root)
    writer.write_replay(record, rollouts)
    writer.close()
    (by_writer,) = [s for s in spool.list_segments(store.root / "spool") if s != by_store]

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
