"""A spool segment kept for records of a newer record schema (an app upgraded before the nightly job) is folded once:
every compaction after the first folded its readable records again, a copy more in the parts each night (reads drop
them, the parts kept them: 3, 6, 9, 12, 15 rows for 3 trajectories in the sweep that found it). The manifest says which
segments are folded already (``kept``); such a segment is still said to be kept at every compaction, and one that is
gone (a newer version folded it) leaves the manifest. Real local stores."""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl

from ee_middleware.store import LocalExperienceStore
from ee_middleware.store import spool as spool_module
from ee_middleware.store.manifest import read_manifest
from ee_middleware.store.tables import TABLES
from ee_middleware.testing.store_conformance import sample_trajectory


def _part_rows(root: Path, table: str) -> int:
    return sum(pl.read_parquet(root / table / name).height for name in read_manifest(root, TABLES).parts[table])


def _ids(store: LocalExperienceStore) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the kept record a newer version wrote is said skipped by every read)
        return store.trajectories()["id"].to_list()


def _compact(store: LocalExperienceStore) -> list[str]:
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        store.compact()
    return [str(w.message) for w in said]


def test_a_segment_kept_for_a_newer_schema_is_folded_once(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "s")
    store.write([sample_trajectory(f"run-{i}") for i in range(3)])
    segment = store._writer.segment
    store.close()
    newer = sample_trajectory("later").model_dump(mode="json")
    newer["schema_version"] = "1.9"
    newer["steps"][0]["action"]["plan"] = "a field from a newer schema"
    with open(segment, "ab") as fh:
        fh.write(spool_module.encode_line({"kind": "trajectory", "data": newer}))
    for _ in range(4):
        said = _compact(store)
        assert any("Kept the spool segment" in text and "1.9" in text for text in said), said  # said every time
        assert segment.exists()
        assert (_part_rows(store.root, "trajectories"), len(_ids(store))) == (3, 3)
    [kept] = read_manifest(store.root, TABLES).kept
    assert (kept["name"], kept["size"], kept["newer"], kept["newest"]) == (segment.name, segment.stat().st_size, 1, "1.9")
    steps = _part_rows(store.root, "steps")
    store.write([sample_trajectory("run-3")])
    store.close()
    _compact(store)
    assert _part_rows(store.root, "trajectories") == 4 and _part_rows(store.root, "steps") > steps
    segment.unlink()  # a newer ee-middleware folded it (and deleted it)
    assert not [text for text in _compact(store) if "Kept the spool segment" in text]
    assert read_manifest(store.root, TABLES).kept == []
    assert _ids(store) == ["run-0", "run-1", "run-2", "run-3"]


def test_a_newer_schemas_record_that_fits_this_schema_is_skipped_and_kept_not_misread(tmp_path: Path) -> None:
    """A newer ee-middleware's record that this version's schema accepts (1.7's ``NAME#K`` in a step's ``tools`` is a
    plain string to 1.6, which then left the tool out of what the step offered) may mean its fields otherwise: it is
    skipped with the newer-schema warning and its segment kept for the newer version, as one that does not fit."""
    store = LocalExperienceStore(tmp_path / "s")
    store.write([sample_trajectory("run-0")])
    segment = store._writer.segment
    store.close()
    newer = sample_trajectory("later").model_dump(mode="json")
    newer["schema_version"] = "9.1"  # (fits this schema: only its version says otherwise)
    with open(segment, "ab") as fh:
        fh.write(spool_module.encode_line({"kind": "trajectory", "data": newer}))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert store.trajectories()["id"].to_list() == ["run-0"]
    assert any("9.1" in str(w.message) for w in said), [str(w.message) for w in said]
    compacted = _compact(store)
    assert any("Kept the spool segment" in text and "9.1" in text for text in compacted), compacted
    assert segment.exists() and _ids(store) == ["run-0"]
