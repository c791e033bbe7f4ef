"""Test helpers that build real objects: a scripted chat model, a scripted chat-completions server (real HTTP), store,
sandbox, retriever, proposal-policy and model-client conformance kits, and tiny random models to dry-run training and ``ee improve`` with.

Import from tests and examples only; this module imports LangChain. The tiny-model helpers
(:func:`build_test_tokenizer`, :func:`build_tiny_llama`, :func:`save_tiny_llama`, from
:mod:`ee_middleware.testing.tiny_models`) load lazily: importing this module loads no model stack, and calling them
needs the ``[train]`` extra (torch, transformers, tokenizers).
"""

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports
from ee_middleware.scripted import ScriptedChatModel, tool_call
from ee_middleware.testing.client_conformance import check_chat_client
from ee_middleware.testing.http import Reply, ScriptedChatServer, ScriptedChatServerError
from ee_middleware.testing.policy_conformance import check_policy
from ee_middleware.testing.retriever_conformance import check_retriever
from ee_middleware.testing.sandbox_conformance import SubprocessIsolationWarning, check_sandbox
from ee_middleware.testing.store_conformance import CrashCheckWarning, check_store

if TYPE_CHECKING:
    from ee_middleware.testing.tiny_models import build_test_tokenizer, build_tiny_llama, save_tiny_llama

_LAZY = {
    "build_test_tokenizer": "ee_middleware.testing.tiny_models",
    "build_tiny_llama": "ee_middleware.testing.tiny_models",
    "save_tiny_llama": "ee_middleware.testing.tiny_models",
}

__all__ = [
    "CrashCheckWarning",
    "Reply",
    "ScriptedChatModel",
    "ScriptedChatServer",
    "ScriptedChatServerError",
    "SubprocessIsolationWarning",
    "build_test_tokenizer",
    "build_tiny_llama",
    "check_chat_client",
    "check_policy",
    "check_retriever",
    "check_sandbox",
    "check_store",
    "save_tiny_llama",
    "tool_call",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
