"""Fixtures of the replay tests: a scripted experience model behind a real local HTTP server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from http.server import ThreadingHTTPServer

import pytest

from ee_middleware.testing.http import serving
from tests.replay.test_experience import Answer, ScriptedExperienceModel, _handler


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], ScriptedExperienceModel]]:
    with ExitStack() as servers:

        def start(answer: Answer) -> ScriptedExperienceModel:
            model = ScriptedExperienceModel(answer)
            model.base_url = servers.enter_context(serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(model))))
            return model

        yield start
