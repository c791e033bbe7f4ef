"""A small library agent (``create_agent``, a scripted chat model that binds real OpenAI tool schemas and has a model
name, two tools) run twice: a run of parallel calls, another call and an answer, and a run whose ``reserve_book`` raises
a ``ToolException`` that the tool handles (``handle_tool_error=True``). The ingest tests compare what
``tests/ingest/fixtures/openinference_library.jsonl`` (these runs traced by OpenInference, written by
``make_library_fixture.py``) ingests to with what ``record_experience`` records of the same graph."""

from __future__ import annotations

import json
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import ToolException, tool

TURNS = ("Reserve Dune for member 7, and is Emma available?", "Reserve Emma for member 9")
THREADS = ("t1", "t2")
SYSTEM = "You are a library assistant."


class ScriptedLibrarian(BaseChatModel):
    """Replies with the next message of its script; binds tools as OpenAI's schemas, as real chat models do."""

    script: list[AIMessage]
    position: int = 0
    model_name: str = "scripted-1"

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        message = self.script[self.position]
        self.position += 1
        return ChatResult(generations=[ChatGeneration(message=message)])


def _call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def script() -> list[AIMessage]:
    return [
        AIMessage(content="", tool_calls=[_call("search_books", "call_A1", query="dune"), _call("search_books", "call_A2", query="emma")]),
        AIMessage(content="", tool_calls=[_call("reserve_book", "call_B1", isbn="978-0", member_id=7)]),
        AIMessage(content="I reserved Dune for you; Emma has no copies left."),
        AIMessage(content="Let me try.", tool_calls=[_call("reserve_book", "call_C1", isbn="978-1", member_id=9)]),
        AIMessage(content="Sorry, Emma is out of stock."),
    ]


def build() -> Any:
    """The graph, with a fresh catalogue and script."""
    books = {"978-0": {"title": "Dune", "copies": 2}, "978-1": {"title": "Emma", "copies": 0}}

    @tool
    def search_books(query: str) -> str:
        """Search the catalogue by title."""
        return json.dumps([{"isbn": isbn, **book} for isbn, book in books.items() if query.lower() in str(book["title"]).lower()])

    @tool
    def reserve_book(isbn: str, member_id: int) -> str:
        """Reserve a book for a member."""
        book = books[isbn]
        if book["copies"] == 0:
            raise ToolException(f"no copies of {book['title']} left")
        book["copies"] = int(book["copies"]) - 1
        return f"reserved {book['title']} for member {member_id}"

    reserve_book.handle_tool_error = True
    return create_agent(ScriptedLibrarian(script=script()), [search_books, reserve_book], system_prompt=SYSTEM)


def run(graph: Any) -> None:
    """Both runs, each on its own thread."""
    for turn, thread in zip(TURNS, THREADS, strict=True):
        graph.invoke({"messages": [("user", turn)]}, {"configurable": {"thread_id": thread}})
