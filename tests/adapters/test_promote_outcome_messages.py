"""What a failed promote and a refused rollback say matches what happened, against a real local server: a retired
adapter (rolled back from, still loaded for a later rollback) whose promote fails stays retired and stays loaded; an
app that never had a live adapter serves the base model, and has nothing to roll back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.errors import InvalidTransitionError, PromotionError, ServerRankError, ServerSetupError
from ee_middleware.adapters.promote import promote, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.testing import ScriptedChatServer

from .conftest import train_shaped_adapter


@contextmanager
def _no_runtime_lora_api() -> Iterator[LocalBackend]:
    """A replica that answers (its model listing, chat) but fails every load for its own reason, not the adapter's: it
    has no runtime LoRA API (a replica that is down is found before anything is loaded, so it cannot show what a failed
    promote says about the replicas it loaded the adapter on)."""
    with ScriptedChatServer(["OK"], models=["tiny-base"]) as plain:
        backend = LocalBackend(plain.base_url, timeout_s=5)
        try:
            yield backend
        finally:
            backend.close()


def _rolled_back(local_server: Any, tiny_base: Path, tmp_path: Path) -> tuple[LocalAdapterRegistry, str, str, LocalBackend]:
    """App ``bot``: ``first`` promoted, ``second`` promoted, then rolled back from: ``second`` is retired and stays loaded."""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    good = LocalBackend(local_server.url)
    first = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=81), "bot").name
    second = registry.register(train_shaped_adapter(tiny_base, tmp_path / "b", seed=82), "bot").name
    promote(registry, first, [good])
    promote(registry, second, [good])
    rollback(registry, "bot", [good])
    assert registry.get(second).status == "retired" and second in good.list()
    return registry, first, second, good


def test_a_failed_promote_of_a_retired_adapter_says_it_stays_retired_and_stays_loaded(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """Before: 'It was unloaded from every replica it had been loaded on, and stays a candidate', while it stayed
    retired and stayed loaded on the replica that answered (this promote had loaded it nowhere)."""
    registry, first, second, good = _rolled_back(local_server, tiny_base, tmp_path)
    try:
        with _no_runtime_lora_api() as other, pytest.raises(PromotionError) as caught:
            promote(registry, second, [good, other])
        message = str(caught.value)
        assert isinstance(caught.value.__cause__, ServerSetupError)
        assert "stays a candidate" not in message and "unloaded" not in message, message
        assert "Nothing was loaded by this promote." in message
        assert f"It stays loaded on {good.url}, which held it before." in message
        assert "It stays retired: the adapter is not at fault." in message and f"bot still serves {first}" in message
        assert registry.get(second).status == "retired" and second in good.list()
        assert registry.resolve("bot") == first
    finally:
        for name in registry.list():
            if name.name in good.list():
                good.unload(name.name)


def test_a_retired_adapter_refused_for_a_servers_rank_limit_says_it_stays_retired(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """Before: 'Nothing was loaded; it stays a candidate' for an adapter that is retired."""
    registry, first, second, good = _rolled_back(local_server, tiny_base, tmp_path)
    try:
        with pytest.raises(ServerRankError, match=rf"Nothing was loaded; it stays retired, and bot still serves {first}"):
            promote(registry, second, [LocalBackend(local_server.url, max_lora_rank=2)])
        assert registry.get(second).status == "retired"
    finally:
        for name in registry.list():
            if name.name in good.list():
                good.unload(name.name)


def test_a_failed_promote_of_a_candidate_says_where_this_promote_had_loaded_it(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    good = LocalBackend(local_server.url)
    name = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=83), "bot").name
    with _no_runtime_lora_api() as other, pytest.raises(PromotionError) as caught:
        promote(registry, name, [good, other])
    message = str(caught.value)
    assert f"It was unloaded from {good.url}, where this promote had loaded it." in message, message
    assert "stays loaded" not in message and "It stays a candidate: the adapter is not at fault." in message
    assert "bot still serves the base model" in message
    assert registry.get(name).status == "candidate" and name not in good.list()


def test_rolling_back_an_app_that_never_had_a_live_adapter_says_it_serves_the_base_model(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """Before: 'fresh has no earlier live adapter to roll back to (nothing was promoted before None).'"""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=84), "fresh")
    with pytest.raises(InvalidTransitionError) as caught:
        rollback(registry, "fresh", [LocalBackend(local_server.url)])
    message = str(caught.value)
    assert "None" not in message, message
    assert "fresh has no live adapter: it serves the base model" in message and "nothing can be rolled back" in message
    assert "ee adapters promote" in message


def test_rolling_back_an_app_whose_first_live_adapter_is_live_names_it(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    good = LocalBackend(local_server.url)
    name = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=85), "bot").name
    promote(registry, name, [good])
    try:
        with pytest.raises(
            InvalidTransitionError, match=rf"bot has no earlier live adapter to roll back to \(nothing was promoted before {name}\)"
        ):
            rollback(registry, "bot", [good])
    finally:
        good.unload(name)
