"""``LocalExperienceStore(" ")`` is refused, as ``open_store(" ")`` is: before, it made a store in a folder named " "
of the working directory (``LocalExperienceStore(os.environ.get("STORE", ""))`` with the variable unset, or blank)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ee_middleware.errors import StoreError
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store.registry import open_store


@pytest.mark.parametrize("root", ["", " ", "\t\n", Path(" ")])
def test_a_blank_store_folder_is_refused(root: str | os.PathLike[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=r"is empty or blank .*name the folder"):
        LocalExperienceStore(root)
    with pytest.raises(StoreError):
        open_store(root)
    assert list(tmp_path.iterdir()) == [], "no folder, no store made"


def test_a_named_folder_still_makes_a_store(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "experience")
    store.close()
    assert (tmp_path / "experience").is_dir()
