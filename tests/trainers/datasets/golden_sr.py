"""SR's rows on a fixed replayed BFCL store, kept to prove that changes to SR leave single-call rows byte-identical.

The store is the one the dataset tests use (``replayed_store``: the first BFCL multi_turn_base entries recorded as
expert trajectories with stable ids, :func:`tests.replay.golden_replay.stable_store`, replayed with K=4): every
expert turn there makes one tool call. :func:`outputs` reduces SR's rows (template teacher, K=3) to what must not
change: each row's id, lineage, completion text and a sha256 of every column's value. ``golden/sr_bfcl_k4.json``
holds the rows as SR built them before parallel tool calls were taught as one turn, written again when alternatives
with the expert call's own outcome stopped being shown (8 rows lost such an alternative), and when ``mutate`` stopped
proposing calls that differ only by an argument at its schema default (2 rows changed), and when the template teacher
stopped adding a second period after an outcome that ends a sentence ("... 'backup_tests'..": 1 row changed),
and when rows gained the ``synthetic`` column (false on every row here: every ``row_sha256`` changed, nothing else)
(``python -m tests.trainers.datasets.golden_sr`` writes it again).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

GOLDEN = Path(__file__).parent / "golden" / "sr_bfcl_k4.json"
K = 4
"""Rollouts per step in the replayed store (as ``tests/trainers/conftest.py`` replays it)."""


def outputs(rows: pl.DataFrame) -> list[dict[str, Any]]:
    """SR's rows, in order: lineage and completion as text, and a digest of the whole row."""
    out = []
    for row in rows.iter_rows(named=True):
        whole = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
        out.append(
            {
                "id": row["id"],
                "trajectory_id": row["trajectory_id"],
                "step_index": row["step_index"],
                "completion": row["completion"],
                "prompt_sha256": hashlib.sha256(row["prompt"].encode()).hexdigest(),
                "row_sha256": hashlib.sha256(whole.encode()).hexdigest(),
            }
        )
    return out


def build(store_path: Path) -> pl.DataFrame:
    """SR's rows of ``store_path`` with the template teacher and the default options."""
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.trainers.datasets.source import load_source
    from ee_middleware.trainers.datasets.sr import SROptions, build_sr
    from ee_middleware.trainers.datasets.teachers import TemplateTeacher

    store = LocalExperienceStore(store_path, create=False)
    try:
        rows, _ = build_sr(load_source(store), TemplateTeacher(), SROptions(k=3))
    finally:
        store.close()
    return rows


def main() -> None:  # pragma: no cover - writes the golden file
    from tests.replay.golden_replay import replayed_expert_store

    with tempfile.TemporaryDirectory() as tmp:
        path, _ = replayed_expert_store(Path(tmp), K)
        result = outputs(build(path))
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(result)} SR rows -> {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
