"""A store folder removed while a process writes to it (a clean-up job, a volume provisioned again, "start fresh").

The writer kept its open segment, which was gone with the folder: every later record was written into a deleted file and
acknowledged (capture counted the runs as written, flush() returned True), and the folder was never made again. With
the segment sealed before the removal, the next write made the spool folder again but no marker, so the folder was not a
store (``ee traces list`` refused it). Now a write that finds its segment deleted goes to a new one, the folder and its
marker are made again, and a warning says so.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.testing.store_conformance import sample_trajectory


def test_records_written_after_the_store_folder_was_removed_are_stored_in_it_again(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    shutil.rmtree(store_path)
    with caplog.at_level(logging.WARNING, logger="ee_middleware.store"):
        store.write([sample_trajectory("after")])
    store.write([sample_trajectory("later")])
    assert (store_path / "ee-store.json").is_file(), "the store folder and its marker are made again"
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["after", "later"]
    (warning,) = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert "with a new marker" in warning and str(store_path) in warning
    store.close()


def test_a_store_removed_while_no_segment_was_open_is_made_again_as_a_store(store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    store.close()  # sealed (as every 10 minutes, or at 64 MiB): the next write opens a new segment
    shutil.rmtree(store_path)
    with caplog.at_level(logging.WARNING, logger="ee_middleware.store"):
        store.write([sample_trajectory("after")])
    assert LocalExperienceStore(store_path, create=False).trajectories()["id"].to_list() == ["after"]
    assert any("with a new marker" in r.getMessage() for r in caplog.records)
    store.close()


def test_a_spool_folder_removed_alone_is_made_again_and_the_marker_left_as_it_is(store_path: Path) -> None:
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    marker = (store_path / "ee-store.json").read_bytes()
    shutil.rmtree(store_path / "spool")
    store.write([sample_trajectory("after")])
    assert (store_path / "ee-store.json").read_bytes() == marker
    assert [s.parent for s in spool.list_segments(store_path / "spool")] == [store_path / "spool"]
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["after"]
    store.close()
