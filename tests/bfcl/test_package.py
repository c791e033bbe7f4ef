"""bfcl-eval's imports create folders under ``BFCL_PROJECT_ROOT``; ee points it, when unset, at a folder of this
user's own that no one else may write (sweep S 5). Before, it was ``$TMPDIR/ee-middleware-bfcl``, one name every user
of the machine shares: another user could create it first, or plant a link there, and have bfcl-eval write where it
pointed. Real folders and links in a temporary folder of the test's own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ee_middleware.bfcl import _package
from ee_middleware.bfcl._package import scratch_root


@pytest.fixture
def tmpdir_of_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(_package.tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_the_folder_is_the_users_own_and_kept(tmpdir_of_test: Path) -> None:
    first = Path(scratch_root())
    assert first.parent == tmpdir_of_test and first.name == f"ee-middleware-bfcl-{os.getuid()}"
    assert stat.S_IMODE(first.stat().st_mode) & 0o077 == 0
    assert Path(scratch_root()) == first  # the same folder for every import


def test_a_link_or_a_folder_others_may_write_at_that_name_is_never_used(tmpdir_of_test: Path) -> None:
    elsewhere = tmpdir_of_test / "victim"
    elsewhere.mkdir()
    name = tmpdir_of_test / f"ee-middleware-bfcl-{os.getuid()}"
    name.symlink_to(elsewhere)
    chosen = Path(scratch_root())
    assert chosen != name and chosen.resolve() != elsewhere.resolve() and chosen.is_dir()
    name.unlink()
    name.mkdir(mode=0o777)
    name.chmod(0o777)
    chosen = Path(scratch_root())
    assert chosen != name and chosen.is_dir()
