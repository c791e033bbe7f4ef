"""ScriptedChatServer, the stand-in for an OpenAI-compatible chat server that tests talk to over real HTTP.

The clients are the real ones (``OpenAIChatClient``) or the standard library's ``urllib``, to see the HTTP status and
body as they are sent.
"""

from __future__ import annotations

import gc
import json
import threading
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ee_middleware.errors import ModelServerError
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.testing.http import Reply, ScriptedChatServer, ScriptedChatServerError

HELLO = [{"role": "user", "content": "Hello?"}]


def _post(url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    return _open(request)


def _get(url: str) -> tuple[int, Any]:
    return _open(urllib.request.Request(url))


def _open(request: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def _ask(server: ScriptedChatServer, model: str = "m") -> Any:
    client = OpenAIChatClient(server.base_url, model, retries=0, timeout_s=10)
    try:
        [choice] = client.complete(HELLO)
        return choice
    finally:
        client.close()


def test_a_list_script_answers_the_requests_in_turn_and_repeats_its_last_answer() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    script = ["First.", ({"role": "assistant", "content": None, "tool_calls": [call]}, "length"), {"role": "assistant", "content": "Last."}]
    with ScriptedChatServer(script) as server:
        choices = [_ask(server) for _ in range(4)]
    assert [(c.text, c.finish_reason) for c in choices] == [("First.", "stop"), ("", "length"), ("Last.", "stop"), ("Last.", "stop")]
    assert choices[1].message["tool_calls"] == [call]
    assert [request["messages"] for request in server.requests] == [HELLO] * 4, "every request's body is kept, after the block too"
    assert all(request["model"] == "m" for request in server.requests)


def test_a_callable_script_answers_from_the_request_body_and_a_reply_is_sent_as_it_is() -> None:
    def script(body: dict[str, Any]) -> Any:
        if body.get("max_tokens", 0) > 100:
            return Reply({"object": "error", "message": "too many tokens", "type": "BadRequestError", "code": 400}, 400)
        return f"You said {body['messages'][-1]['content']!r} to {body['model']}."

    with ScriptedChatServer(script) as server:
        status, answer = _post(f"{server.base_url}/chat/completions", {"model": "j", "messages": HELLO, "max_tokens": 10})
        refused = _post(f"{server.base_url}/chat/completions", {"model": "j", "messages": HELLO, "max_tokens": 1000})
    assert status == 200
    assert answer == {
        "id": "chatcmpl-0",
        "object": "chat.completion",
        "model": "j",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "You said 'Hello?' to j."}, "finish_reason": "stop"}],
    }
    assert refused == (400, {"object": "error", "message": "too many tokens", "type": "BadRequestError", "code": 400})
    assert len(server.requests) == 2


def test_the_model_listing_names_the_models_or_is_refused() -> None:
    entries = [{"id": "j", "object": "model", "max_model_len": 2048}]
    with ScriptedChatServer(["hi"]) as default, ScriptedChatServer(["hi"], models=["a", *entries]) as listed:
        client = OpenAIChatClient(default.base_url, "m", retries=0)
        try:
            assert client.list_models() == ["m"]
        finally:
            client.close()
        assert _get(f"{listed.base_url}/models") == (200, {"object": "list", "data": [{"id": "a", "object": "model"}, *entries]})
    assert (default.model_listings, listed.model_listings) == (1, 1)
    with ScriptedChatServer(["hi"], models=None) as none, ScriptedChatServer(["hi"], models=Reply({"detail": "no"}, 405)) as refused:
        assert _get(f"{none.base_url}/models") == (404, {"detail": "Not Found"})
        assert _get(f"{refused.base_url}/models") == (405, {"detail": "no"})
        assert _ask(none).text == "hi", "a server without a listing still answers chat"


def test_other_paths_are_not_found_and_a_body_that_is_not_json_is_refused() -> None:
    with ScriptedChatServer(["hi"], path="/api/v1") as server:
        assert server.base_url.endswith("/api/v1")
        assert _post(f"{server.base_url}/completions", {"prompt": "x"}) == (404, {"detail": "Not Found"})
        assert _get(server.base_url.replace("/api/v1", "/v1/models")) == (404, {"detail": "Not Found"})
        status, body = _post(f"{server.base_url}/chat/completions", b"{not json")
        assert status == 400 and "not JSON" in body["error"]["message"]
    assert server.requests == [], "only chat requests that were read are kept"


def test_requests_served_at_once_each_get_their_own_answer_in_turn() -> None:
    answers = [str(i) for i in range(16)]
    with ScriptedChatServer(answers) as server, ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: _ask(server).text, range(16)))
    assert sorted(texts, key=int) == answers, "no answer twice, none skipped"
    assert len(server.requests) == 16


def test_a_script_that_fails_gives_the_client_a_500_and_the_test_its_cause() -> None:
    def script(body: dict[str, Any]) -> Any:
        return body["no such key"]

    with (
        pytest.raises(ScriptedChatServerError, match=r"failed on request 1: 'no such key'") as raised,
        ScriptedChatServer(script) as server,
    ):
        status, body = _post(f"{server.base_url}/chat/completions", {"model": "m", "messages": HELLO})
        assert status == 500 and "KeyError" in body["error"]["message"]
    assert isinstance(raised.value.__cause__, KeyError)

    not_an_answer = ScriptedChatServer(lambda body: 42)  # type: ignore[arg-type, return-value]
    twice = r"request 1 \(and 1 more\): the script gave 42 \(int\); an answer is a str"
    with pytest.raises(ScriptedChatServerError, match=twice), not_an_answer as server:
        for _ in range(2):
            with pytest.raises(ModelServerError):
                _ask(server)

    # the block's own error is the one raised
    with pytest.raises(ValueError, match="the test's own"), ScriptedChatServer(lambda body: 42) as server:  # type: ignore[arg-type, return-value]
        _post(f"{server.base_url}/chat/completions", {"model": "m", "messages": HELLO})
        raise ValueError("the test's own")


@pytest.mark.parametrize(
    ("script", "models", "error", "match"),
    [
        ([], ("m",), ValueError, "has no answer: give at least one"),
        ("hello", ("m",), TypeError, "a list of answers or a callable"),
        (["ok", 3], ("m",), TypeError, r"the script gave 3 \(int\); an answer is a str"),
        ([{"content": "no role"}], ("m",), TypeError, "a message dict with a 'role'"),
        ([("ok", "stop", "extra")], ("m",), TypeError, r"a tuple answer is \(message, finish_reason\)"),
        (["ok"], "m", TypeError, "models is a list of model ids or entries, a Reply or None"),
        (["ok"], [{"max_model_len": 8}], TypeError, "neither a model id nor an entry with an 'id'"),
    ],
)
def test_a_bad_script_or_listing_is_refused_when_built_naming_what_is_wrong(script: Any, models: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ScriptedChatServer(script, models=models)


def test_it_is_used_once_started_and_entered_once() -> None:
    server = ScriptedChatServer(["hi"])
    with pytest.raises(RuntimeError, match="not started: use it as `with ScriptedChatServer"):
        server.base_url  # noqa: B018
    with server, pytest.raises(RuntimeError, match="serves one `with` block"):
        server.__enter__()
    with pytest.raises(RuntimeError, match=r"serves one `with` block .*: make a new one"), server:
        pass  # entered again after its block: its requests and errors belong to the first block


def test_a_client_that_drops_the_base_path_is_not_answered() -> None:
    with ScriptedChatServer(["hi"]) as server:
        root = server.base_url.removesuffix("/v1")
        assert _post(f"{root}/chat/completions", {"model": "m", "messages": HELLO}) == (404, {"detail": "Not Found"})
        assert _get(f"{root}/models") == (404, {"detail": "Not Found"})
        assert _get(f"{root}/v1x/models") == (404, {"detail": "Not Found"})
        assert _post(f"{server.base_url}/chat/completions", {"model": "m", "messages": HELLO})[0] == 200
    assert server.model_listings == 0 and len(server.requests) == 1


def test_an_answer_that_is_not_json_gives_a_500_and_the_test_its_cause() -> None:
    with (
        pytest.raises(ScriptedChatServerError, match="not JSON serializable") as raised,
        ScriptedChatServer(lambda body: Reply({"when": object()})) as server,
    ):
        status, body = _post(f"{server.base_url}/chat/completions", {"model": "m", "messages": HELLO})
        assert status == 500 and "TypeError" in body["error"]["message"]
    assert isinstance(raised.value.__cause__, TypeError)


def test_leaving_the_block_closes_every_socket_and_leaves_no_thread() -> None:
    threads = set(threading.enumerate())
    gc.collect()  # what earlier tests of this process left unclosed warns now, not inside the block
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ScriptedChatServer(["hi"]) as server:
            assert _ask(server).text == "hi"
            assert _get(f"{server.base_url}/models")[0] == 200
            url = server.base_url
        del server
        gc.collect()
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    # the server's sockets name its port (laddr on its side, raddr on the client's); garbage of another test does not
    assert [text for text in unclosed if f", {port})" in text] == [], unclosed
    assert set(threading.enumerate()) - threads == set(), "the server's thread and its request threads are joined"
    with pytest.raises(urllib.error.URLError):
        _get(f"{url}/models")
