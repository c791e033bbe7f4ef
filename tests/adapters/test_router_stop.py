"""How ``ee serve router`` stops under traffic (a REAL router process, a real HTTP replica that answers when the test lets
it): as the local server does. Before: SIGTERM (systemd, ``docker stop``) ended the router at once and every request it
was forwarding lost its connection; Ctrl-C waited 8 s whatever ``EE_STOP_GRACE_S`` said, and a second signal was not
taken as "now"."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.http import STOPPING_MESSAGE
from ee_middleware.adapters.serving.launch import ServerProcess, free_port

from .test_router_failover import MESSAGES, StuckReplica, stuck_replica


@contextmanager
def _router(tmp_path: Path, replica_url: str, grace_s: float) -> Iterator[ServerProcess]:
    from tests.adapters.helpers import write_adapter

    registry = tmp_path / f"registry-{grace_s:g}"
    LocalAdapterRegistry(registry).register(write_adapter(tmp_path / f"adapter-{grace_s:g}"), "bot")
    port = free_port()
    command = [sys.executable, "-m", "ee_middleware.cli", "serve", "router", "-r", str(registry)]
    command += ["--server", replica_url, "--port", str(port), "--timeout", "300"]
    env = {**os.environ, "EE_STOP_GRACE_S": str(grace_s)}
    with ServerProcess(command, f"http://127.0.0.1:{port}/v1", env=env, name="router", end_with_parent=True) as router:
        yield router


def _forwarding(router: ServerProcess, replica: StuckReplica, count: int = 1) -> tuple[list[threading.Thread], list[object]]:
    """``count`` chat requests sent through the router on threads, once the replica holds all of them."""
    answers: list[object] = []

    def ask() -> None:
        try:
            answers.append(httpx.post(f"{router.url}/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=120))
        except Exception as exc:  # the test reads it
            answers.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while replica.posts < count:
        assert time.monotonic() < deadline and not answers, answers
        time.sleep(0.05)
    return threads, answers


def _wait_for(router: ServerProcess, text: str) -> None:
    assert router.log_path is not None
    deadline = time.monotonic() + 60
    while text not in router.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline and router.running(), router.log_tail()
        time.sleep(0.05)


def test_sigterm_lets_the_forwarded_requests_finish_and_exits_0(tmp_path: Path) -> None:
    with stuck_replica() as (replica, url), _router(tmp_path, url, grace_s=120) as router:
        assert router.process is not None
        threads, answers = _forwarding(router, replica, count=2)
        router.process.send_signal(signal.SIGTERM)
        _wait_for(router, "waiting up to 120 s for 2 request(s) in flight")
        assert router.running()
        replica.release.set()
        code = router.process.wait(timeout=60)
        for thread in threads:
            thread.join(60)
        log = router.log_tail(200)
    assert code == 0, log
    assert [getattr(a, "status_code", a) for a in answers] == [200, 200], answers
    assert all(a.json()["choices"][0]["message"]["content"] == "from the stuck one" for a in answers)  # type: ignore[attr-defined]


def test_requests_past_ee_stop_grace_s_are_answered_503_and_a_second_signal_ends_the_wait(tmp_path: Path) -> None:
    for grace_s, second, exit_code in ((0.5, False, 0), (300, True, 130)):
        with stuck_replica() as (replica, url), _router(tmp_path, url, grace_s=grace_s) as router:
            assert router.process is not None
            threads, answers = _forwarding(router, replica)
            started = time.monotonic()
            router.process.send_signal(signal.SIGINT)
            if second:
                _wait_for(router, "request(s) in flight")
                router.process.send_signal(signal.SIGTERM)
            code = router.process.wait(timeout=60)
            took = time.monotonic() - started
            for thread in threads:
                thread.join(60)
            log = router.log_tail(200)
        assert code == exit_code and took < 30, (code, took, log)
        (answer,) = answers
        assert isinstance(answer, httpx.Response) and answer.status_code == 503, answer
        assert answer.json()["error"]["message"] == STOPPING_MESSAGE
        assert "ee router: 1 request(s) still in flight were answered 503" in log


def test_a_bad_ee_stop_grace_s_is_named_before_serving(tmp_path: Path) -> None:
    """``ee serve local`` printed the server module's argparse usage (naming flags as the server module has them); the router
    never read the variable."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    for command in (
        ["serve", "router", "-r", str(tmp_path), "--server", "http://127.0.0.1:9/v1", "--port", str(free_port())],
        ["serve", "local", "--base", str(tmp_path), "--port", str(free_port())],
    ):
        done = CliRunner().invoke(app, command, env={"EE_STOP_GRACE_S": "soon"})
        assert done.exit_code == 1, done.output
        assert "EE_STOP_GRACE_S must be a number of seconds >= 0, got 'soon'" in done.output and "usage:" not in done.output
