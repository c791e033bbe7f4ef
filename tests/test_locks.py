"""holder_lock: one holder at a time, named to the next; released at the end of the block and when the holder dies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ee_middleware._locks import holder_lock
from tests.unreadable import needs_held_user, open_folder, python_as_held_user


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


@needs_held_user
def test_whether_a_lock_is_held_is_told_to_a_user_who_may_not_write_its_file(tmp_path: Path) -> None:
    """Before: `ee runs list` by a user with read access only (monitoring, a read-only mount) failed with
    "runs/.lock: Permission denied": telling whether a run is going opened the lock file for appending."""
    import textwrap

    with open_folder("ee-locks-") as folder:
        lock = folder / ".lock"
        with holder_lock(lock, lambda holder: RuntimeError(holder)):
            lock.chmod(0o444)
            code = textwrap.dedent(
                f"""
                from pathlib import Path
                from ee_middleware._locks import lock_held
                print("held", lock_held(Path({str(lock)!r})))
                """
            )
            status, output = python_as_held_user(code, folder)
            assert status == 0 and "held True" in output, output
        lock.touch()
        lock.chmod(0o444)
        status, output = python_as_held_user(code, folder)
        assert status == 0 and "held False" in output, output
