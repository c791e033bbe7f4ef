"""Build a policy from a spec string, so that a replay configuration (and a worker process) can name it.

Accepted specs (see :mod:`ee_middleware.plugins` and :mod:`ee_middleware.models.spec`):

- ``mutate`` — the schema-driven :class:`~ee_middleware.replay.policies.mutate.MutationPolicy`;
- ``local:MODEL_DIR[@ADAPTER_DIR]`` (or ``transformers:...``) — a local model folder (or ``.gguf`` file);
- ``openai:BASE_URL#MODEL`` — an OpenAI-compatible server, e.g. ``openai:http://127.0.0.1:8000/v1#support-bot``;
- ``package.module:factory`` — a user policy: ``factory(**options)`` must return an object with
  ``name``, ``propose``, ``describe`` and ``close``;
- the name of an ``ee_middleware.policies`` entry point, for installed plug-ins.

Construction is cheap for every built-in (models load on first ``propose``), so the spec and its
options are what a replay ships to worker processes.
"""

from __future__ import annotations

from typing import Any

from ee_middleware.errors import PolicyError
from ee_middleware.models.spec import MODEL_FORMS, build_from_spec
from ee_middleware.plugins import PluginKind
from ee_middleware.replay.policies.protocol import Policy

POLICIES = PluginKind(
    kind="policy",
    group="ee_middleware.policies",
    error=PolicyError,
    builtins={"mutate": "ee_middleware.replay.policies.mutate:MutationPolicy"},
    protocol=Policy,
    requires="a 'name' attribute and 'propose(point, k, *, seed)', 'describe()' and 'close()' methods",
    forms=MODEL_FORMS,
)


def build_policy(spec: str, **options: Any) -> Policy:
    """The policy named by ``spec``, built with ``options`` as keyword arguments."""
    from ee_middleware.replay.policies.chat import OpenAIPolicy, TransformersPolicy

    return build_from_spec(spec, POLICIES, local=TransformersPolicy, openai=OpenAIPolicy, **options)
