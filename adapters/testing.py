"""Conformance kits for adapter registries and serving backends (``ee_middleware.adapters.testing``).

They live here, not in ``ee_middleware.testing``: the light core never imports the adapters
package. A third-party registry or backend only has to pass them:

>>> check_registry(lambda: MyRegistry(...), tmp_path)                       # doctest: +SKIP
>>> check_serving_backend(MyBackend(url), adapters=conformance_adapters(...))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ee_middleware.adapters.errors import (
    AdapterNotFoundError,
    InvalidTransitionError,
    RankTooLargeError,
)
from ee_middleware.adapters.registry import AdapterRegistry


def _expect(error: type[BaseException], action: Callable[[], Any], what: str) -> BaseException:
    try:
        action()
    except error as exc:
        return exc
    raise AssertionError(f"{what}: expected {error.__name__}, nothing was raised")


def _adapter(folder: Path, seed: int, rank: int = 4, base: str = "/models/conformance-base") -> Path:
    """A small adapter folder with deterministic bytes (no numeric library needed)."""
    import struct

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "base_model_name_or_path": base}))
    values = [((seed * 7919 + i * 104729) % 1000) / 1000.0 for i in range(rank * 4)]
    header = json.dumps({"w.lora_A.weight": {"dtype": "F32", "shape": [rank, 4], "data_offsets": [0, 4 * len(values)]}}).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + struct.pack(f"<{len(values)}f", *values))
    return folder


def check_registry(factory: Callable[[], AdapterRegistry], work: Path) -> None:
    """Check an empty registry from ``factory`` against the :class:`AdapterRegistry` contract; ``work`` is a scratch folder."""
    registry = factory()
    assert isinstance(registry, AdapterRegistry), f"{registry!r} does not implement AdapterRegistry"
    a = registry.register(_adapter(work / "a", 1), "conformance", by="kit")
    assert a.status == "candidate" and a.app == "conformance" and a.version == 1
    assert a.name == f"conformance-v1-{a.content_hash[:8]}", a.name
    assert registry.register(work / "a", "conformance") == a, "registering the same weights again must return the same record"
    b = registry.register(_adapter(work / "b", 2), "conformance")
    assert b.version == 2 and b.name != a.name
    assert registry.get(a.name) == a and [r.name for r in registry.list(app="conformance")] == [a.name, b.name]
    _expect(AdapterNotFoundError, lambda: registry.get("conformance-v9-00000000"), "get of an unknown name")
    _expect(
        RankTooLargeError, lambda: registry.register(_adapter(work / "big", 3, rank=64), "conformance", max_lora_rank=16), "rank 64 > 16"
    )
    assert registry.resolve("conformance") is None
    assert registry.switch_live(a.name) is None
    assert registry.switch_live(b.name).name == a.name
    assert registry.resolve("conformance") == b.name and registry.apps()["conformance"]["live"] == b.name
    assert registry.get(a.name).status == "retired" and registry.rollback_target("conformance").name == a.name
    _expect(InvalidTransitionError, lambda: registry.retire(b.name), "retiring the live adapter")
    c = registry.register(_adapter(work / "c", 4), "conformance")
    assert registry.mark_failed(c.name, "kit").status == "failed"
    _expect(InvalidTransitionError, lambda: registry.switch_live(c.name), "promoting a failed adapter")
    registry.switch_live(a.name, action="rollback")
    assert registry.resolve("conformance") == a.name and registry.get(b.name).status == "retired"
    assert registry.retire(b.name).status == "retired"
    registry.add_eval(a.name, {"suite": "kit", "score": 1.0})
    assert registry.get(a.name).evals[-1]["score"] == 1.0
    registry.note("promote-started", app="conformance", adapter=c.name)
    actions = [e["action"] for e in registry.history(app="conformance")]
    assert actions == ["register", "register", "promote", "promote", "register", "fail", "rollback", "retire", "eval", "promote-started"], (
        actions
    )
    assert all(e["applied"] for e in registry.history()) and all({"at", "by", "action"} <= set(e) for e in registry.history())
    fresh = factory()
    assert fresh.resolve("conformance") == a.name, "a second handle must see what the first one wrote"
