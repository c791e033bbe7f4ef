"""The tiny random model helpers are public test API (S14 D8): ``from ee_middleware.testing import build_test_tokenizer,
save_tiny_llama``, listed in ``__all__`` and ``dir()``, loaded lazily so that importing the kit still loads no model
stack (tests/test_layers.py imports ee_middleware.testing and every name of its ``__all__`` in a fresh interpreter and
checks that)."""

from __future__ import annotations

import ee_middleware.testing
from ee_middleware.testing import tiny_models

TINY = ("build_test_tokenizer", "build_tiny_llama", "save_tiny_llama")


def test_the_tiny_model_helpers_are_exported_with_docstrings() -> None:
    from ee_middleware.testing import build_test_tokenizer, build_tiny_llama, save_tiny_llama

    assert (build_test_tokenizer, build_tiny_llama, save_tiny_llama) == tuple(getattr(tiny_models, name) for name in TINY)
    for name in TINY:
        assert name in ee_middleware.testing.__all__ and name in dir(ee_middleware.testing)
        doc = getattr(tiny_models, name).__doc__ or ""
        assert "Args:" in doc and "[train]" in doc, name  # what to pass and what to install
    assert "ee improve" in (save_tiny_llama.__doc__ or "")
