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
from ee_middleware.models.openai_compat import OpenAIChatClient, serving_api_key
from ee_middleware.models.protocol import Sampling
from ee_middleware.testing.messages import Said, broken


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


def _equal(what: str, got: Any, expected: Any, rule: str, fix: str) -> None:
    """Fail with :func:`~ee_middleware.testing.messages.broken`'s message unless ``got == expected``."""
    if got != expected:
        raise AssertionError(broken(what, got, expected, rule, fix))


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
    _equal(
        "register() of an app's first adapter: its (status, app, version)",
        (a.status, a.app, a.version),
        ("candidate", "conformance", 1),
        "a registered adapter is a candidate of the app it was registered for, its versions counted from 1",
        "Build the record from register()'s app, with status 'candidate' and the app's next version.",
    )
    _equal(
        "register() of an app's first adapter: its name",
        a.name,
        f"conformance-v1-{a.content_hash[:8]}",
        "an adapter's name is its app, its version and the first 8 characters of its content hash",
        "Name each adapter f'{app}-v{version}-{content_hash[:8]}'.",
    )
    assert registry.register(work / "a", "conformance") == a, "registering the same weights again must return the same record"
    b = registry.register(_adapter(work / "b", 2), "conformance")
    _equal(
        "register() of an app's second weights: its version",
        b.version,
        2,
        "each new weights of an app get the app's next version",
        "Count versions per app, one more than the last registered.",
    )
    assert b.name != a.name, broken(
        "register() of other weights of the same app: its name",
        b.name,
        Said(f"a name other than {a.name!r}"),
        "names are immutable and name one set of weights",
        "Name each adapter app-vVERSION-HASH8 (HASH: the weights' content hash).",
    )
    got = registry.get(a.name)
    assert got == a, broken(
        f"get({a.name!r})", got, a, "get() returns the record register() returned", "Keep every field of the record as registered."
    )
    for record in (a, b, got):
        assert Path(record.path).is_absolute() or "://" in record.path, broken(
            f"the record of {record.name}: its path",
            record.path,
            Said("an absolute path (or a URL the servers read)"),
            "servers load an adapter from its record's path, and they do not share the caller's working directory",
            "Give each record the absolute path of the registry's copy (a local registry: resolved from where the registry is now).",
        )
    names = [r.name for r in registry.list(app="conformance")]
    _equal(
        "list(app='conformance') (names)",
        names,
        [a.name, b.name],
        "list(app=...) returns that app's adapters, oldest registered first",
        "Keep only the app's records, in the order registered.",
    )
    _expect(AdapterNotFoundError, lambda: registry.get("conformance-v9-00000000"), "get of an unknown name")
    _expect(
        RankTooLargeError, lambda: registry.register(_adapter(work / "big", 3, rank=64), "conformance", max_lora_rank=16), "rank 64 > 16"
    )
    live = registry.resolve("conformance")
    assert live is None, broken(
        "resolve('conformance') before any promote",
        live,
        None,
        "an app has no live adapter until one is switched live",
        "Return None for an app with none live; registering makes a candidate, never a live adapter.",
    )
    replaced = registry.switch_live(a.name)
    assert replaced is None, broken(
        f"switch_live({a.name!r}), the app's first",
        replaced,
        None,
        "switch_live() returns the adapter it replaced, and none was live",
        "Return the record of the app's live adapter before the switch, or None.",
    )
    replaced = registry.switch_live(b.name)
    _equal(
        f"switch_live({b.name!r}) while {a.name} is live (its name)",
        getattr(replaced, "name", replaced),
        a.name,
        "switch_live() returns the adapter it replaced",
        "Return the record of the app's live adapter before the switch.",
    )
    live = registry.resolve("conformance")
    _equal(
        f"resolve('conformance') after switch_live({b.name!r})",
        live,
        b.name,
        "resolve() names the adapter live for the app now",
        "Record the switch where resolve() reads it.",
    )
    shown = (registry.apps().get("conformance") or {}).get("live")
    _equal(
        f"apps()['conformance']['live'] after switch_live({b.name!r})",
        shown,
        b.name,
        "apps() shows each app's live adapter, as resolve() does",
        "Give apps() the live adapter from the same place resolve() reads it.",
    )
    status = registry.get(a.name).status
    _equal(
        f"get({a.name!r}).status after switch_live({b.name!r}) replaced it",
        status,
        "retired",
        "the adapter a switch replaces is retired (and kept as the rollback target)",
        "Set the replaced adapter's status to 'retired' in the same switch.",
    )
    target = registry.rollback_target("conformance")
    _equal(
        "rollback_target('conformance') (its name)",
        getattr(target, "name", target),
        a.name,
        "a rollback makes the adapter the last switch replaced live again",
        "Keep a stack of the adapters each switch replaced; the target is its top.",
    )
    _expect(InvalidTransitionError, lambda: registry.retire(b.name), "retiring the live adapter")
    c = registry.register(_adapter(work / "c", 4), "conformance")
    status = registry.mark_failed(c.name, "kit").status
    _equal(
        f"mark_failed({c.name!r}, 'kit').status",
        status,
        "failed",
        "mark_failed() returns the record as it is now, failed",
        "Set the status to 'failed' and return the updated record.",
    )
    _expect(InvalidTransitionError, lambda: registry.switch_live(c.name), "promoting a failed adapter")
    registry.switch_live(a.name, action="rollback")
    live = registry.resolve("conformance")
    _equal(
        f"resolve('conformance') after switch_live({a.name!r}, action='rollback')",
        live,
        a.name,
        "a rollback makes the adapter it names live again",
        "Record the rollback's switch where resolve() reads it.",
    )
    status = registry.get(b.name).status
    _equal(
        f"get({b.name!r}).status after a rollback replaced it",
        status,
        "retired",
        "the adapter a rollback replaces is retired",
        "Set the replaced adapter's status to 'retired' in the same switch.",
    )
    status = registry.retire(b.name).status
    _equal(
        f"retire({b.name!r}) of a retired adapter: its status",
        status,
        "retired",
        "retire() returns the record, retired (retiring a retired adapter changes nothing)",
        "Return the adapter's record after retiring it.",
    )
    registry.add_eval(a.name, {"suite": "kit", "score": 1.0})
    evals = registry.get(a.name).evals
    assert evals and evals[-1].get("suite") == "kit" and evals[-1].get("score") == 1.0, broken(
        f"get({a.name!r}).evals after add_eval({a.name!r}, {{'suite': 'kit', 'score': 1.0}})",
        evals,
        Said("the result (suite 'kit', score 1.0) as its last entry"),
        "add_eval() appends the result to the adapter's evals, its keys as given (it may add its own, as 'at')",
        "Append the result dict to the record's evals and keep it.",
    )
    registry.note("promote-started", app="conformance", adapter=c.name)
    actions = [e["action"] for e in registry.history(app="conformance")]
    made_by_kit = ["register", "register", "promote", "promote", "register", "fail", "rollback", "eval", "promote-started"]
    _equal(
        "history(app='conformance') (its actions)",
        actions,
        made_by_kit,
        "history() gives one event per change made (a register of weights already registered makes none, nor does a "
        "retire of a retired adapter), and each note(), in the order made",
        "Append one event per change, in the same operation as the change.",
    )
    # only the kit's own events (its app): a shared registry's other apps may hold older or interrupted events
    made = registry.history(app="conformance")
    for event in made:
        missing = sorted({"at", "by", "action"} - set(event))
        assert not missing and event.get("applied"), broken(
            f"history(app='conformance'): the event {event.get('action')!r}",
            event,
            Said("an event applied, with at, by and action"),
            "history() gives each event with who made it (by), when (at), what (action) and whether it was applied",
            f"Record {', '.join(missing)} with each event." if missing else "Mark each event applied once its change is made.",
        )
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
    client = OpenAIChatClient(url, model, retries=0, timeout_s=300, api_key=serving_api_key())
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
        listed = backend.list()
        assert {zero, perturbed} <= set(listed), broken(
            f"list() after load() of {zero} and {perturbed}",
            listed,
            Said("both names among the listed models"),
            "a loaded adapter is listed by the server under its name",
            "Load each adapter under the name given, and list the models the server serves.",
        )
        verified = getattr(backend.verify(zero), "adapter", None)
        _equal(
            f"verify({zero!r}).adapter",
            verified,
            zero,
            "verify() names the adapter it verified",
            "Return the verification of the adapter asked for.",
        )
        assert _chat(backend.url, zero, messages) == base_answer, "a zero-B adapter must answer exactly like the base model"
        assert _chat(backend.url, perturbed, messages) != base_answer, "a perturbed adapter must change the greedy answer"
        assert _chat(backend.url, base_model, messages) == base_answer, "the base model must be unchanged by loaded adapters"
        _expect(AdapterNameInUseError, lambda: backend.load(perturbed, str(adapters.perturbed)), "loading a name twice")
        _expect(AdapterPathNotFoundError, lambda: backend.load(f"{run}-missing", str(adapters.zero) + "-missing"), "a missing path")
        _expect(ServerRankError, lambda: backend.load(f"{run}-big", str(adapters.too_big)), "a rank above --max-lora-rank")
        listed = backend.list()
        left = [name for name in (f"{run}-big", f"{run}-missing") if name in listed]
        assert not left, broken(
            "list() after loads refused (a rank above --max-lora-rank, a missing path)",
            left,
            [],
            "a refused load leaves nothing loaded under its name",
            "Unload (or never register) what a failed load left behind before raising its error.",
        )
    finally:
        backend.unload(perturbed)
        backend.unload(zero)
    left = sorted({zero, perturbed} & set(backend.list()))
    assert not left, broken(
        f"list() after unload() of {zero} and {perturbed}",
        left,
        [],
        "an unloaded adapter is no longer listed (nor answered for)",
        "Unload it from the server, not only from the backend's own records.",
    )
    refused = _expect(ModelRequestError, lambda: _chat(backend.url, perturbed, messages), "a request for an unloaded adapter")
    assert getattr(refused, "status", None) in (400, 404), broken(
        f"the server, asked for {perturbed} after unload()",
        refused,
        Said("a refusal with HTTP status 400 or 404"),
        "a request for an adapter that is not loaded is refused as a bad request or not found",
        "Unload it from the server, so the server itself refuses it.",
    )
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
        key = serving_api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.post(f"{server_root.rstrip('/')}/tokenize", json=body, timeout=120, headers=headers)
        response.raise_for_status()
        served = response.json()["tokens"]
        assert served == trained, f"the served prompt differs from the trained one:\nserved  {served}\ntrained {trained}\n(text {text!r})"
    return len(cases)
