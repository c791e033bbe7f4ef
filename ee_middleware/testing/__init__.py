"""Test helpers that build real objects: a scripted chat model, a scripted chat-completions server (real HTTP), store,
sandbox and retriever conformance kits.

Import from tests and examples only; this module imports LangChain.
"""

from ee_middleware.scripted import ScriptedChatModel, tool_call
from ee_middleware.testing.http import Reply, ScriptedChatServer, ScriptedChatServerError
from ee_middleware.testing.retriever_conformance import check_retriever
from ee_middleware.testing.sandbox_conformance import SubprocessIsolationWarning, check_sandbox
from ee_middleware.testing.store_conformance import check_store

__all__ = [
    "Reply",
    "ScriptedChatModel",
    "ScriptedChatServer",
    "ScriptedChatServerError",
    "SubprocessIsolationWarning",
    "check_retriever",
    "check_sandbox",
    "check_store",
    "tool_call",
]
