"""One spec grammar for every model a user names: policies, teachers, servers, eval clients.

* ``local:DIR[@ADAPTER]`` — a local model folder saved with ``save_pretrained`` (or a ``.gguf``
  file), optionally with a LoRA adapter folder applied; ``transformers:`` is accepted as an alias. A
  path may contain '@' (``/models/org@v2``): the reading whose folders exist is taken, and a spec none of whose
  readings exists is an error listing them all;
* ``openai:BASE_URL#MODEL`` — an OpenAI-compatible server and the served model or adapter name,
  split at the last ``#`` (``openai:http://127.0.0.1:8000/v1#support-bot``);
* ``package.module:factory`` or an ``ee_middleware.models`` entry point — a user's own
  :class:`~ee_middleware.models.protocol.ChatClient`.

Each consumer (the policy and teacher registries) parses with :func:`parse_model_spec` and reports
problems through its own :class:`~ee_middleware.plugins.PluginKind`, so every error lists the forms
that consumer accepts. A consumer takes a user's own client as well as its own kind of plug-in: a
``package.module:factory`` (or an entry point of its own group) that returns a ``ChatClient``, and the
name of an ``ee_middleware.models`` entry point its own group lacks, are made into its kind of part
(:func:`build_from_spec`'s ``client``: a policy asks the client as it asks ``openai:`` and ``local:``
models, a teacher likewise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ee_middleware.errors import ModelError, ModelLoadError, ModelRequestError, ModelResponseError
from ee_middleware.models.protocol import ChatClient
from ee_middleware.plugins import FACTORY_SPEC, PluginKind

LOCAL_PREFIXES = ("local", "transformers")
MODEL_LOCATIONS = (
    "'local:DIR[@ADAPTER]' (a local model folder or .gguf file, optionally with a LoRA adapter folder)",
    "'openai:BASE_URL#MODEL' (e.g. 'openai:http://127.0.0.1:8000/v1#my-model')",
)
MODEL_FORMS = (
    *MODEL_LOCATIONS,
    "your own model client: a 'package.module:factory' that returns a ChatClient, or the name of an 'ee_middleware.models' entry point",
)
"""The forms every kind that asks a model accepts besides its own plug-ins (see :func:`build_from_spec`)."""

CHAT_CLIENTS = PluginKind(
    kind="model client",
    group="ee_middleware.models",
    error=ModelError,
    protocol=ChatClient,
    requires="a 'model' attribute and 'complete(messages, *, tools, n, sampling)', 'describe()' and 'close()' methods",
    forms=MODEL_LOCATIONS,
)

ClientAdapter = Callable[[ChatClient, str], Any]
"""Makes a chat client a plug-in spec returned (and the spec) into a consumer's part (a policy, a teacher)."""

_CLIENT_ADAPTERS: dict[str, str] = {
    "ee_middleware.teachers": "ee_middleware.trainers.datasets.teachers:ModelTeacher",
}
"""Adapters of consumers that pass none to :func:`build_from_spec`, by their plug-in group (imported when used)."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` says which of the other fields are set."""

    kind: Literal["local", "openai", "plugin"]
    spec: str
    path: str | None = None
    adapter: str | None = None
    base_url: str | None = None
    model: str | None = None


def is_model_spec(spec: str) -> bool:
    """Whether ``spec`` uses one of the model forms (``local:``, ``transformers:``, ``openai:``)."""
    prefix, sep, _ = spec.strip().partition(":")
    return bool(sep) and prefix in (*LOCAL_PREFIXES, "openai")


def parse_model_spec(spec: str, *, registry: PluginKind = CHAT_CLIENTS) -> ModelSpec:
    """Read ``spec``; problems are raised as ``registry``'s error, listing its accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise registry.unknown(spec, "the spec is empty")
    spec = spec.strip()
    prefix, _, rest = spec.partition(":")
    if prefix in LOCAL_PREFIXES:
        if not rest:
            raise registry.unknown(spec, "the model folder is missing")
        path, adapter = _split_adapter(rest)
        if not path or adapter == "":
            raise registry.unknown(spec, "write 'local:MODEL_DIR@ADAPTER_DIR' with both folders, or 'local:MODEL_DIR' alone")
        return ModelSpec("local", spec, path=path, adapter=adapter)
    if prefix == "openai":
        base_url, _, model = rest.rpartition("#")
        if not base_url or not model:
            raise registry.unknown(spec, "an openai spec needs the base URL and the model, separated by '#'")
        return ModelSpec("openai", spec, base_url=base_url, model=model)
    return ModelSpec("plugin", spec)


def build_chat_client(spec: str, **options: Any) -> ChatClient:
    """The chat client ``spec`` names, built with ``options`` (e.g. ``timeout_s``, ``num_threads``)."""
    from ee_middleware.models.local import LocalGenerator
    from ee_middleware.models.openai_compat import OpenAIChatClient

    return build_from_spec(spec, CHAT_CLIENTS, local=LocalGenerator, openai=OpenAIChatClient, **options)


PROBE_TIMEOUT_S = 30.0
"""The longest a quick ``GET /models`` check (:func:`endpoint_problem`'s ``quick``) waits for the server, as ``ee improve``'s
check before a run does; a client whose own ``timeout_s`` is shorter waits that."""


def endpoint_problem(client: Any, *, quick: bool = False) -> str | None:
    """Why the server ``client`` talks to gives no answer (unreachable, timing out, failing with 5xx after its retries),
    asked with ``GET /models``; ``None`` when it answers or ``client`` talks to no server (it has no ``list_models``).

    An answer of any kind counts: a refusal (4xx: a server or gateway without a model listing, a key for chat only) or
    a body that is not a listing says the server is up, and the requests that follow say what a refusal of theirs means.
    The one rule of every check made before work starts (``ee improve``, the experience sandbox, the curriculum judge).

    ``quick``: one attempt, waiting at most :data:`PROBE_TIMEOUT_S` (the client's ``timeout_s`` where shorter), instead of
    the client's own timeout and retries: for a check made after a request of the client's already waited those out
    (:func:`~ee_middleware.replay.executors.fails_alone`), where a hung server would cost them twice over. An
    :class:`~ee_middleware.models.openai_compat.OpenAIChatClient` is asked so; a client of the user's own is asked as it is.
    """
    list_models = getattr(client, "list_models", None)
    if list_models is None:
        return None
    probe = _quick_probe(client) if quick else None
    try:
        (probe.list_models if probe is not None else list_models)()
    except (ModelRequestError, ModelResponseError):
        return None  # it answered
    except ModelError as exc:
        return str(exc)
    finally:
        if probe is not None:
            _release_probe(probe)
    return None


def _quick_probe(client: Any) -> Any:
    """A copy of ``client`` (an ``OpenAIChatClient``: its URL, key and transport) that asks once within
    :data:`PROBE_TIMEOUT_S`; ``None`` for another kind of client. ``client``'s own ``httpx.Client`` keeps serving its
    requests: the copy opens a connection pool of its own, or, where the user passed a ``transport`` (a proxy, mTLS,
    ``verify``), sends through that transport, which :func:`_release_probe` leaves open."""
    import copy

    from ee_middleware.models.openai_compat import OpenAIChatClient

    if not isinstance(client, OpenAIChatClient):
        return None
    probe = copy.copy(client)
    probe._client = None  # a pool of its own: httpx takes the timeout when the pool opens
    probe.retries = 0
    probe.timeout_s = min(PROBE_TIMEOUT_S, client.timeout_s)
    return probe


def _release_probe(probe: Any) -> None:
    """Free what :func:`_quick_probe`'s copy opened, and nothing its original uses.

    ``httpx.Client.close`` closes the client's transport: the probe's own pool when the client built it, but a transport
    the user passed is the original client's too, and closing it cuts the requests other threads have in flight on it
    (``ReadError``). That ``httpx.Client`` is only dropped: it has no finalizer, and with a transport given it opens no
    proxy transports of its own, so nothing is left open."""
    if probe._transport is None:
        probe.close()
    else:
        probe._client = None


def build_from_spec(
    spec: str,
    registry: PluginKind,
    *,
    local: Callable[..., Any],
    openai: Callable[..., Any],
    client: ClientAdapter | None = None,
    **options: Any,
) -> Any:
    """A part of ``registry``'s kind: model forms go to ``local(path, adapter=...)`` or ``openai(base_url, model)``,
    everything else (built-in names, factories, entry points) to the registry; ``options`` go to the factory.

    A user's own chat client is taken too (:func:`resolve_plugin`, :func:`part_or_client`): a plug-in that returns a
    :class:`ChatClient` rather than the kind's part is made one with ``client(chat_client, spec)`` (default: the adapter
    of the registry's group, e.g. :class:`~ee_middleware.trainers.datasets.teachers.ModelTeacher` for teachers)."""
    if isinstance(spec, str) and is_model_spec(spec):
        parsed = parse_model_spec(spec, registry=registry)
        if parsed.kind == "local":
            _check_readings(parsed)
            return registry.construct(spec, local, parsed.path, adapter=parsed.adapter, **options)
        return registry.construct(spec, openai, parsed.base_url, parsed.model, **options)
    adapter = client or _group_adapter(registry)
    if adapter is None or registry.protocol is None:
        return registry.build(spec, **options)
    factory = resolve_plugin(spec, registry)
    return part_or_client(spec, registry, unchecked(registry).construct(spec, factory, **options), adapter)


def resolve_plugin(spec: str, registry: PluginKind) -> Callable[..., Any]:
    """The factory a plug-in ``spec`` names for ``registry``'s kind: its built-in name, ``package.module:factory`` or
    an entry point of its group, else (a name its group lacks) an ``ee_middleware.models`` entry point: a user's own
    chat client, which :func:`part_or_client` makes the kind's part. Problems are ``registry``'s errors."""
    name = spec.strip() if isinstance(spec, str) else ""
    own = not name or name in registry.builtins or FACTORY_SPEC.match(name) or name in registry.installed()
    if own or registry.group == CHAT_CLIENTS.group or name not in CHAT_CLIENTS.installed():
        return registry.resolve(spec)
    try:
        return CHAT_CLIENTS.resolve(name)
    except CHAT_CLIENTS.error as exc:
        raise registry.error(str(exc)) from exc


def unchecked(registry: PluginKind) -> PluginKind:
    """``registry`` without its protocol check, to build a part that may also be a chat client (see :func:`part_or_client`)."""
    from dataclasses import replace

    return replace(registry, protocol=None)


def part_or_client(spec: str, registry: PluginKind, part: Any, adapter: ClientAdapter) -> Any:
    """``part`` when it is ``registry``'s kind, ``adapter(part, spec)`` when it is a chat client; else ``registry``'s
    error saying what it returned and what it needs."""
    if registry.protocol is None or isinstance(part, registry.protocol):
        return part
    if isinstance(part, ChatClient):
        return adapter(part, spec.strip())
    assert registry.protocol is not None
    raise registry.error(
        f"{spec!r} returned {type(part).__name__}, which is neither a {registry.protocol.__name__} nor a ChatClient (a model "
        "client of your own, asked as a model is)" + (f": a {registry.kind} needs {registry.requires}" if registry.requires else "")
    )


def _group_adapter(registry: PluginKind) -> ClientAdapter | None:
    """The chat-client adapter :data:`_CLIENT_ADAPTERS` names for ``registry``'s group (imported now), if any."""
    path = _CLIENT_ADAPTERS.get(registry.group)
    if path is None:
        return None
    import importlib

    module, _, attr = path.partition(":")
    wrapper = getattr(importlib.import_module(module), attr)
    return lambda chat_client, spec: wrapper(chat_client, name=spec)


def _split_adapter(rest: str) -> tuple[str, str | None]:
    """``DIR@ADAPTER`` -> ``(DIR, ADAPTER)``, where a path may itself contain '@' (``/models/org@v2``): the reading whose
    folders exist is taken (the whole text as one folder first), then one whose model folder exists (its adapter is
    then reported missing); when no reading names an existing folder, the split at the last '@' (and building it says
    that no reading exists: :func:`_check_readings`)."""
    readings = _readings(rest)
    found = next((r for r in readings if _exists(r[0]) and (r[1] is None or _exists(r[1]))), None)
    found = found or next((r for r in readings if _exists(r[0])), None)
    if found is not None:
        return found
    path, at, adapter = rest.rpartition("@")
    return (path, adapter) if at else (rest, None)


def _readings(rest: str) -> list[tuple[str, str | None]]:
    """Every way to read ``rest`` as ``DIR`` or ``DIR@ADAPTER`` (both parts non-empty), the whole text first."""
    splits = [(rest[:i], rest[i + 1 :]) for i, char in enumerate(rest) if char == "@" and 0 < i < len(rest) - 1]
    return [(rest, None), *splits]


def _exists(path: str) -> bool:
    return Path(path).expanduser().exists()


def _check_readings(parsed: ModelSpec) -> None:
    """Raise :class:`ModelLoadError` naming every reading of a ``local:`` spec with an '@' none of whose model folders
    exists: the user meant one of them, and only the list says which paths were looked for."""
    rest = parsed.spec.partition(":")[2]
    readings = _readings(rest)
    if len(readings) < 2 or any(_exists(path) for path, _ in readings):
        return
    shown = "; ".join(
        f"model {path!r}" + (f" with adapter {adapter!r}" if adapter else " (a folder whose name has '@')") for path, adapter in readings
    )
    raise ModelLoadError(
        f"{parsed.spec!r} names no model on this machine: none of its readings exists ({shown}). Check the path; "
        "'local:DIR@ADAPTER' puts the LoRA adapter folder after an '@'; a folder whose name has '@' is read whole when it exists."
    )
