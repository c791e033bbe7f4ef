"""Compaction under a file-size limit (``ulimit -f``, systemd's ``LimitFSIZE=``): the Parquet part it writes would pass
the limit. A real limit, set in a child process (``resource.setrlimit`` before the command starts), on a real store."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.store import spool as spool_module
from ee_middleware.testing.store_conformance import sample_trajectory

REPO = Path(__file__).resolve().parents[2]
TRAJECTORIES = 300


def _limited(limit: int) -> Callable[[], None]:
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def _spooled_store(root: Path) -> list[str]:
    """A store whose records are all in the spool (written without a limit). Returns their ids."""
    store = LocalExperienceStore(root)
    ids = [f"t{i}" for i in range(TRAJECTORIES)]
    store.write([sample_trajectory(i, steps=4) for i in ids])
    store.close()
    return ids


@pytest.fixture(scope="module")
def largest_part(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The size of the largest Parquet part compacting such a store writes where no limit applies."""
    root = tmp_path_factory.mktemp("unlimited") / "experience"
    _spooled_store(root)
    LocalExperienceStore(root).compact()
    return max(p.stat().st_size for p in root.rglob("*.parquet"))


@pytest.mark.parametrize("below", ["far", "near"])
def test_ee_store_compact_under_a_file_size_limit_names_the_limit_and_loses_nothing(tmp_path: Path, largest_part: int, below: str):
    """Was: 'error: unexpected ComputeError: parquet: File out of specification: Invalid thrift: transport error (a bug in
    ee-middleware ...)' when the limit is far below the part (polars loses the error number writing the footer), and
    the generic EFBIG advice without the limit or the way round it when it is near."""
    root = tmp_path / "experience"
    ids = _spooled_store(root)
    segments = spool_module.list_segments(root / "spool")
    limit = largest_part // 3 if below == "far" else largest_part * 9 // 10
    done = subprocess.run(
        [sys.executable, "-m", "ee_middleware.cli", "store", "compact", "--store", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        preexec_fn=_limited(limit),
    )
    assert done.returncode == 1, done.stderr
    error = " ".join(done.stderr.split())
    assert "unexpected" not in error and "a bug in ee-middleware" not in error, error
    assert f"file-size limit ({limit} bytes" in error and "ulimit -f" in error and "LimitFSIZE=" in error, error
    assert "where no limit applies" in error and "Nothing stored was changed or lost" in error, error
    assert not [p for p in root.rglob("*") if p.suffix in (".parquet", ".tmp")], "nothing half-written is left"
    assert spool_module.list_segments(root / "spool") == segments, "the spool still holds everything"
    assert LocalExperienceStore(root).trajectories()["id"].to_list() == ids
    assert LocalExperienceStore(root).compact() == len(segments), "where no limit applies it compacts"
    assert LocalExperienceStore(root).trajectories()["id"].to_list() == ids


IN_PROCESS = """
import errno, json, resource, sys
from ee_middleware.errors import StoreWriteError
from ee_middleware.store import LocalExperienceStore
store = LocalExperienceStore(sys.argv[1])
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    store.compact()
except StoreWriteError as exc:
    print(json.dumps({"error": str(exc), "errno": exc.errno}))
"""


def test_store_compact_under_a_file_size_limit_raises_a_store_write_error_with_efbig(tmp_path: Path, largest_part: int):
    """Was: ``polars.exceptions.ComputeError`` (not an ``EEError``) from ``LocalExperienceStore.compact()``."""
    import errno
    import json

    root = tmp_path / "experience"
    ids = _spooled_store(root)
    limit = largest_part // 3
    done = subprocess.run([sys.executable, "-c", IN_PROCESS, str(root), str(limit)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["errno"] == errno.EFBIG and f"{limit} bytes" in result["error"], result
    assert LocalExperienceStore(root).trajectories()["id"].to_list() == ids


def test_compaction_stopped_by_the_file_systems_largest_file_does_not_blame_a_larger_process_limit_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """EFBIG from the file system (FAT, some network file systems; a stand-in: writes past 2000 bytes fail) while a far
    larger process limit is set. Was: 'would be larger than this process's file-size limit (1073741824 bytes ...)'
    and only the advice to raise it."""
    import errno
    import os

    from ee_middleware import _files
    from ee_middleware.errors import StoreWriteError

    real_write = _files._KeepsWriteError.write

    def fat_like(self: _files._KeepsWriteError, data: bytes) -> int:
        if self._fh.tell() + len(data) > 2000:
            error = OSError(errno.EFBIG, os.strerror(errno.EFBIG))
            self._keep(error)
            raise error
        return real_write(self, data)

    root = tmp_path / "experience"
    ids = _spooled_store(root)
    monkeypatch.setattr(_files._KeepsWriteError, "write", fat_like)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, hard))
    try:
        with pytest.raises(StoreWriteError) as caught:
            LocalExperienceStore(root).compact()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    error = " ".join(str(caught.value).split())
    assert caught.value.errno == errno.EFBIG
    assert f"file-size limit ({1 << 30} bytes" in error and "or the largest file the file system holds" in error, error
    assert "if the file system did, move the store to a file system that holds larger files" in error, error
    monkeypatch.undo()
    assert LocalExperienceStore(root).trajectories()["id"].to_list() == ids
