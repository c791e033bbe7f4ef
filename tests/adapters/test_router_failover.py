"""The alias router against replicas that misbehave, each a real HTTP server: one that accepts connections and never
answers (passive health: passed over for a cool-down after one time-out), one that breaks a stream in the middle of an
event (the client reads whole events, then the router's error event), a registry that cannot be read (GET /v1/models
answers a JSON error), and a ``model`` that is no string (400)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.launch import free_port
from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
from ee_middleware.testing.http import ScriptedChatServer, send_json, serving

MESSAGES = [{"role": "user", "content": "Hi"}]
CLIENT_TIMEOUT_S = 60.0
"""The test client's own time-out: generous, far above the router's --timeout in these tests."""


class _EmptyRegistry:
    def apps(self) -> dict[str, Any]:
        return {}


class StuckReplica(ThreadingHTTPServer):
    """A replica that accepts connections and reads requests, but answers a POST only once ``release`` is set (then an
    OpenAI completion); ``posts`` counts the POSTs it got. ``GET /v1/models`` answers at once."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _StuckHandler)
        self.release = threading.Event()
        self.posts = 0
        self.lock = threading.Lock()


class _StuckHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StuckReplica

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        send_json(self, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        with self.server.lock:
            self.server.posts += 1
        self.server.release.wait(timeout=CLIENT_TIMEOUT_S)
        choice = {"index": 0, "message": {"role": "assistant", "content": "from the stuck one"}, "finish_reason": "stop"}
        try:
            send_json(self, {"id": "c", "object": "chat.completion", "created": 0, "model": body.get("model"), "choices": [choice]})
        except OSError:
            pass  # the router gave up on it


@contextmanager
def stuck_replica(port: int = 0) -> Iterator[tuple[StuckReplica, str]]:
    server = StuckReplica(port)
    try:
        with serving(server) as url:
            yield server, url
    finally:
        server.release.set()  # its handler threads end


def _chat(routed: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{routed}/chat/completions", json={"model": "m", "messages": MESSAGES, **body}, timeout=CLIENT_TIMEOUT_S)


def test_a_replica_that_never_answers_is_passed_over_after_one_time_out() -> None:
    """Before: each request sent first to the stuck replica waited timeout_s twice (a retry on the same replica) and
    nothing remembered it, so every other request waited again (240 s with the defaults)."""
    said: list[str] = []
    with stuck_replica() as (stuck, stuck_url), ScriptedChatServer(["fine"]) as healthy:
        router = AliasRouter(_EmptyRegistry(), [stuck_url, healthy.base_url], timeout_s=1.0, retries=2, cooldown_s=600, log=said.append)
        with serving(make_router_server(router, port=0)) as routed:
            answers = [_chat(routed) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        assert {a.json()["choices"][0]["message"]["content"] for a in answers} == {"fine"}
        assert stuck.posts == 1, "a time-out is not retried on the same replica, and the replica is then passed over"
        assert len(healthy.requests) == 6
    assert len(said) == 1 and stuck_url in said[0] and "passed over for 600 s" in said[0] and "no answer within 1 s" in said[0], said


def test_requests_sent_while_the_replica_hangs_do_not_all_wait_for_it() -> None:
    """Eight requests at once: those that reach the stuck replica before it is known to hang wait one time-out, and
    the replica then gets no more of them; every request is answered."""
    with stuck_replica() as (stuck, stuck_url), ScriptedChatServer(["fine"]) as healthy:
        router = AliasRouter(_EmptyRegistry(), [stuck_url, healthy.base_url], timeout_s=1.0, cooldown_s=600, log=lambda _: None)
        with serving(make_router_server(router, port=0)) as routed:
            results: list[int] = []
            threads = [threading.Thread(target=lambda: results.append(_chat(routed).status_code)) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(CLIENT_TIMEOUT_S)
            later = [_chat(routed).status_code for _ in range(4)]
        assert results == [200] * 8 and later == [200] * 4
        first_wave = stuck.posts
        assert 1 <= first_wave <= 8
    assert stuck.posts == first_wave, "after the first time-out, no request went to the stuck replica"


def test_a_replica_is_tried_again_after_its_cool_down_and_takes_its_turn_once_it_answers() -> None:
    said: list[str] = []
    with stuck_replica() as (stuck, stuck_url), ScriptedChatServer(["fine"]) as healthy:
        router = AliasRouter(_EmptyRegistry(), [stuck_url, healthy.base_url], timeout_s=1.0, cooldown_s=0.5, log=said.append)
        with serving(make_router_server(router, port=0)) as routed:
            assert _chat(routed).status_code == 200 and stuck.posts == 1
            stuck.release.set()  # it answers from now on
            time.sleep(1.0)  # past the cool-down
            answers = [_chat(routed).json()["choices"][0]["message"]["content"] for _ in range(4)]
        assert "from the stuck one" in answers and "fine" in answers, answers
    assert any("answers again" in line and stuck_url in line for line in said), said


def test_when_every_replica_is_passed_over_they_are_still_tried() -> None:
    """The only replica could not be reached (nothing listened): passed over, but with no other one left the next
    request still goes to it, and is answered once it is up, within the cool-down."""
    port = free_port()
    said: list[str] = []
    router = AliasRouter(_EmptyRegistry(), [f"http://127.0.0.1:{port}/v1"], timeout_s=5.0, cooldown_s=600, log=said.append)
    with serving(make_router_server(router, port=0)) as routed:
        down = _chat(routed)
        assert down.status_code == 502 and "No replica answered" in down.json()["error"]["message"], down.text
        assert len(said) == 1 and "could not be reached" in said[0], said
        with stuck_replica(port) as (stuck, _url):
            stuck.release.set()
            up = _chat(routed)
    assert up.status_code == 200 and up.json()["choices"][0]["message"]["content"] == "from the stuck one", up.text
    assert "answers again" in said[-1], said


def test_a_timed_out_answer_names_the_routers_timeout_flag() -> None:
    with stuck_replica() as (_stuck, stuck_url):
        router = AliasRouter(_EmptyRegistry(), [stuck_url], timeout_s=1.0, cooldown_s=600, log=lambda _: None)
        with serving(make_router_server(router, port=0)) as routed:
            answer = _chat(routed)
    assert answer.status_code == 502 and "ee serve router --timeout SECONDS" in answer.json()["error"]["message"], answer.text


# --- streams ---------------------------------------------------------------------------------------------------------


def _sse_client_events(response: httpx.Response) -> list[Any]:
    """The events an SSE client (the OpenAI SDK's decoder) reads from ``response``: each event's data lines joined, a
    ``[DONE]`` as it is, any other data parsed as JSON (a half event would raise here, as it does in the SDK)."""
    events: list[Any] = []
    data: list[str] = []
    for line in response.text.splitlines():
        if not line:
            if data:
                text = "\n".join(data)
                events.append(text if text == "[DONE]" else json.loads(text))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return events  # an event without its blank line at the end is not dispatched (the SSE spec)


def _breaking_handler(pieces: list[bytes], *, hang_after: threading.Event | None = None) -> type[BaseHTTPRequestHandler]:
    class Breaking(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in pieces:
                self.wfile.write(f"{len(piece):X}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
            if hang_after is not None:
                hang_after.wait(CLIENT_TIMEOUT_S)
                return
            self.connection.shutdown(socket.SHUT_RDWR)  # gone in the middle of an event, without the closing chunk

    return Breaking


FIRST = b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'


@pytest.mark.parametrize(
    "pieces",
    [
        [FIRST, b'data: {"id":"x","obj'],  # the tester's: broken inside an event's data line
        [FIRST[:30], FIRST[30:] + b"data: [DO"],  # an event across two pieces, then half of the next
        [FIRST.replace(b"\n", b"\r\n"), b'data: {"id":"x"}\r\n'],  # CRLF lines; broken between the data line and its blank line
        [FIRST + b"data: {\n", b'data: "a": 1}\n'],  # a half event of two data lines
    ],
    ids=["mid-line", "across-pieces", "crlf-before-blank-line", "multi-line"],
)
def test_a_stream_broken_mid_event_ends_with_the_error_as_the_next_whole_event(pieces: list[bytes]) -> None:
    """Before: the half event was relayed and closed with a blank line, so an SSE client parsed half a JSON object
    (JSONDecodeError in the OpenAI SDK) instead of the router's error event."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _breaking_handler(pieces))
    upstream.daemon_threads = True
    with serving(upstream) as url, serving(make_router_server(AliasRouter(_EmptyRegistry(), [url], retries=0), port=0)) as routed:
        response = _chat(routed, stream=True)
    assert response.status_code == 200
    events = _sse_client_events(response)
    assert events[0]["choices"][0]["delta"] == {"content": "Hel"}, "what arrived whole was relayed"
    assert len(events) == 3 and events[-1] == "[DONE]", events  # the stream ends as vLLM ends one (a serving sweep)
    error = events[-2]["error"]
    assert error["type"] == "BadGatewayError" and "the stream broke" in error["message"], error
    assert response.text.endswith("\n\n") and response.text.count("data:") == 3, "no half event is sent"


def test_a_stream_that_stalls_is_not_sent_again_elsewhere_and_its_replica_is_passed_over() -> None:
    release = threading.Event()
    said: list[str] = []
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _breaking_handler([FIRST, b"data: {"], hang_after=release))
    upstream.daemon_threads = True
    try:
        with serving(upstream) as url, ScriptedChatServer(["fine"]) as healthy:
            router = AliasRouter(_EmptyRegistry(), [url, healthy.base_url], timeout_s=1.0, cooldown_s=600, log=said.append)
            with serving(make_router_server(router, port=0)) as routed:
                streamed = _chat(routed, stream=True)
                after = [_chat(routed, stream=True) for _ in range(2)]
            assert len(healthy.requests) == 2, "the started stream was not sent to the other replica; the next two went there"
    finally:
        release.set()
    events = _sse_client_events(streamed)
    assert events[0]["choices"][0]["delta"] == {"content": "Hel"} and "stalled" in events[-2]["error"]["message"], events
    assert events[-1] == "[DONE]", events
    assert all(_sse_client_events(r)[-1] == "[DONE]" for r in after)
    assert len(said) == 1 and url in said[0] and "passed over" in said[0], said


def test_a_stream_that_ends_cleanly_is_relayed_byte_for_byte() -> None:
    body = FIRST + b": a comment\r\n\r\n" + b"data: [DONE]\n\n" + b"data: no blank line at the end"

    class Whole(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), 7):  # in odd pieces
                self.wfile.write(body[start : start + 7])
                self.wfile.flush()

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Whole)
    upstream.daemon_threads = True
    with serving(upstream) as url, serving(make_router_server(AliasRouter(_EmptyRegistry(), [url], retries=0), port=0)) as routed:
        response = _chat(routed, stream=True)
    assert response.content == body


# --- GET /v1/models and the request's model ------------------------------------------------------------------------


def test_a_router_refuses_to_start_on_a_registry_it_cannot_read(tmp_path: Path) -> None:
    """It started, said where it listened, and answered every request with the registry's error, a 500: it had no last
    good read to route by (a serving sweep of 2026-12-07; before that, /models dropped the connection). It reads the
    registry once when it starts, so ee serve router exits 1 naming the file."""
    from ee_middleware.adapters.errors import RegistryCorruptionError
    from tests.adapters.helpers import write_adapter

    registry = LocalAdapterRegistry(tmp_path / "reg")
    registry.register(write_adapter(tmp_path / "adapter"), "bot")
    (tmp_path / "reg" / "index.json").write_text('{"apps": ')
    with pytest.raises(RegistryCorruptionError, match=r"index\.json"):
        AliasRouter(LocalAdapterRegistry(tmp_path / "reg"), ["http://127.0.0.1:9/v1"], log=lambda _: None)
    from ee_middleware.cli.app import app

    result = CliRunner().invoke(app, ["serve", "router", "-r", str(tmp_path / "reg"), "--server", "http://127.0.0.1:9/v1", "--port", "1"])
    assert result.exit_code == 1 and "index.json" in result.output and "ee router at" not in result.output, result.output


def test_a_registry_damaged_while_the_router_serves_routes_by_its_last_good_read(tmp_path: Path) -> None:
    """An index edited by hand into something the registry refuses turned every request into a 500 (a serving sweep),
    while the replicas still served the live adapter. The router routes by its last good read, says so once, and
    routes by the registry again once it is mended."""
    from tests.adapters.helpers import write_adapter

    registry = LocalAdapterRegistry(tmp_path / "reg")
    live = registry.register(write_adapter(tmp_path / "adapter"), "bot").name
    registry.switch_live(live)
    index_file = tmp_path / "reg" / "index.json"
    good = index_file.read_text()
    said: list[str] = []
    with ScriptedChatServer(["fine"] * 8, models=["base", live]) as replica:
        router = AliasRouter(LocalAdapterRegistry(tmp_path / "reg"), [replica.base_url], log=said.append)
        with serving(make_router_server(router, port=0)) as routed:
            first = _chat(routed, model="bot")
            named = '"live": "' + live + '"'
            for damage in ('{"apps": ', good.replace(named, '"live": 5', 1), good.replace(named, '"live": ["x"]', 1)):
                index_file.write_text(damage)
                damaged = [_chat(routed, model="bot") for _ in range(2)]
                listed = httpx.get(f"{routed}/models", timeout=CLIENT_TIMEOUT_S)
                assert [a.status_code for a in damaged] == [200, 200] and listed.status_code == 200, [a.text for a in damaged]
                assert next(e["id"] for e in listed.json()["data"]) == "bot"
            index_file.write_text(good)
            mended = _chat(routed, model="bot")
    assert first.status_code == mended.status_code == 200
    assert [r["model"] for r in replica.requests] == [live] * 8
    lines = [line for line in said if "registry" in line]
    # said once per problem: the two edits of apps.bot.live are one problem (its entry's shape), said once
    assert len(lines) == 3 and all("last good read" in line for line in lines[:2]), said
    assert "can be read again" in lines[2], said


@pytest.mark.parametrize("model", [["shop"], {"name": "shop"}, 3, True])
def test_a_model_that_is_no_string_is_a_400_through_the_router(model: Any) -> None:
    """Before: 500 "TypeError: unhashable type: 'list'"."""
    with ScriptedChatServer(["fine"]) as replica:
        with serving(make_router_server(AliasRouter(_EmptyRegistry(), [replica.base_url], log=lambda _: None), port=0)) as routed:
            answer = _chat(routed, model=model)
            streamed = _chat(routed, model=model, stream=True)
        assert replica.requests == [], "refused before any replica was asked"
    for response in (answer, streamed):
        error = response.json()["error"]
        assert response.status_code == 400 and error["message"].startswith("model must be a string"), response.text
        assert error["type"] == "BadRequestError"


# --- the command line ------------------------------------------------------------------------------------------------


class _Started(Exception):
    pass


@pytest.fixture
def router_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.adapters.helpers import write_adapter

    def started(router: Any, host: str, port: int, *, api_key: str | None = None) -> None:
        keys = f" api_key={api_key} upstream_api_key={router._upstream_api_key!r}"
        raise _Started(f"timeout_s={router.timeout_s} retries={router.retries} cooldown_s={router.cooldown_s}{keys}")

    monkeypatch.setattr("ee_middleware.adapters.serving.router.make_router_server", started)
    LocalAdapterRegistry(tmp_path / "registry").register(write_adapter(tmp_path / "adapter"), "bot")
    return tmp_path / "registry"


def test_serve_router_takes_timeout_retries_and_cooldown(router_registry: Path) -> None:
    from ee_middleware.cli.app import app

    base = ["serve", "router", "-r", str(router_registry), "--server", "http://127.0.0.1:8000/v1"]
    given = CliRunner().invoke(app, [*base, "--timeout", "5", "--retries", "0", "--cooldown", "12.5"])
    assert "_Started: timeout_s=5.0 retries=0 cooldown_s=12.5" in given.output, given.output
    default = CliRunner().invoke(app, base)
    assert "_Started: timeout_s=120.0 retries=1 cooldown_s=30.0" in default.output, default.output
    shown = CliRunner().invoke(app, ["serve", "router", "--help"]).output
    assert "--timeout" in shown and "--retries" in shown and "--cooldown" in shown


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        ([], {}, "api_key=None upstream_api_key=''"),
        (["--api-key", "fleet"], {}, "api_key=fleet upstream_api_key='fleet'"),  # one key for the fleet: sent on too
        (["--api-key", "mine", "--upstream-api-key", "theirs"], {}, "api_key=mine upstream_api_key='theirs'"),
        ([], {"EE_SERVE_API_KEY": "env", "EE_UPSTREAM_API_KEY": "up"}, "api_key=env upstream_api_key='up'"),
        ([], {"OPENAI_API_KEY": "sk-openai"}, "api_key=None upstream_api_key=''"),  # never sent to the replicas
    ],
)
def test_serve_router_takes_its_key_and_the_replicas_key(router_registry: Path, args: list[str], env: dict[str, str], said: str) -> None:
    from ee_middleware.cli.app import app

    base = ["serve", "router", "-r", str(router_registry), "--server", "http://127.0.0.1:8000/v1"]
    result = CliRunner().invoke(app, [*base, *args], env=env)
    assert said in result.output, result.output


@pytest.mark.parametrize(
    "args",
    [
        *(["--timeout", value] for value in ("0", "-1", "inf", "nan", "soon")),
        *(["--retries", value] for value in ("-1", "11", "1.5")),
        *(["--cooldown", value] for value in ("-1", "inf", "nan")),
    ],
)
def test_serve_router_refuses_bad_timeout_retries_and_cooldown(router_registry: Path, args: list[str]) -> None:
    from ee_middleware.cli.app import app

    result = CliRunner().invoke(app, ["serve", "router", "-r", str(router_registry), "--server", "http://127.0.0.1:8000/v1", *args])
    assert result.exit_code == 2 and "_Started" not in result.output and args[0] in result.stderr, result.output


def test_the_router_refuses_bad_settings_in_python() -> None:
    for bad in ({"timeout_s": 0}, {"timeout_s": float("inf")}, {"retries": -1}, {"retries": 1.5}, {"cooldown_s": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AliasRouter(_EmptyRegistry(), ["http://127.0.0.1:1/v1"], **bad)


def test_a_replica_passed_over_leaves_its_turns_to_all_the_healthy_ones() -> None:
    """Review R14 M1: a replica passed over gave all its turns to the next in the ring (one of three down: one healthy
    replica took 2/3 of the requests, a cascade waiting to happen)."""
    import collections

    from ee_middleware.adapters.serving.router import _Down

    router = AliasRouter(_EmptyRegistry(), [f"http://{name}/v1" for name in "abcd"], log=lambda _: None)
    router._down["http://b/v1"] = _Down(time.monotonic() + 1e6, "test")
    firsts = collections.Counter(router._order()[0] for _ in range(300))
    assert firsts == {"http://a/v1": 100, "http://c/v1": 100, "http://d/v1": 100}, firsts


class _Limiting(BaseHTTPRequestHandler):
    """A replica that answers 429 with ``Retry-After`` while :meth:`busy`, then an answer; ``asked`` notes each request."""

    protocol_version = "HTTP/1.1"
    asked: ClassVar[list[float]] = []
    retry_after = "1"

    def log_message(self, *args: Any) -> None:
        pass

    def busy(self) -> bool:
        raise NotImplementedError

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.asked.append(time.monotonic())
        if self.busy():
            data = json.dumps({"error": {"message": "slow down", "type": "RateLimitError"}}).encode()
            self.send_response(429)
            self.send_header("Retry-After", self.retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            answer = {"role": "assistant", "content": "ok"}
            choices = [{"index": 0, "message": answer, "finish_reason": "stop"}]
            send_json(self, {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": choices})


def _limiting_replica(kind: type[_Limiting]) -> tuple[type[_Limiting], ThreadingHTTPServer]:
    """A replica of ``kind`` with requests of its own (``handler.asked``), not yet serving."""
    handler = type("Handler", (kind,), {"asked": []})
    replica = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    replica.daemon_threads = True
    return handler, replica


class _RateLimited(_Limiting):
    """429 with Retry-After: 1 within a second of the first request, then an answer."""

    def busy(self) -> bool:
        return self.asked[-1] - self.asked[0] < 1.0


def test_a_replica_that_asks_to_wait_is_asked_again_after_its_retry_after() -> None:
    """Review R14 M2: the router's own retry slept its short back-off, not the replica's Retry-After (a rate-limited
    replica gave the client a 502 after 0.45 s)."""
    handler, replica = _limiting_replica(_RateLimited)
    with serving(replica) as url:
        router = AliasRouter(_EmptyRegistry(), [url], retries=1, timeout_s=10, log=lambda _: None)
        with serving(make_router_server(router, port=0)) as routed:
            answered = _chat(routed, model="m", messages=[{"role": "user", "content": "hi"}])
    assert answered.status_code == 200, answered.text
    assert len(handler.asked) == 2 and handler.asked[1] - handler.asked[0] >= 0.95


@pytest.mark.parametrize(
    "stream",
    [
        b'data: {"a":1}\n\n: keepalive\n\ndata: {"b":2}\n\ndata: [DONE]\n\n',
        b'data: {"a":1}\r\n\r\n:c\r\n\r\ndata: [DONE]\r\n\r\n',
        b"data: one\r\rdata: two\r\rdata: [DONE]\r\r",
        b"event: x\ndata: a\ndata: b\nid: 3\n\ndata: [DONE]\n\n",
    ],
)
def test_events_are_released_whole_however_the_stream_is_cut(stream: bytes) -> None:
    """The relay's held-back event is searched from the new bytes on (review R14 L1: rescanned whole for every chunk, a
    16 MiB event took 12 s); every cut of LF, CRLF and CR-only streams gives the stream back byte for byte, and a CR-only
    event goes out with its own chunk, not with the next event (review R14 L2)."""
    import random

    from ee_middleware.adapters.serving.http import event_end

    def relay(chunks: list[bytes]) -> tuple[bytes, bytes, list[int]]:
        out, pending, released = [], bytearray(), []
        for n, chunk in enumerate(chunks):
            before = len(pending) - 4
            pending += chunk
            end = event_end(pending, before)
            if end:
                out.append(bytes(pending[:end]))
                del pending[:end]
                released.append(n)
        return b"".join(out), bytes(pending), released

    draw = random.Random(7)
    for _ in range(2000):
        cuts = sorted(draw.sample(range(1, len(stream)), draw.randint(0, min(8, len(stream) - 1))))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        sent, held, _ = relay(pieces)
        assert sent == stream and held == b"", pieces
    if b"\n" not in stream:  # CR-only: each event released with the chunk that ends it
        events = [event + b"\r\r" for event in stream.split(b"\r\r") if event]
        assert relay(events)[2] == list(range(len(events)))


def test_a_router_given_itself_as_a_replica_refuses_the_loop_at_once(tmp_path: Path) -> None:
    """`ee serve router --server <its own URL>` (or two routers naming each other): one client request became 386
    nested requests and 160 tracebacks in 5 s, then a 502 (a serving sweep). The router now marks what it forwards, and
    a router that gets such a request answers 508 saying what is wrong: one hop (the model list, which asks the replicas
    too, ends as well)."""
    port = free_port()
    posts: list[str] = []
    router = AliasRouter(_EmptyRegistry(), [f"http://127.0.0.1:{port}/v1"], log=posts.append, timeout_s=5)
    with serving(make_router_server(router, port=port)) as routed:
        chat = _chat(routed, model="bot")
        listed = httpx.get(f"{routed}/models", timeout=CLIENT_TIMEOUT_S)
    assert chat.status_code >= 500 and "a router's --server names a router" in chat.text, chat.text
    assert listed.status_code in (200, 508) or "a router's --server names a router" in listed.text, listed.text
    assert len(posts) <= 4, posts  # a hop or two logged, not hundreds


def test_a_router_among_the_replicas_is_passed_over_for_the_model_servers(tmp_path: Path) -> None:
    """A router listing itself beside a real replica: its own 508 was asked again (a 5xx) before the next replica, at
    every round-robin turn (a review). It is never asked again, and passed over: the replica answers every request."""
    port = free_port()
    said: list[str] = []
    with ScriptedChatServer(["fine"] * 4) as replica:
        router = AliasRouter(_EmptyRegistry(), [f"http://127.0.0.1:{port}/v1", replica.base_url], log=said.append, timeout_s=5)
        with serving(make_router_server(router, port=port)) as routed:
            answers = [_chat(routed, model="m") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert sum("it is an ee router, not a model server" in line for line in said) == 1, said


class _Busy(_Limiting):
    """429 with Retry-After: 30, every time."""

    retry_after = "30"

    def busy(self) -> bool:
        return True


@pytest.fixture
def router_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The router's own waits, noted and not slept (its module's ``time``, not the servers')."""
    import types

    from ee_middleware.adapters.serving import router as router_module

    noted: list[float] = []
    fake = types.SimpleNamespace(**{name: getattr(time, name) for name in ("monotonic", "time", "perf_counter")}, sleep=noted.append)
    monkeypatch.setattr(router_module, "time", fake)
    return noted


def test_a_busy_replica_asking_to_wait_is_passed_over_for_one_that_answers_now(router_sleeps: list[float]) -> None:
    """Every request whose turn began at a rate-limited replica (429, Retry-After: 30) slept 30 s, asked it again, and only
    then went to the healthy replica beside it (a serving sweep of 2026-12-07)."""
    handler, busy = _limiting_replica(_Busy)
    with serving(busy) as busy_url, ScriptedChatServer(["fine"] * 4) as healthy:
        router = AliasRouter(_EmptyRegistry(), [busy_url, healthy.base_url], retries=2, timeout_s=5, log=lambda _: None)
        with serving(make_router_server(router, port=0)) as routed:
            answers = [_chat(routed, model="m") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert len(handler.asked) == 2, "asked once at each of its turns, never again after a wait"
    assert all(wait < 1 for wait in router_sleeps), router_sleeps


def test_the_last_replica_asking_to_wait_is_waited_for_at_most_the_routers_time_out(router_sleeps: list[float]) -> None:
    handler, busy = _limiting_replica(_Busy)
    with serving(busy) as busy_url:
        router = AliasRouter(_EmptyRegistry(), [busy_url], retries=1, timeout_s=2, log=lambda _: None)
        with serving(make_router_server(router, port=0)) as routed:
            answered = _chat(routed, model="m")
    assert answered.status_code == 502 and len(handler.asked) == 2, answered.text
    assert router_sleeps == [2], router_sleeps


class _BusyOnce(_Limiting):
    """429 with Retry-After: 1 to the first request, then answers."""

    def busy(self) -> bool:
        return len(self.asked) == 1


@pytest.mark.parametrize("other", ["cooling down", "unreachable"])
def test_a_busy_replica_is_waited_for_when_no_other_replica_answers(router_sleeps: list[float], other: str) -> None:
    """Review of the change above: a busy replica was passed over for a replica after it that was cooling down, or that
    then could not be reached, and the request got a 502 though the busy one would have answered after its Retry-After."""
    from ee_middleware.adapters.serving.router import _Down

    handler, busy = _limiting_replica(_BusyOnce)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"  # bound, never listening: refused
        with serving(busy) as busy_url:
            router = AliasRouter(_EmptyRegistry(), [busy_url, dead], retries=1, timeout_s=5, log=lambda _: None)
            if other == "cooling down":
                router._down[dead] = _Down(time.monotonic() + 1e6, "test")
            with serving(make_router_server(router, port=0)) as routed:
                answered = _chat(routed, model="m")
    assert answered.status_code == 200, answered.text
    assert len(handler.asked) == 2 and 1 in router_sleeps, (handler.asked, router_sleeps)


class _ListsNoModel(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        send_json(self, {"object": "list", "data": []})


class _AppWithoutLiveAdapter:
    def apps(self) -> dict[str, Any]:
        return {"bot": {"live": None, "previous": []}}


def test_an_app_without_a_live_adapter_and_no_base_listed_is_a_502_saying_so() -> None:
    """It forwarded "model": null, which the replica answered with its own puzzling error (a serving sweep of 2026-12-07)."""
    replica = ThreadingHTTPServer(("127.0.0.1", 0), _ListsNoModel)
    replica.daemon_threads = True
    with serving(replica) as url:
        router = AliasRouter(_AppWithoutLiveAdapter(), [url], log=lambda _: None)
        with serving(make_router_server(router, port=0)) as routed:
            answered = _chat(routed, model="bot")
    assert answered.status_code == 502, answered.text
    message = answered.json()["error"]["message"]
    assert "The app 'bot' has no live adapter" in message and "no replica listed one" in message, message
