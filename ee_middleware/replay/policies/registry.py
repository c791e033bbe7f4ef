"""Build a policy from a spec string, so that a replay configuration (and a worker process) can name it.

Accepted specs:

- ``mutate`` — the schema-driven :class:`~ee_middleware.replay.policies.mutate.MutationPolicy`;
- ``local:MODEL_DIR`` or ``transformers:MODEL_DIR`` — a local model folder (or ``.gguf`` file);
- ``openai:BASE_URL#MODEL`` — an OpenAI-compatible server, e.g. ``openai:http://127.0.0.1:8000/v1#support-bot``;
- ``package.module:factory`` — a user policy: ``factory(**options)`` must return an object with
  ``name``, ``propose``, ``describe`` and ``close``.

Construction is cheap for every built-in (models load on first ``propose``), so the spec and its
options are what a replay ships to worker processes.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from ee_middleware.errors import PolicyError
from ee_middleware.replay.policies.protocol import Policy

ACCEPTED_FORMS = (
    "'mutate'",
    "'local:MODEL_DIR' (or 'transformers:MODEL_DIR')",
    "'openai:BASE_URL#MODEL' (e.g. 'openai:http://127.0.0.1:8000/v1#my-model')",
    "'package.module:factory' (a callable returning a Policy)",
)
_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def build_policy(spec: str, **options: Any) -> Policy:
    """The policy named by ``spec``, built with ``options`` as keyword arguments."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(spec, "the spec is empty")
    spec = spec.strip()
    prefix, _, rest = spec.partition(":")
    if spec == "mutate":
        from ee_middleware.replay.policies.mutate import MutationPolicy

        return _construct(spec, MutationPolicy, options)
    if prefix in ("local", "transformers"):
        if not rest:
            raise _bad_spec(spec, "the model folder is missing")
        from ee_middleware.replay.policies.transformers_local import TransformersPolicy

        return _construct(spec, lambda **kw: TransformersPolicy(rest, **kw), options)
    if prefix == "openai":
        base_url, _, model = rest.rpartition("#")
        if not base_url or not model:
            raise _bad_spec(spec, "an openai spec needs the base URL and the model, separated by '#'")
        from ee_middleware.replay.policies.openai_compat import OpenAIPolicy

        return _construct(spec, lambda **kw: OpenAIPolicy(base_url, model, **kw), options)
    if _FACTORY_SPEC.match(spec):
        return _user_policy(spec, options)
    raise _bad_spec(spec, "it matches none of the accepted forms")


def _construct(spec: str, factory: Callable[..., Any], options: dict[str, Any]) -> Any:
    try:
        return factory(**options)
    except TypeError as exc:
        raise PolicyError(f"Bad options for policy {spec!r}: {exc}") from exc
    except ValueError as exc:
        raise PolicyError(f"Bad settings for policy {spec!r}: {exc}") from exc


def _user_policy(spec: str, options: dict[str, Any]) -> Policy:
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyError(
            f"Cannot import {module_name!r} for policy {spec!r}: {exc}. Is the package installed in this environment?"
        ) from exc
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise PolicyError(f"{module_name!r} has no attribute {attr_path!r} (policy spec {spec!r})")
        target = getattr(target, attr)
    if not callable(target):
        raise PolicyError(f"{spec!r} names {type(target).__name__}, not a callable that builds a policy")
    policy = _construct(spec, target, options)
    if not isinstance(policy, Policy):
        raise PolicyError(
            f"{spec!r} returned {type(policy).__name__}, which is not a Policy: it needs a 'name' attribute and "
            "'propose(point, k, *, seed)', 'describe()' and 'close()' methods"
        )
    return policy


def _bad_spec(spec: Any, why: str) -> PolicyError:
    return PolicyError(f"Unknown policy spec {spec!r} ({why}). Accepted forms: " + "; ".join(ACCEPTED_FORMS))
