"""holder_lock: one holder at a time, named to the next; released at the end of the block and when the holder dies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ee_middleware._locks import holder_lock


def test_a_second_holder_is_refused_with_the_first_named_and_the_lock_is_free_after(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    first = rf"^pid {os.getpid()} on \S+ since \d{{4}}-"
    with holder_lock(path, RuntimeError), pytest.raises(RuntimeError, match=first), holder_lock(path, RuntimeError):
        pass
    with holder_lock(path, RuntimeError):
        pass  # free again
    assert path.read_text() == ""


def test_a_killed_holder_releases_it(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    code = f"from pathlib import Path; from ee_middleware._locks import holder_lock\nwith holder_lock(Path({str(path)!r}), RuntimeError):\n    print('held', flush=True)\n    input()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=f"pid {holder.pid} "), holder_lock(path, RuntimeError):
            pass
    finally:
        holder.kill()
        holder.wait()
    with holder_lock(path, RuntimeError):
        pass


def test_a_lock_beside_a_folder_is_removed_at_the_end_and_still_refuses_a_second_holder(tmp_path: Path) -> None:
    """``remove=True`` (``ee train``'s lock beside its output folder) leaves no file behind, also after a killed holder."""
    path = tmp_path / ".out.train.lock"
    with holder_lock(path, RuntimeError, remove=True):
        assert path.is_file()
        with pytest.raises(RuntimeError, match=rf"^pid {os.getpid()} "), holder_lock(path, RuntimeError, remove=True):
            pass
    assert not path.exists()
    code = f"from pathlib import Path; from ee_middleware._locks import holder_lock\nwith holder_lock(Path({str(path)!r}), RuntimeError, remove=True):\n    print('held', flush=True)\n    input()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()
        holder.wait()
    assert path.is_file(), "a killed holder leaves its file"
    with holder_lock(path, RuntimeError, remove=True):
        pass
    assert not path.exists()
