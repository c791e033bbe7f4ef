"""Message content as real agents produce it, captured from a real ``create_agent`` graph: several text blocks in one
message (an MCP tool's TextContent items, an Anthropic reply's text around its tool_use, a UI's text parts) and a call
whose arguments the model wrote as broken JSON. What is stored (task, actions, observations, the states every dataset
row is built from) is what the model read, as LangChain's own ``convert_to_openai_messages`` gives it (and vLLM, the
serving target, joins text parts alike: ``"\\n"``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_openai_messages
from langchain_core.tools import tool
from pydantic import Field

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.messages import arguments_json, genai_to_openai, langchain_to_openai, openai_to_genai
from ee_middleware.testing import ScriptedChatModel


class _SeeingModel(ScriptedChatModel):
    """A scripted model that keeps the messages it was called with (what the model read)."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


@tool
def list_files(folder: str) -> list:
    """List a folder: one text block per entry, as langchain-mcp-adapters gives an MCP tool's TextContent items."""
    return [{"type": "text", "text": "report.pdf"}, {"type": "text", "text": "summary.txt"}]


@tool
def search(query: str) -> str:
    """Search."""
    return "found " + query


def _record(tmp_path: Path, script: list[AIMessage], tools: list[Any], request: HumanMessage) -> tuple[_SeeingModel, Any]:
    model = _SeeingModel(script=script)
    agent = record_experience(create_agent(model, tools), app="shapes", store=str(tmp_path / "store"))
    agent.invoke({"messages": [request]})
    agent.flush()
    [trajectory] = list(LocalExperienceStore(str(tmp_path / "store")).iter_trajectories())
    return model, trajectory


def test_text_blocks_are_stored_a_line_apart_as_the_model_read_them(tmp_path: Path) -> None:
    """Was: blocks joined with nothing between them: 'report.pdfsummary.txt' as the observation (two file names made
    one, which IWM then trains the model to predict), 'Check the docs folder.Be brief.' as the task and in every
    state and IL prompt."""
    reply = AIMessage(
        content=[
            {"type": "text", "text": "I'll list the folder."},
            {"type": "tool_use", "id": "toolu_1", "name": "list_files", "input": {"folder": "docs"}},
            {"type": "text", "text": "Then I'll summarise."},
        ],
        tool_calls=[{"name": "list_files", "args": {"folder": "docs"}, "id": "toolu_1", "type": "tool_call"}],
    )
    request = HumanMessage(content=[{"type": "text", "text": "Check the docs folder."}, {"type": "text", "text": "Be brief."}])
    model, trajectory = _record(tmp_path, [reply, AIMessage(content="Two files.")], [list_files], request)

    assert trajectory.task == "Check the docs folder.\nBe brief."
    assert trajectory.steps[0].action.content == "I'll list the folder.\nThen I'll summarise."
    assert trajectory.steps[0].observation.content == "report.pdf\nsummary.txt"
    # the state the last answer was given: each message's text as LangChain's own OpenAI conversion has it
    langchain = convert_to_openai_messages(model.seen[-1])
    state = trajectory.steps[-1].state
    assert [m["content"] for m in state] == [m["content"] for m in langchain]
    assert [m["content"] for m in state] == [
        "Check the docs folder.\nBe brief.",
        "I'll list the folder.\nThen I'll summarise.",
        "report.pdf\nsummary.txt",
    ]


def test_a_malformed_call_stays_in_later_states_as_the_text_the_model_wrote(tmp_path: Path) -> None:
    """Was: every later state (and so every IL/IWM/SR prompt) showed the call as {"_raw": "<text>"}, an argument named
    _raw the model never wrote; the step's own action keeps it under _raw (IL leaves such calls out)."""
    broken = '{"query": "caf'
    reply = AIMessage(
        content="Searching twice.",
        tool_calls=[{"name": "search", "args": {"query": "a"}, "id": "c1", "type": "tool_call"}],
        invalid_tool_calls=[{"name": "search", "args": broken, "id": "c2", "error": "bad json", "type": "invalid_tool_call"}],
    )
    model, trajectory = _record(tmp_path, [reply, AIMessage("done")], [search], HumanMessage("find cafes"))

    seen = langchain_to_openai(model.seen[-1])[1]["tool_calls"]
    stored = trajectory.steps[-1].state[1]["tool_calls"]
    assert [c["function"] for c in stored] == [c["function"] for c in seen]
    assert stored[1]["function"]["arguments"] == broken
    assert json.loads(stored[0]["function"]["arguments"]) == {"query": "a"}
    assert [s.action.tool_call.arguments for s in trajectory.steps[:2]] == [{"query": "a"}, {"_raw": broken}]


def test_arguments_json_gives_back_the_text_a_model_wrote_and_json_for_the_rest() -> None:
    assert arguments_json('{"query": "caf') == '{"query": "caf'
    assert arguments_json({"_raw": '{"query": "caf'}) == '{"query": "caf'
    assert arguments_json({"city": "Zürich"}) == '{"city":"Zürich"}'
    assert arguments_json("") == "{}"
    # a real argument named _raw: kept as an object where it cannot have been text that failed to parse
    assert arguments_json({"_raw": '{"a": 1}'}) == '{"_raw":"{\\"a\\": 1}"}'
    assert arguments_json({"_raw": "x", "b": 1}) == '{"_raw":"x","b":1}'
    assert arguments_json({"_raw": [1, 2]}) == '{"_raw":[1,2]}'
    # through the GenAI shape capture writes and reads back
    call = {"id": "c2", "type": "function", "function": {"name": "search", "arguments": '{"query": "caf'}}
    [back] = genai_to_openai(openai_to_genai([{"role": "assistant", "content": "", "tool_calls": [call]}]))
    assert back["tool_calls"] == [call]


def test_arguments_that_are_json_but_no_object_stay_in_later_states_as_the_model_wrote_them(tmp_path: Path) -> None:
    """Was: '"hello"' was shown as hello (its quotes gone) and '[1, 2]' as {"_raw":[1,2]}, text the model never
    wrote, in every later state (and IL/IWM/SR prompt)."""
    reply = AIMessage(
        content="Searching.",
        tool_calls=[{"name": "search", "args": {"query": "a"}, "id": "c0", "type": "tool_call"}],
        invalid_tool_calls=[
            {"name": "search", "args": '"hello"', "id": "c1", "error": "not an object", "type": "invalid_tool_call"},
            {"name": "search", "args": "[1, 2]", "id": "c2", "error": "not an object", "type": "invalid_tool_call"},
        ],
    )
    model, trajectory = _record(tmp_path, [reply, AIMessage("done")], [search], HumanMessage("find cafes"))

    seen = langchain_to_openai(model.seen[-1])[1]["tool_calls"]
    stored = trajectory.steps[-1].state[1]["tool_calls"]
    assert [c["function"]["arguments"] for c in stored] == ['{"query":"a"}', '"hello"', "[1, 2]"]
    assert [c["function"] for c in stored] == [c["function"] for c in seen]
    # the steps' own actions keep the text the model wrote under _raw
    assert [s.action.tool_call.arguments for s in trajectory.steps[:3]] == [{"query": "a"}, {"_raw": '"hello"'}, {"_raw": "[1, 2]"}]


def test_arguments_json_decides_on_text_itself_and_keeps_a_declared_raw_argument() -> None:
    """Was: text went through parse_arguments first, so '{"_raw": "hello"}' written by the model became hello, '"hello"'
    lost its quotes and '[1, 2]' became {"_raw":[1,2]}; a tool whose schema declares _raw had its argument unwrapped."""
    assert arguments_json('{"_raw": "hello"}') == '{"_raw":"hello"}'
    assert arguments_json('"hello"') == '"hello"'
    assert arguments_json("[1, 2]") == "[1, 2]"
    assert arguments_json("null") == "null"
    assert arguments_json('{"a": 1}') == '{"a":1}'
    assert arguments_json("   ") == "{}"
    assert arguments_json(None) == "{}"
    assert arguments_json([1, 2]) == "[1,2]"
    echo = {"type": "function", "function": {"name": "echo", "parameters": {"type": "object", "properties": {"_raw": {"type": "string"}}}}}
    assert arguments_json({"_raw": "hello"}, schema=echo) == '{"_raw":"hello"}'
    assert arguments_json({"_raw": "hello"}, schema={"name": "echo", "input_schema": {"properties": {"_raw": {}}}}) == '{"_raw":"hello"}'
    # without the schema, a mapping {"_raw": text that is no JSON} is a malformed call's text (the documented corner)
    assert arguments_json({"_raw": "hello"}) == "hello"
    assert arguments_json({"_raw": "hello"}, schema={"type": "function", "function": {"name": "search", "parameters": {}}}) == "hello"
    # through the GenAI shape capture writes and reads back
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "search", "arguments": text}}
        for i, text in enumerate(['"hello"', "[1, 2]", '{"query": "caf', "hello"])
    ]
    [back] = genai_to_openai(openai_to_genai([{"role": "assistant", "content": "", "tool_calls": calls}]))
    assert back["tool_calls"] == calls
