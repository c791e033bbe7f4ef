"""Conformance kits for adapter registries and serving backends (``ee_middleware.adapters.testing``).

They live here, not in ``ee_middleware.testing``: the light core never imports the adapters
package. A third-party registry or backend only has to pass them:

>>> check_registry(lambda: MyRegistry(...), tmp_path)                       # doctest: +SKIP
>>> check_serving_backend(MyBackend(url), adapters=conformance_adapters(...))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ee_middleware.adapters.errors import (
    AdapterNameInUseError,
    AdapterNotFoundError,
    AdapterPathNotFoundError,
    InvalidTransitionError,
    RankTooLargeError,
    ServerRankError,
)
from ee_middleware.adapters.registry import AdapterRegistry
from ee_middleware.adapters.serving.backend import ServingBackend
from ee_middleware.errors import ModelRequestError
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.protocol import Sampling


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


SKEW = timedelta(minutes=10)
"""How far a registry's clock (its history's ``at``) may be from this machine's for :func:`check_registry`."""


def _iso_time(value: Any) -> datetime | None:
    """An ISO 8601 string as an aware datetime (UTC when it names no zone), or ``None``."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def check_registry(factory: Callable[[], AdapterRegistry], work: Path) -> None:
    """Check an empty registry from ``factory`` against the :class:`AdapterRegistry` contract; ``work`` is a scratch folder.

    Each history event the kit made (app ``conformance``) must have ``at``, the time it was made (within :data:`SKEW`),
    as an ISO 8601 string with its zone (``datetime.now(UTC).isoformat()``). Other apps' events, in a registry that holds some, are not checked."""
    started = datetime.now(UTC)
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
    # only the kit's own events (its app): a shared registry's other apps may hold older or interrupted events
    made = registry.history(app="conformance")
    assert all(e["applied"] for e in made) and all({"at", "by", "action"} <= set(e) for e in made)
    ended = datetime.now(UTC)
    for event in made:
        at = _iso_time(event["at"])
        assert at is not None, (
            f"the {event['action']} event's at={event['at']!r} is not an ISO 8601 string: `ee adapters show` prints it, and "
            "ee improve's promote compares it with its run's times (to tell a rollback since the run from an older one)"
        )
        assert datetime.fromisoformat(event["at"]).tzinfo is not None, (
            f"the {event['action']} event's at={event['at']!r} names no zone: it could be any zone's time, so ee improve's "
            "promote cannot tell a rollback since its run from an older one within 14 hours (give the zone, e.g. "
            "datetime.now(UTC).isoformat())"
        )
        assert started - SKEW <= at <= ended + SKEW, (
            f"the {event['action']} event's at={event['at']!r} is not when the kit made it ({started.isoformat()} to {ended.isoformat()})"
        )
    fresh = factory()
    assert fresh.resolve("conformance") == a.name, "a second handle must see what the first one wrote"


@dataclass(frozen=True)
class ConformanceAdapters:
    """Adapter folders for :func:`check_serving_backend`, all trained shapes for the server's base model.

    ``perturbed``: random non-zero LoRA weights (changes greedy output); ``zero``: LoRA B = 0 (output
    identical to the base); ``too_big``: a rank above the server's ``--max-lora-rank``.
    """

    perturbed: Path
    zero: Path
    too_big: Path


def _chat(url: str, model: str, messages: list[dict[str, Any]]) -> str:
    client = OpenAIChatClient(url, model, retries=0, timeout_s=300, api_key="")
    try:
        [choice, *_] = client.complete(messages, n=1, sampling=Sampling(temperature=0.0, max_tokens=8, seed=0))
    finally:
        client.close()
    return choice.raw


def check_serving_backend(backend: ServingBackend, adapters: ConformanceAdapters, *, base_model: str, prefix: str = "conformance") -> None:
    """Check a running server through ``backend`` (built without a ``max_lora_rank`` pre-check) against the protocol.

    Load -> listed -> verified; a zero-B adapter answers like the base, a perturbed one differently;
    a reused name, a missing path and a too-large rank each raise their typed error; unload -> not
    listed and requests for it are refused. Names start with ``prefix`` plus a random part, so a
    server is never asked to load anything under a name it saw before.
    """
    import uuid

    run = f"{prefix}-{uuid.uuid4().hex[:8]}"
    zero, perturbed = f"{run}-zero", f"{run}-perturbed"
    messages = [{"role": "user", "content": "Where is order A-1001?"}]
    assert isinstance(backend, ServingBackend), f"{backend!r} does not implement ServingBackend"
    assert base_model in backend.list(), f"{base_model} is not listed by {backend.url}"
    base_answer = _chat(backend.url, base_model, messages)
    backend.load(zero, str(adapters.zero))
    backend.load(perturbed, str(adapters.perturbed))
    try:
        assert {zero, perturbed} <= set(backend.list())
        assert backend.verify(zero).adapter == zero
        assert _chat(backend.url, zero, messages) == base_answer, "a zero-B adapter must answer exactly like the base model"
        assert _chat(backend.url, perturbed, messages) != base_answer, "a perturbed adapter must change the greedy answer"
        assert _chat(backend.url, base_model, messages) == base_answer, "the base model must be unchanged by loaded adapters"
        _expect(AdapterNameInUseError, lambda: backend.load(perturbed, str(adapters.perturbed)), "loading a name twice")
        _expect(AdapterPathNotFoundError, lambda: backend.load(f"{run}-missing", str(adapters.zero) + "-missing"), "a missing path")
        _expect(ServerRankError, lambda: backend.load(f"{run}-big", str(adapters.too_big)), "a rank above --max-lora-rank")
        assert f"{run}-big" not in backend.list() and f"{run}-missing" not in backend.list()
    finally:
        backend.unload(perturbed)
        backend.unload(zero)
    assert not {zero, perturbed} & set(backend.list())
    refused = _expect(ModelRequestError, lambda: _chat(backend.url, perturbed, messages), "a request for an unloaded adapter")
    assert getattr(refused, "status", None) in (400, 404), refused
    backend.unload(perturbed)  # unloading what is not loaded is a no-op


PARITY_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "mv",
            "description": "Move a file",
            "parameters": {"type": "object", "properties": {"source": {"type": "string"}}},
        },
    }
]
PARITY_PROMPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Move file_1.txt"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "mv", "arguments": '{"source": "file_1.txt"}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "moved"},
]


def check_prompt_parity(server_root: str, served_model: str, tokenizer: Any) -> int:
    """The server's ``/tokenize`` of chat messages equals the trainer's rendering with ``tokenizer``, token for token.

    ``server_root`` is the server's address without ``/v1``; ``tokenizer`` the base model's own (with
    the template the adapter was trained with). Checks a multi-turn state with tools, tool calls and
    a tool result, the same without a system message, and a plain prompt; returns how many were compared.
    Where the trainer cannot train on the serving prompt itself (a generation prompt the template's own turns do not
    start with, as QwQ's ``<think>``: the row's ``fallback``), the served prompt is compared with the serving prompt
    rendered with ``tokenizer``.
    """
    import httpx

    from ee_middleware.models.chat_template import probe_template, render_pair, render_prompt

    completion = [{"role": "assistant", "content": "Done."}]
    cases = ((PARITY_PROMPT, PARITY_TOOLS), (PARITY_PROMPT[1:], PARITY_TOOLS), (PARITY_PROMPT[1:2], None))
    support = probe_template(tokenizer)
    for messages, tools in cases:
        row = render_pair(tokenizer, messages, completion, tools, support)
        text = render_prompt(tokenizer, messages, tools, support) if row.fallback else row.prompt
        trained = tokenizer(text, add_special_tokens=False)["input_ids"]
        body = {"model": served_model, "messages": messages, "add_generation_prompt": True, **({"tools": tools} if tools else {})}
        response = httpx.post(f"{server_root.rstrip('/')}/tokenize", json=body, timeout=120)
        response.raise_for_status()
        served = response.json()["tokens"]
        assert served == trained, f"the served prompt differs from the trained one:\nserved  {served}\ntrained {trained}\n(text {text!r})"
    return len(cases)
