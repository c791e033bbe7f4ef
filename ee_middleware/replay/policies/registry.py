"""Build a policy from a spec string, so that a replay configuration (and a worker process) can name it.

Accepted specs (see :mod:`ee_middleware.plugins` and :mod:`ee_middleware.models.spec`):

- ``mutate`` — the schema-driven :class:`~ee_middleware.replay.policies.mutate.MutationPolicy`;
- ``local:MODEL_DIR[@ADAPTER_DIR]`` (or ``transformers:...``) — a local model folder (or ``.gguf`` file);
- ``openai:BASE_URL#MODEL`` — an OpenAI-compatible server, e.g. ``openai:http://127.0.0.1:8000/v1#support-bot``;
- ``package.module:factory`` — a user policy: ``factory(**options)`` must return an object with
  ``name``, ``propose``, ``describe`` and ``close``, or a user's own
  :class:`~ee_middleware.models.ChatClient`, which is asked as a model is (wrapped in a
  :class:`~ee_middleware.replay.policies.chat.ChatPolicy` named by the spec);
- the name of an ``ee_middleware.policies`` entry point, for installed plug-ins, or of an
  ``ee_middleware.models`` entry point (a chat client, wrapped alike).

What a plug-in's factory receives: the policy settings (``policy_settings``, ``--policy-setting``) and the sampling
options (:data:`SAMPLING_OPTIONS`) the user set, as keyword arguments; the sampling options left at their defaults
only where the factory names them (or takes ``**kwargs``). A factory with no parameters is called with none. A chat
client's wrapper samples with every sampling option, set or not.

Construction is cheap for every built-in (models load on first ``propose``), so the spec and its
options are what a replay ships to worker processes. Before its workers start, the job checks the policy
(:func:`check_policy`): a built-in is built once, a plug-in's factory only resolved and its signature read, never
called (it may load a model: the job's process would pay for it once more and keep it); each worker builds it
(:func:`prepare_policy`), and the first build that fails stops the job. A plug-in's policy whose ``describe()`` does not
return JSON-able settings (:func:`settings_problem`: replay records keep them) is refused when it is built
(:func:`check_described`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ee_middleware.errors import PolicyError
from ee_middleware.models.protocol import ChatClient
from ee_middleware.models.spec import MODEL_FORMS, build_from_spec, is_model_spec, part_or_client, resolve_plugin, unchecked
from ee_middleware.plugins import PluginKind, _options_not_taken
from ee_middleware.replay.policies.protocol import Policy

POLICIES = PluginKind(
    kind="policy",
    group="ee_middleware.policies",
    error=PolicyError,
    builtins={"mutate": "ee_middleware.replay.policies.mutate:MutationPolicy"},
    protocol=Policy,
    requires="a 'name' attribute and 'propose(point, k, *, seed)', 'describe()' and 'close()' methods",
    forms=MODEL_FORMS,
    options_from="--policy-setting KEY=VALUE or a [replay.policy_settings] table in the --config file",
)

SAMPLING_OPTIONS = ("temperature", "top_p", "max_new_tokens")
"""The sampling options a replay configuration has for every model-backed policy: a plug-in's factory gets those the
user left at their defaults only where it names them; a user's chat client's wrapper samples with them."""


def build_policy(spec: str, /, **options: Any) -> Policy:
    """The policy named by ``spec``, built with ``options`` as keyword arguments (a plug-in factory gets the
    :data:`SAMPLING_OPTIONS` among them only where it takes them when it returns a chat client, whose wrapper gets them)."""
    if isinstance(spec, str) and spec.strip() in POLICIES.builtins:
        # (not through build_from_spec, which imports the chat policies for its client wrapper: a replay worker running
        # the mutation policy would import them, and with them the model layer, for nothing)
        return POLICIES.build(spec.strip(), **options)
    if not is_plugin_policy(spec):
        from ee_middleware.replay.policies.chat import OpenAIPolicy, TransformersPolicy

        return build_from_spec(spec, POLICIES, local=TransformersPolicy, openai=OpenAIPolicy, **options)
    return _build_plugin(spec, options, {})[0]


def check_policy(spec: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Whether :func:`prepare_policy` can build ``spec``'s policy with ``options`` and ``defaults``, as far as can be
    told without calling a user's code: a built-in policy is built (cheap) and closed; a plug-in's factory is resolved
    (imported) and its signature checked against the options it would get ('Bad options ... did you mean'; a factory
    taking ``**kwargs`` accepts every option), without calling it. What needs the built object (an option of the user's
    a factory returning a chat client does not take is fine; one returning a policy is refused) is told by the build."""
    if not is_plugin_policy(spec):
        _close(build_policy(spec, **{**defaults, **options}))
        return
    factory = resolve_plugin(spec, POLICIES)
    unchecked(POLICIES).check_call(spec, factory, **_plugin_options(factory, {**defaults, **options}, dict(defaults))[0])


def prepare_policy(spec: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple[Policy, dict[str, Any]]:
    """The policy ``spec`` names, built (in each replay worker, after the job's :func:`check_policy`), and the options
    that build it again with :func:`build_policy`.

    ``options``: what the user set (the policy settings, and sampling options set by a flag or a file); ``defaults``:
    the sampling options left at their defaults. A built-in policy gets both; a plug-in factory gets ``options`` and
    those of ``defaults`` it takes (a factory without parameters is called with none); a chat client a plug-in
    returns is asked with all of them (its wrapper's sampling)."""
    if not is_plugin_policy(spec):
        merged = {**defaults, **options}
        return build_policy(spec, **merged), merged
    return _build_plugin(spec, dict(options), dict(defaults))


def plugin_module(spec: str) -> str | None:
    """The module of the factory a plug-in policy ``spec`` names (see :func:`is_plugin_policy`), imported; ``None`` for a
    built-in policy or a model form. Raises :class:`~ee_middleware.errors.PolicyError` for a spec that names nothing."""
    if not is_plugin_policy(spec):
        return None
    module = getattr(resolve_plugin(spec, POLICIES), "__module__", None)
    return module if isinstance(module, str) else None


def is_plugin_policy(spec: str) -> bool:
    """Whether ``spec`` names a user's policy or chat client (a factory, an entry point) rather than a built-in policy
    or a model form (``local:``, ``openai:``)."""
    return isinstance(spec, str) and not is_model_spec(spec) and spec.strip() not in POLICIES.builtins


def unusable_proposals_fix(spec: str) -> str:
    """What to fix when the policy ``spec`` gave no usable proposal: a model form's server or model; a user's policy
    itself (or, where it asks a model, that model or its server); a built-in policy, the expert's tool schemas it
    mutates."""
    if isinstance(spec, str) and is_model_spec(spec):
        return "fix the model's server (or the model)"
    if is_plugin_policy(spec):
        return f"fix the policy {spec.strip()!r} (or, if it asks a model, the model or its server)"
    return f"check the tool schemas the policy {spec!r} proposes from (the recorded trajectories' tools)"


def _build_plugin(spec: str, options: dict[str, Any], defaults: dict[str, Any]) -> tuple[Policy, dict[str, Any]]:
    """A plug-in policy, or the chat policy around the chat client a plug-in returned, and the options that build it
    again. The factory gets ``options`` (except sampling options it does not take) and those of ``defaults`` it takes."""
    factory = resolve_plugin(spec, POLICIES)
    merged = {**defaults, **options}
    given, sampling, not_taken = _plugin_options(factory, merged, defaults)
    part = unchecked(POLICIES).construct(spec, factory, **given)
    if isinstance(part, ChatClient) and not isinstance(part, Policy):
        return _chat_policy(part, spec.strip(), **sampling), {**given, **sampling}
    if isinstance(part, Policy) and any(name in not_taken for name in options):  # a sampling option the user set, not taken
        _close(part)
        POLICIES.construct(spec, factory, **options)  # raises its 'Bad options' error, naming it (before calling the factory)
    policy = part_or_client(spec, POLICIES, part, _chat_policy)
    try:
        check_described(spec, policy)
    except BaseException:
        _close(policy)
        raise
    return policy, given


def settings_problem(value: Any) -> str | None:
    """Why ``value`` (what a policy's ``describe()`` returned) is not a dict of JSON-able settings, in words (``"key 'fn'
    holds a function"``); ``None`` when it is one: a dict with text keys whose values are dicts like it, lists (or
    tuples), strings, numbers, booleans and ``None``, or values pydantic's JSON mode writes (a path, an enum, a date). Replay records keep these settings as JSON (each candidate's
    ``proposer.settings``), so a set (no order), a function or an object is refused when the policy is built, rather
    than when a record is written."""
    if not isinstance(value, dict):
        return f"it returned {value_kind(value)}, not a dict"
    return _json_problem(value, "")


def check_described(spec: str, policy: Any) -> None:
    """Raise :class:`~ee_middleware.errors.PolicyError` when ``policy``'s ``describe()`` (the policy ``spec`` built)
    raises or does not return JSON-able settings (:func:`settings_problem`), naming the policy and the value at fault."""
    try:
        described = policy.describe()
    except Exception as exc:
        raise POLICIES.failed_at_work(spec.strip(), "describe()", exc) from exc
    problem = settings_problem(described)
    if problem is not None:
        raise PolicyError(
            f"policy {spec.strip()!r}: its describe() must return JSON-able settings: {problem}. {JSON_SETTINGS}; replay records "
            "keep them with every alternative the policy proposes"
        )


JSON_SETTINGS = "Return a dict with text keys holding only dicts, lists, strings, numbers, booleans and None"
"""What a policy's ``describe()`` (and a candidate's ``proposer.settings``) may hold, for messages."""

_MAX_DEPTH = 50


def _json_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """Where in ``value`` (at ``where``, a key path such as ``'model.paths[1]'``) something is not JSON, or ``None``."""
    if value is None or isinstance(value, str | bool | int | float):
        return None
    if depth > _MAX_DEPTH:
        return f"key {where!r} nests more than {_MAX_DEPTH} levels deep (a dict or list that holds itself?)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{'key ' + repr(where) + ' holds ' if where else ''}a key {key!r} that is {value_kind(key)}, not text"
            problem = _json_problem(item, f"{where}.{key}" if where else key, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{index}]", depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, set | frozenset):  # written as a list in no stable order: two runs' records would differ
        return f"key {where!r} holds {value_kind(value)}"
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    try:  # what the store writes settings with (pydantic's JSON mode) also keeps a path, an enum, a date
        to_jsonable_python(value)
    except (PydanticSerializationError, ValueError, TypeError):
        return f"key {where!r} holds {value_kind(value)}"
    return None


def value_kind(value: Any) -> str:
    """``value``'s kind in words, for messages: ``a function``, ``a set ({1, 2})``, ``a PosixPath (PosixPath('/m'))``."""
    import inspect

    if inspect.isroutine(value):
        name = getattr(value, "__qualname__", None)
        return f"a function ({name if isinstance(name, str) else type(value).__name__})"
    from ee_middleware.messages import one_line

    kind = "a set" if isinstance(value, set | frozenset) else f"{_article(type(value).__name__)} {type(value).__name__}"
    try:
        shown = one_line(repr(value), 80)
    except Exception:  # noqa: BLE001 - a repr that raises: the kind alone
        return kind
    return f"{kind} ({shown})"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _plugin_options(factory: Any, merged: dict[str, Any], defaults: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    """What a plug-in ``factory`` is called with out of ``merged`` (the sampling options it does not take left out), the
    sampling options among ``merged`` (its chat client's wrapper's), and the names of those it does not take."""
    sampling = {name: value for name, value in merged.items() if name in SAMPLING_OPTIONS}
    not_taken = set(_options_not_taken(factory, {**sampling, **defaults}))
    given = {name: value for name, value in merged.items() if name not in not_taken or name not in {**sampling, **defaults}}
    return given, sampling, not_taken


def _chat_policy(client: ChatClient, spec: str, /, **sampling: Any) -> Policy:
    """A user's own chat client as a policy: asked for K answers at each state, as ``openai:`` and ``local:`` models are."""
    from ee_middleware.replay.policies.chat import ChatPolicy

    settings = {name: sampling[name] for name in ("temperature", "top_p") if name in sampling}
    if "max_new_tokens" in sampling:
        settings["max_tokens"] = sampling["max_new_tokens"]
    return ChatPolicy(client, name=spec, **settings)


def _close(part: Any) -> None:
    close = getattr(part, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - closing is best effort; the options' error is what the user needs
            pass
