"""The capture path must stay light: no model stack is imported by it."""

from __future__ import annotations

import subprocess
import sys

HEAVY = {"torch", "transformers", "peft", "trl", "vllm", "accelerate"}


def _modules_after(code: str) -> set[str]:
    out = subprocess.check_output([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"], text=True)
    return set(out.split())


def test_import_ee_middleware_pulls_in_no_model_stack_and_no_langchain():
    loaded = _modules_after("import ee_middleware")
    assert not HEAVY & loaded
    assert "langchain_core" not in loaded, "the bare package import must stay fast"


def test_capture_path_imports_no_model_stack():
    loaded = _modules_after(
        "from ee_middleware import record_experience, LocalExperienceStore, ExperienceSpanProcessor\n"
        "import ee_middleware.ingest, ee_middleware.cli.app"
    )
    assert not HEAVY & loaded


def test_lazy_attributes_resolve_and_unknown_names_fail():
    import pytest

    import ee_middleware

    assert callable(ee_middleware.record_experience)
    assert "record_experience" in dir(ee_middleware)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ee_middleware.nope


def test_the_errors_a_user_catches_are_top_level_names_that_load_nothing_heavy():
    """The README says what raises ConfigError, and ee's errors are EEErrors; they were importable only from
    ee_middleware.errors, which no page named."""
    loaded = _modules_after("from ee_middleware import ConfigError, CaptureError, StoreError, EEError")
    assert not HEAVY & loaded and "langchain_core" not in loaded
    import ee_middleware
    from ee_middleware import errors

    assert ee_middleware.ConfigError is errors.ConfigError and issubclass(ee_middleware.StoreError, ee_middleware.EEError)
    assert {"ConfigError", "CaptureError", "StoreError", "EEError"} <= set(ee_middleware.__all__)
