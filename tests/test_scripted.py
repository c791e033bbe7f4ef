"""The scripted chat model's helpers."""

from __future__ import annotations

from ee_middleware.testing import tool_call


def test_a_scripted_call_may_pass_an_argument_called_name() -> None:
    assert tool_call("create_user", name="Ada", admin=False) == {
        "name": "create_user",
        "args": {"name": "Ada", "admin": False},
        "id": None,
        "type": "tool_call",
    }


def test_a_streamed_reply_in_the_conversation_counts_as_the_models_turn() -> None:
    """A node that streams the model and adds the chunks up leaves an AIMessageChunk in the conversation: its type is
    'AIMessageChunk', and the script was read from its first answer again at every call (an agent that never ends)."""
    from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage

    from ee_middleware.testing import ScriptedChatModel, tool_call

    model = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("ls")]), AIMessage(content="Done.")])
    chunk = AIMessageChunk(content="", tool_call_chunks=[{"name": "ls", "args": "{}", "id": "c1", "index": 0}])
    assert model.invoke([HumanMessage("List it."), chunk, ToolMessage("a.txt", tool_call_id="c1")]).content == "Done."
