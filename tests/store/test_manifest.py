"""A manifest edited by hand: read as unreadable (every part file is read), and the next compaction writes a good one."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import StoreCorruptionWarning
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store.manifest import MANIFEST
from ee_middleware.testing.store_conformance import sample_trajectory


def _first_part(m: dict[str, Any]) -> str:
    return m["parts"]["trajectories"][0]


EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "parts-as-one-name": lambda m: m["parts"].update(trajectories=_first_part(m)),
    "parts-not-names": lambda m: m["parts"].update(steps=[{"name": "part-x.parquet"}]),
    "part-outside-its-folder": lambda m: m["parts"]["trajectories"].append("../steps/" + _first_part(m)),
    "retired-without-table": lambda m: m.update(retired=[{"name": "part-x.parquet", "retired_at": 1.0}]),
    "retired-at-text": lambda m: m.update(retired=[{"table": "steps", "name": "part-x.parquet", "retired_at": "yesterday"}]),
    "a-list": lambda m: m.update(generation=None) or m.clear(),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_hand_edited_manifest_is_read_as_unreadable_and_compaction_writes_a_new_one(store_path: Path, edit: str):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory(f"t{i}") for i in range(3)])
    store.compact()
    manifest = store_path / MANIFEST
    data = json.loads(manifest.read_text())
    EDITS[edit](data)
    manifest.write_text(json.dumps(data if data else [1, 2]))
    with pytest.warns(StoreCorruptionWarning, match=f"{MANIFEST} is unreadable") as caught:
        ids = LocalExperienceStore(store_path).trajectories()["id"].to_list()
    assert ids == ["t0", "t1", "t2"]
    assert not [w for w in caught if "Skipped unreadable Parquet part" in str(w.message)], "no part is damaged"
    store.compact()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = LocalExperienceStore(store_path)
        assert reopened.trajectories()["id"].to_list() == ["t0", "t1", "t2"]
        assert reopened.steps().height == 3 * 3
    assert reopened.info()["manifest_generation"] == 1
