"""Which reader failures are the system refusing to read a store's file (left where it is), and which are damage."""

from __future__ import annotations

import errno

import polars as pl
import pytest

from ee_middleware.store.access import read_advice, refused


def test_an_os_error_is_a_refusal_and_a_missing_file_is_not() -> None:
    assert refused(PermissionError(errno.EACCES, "Permission denied", "/s/part.parquet")) is not None
    assert refused(IsADirectoryError(errno.EISDIR, "Is a directory")) is not None
    assert refused(FileNotFoundError(errno.ENOENT, "No such file or directory")) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("parquet: I/O error: Input/output error (os error 5)", errno.EIO),  # polars' own error around the system's
        ("Permission denied (os error 13): /s/part.parquet", errno.EACCES),
        ("No such file or directory (os error 2): /s/part.parquet", None),
        ("parquet: File out of specification: The file must end with PAR1", None),  # damage
    ],
)
def test_polars_errors_are_told_by_the_system_error_they_carry(text: str, expected: int | None) -> None:
    problem = refused(pl.exceptions.ComputeError(text))
    assert (problem.errno if problem is not None else None) == expected


def test_the_advice_fits_the_cause() -> None:
    assert "chmod" in read_advice(PermissionError(errno.EACCES, "Permission denied"))
    assert "dmesg" in read_advice(OSError(errno.EIO, "Input/output error"))
    assert "move it out of the store folder" in read_advice(IsADirectoryError(errno.EISDIR, "Is a directory"))
