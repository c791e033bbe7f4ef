"""Whether a stream is a terminal, the one check of the CLI's listings and bars and the trainers' progress lines: a
stream replaced by an object without ``isatty``, or closed, is none (the trainers' own check raised ValueError on a
closed stderr: a training run whose stderr was closed failed before its first step)."""

from __future__ import annotations

import io
import sys

import pytest

from ee_middleware._console import is_terminal


def test_a_closed_or_plain_stream_is_no_terminal() -> None:
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed) and not is_terminal(object()) and not is_terminal(io.StringIO())


def test_the_trainers_progress_check_takes_a_closed_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.trainers.training import backends

    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    assert backends._on_terminal() is False
