"""Adapter folders for the tests (real safetensors files, as peft writes them), and a stand-in of vLLM's runtime LoRA API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from ee_middleware.adapters.serving.backend import LocalBackend, VLLMBackend
from ee_middleware.adapters.serving.launch import free_port
from ee_middleware.testing.http import send_json, serving


def write_adapter(folder: Path, *, rank: int = 8, base: str = "/models/base", seed: int = 0, manifest: dict | None = None) -> Path:
    """A LoRA adapter folder (config + random weights + optional manifest), without a model behind it."""
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "base_model_name_or_path": base, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    save_file(
        {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.standard_normal((rank, 4)).astype(np.float32)},
        str(folder / "adapter_model.safetensors"),
    )
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


class StandInVLLM(ThreadingHTTPServer):
    """vLLM's runtime LoRA API on a real HTTP server, without a model (a stand-in: the tests make it fail on demand).

    ``fail`` maps a path to the status it answers instead, or to ``(status, message)`` for vLLM's error body
    with that message. While ``hold_chat`` is set, a smoke chat request for a loaded adapter sets
    ``chat_arrived`` and is answered only once ``release_chat`` is set (a slow replica, mid-verification). A replica in
    trouble of its own: ``chat_choices`` answers chat requests with that ``choices`` list (``[]``: a 200 without an
    answer), ``chat_model`` names that model as the one that answered, ``unlisted`` leaves loaded adapters out of
    ``/v1/models``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.loaded: dict[str, str] = {}
        self.fail: dict[str, int | tuple[int, str]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.hold_chat = threading.Event()
        self.chat_arrived = threading.Event()
        self.release_chat = threading.Event()
        self.chat_choices: list[Any] | None = None
        self.chat_model: str | None = None
        self.unlisted = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInVLLM

    def log_message(self, *args: Any) -> None:
        pass

    def _failed(self) -> bool:
        with self.server.lock:
            self.server.requests.append(f"{self.command} {self.path}")
            failure = self.server.fail.get(self.path)
        if failure is None:
            return False
        status, message = failure if isinstance(failure, tuple) else (failure, "stand-in failure")
        kind = "InternalServerError" if status >= 500 else "BadRequestError"
        send_json(self, {"error": {"message": message, "type": kind, "param": None, "code": status}}, status)
        return True

    def do_GET(self) -> None:
        if not self._failed():
            listed = () if self.server.unlisted else self.server.loaded
            models = [{"id": "base"}] + [{"id": name, "parent": "base"} for name in listed]
            send_json(self, {"object": "list", "data": models})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self._failed():
            return
        if self.path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.server.loaded:
                return send_json(self, {"error": {"message": "already loaded"}}, 400)
            if not Path(body["lora_path"]).is_dir():
                message = f"Loading lora {body['lora_name']} failed: No adapter found for {body['lora_path']}"  # vLLM's words
                return send_json(self, {"error": {"message": message, "type": "NotFoundError", "param": None, "code": 404}}, 404)
            self.server.loaded[body["lora_name"]] = body["lora_path"]
            return send_json(self, {})
        if self.path == "/v1/unload_lora_adapter":
            self.server.loaded.pop(body["lora_name"], None)
            return send_json(self, {})
        if body.get("model") not in {"base", *self.server.loaded}:
            return send_json(self, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}, 404)
        if self.server.hold_chat.is_set():
            self.server.chat_arrived.set()
            self.server.release_chat.wait(timeout=60)
        choice = {"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}
        choices = [choice] if self.server.chat_choices is None else self.server.chat_choices
        model = self.server.chat_model or body["model"]
        send_json(self, {"id": "c", "object": "chat.completion", "created": 0, "model": model, "choices": choices})


@contextmanager
def good_and_down_replicas() -> Iterator[tuple[StandInVLLM, list[Any]]]:
    """A replica that answers (the stand-in, served) and one that is down (a port nobody listens on), in that order;
    both backends are closed on the way out."""
    good = StandInVLLM()
    with serving(good) as url:
        replicas = [VLLMBackend(url, timeout_s=5), LocalBackend(f"http://127.0.0.1:{free_port()}/v1", timeout_s=2)]
        try:
            yield good, replicas
        finally:
            for replica in replicas:
                replica.close()


class WebServerPage(BaseHTTPRequestHandler):
    """A web server's page (nginx's welcome page) with HTTP 200 for every GET and POST: what answers where a proxy or
    another service holds the port a replica should."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        page = b"<html><head><title>Welcome to nginx!</title></head></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()
