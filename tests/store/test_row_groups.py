"""The local store writes its Parquet parts in row groups of about ``ROW_GROUP_BYTES`` each (in memory).

A Parquet reader decompresses the whole row group holding the rows a filtered read keeps (ids are random, so no row
group's statistics rule one out): a compacted part of 10,000 runs of 15 KB was one row group of 151 MB, and reading one
run of it (``ee traces show``, an approval, ingest finding a run's stored versions) took 98 MB and 0.047 s; in row groups
of 1,024 runs, 38 MB and 0.018 s, and a whole read 187 MB and 0.12 s instead of 246 MB and 0.24 s. Real Parquet parts,
read back with pyarrow's reader of their metadata."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.store import local as local_store
from ee_middleware.testing.store_conformance import sample_trajectory

pq = pytest.importorskip("pyarrow.parquet")


def _large(trajectory_id: str) -> object:
    trajectory = sample_trajectory(trajectory_id)
    trajectory.messages = [*trajectory.messages, {"role": "user", "content": os.urandom(10_000).hex()}]  # 20 KB, unique
    return trajectory


def test_a_part_of_large_runs_is_written_in_row_groups_of_about_the_bound_and_reads_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_store, "ROW_GROUP_BYTES", 1 << 20, raising=False)
    written = [_large(f"run-{i:03d}-{os.urandom(4).hex()}") for i in range(200)]
    store = LocalExperienceStore(tmp_path / "s")
    store.write(written)
    store.close()
    store.compact()
    parts = sorted((tmp_path / "s" / "trajectories").glob("*.parquet"))
    assert len(parts) == 1
    metadata = pq.ParquetFile(parts[0]).metadata
    sizes = [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]
    assert metadata.num_rows == 200 and len(sizes) >= 3, sizes  # about 4 MB in groups of about 1 MB
    assert max(sizes) <= 2 << 20, sizes
    # read as before: every run whole, in the order written, one run alone
    reopened = LocalExperienceStore(tmp_path / "s")
    assert reopened.trajectories()["id"].to_list() == [t.id for t in written]
    assert reopened.get(written[123].id).messages == written[123].messages


def test_parts_of_small_rows_keep_polars_row_groups(tmp_path: Path) -> None:
    """Rows of a few hundred bytes (steps, approvals) stay in row groups of as many rows as polars writes."""
    store = LocalExperienceStore(tmp_path / "s")
    store.write([sample_trajectory(f"run-{i:03d}") for i in range(50)])
    store.close()
    store.compact()
    [part] = sorted((tmp_path / "s" / "steps").glob("*.parquet"))
    assert pq.ParquetFile(part).metadata.num_row_groups == 1
