"""The deadline watch of an attempt (``timeout_s`` for the whole answer) never cuts off a connection the pool has
handed to another request (a real local HTTP/1.1 keep-alive server, one client shared by two threads)."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import httpx

from ee_middleware.models import openai_compat
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.testing.http import send_json

from .test_openai_compat_server import ANSWER, answering, timers, waits

__all__ = ["waits"]  # the fixture the tests take by name


def test_a_deadline_passing_after_the_answer_was_read_cuts_off_no_other_request(waits: list[float], monkeypatch: Any) -> None:
    """Before: the timer could fire between the last byte of A's answer (its connection back in the pool) and its
    cancel, and shut down the socket the pool had handed to B: B failed ("Server disconnected without sending a
    response", 11-21 of 2,700 quick requests under 16 threads) and A, whole, was refused as cut off.

    The window is forced: A's watch is cancelled only once it has fired (its thread descheduled after the read)."""
    fired = threading.Event()

    class FirstWatchCancelledLate(threading.Timer):
        made: ClassVar[list[threading.Timer]] = []

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.made.append(self)

        def cancel(self) -> None:
            if self is self.made[0]:
                self.finished.wait(5.0)  # set once the timer has run its function: the deadline has passed
                fired.set()
            super().cancel()

    monkeypatch.setattr(openai_compat.threading, "Timer", FirstWatchCancelledLate)
    peers: dict[str, Any] = {}

    def answer(handler: Any, body: dict[str, Any]) -> None:
        who = body["messages"][0]["content"]
        peers[who] = handler.client_address
        if who == "B":
            fired.wait(5.0)  # B is still being answered when A's deadline passes
            time.sleep(0.05)
        send_json(handler, ANSWER)

    with answering(answer) as (url, bodies):
        pool_of_one = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1))
        client = OpenAIChatClient(url, "m", timeout_s=1.0, retries=0, transport=pool_of_one)
        results: dict[str, Any] = {}

        def ask(who: str) -> None:
            try:
                results[who] = client.complete([{"role": "user", "content": who}])[0].text
            except Exception as exc:  # what each request ended with, for the assertion
                results[who] = f"{type(exc).__name__}: {exc}"

        a = threading.Thread(target=ask, args=("A",))
        a.start()
        time.sleep(0.5)  # A's answer is read and its connection idle in the pool; A's watch fires at 1.0 s
        b = threading.Thread(target=ask, args=("B",))  # B's own deadline: 1.5 s
        b.start()
        a.join(10)
        b.join(10)
        client.close()
    assert peers["A"] == peers["B"], "B was sent on A's connection (the window this test forces)"
    assert results == {"A": "hi", "B": "hi"}, results
    assert len(bodies) == 2 and not timers()
