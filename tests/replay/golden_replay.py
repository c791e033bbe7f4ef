"""The replay's outputs on a fixed BFCL store, kept to prove that speed work changes no rollout.

:func:`stable_store` copies the BFCL expert store with trajectory ids that do not change between
recordings (``bfcl-<entry id>``), so rollout ids are the same on every machine and every run.
:func:`outputs` reduces what a replay stored to what must never change: every rollout's id, step,
branch, proposed call, proposer metadata, observation and flags, and every replay record's status,
counts and details (run times and timestamps left out). ``golden/`` holds the outputs captured
before the replay was made faster, written again when ``mutate`` began comparing calls with their schema defaults
filled in (``python -m tests.replay.golden_replay`` writes them again).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ee_middleware.store import LocalExperienceStore

GOLDEN = Path(__file__).parent / "golden" / "bfcl_multi_turn_base_k8.json"
K = 8
_ROLLOUT_FIELDS = {
    "id", "replay_id", "trajectory_id", "step_index", "branch_index", "action", "proposer", "observation", "is_error", "synthetic",
    "unrestored", "sandbox",
}  # fmt: skip
_RECORD_FIELDS = (
    "status", "reason", "policy", "sandbox", "k", "seed", "states", "branches", "errors", "rejected", "refused", "fidelity_mismatches",
    "unrestorable",
)  # fmt: skip


def stable_store(source: Path, target: Path) -> Path:
    """A copy of the store at ``source`` whose trajectories are named after their BFCL entry (``thread_id``)."""
    store = LocalExperienceStore(source, create=False)
    copies = []
    for t in store.iter_trajectories(status="approved"):
        new_id = f"bfcl-{t.thread_id}"
        steps = [s.model_copy(update={"trajectory_id": new_id}) for s in t.steps]
        copies.append(t.model_copy(update={"id": new_id, "steps": steps}))
    store.close()
    out = LocalExperienceStore(target)
    for name in ("redaction.json",):  # the source's redaction settings (and salt) travel with the copy
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    out.write(copies)
    out.close()
    return target


def outputs(store_path: Path, replay_id: str) -> dict[str, Any]:
    """What a replay stored under ``replay_id``, without timings: rollouts by id, records by trajectory."""
    store = LocalExperienceStore(store_path, create=False)
    rollouts = {}
    for r in store.iter_rollouts(replay_id=replay_id):
        data = r.model_dump(mode="json", include=_ROLLOUT_FIELDS)  # named: a column added later does not change the digest
        rollouts[r.id] = {
            "trajectory_id": r.trajectory_id,
            "step_index": r.step_index,
            "branch_index": r.branch_index,
            "call": [r.action.tool_call.name, r.action.tool_call.arguments] if r.action.tool_call else None,
            "observation": r.observation.content,
            "digest": hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest(),
        }
    records = {}
    for row in store.replays(replay_id=replay_id).iter_rows(named=True):
        records[row["trajectory_id"]] = {**{k: row[k] for k in _RECORD_FIELDS}, "details": json.loads(row["details_json"] or "{}")}
    store.close()
    return {"replay_id": replay_id, "rollouts": dict(sorted(rollouts.items())), "records": dict(sorted(records.items()))}


def replayed_expert_store(folder: Path, k: int) -> tuple[Path, Any]:  # pragma: no cover - for the golden writers
    """The goldens' store in ``folder``: BFCL multi_turn_base experts recorded (the tests' entries), given stable ids,
    replayed with ``k`` alternatives per state; its path and the replay's summary."""
    from ee_middleware.bfcl.experts import record_experts
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from tests.conftest import BFCL_ENTRIES

    source = folder / "experts"
    report = record_experts(source, "multi_turn_base", limit=BFCL_ENTRIES)
    assert not report.failed, report.failed
    LocalExperienceStore(source).close()
    path = stable_store(source, folder / "stable")
    summary = run_replay(ReplayConfig.load(store=path, k=k))
    assert summary.done > 0 and not summary.failed, summary.to_dict()
    return path, summary


def main() -> None:  # pragma: no cover - writes the golden file
    with tempfile.TemporaryDirectory() as tmp:
        path, summary = replayed_expert_store(Path(tmp), K)
        result = outputs(path, summary.replay_id)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"{len(result['rollouts'])} rollouts, {len(result['records'])} records -> {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
