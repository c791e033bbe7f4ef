"""The local server as a process: requests racing an unload, and how it stops (a REAL server process, tiny random Llama)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.adapters.serving.launch import ServerProcess, free_port, local_command
from ee_middleware.adapters.serving.rendering import servers_folder

MESSAGES = [{"role": "user", "content": "Where is order A-1001?"}]

HOLDING_SERVER = """
import sys, threading
from pathlib import Path

from ee_middleware.adapters.serving import local_server

folder = Path(sys.argv[1])
unloaded: dict[str, threading.Event] = {}
this_request = threading.local()


class HeldLock:
    '''The model lock, except that a chat request naming NAME while folder/NAME.hold exists says so (folder/NAME.waiting)
    once it reaches the lock, and takes the lock only after NAME was unloaded.'''

    def __init__(self) -> None:
        self.inner = threading.Lock()

    def __enter__(self) -> bool:
        name = getattr(this_request, "model", None)
        if name is not None and (folder / f"{name}.hold").exists():
            (folder / f"{name}.hold").unlink()
            event = unloaded.setdefault(name, threading.Event())
            (folder / f"{name}.waiting").touch()
            event.wait(120)
        return self.inner.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


server_class = local_server.LocalModelServer
init, chat, unload = server_class.__init__, server_class.chat, server_class.unload_adapter


def held_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.lock = HeldLock()


def named_chat(self, body, **options):
    this_request.model = body.get("model")
    try:
        return chat(self, body, **options)
    finally:
        this_request.model = None


def noted_unload(self, body):
    answer = unload(self, body)
    unloaded.setdefault(body.get("lora_name"), threading.Event()).set()
    return answer


server_class.__init__, server_class.chat, server_class.unload_adapter = held_init, named_chat, noted_unload
local_server.main(sys.argv[2:])
"""


def _chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{url}/chat/completions", json=body, timeout=120)


def _content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_a_request_for_an_adapter_unloaded_while_it_waited_for_the_model_is_a_404_not_the_base_forced_interleaving(
    tiny_base: Path, adapter_set: Any, tmp_path: Path
) -> None:
    """Before: the request for X passed the model check (X loaded), waited for the model lock while X was unloaded, and
    was answered 200 by the base model, labelled X (race_unload.py: 5 of 5 with timing). The interleaving is forced here:
    the real server runs with its lock wrapped so that the request waits at the lock until the unload is done."""
    import threading

    script = tmp_path / "holding_server.py"
    script.write_text(HOLDING_SERVER)
    port = free_port()
    arguments = local_command(str(tiny_base), port=port, served_model_name="tiny-base", max_lora_rank=8)[3:]
    server = ServerProcess(
        [sys.executable, str(script), str(tmp_path), *arguments], f"http://127.0.0.1:{port}/v1", name="local server", end_with_parent=True
    )
    with server:
        backend = LocalBackend(server.url)
        backend.load("X", str(adapter_set.perturbed))
        base, adapter = _content(_chat(server.url, "tiny-base")), _content(_chat(server.url, "X"))
        assert base != adapter, "the perturbed adapter changes the greedy answer"

        (tmp_path / "X.hold").touch()
        answered: dict[str, httpx.Response] = {}
        waiting = threading.Thread(target=lambda: answered.setdefault("X", _chat(server.url, "X")))
        waiting.start()
        deadline = time.monotonic() + 120
        while not (tmp_path / "X.waiting").exists() and waiting.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "X.waiting").exists(), "the request for X never reached the model lock"
        backend.unload("X")  # X is loaded, as the request waiting for the model saw it
        waiting.join(timeout=120)

        response = answered["X"]
        assert response.status_code == 404, f"answered {response.status_code} as X with {response.text}; the base answers {base!r}"
        assert "The model `X` does not exist." in response.text
        assert _chat(server.url, "X").status_code == 404
        assert _content(_chat(server.url, "tiny-base")) == base


def test_ee_serve_local_stopped_with_sigterm_exits_cleanly_and_removes_its_state_file(tiny_base: Path) -> None:
    """Before: SIGTERM (systemd, docker stop, ServerProcess.stop) ended it at once, exit -15, and its state file
    $EE_CACHE_DIR/servers/PORT.json stayed behind; Ctrl-C removed it."""
    port = free_port()
    command = [sys.executable, "-m", "ee_middleware.cli", "serve", "local", "--base", str(tiny_base), "--port", str(port)]
    server = ServerProcess(command, f"http://127.0.0.1:{port}/v1", name="local server", end_with_parent=True)
    state = servers_folder() / f"{port}.json"
    with server:
        assert state.is_file()
        assert server.process is not None
        server.process.terminate()  # SIGTERM to ee alone, as a service manager sends it
        assert server.process.wait(timeout=60) == 0
    assert not state.exists()
