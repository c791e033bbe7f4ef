"""Fixtures of the replay tests: a scripted experience model behind a real local HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

import pytest

from tests.replay.test_experience import Answer, ScriptedExperienceModel, _handler


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], ScriptedExperienceModel]]:
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(answer: Answer) -> ScriptedExperienceModel:
        model = ScriptedExperienceModel(answer)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(model))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        model.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return model

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
