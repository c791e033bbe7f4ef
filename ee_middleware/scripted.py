"""A scripted chat model: a real LangChain chat model whose replies come from a script or a policy.

Product code: the BFCL expert recordings (:mod:`ee_middleware.bfcl.experts`) drive a real LangGraph
agent with it; tests and examples use it too (the test helpers package re-exports it).

It goes through LangChain's whole model machinery (callbacks, ``bind_tools``, streaming fallback),
so an agent built on it records exactly as one on a served model does; only the text is scripted.
Replies are chosen statelessly from the conversation, so one instance is safe to share between
threads and concurrent runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from ee_middleware.messages import message_type

Policy = Callable[[Sequence[BaseMessage], Sequence[dict[str, Any]]], AIMessage]


def tool_call(name: str, /, **arguments: Any) -> dict[str, Any]:
    """A LangChain tool-call dict for scripts (its id is filled in per reply); a tool may take an argument called ``name``."""
    return {"name": name, "args": arguments, "id": None, "type": "tool_call"}


class ScriptedChatModel(BaseChatModel):
    """Replies with ``script[k]`` where k counts the model's turns since the last user message,
    or with ``policy(messages, tools)`` when a policy is given."""

    script: list[AIMessage] = Field(default_factory=list)
    policy: Policy | None = None
    model_name: str = "scripted-expert"
    bound_tools: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        tools = kwargs.get("tools") or self.bound_tools
        if self.policy is not None:
            reply = self.policy(messages, tools)
        else:
            turn = 0
            for message in reversed(messages):
                if message_type(message) == "human":
                    break
                turn += message_type(message) == "ai"  # an AIMessageChunk too: a node that streamed the model
            if not self.script:
                raise ValueError("ScriptedChatModel needs a script or a policy")
            reply = self.script[min(turn, len(self.script) - 1)]
        reply = reply.model_copy(
            update={
                "tool_calls": [{**c, "id": c.get("id") or f"call_{uuid.uuid4().hex[:12]}"} for c in reply.tool_calls],
                "response_metadata": {"model_name": self.model_name},
            }
        )
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)
