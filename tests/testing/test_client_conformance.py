"""The model-client conformance kit passes the built-in clients (the OpenAI-compatible one against a real HTTP server, the
local transformers one on a tiny random Llama) and a user's good client, and fails each broken fake client with a
message naming the promise it broke."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.protocol import Choice, Message, Sampling, ToolSchema
from ee_middleware.testing.client_conformance import TOOL_CONVERSATION, TOOLS, check_chat_client
from ee_middleware.testing.http import Reply, ScriptedChatServer

# --- the OpenAI-compatible client against a real HTTP server -----------------------------------------------------------


def _completion(body: dict[str, Any]) -> Reply:
    """A chat server's answer to ``body``: ``n`` choices, each a call of the first tool offered, else text."""
    tools = body.get("tools") or []
    choices = []
    for index in range(body.get("n") or 1):
        if tools:
            call = {
                "id": f"call-{index}",
                "type": "function",
                "function": {"name": tools[0]["function"]["name"], "arguments": '{"city": "Lyon"}'},
            }
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": f"Paris. ({index})"}, "stop"
        choices.append({"index": index, "message": message, "finish_reason": finish})
    return Reply({"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"), "choices": choices})


def test_the_openai_compatible_client_passes_against_a_scripted_server() -> None:
    with ScriptedChatServer(_completion) as server:
        check_chat_client(lambda: OpenAIChatClient(server.base_url, "m", retries=0, timeout_s=10))
    asked = [(bool(body.get("tools")), body.get("n", 1)) for body in server.requests]
    assert asked == [(False, 1), (True, 1), (True, 3)]  # without tools and n, with tools, n > 1 sampled
    assert server.requests[1]["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'


def test_the_openai_compatible_client_fails_against_a_server_answering_an_unoffered_tool() -> None:
    """The kit reads what the server sent: a call of a tool the request did not offer is named."""

    def unoffered(body: dict[str, Any]) -> Reply:
        reply = _completion(body)
        for choice in reply.body["choices"]:
            for call in choice["message"].get("tool_calls") or []:
                call["function"]["name"] = "delete_everything"
        return reply

    with (
        ScriptedChatServer(unoffered) as server,
        pytest.raises(AssertionError, match=r"calls delete_everything.*offered were only get_weather"),
    ):
        check_chat_client(lambda: OpenAIChatClient(server.base_url, "m", retries=0, timeout_s=10))


# --- the local transformers client on a tiny random model --------------------------------------------------------------


def test_the_local_transformers_client_passes_on_a_tiny_random_llama(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ee_middleware.models.local import LocalGenerator
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    corpus = [json.dumps(TOOLS), *(str(m.get("content") or "") for m in TOOL_CONVERSATION), "What is the capital of France?"]
    folder = save_tiny_llama(tmp_path / "tiny", build_test_tokenizer(corpus))
    made: list[LocalGenerator] = []

    def make() -> LocalGenerator:
        made.append(LocalGenerator(folder, num_threads=1))
        return made[-1]

    check_chat_client(make, n=2, max_tokens=8)
    assert made[0].model == str(folder) and not made[0].loaded  # it answered (loaded the model), then close() dropped it


# --- a user's own client -----------------------------------------------------------------------------------------------


class FakeWeatherClient:
    """A FAKE user's client that keeps the protocol: text without tools, a call of the first offered tool with them."""

    model = "fake-weather"

    def __init__(self) -> None:
        self.closed = False

    def describe(self) -> Any:
        return {"model": self.model, "style": "fake"}

    def close(self) -> None:
        self.closed = True

    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        if not tools:
            return Choice.from_message({"role": "assistant", "content": "Paris."}, finish_reason="stop")
        call = {"id": f"c{index}", "type": "function", "function": {"name": tools[0]["function"]["name"], "arguments": '{"city": "Lyon"}'}}
        return Choice.from_message({"role": "assistant", "content": None, "tool_calls": [call]}, finish_reason="tool_calls")

    def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSchema] | None = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]:
        return [self.answer(index, tools) for index in range(n)]


def test_a_fake_users_client_that_keeps_the_protocol_passes() -> None:
    made: list[FakeWeatherClient] = []
    check_chat_client(lambda: made.append(FakeWeatherClient()) or made[-1])
    assert [client.closed for client in made] == [True, True]


def test_a_fake_text_only_client_passes_with_its_calls_written_as_text() -> None:
    """A model that writes its calls as text (Choice.from_text) is read as the local generator is."""

    class FakeTextCalls(FakeWeatherClient):
        def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
            if not tools:
                return Choice.from_text("Paris.", finish_reason="stop")
            return Choice.from_text('<tool_call>{"name": "get_weather", "arguments": {"city": "Lyon"}}</tool_call>', finish_reason="stop")

    check_chat_client(FakeTextCalls)


def test_the_kit_asks_the_callers_own_conversation_and_tools() -> None:
    seen: list[tuple[list[Message], list[str]]] = []

    class FakeRecording(FakeWeatherClient):
        def complete(self, messages: Sequence[Message], *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
            seen.append((list(messages), [t["function"]["name"] for t in tools or []]))
            return super().complete(messages, tools=tools, n=n, sampling=sampling)

    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    plain = [{"role": "user", "content": "Hi."}]
    asked = [{"role": "user", "content": "Look up pears."}]
    check_chat_client(FakeRecording, messages=plain, tool_messages=asked, tools=[tool], n=2)
    assert seen == [(plain, []), (asked, ["lookup"]), (asked, ["lookup"])]


# --- broken fake clients: each breaks one promise ----------------------------------------------------------------------


class FakeNoModel:
    """No ``model`` attribute."""

    def describe(self) -> Any:
        return {}

    def close(self) -> None:
        pass

    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        return [Choice.from_text("Paris.")] * n


class FakeEmptyModel(FakeWeatherClient):
    model = ""


class FakeAlwaysOneAnswer(FakeWeatherClient):
    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        return [self.answer(0, tools)]


class FakeOneTooMany(FakeWeatherClient):
    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        return [self.answer(index, tools) for index in range(n + 1)]


class FakeTupleOfChoices(FakeWeatherClient):
    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> Any:
        return tuple(super().complete(messages, tools=tools, n=n, sampling=sampling))


class FakeDictAnswers(FakeWeatherClient):
    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> Any:
        return [{"role": "assistant", "content": "Paris."}] * n


class FakeTextNotStr(FakeWeatherClient):
    """Returns the model's token ids as the content instead of decoding them."""

    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        return Choice({"role": "assistant", "content": 42}, raw="42", finish_reason="stop")


class FakeFinishReasonNotStr(FakeWeatherClient):
    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        return Choice.from_message({"role": "assistant", "content": "Paris."}, finish_reason=1)  # type: ignore[arg-type]


class FakeUnofferedTool(FakeWeatherClient):
    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        if not tools:
            return super().answer(index, tools)
        call = {"id": "c", "type": "function", "function": {"name": "delete_everything", "arguments": "{}"}}
        return Choice.from_message({"role": "assistant", "content": None, "tool_calls": [call]}, finish_reason="tool_calls")


class FakeCallsWithoutTools(FakeWeatherClient):
    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        return super().answer(index, tools or TOOLS)


class FakeMalformedToolCall(FakeWeatherClient):
    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        if not tools:
            return super().answer(index, tools)
        return Choice.from_message({"role": "assistant", "content": None, "tool_calls": [{"name": "get_weather", "arguments": 3}]})


class FakeStructuredCallsAsText(FakeWeatherClient):
    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        choice = super().answer(index, tools)
        return Choice(choice.message, raw=choice.raw, structured=False)


class FakeOnlyProblems(FakeWeatherClient):
    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        return Choice(None, raw="{}", problem="the response has no choices")


class FakeEmptyProblem(FakeWeatherClient):
    def answer(self, index: int, tools: Sequence[ToolSchema] | None) -> Choice:
        return Choice(None, raw="{}", problem="")


class FakeAppendsToMessages(FakeWeatherClient):
    """Appends its answer to the conversation it was given."""

    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        choices = super().complete(messages, tools=tools, n=n, sampling=sampling)
        messages.append(choices[0].message)
        return choices


class FakeDecodesArgumentsInPlace(FakeWeatherClient):
    """Decodes the recorded tool calls' arguments in the messages it was given."""

    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        for message in messages:
            for call in message.get("tool_calls") or []:
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        return super().complete(messages, tools=tools, n=n, sampling=sampling)


class FakeStripsToolDescriptions(FakeWeatherClient):
    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        for tool in tools or []:
            tool["function"].pop("description", None)
        return super().complete(messages, tools=tools, n=n, sampling=sampling)


class FakeDescribeNotJson(FakeWeatherClient):
    def describe(self) -> Any:
        return {"model": self.model, "stop": {"</s>", "<|im_end|>"}}


class FakeDescribeCounts(FakeWeatherClient):
    """describe() shows a request counter: it changes once the client answered."""

    requests = 0

    def describe(self) -> Any:
        return {"model": self.model, "requests": self.requests}

    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        self.requests += 1
        return super().complete(messages, tools=tools, n=n, sampling=sampling)


class FakeCloseTwiceRaises(FakeWeatherClient):
    def close(self) -> None:
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


class FakeNoDefaults(FakeWeatherClient):
    def complete(self, messages: Any, *, tools: Any, n: int, sampling: Sampling) -> list[Choice]:  # type: ignore[override]
        return super().complete(messages, tools=tools, n=n, sampling=sampling)


class FakeRaises(FakeWeatherClient):
    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        raise KeyError("choices")


BROKEN = [
    (FakeNoModel, r"FakeNoModel is no model client: it lacks 'model'"),
    (FakeEmptyModel, r"the client's model attribute returned '' where the protocol requires a non-empty string"),
    (FakeAlwaysOneAnswer, r"n=3, .* returned 1 choice\(s\) where the protocol requires 3 choice\(s\): complete returns a list of n"),
    (FakeOneTooMany, r"returned 2 choice\(s\) where the protocol requires 1 choice\(s\)"),
    (FakeTupleOfChoices, r"returned a tuple of 1 item\(s\) where the protocol requires a list of Choice objects"),
    (FakeDictAnswers, r"choice 0 is a dict .*, not a Choice: .*Choice.from_message"),
    (FakeTextNotStr, r"choice 0 has a message whose content is an int \(42\): content is the model's text, a string"),
    (FakeFinishReasonNotStr, r"choice 0 has finish_reason=1: it must be None or a string"),
    (FakeUnofferedTool, r"tools=\[get_weather\].*choice 0 calls delete_everything\(\{\}\), and the tools offered were only get_weather"),
    (FakeCallsWithoutTools, r"choice 0 calls get_weather and no tool was offered \(tools=None\)"),
    (FakeMalformedToolCall, r"choice 0 has a message whose tool call 0 is .*: each tool call is"),
    (FakeStructuredCallsAsText, r"choice 0 has structured=False and a message with tool_calls"),
    (FakeOnlyProblems, r"returned only choices without a message"),
    (FakeEmptyProblem, r"choice 0 has problem='': it must be None or a non-empty string"),
    (
        FakeAppendsToMessages,
        r"complete\(<2 messages>, .*\) changed the messages it was given: it held 2 items and now holds 3 \(added at the end: \[\{'role': 'assistant'.*complete never changes the messages",
    ),
    (
        FakeDecodesArgumentsInPlace,
        r"tools=\[get_weather\].* changed the messages it was given: item 2 was .*'arguments': '\{\"city\": \"Paris\"\}'.* and is now .*'arguments': \{'city': 'Paris'\}",
    ),
    (
        FakeStripsToolDescriptions,
        r"changed the tools it was given: item 0 was \{.*'description': 'The weather now in a city.'.*complete never changes the tools",
    ),
    (FakeDescribeNotJson, r"describe\(\) returned .* a dict of JSON-able values: .*key 'stop' holds a set"),
    (FakeDescribeCounts, r"describe\(\) after complete\(\) returned \{.*'requests': 3\}.*the same each time"),
    (FakeCloseTwiceRaises, r"close\(\) called again on a client that answered raised RuntimeError: already closed"),
    (FakeNoDefaults, r"complete\(<2 messages>, sampling=.*\) raised TypeError: .*default them to None and 1"),
    (FakeRaises, r"raised KeyError: 'choices'\. The kit asks a plain question"),
]


@pytest.mark.parametrize(("fake", "message"), BROKEN, ids=[fake.__name__ for fake, _ in BROKEN])
def test_a_broken_fake_client_fails_with_a_message_naming_the_broken_promise(fake: type, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_chat_client(fake)


def test_a_client_that_never_answers_fails_the_kit_instead_of_hanging_it() -> None:
    """Sweep G: a client whose complete() hung (a request without a time limit) hung the kit and the user's test."""
    released = threading.Event()

    class FakeHangs(FakeWeatherClient):
        def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
            released.wait(60)
            return super().complete(messages, tools=tools, n=n, sampling=sampling)

    class FakeCloseHangs(FakeWeatherClient):
        def close(self) -> None:
            released.wait(60)

    try:
        with pytest.raises(AssertionError, match=r"complete\(<2 messages>, sampling=.*\) did not return within 0.5 s\. .*pass timeout_s="):
            check_chat_client(FakeHangs, timeout_s=0.5)
        with pytest.raises(AssertionError, match=r"close\(\) called on a client that answered did not return within 0.5 s"):
            check_chat_client(FakeCloseHangs, timeout_s=0.5)
    finally:
        released.set()
    check_chat_client(FakeWeatherClient, timeout_s=5)
