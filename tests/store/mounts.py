"""Real mounts for store tests: a tiny tmpfs (a disk that fills up) and a read-only bind mount.

Both need root and mount permission (the sandbox has them); where the mount is refused the test
that asked for it is skipped, and a test with an injected error covers the same path everywhere.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (needs root and mount permission): {done.stderr.strip()}")


@contextmanager
def tiny_tmpfs(parent: Path, size: str = "1m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted under ``parent`` for the duration of the block."""
    point = parent / f"tmpfs-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point))
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


@contextmanager
def read_only_view(folder: Path) -> Iterator[Path]:
    """``folder`` bind-mounted read-only at a new path (root can write through chmod, not through this)."""
    point = folder.parent / f"{folder.name}-ro-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    _mount("--bind", str(folder), str(point))
    try:
        done = subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)
