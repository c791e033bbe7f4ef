"""Every Parquet writer under a file-size limit (``ulimit -f``, systemd's ``LimitFSIZE=``), or on a file system whose
largest file is smaller: the error names what stopped the write and the fix, not polars' "Invalid thrift: transport
error" called a bug in ee-middleware. The limits are real (``resource.setrlimit`` in a child process before the command
starts), the stores real; only the file system's own largest file is a stand-in (no FAT file system can be mounted here)."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from ee_middleware import _files
from ee_middleware._files import FileTooLargeError, atomic_write_parquet
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

REPO = Path(__file__).resolve().parents[1]
LIMIT = 4096


def _limited(limit: int) -> Callable[[], None]:
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def _ee(*args: str, limit: int = LIMIT) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "ee_middleware.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        preexec_fn=_limited(limit),
    )
    return done.returncode, " ".join(done.stderr.split())


def _names_the_limit(error: str) -> None:
    assert "unexpected" not in error and "a bug in ee-middleware" not in error and "thrift" not in error, error
    assert f"file-size limit ({LIMIT} bytes" in error and "ulimit -f" in error and "LimitFSIZE=infinity" in error, error
    assert "largest file the file system holds" not in error, "the file reached the process's limit: that alone is named"


def _parquet_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".parquet", ".tmp")]


def test_ee_traces_export_parquet_under_a_file_size_limit_names_the_limit_and_writes_nothing(tmp_path: Path) -> None:
    """Was: 'error: unexpected ComputeError: parquet: File out of specification: Invalid thrift: transport error'."""
    root = tmp_path / "experience"
    store = LocalExperienceStore(root)
    store.write([sample_trajectory(f"t{i}", steps=4) for i in range(300)])
    store.close()
    out = tmp_path / "out" / "train.parquet"
    code, error = _ee("traces", "export", "--store", str(root), "--format", "parquet", "--status", "all", "--out", str(out))
    assert code == 1, error
    _names_the_limit(error)
    assert f"Cannot write {out}" in error and "Nothing was written" in error, error
    assert not (tmp_path / "out").exists(), "no output, no temporary file, no folder made for it"


def test_ee_experience_dataset_under_a_file_size_limit_names_em_parquet_and_the_limit(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was: 'error: unexpected ComputeError: ... Invalid thrift: transport error' for em.parquet."""
    out = tmp_path / "data"
    code, error = _ee("experience", "dataset", "--store", str(bfcl_store_path), "--out", str(out))
    assert code == 1, error
    _names_the_limit(error)
    assert str(out / "em.parquet") in error, error
    assert not _parquet_files(out)


def test_ee_datasets_build_under_a_file_size_limit_names_the_limit(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was: 'error: unexpected ComputeError: ... Invalid thrift: transport error' for a dataset part."""
    out = tmp_path / "data"
    code, error = _ee("datasets", "build", "--store", str(bfcl_store_path), "--out", str(out), "--kinds", "il")
    assert code == 1, error
    _names_the_limit(error)
    assert not _parquet_files(out), "no dataset file, part or temporary file is left"


EVAL_REPORT = """
import resource, sys, types
from pathlib import Path
from evals.report import write_outputs
rows = [{"suite": "s", "task_id": f"task-{i}-" + "x" * 200, "trial": 0, "success": i % 2 == 0} for i in range(2000)]
job = types.SimpleNamespace(model="m", trials=1, seed=0, suites=["s"], max_tokens=None)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]),) * 2)
write_outputs(Path(sys.argv[1]), rows, job)
"""


def test_the_eval_reports_results_parquet_under_a_file_size_limit_is_a_file_too_large_error(tmp_path: Path) -> None:
    """evals/report.py writes results.parquet the same way (a job stand-in: only its model, trials, seed and suites)."""
    done = subprocess.run(
        [sys.executable, "-c", EVAL_REPORT, str(tmp_path), str(LIMIT)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ee_middleware._files.FileTooLargeError:") and f"({LIMIT} bytes" in last, done.stderr
    assert not _parquet_files(tmp_path)


def _fails_past(limit: int, number: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for a file system that refuses writes past ``limit`` bytes with ``number`` (a full disk, FAT's largest
    file): writes up to it, then raises."""
    real_write = _files._KeepsWriteError.write

    def refuses(self: _files._KeepsWriteError, data: bytes) -> int:
        if self._fh.tell() + len(data) > limit:
            self._fh.write(data[: max(0, limit - self._fh.tell())])
            self._fh.flush()
            error = OSError(number, os.strerror(number))
            self._keep(error)
            raise error
        return real_write(self, data)

    monkeypatch.setattr(_files._KeepsWriteError, "write", refuses)


def test_a_disk_full_mid_file_is_the_os_error_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: polars' ComputeError ('... (os error 28)', or the thrift error in the footer), which no caller took for a
    full disk."""
    _fails_past(1000, errno.ENOSPC, monkeypatch)
    target = tmp_path / "x.parquet"
    for frame in (pl.DataFrame({"a": [str(i) * 40 for i in range(5000)]}), pl.LazyFrame({"a": [str(i) * 40 for i in range(5000)]})):
        with pytest.raises(OSError) as caught:
            atomic_write_parquet(frame, target, compression="zstd")
        assert caught.value.errno == errno.ENOSPC and not isinstance(caught.value, FileTooLargeError), caught.value
        assert not _parquet_files(tmp_path)


def test_a_file_system_limit_under_a_larger_process_limit_is_not_blamed_on_the_process_limit_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EFBIG from the file system's largest file (FAT, some network file systems; a stand-in: writes past 1000 bytes
    fail) while a large process limit is set. Was: 'would be larger than this process's file-size limit (X bytes)' with X
    far above the file's size, and only the advice to raise that limit."""
    _fails_past(1000, errno.EFBIG, monkeypatch)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    big = 1 << 30
    resource.setrlimit(resource.RLIMIT_FSIZE, (big, hard))
    try:
        with pytest.raises(FileTooLargeError) as caught:
            atomic_write_parquet(pl.DataFrame({"a": [str(i) * 40 for i in range(5000)]}), tmp_path / "x.parquet")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    error = caught.value
    assert not error.by_process_limit and error.size <= 1000, error.size
    assert f"this process's file-size limit ({big} bytes" in str(error) and "or the largest file the file system holds" in str(error)
    assert "write to a file system that holds larger files" in error.advice, error.advice
    assert not _parquet_files(tmp_path)
    without = FileTooLargeError(tmp_path / "x.parquet", 1000, None)
    assert "process" not in without.which and without.which.startswith("the largest file the file system holds"), without.which
