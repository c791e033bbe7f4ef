"""Optional dependencies: imported with an error naming the extra, and without their noise about each other."""

from __future__ import annotations

import warnings

import pytest

from ee_middleware._optional import import_optional
from ee_middleware.errors import MissingExtraError


def test_a_missing_module_names_the_extra_to_install() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'ee-middleware\[train\]'"):
        import_optional("no_such_module_here", extra="train", purpose="train an adapter")


def test_peft_wrapping_a_model_warns_nothing_about_transformers_deprecations_it_uses() -> None:
    """peft reads ``model.is_gradient_checkpointing``, deprecated in transformers 5: a FutureWarning on every adapter
    wrapped or loaded (every ``ee train``, ``ee serve local`` adapter, likelihood evaluation), about peft's own code."""
    from ee_middleware.testing.tiny_models import build_test_tokenizer, build_tiny_llama

    peft = import_optional("peft", extra="train", purpose="wrap a model")
    model = build_tiny_llama(build_test_tokenizer(["hello world"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)  # the others stay as they are: ours first
        peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
