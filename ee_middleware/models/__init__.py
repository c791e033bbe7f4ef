"""The one chat-model layer, shared by replay policies, teachers, the trainer, servers and harnesses.

- :class:`ChatClient` — the protocol: messages and tool schemas in, ``n`` assistant answers out;
- :class:`OpenAIChatClient` — any OpenAI-compatible endpoint (vLLM, the local server, hosted APIs);
- :class:`LocalGenerator` — a local transformers model, optionally with a LoRA adapter (``train`` extra);
- :func:`build_chat_client` / :func:`parse_model_spec` — ``local:DIR[@ADAPTER]``,
  ``openai:BASE_URL#MODEL`` or ``package.module:factory``;
- :mod:`~ee_middleware.models.chat_template` — the chat rendering that training and serving share;
- :mod:`~ee_middleware.models.parsing` — reading tool calls out of whatever a model wrote.

Names load lazily: importing this package imports neither torch nor httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports

if TYPE_CHECKING:
    from ee_middleware.models.chat_template import TemplateSupport, probe_template, render_pair, render_prompt
    from ee_middleware.models.local import LocalGenerator
    from ee_middleware.models.openai_compat import OpenAIChatClient
    from ee_middleware.models.parsing import ParseProblem, canonical_call, from_openai_message, parse_tool_calls
    from ee_middleware.models.protocol import ChatClient, Choice, Sampling
    from ee_middleware.models.spec import ModelSpec, build_chat_client, parse_model_spec

_LAZY = {
    "ChatClient": ".protocol",
    "Choice": ".protocol",
    "Sampling": ".protocol",
    "OpenAIChatClient": ".openai_compat",
    "LocalGenerator": ".local",
    "ModelSpec": ".spec",
    "build_chat_client": ".spec",
    "parse_model_spec": ".spec",
    "TemplateSupport": ".chat_template",
    "probe_template": ".chat_template",
    "render_prompt": ".chat_template",
    "render_pair": ".chat_template",
    "ParseProblem": ".parsing",
    "canonical_call": ".parsing",
    "from_openai_message": ".parsing",
    "parse_tool_calls": ".parsing",
}

__all__ = [
    "ChatClient",
    "Choice",
    "LocalGenerator",
    "ModelSpec",
    "OpenAIChatClient",
    "ParseProblem",
    "Sampling",
    "TemplateSupport",
    "build_chat_client",
    "canonical_call",
    "from_openai_message",
    "parse_model_spec",
    "parse_tool_calls",
    "probe_template",
    "render_pair",
    "render_prompt",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
